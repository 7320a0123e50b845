//! `attache check`: does a store hold the content that manifests name? Each distinct object is
//! looked up once (HEAD: there, with the manifest's size) or, deep, fetched and hashed. What is
//! missing or damaged is reported with the files that need it, so a wrangler knows which
//! tasks will fail and what to upload again before a worker finds out.
//!
//! A deep check can delete the objects whose content does not hash to their key: such an
//! object is wrong whatever any manifest says, no reader can use it (downloads check the
//! hash), and while it is there uploads skip that key as present.

mod listing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::download_outputs::OutputsOf;
use super::job_manifests;
use crate::hash::ContentHash;
use crate::manifest::Manifest;
use crate::store::layout::{data_key, legacy_data_key};
use crate::store::{ObjectStore, StoreError};
use crate::transfer::{Transfer, TransferError};
pub use listing::Lookup;

/// Files named per problem object; the rest are counted.
const PATHS_SHOWN: usize = 5;

pub struct CheckSpec {
    /// Manifests the caller read.
    pub manifests: Vec<Manifest>,
    /// Manifest objects to fetch from the store first (a job's input manifests): the key and
    /// the hash the job recorded for it.
    pub fetch: Vec<(String, Option<String>)>,
    /// A job's outputs to check too (the latest run of each task, as download-outputs takes
    /// them).
    pub outputs_of: Option<OutputsOf>,
    /// Fetch and hash every object instead of asking for its size.
    pub deep: bool,
    /// With `deep`: delete the objects whose content does not hash to their key.
    pub delete_damaged: bool,
    /// Without `deep`: list the store's content, or ask for each object.
    pub lookup: Lookup,
}

/// An object the manifests need that the store does not hold as they describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub hash: ContentHash,
    pub key: String,
    /// The size the manifests give.
    pub size: u64,
    /// The size the store reports (or, deep, the bytes it sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_size: Option<u64>,
    /// Deep: the hash of what the store sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_hash: Option<ContentHash>,
    /// Deleted by `delete_damaged`.
    pub deleted: bool,
    /// Why `delete_damaged` could not delete it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_error: Option<String>,
    /// Files that need it (the first few) and how many there are.
    pub paths: Vec<String>,
    pub files: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UnusableManifest {
    pub key: String,
    pub error: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub store: String,
    pub deep: bool,
    pub passed: bool,
    /// Manifests checked (read by the caller and fetched).
    pub manifests: u64,
    /// With `outputs_of`: the tasks whose output manifests were found.
    pub output_tasks: u64,
    pub files: u64,
    /// Distinct objects the manifests need, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Objects there, as the manifests describe them.
    pub present: u64,
    pub missing: Vec<Problem>,
    /// There with another size than the manifests give. Without `deep` it is not known which
    /// is wrong; deep, the content matched its key, so the manifest is.
    pub wrong_size: Vec<Problem>,
    /// Deep: content that does not hash to its key.
    pub damaged: Vec<Problem>,
    /// Manifest objects that could not be fetched or were not what the job recorded.
    pub unusable_manifests: Vec<UnusableManifest>,
    /// Bytes fetched by a deep check.
    pub downloaded_bytes: u64,
    /// Requests that asked about content: listing pages, HEADs (a missing object takes two:
    /// its key and the legacy one), GETs of a deep check.
    pub list_requests: u64,
    pub head_requests: u64,
    pub get_requests: u64,
    pub seconds: f64,
}

/// What the store holds under one hash.
enum Found {
    Present,
    Missing,
    WrongSize {
        key: String,
        size: u64,
    },
    Damaged {
        key: String,
        size: u64,
        hash: ContentHash,
    },
}

pub async fn run(
    spec: CheckSpec,
    t: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<CheckReport, TransferError> {
    let started = std::time::Instant::now();
    let mut report = CheckReport {
        store: t.store.describe(),
        deep: spec.deep,
        ..CheckReport::default()
    };
    let mut manifests = spec.manifests;
    let by_ids = spec.outputs_of.is_some();
    let fetched = job_manifests::fetch(&t, &spec.fetch, spec.outputs_of.as_ref(), cancel).await?;
    report.output_tasks = fetched.output_tasks as u64;
    // One that could not be fetched, or was not what the job recorded, is reported and the
    // others still checked.
    for (key, fetched) in fetched.manifests {
        match fetched {
            Ok(m) => manifests.push(m),
            Err(e) => report.unusable_manifests.push(UnusableManifest {
                key,
                error: e.to_string(),
            }),
        }
    }
    report.manifests = manifests.len() as u64;
    report.files = manifests.iter().map(|m| m.len() as u64).sum();

    let objects = distinct_objects(&manifests);
    report.objects = objects.len() as u64;
    report.bytes = objects.iter().map(|o| o.1).sum();
    t.progress.add_total(report.objects, report.bytes);

    let requests = Requests::default();
    let mut found = Findings::default();
    let by_listing = !spec.deep
        && match spec.lookup {
            Lookup::Head => false,
            Lookup::List => true,
            Lookup::Auto => t.store.lists_by_page() && objects.len() >= listing::MIN_OBJECTS,
        };
    let to_ask = if by_listing {
        let fall_back = spec.lookup == Lookup::Auto;
        let root = t.store.root_prefix();
        let (to_ask, pages) = listing::look_up_all(&t, &objects, fall_back, cancel, |h, s, f| {
            found.add(&mut report, root, h, s, f)
        })
        .await?;
        requests.list.fetch_add(pages, Relaxed);
        to_ask
    } else {
        objects
    };

    let deep = spec.deep;
    let mut asked = futures::stream::iter(to_ask)
        .map(|(hash, size)| {
            let t = t.clone();
            let requests = &requests;
            async move {
                let found = if deep {
                    fetch_and_hash(&t, hash, size, requests, cancel).await?
                } else {
                    look_up(&t, hash, size, requests, cancel).await?
                };
                t.progress.add_files(1);
                t.progress.add_bytes(size);
                Ok::<_, TransferError>((hash, size, found))
            }
        })
        .buffer_unordered(t.settings.workers.max(1));
    while let Some(checked) = asked.next().await {
        let (hash, size, f) = checked?;
        found.add(&mut report, t.store.root_prefix(), hash, size, f);
    }
    drop(asked);
    let Findings { present, absent } = found;
    // Nothing found at all: a wrong bucket or an unmounted share, rather than every object
    // gone, is said as such (and nothing is remembered of it).
    if present.is_empty() && !absent.is_empty() {
        t.gate.run(cancel, || t.store.confirm_exists()).await?;
    }
    report.present = present.len() as u64;
    report.downloaded_bytes = requests.downloaded.load(Relaxed);
    report.list_requests = requests.list.load(Relaxed);
    report.head_requests = requests.head.load(Relaxed);
    report.get_requests = requests.get.load(Relaxed);

    let store = t.store.as_ref();
    if spec.delete_damaged && deep {
        // Each damaged object is deleted on its own: one the store refuses is reported and the
        // others still go.
        for p in &mut report.damaged {
            let key = [p.key.clone()];
            match t.gate.run(cancel, || store.delete_many(&key)).await {
                Ok(()) => {
                    p.deleted = true;
                    tracing::warn!(key = p.key, "deleted a damaged object");
                }
                Err(TransferError::Cancelled(c)) => return Err(c.into()),
                Err(e) => p.delete_error = Some(e.to_string()),
            }
        }
    }
    remember(&t, present, absent).await;
    for list in [
        &mut report.missing,
        &mut report.wrong_size,
        &mut report.damaged,
    ] {
        list.sort_by(|a, b| a.key.cmp(&b.key));
        name_files(list, &manifests);
    }
    // A job's ids that find no manifest at all (a typo, another store) checked nothing: not
    // an OK. (Attachments that name no input manifest, a job of outputs only, are fine.)
    report.passed = (report.manifests > 0 || !by_ids)
        && report.missing.is_empty()
        && report.wrong_size.is_empty()
        && report.damaged.is_empty()
        && report.unusable_manifests.is_empty();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Requests sent and bytes fetched, counted as they go.
#[derive(Default)]
struct Requests {
    list: AtomicU64,
    head: AtomicU64,
    get: AtomicU64,
    downloaded: AtomicU64,
}

/// What the objects asked about so far were found to be: the report's problems, and the
/// hashes to tell the known-present index.
#[derive(Default)]
struct Findings {
    present: Vec<ContentHash>,
    absent: Vec<ContentHash>,
}

impl Findings {
    fn add(
        &mut self,
        report: &mut CheckReport,
        root_prefix: &str,
        hash: ContentHash,
        size: u64,
        found: Found,
    ) {
        let problem = |key: String, found_size, found_hash| Problem {
            hash,
            key,
            size,
            found_size,
            found_hash,
            deleted: false,
            delete_error: None,
            paths: Vec::new(),
            files: 0,
        };
        match found {
            Found::Present => self.present.push(hash),
            Found::Missing => {
                self.absent.push(hash);
                let key = data_key(root_prefix, hash);
                report.missing.push(problem(key, None, None));
            }
            Found::WrongSize { key, size: got } => {
                self.absent.push(hash);
                report.wrong_size.push(problem(key, Some(got), None));
            }
            Found::Damaged {
                key,
                size: got,
                hash: got_hash,
            } => {
                self.absent.push(hash);
                report.damaged.push(problem(key, Some(got), Some(got_hash)));
            }
        }
    }
}

/// Each hash the manifests name, once, with its size (the first manifest's, should two
/// disagree), sorted by hash. A sorted list takes 24 bytes an object, a third of a map's.
fn distinct_objects(manifests: &[Manifest]) -> Vec<(ContentHash, u64)> {
    let mut all: Vec<(ContentHash, u64)> = manifests
        .iter()
        .flat_map(|m| m.entries().iter().map(|e| (e.hash, e.size)))
        .collect();
    all.sort_by_key(|o| o.0);
    all.dedup_by_key(|o| o.0);
    all
}

/// HEAD under the object's key, then under the key very old clients used.
async fn look_up(
    t: &Transfer,
    hash: ContentHash,
    size: u64,
    requests: &Requests,
    cancel: &CancellationToken,
) -> Result<Found, TransferError> {
    let prefix = t.store.root_prefix();
    for key in [data_key(prefix, hash), legacy_data_key(prefix, hash)] {
        requests.head.fetch_add(1, Relaxed);
        if let Some(info) = t.gate.run(cancel, || t.store.head(&key)).await? {
            return Ok(if info.size == size {
                Found::Present
            } else {
                Found::WrongSize {
                    key,
                    size: info.size,
                }
            });
        }
    }
    Ok(Found::Missing)
}

/// GET and hash the object (under either key); a body cut short is fetched again whole.
async fn fetch_and_hash(
    t: &Transfer,
    hash: ContentHash,
    size: u64,
    requests: &Requests,
    cancel: &CancellationToken,
) -> Result<Found, TransferError> {
    let prefix = t.store.root_prefix();
    for key in [data_key(prefix, hash), legacy_data_key(prefix, hash)] {
        requests.get.fetch_add(1, Relaxed);
        let read = t
            .gate
            .run(cancel, || {
                hash_body(t.store.as_ref(), &key, &requests.downloaded)
            })
            .await;
        let (got, got_size) = match read {
            Ok(v) => v,
            Err(TransferError::Store(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        return Ok(if got != hash {
            Found::Damaged {
                key,
                size: got_size,
                hash: got,
            }
        } else if got_size != size {
            Found::WrongSize {
                key,
                size: got_size,
            }
        } else {
            Found::Present
        });
    }
    Ok(Found::Missing)
}

async fn hash_body(
    store: &dyn ObjectStore,
    key: &str,
    downloaded: &AtomicU64,
) -> Result<(ContentHash, u64), StoreError> {
    let mut obj = store.get(key, None).await?;
    let mut hasher = Xxh3Default::new();
    let mut len = 0u64;
    while let Some(chunk) = obj.body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
        downloaded.fetch_add(chunk.len() as u64, Relaxed);
    }
    Ok((ContentHash(hasher.digest128()), len))
}

/// Tells the known-present index what the check found: objects there are trusted by the next
/// upload from this machine, and the others are asked about (and uploaded) again.
async fn remember(t: &Transfer, present: Vec<ContentHash>, absent: Vec<ContentHash>) {
    let Some(known) = t.known.clone() else {
        return;
    };
    let store = t.store.identity();
    let saved = crate::logging::job_warnings::spawn_blocking(move || {
        for h in absent {
            known.forget(&store, h)?;
        }
        known.record(&store, &present)
    })
    .await
    .expect("the known-present update panicked");
    if let Err(e) = saved {
        tracing::warn!("{e}; the check's findings were not remembered for the next upload");
    }
}

/// Fills in the files that need each problem object.
fn name_files(problems: &mut [Problem], manifests: &[Manifest]) {
    if problems.is_empty() {
        return;
    }
    let index: std::collections::HashMap<ContentHash, usize> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| (p.hash, i))
        .collect();
    for e in manifests.iter().flat_map(|m| m.entries()) {
        if let Some(&i) = index.get(&e.hash) {
            let p = &mut problems[i];
            p.files += 1;
            if p.paths.len() < PATHS_SHOWN {
                p.paths.push(e.path.display().into_owned());
            }
        }
    }
}
