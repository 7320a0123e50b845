//! The download-outputs job (workstation): find a job's output manifests (the latest session
//! action of each task), merge them per asset root in the order the store wrote them, and
//! materialize them at the roots they came from.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fetch_manifest::fetch_manifests;
use super::get::{self, Conflict, GetReport, GetSpec, WritableFor};
use crate::manifest::{Manifest, ManifestEntry, merge};
use crate::store::layout::manifests_prefix;
use crate::store::meta;
use crate::transfer::{Transfer, TransferError};

pub struct DownloadOutputsSpec {
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub step_id: Option<String>,
    pub task_id: Option<String>,
    pub conflict: Conflict,
    /// Root path as submitted → where to put it here (default: the root path itself).
    pub root_map: Vec<(String, PathBuf)>,
    pub cache_dir: Option<PathBuf>,
    /// Which of the outputs to fetch (`--exclude`, `--include`); default: all.
    pub pick: crate::scan::PathFilter,
    /// The outputs taken by their size and time in the manifests (`--max-size`, `--max-age`).
    pub size_age: crate::scan::size_age::SizeAge,
    /// The daemon's client, when it is another user: every destination must be one its user
    /// may write in (the roots come from the store, which the client may have written).
    pub caller: Option<Arc<crate::fsutil::access::Caller>>,
    /// Keep downloading the outputs tasks publish, asking the store this often (`--watch`).
    pub watch: Option<Watch>,
}

/// How a download of outputs goes on as the job runs.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// How often the store is asked for new outputs.
    pub every: Duration,
    /// Stop once no task has published new outputs for this long; `None`: until cancelled.
    pub until_idle: Option<Duration>,
}

#[derive(Debug, serde::Serialize)]
pub struct DownloadedRoot {
    pub root_path: String,
    pub destination: PathBuf,
    pub manifests: usize,
    /// Files of the manifests `--exclude` or `--include` left out.
    pub left_out: usize,
    pub report: GetReport,
}

#[derive(Debug, serde::Serialize)]
pub struct DownloadOutputsReport {
    pub tasks: usize,
    /// With `--watch`, one per root: every round's downloads into it, summed.
    pub roots: Vec<DownloadedRoot>,
    /// With `--watch`: how many times the store was asked for new outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
    pub seconds: f64,
}

/// An output manifest key, split: `…/{step}/{task}/{startTime}_{sessionAction}/{name}_output`,
/// or a chunked step's `…/{step}/{startTime}_{sessionAction}/{name}_output` (a session action
/// that ran a chunk of the step's tasks; no task folder).
struct OutputKey {
    key: String,
    /// (step, task); `None` for a chunked step's output.
    task: Option<(String, String)>,
    session_action: String,
    last_modified_ms: i64,
}

fn parse(key: &str, job_prefix: &str, last_modified_ms: i64) -> Option<OutputKey> {
    let rest = key.strip_prefix(job_prefix)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (task, session_action) = match parts[..] {
        [step, task, session_action, name] if name.ends_with("_output") => {
            (Some((step.to_string(), task.to_string())), session_action)
        }
        [_step, session_action, name] if name.ends_with("_output") => (None, session_action),
        _ => return None,
    };
    Some(OutputKey {
        key: key.to_string(),
        task,
        session_action: session_action.to_string(),
        last_modified_ms,
    })
}

/// Which task outputs to find: a job's, or one step's, or one task's.
#[derive(Debug, Clone)]
pub struct OutputsOf {
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub step_id: Option<String>,
    pub task_id: Option<String>,
}

impl OutputsOf {
    /// `farm/queue/job[/step[/task]]`: where under `Manifests/` these outputs are.
    pub fn path(&self) -> String {
        [
            Some(&self.farm_id),
            Some(&self.queue_id),
            Some(&self.job_id),
        ]
        .into_iter()
        .chain([self.step_id.as_ref(), self.task_id.as_ref()])
        .flatten()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("/")
    }
}

/// The output manifests that count: per task, those of its latest session action (a retried
/// task replaces its outputs), and every one of a chunked step (there is no task to tell a
/// retry by; the official client takes them all too). Returns the number of tasks (a chunked
/// step's session actions counted as tasks) and their keys, oldest first (the order the store
/// wrote them).
pub async fn latest_output_keys(
    of: &OutputsOf,
    transfer: &Transfer,
    cancel: &CancellationToken,
) -> Result<(usize, Vec<String>), TransferError> {
    let job_prefix = format!(
        "{}{}/{}/{}/",
        manifests_prefix(transfer.store.root_prefix()),
        of.farm_id,
        of.queue_id,
        of.job_id
    );
    let list_prefix = format!(
        "{}{}/",
        manifests_prefix(transfer.store.root_prefix()),
        of.path()
    );
    let listed = transfer
        .gate
        .run(cancel, || transfer.store.list(&list_prefix))
        .await?;
    let mut latest: BTreeMap<(String, String), Vec<OutputKey>> = BTreeMap::new();
    let mut chunked: BTreeMap<String, Vec<OutputKey>> = BTreeMap::new();
    for o in listed {
        let Some(k) = parse(&o.key, &job_prefix, o.last_modified_ms.unwrap_or(0)) else {
            continue;
        };
        let Some(task) = k.task.clone() else {
            chunked.entry(k.session_action.clone()).or_default().push(k);
            continue;
        };
        let slot = latest.entry(task).or_default();
        match slot
            .first()
            .map(|f| f.session_action.cmp(&k.session_action))
        {
            Some(std::cmp::Ordering::Less) => *slot = vec![k],
            Some(std::cmp::Ordering::Equal) | None => slot.push(k),
            Some(std::cmp::Ordering::Greater) => {}
        }
    }
    let tasks = latest.len() + chunked.len();
    let mut keys: Vec<OutputKey> = latest
        .into_values()
        .chain(chunked.into_values())
        .flatten()
        .collect();
    keys.sort_by(|a, b| (a.last_modified_ms, &a.key).cmp(&(b.last_modified_ms, &b.key)));
    Ok((tasks, keys.into_iter().map(|k| k.key).collect()))
}

/// The manifests of [`latest_output_keys`], read several at once, by the root path each
/// belongs to (its `asset-root` metadata, which comes with the body), oldest first within a
/// root. Returns the number of tasks too.
pub async fn latest_outputs(
    of: &OutputsOf,
    transfer: &Transfer,
    cancel: &CancellationToken,
) -> Result<(usize, BTreeMap<String, Vec<Manifest>>), TransferError> {
    let (tasks, keys) = latest_output_keys(of, transfer, cancel).await?;
    Ok((tasks, outputs_by_root(&keys, transfer, cancel).await?))
}

/// The output manifests at `keys`, read several at once, by the root path each belongs to,
/// in the order of `keys` within a root.
async fn outputs_by_root(
    keys: &[String],
    transfer: &Transfer,
    cancel: &CancellationToken,
) -> Result<BTreeMap<String, Vec<Manifest>>, TransferError> {
    let fetched = fetch_manifests(transfer, keys, cancel).await?;
    let mut by_root: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
    for (key, (manifest, metadata)) in keys.iter().zip(fetched) {
        let root = root_of(&metadata).ok_or_else(|| TransferError::Refused {
            path: PathBuf::from(key),
            message: "output manifest has no asset-root metadata; cannot tell where it belongs"
                .into(),
        })?;
        by_root.entry(root).or_default().push(manifest);
    }
    Ok(by_root)
}

pub async fn run(
    spec: DownloadOutputsSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<DownloadOutputsReport, TransferError> {
    let started = std::time::Instant::now();
    let of = OutputsOf {
        farm_id: spec.farm_id.clone(),
        queue_id: spec.queue_id.clone(),
        job_id: spec.job_id.clone(),
        step_id: spec.step_id.clone(),
        task_id: spec.task_id.clone(),
    };
    let Some(watch) = spec.watch else {
        let (tasks, by_root) = latest_outputs(&of, &transfer, cancel).await?;
        if tasks == 0 {
            // The same as the official client: not an error (the job may not have run a task
            // yet), but said, also beside --json and in the daemon's log: a typo in an id
            // looks just like it.
            tracing::warn!(
                "no outputs: no task has published any under {}/Manifests/{}/ (yet); check the ids and the store if the job has run",
                transfer.store.describe(),
                of.path()
            );
        }
        let roots = download_roots(&spec, by_root, &transfer, cancel, None).await?;
        return Ok(DownloadOutputsReport {
            tasks,
            roots,
            rounds: None,
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    // Each round downloads the manifests published since the one before. What a round
    // placed and is still as it placed it is the watch's own: a retried task's outputs
    // replace it, whatever --conflict says of files someone else put there.
    let mut seen: HashSet<String> = HashSet::new();
    let mut watched = Watched::default();
    let mut totals: Vec<DownloadedRoot> = Vec::new();
    let mut rounds = 0u64;
    let mut tasks: usize;
    let mut last_new = std::time::Instant::now();
    let mut last_look = std::time::Instant::now();
    loop {
        rounds += 1;
        match watch_round(&spec, &of, &seen, &mut watched, &transfer, cancel).await {
            Ok((now_tasks, new, roots)) => {
                tasks = now_tasks;
                last_look = std::time::Instant::now();
                if !new.is_empty() {
                    seen.extend(new);
                    last_new = last_look;
                } else if rounds == 1 {
                    tracing::info!(
                        "no outputs under {}/Manifests/{}/ yet; watching for them every {}",
                        transfer.store.describe(),
                        of.path(),
                        crate::config::Duration(watch.every)
                    );
                }
                for root in roots {
                    match totals.iter_mut().find(|t| t.root_path == root.root_path) {
                        Some(total) => total.add(root),
                        None => totals.push(root),
                    }
                }
                if watch
                    .until_idle
                    .is_some_and(|idle| last_new.elapsed() >= idle)
                {
                    break;
                }
            }
            // A store out of reach for a while (a VPN that drops, an outage past the
            // retries): looked at again next time, what was not placed fetched then. With
            // --until-idle, not for longer than that: the job may have ended unseen.
            Err(e)
                if e.is_retryable()
                    && !cancel.is_cancelled()
                    && watch
                        .until_idle
                        .is_none_or(|idle| last_look.elapsed() < idle) =>
            {
                tracing::warn!(
                    "watching: this look at the store failed; trying again in {}: {e}",
                    crate::config::Duration(watch.every)
                );
            }
            Err(e) => return Err(e),
        }
        crate::transfer::cancellable(cancel, tokio::time::sleep(watch.every)).await?;
    }
    Ok(DownloadOutputsReport {
        tasks,
        roots: totals,
        rounds: Some(rounds),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One look of a watch: the number of tasks with outputs, the keys of the manifests
/// published since those `seen`, and what their download did per root (logged).
async fn watch_round(
    spec: &DownloadOutputsSpec,
    of: &OutputsOf,
    seen: &HashSet<String>,
    watched: &mut Watched,
    transfer: &Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<(usize, Vec<String>, Vec<DownloadedRoot>), TransferError> {
    let (tasks, keys) = latest_output_keys(of, transfer, cancel).await?;
    let new: Vec<String> = keys.into_iter().filter(|k| !seen.contains(k)).collect();
    if new.is_empty() {
        return Ok((tasks, new, Vec::new()));
    }
    let by_root = outputs_by_root(&new, transfer, cancel).await?;
    let roots = download_roots(spec, by_root, transfer, cancel, Some(watched)).await?;
    let counted = crate::cli::counted;
    for root in &roots {
        let report = &root.report;
        tracing::info!(
            "{} -> {}: {} from {} newly published; downloaded {}, {} already in place",
            root.root_path,
            root.destination.display(),
            counted(report.files, "file"),
            counted(root.manifests as u64, "manifest"),
            counted(report.download.objects, "object"),
            report.unchanged_files,
        );
    }
    Ok((tasks, new, roots))
}

/// What a watch's earlier rounds did.
#[derive(Default)]
struct Watched {
    /// The files placed (a round's get replaces those still as they were left).
    placed: Arc<get::Placed>,
    /// The root paths of the outputs downloaded.
    roots: BTreeSet<String>,
}

/// The files of `entry` under `destination`, on disk.
fn on_disk(destination: &Path, entry: &ManifestEntry) -> Option<PathBuf> {
    let rel = entry.path.to_posix_bytes().ok()?;
    Some(destination.join(std::ffi::OsStr::from_bytes(&rel)))
}

/// Downloads each root's manifests (merged, later wins) to where it belongs. With `watched`
/// (a watch): the files it placed before, untouched since, are replaced whatever the
/// conflict mode, and what this round places is added to it; a `--root-map` FROM may name a
/// root an earlier round downloaded.
async fn download_roots(
    spec: &DownloadOutputsSpec,
    by_root: BTreeMap<String, Vec<Manifest>>,
    transfer: &Arc<Transfer>,
    cancel: &CancellationToken,
    mut watched: Option<&mut Watched>,
) -> Result<Vec<DownloadedRoot>, TransferError> {
    // A mistyped FROM would send the outputs to the root path itself (the artist's project,
    // the very place the map was meant to keep them out of). A FROM of a root these tasks
    // did not write to is fine (one map for every download of a job), so long as every root
    // here is mapped.
    let mapped = |root: &str| spec.root_map.iter().find(|(from, _)| same_root(from, root));
    let earlier = watched.as_deref().map(|w| &w.roots).into_iter().flatten();
    let known: BTreeSet<&String> = by_root.keys().chain(earlier).collect();
    let unmatched = spec
        .root_map
        .iter()
        .find(|(from, _)| !known.iter().any(|root| same_root(from, root)));
    let unmapped = by_root.keys().any(|root| mapped(root).is_none());
    if let (Some((from, _)), true) = (unmatched, unmapped) {
        return Err(TransferError::Refused {
            path: PathBuf::from(from),
            message: format!(
                "--root-map: not a root path of this job's outputs, which are {}; nothing was downloaded",
                known
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    // A Windows workstation's root (`C:\proj`) is no path here: written as it is, it
    // would be a directory of that name under the current one.
    if let Some(root) = by_root
        .keys()
        .find(|root| mapped(root).is_none() && !Path::new(root).is_absolute())
    {
        return Err(TransferError::Refused {
            path: PathBuf::from(root),
            message: format!(
                "the job's outputs have this root, which is not an absolute path on this machine (the job was submitted from another OS); give it a destination here: --root-map '{root}=/local/dir'; nothing was downloaded"
            ),
        });
    }
    let destination_of = |root_path: &str| {
        mapped(root_path)
            .map(|(_, to)| to.clone())
            .unwrap_or_else(|| PathBuf::from(root_path))
    };
    if let Some(caller) = &spec.caller {
        for root_path in by_root.keys() {
            let destination = destination_of(root_path);
            caller
                .may_write_in(&destination)
                .map_err(|refused| TransferError::Refused {
                    path: destination.clone(),
                    message: format!("nothing was downloaded: {refused}"),
                })?;
        }
    }
    let mut roots = Vec::new();
    for (root_path, manifests) in by_root {
        let count = manifests.len();
        let destination = destination_of(&root_path);
        let mut manifest = merge(manifests);
        let left_out = manifest.retain(|e| {
            spec.pick.takes_path(e.path.as_wtf8()) && spec.size_age.takes(e.size, e.mtime_us)
        });
        // Recorded once placed: a round that failed leaves the earlier files the watch's.
        let placing: Vec<_> = match watched {
            Some(_) => (manifest.entries().iter())
                .filter_map(|e| Some((on_disk(&destination, e)?, (e.size, e.mtime_us))))
                .collect(),
            None => Vec::new(),
        };
        let get_spec = GetSpec {
            record: None,
            for_caller: spec.caller.as_ref().map(|caller| WritableFor {
                caller: caller.clone(),
                checked: destination.clone(),
            }),
            manifest,
            dest: destination.clone(),
            cache_dir: spec.cache_dir.clone(),
            conflict: spec.conflict,
            check_space: true,
            replaceable: watched.as_deref().map(|w| w.placed.clone()),
        };
        let report = get::run(get_spec, transfer.clone(), cancel).await?;
        if let Some(watched) = watched.as_deref_mut() {
            Arc::make_mut(&mut watched.placed).extend(placing);
            watched.roots.insert(root_path.clone());
        }
        roots.push(DownloadedRoot {
            root_path,
            destination,
            manifests: count,
            left_out,
            report,
        });
    }
    Ok(roots)
}

impl DownloadedRoot {
    /// Adds a later round's downloads into the same root.
    fn add(&mut self, later: DownloadedRoot) {
        self.manifests += later.manifests;
        self.left_out += later.left_out;
        self.report.add(later.report);
    }
}

/// Whether a `--root-map` FROM names the root path `root`: the same path, but for trailing
/// separators, and for a Windows root (a drive letter or `\\server`) whatever the case or
/// the kind of slash, as Windows compares paths.
fn same_root(from: &str, root: &str) -> bool {
    let windows = |p: &str| {
        let b = p.as_bytes();
        p.starts_with("\\\\") || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
    };
    if windows(root) && windows(&from.replace('/', "\\")) {
        let key = |p: &str| {
            let p = p.replace('/', "\\");
            let trimmed = p.trim_end_matches('\\');
            // `C:\` is the drive's root; `C:` alone is not a path.
            if trimmed.len() == 2 {
                p.to_lowercase()
            } else {
                trimmed.to_lowercase()
            }
        };
        return key(from) == key(root);
    }
    let key = |p: &str| match p.trim_end_matches('/') {
        "" => "/".to_string(),
        t => t.to_string(),
    };
    key(from) == key(root)
}

/// The root path an output manifest belongs to, from its metadata: `asset-root-json` (a JSON
/// string) if present, else `asset-root`.
fn root_of(metadata: &[(String, String)]) -> Option<String> {
    if let Some(j) = meta(metadata, "asset-root-json") {
        return serde_json::from_str::<String>(j).ok();
    }
    meta(metadata, "asset-root").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_map_names_a_windows_root_in_any_case_and_slash() {
        for from in [
            "C:\\Projects\\shot010",
            "c:\\projects\\SHOT010",
            "C:/Projects/shot010",
            "C:\\Projects\\shot010\\",
        ] {
            assert!(same_root(from, "C:\\Projects\\shot010"), "{from}");
        }
        assert!(same_root("\\\\NAS\\Proj", "\\\\nas\\proj"));
        assert!(same_root("d:/", "D:\\"));
        assert!(!same_root("C:\\Projects", "C:\\Projects\\shot010"));
        // A POSIX root is compared as it is, but for a trailing slash.
        assert!(same_root("/proj/shot/", "/proj/shot"));
        assert!(!same_root("/Proj/shot", "/proj/shot"));
        assert!(same_root("/", "/"));
    }

    #[test]
    fn output_keys_parse() {
        let p = "DeadlineCloud/Manifests/f/q/j/";
        let k = parse(
            &format!("{p}step-1/task-2/2026-01-02T03:04:05.000006Z_sessionaction-3/abc_output"),
            p,
            5,
        )
        .unwrap();
        assert_eq!(k.task, Some(("step-1".to_string(), "task-2".to_string())));
        assert_eq!(
            k.session_action,
            "2026-01-02T03:04:05.000006Z_sessionaction-3"
        );
        assert!(parse(&format!("{p}step-1/task-2/x/abc_input"), p, 0).is_none());
        assert!(parse(&format!("{p}step-1/abc_output"), p, 0).is_none());
        // A chunked step's session action: no task folder.
        let k = parse(
            &format!("{p}step-1/2026-01-02T03:04:05.000006Z_sessionaction-4/abc_output"),
            p,
            0,
        )
        .unwrap();
        assert_eq!(k.task, None);
        assert_eq!(
            k.session_action,
            "2026-01-02T03:04:05.000006Z_sessionaction-4"
        );
    }
}
