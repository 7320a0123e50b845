//! The sync-inputs job (worker): fetch and check a job's input manifests, merge them per local
//! root, materialize them in the session directory, record what was placed (for output
//! detection) and return the path-mapping rules for the renderer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::attachments::{
    Attachments, PathFormat, PathMappingRule, asset_root_dir_name, local_root,
};
use super::download_outputs::{OutputsOf, latest_outputs};
use super::fetch_manifest::fetch_manifest;
use super::get::{self, Conflict, GetReport, GetSpec, WritableFor};
use crate::fsutil::access::Caller;
use crate::fsutil::beneath::Beneath;
use crate::hash::ContentHash;
use crate::manifest::{Manifest, decode_from, merge};
use crate::store::layout::manifests_prefix;
use crate::transfer::{Transfer, TransferError};

pub struct SyncInputsSpec {
    pub attachments: Attachments,
    pub session_dir: PathBuf,
    pub conflict: Conflict,
    /// Storage-profile location name → local path on this worker.
    pub location_map: Vec<(String, PathBuf)>,
    pub cache_dir: Option<PathBuf>,
    /// Steps of the job whose outputs are synced over the inputs (step-step dependencies).
    pub dependencies: Option<StepDependencies>,
    /// The daemon's client, when it is another user: the files go only where that user may
    /// write ([`WritableFor`]).
    pub caller: Option<Arc<Caller>>,
}

/// The steps a task depends on, in the job they belong to: their outputs (the latest session
/// action of each of their tasks) are materialized with the inputs, as the official worker
/// does for a step's dependencies.
#[derive(Debug, Clone)]
pub struct StepDependencies {
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub step_ids: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SyncedRoot {
    pub root_path: String,
    pub local_root: PathBuf,
    pub manifests: usize,
    /// Of `manifests`, the output manifests of the steps depended on.
    pub step_output_manifests: usize,
    pub report: GetReport,
}

/// What a step depended on brought: the tasks whose outputs were found, and their manifests.
#[derive(Debug, serde::Serialize)]
pub struct DependencyReport {
    pub step_id: String,
    pub tasks: usize,
    pub manifests: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct SyncInputsReport {
    pub path_mapping_rules: Vec<PathMappingRule>,
    pub roots: Vec<SyncedRoot>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_dependencies: Vec<DependencyReport>,
    pub seconds: f64,
}

/// Where sync-inputs records what it placed under each local root (under the session
/// directory, whose user may plant links there: see `fsutil::beneath`).
pub fn record_path(session_dir: &Path, local_root: &Path) -> Beneath {
    Beneath::new(
        session_dir,
        Path::new(".attache")
            .join("inputs")
            .join(format!("{}.manifest", root_id(local_root))),
    )
}

/// A local root's name in the session's records (`.attache/…`).
pub fn root_id(local_root: &Path) -> ContentHash {
    ContentHash::of(local_root.as_os_str().as_encoded_bytes())
}

/// One local root of the session and what lands in it, in merge order (later wins).
struct LocalRoot {
    local: PathBuf,
    root_path: String,
    format: PathFormat,
    manifests: Vec<Manifest>,
    step_output_manifests: usize,
}

/// The session's local roots, in the order the job (then the dependencies) named them.
struct Roots(Vec<LocalRoot>);

impl Roots {
    /// The root for `local`, added (empty) when new.
    fn entry(&mut self, local: PathBuf, root_path: &str, format: PathFormat) -> &mut LocalRoot {
        let idx = match self.0.iter().position(|r| r.local == local) {
            Some(i) => i,
            None => {
                self.0.push(LocalRoot {
                    local,
                    root_path: root_path.to_string(),
                    format,
                    manifests: Vec::new(),
                    step_output_manifests: 0,
                });
                self.0.len() - 1
            }
        };
        &mut self.0[idx]
    }
}

/// Forgets the hash cache's rows of the sessions beside this one that the worker agent has
/// removed: each session records its files under its own directory, and a worker runs
/// thousands of sessions. Runs beside the sync (on its own connection; it stops early when
/// the sync is cancelled). A cache that cannot be opened is said by the download itself.
async fn forget_removed_sessions(cache_dir: PathBuf, session: PathBuf, stop: CancellationToken) {
    let done = crate::logging::job_warnings::spawn_blocking(move || {
        let cache = crate::hash::cache::HashCache::open(&cache_dir)?;
        let sessions = session.parent().unwrap_or(&session).to_path_buf();
        cache
            .forget_vanished_in(&sessions, &session, &|| stop.is_cancelled())
            .map(|n| (n, sessions))
    })
    .await
    .expect("the hash cache's pruning panicked");
    match done {
        Ok(((0, _), _)) => {}
        Ok(((gone, files), sessions)) => tracing::info!(
            "hash cache: forgot {} of directories removed from {} ({gone} of them)",
            crate::cli::counted(files, "file"),
            sessions.display()
        ),
        Err(e) => tracing::debug!("hash cache: {e}"),
    }
}

pub async fn run(
    spec: SyncInputsSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<SyncInputsReport, TransferError> {
    // The cache is keyed by absolute paths.
    let session = std::path::absolute(&spec.session_dir).ok();
    let pruning = match (spec.cache_dir.clone(), session, transfer.dry_run) {
        (Some(cache_dir), Some(session), false) => Some(tokio::spawn(forget_removed_sessions(
            cache_dir,
            session,
            cancel.clone(),
        ))),
        _ => None,
    };
    let synced = sync(spec, transfer, cancel).await;
    // Not waited for once cancelled: it stops at its next look at the cancel.
    if let Some(pruning) = pruning {
        let _ = crate::transfer::cancellable(cancel, pruning).await;
    }
    synced
}

async fn sync(
    spec: SyncInputsSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<SyncInputsReport, TransferError> {
    let started = std::time::Instant::now();
    unmapped_location(&spec)?;
    super::get::no_file_in_the_way(&spec.session_dir)?;
    let prefix = manifests_prefix(transfer.store.root_prefix());
    let mut roots = Roots(Vec::new());
    for m in &spec.attachments.manifests {
        let local = local_root(&spec.session_dir, m, &spec.location_map);
        let root = roots.entry(local, &m.root_path, m.root_path_format);
        if let Some(path) = &m.input_manifest_path {
            let key = format!("{prefix}{path}");
            let manifest =
                fetch_manifest(&transfer, &key, m.input_manifest_hash.as_deref(), cancel).await?;
            root.manifests.push(manifest);
        }
    }
    let mut dependencies = Vec::new();
    if let Some(deps) = &spec.dependencies {
        for step_id in &deps.step_ids {
            let of = OutputsOf {
                farm_id: deps.farm_id.clone(),
                queue_id: deps.queue_id.clone(),
                job_id: deps.job_id.clone(),
                step_id: Some(step_id.clone()),
                task_id: None,
            };
            let (tasks, by_root) = latest_outputs(&of, &transfer, cancel).await?;
            if tasks == 0 {
                tracing::warn!(
                    "step {step_id} of job {}: no output manifests in the store, nothing of it to sync (has the step run? are the ids right?)",
                    deps.job_id
                );
            }
            let mut manifests = 0;
            for (root_path, fetched) in by_root {
                let (local, format) = dependency_root(&spec, &root_path);
                let root = roots.entry(local, &root_path, format);
                manifests += fetched.len();
                root.step_output_manifests += fetched.len();
                root.manifests.extend(fetched);
            }
            dependencies.push(DependencyReport {
                step_id: step_id.clone(),
                tasks,
                manifests,
            });
        }
    }
    let mut rules = Vec::new();
    let mut synced = Vec::new();
    for root in roots.0 {
        not_a_link_in_the_session(&spec.session_dir, &root.local)?;
        rules.push(PathMappingRule {
            source_path_format: root.format,
            source_path: root.root_path.clone(),
            destination_path: root.local.to_string_lossy().into_owned(),
        });
        // A location root is written in the location, any other in the session directory:
        // for a client of another user, what was checked for them.
        let checked = spec
            .location_map
            .iter()
            .map(|(_, path)| path)
            .find(|path| root.local.starts_with(path))
            .unwrap_or(&spec.session_dir);
        let for_caller = spec.caller.as_ref().map(|caller| WritableFor {
            caller: caller.clone(),
            checked: checked.clone(),
        });
        if root.manifests.is_empty() {
            // Outputs only: the directory must exist for the renderer to write into.
            if !transfer.dry_run {
                let group = transfer.group_access.as_deref();
                get::make_dest(&root.local, group, for_caller.as_ref())?;
            }
            continue;
        }
        let count = root.manifests.len();
        let get_spec = GetSpec {
            for_caller,
            replaceable: None,
            // What is placed, for output detection: written as get plans (a million-entry
            // record is over 100 MiB), named once every file is in place. It holds the
            // dependencies' outputs too, so this task's sync-outputs does not send them again.
            record: Some(record_path(&spec.session_dir, &root.local)),
            manifest: merge(root.manifests),
            dest: root.local.clone(),
            cache_dir: spec.cache_dir.clone(),
            conflict: spec.conflict,
            check_space: true,
        };
        let report = get::run(get_spec, transfer.clone(), cancel).await?;
        synced.push(SyncedRoot {
            root_path: root.root_path,
            local_root: root.local,
            manifests: count,
            step_output_manifests: root.step_output_manifests,
            report,
        });
    }
    Ok(SyncInputsReport {
        path_mapping_rules: rules,
        roots: synced,
        step_dependencies: dependencies,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where the outputs a dependency wrote under `root_path` land: in the local root of the job's
/// asset root of that path (a mapped storage-profile location too, where the renderer is told
/// to look; the official worker uses the session's `assetroot-…` directory even then), else in
/// the session's `assetroot-…` directory for that path.
fn dependency_root(spec: &SyncInputsSpec, root_path: &str) -> (PathBuf, PathFormat) {
    match spec
        .attachments
        .manifests
        .iter()
        .find(|m| m.root_path == root_path)
    {
        Some(m) => (
            local_root(&spec.session_dir, m, &spec.location_map),
            m.root_path_format,
        ),
        None => (
            spec.session_dir.join(asset_root_dir_name(root_path)),
            PathFormat::of(root_path),
        ),
    }
}

/// A local root in the session directory (`assetroot-…`) must not be a link: the session's
/// user could plant one (`assetroot-… -> /etc`), and the download, and a `--job-group`'s
/// grants, would follow it with the daemon's rights. (A location's path, from the worker's
/// own config, may be one.)
fn not_a_link_in_the_session(session_dir: &Path, local: &Path) -> Result<(), TransferError> {
    let Ok(rel) = local.strip_prefix(session_dir) else {
        return Ok(());
    };
    match Beneath::new(session_dir, rel).open_dir(false) {
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(TransferError::Refused {
            path: local.to_path_buf(),
            message: crate::fsutil::beneath::NOT_A_DIRECTORY.into(),
        }),
        // Not there yet (the download makes it), or what the download will say itself.
        _ => Ok(()),
    }
}

/// A root at a storage-profile location this worker's locations do not name, when it names
/// some: a mistyped `--location` would otherwise put the root in the session directory, where
/// the renderer, told the location's path, does not look. The official worker refuses it too
/// ("No path mapping rule found for the source path …"). A worker with no locations puts
/// every root in the session directory, as the official one does.
fn unmapped_location(spec: &SyncInputsSpec) -> Result<(), TransferError> {
    if spec.location_map.is_empty() {
        return Ok(());
    }
    for m in &spec.attachments.manifests {
        let Some(name) = m.file_system_location_name.as_deref() else {
            continue;
        };
        if !spec.location_map.iter().any(|(n, _)| n == name) {
            let known: Vec<String> = spec
                .location_map
                .iter()
                .map(|(n, _)| format!("{n:?}"))
                .collect();
            return Err(TransferError::Refused {
                path: PathBuf::from(&m.root_path),
                message: format!(
                    "the job's root is at storage-profile location {name:?}, which this worker's locations ({}; --location, storage_profile.locations) do not name: give --location {name}=/its/path/here; nothing was downloaded",
                    known.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The record sync-inputs left for `local`, if any.
pub fn read_record(session_dir: &Path, local: &Path) -> Option<Manifest> {
    read_manifest_file(&record_path(session_dir, local))
}

/// A manifest file of the session's records, if it is there, a regular file reached without
/// a link, and whole.
pub fn read_manifest_file(path: &Beneath) -> Option<Manifest> {
    decode_from(path.open_file().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::attachments::ManifestProperties;

    fn spec(manifests: Vec<ManifestProperties>) -> SyncInputsSpec {
        SyncInputsSpec {
            attachments: Attachments {
                manifests,
                file_system: "COPIED".into(),
            },
            session_dir: PathBuf::from("/s"),
            conflict: Conflict::Overwrite,
            location_map: vec![("Projects".into(), PathBuf::from("/mnt/projects"))],
            cache_dir: None,
            dependencies: None,
            caller: None,
        }
    }

    fn root(path: &str, format: PathFormat, location: Option<&str>) -> ManifestProperties {
        ManifestProperties {
            root_path: path.into(),
            root_path_format: format,
            file_system_location_name: location.map(str::to_string),
            input_manifest_path: None,
            input_manifest_hash: None,
            output_relative_directories: Some(vec!["renders".into()]),
        }
    }

    #[test]
    fn a_root_at_a_location_the_worker_does_not_name_is_refused_when_it_names_some() {
        let mut s = spec(vec![
            root("P:\\proj", PathFormat::Windows, Some("Projects")),
            root("D:\\Assets", PathFormat::Windows, Some("Assets")),
        ]);
        let e = unmapped_location(&s).unwrap_err().to_string();
        assert!(e.contains("D:\\Assets"), "{e}");
        assert!(e.contains("--location Assets=/its/path/here"), "{e}");
        s.location_map
            .push(("Assets".into(), PathBuf::from("/mnt/assets")));
        unmapped_location(&s).unwrap();
        // No locations at all: every root in the session directory.
        s.location_map.clear();
        unmapped_location(&s).unwrap();
    }

    #[test]
    fn a_dependency_s_outputs_land_where_the_job_s_root_is_on_this_worker() {
        let s = spec(vec![
            root("P:\\proj", PathFormat::Windows, Some("Projects")),
            root("/home/a/shot", PathFormat::Posix, None),
        ]);
        // A mapped storage-profile location: where the renderer is told the root is.
        assert_eq!(
            dependency_root(&s, "P:\\proj"),
            (PathBuf::from("/mnt/projects"), PathFormat::Windows)
        );
        assert_eq!(
            dependency_root(&s, "/home/a/shot"),
            (
                PathBuf::from("/s").join(asset_root_dir_name("/home/a/shot")),
                PathFormat::Posix
            )
        );
        // A root the attachments do not name: its own directory, its format from its spelling.
        assert_eq!(
            dependency_root(&s, "D:\\other"),
            (
                PathBuf::from("/s").join(asset_root_dir_name("D:\\other")),
                PathFormat::Windows
            )
        );
    }
}
