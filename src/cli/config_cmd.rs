//! `attache config show` and `attache config init`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{Context, UsageError};
use crate::cli::stdout::{out, outln};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings in effect (file, environment and flags applied; secrets redacted).
    Show,
    /// Write a starter config file: every key explained, at its default or commented out,
    /// with the store and S3 settings given here set (as `aws configure`, `rclone config`).
    #[command(
        after_help = "Examples:\n  attache config init --store s3://farm-bucket/DeadlineCloud --profile render\n  attache config init --store s3://farm-bucket/DeadlineCloud --endpoint-url http://garage.lan:3900 --region garage --force-path-style\n  sudo attache config init -o /etc/attache/config.toml --store s3://farm-bucket/DeadlineCloud\nThen: attache doctor"
    )]
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write it (default: the --config or ATTACHE_CONFIG file, else
    /// $XDG_CONFIG_HOME/attache/config.toml).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace the file if there is one.
    #[arg(long)]
    force: bool,
    /// store.url: s3://bucket/rootPrefix (the queue's job-attachments bucket and root prefix).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// s3.endpoint_url, for an S3-compatible store (Garage, MinIO, Ceph).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// s3.region.
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// s3.profile: the AWS profile whose credentials to use (no secret goes in the file).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// s3.force_path_style = true (most S3-compatible stores, an IP endpoint).
    #[arg(long)]
    force_path_style: bool,
}

/// Where `config init` writes: `-o`, else the config file named (`--config`,
/// `ATTACHE_CONFIG`), else the user's.
fn init_target(args: &InitArgs, named: Option<&Path>) -> Option<PathBuf> {
    args.output
        .clone()
        .or_else(|| named.map(Path::to_path_buf))
        .or_else(|| dirs::config_dir().map(|d| d.join("attache/config.toml")))
}

/// Writes the starter file (mode 0600: an owner may add a secret later), checked to load
/// with the values given, and says what to do next. Needs no config of its own: it runs
/// before one is loaded, so a broken file can be replaced with `--force`.
pub fn init(args: InitArgs, named: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(path) = init_target(&args, named) else {
        return Err(UsageError {
            message: "no config directory is known for this user: give the file with -o FILE"
                .into(),
        }
        .into());
    };
    if path.exists() && !args.force {
        return Err(UsageError {
            message: format!(
                "{} exists already: edit it, or give --force to replace it with a new one",
                path.display()
            ),
        }
        .into());
    }
    // (flag, section, key, value)
    let mut values: Vec<(&str, &str, &str, toml::Value)> = Vec::new();
    for (flag, section, key, value) in [
        ("--store", "store", "url", &args.store),
        ("--endpoint-url", "s3", "endpoint_url", &args.endpoint_url),
        ("--region", "s3", "region", &args.region),
        ("--profile", "s3", "profile", &args.profile),
    ] {
        if let Some(v) = value {
            values.push((flag, section, key, v.clone().into()));
        }
    }
    if args.force_path_style {
        values.push(("--force-path-style", "s3", "force_path_style", true.into()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| UsageError {
        message: format!("cannot make {}: {e}", dir.display()),
    })?;
    // A temp file beside it (0600), checked, then renamed: a bad value leaves nothing behind.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| UsageError {
        message: format!("cannot write in {}: {e}", dir.display()),
    })?;
    let (by_key, flags): (Vec<_>, Vec<_>) = values
        .into_iter()
        .map(|(flag, section, key, value)| {
            let given = crate::config::Override {
                key: format!("{section}.{key}"),
                value: match &value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                source: flag.to_string(),
            };
            ((section, key, value), given)
        })
        .unzip();
    let text = crate::config::starter::starter(&by_key).map_err(anyhow::Error::msg)?;
    tmp.write_all(text.as_bytes())?;
    // Loaded with the values also given as the flags they are (which win over the file's
    // same values), so a bad one is named by its flag.
    crate::config::load(&crate::config::LoadOptions {
        config_file: Some(tmp.path().to_path_buf()),
        overrides: flags,
        env: crate::config::EnvSource::Map(Default::default()),
    })
    .map_err(|e| UsageError {
        message: format!(
            "{} not written: {}",
            path.display(),
            e.to_string()
                .replace(&tmp.path().display().to_string(), "the new file")
        ),
    })?;
    tmp.persist(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    crate::say!(
        "wrote {}: edit it for the rest (each key is explained there), then check the setup with `attache doctor`",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show => {
            match &ctx.config_file {
                Some(f) => outln!("# config file: {}", f.display()),
                None => outln!("# no config file found; defaults and environment"),
            }
            out!("{}", ctx.settings.to_redacted_toml());
            for line in left_to_attache(&ctx.settings) {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Init(_) => {
            unreachable!("cli::run writes a starter file before any config is loaded")
        }
    }
}

/// What the settings left to attache come to on this machine, as TOML comments: printing them
/// as settings would change what the shown file loads back as (a content cache that no longer
/// follows `cache.dir`, a thread count that no longer follows the cores).
fn left_to_attache(s: &crate::config::Settings) -> Vec<String> {
    let mut lines = Vec::new();
    if s.cache.content_dir.is_none() {
        lines.push(format!(
            "#   cache.content_dir: {} (<cache.dir>/content)",
            s.cache.content_dir().display()
        ));
    }
    if s.hash.threads == 0 {
        lines.push(format!(
            "#   hash.threads: {} (one per core)",
            s.hash_threads()
        ));
    }
    if s.transfer.runtime_threads == 0 {
        lines.push(format!(
            "#   transfer.runtime_threads: {} (half the cores)",
            s.runtime_threads()
        ));
    }
    if !lines.is_empty() {
        lines.insert(0, "\n# left to attache, on this machine:".to_string());
    }
    lines
}
