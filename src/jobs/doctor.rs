//! `attache doctor`: can this machine do its part of the farm's transfers? Each probe makes
//! the requests a real run makes, on keys that are safe to touch, and says what a failure
//! needs (a permission, a setting), so that a studio finds a missing policy line before the
//! first job fails on it.
//!
//! The probes write nothing a job could trip over: the only object written is the empty
//! file's content object (`Data/<xxh128 of nothing>.xxh128`, the object any job with an empty
//! file uploads, with `If-None-Match`, so an existing one is left alone; sent twice, to see
//! that the store refuses the second); the multipart probe is aborted; nothing is deleted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::hash::ContentHash;
use crate::hash::cache::HashCache;
use crate::jobs::Cancelled;
use crate::store::PutOptions;
use crate::store::layout::{data_key, join};
use crate::transfer::content_cache::ContentCache;
use crate::transfer::known_present::KnownPresent;
use crate::transfer::upload::{finished, given_up, record_open};
use crate::transfer::{Transfer, cancellable};

/// How long one probe may take: a store that does not answer by then is reported as such.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// A probe of something every run needs failed.
    Failed,
    /// A probe of something only some commands need failed.
    Warning,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub name: String,
    pub status: Status,
    /// What was found, or the error.
    pub detail: String,
    /// What a failure needs, and which commands it stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<String>,
    pub ms: u64,
}

/// What the probes found; the daemon sends it to `attache doctor --daemon` as JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DoctorReport {
    /// The store as messages name it, and as this machine tells stores apart (endpoint,
    /// region).
    pub store: String,
    pub identity: String,
    pub cache_dir: String,
    pub probes: Vec<Probe>,
    /// No probe failed (warnings allowed).
    pub passed: bool,
}

pub async fn run(
    settings: &Settings,
    t: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<DoctorReport, Cancelled> {
    let store = t.store.clone();
    let prefix = store.root_prefix().to_string();
    let empty = data_key(&prefix, ContentHash::of(b""));
    let data = join(&prefix, "Data/*");
    let manifests = join(&prefix, "Manifests/*");
    let mut probes = Vec::new();

    let s = store.as_ref();
    let probing = Probing {
        cancel,
        no_answer: AtomicBool::new(false),
    };
    let mut listed = None;
    let mut honours_if_none_match = None;
    let mut no_store_dir = false;
    let mut read = probe(
        &probing,
        "read content",
        true,
        format!(
            "s3:GetObject on {data} and s3:ListBucket on the bucket (without it a missing object answers 403); every command that transfers"
        ),
        async {
            match read_probe(s, &empty).await {
                Err(e) if e.is_no_store_dir() => {
                    no_store_dir = true;
                    Ok(e.to_string())
                }
                other => other,
            }
        },
    )
    .await?;
    // A `file://` store nothing was uploaded to yet has no directory: the write below makes
    // it. Where a share should be, it is not mounted: a worker would find nothing to read.
    if no_store_dir {
        read.status = Status::Warning;
        read.needs = Some(
            "the store's directory: the first upload makes it; on a machine that downloads, the share mounted at store.url".into(),
        );
    }
    probes.push(read);
    probes.push(
        probe(
            &probing,
            "write content",
            true,
            format!("s3:PutObject on {data}; put, submit, sync-outputs"),
            async {
                // As uploads send it: conditional unless s3.conditional_put is off (a store
                // that does not take If-None-Match).
                let conditional = settings.s3.conditional_put;
                let opts = PutOptions {
                    if_none_match: conditional,
                    ..PutOptions::default()
                };
                let outcome = s.put(&empty, bytes::Bytes::new(), &opts).await?;
                if conditional {
                    // The object is there now: a store that honours the header refuses this.
                    let again = s.put(&empty, bytes::Bytes::new(), &opts).await;
                    honours_if_none_match =
                        Some(again.map(|o| o == crate::store::PutOutcome::AlreadyExists));
                }
                Ok(format!(
                    "PUT {empty}{}: {}",
                    if conditional { " (If-None-Match)" } else { "" },
                    match outcome {
                        crate::store::PutOutcome::Created => "stored",
                        crate::store::PutOutcome::AlreadyExists => "already there, left alone",
                    }
                ))
            },
        )
        .await?,
    );
    probes.push(
        probe(
            &probing,
            "read back",
            true,
            format!("s3:GetObject on {data}; get, sync-inputs, download-outputs"),
            async {
                let mut obj = s.get(&empty, None).await?;
                let mut len = 0;
                while let Some(chunk) = obj.body.next().await {
                    len += chunk?.len();
                }
                Ok(format!("GET {empty}: {len} bytes, as stored"))
            },
        )
        .await?,
    );
    // Said with the multipart probe: why files over multipart_threshold go in one PUT here.
    let threshold = t.multipart_threshold();
    let one_put = (threshold > settings.transfer.multipart_threshold.0).then(|| {
        let how = if store.completion_copies_parts() {
            "it copies every part again on completion"
        } else {
            "this machine measured it copying every part again on completion (attache cache)"
        };
        format!(
            "; files up to {} go to this store in one PUT: {how} (transfer.copying_store_threshold)",
            bytesize::ByteSize(threshold).display().iec()
        )
    });
    probes.push(
        probe(
            &probing,
            "multipart",
            true,
            format!(
                "s3:PutObject and s3:AbortMultipartUpload on {data}; files over transfer.multipart_threshold, and cancelling them"
            ),
            async {
                let id = s.create_multipart(&empty).await?;
                // Recorded as every upload is: if the abort is refused (or never answered),
                // the next upload to this store from this machine aborts it.
                let record = record_open(&t, &empty, &id).await;
                // What resuming an interrupted upload asks; reported as a probe of its own.
                listed = Some(s.list_parts(&empty, &id).await);
                let record = futures::future::OptionFuture::from(record.map(given_up)).await;
                s.abort_multipart(&empty, &id).await?;
                if let Some(record) = record {
                    finished(record).await;
                }
                Ok(format!(
                    "started and aborted an upload to {empty}{}",
                    one_put.unwrap_or_default()
                ))
            },
        )
        .await?,
    );
    let lists_parts = format!(
        "s3:ListMultipartUploadParts on {data}; only resuming or taking over an upload, and not aborting one another machine took over"
    );
    probes.push(match listed {
        Some(listed) => {
            probe(&probing, "list parts", false, lists_parts, async move {
                let parts = listed?.map_or(0, |p| p.len());
                Ok(format!("ListParts of that upload: {parts} part(s)"))
            })
            .await?
        }
        // What it needs is not known: it was never asked.
        None => Probe {
            name: "list parts".into(),
            status: Status::Warning,
            detail: "not tried: the multipart probe made no upload to list".into(),
            needs: None,
            ms: 0,
        },
    });
    probes.push(
        probe(
            &probing,
            "list open uploads",
            false,
            "s3:ListBucketMultipartUploads on the bucket; attache cleanup, and taking over an upload another machine abandoned".to_string(),
            async {
                let open = s.list_multipart_uploads(&join(&prefix, "Data/")).await?;
                Ok(format!(
                    "{} open multipart upload(s) under Data/",
                    open.len()
                ))
            },
        )
        .await?,
    );
    let probe_manifest = join(&prefix, "Manifests/attache-doctor-probe");
    probes.push(
        probe(
            &probing,
            "read manifests",
            true,
            format!("s3:GetObject on {manifests}; sync-inputs, download-outputs"),
            async { read_probe(s, &probe_manifest).await },
        )
        .await?,
    );

    probes.push(conditional_put_probe(
        settings.s3.conditional_put,
        honours_if_none_match,
    ));

    let dir = settings.cache.dir.clone();
    let ttl = settings.transfer.known_present_ttl.0;
    let (cache, known) = crate::logging::job_warnings::spawn_blocking(move || {
        let started = Instant::now();
        let cache = HashCache::open(&dir).map(|_| ());
        let cache_ms = started.elapsed().as_millis() as u64;
        let started = Instant::now();
        let known = KnownPresent::open(&dir, ttl).map(|_| ());
        (
            (cache, cache_ms),
            (known, started.elapsed().as_millis() as u64),
        )
    })
    .await
    .expect("opening the caches panicked");
    probes.push(local_probe(
        "hash cache",
        cache,
        "a writable cache.dir (--cache-dir); without it every file is read on every run",
    ));
    probes.push(local_probe(
        "known-present index",
        known,
        "a writable cache.dir (--cache-dir); without it the store is asked about every object on every run",
    ));
    probes.push(content_cache_probe(&settings.cache).await);

    let passed = probes.iter().all(|p| p.status != Status::Failed);
    Ok(DoctorReport {
        store: store.describe(),
        identity: store.identity(),
        cache_dir: settings.cache.dir.display().to_string(),
        probes,
        passed,
    })
}

/// A GET of `key`, which may well not be there. Not a HEAD: a HEAD's error has no body, so a
/// bucket that does not exist would pass for a missing object, and refused credentials for
/// a missing permission; a GET's error names which (`NoSuchBucket`, `SignatureDoesNotMatch`).
async fn read_probe(
    s: &dyn crate::store::ObjectStore,
    key: &str,
) -> Result<String, crate::store::StoreError> {
    let mut obj = match s.get(key, None).await {
        Ok(obj) => obj,
        Err(e) if e.is_not_found() => return Ok(format!("GET {key}: not found, as expected")),
        Err(e) => return Err(e),
    };
    let mut len = 0;
    while let Some(chunk) = obj.body.next().await {
        len += chunk?.len();
    }
    Ok(format!("GET {key}: present, {len} bytes"))
}

/// Whether the store refused a second `PutObject If-None-Match: *` of an object it has, as
/// S3 does (`None`: not tried, with `s3.conditional_put` off (not `asked`) or the first PUT
/// failed). A store that ignores the header stores the object again: small objects already
/// there, unknown to this machine, are sent again instead of skipped. Its request ran in
/// "write content".
fn conditional_put_probe(
    asked: bool,
    honours: Option<Result<bool, crate::store::StoreError>>,
) -> Probe {
    let needs = "s3.conditional_put = false (ATTACHE_S3__CONDITIONAL_PUT=false) for a store that ignores If-None-Match; only upload traffic depends on it".to_string();
    let (status, detail, needs) = match honours {
        None if !asked => (
            Status::Ok,
            "not asked: s3.conditional_put is off (uploads ask with HEAD first)".to_string(),
            None,
        ),
        // Nothing known: said, not passed as fine.
        None => (
            Status::Warning,
            "not tried: the write content probe failed".to_string(),
            None,
        ),
        Some(Ok(true)) => (
            Status::Ok,
            "a second PUT If-None-Match of it was refused (412), as S3 does".to_string(),
            None,
        ),
        Some(Ok(false)) => (
            Status::Warning,
            "the store ignored If-None-Match: * and stored the object again (Garage does): a small object already in the store but not known to this machine is sent again instead of skipped (the same bytes: harmless, but more upload traffic). Set s3.conditional_put = false to ask with HEAD first".to_string(),
            Some(needs),
        ),
        Some(Err(e)) => {
            let detail = e.to_string();
            let needs = needs_for(&detail, needs);
            (Status::Warning, detail, needs)
        }
    };
    Probe {
        name: "conditional put".into(),
        status,
        detail,
        needs,
        ms: 0,
    }
}

/// The content cache: off, or its use and that a copy can be written in its directory.
async fn content_cache_probe(settings: &crate::config::CacheSettings) -> Probe {
    let mut probe = Probe {
        name: "content cache".into(),
        status: Status::Ok,
        detail: "off (cache.content_size = 0)".into(),
        needs: None,
        ms: 0,
    };
    let Some(cache) = ContentCache::from_settings(settings) else {
        return probe;
    };
    let (max, dir) = (settings.content_size.0, cache.dir().to_path_buf());
    let started = Instant::now();
    let usage = crate::logging::job_warnings::spawn_blocking(move || cache.usage())
        .await
        .expect("reading the content cache panicked");
    probe.ms = started.elapsed().as_millis() as u64;
    let size = |n| bytesize::ByteSize(n).display().iec();
    match usage {
        Ok((files, bytes)) => {
            probe.detail = format!(
                "{files} object(s), {} of {} in {}",
                size(bytes),
                size(max),
                dir.display()
            );
        }
        // Downloads go on without it.
        Err(e) => {
            probe.status = Status::Warning;
            probe.detail = format!("{}: {e}", dir.display());
            probe.needs = Some(
                "a writable cache.content_dir on a local disk, or cache.content_size = 0".into(),
            );
        }
    }
    probe
}

/// The store probes' run: once the store did not answer one (down, unreachable, a timeout),
/// the others are not sent, each saying so, instead of failing one by one after their own
/// wait with the same error.
struct Probing<'a> {
    cancel: &'a CancellationToken,
    no_answer: AtomicBool,
}

/// Runs one store probe once (no retries: a diagnosis must not wait out a backoff), for at
/// most [`PROBE_TIMEOUT`].
async fn probe(
    probing: &Probing<'_>,
    name: &'static str,
    required: bool,
    needs: String,
    request: impl Future<Output = Result<String, crate::store::StoreError>>,
) -> Result<Probe, Cancelled> {
    if probing.no_answer.load(Relaxed) {
        return Ok(Probe {
            name: name.into(),
            status: failure(required),
            detail: "not tried: the store did not answer an earlier probe (see above)".into(),
            needs: None,
            ms: 0,
        });
    }
    let started = Instant::now();
    let outcome = cancellable(probing.cancel, tokio::time::timeout(PROBE_TIMEOUT, request)).await?;
    let ms = started.elapsed().as_millis() as u64;
    let (status, detail, needs) = match outcome {
        Ok(Ok(detail)) => (Status::Ok, detail, None),
        Ok(Err(e)) => {
            // Network, 5xx: the store cannot be used now, whatever the request.
            if e.is_retryable() {
                probing.no_answer.store(true, Relaxed);
            }
            let detail = e.to_string();
            let needs = needs_for(&detail, needs);
            (failure(required), detail, needs)
        }
        Err(_) => {
            probing.no_answer.store(true, Relaxed);
            (
                failure(required),
                format!(
                    "no answer within {} s (check s3.endpoint_url, the network and any proxy)",
                    PROBE_TIMEOUT.as_secs()
                ),
                Some(needs),
            )
        }
    };
    Ok(Probe {
        name: name.into(),
        status,
        detail,
        needs,
        ms,
    })
}

/// What a failed request needs: the permission the probe exercises when the store refused
/// it, the right credentials when it did not know them. Other errors (an endpoint that does
/// not answer, a bucket that does not exist) already say what to do.
fn needs_for(error: &str, permission: String) -> Option<String> {
    if let Some(needs) = crate::store::s3::describe::credentials_need(error) {
        return Some(needs.to_string());
    }
    if error.contains("NoSuchBucket") {
        Some("the bucket of the store URL to exist at this endpoint and region: check store.url (--store), s3.endpoint_url and s3.region, or create the bucket".into())
    } else if error.contains("HTTP 403") {
        Some(permission)
    } else {
        None
    }
}

fn failure(required: bool) -> Status {
    if required {
        Status::Failed
    } else {
        Status::Warning
    }
}

fn local_probe<E: std::fmt::Display>(
    name: &'static str,
    (opened, ms): (Result<(), E>, u64),
    needs: &str,
) -> Probe {
    match opened {
        Ok(()) => Probe {
            name: name.into(),
            status: Status::Ok,
            detail: "opened".into(),
            needs: None,
            ms,
        },
        // Transfers go on without them, slower.
        Err(e) => Probe {
            name: name.into(),
            status: Status::Warning,
            detail: e.to_string(),
            needs: Some(needs.into()),
            ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_permission_or_the_credentials_it_needs() {
        let perm = || "s3:PutObject on p/Data/*".to_string();
        assert_eq!(
            needs_for("PUT k: HTTP 403 Forbidden: AccessDenied: denied", perm()).as_deref(),
            Some("s3:PutObject on p/Data/*")
        );
        assert!(
            needs_for("PUT k: HTTP 403 Forbidden: SignatureDoesNotMatch", perm())
                .unwrap()
                .starts_with("the secret key")
        );
        assert!(
            needs_for(
                "GET k: HTTP 403 Forbidden: AccessDenied: Forbidden: Invalid signature",
                perm()
            )
            .unwrap()
            .starts_with("the secret key")
        );
        assert!(
            needs_for(
                "HTTP 403 Forbidden: AccessDenied: Forbidden: No such key: GK0123",
                perm()
            )
            .unwrap()
            .starts_with("an access key")
        );
        assert!(
            needs_for("HTTP 403 Forbidden: InvalidAccessKeyId: no", perm())
                .unwrap()
                .starts_with("an access key")
        );
        assert!(
            needs_for("HTTP 400 Bad Request: ExpiredToken", perm())
                .unwrap()
                .starts_with("fresh credentials")
        );
        assert!(
            needs_for("HTTP 403 Forbidden: RequestTimeTooSkewed: off", perm())
                .unwrap()
                .starts_with("this machine's clock")
        );
        assert_eq!(
            needs_for(
                "dispatch failure (cannot reach http://x: check s3.endpoint_url",
                perm()
            ),
            None
        );
    }
}
