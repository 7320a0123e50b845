//! In-process S3 server for integration tests: `s3s-fs` 0.14.1 on a temporary directory, served
//! by hyper on `127.0.0.1:<random port>` on the current tokio runtime, with request and
//! connection statistics ([`Stats`]) and fault injection ([`Faults`]).
//!
//! ```ignore
//! let s3 = TestS3::start().await;
//! cmd.envs(s3.env()).arg(s3.store_url("root"));
//! assert_eq!(s3.open_multipart_uploads(), 0);
//! assert!(s3.stats.max_concurrent_connections() <= 4);
//! ```
//!
//! Limits of s3s-fs 0.14.1 worth knowing when writing tests:
//! - Key length: an object is stored as the file `<root>/<bucket>/<key>`, and next to it at the
//!   root s3s-fs writes `.bucket-<b64(bucket)>.object-<b64(key)>.metadata.json` and
//!   `...internal.json` (URL-safe base64, one file name, max 255 bytes). With the default
//!   bucket `attache-test` a PutObject key may be at most **156 bytes**; CreateMultipartUpload
//!   adds `.upload-<uuid>` to that name, so multipart keys may be at most **123 bytes**. Longer
//!   keys fail with 500 InternalError ("File name too long"), and a failed PutObject still
//!   leaves the object file behind. Use short farm/queue ids here; real-length ids go to Garage.
//! - Keys map to paths: `a/b` and `a/b/c` cannot both exist (file vs directory), `..` segments
//!   are resolved, and deleting `a/b/c` leaves the empty directories `a/b` (not listed).
//! - s3s-fs answers ListMultipartUploads with 501, lists no ETags in ListParts, answers a
//!   part, a completion or an abort of an upload that is gone with 403, and writes objects into buckets that
//!   do not exist; this server answers the first two from s3s-fs's files, the third with 404
//!   NoSuchUpload and the last with NoSuchBucket, as S3 does. Not implemented: conditional GET headers, versioning.
//!   Error codes differ from AWS in places; don't assert exact codes for s3s-fs's own errors.
//! - A *failed* CompleteMultipartUpload (parts out of order, EntityTooSmall) already deleted the
//!   upload's registration: the upload can neither be completed nor aborted afterwards
//!   (404 NoSuchUpload, see above) and its part files stay on disk (see [`TestS3::multipart_part_files`]).
//!   Real S3 keeps the upload open until it is aborted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::{HttpError, HttpResponse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const TEST_BUCKET: &str = "attache-test";
pub const TEST_ACCESS_KEY: &str = "AKIAATTACHETEST00001";
pub const TEST_SECRET_KEY: &str = "attache-test-secret-key-0000000000000000";

/// A running in-process S3 server. Dropping it stops the server (no new connections; open ones
/// are aborted as soon as the runtime gets to them) and deletes its directory.
pub struct TestS3 {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// The s3s-fs root directory; objects are the files under `root/bucket/`.
    pub root: PathBuf,
    pub stats: Arc<Stats>,
    pub faults: Arc<Faults>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    /// Set by [`TestS3::start_background`]: the server's own runtime.
    runtime: Option<tokio::runtime::Runtime>,
    /// The temporary directory [`TestS3::start`] made (None for [`TestS3::start_at`]).
    _dir: Option<tempfile::TempDir>,
}

impl TestS3 {
    /// Starts s3s-fs on a fresh temporary directory with the bucket [`TEST_BUCKET`] created,
    /// served by tasks on the current tokio runtime.
    ///
    /// The server only runs while that runtime gets to poll it: a test that blocks a worker
    /// (e.g. `std::process::Command::output()` to run the attache binary) needs
    /// `#[tokio::test(flavor = "multi_thread")]` so another worker serves, or
    /// `tokio::task::spawn_blocking`, or [`TestS3::start_background`].
    pub async fn start() -> TestS3 {
        Self::start_with_bucket(TEST_BUCKET).await
    }

    /// Like [`TestS3::start`], but on a dedicated 2-worker runtime owned by the server, so it
    /// serves no matter what the caller does (plain `#[test]` functions, blocking calls).
    /// Callable from sync and async code; dropping the server shuts its runtime down.
    pub fn start_background() -> TestS3 {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("test-s3")
                .enable_all()
                .build()
                .expect("build test S3 runtime");
            let mut s3 = rt.block_on(Self::start());
            s3.runtime = Some(rt);
            s3
        })
        .join()
        .expect("start test S3 server")
    }

    pub async fn start_with_bucket(bucket: &str) -> TestS3 {
        let dir = tempfile::tempdir().expect("tempdir");
        // s3s-fs canonicalizes its root; use the same spelling for our own file walks.
        let root = dir.path().canonicalize().expect("canonicalize tempdir");
        let mut s3 = Self::start_at(&root, "127.0.0.1:0", bucket)
            .await
            .expect("start test S3 server");
        s3._dir = Some(dir);
        s3
    }

    /// Serves the existing directory `root` (kept on drop) on `bind` (e.g. `127.0.0.1:0`), with
    /// `bucket` created if missing. Objects and open multipart uploads already under `root`
    /// are served as they are, so a server stopped and started again on the same root and port
    /// looks like a restarted S3 endpoint (the benchmark and fault scripts do that).
    pub async fn start_at(root: &Path, bind: &str, bucket: &str) -> std::io::Result<TestS3> {
        let root = root.canonicalize()?;
        // This is exactly what s3s-fs's CreateBucket does (a directory under the root).
        std::fs::create_dir_all(root.join(bucket))?;

        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| std::io::Error::other(format!("s3s-fs root {}: {e:?}", root.display())))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            TEST_ACCESS_KEY,
            TEST_SECRET_KEY,
        ));
        let s3 = builder.build();

        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let faults = Arc::new(Faults::default());
        let shared = Arc::new(Shared {
            s3,
            stats: stats.clone(),
            faults: faults.clone(),
            root: root.clone(),
        });
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(accept_loop(listener, shared, rx));

        Ok(TestS3 {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            access_key: TEST_ACCESS_KEY.to_owned(),
            secret_key: TEST_SECRET_KEY.to_owned(),
            root,
            stats,
            faults,
            shutdown: Some(tx),
            server,
            runtime: None,
            _dir: None,
        })
    }

    /// Stops accepting, aborts every open connection (waiting until they are closed), then
    /// deletes the directory.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }

    /// Multipart uploads that were created and neither completed nor aborted.
    ///
    /// On disk (s3s-fs 0.14.1, all directly under `root`), an upload `<uuid>` consists of
    /// - `.upload-<uuid>.json`: its registration (the creator's access key), written by
    ///   CreateMultipartUpload, removed by Complete and Abort. **This is what is counted.**
    /// - `.upload_id-<uuid>.part-<n>`: one file per uploaded part ([`Self::multipart_part_files`]).
    /// - `.bucket-<b64>.object-<b64>.upload-<uuid>.metadata.json`: the object's attributes.
    ///
    /// s3s-fs does not implement ListMultipartUploads (501); this server answers it from the same
    /// files ([`list_multipart_uploads`]).
    pub fn open_multipart_uploads(&self) -> usize {
        self.multipart_upload_ids().len()
    }

    /// The ids of the uploads counted by [`Self::open_multipart_uploads`], sorted.
    pub fn multipart_upload_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = root_file_names(&self.root)
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix(".upload-")
                    .and_then(|r| r.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }

    /// Makes every open multipart upload and its parts look `by` older: their start and
    /// their parts' times (file mtimes, which ListMultipartUploads and ListParts report).
    pub fn age_multipart_uploads(&self, by: Duration) {
        for name in root_file_names(&self.root) {
            if name.starts_with(".upload-") || name.starts_with(".upload_id-") {
                let path = self.root.join(&name);
                let was = std::fs::metadata(&path).unwrap().modified().unwrap();
                filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(was - by))
                    .unwrap();
            }
        }
    }

    /// Part files (`.upload_id-<uuid>.part-<n>`) on disk. Abort deletes all of an upload's parts;
    /// Complete deletes the parts it assembled. Parts survive a failed Complete, and parts
    /// uploaded but left out of the Complete list are never deleted.
    pub fn multipart_part_files(&self) -> usize {
        root_file_names(&self.root)
            .iter()
            .filter(|n| n.starts_with(".upload_id-") && n.contains(".part-"))
            .count()
    }

    /// Keys of the objects in the bucket, sorted: every regular file under `root/bucket/`, path
    /// components joined with `/` (the same walk s3s-fs does for ListObjects; directory
    /// objects `key/` and empty directories are not listed).
    pub fn object_keys(&self) -> Vec<String> {
        let base = self.root.join(&self.bucket);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let rel = path.strip_prefix(&base).unwrap();
                    let key: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    keys.push(key.join("/"));
                }
            }
        }
        keys.sort();
        keys
    }

    /// Where s3s-fs keeps the object `key`.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(&self.bucket).join(key)
    }

    /// The object's bytes read straight from disk, or None if absent.
    pub fn read_object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.object_path(key)).ok()
    }

    /// Seeds an object by writing the file directly (no request is made or logged). s3s-fs
    /// serves it like an uploaded one (ETag = MD5 computed on read, no user metadata).
    pub fn write_object(&self, key: &str, data: &[u8]) {
        let path = self.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Environment for running the attache binary against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ATTACHE_S3__ENDPOINT_URL", self.endpoint.as_str()),
            ("ATTACHE_S3__FORCE_PATH_STYLE", "true"),
            ("ATTACHE_S3__REGION", "us-east-1"),
            ("ATTACHE_S3__ACCESS_KEY_ID", self.access_key.as_str()),
            ("ATTACHE_S3__SECRET_ACCESS_KEY", self.secret_key.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `s3://{bucket}/{prefix}`
    pub fn store_url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts the connection tasks.
        self.server.abort();
        if let Some(rt) = self.runtime.take() {
            // (Dropping a Runtime inside async code panics; this does not.)
            rt.shutdown_background();
        }
    }
}

/// Names the S3 operation of a path-style request from its method, key and query.
fn operation(method: &Method, key: &str, query: &str) -> &'static str {
    let has = |name: &str| {
        query.split('&').any(|p| {
            p.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        })
    };
    match (method.as_str(), key.is_empty()) {
        ("GET", true) if has("list-type") => "ListObjectsV2",
        ("GET", true) if has("uploads") => "ListMultipartUploads",
        ("GET", true) if has("location") => "GetBucketLocation",
        ("GET", true) => "ListObjects",
        ("HEAD", true) => "HeadBucket",
        ("PUT", true) => "CreateBucket",
        ("POST", true) if has("delete") => "DeleteObjects",
        ("DELETE", true) => "DeleteBucket",
        ("GET", false) if has("uploadId") => "ListParts",
        ("GET", false) => "GetObject",
        ("HEAD", false) => "HeadObject",
        ("PUT", false) if has("partNumber") => "UploadPart",
        ("PUT", false) => "PutObject",
        ("POST", false) if has("uploads") => "CreateMultipartUpload",
        ("POST", false) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", false) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", false) => "DeleteObject",
        _ => "Other",
    }
}

fn root_file_names(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Which injected fault a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 SlowDown instead of processing the request.
    SlowDown,
    /// 500 InternalError instead of processing the request.
    InternalError,
    /// GET body cut after half its bytes; the connection was closed.
    CutBody,
    /// GET body with the byte at offset len/2 flipped (XOR 0xFF).
    CorruptBody,
}

/// Request totals ([`Stats::summary`]).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub requests: usize,
    /// Requests for data objects (keys containing `/Data/`).
    pub data_requests: usize,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Requests by S3 operation (`GetObject`, `PutObject`, `UploadPart`, ...).
    pub operations: std::collections::BTreeMap<&'static str, usize>,
}

/// One request as seen by the server (a snapshot; see [`Stats::log`]).
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// Arrival order, from 0 (continues across [`Stats::reset`]).
    pub seq: u64,
    /// "GET", "PUT", "HEAD", "POST", "DELETE".
    pub method: String,
    /// Raw URI path, e.g. `/attache-test/root/Data/abc.xxh128` (percent-encoded).
    pub path: String,
    /// Bucket (first path segment); empty for `/`.
    pub bucket: String,
    /// Percent-decoded object key (path after the bucket); empty for bucket-level requests.
    pub key: String,
    /// Raw query string without `?` (e.g. `uploads`, `partNumber=1&uploadId=..`, `list-type=2..`).
    pub query: String,
    /// Response status; 0 while the response is pending or if s3s aborted the connection.
    pub status: u16,
    /// Request body bytes the server read.
    pub bytes_in: u64,
    /// Response body bytes handed to hyper (for a cut body: the bytes before the cut).
    pub bytes_out: u64,
    /// The injected fault, if any.
    pub fault: Option<Fault>,
    /// Whether the response body was sent to the end (false while streaming, when cut, or when
    /// the client went away early).
    pub complete: bool,
}

impl RequestInfo {
    pub fn is_get(&self) -> bool {
        self.method == "GET"
    }
    /// The S3 operation, e.g. `GetObject`, `UploadPart`, `ListObjectsV2`.
    pub fn operation(&self) -> &'static str {
        operation(
            &Method::from_bytes(self.method.as_bytes()).unwrap_or(Method::GET),
            &self.key,
            &self.query,
        )
    }
    /// A request carrying `uploadId` in its query (UploadPart, Complete, Abort, ListParts).
    pub fn is_multipart_part_op(&self) -> bool {
        self.query.split('&').any(|p| p.starts_with("uploadId="))
    }
}

struct Entry {
    seq: u64,
    method: Method,
    path: String,
    bucket: String,
    key: String,
    query: String,
    status: AtomicU16,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    fault: Mutex<Option<Fault>>,
    complete: AtomicBool,
}

impl Entry {
    fn info(&self) -> RequestInfo {
        RequestInfo {
            seq: self.seq,
            method: self.method.as_str().to_owned(),
            path: self.path.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            query: self.query.clone(),
            status: self.status.load(Ordering::SeqCst),
            bytes_in: self.bytes_in.load(Ordering::SeqCst),
            bytes_out: self.bytes_out.load(Ordering::SeqCst),
            fault: *self.fault.lock().unwrap(),
            complete: self.complete.load(Ordering::SeqCst),
        }
    }
}

/// Request and connection counters. Connections are counted at accept and uncounted when the
/// connection task ends (the client closed it, or the server did after a cut body or a
/// protocol error).
#[derive(Default)]
pub struct Stats {
    open: AtomicUsize,
    max_open: AtomicUsize,
    total: AtomicUsize,
    next_seq: AtomicU64,
    log: Mutex<Vec<Arc<Entry>>>,
}

impl Stats {
    /// TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Highest number of simultaneously open TCP connections since start (or [`Self::reset`]).
    pub fn max_concurrent_connections(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }
    /// TCP connections accepted since start (or [`Self::reset`]).
    pub fn total_connections(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    /// Requests received (including ones that got an injected fault, and ones still running).
    pub fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }
    /// Requests with this HTTP method ("GET", "PUT", "HEAD", "POST", "DELETE").
    pub fn requests_of(&self, method: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.method.as_str().eq_ignore_ascii_case(method))
            .count()
    }
    pub fn requests_matching(&self, f: impl Fn(&RequestInfo) -> bool) -> usize {
        self.log().iter().filter(|r| f(r)).count()
    }
    /// Snapshot of every request since start (or [`Self::reset`]), in arrival order.
    pub fn log(&self) -> Vec<RequestInfo> {
        self.log.lock().unwrap().iter().map(|e| e.info()).collect()
    }
    /// Totals since start (or [`Self::reset`]), computed without copying the log (the
    /// benchmark server is polled for them while it logs hundreds of thousands of requests).
    pub fn summary(&self) -> Summary {
        let log = self.log.lock().unwrap();
        let mut sum = Summary {
            requests: log.len(),
            ..Summary::default()
        };
        for e in log.iter() {
            *sum.operations
                .entry(operation(&e.method, &e.key, &e.query))
                .or_insert(0) += 1;
            sum.data_requests += usize::from(e.key.contains("/Data/"));
            sum.bytes_in += e.bytes_in.load(Ordering::SeqCst);
            sum.bytes_out += e.bytes_out.load(Ordering::SeqCst);
        }
        sum
    }
    /// Forgets the request log and connection totals; the concurrency high-water mark restarts
    /// from the connections open now.
    pub fn reset(&self) {
        self.log.lock().unwrap().clear();
        self.total.store(0, Ordering::SeqCst);
        self.max_open
            .store(self.open.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn record(&self, method: &Method, path: &str, query: &str) -> Arc<Entry> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (bucket, key) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let entry = Arc::new(Entry {
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            method: method.clone(),
            path: path.to_owned(),
            bucket: percent_decode(bucket),
            key: percent_decode(key),
            query: query.to_owned(),
            status: AtomicU16::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            fault: Mutex::new(None),
            complete: AtomicBool::new(false),
        });
        self.log.lock().unwrap().push(entry.clone());
        entry
    }
}

struct ConnGuard(Arc<Stats>);

impl ConnGuard {
    fn new(stats: Arc<Stats>) -> Self {
        let now = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
        stats.total.fetch_add(1, Ordering::SeqCst);
        stats.max_open.fetch_max(now, Ordering::SeqCst);
        ConnGuard(stats)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

type Filter = Arc<dyn Fn(&Method, &str) -> bool + Send + Sync>;

/// Fault injection. All faults (and the delay) apply only to requests accepted by the
/// [`Faults::only_for`] filter, if one is set; requests the filter rejects do not consume
/// counts. The `*_next(n)` setters replace the remaining count (0 disarms). When several
/// faults are armed, a request gets the first that applies, in this order: `slow_down_for`
/// window, `slow_down_next`, `internal_error_next`, then for a successful GET
/// `cut_get_body_next`, `corrupt_get_body_next`.
///
/// Error faults (503 SlowDown, 500 InternalError) never reach the store: the server reads and
/// discards the request body (so the client sees the error, not a reset), then answers like
/// S3: `Content-Type: application/xml`, `x-amz-request-id`, and
/// `<Error><Code>SlowDown</Code><Message>..</Message><Resource>/bucket/key</Resource>
/// <RequestId>..</RequestId></Error>` (no body for HEAD). The AWS SDK classifies SlowDown as
/// throttling and 500/503 as transient: both are retried with backoff up to max_attempts.
/// Each faulted request is logged with [`RequestInfo::fault`] set.
#[derive(Default)]
pub struct Faults {
    slow_down_until: Mutex<Option<Instant>>,
    slow_down: AtomicUsize,
    internal_error: AtomicUsize,
    cut_get: AtomicUsize,
    corrupt_get: AtomicUsize,
    delay_ns: AtomicU64,
    land_parts_late_ns: AtomicU64,
    filter: Mutex<Option<Filter>>,
    ignore_if_none_match: AtomicBool,
}

impl Faults {
    /// Every (matching) request gets 503 SlowDown until `d` from now.
    pub fn slow_down_for(&self, d: Duration) {
        *self.slow_down_until.lock().unwrap() = Some(Instant::now() + d);
    }
    /// The next `n` (matching) requests get 503 SlowDown.
    pub fn slow_down_next(&self, n: usize) {
        self.slow_down.store(n, Ordering::SeqCst);
    }
    /// Behave as a store that ignores `If-None-Match: *` on PutObject (Garage 2.5 does): the
    /// object is stored over an existing one instead of refused with 412.
    pub fn ignore_if_none_match(&self, on: bool) {
        self.ignore_if_none_match.store(on, Ordering::SeqCst);
    }
    /// The next `n` (matching) requests get 500 InternalError.
    pub fn internal_error_next(&self, n: usize) {
        self.internal_error.store(n, Ordering::SeqCst);
    }
    /// The next `n` (matching) GETs that succeed (200/206) with a non-empty body send status
    /// and headers (with the real Content-Length `len`; for a Range GET the range length),
    /// then exactly the first `len / 2` body bytes (the server waits until hyper has written
    /// them to the socket), then close the connection. The SDK's `send()` succeeds; reading
    /// the body fails. GETs that fail (404...) or have empty bodies don't consume the count.
    pub fn cut_get_body_next(&self, n: usize) {
        self.cut_get.store(n, Ordering::SeqCst);
    }
    /// The next `n` (matching) GETs that succeed (200/206) with a non-empty body have the byte
    /// at offset `len / 2` of the response body flipped (XOR 0xFF); length and headers (ETag)
    /// unchanged, the connection stays usable.
    pub fn corrupt_get_body_next(&self, n: usize) {
        self.corrupt_get.store(n, Ordering::SeqCst);
    }
    /// Delays the response headers of every (matching) request by `d`, after the store did
    /// its work (error faults are delayed too); `Duration::ZERO` turns it off.
    pub fn delay_responses(&self, d: Duration) {
        self.delay_ns
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    }
    /// Every (matching) UploadPart whose whole body arrived is accepted, and its part file
    /// lands `d` later, even if the client has gone or the upload was aborted meanwhile, as
    /// with a store still writing a part when the abort comes (AWS: "part uploads in progress
    /// might or might not succeed"; s3s-fs then keeps the part forever). The reply comes after
    /// the landing. A part whose body was cut short is not stored. `Duration::ZERO` turns it
    /// off.
    pub fn land_parts_late(&self, d: Duration) {
        self.land_parts_late_ns
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    }
    /// Lets the next `n` PUTs of data objects (`/Data/` keys: PutObject and UploadPart alike)
    /// through and fails every later one with 500 InternalError, until [`Self::clear`] and
    /// [`Self::for_all`]: a store that fails part-way through an upload, past any retries.
    pub fn fail_data_puts_after(&self, n: usize) {
        self.fail_data_after(Method::PUT, n);
    }
    /// Lets the next `n` GETs of data objects (`/Data/` keys, whole or ranged) through and
    /// fails every later one with 500 InternalError, until [`Self::clear`]: a store lost
    /// part-way through a download, past any retries.
    pub fn fail_data_gets_after(&self, n: usize) {
        self.fail_data_after(Method::GET, n);
    }
    fn fail_data_after(&self, method: Method, n: usize) {
        let seen = Arc::new(AtomicUsize::new(0));
        self.only_for(move |m, key| {
            *m == method && key.contains("/Data/") && seen.fetch_add(1, Ordering::SeqCst) >= n
        });
        self.internal_error_next(usize::MAX / 2);
    }
    /// Restricts faults and delay to requests for which `pred(method, key)` is true; `key` is
    /// the percent-decoded object key ("" for bucket-level requests). Example: only GETs of data
    /// objects: `s3.faults.only_for(|m, k| m == Method::GET && k.contains("/Data/"))`.
    pub fn only_for(&self, pred: impl Fn(&Method, &str) -> bool + Send + Sync + 'static) {
        *self.filter.lock().unwrap() = Some(Arc::new(pred));
    }
    /// Removes the [`Self::only_for`] filter.
    pub fn for_all(&self) {
        *self.filter.lock().unwrap() = None;
    }
    /// Disarms every fault, the delay and the filter.
    pub fn clear(&self) {
        self.ignore_if_none_match.store(false, Ordering::SeqCst);
        *self.slow_down_until.lock().unwrap() = None;
        self.slow_down.store(0, Ordering::SeqCst);
        self.internal_error.store(0, Ordering::SeqCst);
        self.cut_get.store(0, Ordering::SeqCst);
        self.corrupt_get.store(0, Ordering::SeqCst);
        self.delay_ns.store(0, Ordering::SeqCst);
        self.land_parts_late_ns.store(0, Ordering::SeqCst);
        self.for_all();
    }

    fn applies(&self, method: &Method, key: &str) -> bool {
        let filter = self.filter.lock().unwrap().clone();
        filter.is_none_or(|f| f(method, key))
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::SeqCst))
    }

    fn land_parts_late_by(&self) -> Duration {
        Duration::from_nanos(self.land_parts_late_ns.load(Ordering::SeqCst))
    }

    /// Faults that replace the whole response.
    fn take_error(&self) -> Option<Fault> {
        let in_window = self
            .slow_down_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t);
        if in_window || take_one(&self.slow_down) {
            Some(Fault::SlowDown)
        } else if take_one(&self.internal_error) {
            Some(Fault::InternalError)
        } else {
            None
        }
    }

    fn take_body_fault(&self) -> Option<Fault> {
        if take_one(&self.cut_get) {
            Some(Fault::CutBody)
        } else if take_one(&self.corrupt_get) {
            Some(Fault::CorruptBody)
        } else {
            None
        }
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

struct Shared {
    s3: s3s::service::S3Service,
    stats: Arc<Stats>,
    faults: Arc<Faults>,
    root: PathBuf,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // s3s-fs writes GET bodies in 4 KiB pieces; with Nagle's algorithm on, small
                // responses wait for the client's delayed ACK (~20-40 ms per small GET on
                // loopback). Real S3 does not behave like that, so turn Nagle off.
                let _ = stream.set_nodelay(true);
                let guard = ConnGuard::new(shared.stats.clone());
                let shared = shared.clone();
                let conn = Arc::new(ConnShared::default());
                let io = TokioIo::new(ConnIo { inner: stream, conn: conn.clone() });
                conns.spawn(async move {
                    let _guard = guard;
                    let service = hyper::service::service_fn(move |req| {
                        handle(shared.clone(), conn.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnShared>,
    req: Request<Incoming>,
) -> Result<Response<OutBody>, HttpError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let entry = shared.stats.record(&method, &path, &query);
    let faults = &shared.faults;
    let applies = faults.applies(&method, &entry.key);
    let delay = if applies {
        faults.delay()
    } else {
        Duration::ZERO
    };

    if let Some(fault) = applies.then(|| faults.take_error()).flatten() {
        // Read the request body first, as S3 does: replying while the client is still sending
        // would make hyper close the connection and the client might see a reset instead of
        // the error.
        let mut body = req.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                entry.bytes_in.fetch_add(d.len() as u64, Ordering::SeqCst);
            }
        }
        *entry.fault.lock().unwrap() = Some(fault);
        let resp = match fault {
            Fault::SlowDown => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
                &path,
                entry.seq,
            ),
            _ => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
                &path,
                entry.seq,
            ),
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
    }

    // s3s-fs writes objects into a bucket that does not exist (creating its directory); S3
    // answers NoSuchBucket, which attache must tell apart from a missing object.
    // (A name too short or long to be a bucket's is left to s3s, which refuses it with 400.)
    let creates_bucket = method == Method::PUT && entry.key.is_empty();
    let valid_name = (3..=63).contains(&entry.bucket.len());
    if !creates_bucket && valid_name && !shared.root.join(&entry.bucket).is_dir() {
        let resp = not_found_after_body(
            req,
            "NoSuchBucket",
            "The specified bucket does not exist",
            &path,
            &entry,
        )
        .await;
        return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
    }

    if operation(&method, &entry.key, &query) == "ListMultipartUploads" {
        let resp = list_multipart_uploads(&shared.root, &entry.bucket, &query);
        return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
    }
    // s3s-fs answers a part, a completion or an abort of an upload that is gone (aborted,
    // completed) with 403 AccessDenied; S3 answers 404 NoSuchUpload (after reading the body).
    if matches!(
        operation(&method, &entry.key, &query),
        "UploadPart" | "CompleteMultipartUpload" | "AbortMultipartUpload"
    ) && !upload_exists(&shared.root, &query)
    {
        let resp = not_found_after_body(
            req,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            &path,
            &entry,
        )
        .await;
        return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
    }
    // A store that ignores If-None-Match: s3s-fs would refuse, so the object it would refuse
    // for goes first (the header is signed: it cannot be taken off the request).
    if faults.ignore_if_none_match.load(Ordering::SeqCst)
        && operation(&method, &entry.key, &query) == "PutObject"
        && req.headers().contains_key(header::IF_NONE_MATCH)
    {
        let _ = std::fs::remove_file(shared.root.join(&entry.bucket).join(&entry.key));
    }
    if operation(&method, &entry.key, &query) == "ListParts" {
        let resp = list_parts(
            &shared.root,
            &entry.bucket,
            &entry.key,
            &query,
            &path,
            entry.seq,
        );
        return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
    }

    let late = if applies && operation(&method, &entry.key, &query) == "UploadPart" {
        faults.land_parts_late_by()
    } else {
        Duration::ZERO
    };
    let mut resp: HttpResponse = if late.is_zero() {
        let req = req.map(|inner| {
            s3s::Body::http_body_unsync(CountIn {
                inner,
                entry: entry.clone(),
            })
        });
        shared.s3.call(req).await?
    } else {
        let (head, body) = req.into_parts();
        let collected = CountIn {
            inner: body,
            entry: entry.clone(),
        }
        .collect()
        .await;
        let Ok(body) = collected.map(|c| c.to_bytes()) else {
            // Cut short: nothing to store (the client is gone; the reply is for the log).
            let resp = error_response(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "The request body ended before its Content-Length.",
                &path,
                entry.seq,
            );
            return Ok(OutBody::new(resp, entry, conn, Mode::Pass));
        };
        let req = Request::from_parts(head, s3s::Body::from(body));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        let part_file = shared.root.join(format!(
            ".upload_id-{}.part-{}",
            param("uploadId"),
            param("partNumber")
        ));
        // Detached, so a dropped connection does not stop it: s3s-fs checks the upload and
        // writes the part now; its write "lands" `late` from now, after whatever an abort
        // removed meanwhile.
        let stored = tokio::spawn({
            let shared = shared.clone();
            async move {
                let resp = shared.s3.call(req).await?;
                let written = std::fs::read(&part_file).ok();
                tokio::time::sleep(late).await;
                if let Some(bytes) = written
                    && !part_file.exists()
                {
                    std::fs::write(&part_file, bytes).expect("part file written back");
                }
                Ok::<_, HttpError>(resp)
            }
        });
        stored.await.expect("store task")?
    };
    // s3s-fs answers 500 for GET/HEAD of a key that is a "directory" (a prefix of other keys,
    // e.g. `root` when `root/Data/x` exists); S3 answers 404. rclone HEADs its destination
    // prefix first and retries a 500 for over a minute, so answer as S3 does.
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR
        && (method == Method::GET || method == Method::HEAD)
        && !entry.key.is_empty()
        && shared.root.join(&entry.bucket).join(&entry.key).is_dir()
    {
        let status = StatusCode::NOT_FOUND;
        resp = error_response(
            status,
            "NoSuchKey",
            "The specified key does not exist.",
            &path,
            entry.seq,
        );
        if method == Method::HEAD {
            *resp.body_mut() = s3s::Body::empty();
        }
    }

    let mut mode = Mode::Pass;
    if applies && method == Method::GET && resp.status().is_success() {
        let len = content_length(&resp).unwrap_or(0);
        if len > 0 {
            match faults.take_body_fault() {
                Some(f @ Fault::CutBody) => {
                    *entry.fault.lock().unwrap() = Some(f);
                    mode = Mode::Cut { limit: len / 2 };
                }
                Some(f @ Fault::CorruptBody) => {
                    *entry.fault.lock().unwrap() = Some(f);
                    mode = Mode::Corrupt { at: len / 2 };
                }
                _ => {}
            }
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(OutBody::new(resp, entry, conn, mode))
}

fn content_length<B>(resp: &Response<B>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// An S3-style XML error, as AWS sends it (the SDK reads `<Code>` to classify: SlowDown is a
/// throttling error, InternalError/503/500 are transient; both are retried).
/// ListMultipartUploads, which s3s-fs does not implement (501), answered from its files: an
/// open upload has `.upload-<id>.json` (its mtime is the start) and
/// `.bucket-<b64>.object-<b64>.upload-<id>.metadata.json` (naming its bucket and key). One
/// page, no markers.
fn list_multipart_uploads(root: &Path, bucket: &str, query: &str) -> Response<s3s::Body> {
    use base64::Engine as _;
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let prefix = query
        .split('&')
        .find_map(|p| p.strip_prefix("prefix="))
        .map(percent_decode)
        .unwrap_or_default();
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut uploads = Vec::new();
    for name in root_file_names(root) {
        let Some(rest) = name
            .strip_prefix(".bucket-")
            .and_then(|r| r.strip_suffix(".metadata.json"))
        else {
            continue;
        };
        let Some((b, rest)) = rest.split_once(".object-") else {
            continue;
        };
        let Some((k, id)) = rest.split_once(".upload-") else {
            continue;
        };
        let (Some(b), Some(k)) = (b64(b), b64(k)) else {
            continue;
        };
        let Ok(started) =
            std::fs::metadata(root.join(format!(".upload-{id}.json"))).and_then(|m| m.modified())
        else {
            continue; // completed or aborted: only its attributes are left
        };
        if b == bucket && k.starts_with(&prefix) {
            uploads.push((k, id.to_string(), started));
        }
    }
    uploads.sort();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult \
         xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><KeyMarker></KeyMarker>\
         <UploadIdMarker></UploadIdMarker><Prefix>{}</Prefix><MaxUploads>1000</MaxUploads>\
         <IsTruncated>false</IsTruncated>",
        escape(bucket),
        escape(&prefix)
    );
    for (key, id, started) in uploads {
        xml.push_str(&format!(
            "<Upload><Key>{}</Key><UploadId>{id}</UploadId><Initiated>{}</Initiated>\
             <StorageClass>STANDARD</StorageClass></Upload>",
            escape(&key),
            humantime::format_rfc3339_millis(started)
        ));
    }
    xml.push_str("</ListMultipartUploadsResult>");
    let mut resp = Response::new(s3s::Body::from(xml));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

/// The `uploadId` of a request's query.
fn upload_id(query: &str) -> String {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("uploadId="))
        .map(percent_decode)
        .unwrap_or_default()
}

/// Whether the upload a request names is open: s3s-fs keeps `.upload-<id>.json` from its
/// creation until it is completed or aborted.
fn upload_exists(root: &Path, query: &str) -> bool {
    let id = upload_id(query);
    let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid && root.join(format!(".upload-{id}.json")).is_file()
}

/// ListParts answered from s3s-fs's files, as S3 answers it: s3s-fs 0.14.1 lists no ETags
/// (which a resumed upload needs to prove the parts it keeps) and answers for an upload that
/// does not exist. Here: NoSuchUpload for an upload that was never created, or was completed
/// or aborted; each part's ETag is the MD5 of its file, as UploadPart answered. One page.
fn list_parts(
    root: &Path,
    bucket: &str,
    key: &str,
    query: &str,
    resource: &str,
    seq: u64,
) -> Response<s3s::Body> {
    use md5::Digest as _;
    if !upload_exists(root, query) {
        return error_response(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            resource,
            seq,
        );
    }
    let id = upload_id(query);
    let prefix = format!(".upload_id-{id}.part-");
    let mut parts: Vec<(i32, String, u64, std::time::SystemTime)> = root_file_names(root)
        .into_iter()
        .filter_map(|name| {
            let n = name.strip_prefix(&prefix)?.parse().ok()?;
            let path = root.join(&name);
            let data = std::fs::read(&path).ok()?;
            let md5: String = md5::Md5::digest(&data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let landed = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((n, md5, data.len() as u64, landed))
        })
        .collect();
    parts.sort();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListPartsResult \
         xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{bucket}</Bucket><Key>{key}</Key>\
         <UploadId>{id}</UploadId><PartNumberMarker>0</PartNumberMarker><MaxParts>10000</MaxParts>\
         <IsTruncated>false</IsTruncated>"
    );
    for (n, md5, size, landed) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><LastModified>{}</LastModified>\
             <ETag>&quot;{md5}&quot;</ETag><Size>{size}</Size></Part>",
            humantime::format_rfc3339_millis(landed)
        ));
    }
    xml.push_str("</ListPartsResult>");
    let mut resp = Response::new(s3s::Body::from(xml));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

/// A 404 error answered once the request's body is read, as S3 does (answering while the
/// client still sends makes hyper close the connection: the client could see a reset).
async fn not_found_after_body(
    req: Request<Incoming>,
    code: &str,
    message: &str,
    path: &str,
    entry: &Entry,
) -> Response<s3s::Body> {
    let mut body = req.into_body();
    while body.frame().await.is_some() {}
    error_response(StatusCode::NOT_FOUND, code, message, path, entry.seq)
}

fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    resource: &str,
    seq: u64,
) -> Response<s3s::Body> {
    let request_id = format!("ATTACHETEST{seq:08}");
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    );
    let mut resp = Response::new(s3s::Body::from(xml));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    h.insert(
        "x-amz-request-id",
        HeaderValue::from_str(&request_id).unwrap(),
    );
    resp
}

/// Per-connection state shared between the TCP stream wrapper and response bodies.
#[derive(Default)]
struct ConnShared {
    /// How often hyper flushed the stream. hyper calls `poll_flush` on the stream only after
    /// its own write buffer has been written out completely.
    flushes: AtomicU64,
    waker: Mutex<Option<std::task::Waker>>,
}

impl ConnShared {
    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

/// The accepted TCP stream, observing hyper's flushes (for [`Faults::cut_get_body_next`]).
struct ConnIo {
    inner: tokio::net::TcpStream,
    conn: Arc<ConnShared>,
}

impl tokio::io::AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            self.conn.flushes.fetch_add(1, Ordering::SeqCst);
            if let Some(w) = self.conn.waker.lock().unwrap().take() {
                w.wake();
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Request body wrapper counting the bytes s3s reads.
struct CountIn {
    inner: Incoming,
    entry: Arc<Entry>,
}

impl Body for CountIn {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(d) = frame.data_ref()
        {
            self.entry
                .bytes_in
                .fetch_add(d.len() as u64, Ordering::SeqCst);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Mode {
    Pass,
    /// Send `limit` bytes, then fail the body (hyper closes the connection).
    Cut {
        limit: u64,
    },
    /// Flip the byte at this body offset.
    Corrupt {
        at: u64,
    },
}

/// Response body wrapper: counts bytes out and applies body faults.
struct OutBody {
    inner: s3s::Body,
    entry: Arc<Entry>,
    mode: Mode,
    sent: u64,
    conn: Arc<ConnShared>,
    /// Cut mode: the connection's flush count when the last allowed byte was handed to hyper.
    cut_mark: Option<u64>,
    /// No more frames will be produced.
    done: bool,
    /// The inner body ended normally, or all of Content-Length was sent (hyper stops polling
    /// a body once it has sent Content-Length bytes, so it may never see the end).
    finished: bool,
    content_length: Option<u64>,
}

impl OutBody {
    /// The reply, its status recorded in `entry`.
    fn new(
        resp: Response<s3s::Body>,
        entry: Arc<Entry>,
        conn: Arc<ConnShared>,
        mode: Mode,
    ) -> Response<OutBody> {
        // Every reply's status goes to the log as it leaves.
        entry.status.store(resp.status().as_u16(), Ordering::SeqCst);
        let content_length = content_length(&resp);
        resp.map(|inner| OutBody {
            inner,
            entry,
            mode,
            sent: 0,
            conn,
            cut_mark: None,
            done: false,
            finished: false,
            content_length,
        })
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Mode::Cut { limit } = this.mode
            && this.sent >= limit
        {
            // Wait until hyper has written everything handed over so far to the socket (its
            // next flush of the TCP stream), then fail the body: hyper closes the connection
            // short of the announced Content-Length. The client receives exactly `limit` bytes.
            let mark = *this.cut_mark.get_or_insert_with(|| this.conn.flushes());
            if this.conn.flushes() <= mark {
                *this.conn.waker.lock().unwrap() = Some(cx.waker().clone());
                if this.conn.flushes() <= mark {
                    return Poll::Pending;
                }
            }
            this.done = true;
            return Poll::Ready(Some(Err("injected fault: connection cut mid-body".into())));
        }
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                this.done = true;
                this.finished = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Some(Ok(frame)) => {
                let mut data = match frame.into_data() {
                    Ok(d) => d,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                };
                let start = this.sent;
                match this.mode {
                    Mode::Pass => {}
                    Mode::Cut { limit } => {
                        if start + data.len() as u64 > limit {
                            data.truncate((limit - start) as usize);
                        }
                    }
                    Mode::Corrupt { at } => {
                        if (start..start + data.len() as u64).contains(&at) {
                            let mut v = data.to_vec();
                            v[(at - start) as usize] ^= 0xFF;
                            data = Bytes::from(v);
                        }
                    }
                }
                this.sent += data.len() as u64;
                if !matches!(this.mode, Mode::Cut { .. }) && Some(this.sent) == this.content_length
                {
                    this.finished = true;
                }
                this.entry
                    .bytes_out
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.mode {
            Mode::Cut { .. } => self.done,
            _ => self.done || self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OutBody {
    fn drop(&mut self) {
        // Complete = the inner body reached its end and nothing was cut. hyper never polls
        // empty bodies (HEAD, 204), hence the check here rather than in poll_frame.
        let cut = matches!(self.mode, Mode::Cut { .. });
        if !cut && (self.finished || self.inner.is_end_stream()) {
            self.entry.complete.store(true, Ordering::SeqCst);
        }
    }
}
