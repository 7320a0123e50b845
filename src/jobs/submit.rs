//! The submit job (workstation): group inputs into asset roots as the official client does,
//! hash and upload each root's files, and only then publish its input manifest; the result is
//! the job's `attachments`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::attachments::{Attachments, ManifestProperties, PathFormat};
use super::hash::{HashJobError, HashReport, HashSpec, hash_chosen};
use super::put::{PutError, run_with};
use super::{Cancelled, normalize_root};
use crate::hash::ContentHash;
use crate::hash::parallel::HashStats;
use crate::scan::{FileStat, ScanErrors, ScanOutcome, ScannedFile, dedup_by_path, scan_under};
use crate::store::PutOptions;
use crate::store::layout::{input_manifest_path, manifests_prefix, new_guid};
use crate::transfer::upload::UploadReport;
use crate::transfer::{Transfer, TransferError, reply_within};

/// A storage-profile location of type LOCAL: inputs under it form a root named after it.
#[derive(Debug, Clone)]
pub struct Location {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SubmitSpec {
    pub inputs: Vec<PathBuf>,
    pub output_dirs: Vec<PathBuf>,
    /// Paths the job refers to that need not exist (they shape the roots only).
    pub referenced: Vec<PathBuf>,
    pub farm_id: String,
    pub queue_id: String,
    pub local_locations: Vec<Location>,
    /// SHARED locations: the farm reaches them itself, nothing under them is uploaded.
    pub shared_locations: Vec<PathBuf>,
    /// An input that does not exist is an error; else it becomes a referenced path (with a
    /// warning), as for the official client by default.
    pub require_paths_exist: bool,
    /// Hashing settings (its `roots` are ignored).
    pub hash: HashSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Put(#[from] PutError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{0}")]
    Input(String),
}

impl SubmitError {
    /// See [`TransferError::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        match self {
            SubmitError::Put(p) => p.is_retryable(),
            SubmitError::Transfer(t) => t.is_retryable(),
            SubmitError::Input(_) => false,
        }
    }
}

impl From<HashJobError> for SubmitError {
    fn from(e: HashJobError) -> Self {
        SubmitError::Put(PutError::Hash(e))
    }
}

/// The outcome for one asset root.
#[derive(Debug, serde::Serialize)]
pub struct RootResult {
    pub root_path: String,
    pub files: u64,
    pub bytes: u64,
    pub hash: HashStats,
    pub upload: Option<UploadReport>,
    /// The manifest key (absent for a root with outputs only).
    pub manifest_key: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SubmitReport {
    /// `None` (JSON `null`): every path is under a SHARED location, and the job takes no
    /// attachments (CreateJob's `attachments` needs a manifest entry; the official client
    /// leaves it out).
    pub attachments: Option<Attachments>,
    pub roots: Vec<RootResult>,
    /// Inputs that did not exist, submitted as referenced paths.
    pub missing_inputs: Vec<PathBuf>,
    pub seconds: f64,
    /// Nothing was uploaded or published: the manifests the attachments name are not there.
    pub dry_run: bool,
}

/// One asset root being assembled.
#[derive(Debug, Default)]
struct Group {
    location: Option<String>,
    /// Set for a storage-profile root; else the common path of its members.
    fixed_root: Option<PathBuf>,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    referenced: Vec<PathBuf>,
}

impl Group {
    /// As the official client's `_get_asset_groups`: the common path of every member, its
    /// directory when that is a file (a lone file input). A referenced directory, or a
    /// referenced path alone, is its own root, as there.
    fn root(&self) -> PathBuf {
        if let Some(r) = &self.fixed_root {
            return r.clone();
        }
        let members = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.referenced)
            .cloned();
        let common = common_path(members).unwrap_or_else(|| PathBuf::from("/"));
        match common.parent() {
            Some(dir) if common.is_file() => dir.to_path_buf(),
            _ => common,
        }
    }
}

fn common_path(paths: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    paths.reduce(|acc, p| {
        let mut out = PathBuf::new();
        for (a, b) in acc.components().zip(p.components()) {
            if a != b {
                break;
            }
            out.push(a);
        }
        out
    })
}

/// Groups paths into asset roots: a LOCAL storage-profile location is its own root; everything
/// else goes by top-level directory (on POSIX that is `/`, so one root: the common path).
fn group(spec: &SubmitSpec) -> Result<BTreeMap<String, Group>, SubmitError> {
    let norm = |p: &Path| {
        normalize_root(p).map_err(|e| SubmitError::Input(format!("{}: {e}", p.display())))
    };
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let lists = [
        (0, &spec.inputs),
        (1, &spec.output_dirs),
        (2, &spec.referenced),
    ];
    for (kind, list) in lists {
        for p in list {
            let p = norm(p)?;
            if spec.shared_locations.iter().any(|s| p.starts_with(s)) {
                tracing::info!(path = %p.display(), "under a SHARED location; not uploaded");
                continue;
            }
            let g = match spec.local_locations.iter().find(|l| p.starts_with(&l.path)) {
                Some(l) => {
                    let g = groups.entry(format!("location:{}", l.name)).or_default();
                    g.location = Some(l.name.clone());
                    g.fixed_root = Some(l.path.clone());
                    g
                }
                None => {
                    let top = p
                        .components()
                        .next()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned());
                    groups
                        .entry(format!("top:{}", top.unwrap_or_default()))
                        .or_default()
                }
            };
            match kind {
                0 => g.inputs.push(p),
                1 => g.outputs.push(p),
                _ => g.referenced.push(p),
            }
        }
    }
    Ok(groups)
}

/// Moves the inputs that do not exist to the referenced paths. A job may name an input that a
/// step before it makes (a simulation's caches, read by the render after it), so by default,
/// as for the official client, a missing input shapes the roots, nothing is uploaded for it,
/// and a warning names it. With `require_paths_exist` it is an error.
fn refer_to_missing_inputs(spec: &mut SubmitSpec) -> Result<Vec<PathBuf>, SubmitError> {
    let (inputs, missing): (Vec<PathBuf>, Vec<PathBuf>) = std::mem::take(&mut spec.inputs)
        .into_iter()
        // As the official client's `exists`: a link to nothing (yet) is missing too.
        .partition(|p| p.exists());
    spec.inputs = inputs;
    if missing.is_empty() {
        return Ok(missing);
    }
    if spec.require_paths_exist {
        let names = missing
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SubmitError::Input(format!(
            "{} input(s) do not exist (--require-paths-exist): {names}",
            missing.len()
        )));
    }
    for p in &missing {
        tracing::warn!(
            "input {} does not exist: submitted as a referenced path (its root is mapped, nothing is uploaded for it); --require-paths-exist makes this an error",
            p.display()
        );
    }
    spec.referenced.extend(missing.iter().cloned());
    Ok(missing)
}

/// Submits: every root's data first, then its manifest; nothing is published if anything
/// fails or is cancelled.
pub async fn run(
    mut spec: SubmitSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<SubmitReport, SubmitError> {
    let started = std::time::Instant::now();
    let missing_inputs = refer_to_missing_inputs(&mut spec)?;
    let groups = group(&spec)?;
    if groups.is_empty() {
        tracing::warn!(
            "every path is under a SHARED storage-profile location: nothing is uploaded, and the job takes no attachments (create it without them, as `deadline bundle submit` does)"
        );
        return Ok(SubmitReport {
            attachments: None,
            roots: Vec::new(),
            missing_inputs,
            seconds: started.elapsed().as_secs_f64(),
            dry_run: transfer.dry_run,
        });
    }
    let mut attachments = Attachments {
        manifests: Vec::new(),
        file_system: "COPIED".into(),
    };
    let mut roots = Vec::new();
    let mut to_publish = Vec::new();
    for g in groups.values() {
        let root = g.root();
        let root_path = root.to_string_lossy().into_owned();
        let outputs = relative_outputs(&g.outputs, &root);
        let mut props = ManifestProperties {
            root_path: root_path.clone(),
            root_path_format: PathFormat::native(),
            file_system_location_name: g.location.clone(),
            input_manifest_path: None,
            input_manifest_hash: None,
            output_relative_directories: (!outputs.is_empty()).then_some(outputs),
        };
        let mut result = RootResult {
            root_path: root_path.clone(),
            files: 0,
            bytes: 0,
            hash: HashStats::default(),
            upload: None,
            manifest_key: None,
        };
        if !g.inputs.is_empty() {
            let (report, upload) =
                hash_and_upload(&root, &g.inputs, &spec, transfer.clone(), cancel).await?;
            let hashed = report.roots.into_iter().next().expect("one root hashed");
            result.files = hashed.stats.files;
            result.bytes = hashed.stats.bytes;
            result.hash = hashed.stats;
            result.upload = Some(upload);
            if !hashed.manifest.is_empty() {
                let bytes = super::encode_off_worker(hashed.manifest).await;
                let rel =
                    input_manifest_path(&spec.farm_id, &spec.queue_id, &new_guid(), &root_path);
                props.input_manifest_path = Some(rel.clone());
                props.input_manifest_hash = Some(ContentHash::of(&bytes).to_hex());
                let key = format!("{}{rel}", manifests_prefix(transfer.store.root_prefix()));
                result.manifest_key = Some(key.clone());
                to_publish.push((key, bytes));
            }
        }
        attachments.manifests.push(props);
        roots.push(result);
    }
    if attachments.manifests.len() > 10 {
        return Err(SubmitError::Input(format!(
            "{} asset roots; a job takes at most 10. Move inputs under fewer top directories or storage-profile locations",
            attachments.manifests.len()
        )));
    }
    // Every data object exists now: publish the manifests.
    if cancel.is_cancelled() {
        return Err(TransferError::Cancelled(Cancelled).into());
    }
    if !transfer.dry_run {
        publish(&transfer, to_publish, cancel).await?;
    }
    Ok(SubmitReport {
        attachments: Some(attachments),
        roots,
        missing_inputs,
        seconds: started.elapsed().as_secs_f64(),
        dry_run: transfer.dry_run,
    })
}

/// How long a cancel lets manifest PUTs already under way finish. Publishing is the commit
/// point: a PUT whose bytes reached the store may be stored even if dropped, so rather than
/// guess, the job waits for the answer and says truly whether its manifests exist.
const PUBLISH_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long taking published manifests back may take.
const UNPUBLISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Publishes the manifests, all or none: on a failure, or a cancel not over within
/// [`PUBLISH_GRACE`], the ones already stored are deleted again.
async fn publish(
    transfer: &Transfer,
    to_publish: Vec<(String, Vec<u8>)>,
    cancel: &CancellationToken,
) -> Result<(), SubmitError> {
    let keys: Vec<String> = to_publish.iter().map(|(k, _)| k.clone()).collect();
    // The PUTs run under their own token: the grace below is what ends them on a cancel.
    let own = CancellationToken::new();
    let puts = async {
        for (key, bytes) in to_publish {
            let (body, opts) = (bytes::Bytes::from(bytes), PutOptions::default());
            transfer
                .gate
                .run(&own, || transfer.store.put(&key, body.clone(), &opts))
                .await?;
        }
        Ok::<_, TransferError>(())
    };
    let result = match reply_within(cancel, PUBLISH_GRACE, puts).await {
        Ok(r) => r,
        Err(cancelled) => Err(cancelled.into()),
    };
    if result.is_err() {
        let unpublish = transfer
            .gate
            .run_within(UNPUBLISH_DEADLINE, || transfer.store.delete_many(&keys));
        let why = match unpublish.await {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some(format!("no answer within {UNPUBLISH_DEADLINE:?}")),
        };
        if let Some(why) = why {
            tracing::warn!(
                "could not delete the manifests of this unfinished submit ({}): {why}; no job refers to them, delete them by hand",
                keys.join(", ")
            );
        }
    }
    Ok(result?)
}

/// Scans the inputs of one root (directories walked, files taken as they are) and runs them
/// through the hash → upload pipeline.
async fn hash_and_upload(
    root: &Path,
    inputs: &[PathBuf],
    spec: &SubmitSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<(HashReport, UploadReport), SubmitError> {
    let (root, inputs, hash_spec) = (root.to_path_buf(), inputs.to_vec(), spec.hash.clone());
    let only_files_hashed = hash_spec.scan.caller.is_some();
    let put = run_with(
        move |sink, job| {
            hash_chosen(&root, &hash_spec, sink, job, |job| {
                collect_inputs(&root, &inputs, &hash_spec, job)
            })
        },
        only_files_hashed,
        transfer,
        cancel,
    )
    .await?;
    Ok((put.hash, put.upload))
}

/// The files of `inputs`, with paths relative to `root`, each once.
use crate::fsutil::access::Unreachable;

fn collect_inputs(
    root: &Path,
    inputs: &[PathBuf],
    spec: &HashSpec,
    cancel: &CancellationToken,
) -> Result<Vec<ScannedFile>, HashJobError> {
    let mut files = Vec::new();
    for input in inputs {
        let rel_base = input
            .strip_prefix(root)
            .expect("inputs are under their root");
        let meta = match &spec.scan.caller {
            None => std::fs::metadata(input).map_err(|source| HashJobError::Root {
                root: input.clone(),
                source,
            })?,
            // For the daemon's client of another user: looked up as that user (a link swapped
            // in since the job was accepted is followed only through directories they may
            // enter), and read only if it is still what was found here (same device and
            // inode; hashing insists), so its mode is the one that counts. A directory's
            // files are checked as the scan finds them.
            Some(caller) => match caller.reach_to_read(input) {
                Ok(reached) => reached.meta,
                Err(Unreachable::Refused(refused)) => {
                    return Err(ScanErrors(vec![refused.into()]).into());
                }
                Err(Unreachable::Io { source, .. }) => {
                    return Err(HashJobError::Root {
                        root: input.clone(),
                        source,
                    });
                }
            },
        };
        if meta.is_dir() {
            match scan_under(root, input, spec.scan.clone(), cancel)? {
                ScanOutcome::Done(found) => files.extend(found),
                ScanOutcome::Cancelled => return Err(Cancelled.into()),
            }
        } else if meta.is_file() {
            let rel = crate::manifest::ManifestPath::from_posix_bytes(
                rel_base.as_os_str().as_encoded_bytes(),
            );
            files.push(ScannedFile {
                rel,
                stat: FileStat::of(&meta),
            });
        } else {
            return Err(HashJobError::Root {
                root: input.clone(),
                source: std::io::Error::other("not a regular file or directory"),
            });
        }
    }
    dedup_by_path(&mut files);
    Ok(files)
}

/// A root's output directories as `outputRelativeDirectories` spells them, in the official
/// client's order: the paths sorted as strings, each once, then made relative to the root.
fn relative_outputs(outputs: &[PathBuf], root: &Path) -> Vec<String> {
    let mut sorted: Vec<&PathBuf> = outputs.iter().collect();
    sorted.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    sorted.dedup();
    sorted
        .into_iter()
        .map(|o| match o.strip_prefix(root) {
            Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
            Ok(r) => r.to_string_lossy().into_owned(),
            Err(_) => o.to_string_lossy().into_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file input the daemon reads for another user is checked on what it names when the
    /// job runs: a link swapped in after the job was accepted, to a file only its owner
    /// reads, is refused.
    #[test]
    fn a_file_input_is_read_for_another_user_only_if_what_it_names_is_theirs_to_read() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(t.path(), 0o755).unwrap();
        let (secret, scene, link) = (
            t.path().join("token"),
            t.path().join("scene.ma"),
            t.path().join("input.ma"),
        );
        std::fs::write(&secret, "s3cr3t").unwrap();
        mode(&secret, 0o600).unwrap();
        std::fs::write(&scene, "scene").unwrap();
        mode(&scene, 0o644).unwrap();
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let meta = std::fs::metadata(t.path()).unwrap();
        let mut spec =
            HashSpec::from_settings(&crate::config::Settings::default(), Vec::new(), false);
        spec.scan.caller = Some(Arc::new(crate::fsutil::access::Caller {
            uid: meta.uid() + 1000,
            gid: meta.gid() + 1000,
            groups: vec![meta.gid() + 1000],
        }));
        let cancel = CancellationToken::new();
        let e = collect_inputs(t.path(), std::slice::from_ref(&link), &spec, &cancel)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input.ma: user") && e.contains("may not read it"),
            "{e}"
        );
        let found = collect_inputs(t.path(), &[scene], &spec, &cancel).unwrap();
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn output_directories_are_in_the_official_client_s_order() {
        let outputs: Vec<PathBuf> = ["/p/renders", "/p/comp", "/p/a-b", "/p/a/b", "/p/comp", "/p"]
            .iter()
            .map(PathBuf::from)
            .collect();
        // Python's sorted() of the strings: '-' (0x2d) before '/' (0x2f).
        assert_eq!(
            relative_outputs(&outputs, Path::new("/p")),
            [".", "a-b", "a/b", "comp", "renders"]
        );
    }

    fn spec(inputs: &[&str], outputs: &[&str]) -> SubmitSpec {
        SubmitSpec {
            inputs: inputs.iter().map(PathBuf::from).collect(),
            output_dirs: outputs.iter().map(PathBuf::from).collect(),
            referenced: vec![],
            farm_id: "f".into(),
            queue_id: "q".into(),
            local_locations: vec![Location {
                name: "Assets".into(),
                path: "/mnt/assets".into(),
            }],
            shared_locations: vec!["/mnt/shared".into()],
            require_paths_exist: false,
            hash: HashSpec {
                roots: vec![],
                cache_dir: None,
                threads: 1,
                read_buffer: 1 << 20,
                scan: Default::default(),
            },
        }
    }

    #[test]
    fn roots_are_common_paths_and_locations() {
        let g = group(&spec(
            &[
                "/proj/a/x.ma",
                "/proj/b/tex/y.png",
                "/mnt/assets/lib/z.abc",
                "/mnt/shared/big.vdb",
            ],
            &["/proj/out"],
        ))
        .unwrap();
        let roots: Vec<(Option<String>, PathBuf)> =
            g.values().map(|g| (g.location.clone(), g.root())).collect();
        assert!(roots.contains(&(None, PathBuf::from("/proj"))), "{roots:?}");
        assert!(
            roots.contains(&(Some("Assets".into()), PathBuf::from("/mnt/assets"))),
            "{roots:?}"
        );
        assert_eq!(roots.len(), 2, "shared inputs are not uploaded: {roots:?}");

        // As the official client: the common path of the members, its directory when that is
        // a file; a referenced directory or a lone referenced path is its own root.
        let t = tempfile::tempdir().unwrap();
        let (scene, refs) = (t.path().join("a/x.ma"), t.path().join("refs"));
        std::fs::create_dir_all(scene.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::write(&scene, b"x").unwrap();
        let root_of = |inputs: &[&Path], referenced: &[&Path]| {
            let mut s = spec(&[], &[]);
            s.inputs = inputs.iter().map(|p| p.to_path_buf()).collect();
            s.referenced = referenced.iter().map(|p| p.to_path_buf()).collect();
            let g = group(&s).unwrap();
            assert_eq!(g.len(), 1, "{g:?}");
            g.values().next().unwrap().root()
        };
        assert_eq!(
            root_of(&[&scene], &[]),
            t.path().join("a"),
            "a lone file's directory"
        );
        assert_eq!(root_of(&[], &[&refs]), refs, "a referenced directory");
        let cache = t.path().join("sim/cache.vdb");
        assert_eq!(
            root_of(&[], &[&cache]),
            cache,
            "a lone path that does not exist"
        );
        assert_eq!(root_of(&[&scene], &[&cache]), t.path(), "the common path");
    }
}
