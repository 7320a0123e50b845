//! The command line: arguments, config loading, dispatch and exit codes.

mod bwlimit_cmd;
mod cache_cmd;
mod check_cmd;
mod cleanup_cmd;
mod config_cmd;
mod daemon_cmd;
mod doctor_cmd;
mod farm;
mod filter_args;
mod get_cmd;
mod hash_cmd;
mod job_manifest_args;
mod manifest_cmd;
pub(crate) mod progress_bar;
mod put_cmd;
pub(crate) mod stdout;
mod submit_paths;
mod transfer_args;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, LoadOptions, Override, Settings};
use crate::jobs::Cancelled;

/// Job-attachment transfer agent for render farms (AWS Deadline Cloud compatible).
#[derive(Debug, Parser)]
#[command(
    name = "attache",
    version,
    about,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Exit codes: 0 ok, 1 failure, 2 bad usage or config, 130 cancelled. With --json a failure is also one line on stdout: {\"error\", \"exit_code\", \"retryable\"} (retryable: running the command again as it is may succeed)."
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Every command's flags, listed after each command's own in its `--help`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Config file, or ATTACHE_CONFIG (default: $XDG_CONFIG_HOME/attache/config.toml, then
    /// /etc/attache/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter, e.g. "debug" (the AWS SDK's and HTTP stack's crates stay at info unless
    /// named: "debug,aws_smithy_runtime=debug") or "attache=debug" [config: log.level].
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// More log: -v is --log-level debug, -vv trace (the AWS SDK's and HTTP stack's crates
    /// staying at info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "log_level")]
    verbose: u8,
    /// Only warnings and errors on stderr: no progress bar or progress lines, no summary
    /// (stdout, -o and --json keep their output; the exit code says how it went).
    #[arg(short, long, global = true, conflicts_with_all = ["verbose", "stats"])]
    quiet: bool,
    /// Progress every second, as rclone's -P: a terminal shows the bar anyway; elsewhere (a
    /// pipe, a task log) a progress line each second (--stats 1s).
    #[arg(short = 'P', long, global = true, conflicts_with_all = ["quiet", "stats"])]
    progress: bool,
    /// Log format: text or json [config: log.format].
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// When stderr is not a terminal, log a progress line this often, e.g. 10s; 0 = never
    /// [config: log.stats].
    #[arg(long, global = true, value_name = "DURATION")]
    stats: Option<String>,
    /// Write the log to FILE (appended) instead of stderr, with the command's summary and
    /// error, which stderr still shows [config: log.file].
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<String>,
    /// Directory of the hash cache, the known-present index and the open-uploads records
    /// [config: cache.dir].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan and hash directory trees into v2023-03-03 manifests.
    Hash(hash_cmd::HashArgs),
    /// Workstation: upload a job's inputs, then publish their manifests; prints the job's attachments.
    Submit(farm::SubmitArgs),
    /// Worker: materialize a job's inputs in the session directory; prints path-mapping rules.
    SyncInputs(farm::SyncInputsArgs),
    /// Worker: upload a task's new and changed outputs, then publish their manifests.
    SyncOutputs(farm::SyncOutputsArgs),
    /// Workstation: download a job's outputs (latest run of each task) to where they belong.
    DownloadOutputs(farm::DownloadOutputsArgs),
    /// Upload a tree's content to a store and write its manifest (plumbing for submit).
    Put(put_cmd::PutArgs),
    /// Materialize manifests from a store into a directory (plumbing for sync-inputs).
    Get(get_cmd::GetArgs),
    /// Abort multipart uploads left open in a store (this machine's leftovers, also those kept
    /// to be resumed, then any under the root prefix's Data/ started over --older-than ago).
    Cleanup(cleanup_cmd::CleanupArgs),
    /// Check that a store holds the content of manifests, or of a job's inputs and outputs
    /// (HEAD each object, or fetch and hash it with --deep); names the files of what is missing.
    Check(check_cmd::CheckArgs),
    /// Check this machine's setup against its store: credentials, permissions, endpoint,
    /// multipart, caches; says what each failure needs.
    Doctor(doctor_cmd::DoctorArgs),
    /// Show what this machine's caches hold (hash cache, known-present index, content cache,
    /// open uploads); clear or trim them.
    Cache(cache_cmd::CacheArgs),
    /// Run the transfer daemon: one process serving every transfer of this machine over a
    /// local socket (see "Run as a service" in the README).
    #[command(
        after_help = "Settings (config file, or ATTACHE_DAEMON__<KEY>; `attache config show` shows them):\n  daemon.socket       the Unix socket (default $XDG_RUNTIME_DIR/attache/attache.sock, else /run/attache/attache.sock)\n  daemon.socket_group a group allowed to use the socket\n  daemon.listen       also listen on TCP, e.g. 127.0.0.1:7070 (needs daemon.token_file)\n  daemon.token_file   the bearer token TCP clients send\n  daemon.tls_cert, daemon.tls_key   HTTPS for the TCP listener\nExample:\n  ATTACHE_DAEMON__LISTEN=0.0.0.0:7070 ATTACHE_DAEMON__TOKEN_FILE=/etc/attache/token attache daemon"
    )]
    Daemon,
    /// List the daemon's jobs, oldest first.
    ///
    /// A user other than the daemon's (and not root) sees, and may cancel, retry or
    /// reprioritize, only the jobs that act for it. None to show: said on stderr (`no failed
    /// jobs`), nothing on stdout.
    Jobs(daemon_cmd::JobsArgs),
    /// Show one daemon job: state, progress, result or error; --follow waits for its end.
    ///
    /// Exit 0 once the job is shown, whatever its state (with -o, 1 when it did not succeed);
    /// with --follow, the job's outcome.
    Status(daemon_cmd::StatusArgs),
    /// Cancel a daemon job.
    Cancel(daemon_cmd::JobArgs),
    /// Run failed, cancelled or interrupted daemon jobs again (each as a new job with the same
    /// spec; uploads resume where they stopped).
    Retry(daemon_cmd::RetryArgs),
    /// Change a queued daemon job's priority (0 to 100; higher gets the next free slot).
    Priority(daemon_cmd::PriorityArgs),
    /// Show or change the daemon's bandwidth limits while it runs (every transfer, those in
    /// flight too), for a while or until reset.
    ///
    /// Changing them is for root and the daemon's own user: they act on every job of the
    /// machine.
    Bwlimit(bwlimit_cmd::BwlimitArgs),
    /// Make the daemon read its config again (as SIGHUP), and say whether it took it.
    ///
    /// For root and the daemon's own user only.
    Reload(daemon_cmd::ReloadArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `attache man > attache.1`.
    Man,
    /// Read, compare and check manifests.
    #[command(subcommand)]
    Manifest(manifest_cmd::ManifestCommand),
    /// Show the settings in effect, or write a starter config file (`config init`).
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
}

/// Exit codes: 0 ok, 1 failure, 2 bad usage or config, 130 cancelled.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CANCELLED: u8 = 130;
}

/// A failure the CLI reports with a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
}

/// A root with no file to put in a manifest (exit 2): empty, or with every file left out by
/// the scan's patterns, rules, marker files and bounds of size and age, which are then named.
pub fn no_files(root: &std::path::Path, scan: &crate::scan::ScanOptions) -> UsageError {
    let filter = &scan.filter;
    let bounds = scan.size_age.describe();
    let markers = scan.exclude_if_present.len();
    let given: Vec<String> = [
        (filter.exclusions(), "exclude"),
        (filter.inclusions(), "include"),
        (filter.rules(), "filter"),
        (&scan.exclude_if_present, "exclude-if-present"),
    ]
    .into_iter()
    .flat_map(|(items, kind)| items.iter().map(move |i| format!("{kind} {i:?}")))
    .chain(bounds.iter().cloned())
    .collect();
    let why = match given.len() {
        0 => "it holds none".to_string(),
        n => format!(
            "the {} left out every one ({}{}; from the config's hash section and the command line)",
            match (n - bounds.len() - markers, markers, bounds.len()) {
                (1, 0, 0) => "pattern",
                (_, 0, 0) => "patterns",
                (0, 1, 0) => "marker file",
                (0, _, 0) => "marker files",
                (0, 0, 1) => "bound",
                (0, 0, _) => "bounds",
                _ => "filters",
            },
            given.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if n > 5 {
                format!(" and {} more", n - 5)
            } else {
                String::new()
            }
        ),
    };
    UsageError {
        message: format!(
            "{}: no files to attach: {why}; a manifest needs at least one file",
            root.display()
        ),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(code) => code,
        // `attache jobs | head`: the reader has what it wanted.
        Err(e) if stdout::closed(&e) => ExitCode::SUCCESS,
        // Interrupted, as a cancel is (130), but the job goes on: not "cancelled".
        Err(e) if e.is::<crate::daemon::client::StoppedFollowing>() => {
            crate::say!("{e}");
            ExitCode::from(exit::CANCELLED)
        }
        Err(e) => {
            let code = exit_code_of(&e);
            if code != exit::CANCELLED {
                crate::say_error!("{}", describe(&e));
            } else {
                crate::say!("cancelled");
            }
            if json_asked() {
                // A script reading --json gets the failure there too, and whether running
                // the command again as it is may succeed.
                let failure = serde_json::json!({
                    "error": if code == exit::CANCELLED { "cancelled".to_string() } else { describe(&e) },
                    "exit_code": code,
                    "retryable": is_retryable(&e),
                });
                let _ = writeln!(stdout::stdout(), "{failure}");
            }
            ExitCode::from(code)
        }
    }
}

/// Whether the command line asked for `--json` (parsed already: no other argument is it).
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Whether running the command again as it is may succeed: the store unreachable or
/// throttling, a file still being written, a daemon job interrupted or cut off. Not bad usage,
/// a damaged manifest or object, a refused path, a full disk.
fn is_retryable(e: &anyhow::Error) -> bool {
    use crate::daemon::client::ClientError;
    use crate::jobs::spec::JobError;
    use crate::transfer::TransferError;
    e.chain().any(|c| {
        c.downcast_ref::<JobError>()
            .is_some_and(JobError::is_retryable)
            || c.downcast_ref::<TransferError>()
                .is_some_and(TransferError::is_retryable)
            || c.downcast_ref::<crate::jobs::put::PutError>()
                .is_some_and(|p| p.is_retryable())
            || c.downcast_ref::<crate::jobs::submit::SubmitError>()
                .is_some_and(|s| s.is_retryable())
            || c.downcast_ref::<crate::store::StoreError>()
                .is_some_and(|s| s.is_retryable())
            || matches!(
                c.downcast_ref::<ClientError>(),
                Some(ClientError::JobFailed {
                    retryable: true,
                    ..
                })
            )
    })
}

/// The error and its causes, leaving out a cause whose text the message already shows
/// (library errors often embed their source).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    // A full disk, wherever it was met (a manifest written with -o, ...): what to do, once.
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        let advice = crate::fsutil::io_advice(io);
        if !text.contains(&*advice) {
            text.push_str(&advice);
        }
    }
    text
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Cancelled>()) {
        exit::CANCELLED
    } else if e.chain().any(|c| {
        c.is::<ConfigError>()
            || c.is::<UsageError>()
            || is_wrong_token(c)
            || c.downcast_ref::<crate::scan::ScanErrors>()
                .is_some_and(crate::scan::ScanErrors::is_root_not_directory)
    }) {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

/// Another machine's daemon refused the token given: the client's config, not a failure.
fn is_wrong_token(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<crate::daemon::client::ClientError>(),
        Some(crate::daemon::client::ClientError::WrongToken { .. })
    )
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    let (level_from, level) = match (&cli.global.log_level, cli.global.quiet, cli.global.verbose) {
        (Some(level), _, _) => ("--log-level", Some(level.clone())),
        (None, true, _) => ("-q", Some("warn".to_string())),
        (None, false, 0) => ("--log-level", None),
        (None, false, 1) => ("-v", Some("debug".to_string())),
        (None, false, _) => ("-vv", Some("trace".to_string())),
    };
    flag(&mut overrides, "log.level", level_from, level);
    if cli.global.quiet {
        flag(&mut overrides, "log.stats", "-q", Some("0".into()));
    }
    if cli.global.progress {
        flag(&mut overrides, "log.stats", "-P", Some("1s".into()));
    }
    flag(
        &mut overrides,
        "log.format",
        "--log-format",
        cli.global.log_format.clone(),
    );
    flag(
        &mut overrides,
        "log.stats",
        "--stats",
        cli.global.stats.clone(),
    );
    flag(
        &mut overrides,
        "log.file",
        "--log-file",
        cli.global.log_file.clone(),
    );
    flag(
        &mut overrides,
        "cache.dir",
        "--cache-dir",
        cli.global.cache_dir.clone(),
    );
    match &cli.command {
        Command::Hash(a) => a.overrides(&mut overrides),
        Command::Put(a) => a.overrides(&mut overrides),
        Command::Submit(a) => a.overrides(&mut overrides),
        Command::SyncInputs(a) => a.overrides(&mut overrides),
        Command::SyncOutputs(a) => a.overrides(&mut overrides),
        Command::DownloadOutputs(a) => a.overrides(&mut overrides),
        Command::Get(a) => a.overrides(&mut overrides),
        Command::Cleanup(a) => a.overrides(&mut overrides),
        Command::Check(a) => a.overrides(&mut overrides),
        Command::Doctor(a) => a.overrides(&mut overrides),
        Command::Manifest(m) => m.overrides(&mut overrides),
        Command::Config(_)
        | Command::Cache(_)
        | Command::Daemon
        | Command::Jobs(_)
        | Command::Status(_)
        | Command::Cancel(_)
        | Command::Retry(_)
        | Command::Priority(_)
        | Command::Bwlimit(_)
        | Command::Reload(_)
        | Command::Completions { .. }
        | Command::Man => {}
    }
    // An empty ATTACHE_CONFIG (`ATTACHE_CONFIG=$UNSET`) is unset, as other ATTACHE_ variables.
    let from_env = std::env::var_os("ATTACHE_CONFIG").filter(|v| !v.is_empty());
    let load = LoadOptions {
        config_file: cli.global.config.clone().or(from_env.map(PathBuf::from)),
        overrides,
        env: Default::default(),
    };
    // Completions and the man page need no config (packaging builds them anywhere).
    let quiet = cli.global.quiet;
    match cli.command {
        Command::Completions { shell } => daemon_cmd::completions(shell),
        Command::Man => daemon_cmd::man(),
        // A starter file replaces a config that may not load: none is read for it.
        Command::Config(config_cmd::ConfigCommand::Init(args)) => {
            let log = config::LogSettings {
                quiet,
                ..Default::default()
            };
            crate::logging::init(&log).map_err(|message| UsageError { message })?;
            config_cmd::init(args, load.config_file.as_deref())
        }
        command => run_loaded(load, command, quiet),
    }
}

/// Runs `command` with the config loaded.
fn run_loaded(load: LoadOptions, command: Command, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut loaded = config::load(&load)?;
    loaded.settings.log.quiet = quiet;
    crate::logging::init(&loaded.settings.log).map_err(|message| UsageError { message })?;
    if let Some(file) = &loaded.file {
        tracing::debug!(config = %file.display(), "config loaded");
        if !loaded.secrets_open_to_others.is_empty() {
            tracing::warn!(
                "config file {} holds {} and every user of this machine can read it: chmod 600 it (640 with the daemon's group), or give the keys through the environment or an AWS profile",
                file.display(),
                loaded.secrets_open_to_others.join(", ")
            );
        }
    }
    let ctx = Context {
        settings: loaded.settings,
        config_file: loaded.file,
        load,
    };
    match command {
        Command::Hash(a) => hash_cmd::run_cmd(&ctx, a),
        Command::Put(a) => put_cmd::run(&ctx, a),
        Command::Submit(a) => farm::submit(&ctx, a),
        Command::SyncInputs(a) => farm::sync_inputs(&ctx, a),
        Command::SyncOutputs(a) => farm::sync_outputs(&ctx, a),
        Command::DownloadOutputs(a) => farm::download_outputs(&ctx, a),
        Command::Get(a) => get_cmd::run(&ctx, a),
        Command::Cleanup(a) => cleanup_cmd::run(&ctx, a),
        Command::Check(a) => check_cmd::run(&ctx, a),
        Command::Doctor(a) => doctor_cmd::run(&ctx, a),
        Command::Cache(a) => cache_cmd::run(&ctx, a),
        Command::Manifest(m) => manifest_cmd::run(&ctx, m),
        Command::Config(c) => config_cmd::run(&ctx, c),
        Command::Daemon => daemon_cmd::daemon(&ctx),
        Command::Jobs(a) => daemon_cmd::jobs(&ctx, a),
        Command::Status(a) => daemon_cmd::status(&ctx, a),
        Command::Cancel(a) => daemon_cmd::cancel(&ctx, a),
        Command::Retry(a) => daemon_cmd::retry(&ctx, a),
        Command::Priority(a) => daemon_cmd::priority(&ctx, a),
        Command::Bwlimit(a) => bwlimit_cmd::run(&ctx, a),
        Command::Reload(a) => daemon_cmd::reload(&ctx, a),
        Command::Completions { .. } | Command::Man => {
            unreachable!("handled before the config is loaded")
        }
    }
}

/// What every command gets: the effective settings and where they came from.
pub struct Context {
    pub settings: Settings,
    pub config_file: Option<PathBuf>,
    /// How the settings were loaded, so the daemon can load them again on reload.
    pub load: LoadOptions,
}

/// A byte count from a job's JSON report, for people: "1.4 GiB".
pub(crate) fn json_size(v: &serde_json::Value) -> String {
    bytesize::ByteSize(v.as_u64().unwrap_or(0))
        .display()
        .iec()
        .to_string()
}

/// Whether a job runs through the daemon: `--daemon`, or `ATTACHE_DAEMON` set (not to 0).
pub(crate) fn through_daemon(flag: bool) -> bool {
    flag || std::env::var_os("ATTACHE_DAEMON").is_some_and(|v| v != "0" && !v.is_empty())
}

/// `-o FILE` of a command: `-` means stdout, as the option's default does (`None`).
pub(crate) fn output_file(output: &Option<PathBuf>) -> Option<&std::path::Path> {
    output.as_deref().filter(|p| p.as_os_str() != "-")
}

/// `-o -` and `--json` would both write to stdout, one document lost in the other: bad usage.
pub(crate) fn not_both_on_stdout(output: &Option<PathBuf>, json: bool) -> Result<(), UsageError> {
    if json && output.as_deref() == Some(std::path::Path::new("-")) {
        return Err(UsageError {
            message: "-o - and --json both write on stdout: give -o FILE for the manifest, or leave out --json".into(),
        });
    }
    Ok(())
}

/// Checks, before any work, that `-o PATH` can be written (a file can be made in its
/// directory; with `dir_ok`, PATH may be that directory): an upload that ran an hour, or a
/// submit that published its manifests, must not end on a typo'd directory with its result
/// lost. Devices and FIFOs (`/dev/null`) are written into, and pass.
pub(crate) fn check_output(output: &Option<PathBuf>, dir_ok: bool) -> Result<(), UsageError> {
    let Some(path) = output_file(output) else {
        return Ok(());
    };
    let meta = std::fs::metadata(path).ok();
    let dir = match &meta {
        Some(m) if m.is_dir() && dir_ok => path,
        Some(m) if m.is_dir() => {
            return Err(UsageError {
                message: format!(
                    "-o {}: is a directory; give the file to write",
                    path.display()
                ),
            });
        }
        Some(m) if !m.is_file() => return Ok(()),
        _ => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        },
    };
    crate::fsutil::can_write_in(dir).map_err(|e| UsageError {
        message: format!(
            "-o {}: cannot write in {}: {e} (create the directory, or choose another path)",
            path.display(),
            dir.display(),
        ),
    })
}

/// `n` of `noun` for a summary line: "1 file", "2 files", "0 objects", "1 copy", "3 copies".
pub(crate) fn counted(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// [`counted`] of a count in a job's JSON report.
pub(crate) fn counted_json(v: &serde_json::Value, noun: &str) -> String {
    counted(v.as_u64().unwrap_or(0), noun)
}

/// A summary's verb: what was done (`done`), or with `--dry-run` what would be (`would`).
pub(crate) fn tense(dry_run: bool, done: &'static str, would: &'static str) -> &'static str {
    if dry_run { would } else { done }
}

/// The summary's mention of multipart uploads an earlier run left open that this one resumed
/// or aborted.
pub(crate) fn leftovers_note(aborted: u64, resumed: u64, resumed_bytes: u64) -> String {
    let mut note = String::new();
    if resumed > 0 {
        note += &format!(
            "; resumed {resumed} multipart upload(s) an earlier run left open ({} already in the store, not sent again)",
            bytesize::ByteSize(resumed_bytes).display().iec()
        );
    }
    if aborted > 0 {
        note += &format!("; aborted {aborted} multipart upload(s) an earlier run left open");
    }
    note
}

/// `--bwlimit VALUE` for a command moving data in `direction` (`upload` or `download`): a rate
/// limits that direction; a timetable, as rclone's flag takes one (`"08:00,10MB/s 19:00,off"`,
/// entries separated by spaces or `;`), replaces `bandwidth.schedule` for this run.
pub(crate) fn bwlimit_flag(out: &mut Vec<Override>, direction: &str, value: Option<String>) {
    match value {
        Some(v) if v.contains(',') => flag(out, "bandwidth.schedule", "--bwlimit", Some(v)),
        v => flag(out, &format!("bandwidth.{direction}"), "--bwlimit", v),
    }
}

/// Records a CLI flag as a config override, so flags, env and file share one validation.
pub(crate) fn flag(out: &mut Vec<Override>, key: &str, source: &str, value: Option<String>) {
    if let Some(value) = value {
        out.push(Override {
            key: key.into(),
            value,
            source: source.into(),
        });
    }
}

/// Runs an async job on a Tokio runtime where Ctrl-C (SIGINT), SIGTERM or a hangup cancels it
/// (the job cleans up: temp files removed, multipart uploads aborted, exit 130); a second
/// signal exits at once.
pub(crate) fn run_async<T, F, Fut>(threads: usize, job: F) -> anyhow::Result<T>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let rt = crate::transfer::runtime(threads)?;
    let cancel = CancellationToken::new();
    let done = rt.block_on(async {
        let on_signal = cancel.clone();
        let mut interrupts = Interrupts::new()?;
        tokio::spawn(async move {
            interrupts.next().await;
            on_signal.cancel();
            interrupts.next().await;
            crate::say!("cancelled");
            std::process::exit(i32::from(exit::CANCELLED));
        });
        Ok(job(cancel.clone()).await)
    });
    // A cancelled job has removed what it made; work it chose not to wait for (a stat held
    // by a disk stalled in a flush) must not hold the exit either, as dropping the runtime
    // would: it waits for every blocking task to return.
    if cancel.is_cancelled() {
        rt.shutdown_timeout(CANCELLED_GRACE);
    }
    done
}

/// How long a cancelled command waits for work its job left running (which stops at its
/// next check of the cancel when it can) before it exits.
const CANCELLED_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The signals that cancel a command: Ctrl-C (SIGINT), SIGTERM, and SIGHUP (the terminal
/// or SSH session closed) unless it was ignored when the command started (`nohup`).
pub(crate) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    /// Starts listening (the default action, exiting, no longer applies). Needs a runtime.
    pub(crate) fn new() -> std::io::Result<Interrupts> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            // Listening would undo nohup's SIG_IGN.
            hup: match ignored(libc::SIGHUP) {
                true => None,
                false => Some(signal(SignalKind::hangup())?),
            },
        })
    }

    /// Waits for the next SIGINT, SIGTERM or SIGHUP.
    pub(crate) async fn next(&mut self) {
        let hangup = async {
            match &mut self.hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = hangup => {}
        }
    }
}

/// Whether signal `sig` is ignored (SIG_IGN), as `nohup` leaves SIGHUP for its command.
fn ignored(sig: libc::c_int) -> bool {
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: with no new action, sigaction only writes the current one into `now`.
    let read = unsafe { libc::sigaction(sig, std::ptr::null(), &mut now) } == 0;
    read && now.sa_sigaction == libc::SIG_IGN
}

/// [`run_async`] for a blocking job (run on a blocking thread). A job that does not return
/// once cancelled (held in a system call) is not waited for: the result is then [`Cancelled`].
pub(crate) fn run_cancellable<T: Send + 'static>(
    job: impl FnOnce(CancellationToken) -> T + Send + 'static,
) -> anyhow::Result<T> {
    // One worker: it only waits for the job and the signals.
    run_async(1, |token| async move {
        let cancel = token.clone();
        let job = tokio::task::spawn_blocking(move || job(token));
        crate::transfer::cancellable(&cancel, job)
            .await
            .map(|done| done.expect("job panicked"))
    })?
    .map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_of_one_is_singular() {
        assert_eq!(counted(1, "file"), "1 file");
        assert_eq!(counted(0, "file"), "0 files");
        assert_eq!(counted(5000, "object"), "5000 objects");
        assert_eq!(counted(1, "copy"), "1 copy");
        assert_eq!(counted(2, "copy"), "2 copies");
        assert_eq!(
            counted_json(&serde_json::json!(1), "manifest"),
            "1 manifest"
        );
    }
    use anyhow::Context;

    #[test]
    fn an_error_says_each_cause_once_and_what_to_do_about_a_full_disk() {
        let full = Err::<(), _>(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing /out/m.json")
            .unwrap_err();
        let text = describe(&full);
        assert!(
            text.starts_with("writing /out/m.json: No space left on device"),
            "{text}"
        );
        assert_eq!(text.matches("free some space").count(), 1, "{text}");

        // The advice already in a library error's text is not repeated.
        let already = crate::transfer::TransferError::io("/dest/a.exr")(
            std::io::Error::from_raw_os_error(libc::EDQUOT),
        );
        let text = describe(&anyhow::Error::from(already));
        assert_eq!(text.matches("free some space").count(), 1, "{text}");

        // A refusal names the user refused (a daemon's service user, an NFS export's
        // squashed root), once.
        let denied = Err::<(), _>(std::io::Error::from_raw_os_error(libc::EACCES))
            .context("writing /out/m.json")
            .unwrap_err();
        let text = describe(&denied);
        assert!(
            text.starts_with(
                "writing /out/m.json: Permission denied (os error 13). attache runs as "
            ),
            "{text}"
        );
        assert_eq!(text.matches("attache runs as").count(), 1, "{text}");
        let enoent = Err::<(), _>(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("reading /in/m.json")
            .unwrap_err();
        assert_eq!(
            describe(&enoent),
            "reading /in/m.json: No such file or directory (os error 2)"
        );
    }
}
