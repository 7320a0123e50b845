//! The sync-inputs job (worker): fetch and check a job's input manifests, merge them per local
//! root, materialize them in the session directory, record what was placed (for output
//! detection) and return the path-mapping rules for the renderer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::attachments::{Attachments, PathMappingRule, local_root};
use super::detached;
use super::get::{self, Conflict, GetReport, GetSpec};
use crate::hash::ContentHash;
use crate::manifest::{Manifest, ManifestEntry, decode, merge};
use crate::store::layout::manifests_prefix;
use crate::store::read_object;
use crate::transfer::{Transfer, TransferError};

pub struct SyncInputsSpec {
    pub attachments: Attachments,
    pub session_dir: PathBuf,
    pub conflict: Conflict,
    /// Storage-profile location name → local path on this worker.
    pub location_map: Vec<(String, PathBuf)>,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
pub struct SyncedRoot {
    pub root_path: String,
    pub local_root: PathBuf,
    pub manifests: usize,
    pub report: GetReport,
}

#[derive(Debug, serde::Serialize)]
pub struct SyncInputsReport {
    pub path_mapping_rules: Vec<PathMappingRule>,
    pub roots: Vec<SyncedRoot>,
    pub seconds: f64,
}

/// Where sync-inputs records what it placed under each local root.
pub fn record_path(session_dir: &Path, local_root: &Path) -> PathBuf {
    let id = ContentHash::of(local_root.as_os_str().as_encoded_bytes());
    session_dir
        .join(".attache")
        .join("inputs")
        .join(format!("{id}.manifest"))
}

/// Reads a manifest object, checks it against the hash the job recorded, decodes it (which
/// refuses unsafe paths).
pub async fn fetch_manifest(
    t: &Transfer,
    key: &str,
    expected: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Manifest, TransferError> {
    let bytes = t
        .gate
        .run(cancel, || read_object(t.store.as_ref(), key))
        .await?;
    // Checking and decoding a million entries takes a second or more: off the runtime's
    // worker (the other transfers of a daemon go on), and a cancel does not wait for it.
    let expected = expected.map(str::to_owned);
    let checking = detached::run(cancel, move || -> Result<Manifest, String> {
        if let Some(want) = expected {
            let got = ContentHash::of(&bytes);
            if !got.to_hex().eq_ignore_ascii_case(&want) {
                return Err(format!(
                    "manifest hash is {got}, the job says {want}: the manifest was changed or damaged"
                ));
            }
        }
        decode(&bytes).map_err(|e| format!("manifest is not usable: {e}"))
    });
    checking.await?.map_err(|message| TransferError::Refused {
        path: PathBuf::from(key),
        message,
    })
}

pub async fn run(
    spec: SyncInputsSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<SyncInputsReport, TransferError> {
    let started = std::time::Instant::now();
    let prefix = manifests_prefix(transfer.store.root_prefix());
    // Local root → (root path, format, manifests in job order).
    let mut roots: Vec<(
        PathBuf,
        &super::attachments::ManifestProperties,
        Vec<Manifest>,
    )> = Vec::new();
    for m in &spec.attachments.manifests {
        let local = local_root(&spec.session_dir, m, &spec.location_map);
        let idx = match roots.iter().position(|(l, _, _)| *l == local) {
            Some(i) => i,
            None => {
                roots.push((local, m, Vec::new()));
                roots.len() - 1
            }
        };
        if let Some(path) = &m.input_manifest_path {
            let key = format!("{prefix}{path}");
            let manifest =
                fetch_manifest(&transfer, &key, m.input_manifest_hash.as_deref(), cancel).await?;
            roots[idx].2.push(manifest);
        }
    }
    let mut rules = Vec::new();
    let mut synced = Vec::new();
    for (local, props, manifests) in roots {
        rules.push(PathMappingRule {
            source_path_format: props.root_path_format,
            source_path: props.root_path.clone(),
            destination_path: local.to_string_lossy().into_owned(),
        });
        if manifests.is_empty() {
            // Outputs only: the directory must exist for the renderer to write into.
            if !transfer.dry_run {
                std::fs::create_dir_all(&local).map_err(TransferError::io(&local))?;
            }
            continue;
        }
        let count = manifests.len();
        let merged = merge(manifests);
        let get_spec = GetSpec {
            record_placed: true,
            manifest: merged,
            dest: local.clone(),
            cache_dir: spec.cache_dir.clone(),
            conflict: spec.conflict,
            check_space: true,
        };
        let mut report = get::run(get_spec, transfer.clone(), cancel).await?;
        // Off the runtime's worker: a million-entry record is over 100 MiB to write.
        let placed = std::mem::take(&mut report.placed);
        let (session_dir, at) = (spec.session_dir.clone(), local.clone());
        if !transfer.dry_run {
            tokio::task::spawn_blocking(move || write_record(&session_dir, &at, placed))
                .await
                .expect("writing the sync record panicked")?;
        }
        synced.push(SyncedRoot {
            root_path: props.root_path.clone(),
            local_root: local,
            manifests: count,
            report,
        });
    }
    Ok(SyncInputsReport {
        path_mapping_rules: rules,
        roots: synced,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Saves what was placed under `local` as a manifest (the codec keeps any file name exact).
fn write_record(
    session_dir: &Path,
    local: &Path,
    placed: Vec<ManifestEntry>,
) -> Result<(), TransferError> {
    if placed.is_empty() {
        return Ok(());
    }
    let path = record_path(session_dir, local);
    let record = Manifest::new(placed);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(TransferError::io(dir))?;
    }
    // Streamed: the encoded record of a million entries is over 100 MiB.
    crate::fsutil::write_atomic_with(&path, |w| record.encode_to(w))
        .map_err(TransferError::io(&path))
}

/// The record sync-inputs left for `local`, if any.
pub fn read_record(session_dir: &Path, local: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(record_path(session_dir, local)).ok()?;
    decode(&bytes).ok()
}
