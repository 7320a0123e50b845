//! `attache cache`: what this machine's caches hold; `clear` and `trim` empty them.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{Context, UsageError, counted};
use crate::cli::stdout::{out, outln};
use crate::config::ByteSize;
use crate::jobs::local_caches::{self, CacheUsage, ClearSpec};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  attache cache\n  attache cache clear --known-present --store s3://bucket/DeadlineCloud\n  attache cache trim --to 50GiB"
)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: Option<CacheCommand>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Show what each cache holds, where, and its size on disk (the default).
    Show,
    /// Empty caches, also while transfers run: what is forgotten is found out again.
    Clear(ClearArgs),
    /// Forget what the databases hold in vain (hashes of files under directories that no
    /// longer exist, such as removed render sessions; known-present entries older than
    /// transfer.known_present_ttl), remove partial downloads not written to for
    /// transfer.resume_for, and remove the content cache's least recently used objects until
    /// it holds at most cache.content_size (or --to).
    Trim {
        /// Trim the content cache to this size, e.g. 50GiB (also when cache.content_size is 0).
        #[arg(long, value_name = "SIZE")]
        to: Option<ByteSize>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true)))]
struct ClearArgs {
    /// The hash cache: the next run that needs a file's hash reads the file once again.
    #[arg(long, group = "what")]
    hash: bool,
    /// The known-present index: uploads ask the store about every object again (after
    /// objects were deleted from the store behind attache's back).
    #[arg(long, group = "what")]
    known_present: bool,
    /// What was measured of stores' multipart completions (transfer.copying_store_threshold):
    /// a store taken for one that copies parts on completion gets files over
    /// transfer.multipart_threshold in parts again, until measured so twice more.
    #[arg(long, group = "what")]
    copying_stores: bool,
    /// With --known-present or --copying-stores: only for this store, e.g.
    /// s3://bucket/DeadlineCloud (at any endpoint and region).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The content cache's objects: later downloads fetch them again.
    #[arg(long, group = "what")]
    content: bool,
    /// The partial downloads of large objects a cancelled, killed or failed get left (those
    /// being written are left): the next get of one fetches all of it.
    #[arg(long, group = "what")]
    partial_downloads: bool,
    /// All of them.
    #[arg(long, group = "what", conflicts_with = "store")]
    all: bool,
}

pub fn run(ctx: &Context, a: CacheArgs) -> anyhow::Result<ExitCode> {
    let settings = &ctx.settings;
    match a.command.unwrap_or(CacheCommand::Show) {
        CacheCommand::Show => {
            let usage = local_caches::usage(settings)?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&usage)?);
            } else {
                out!("{}", show(&usage));
            }
        }
        CacheCommand::Clear(c) => {
            if c.store.is_some() && !(c.known_present || c.copying_stores) {
                return Err(UsageError {
                    message: "--store goes with --known-present or --copying-stores: the other caches are not kept per store".into(),
                }
                .into());
            }
            if let Some(url) = &c.store {
                crate::store::StoreUrl::parse(url).map_err(|e| UsageError {
                    message: format!("--store {url}: {e}"),
                })?;
            }
            let store_given = c.store.is_some();
            let spec = ClearSpec {
                hash: c.hash || c.all,
                known_present: (c.known_present || c.all).then(|| c.store.clone()),
                copying_stores: (c.copying_stores || c.all).then_some(c.store),
                content: c.content || c.all,
                partial_downloads: c.partial_downloads || c.all,
            };
            let cleared = local_caches::clear(settings, &spec)?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&cleared)?);
            } else {
                if let Some(n) = cleared.hash_entries {
                    outln!("hash cache: forgot {}", counted(n, "file"));
                }
                if let Some(n) = cleared.known_present_entries {
                    outln!("known-present index: forgot {}", counted(n, "object"));
                    if n == 0 && store_given {
                        // A store the index never held (a typo, another prefix): say which it holds.
                        let held = local_caches::known_present_stores(settings).unwrap_or_default();
                        let names: Vec<String> = held.iter().map(|s| s.store.clone()).collect();
                        if !names.is_empty() {
                            outln!("  (it holds objects of {})", names.join(", "));
                        }
                    }
                }
                if let (Some(n), Some(b)) = (cleared.content_files, cleared.content_bytes) {
                    outln!(
                        "content cache: removed {} ({})",
                        counted(n, "object"),
                        size(b)
                    );
                }
                if let Some(p) = cleared.partial_downloads {
                    outln!("partial downloads: removed {} ({})", p.files, size(p.bytes));
                }
                if let Some(n) = cleared.copying_stores {
                    outln!(
                        "copying stores: forgot the measurements of {}",
                        counted(n, "store")
                    );
                }
            }
        }
        CacheCommand::Trim { to } => {
            let done = local_caches::trim(settings, to.map(|b| b.0))?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&done)?);
                return Ok(ExitCode::SUCCESS);
            }
            if let (Some(files), Some(dirs)) = (done.hash_files, done.hash_directories) {
                outln!(
                    "hash cache: forgot {} under directories that no longer exist ({dirs} of them)",
                    counted(files, "file")
                );
            }
            if let Some(n) = done.known_present_expired {
                outln!(
                    "known-present index: forgot {} not verified for transfer.known_present_ttl ({})",
                    counted(n, "object"),
                    settings.transfer.known_present_ttl
                );
            }
            if let Some(p) = done.partial_downloads {
                outln!(
                    "partial downloads: removed {} not written to for transfer.resume_for ({}), {}",
                    p.files,
                    settings.transfer.resume_for,
                    size(p.bytes)
                );
            }
            if let Some(n) = done.copying_stores {
                outln!(
                    "copying stores: forgot {} whose multipart completions were all measured over a week ago",
                    counted(n, "store")
                );
            }
            match &done.content {
                Some(gone) => outln!(
                    "content cache: removed {} ({}); it holds {}",
                    counted(gone.files, "object"),
                    size(gone.bytes),
                    size(gone.kept_bytes)
                ),
                None => outln!(
                    "content cache: off (cache.content_size = 0; --to SIZE trims what is there)"
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// The human form of `attache cache`.
fn show(u: &CacheUsage) -> String {
    let mut out = format!("cache.dir {}\n", u.dir.display());
    match (&u.hash_cache, &u.known_present) {
        (Some(h), Some(k)) => {
            out += &format!(
                "hash cache       {} files known ({}), {}\n",
                h.entries,
                size(h.bytes),
                h.path.display()
            );
            let stores = match u.known_present_stores.len() {
                1 => "1 store".to_string(),
                n => format!("{n} stores"),
            };
            out += &format!(
                "known-present    {} objects in {stores} ({}), {}\n",
                k.entries,
                size(k.bytes),
                k.path.display()
            );
            for s in &u.known_present_stores {
                out += &format!("                 {:>10}  {}\n", s.entries, s.store);
            }
        }
        _ => {
            out +=
                "hash cache       off (cache.hash_cache = false; so is the known-present index)\n"
        }
    }
    let c = &u.content;
    let limit = match c.limit {
        0 => "off: cache.content_size = 0".to_string(),
        n => format!("of {}", size(n)),
    };
    out += &format!(
        "content cache    {} objects, {} ({limit}), {}\n",
        c.files,
        size(c.bytes),
        c.dir.display()
    );
    let p = &u.partial_downloads;
    out += &format!(
        "partial dls      {} large objects fetched in part, {} (the next get fetches on from them), {}\n",
        p.files,
        size(p.bytes),
        p.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let o = &u.open_upload_states;
    out += &if o.total() == 0 {
        "open uploads     0 multipart uploads recorded open\n".to_string()
    } else {
        format!(
            "open uploads     {} multipart uploads recorded open: {} running, {} kept to resume (by the next upload of the file within transfer.resume_for), {} to abort (by the next upload to the store, or `attache cleanup`)\n",
            o.total(),
            o.running,
            o.kept,
            o.to_abort
        )
    };
    let c = &u.copying_stores;
    let copying: Vec<_> = c
        .stores
        .iter()
        .filter_map(|s| Some((s.copies_until_ms?, &s.store)))
        .collect();
    out += &match c.stores.len() {
        0 => format!(
            "copying stores   none measured yet (multipart completions of 64 MiB or more, transfer.copying_store_threshold), {}\n",
            c.path.display()
        ),
        n => format!(
            "copying stores   {n} stores measured, {} copying parts on completion (one PUT per file up to transfer.copying_store_threshold), {}\n",
            copying.len(),
            c.path.display()
        ),
    };
    for (until_ms, store) in copying {
        let until =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(until_ms.max(0) as u64);
        out += &format!(
            "                 one PUT per file until {}  {store}\n",
            humantime::format_rfc3339_seconds(until)
        );
    }
    out
}
