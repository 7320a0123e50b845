//! Object stores: what attache needs from S3 (or a local directory standing in for it), as
//! one trait, with the store URL and the key layout.

pub mod file_source;
pub mod fs;
pub mod layout;
pub mod parts_in_flight;
pub mod s3;
pub mod sent_bytes;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::config::Settings;
use crate::transfer::limiter::Bandwidth;
use file_source::{FileSource, SourceError};

/// What a store knows of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Milliseconds since the epoch, when the store reports it.
    pub last_modified_ms: Option<i64>,
    /// User metadata (`x-amz-meta-*`), from HEAD only (listings do not carry it).
    pub metadata: Vec<(String, String)>,
}

/// A multipart upload a store holds open: started, neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// Milliseconds since the epoch, when the store reports it.
    pub initiated_ms: Option<i64>,
}

/// Keys a listing request returns at most (S3's `max-keys` default and ceiling).
pub const LIST_PAGE_KEYS: usize = 1000;

/// One page of a listing, in key order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// More keys follow the last one.
    pub truncated: bool,
}

/// A part an open multipart upload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: i32,
    pub size: u64,
    pub etag: String,
    /// When the store received it (milliseconds since the epoch), when it says.
    pub last_modified_ms: Option<i64>,
}

impl ObjectInfo {
    pub fn meta(&self, name: &str) -> Option<&str> {
        meta(&self.metadata, name)
    }
}

/// The user metadata value `name` (case-insensitive, as HTTP headers are).
pub fn meta<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Options of a single-request upload.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Create only if absent (`If-None-Match: *`); an existing object is left as it is.
    pub if_none_match: bool,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: Vec<(String, String)>,
    /// Counts the body's bytes into the transfer's progress as they go out.
    pub sent: Option<Arc<sent_bytes::SentBytes>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// `if_none_match` was set and the object was already there.
    AlreadyExists,
}

/// An object's body, already paced by the download bandwidth limit.
pub struct GetObject {
    /// Bytes this response will carry (the range's length for a ranged GET).
    pub content_length: u64,
    /// User metadata (`x-amz-meta-*`), as a HEAD gives it: an output manifest's `asset-root`
    /// comes with its body, without a HEAD of its own.
    pub metadata: Vec<(String, String)>,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// A store failure, naming the store, the operation and the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: not found in {store} ({})", not_found_advice(key))]
    NotFound { store: String, key: String },
    #[error("{store}: {op} {key}: {message}")]
    Failed {
        store: String,
        op: &'static str,
        key: String,
        message: String,
        /// Worth another try (network, 5xx, throttling) rather than a lasting refusal.
        retryable: bool,
    },
    /// A `file://` store's directory is not there: a share not mounted, a mistyped URL, or a
    /// store nothing was uploaded to yet (an upload makes it).
    #[error(
        "{store}: {op} {key}: the store directory {} does not exist (is the share mounted? check store.url)",
        dir.display()
    )]
    NoStoreDir {
        store: String,
        op: &'static str,
        key: String,
        dir: PathBuf,
    },
    /// The file a [`ObjectStore::put_file`] was sending could not be read, or changed.
    #[error("{}: {error}", path.display())]
    Source { path: PathBuf, error: SourceError },
}

/// Whether the operation `op` makes an object rather than naming one that exists: a "not
/// found" to it is a wrong store, endpoint or directory, never a missing object.
pub(crate) fn creates_object(op: &str) -> bool {
    matches!(op, "PUT" | "CreateMultipartUpload")
}

/// What to check when `key` is not in the store: a content object is uploaded again, a
/// manifest published again.
fn not_found_advice(key: &str) -> &'static str {
    if key.contains("/Manifests/") || key.starts_with("Manifests/") {
        "is this the right store and root prefix, and the right farm, queue and job ids? a manifest is there once its submission or task has published it"
    } else {
        "is this the right store and root prefix? an object that was deleted must be uploaded again; `attache check` lists every object a job lacks"
    }
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_no_store_dir(&self) -> bool {
        matches!(self, StoreError::NoStoreDir { .. })
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// The operations attache performs on a store. Keys are full keys in the bucket (or paths
/// under the directory), `/`-separated. Bodies pass through the store's bandwidth limiter.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// `s3://bucket/prefix` or `file:///dir`, for messages.
    fn describe(&self) -> String;
    /// The store as this machine remembers it (known-present index, open-upload records,
    /// the daemon's in-flight objects): `describe()` and whatever else tells apart two stores
    /// of that name, such as the same bucket name at two S3 endpoints. Messages use
    /// `describe()`.
    fn identity(&self) -> String {
        self.describe()
    }
    /// The root prefix content and manifests live under (may be empty).
    fn root_prefix(&self) -> &str;
    /// A counter of throttling replies (503 SlowDown) the store has seen; transfers lower
    /// their concurrency while it climbs.
    fn throttle_signal(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::default()
    }
    /// Whether completing a multipart upload copies its parts again (known of the store
    /// itself; others are measured: `transfer::copying_stores`).
    fn completion_copies_parts(&self) -> bool {
        false
    }

    /// Whether the store itself is there (an S3 bucket, a store directory), asked when none
    /// of the objects looked for was: a wrong bucket answers every HEAD with a bare 404, as
    /// if each object were missing. An answer that does not say (no permission to ask) is Ok.
    async fn confirm_exists(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetObject, StoreError>;
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError>;
    /// Uploads a file in one request, read as it is sent: for files too big to hold in
    /// memory. Its last bytes go only if it still has `source.hash` and size; otherwise
    /// [`StoreError::Source`], and nothing is stored.
    async fn put_file(
        &self,
        key: &str,
        source: Arc<FileSource>,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError>;
    async fn create_multipart(&self, key: &str) -> Result<String, StoreError>;
    /// Uploads part `part_number` (1-based); returns its ETag.
    /// `sent` counts the part's bytes as they go out.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        sent: Option<Arc<sent_bytes::SentBytes>>,
    ) -> Result<String, StoreError>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    /// The parts an open multipart upload holds, by number; `None`: the store has no such
    /// upload (completed, aborted, or expired by a lifecycle rule).
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<UploadedPart>>, StoreError>;
    /// The ETag this store gives a part of these bytes, when it can be known without sending
    /// them (S3: their MD5, unless the bucket encrypts with KMS or customer keys). A part an
    /// earlier run left is kept only when its ETag is this: the proof that it holds these bytes.
    fn part_etag(&self, body: &[u8]) -> String;
    /// The open multipart uploads of keys starting with `prefix`.
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// The objects under `prefix` whose keys sort after `start_after`, at most
    /// [`LIST_PAGE_KEYS`] of them. This default lists everything under `prefix` and keeps the
    /// page: right for a directory, where [`ObjectStore::lists_by_page`] is false.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        let mut objects = self.list(prefix).await?;
        if let Some(after) = start_after {
            objects.retain(|o| o.key.as_str() > after);
        }
        let truncated = objects.len() > LIST_PAGE_KEYS;
        objects.truncate(LIST_PAGE_KEYS);
        Ok(ListPage { objects, truncated })
    }
    /// Whether a [`ObjectStore::list_page`] is one request (S3: it answers for up to 1,000
    /// keys at about the cost of a HEAD) rather than a walk of a whole directory, where asking
    /// for each key is cheaper.
    fn lists_by_page(&self) -> bool {
        false
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
}

/// Whether `identity` ([`ObjectStore::identity`]) is the store at `url`, at any endpoint and
/// region: an identity is the URL, then " region=… endpoint=…" for S3.
pub fn identity_is_of(identity: &str, url: &str) -> bool {
    identity
        .strip_prefix(url.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// A parsed `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    S3 { bucket: String, root_prefix: String },
    Fs { dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    #[error("store URL {0:?} is not s3://bucket/rootPrefix or file:///absolute/dir")]
    Unsupported(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreUrlError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreUrlError::Unsupported(url.into()));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.into(),
                root_prefix: prefix.trim_matches('/').into(),
            });
        }
        if let Some(path) = url.strip_prefix("file://")
            && path.starts_with('/')
        {
            // As a file manager or a browser writes it: `%20` for a space.
            use std::os::unix::ffi::OsStringExt;
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
            return Ok(StoreUrl::Fs {
                dir: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
            });
        }
        Err(StoreUrlError::Unsupported(url.into()))
    }

    /// Whether two store URLs name the same store, however spelled (a trailing slash, a
    /// percent-encoded `file://` path); URLs that do not parse are compared as written.
    pub fn same(a: &str, b: &str) -> bool {
        match (StoreUrl::parse(a), StoreUrl::parse(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error(transparent)]
    Url(#[from] StoreUrlError),
    #[error("cannot use store {url}: {message}")]
    Setup { url: String, message: String },
}

/// Opens the store a URL names, with the settings' S3 options and the shared limiters.
pub async fn open(
    url: &str,
    settings: &Settings,
    bandwidth: Arc<Bandwidth>,
) -> Result<Arc<dyn ObjectStore>, OpenStoreError> {
    Ok(match StoreUrl::parse(url)? {
        StoreUrl::Fs { dir } => {
            Arc::new(
                fs::FsStore::open(dir, bandwidth).map_err(|e| OpenStoreError::Setup {
                    url: url.into(),
                    message: e.to_string(),
                })?,
            )
        }
        StoreUrl::S3 {
            bucket,
            root_prefix,
        } => Arc::new(
            s3::S3Store::connect(bucket, root_prefix, &settings.s3, bandwidth)
                .await
                .map_err(|message| OpenStoreError::Setup {
                    url: url.into(),
                    message,
                })?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            StoreUrl::parse("s3://farm-bucket/DeadlineCloud").unwrap(),
            StoreUrl::S3 {
                bucket: "farm-bucket".into(),
                root_prefix: "DeadlineCloud".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://b").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                root_prefix: "".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/cas").unwrap(),
            StoreUrl::Fs {
                dir: "/srv/cas".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///mnt/render%20share/caf%C3%A9").unwrap(),
            StoreUrl::Fs {
                dir: "/mnt/render share/café".into()
            }
        );
        for bad in ["s3:///x", "file://rel", "http://x", "/plain/path"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_store_spelled_two_ways_is_the_same_store() {
        assert!(StoreUrl::same(
            "s3://farm/DeadlineCloud/",
            "s3://farm/DeadlineCloud"
        ));
        assert!(StoreUrl::same(
            "file:///srv/my%20cas/",
            "file:///srv/my cas"
        ));
        assert!(!StoreUrl::same(
            "s3://farm/DeadlineCloud",
            "s3://farm/Other"
        ));
        assert!(!StoreUrl::same("s3://farm/x", "file:///farm/x"));
    }
}
