//! The sync-inputs job (worker): fetch and check a job's input manifests, merge them per local
//! root, materialize them in the session directory, record what was placed (for output
//! detection) and return the path-mapping rules for the renderer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::attachments::{Attachments, PathMappingRule, local_root};
use super::fetch_manifest::fetch_manifest;
use super::get::{self, Conflict, GetReport, GetSpec};
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
            // What is placed, for output detection: written as get plans (a million-entry
            // record is over 100 MiB), named once every file is in place.
            record: Some(record_path(&spec.session_dir, &local)),
            manifest: merged,
            dest: local.clone(),
            cache_dir: spec.cache_dir.clone(),
            conflict: spec.conflict,
            check_space: true,
        };
        let report = get::run(get_spec, transfer.clone(), cancel).await?;
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

/// The record sync-inputs left for `local`, if any.
pub fn read_record(session_dir: &Path, local: &Path) -> Option<Manifest> {
    let file = std::fs::File::open(record_path(session_dir, local)).ok()?;
    decode_from(file).ok()
}
