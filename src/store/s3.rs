//! The S3 store, on `aws-sdk-s3` with a hard-capped connection pool.
//!
//! Choices, and why:
//! - The HTTP client is `aws_smithy_http_client::pool::ConnectionPool`: `s3.max_connections`
//!   is a hard cap on open connections shared by every transfer of the process.
//! - Request bodies, from memory or read from a file as they are sent (`body`), go through
//!   the upload limiter in 64 KiB chunks.
//!   A streaming body is signed as UNSIGNED-PAYLOAD, which also saves hashing every body with
//!   SHA-256 (TLS protects it in transit; the content hash is checked before and after).
//! - The SDK's stalled-stream protection is off: a body starved by the bandwidth limit would
//!   be killed as "stalled". Download bodies get attache's own per-chunk read timeout instead.
//! - Checksums default to `when_required`, which S3-compatible stores accept.
//! - A part request whose body was all handed to the connection is not dropped on cancel: the
//!   store may store that part anyway, so it runs to its reply and the abort waits for it
//!   (`parts_in_flight`). A part dropped earlier is cut short and never stored.
//! - An interceptor counts attempts and throttling replies (503 / SlowDown) so the transfer
//!   engine can lower its concurrency while a store pushes back.
//! - The region is found before the SDK loads its config (`region`): left to the SDK, every
//!   command off EC2 waited seconds for the instance metadata service.
//! - The endpoint is resolved once per store, not by S3's rules for every request
//!   (`endpoint`).
//! - Failures are described for people (`describe`): the causes without the SDK's debug
//!   dumps, and what to check.
//! - Proxies and extra CA certificates are the pool's (`http`), as aws-cli and rclone take
//!   them from the environment.

mod body;
pub(crate) mod describe;
mod endpoint;
mod http;
mod region;

pub use http::{proxy_setting, read_ca_bundle};

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::StreamExt;

use super::file_source::FileSource;
use super::parts_in_flight::{PartsInFlight, SETTLE_WITHIN};
use super::sent_bytes::SentBytes;
use super::{
    GetObject, LIST_PAGE_KEYS, ListPage, ObjectInfo, ObjectStore, OpenUpload, PutOptions,
    PutOutcome, StoreError, UploadedPart,
};
use crate::config::{ChecksumMode, S3Settings};
use crate::transfer::limiter::Bandwidth;
use body::{BodySent, PacedBody};

/// Error codes worth another attempt whatever the HTTP status (S3 may answer a
/// CompleteMultipartUpload with 200 and an InternalError body); the SDK's own list.
const RETRYABLE_CODES: &[&str] = &[
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "PriorRequestNotComplete",
];

/// Counters of what the store's server said, for throttling control and metrics.
#[derive(Debug, Default)]
pub struct S3Counters {
    pub attempts: AtomicU64,
    /// 503 / SlowDown replies (shared with the transfer gate).
    pub throttled: Arc<AtomicU64>,
    /// Other 5xx replies.
    pub server_errors: AtomicU64,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    root_prefix: String,
    describe: String,
    identity: String,
    /// Where requests go ([`configured_endpoint`], else the profile's); `None`: AWS.
    endpoint: Option<String>,
    /// Whether they go through a proxy (`s3.proxy` or the environment's), for messages.
    proxied: bool,
    bandwidth: Arc<Bandwidth>,
    read_timeout: Duration,
    expected_bucket_owner: Option<String>,
    parts_in_flight: PartsInFlight,
    pub counters: Arc<S3Counters>,
}

impl S3Store {
    /// Builds the client from the settings and the standard AWS chain (env, profile, role).
    pub async fn connect(
        bucket: String,
        root_prefix: String,
        s: &S3Settings,
        bandwidth: Arc<Bandwidth>,
    ) -> Result<S3Store, String> {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let env = |v: &str| std::env::var(v).ok();
        let configured = configured_endpoint(s, env);
        let proxy = http::proxy_config(s, env)?;
        let proxied = !proxy.is_disabled();
        let pool = aws_smithy_http_client::pool::ConnectionPool::builder()
            .max_connections_per_host(s.max_connections)
            .idle_timeout(Some(s.idle_timeout.0))
            .tcp_nodelay(true)
            .proxy_config(proxy)
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(http::tls_context(s, env)?)
            .build_https()
            .map_err(|e| format!("cannot build the HTTP connection pool: {e}"))?;
        let http = aws_smithy_http_client::pool::Client::new(&pool)
            .map_err(|e| format!("HTTP client: {e}"))?;

        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(s.connect_timeout.0)
                    .read_timeout(s.read_timeout.0)
                    .build(),
            )
            // The transfer gate owns the retries (`s3.retry_attempts`); the SDK keeps one
            // immediate retry, for what only it can fix on the spot (a dropped idle
            // connection, a clock skew it measured). Both retrying fully multiplied attempts.
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(if s.retry_attempts == 0 { 1 } else { 2 }),
            )
            .stalled_stream_protection(
                aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
            );
        // Resolved here, never left to the loader: with no region, its SSO and credential
        // chains ask IMDS again, each with the SDK's 4 × 1 s.
        let region = match &s.region {
            Some(region) => aws_config::Region::new(region.clone()),
            None => {
                match region::chain(s, configured.is_none()).region().await {
                    Some(region) => region,
                    None => {
                        // S3-compatible stores accept any region; AWS needs the real one
                        // (a 301 reply says to set s3.region).
                        tracing::debug!("no region configured; signing for us-east-1");
                        aws_config::Region::new("us-east-1")
                    }
                }
            }
        };
        loader = loader.region(region);
        if let Some(profile) = &s.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = &s.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(key), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                key,
                secret.expose(),
                s.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "attache-config",
            ));
        }
        let sdk = loader.load().await;
        let counters = Arc::new(S3Counters::default());
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.force_path_style)
            .request_checksum_calculation(match s.request_checksum_calculation {
                ChecksumMode::WhenRequired => {
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired
                }
                ChecksumMode::WhenSupported => {
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenSupported
                }
            })
            .response_checksum_validation(match s.response_checksum_validation {
                ChecksumMode::WhenRequired => {
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired
                }
                ChecksumMode::WhenSupported => {
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenSupported
                }
            })
            .endpoint_resolver(endpoint::KeyBlindCache::default())
            .interceptor(CountReplies(counters.clone()));
        let prefix_part = if root_prefix.is_empty() {
            String::new()
        } else {
            format!("/{root_prefix}")
        };
        let describe = format!("s3://{bucket}{prefix_part}");
        let conf = conf.build();
        // Else the profile's, which `sdk` carries.
        let endpoint = configured.or_else(|| sdk.endpoint_url().map(str::to_string));
        let identity = store_identity(
            &describe,
            endpoint.as_deref(),
            conf.region().map(|r| r.as_ref()),
        );
        Ok(S3Store {
            client: Client::from_conf(conf),
            describe,
            identity,
            endpoint,
            proxied,
            bucket,
            root_prefix,
            bandwidth,
            read_timeout: s.read_timeout.0,
            expected_bucket_owner: s.expected_bucket_owner.clone(),
            parts_in_flight: PartsInFlight::default(),
            counters,
        })
    }

    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let no_bucket = e.code() == Some("NoSuchBucket");
        // A 404 to a PUT or a CreateMultipartUpload is a wrong endpoint or bucket (or a
        // proxy), not a deleted object.
        if !no_bucket
            && !super::creates_object(op)
            && (status == Some(404) || matches!(e.code(), Some("NoSuchKey" | "NotFound")))
        {
            return StoreError::NotFound {
                store: self.describe.clone(),
                key: key.into(),
            };
        }
        let retryable = match &e {
            _ if describe::is_lasting_credentials_failure(&e) => false,
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            _ => {
                // 501 Not Implemented: an operation this store lacks, whatever the try.
                matches!(status, Some(s) if (s >= 500 && s != 501) || s == 429)
                    || e.code().is_some_and(|c| RETRYABLE_CODES.contains(&c))
            }
        };
        StoreError::Failed {
            store: self.describe.clone(),
            op,
            key: key.into(),
            message: describe::describe(&e, status, self.endpoint.as_deref(), self.proxied),
            retryable,
        }
    }

    /// A PutObject of `len` bytes; an object already there under `if_none_match` is
    /// [`PutOutcome::AlreadyExists`].
    async fn put_body(
        &self,
        key: &str,
        len: u64,
        body: ByteStream,
        opts: &PutOptions,
    ) -> Result<PutOutcome, SdkError<PutObjectError>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len as i64)
            .body(body)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone());
        for (k, v) in &opts.metadata {
            req = req.metadata(k, v);
        }
        if opts.if_none_match {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e)
                if opts.if_none_match
                    && e.raw_response().map(|r| r.status().as_u16()) == Some(412) =>
            {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(e),
        }
    }

    fn paced_body(
        &self,
        data: Bytes,
        sent: Option<Arc<BodySent>>,
        counted: Option<Arc<SentBytes>>,
    ) -> ByteStream {
        let bandwidth = self.bandwidth.clone();
        // Retryable: the SDK rebuilds the body from the same bytes for each attempt.
        ByteStream::new(SdkBody::retryable(move || {
            SdkBody::from_body_1_x(PacedBody::new(
                data.clone(),
                bandwidth.clone(),
                sent.clone(),
                counted.clone(),
            ))
        }))
    }
}

/// The endpoint set before the SDK loads, as the SDK ranks them: `s3.endpoint_url`, else
/// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`. `None`: AWS itself, or an endpoint the
/// profile names.
fn configured_endpoint(s: &S3Settings, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    s.endpoint_url
        .clone()
        .into_iter()
        .chain(
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .into_iter()
                .filter_map(env),
        )
        .find(|e| !e.is_empty())
}

/// A response's user metadata as pairs.
/// An object as a listing describes it (no user metadata: listings do not carry it).
fn listed(o: &aws_sdk_s3::types::Object) -> ObjectInfo {
    ObjectInfo {
        key: o.key().unwrap_or_default().to_string(),
        size: o.size().unwrap_or(0).max(0) as u64,
        last_modified_ms: o.last_modified().and_then(|t| t.to_millis().ok()),
        metadata: Vec::new(),
    }
}

fn user_metadata(m: Option<&std::collections::HashMap<String, String>>) -> Vec<(String, String)> {
    m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The store's identity (see [`ObjectStore::identity`]): its URL, region and endpoint (from
/// `s3.endpoint_url`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or the profile; none is
/// AWS's own). Without them, a bucket name used at a test endpoint and on AWS would share one
/// known-present index, and a put to AWS would skip objects only the test store holds.
fn store_identity(describe: &str, endpoint: Option<&str>, region: Option<&str>) -> String {
    let endpoint = endpoint.map_or("aws", |e| e.trim_end_matches('/'));
    format!(
        "{describe} region={} endpoint={endpoint}",
        region.unwrap_or("")
    )
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn root_prefix(&self) -> &str {
        &self.root_prefix
    }

    fn throttle_signal(&self) -> Arc<AtomicU64> {
        self.counters.throttled.clone()
    }

    async fn confirm_exists(&self) -> Result<(), StoreError> {
        let asked = self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await;
        match asked {
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                Err(StoreError::Failed {
                    store: self.describe.clone(),
                    op: "HeadBucket",
                    key: self.bucket.clone(),
                    message: "HTTP 404: no such bucket (check the bucket name in the store URL, and s3.endpoint_url and s3.region)".into(),
                    retryable: false,
                })
            }
            // 403 (a role without s3:ListBucket) and the like: the objects' answers stand.
            Err(e) => {
                tracing::debug!("HeadBucket {}: {e}", self.bucket);
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await;
        match r {
            Ok(o) => Ok(Some(ObjectInfo {
                key: key.into(),
                size: o.content_length().unwrap_or(0).max(0) as u64,
                last_modified_ms: o.last_modified().and_then(|t| t.to_millis().ok()),
                metadata: user_metadata(o.metadata()),
            })),
            Err(e) => match self.err("HEAD", key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetObject, StoreError> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone());
        if let Some(r) = &range {
            if r.start == r.end {
                return Ok(GetObject {
                    content_length: 0,
                    metadata: Vec::new(),
                    body: futures::stream::empty().boxed(),
                });
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = req.send().await.map_err(|e| self.err("GET", key, e))?;
        let content_length = out.content_length().unwrap_or(0).max(0) as u64;
        let metadata = user_metadata(out.metadata());
        let (bandwidth, timeout) = (self.bandwidth.clone(), self.read_timeout);
        // The names travel in the stream's state, taken only to describe a failure: no
        // allocation per chunk.
        let state = Some((out.body, bandwidth, self.describe.clone(), key.to_string()));
        let body = futures::stream::unfold(state, move |state| async move {
            let (mut stream, bandwidth, describe, key) = state?;
            let message = match tokio::time::timeout(timeout, stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    bandwidth.download.acquire(chunk.len()).await;
                    return Some((Ok(chunk), Some((stream, bandwidth, describe, key))));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => describe::causes(&e),
                Err(_) => format!("no data for {timeout:?} (s3.read_timeout)"),
            };
            let failed = StoreError::Failed {
                store: describe,
                op: "GET",
                key,
                message,
                retryable: true,
            };
            Some((Err(failed), None))
        });
        Ok(GetObject {
            content_length,
            metadata,
            body: body.boxed(),
        })
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let len = body.len() as u64;
        let body = self.paced_body(body, None, opts.sent.clone());
        self.put_body(key, len, body, opts)
            .await
            .map_err(|e| self.err("PUT", key, e))
    }

    async fn put_file(
        &self,
        key: &str,
        source: Arc<FileSource>,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let body = {
            let (source, bandwidth) = (source.clone(), self.bandwidth.clone());
            // Retryable: each attempt reads the file again from the start.
            ByteStream::new(SdkBody::retryable(move || {
                SdkBody::from_body_1_x(PacedBody::from_file(&source, bandwidth.clone()))
            }))
        };
        let sent = self.put_body(key, source.size, body, opts).await;
        sent.map_err(|e| match source.failure() {
            Some(error) => source.store_error(error),
            None => self.err("PUT", key, e),
        })
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Failed {
                store: self.describe.clone(),
                op: "CreateMultipartUpload",
                key: key.into(),
                message: "the reply has no upload id".into(),
                retryable: false,
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        counted: Option<Arc<SentBytes>>,
    ) -> Result<String, StoreError> {
        let sent = Arc::new(BodySent::default());
        let send = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(body.len() as i64)
            .body(self.paced_body(body, Some(sent.clone()), counted))
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send();
        let token = self.parts_in_flight.token(upload_id);
        let task = tokio::spawn(async move {
            let out = send.await;
            drop(token);
            out
        });
        let _on_drop = CutShortOnDrop {
            sent,
            task: task.abort_handle(),
        };
        let out = match task.await {
            Ok(out) => out.map_err(|e| self.err("UploadPart", key, e))?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                return Err(StoreError::Failed {
                    store: self.describe.clone(),
                    op: "UploadPart",
                    key: key.into(),
                    message: "the request was cancelled (the runtime is shutting down)".into(),
                    retryable: false,
                });
            }
        };
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        let parts = parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|e| self.err("CompleteMultipartUpload", key, e))?;
        self.parts_in_flight.forget(upload_id);
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.parts_in_flight
            .settle(upload_id, key, SETTLE_WITHIN)
            .await;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.err("AbortMultipartUpload", key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<UploadedPart>>, StoreError> {
        // Pages of at most 1,000 parts: follow the part-number marker.
        let mut out = Vec::new();
        let mut marker = None::<String>;
        loop {
            let page = match self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .set_expected_bucket_owner(self.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| self.err("ListParts", key, e))
            {
                Ok(page) => page,
                // NoSuchUpload (404): completed, aborted or expired.
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            for p in page.parts() {
                if let (Some(number), Some(size), Some(etag)) =
                    (p.part_number(), p.size(), p.e_tag())
                {
                    out.push(UploadedPart {
                        number,
                        size: size.max(0) as u64,
                        etag: etag.to_string(),
                        last_modified_ms: p.last_modified().and_then(|t| t.to_millis().ok()),
                    });
                }
            }
            marker = page.next_part_number_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || marker.is_none() {
                return Ok(Some(out));
            }
        }
    }

    fn part_etag(&self, body: &[u8]) -> String {
        use md5::Digest as _;
        crate::hash::hex(&md5::Md5::digest(body))
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        // Not paginated by the SDK: follow the key and upload-id markers by hand.
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .set_expected_bucket_owner(self.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| self.err("ListMultipartUploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(OpenUpload {
                        key: key.to_string(),
                        upload_id: id.to_string(),
                        initiated_ms: u.initiated().and_then(|t| t.to_millis().ok()),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("LIST", prefix, e))?;
            out.extend(page.contents().iter().map(listed));
        }
        Ok(out)
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_string))
            .max_keys(LIST_PAGE_KEYS as i32)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|e| self.err("LIST", prefix, e))?;
        Ok(ListPage {
            objects: page.contents().iter().map(listed).collect(),
            truncated: page.is_truncated() == Some(true),
        })
    }

    fn lists_by_page(&self) -> bool {
        true
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        // DeleteObjects takes at most 1000 keys a call.
        for chunk in keys.chunks(1000) {
            let ids = chunk
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .expect("key is set")
                })
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .expect("objects are set");
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .set_expected_bucket_owner(self.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| self.err("DeleteObjects", &chunk[0], e))?;
            if let Some(e) = out.errors().first() {
                return Err(StoreError::Failed {
                    store: self.describe.clone(),
                    op: "DeleteObjects",
                    key: e.key().unwrap_or_default().into(),
                    message: e.message().unwrap_or("refused").into(),
                    retryable: false,
                });
            }
        }
        Ok(())
    }
}

/// Counts attempts and throttling replies.
#[derive(Debug)]
struct CountReplies(Arc<S3Counters>);

impl Intercept for CountReplies {
    fn name(&self) -> &'static str {
        "attache::CountReplies"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(status) = context.response().map(|r| r.status().as_u16()) {
            match status {
                503 | 429 => {
                    self.0.throttled.fetch_add(1, Ordering::Relaxed);
                }
                500..=599 => {
                    self.0.server_errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Dropped with the part request's future: cuts the request short unless its body is all
/// sent, in which case it runs to its reply (holding its `parts_in_flight` token).
struct CutShortOnDrop {
    sent: Arc<BodySent>,
    task: tokio::task::AbortHandle,
}

impl Drop for CutShortOnDrop {
    fn drop(&mut self) {
        if self.sent.give_up() {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_setting_then_s3_s_variable_then_the_general_one() {
        let none = |_: &str| None;
        assert_eq!(configured_endpoint(&S3Settings::default(), none), None);
        let local = S3Settings {
            endpoint_url: Some("http://127.0.0.1:3900".into()),
            ..S3Settings::default()
        };
        let both = |v: &str| Some(format!("http://{v}"));
        assert_eq!(
            configured_endpoint(&local, both).as_deref(),
            Some("http://127.0.0.1:3900")
        );
        assert_eq!(
            configured_endpoint(&S3Settings::default(), both).as_deref(),
            Some("http://AWS_ENDPOINT_URL_S3")
        );
        let general = |v: &str| (v == "AWS_ENDPOINT_URL").then(|| "http://minio:9000".into());
        assert_eq!(
            configured_endpoint(&S3Settings::default(), general).as_deref(),
            Some("http://minio:9000")
        );
        let empty = |_: &str| Some(String::new());
        assert_eq!(configured_endpoint(&S3Settings::default(), empty), None);
    }

    #[test]
    fn a_bucket_is_told_apart_by_endpoint_and_region_not_by_a_trailing_slash() {
        let aws = store_identity("s3://b/p", None, Some("us-west-2"));
        let local = store_identity("s3://b/p", Some("http://127.0.0.1:9000"), Some("us-west-2"));
        assert_ne!(aws, local);
        assert_eq!(
            local,
            store_identity(
                "s3://b/p",
                Some("http://127.0.0.1:9000/"),
                Some("us-west-2")
            )
        );
        assert_ne!(aws, store_identity("s3://b/p", None, Some("cn-north-1")));
        assert_ne!(aws, store_identity("s3://b/q", None, Some("us-west-2")));
    }
}
