//! The local directory store (`file:///dir`): the same keys as S3, as files under `dir`.
//!
//! Every write goes to a unique temporary file under `dir/.attache-tmp/` and is renamed (or,
//! for create-if-absent, hard-linked) into place, so several processes can share the store
//! and a reader never sees a partial object. Multipart parts wait in
//! `dir/.attache-multipart/<upload id>/` (beside a `key` file naming the object) until they are
//! completed or aborted.

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::file_source::FileSource;
use super::parts_in_flight::{PartsInFlight, SETTLE_WITHIN};
use super::sent_bytes::SentBytes;
use super::{
    GetObject, ObjectInfo, ObjectStore, OpenUpload, PutOptions, PutOutcome, StoreError,
    UploadedPart,
};
use crate::transfer::limiter::Bandwidth;

const TMP_DIR: &str = ".attache-tmp";
const MULTIPART_DIR: &str = ".attache-multipart";
/// In an upload's dir: the key it is for (parts are `00001`, `00002`, …).
const UPLOAD_KEY_FILE: &str = "key";
/// User metadata of objects that have some, as JSON beside the store's keys.
const META_DIR: &str = ".attache-meta";
/// Size of the chunks a GET body is read and paced in.
const CHUNK: usize = 256 * 1024;

pub struct FsStore {
    dir: PathBuf,
    describe: String,
    bandwidth: Arc<Bandwidth>,
    parts_in_flight: PartsInFlight,
    /// The store's directories are there (checked, or made, by the first write).
    made: std::sync::atomic::AtomicBool,
}

impl FsStore {
    /// Makes nothing: the store's directory is made by the first write, so that a read of a
    /// store whose directory is missing (a share not mounted) says so, instead of a new
    /// empty store on the local disk.
    pub fn open(dir: PathBuf, bandwidth: Arc<Bandwidth>) -> std::io::Result<FsStore> {
        Ok(FsStore {
            describe: format!("file://{}", dir.display()),
            dir,
            bandwidth,
            parts_in_flight: PartsInFlight::default(),
            made: Default::default(),
        })
    }

    /// Before a write: the store's directories, made if missing (said in the log, as a
    /// new store at a mistyped or unmounted path should be).
    fn make_dirs(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.made.load(Relaxed) {
            return Ok(());
        }
        if !self.dir.is_dir() {
            tracing::info!(
                "{}: the store directory does not exist; creating it",
                self.describe
            );
        }
        std::fs::create_dir_all(self.dir.join(TMP_DIR))?;
        self.made.store(true, Relaxed);
        Ok(())
    }

    /// The file of a key, refusing keys that could leave the store directory.
    fn path_of(&self, key: &str, op: &'static str) -> Result<PathBuf, StoreError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(".attache-"))
            || key.contains('\0');
        if bad {
            return Err(self.failed(op, key, "key is not a safe relative path".into(), false));
        }
        Ok(self.dir.join(key))
    }

    fn failed(&self, op: &'static str, key: &str, message: String, retryable: bool) -> StoreError {
        StoreError::Failed {
            store: self.describe.clone(),
            op,
            key: key.into(),
            message,
            retryable,
        }
    }

    fn io(&self, op: &'static str, key: &str, e: std::io::Error) -> StoreError {
        let not_found = e.kind() == std::io::ErrorKind::NotFound;
        if not_found && !self.dir.is_dir() {
            match op {
                "GET" => return self.no_store_dir(op, key),
                "PUT" | "CreateMultipartUpload" | "UploadPart" => {
                    let message = format!(
                        "cannot create the store directory {}: {e} (check store.url, and that its parent exists and is mounted)",
                        self.dir.display()
                    );
                    return self.failed(op, key, message, false);
                }
                _ => {}
            }
        }
        // An UploadPart's upload can be missing: one aborted from elsewhere, which the upload
        // starts again.
        if not_found && !super::creates_object(op) {
            StoreError::NotFound {
                store: self.describe.clone(),
                key: key.into(),
            }
        } else {
            let message = format!("{e}{}", crate::fsutil::io_advice(&e));
            self.failed(op, key, message, false)
        }
    }

    /// The store's directory is not there (a share not mounted, a mistyped URL).
    fn no_store_dir(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::NoStoreDir {
            store: self.describe.clone(),
            op,
            key: key.into(),
            dir: self.dir.clone(),
        }
    }

    fn temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        self.make_dirs()?;
        let tmp = || crate::fsutil::temp_file_in(&self.dir.join(TMP_DIR), "obj-", "");
        match tmp() {
            // Removed since (a store emptied by hand under a running daemon): made again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.made.store(false, std::sync::atomic::Ordering::Relaxed);
                self.make_dirs()?;
                tmp()
            }
            other => other,
        }
    }

    /// Where an object's user metadata is kept.
    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(META_DIR).join(format!("{key}.json"))
    }

    /// Where an object's user metadata goes, with its JSON and a temporary file to write it
    /// to; none without metadata.
    fn meta_file(&self, key: &str, opts: &PutOptions) -> Option<MetaFile> {
        (!opts.metadata.is_empty()).then(|| MetaFile {
            path: self.meta_path(key),
            json: serde_json::to_vec(&opts.metadata).expect("strings serialize"),
            tmp: self.temp_file(),
        })
    }

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf, StoreError> {
        if upload_id.is_empty()
            || !upload_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(self.failed("multipart", upload_id, "bad upload id".into(), false));
        }
        Ok(self.dir.join(MULTIPART_DIR).join(upload_id))
    }

    /// Paces `body` through the upload limiter (local writes count like network ones, which is
    /// also how the limit can be tried without S3), counting it into `counted` as it goes.
    async fn pace_upload(&self, body: &Bytes, counted: Option<&SentBytes>) {
        let mut done = 0;
        for chunk in body.chunks(CHUNK) {
            self.bandwidth.upload.acquire(chunk.len()).await;
            done += chunk.len() as u64;
            if let Some(c) = counted {
                c.sent_up_to(done);
            }
        }
    }
}

/// An object's user metadata, or none (an object put without, or one whose JSON is gone).
fn read_metadata(meta_path: &Path) -> Vec<(String, String)> {
    std::fs::read(meta_path)
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

/// An object's user metadata, ready to be written beside it.
struct MetaFile {
    path: PathBuf,
    json: Vec<u8>,
    tmp: std::io::Result<tempfile::NamedTempFile>,
}

/// Puts a written object (and its metadata) in place: renamed over the key, or hard-linked
/// when it must not replace one (link() fails if the name exists: an atomic create-if-absent).
fn commit(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    meta: Option<MetaFile>,
    if_none_match: bool,
) -> std::io::Result<PutOutcome> {
    if let Some(meta) = meta {
        let mut m = meta.tmp?;
        m.write_all(&meta.json)?;
        std::fs::create_dir_all(meta.path.parent().expect("under the meta dir"))?;
        m.persist(&meta.path).map_err(|e| e.error)?;
    }
    tmp.as_file().sync_data()?;
    // The key's directory is made only when placing says it is missing: one system call per
    // object in the common case (each one a round trip on a store on NFS).
    let missing = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let make_parent = || match dest.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    };
    if if_none_match {
        let mut linked = std::fs::hard_link(tmp.path(), dest);
        if linked.as_ref().is_err_and(missing) {
            make_parent()?;
            linked = std::fs::hard_link(tmp.path(), dest);
        }
        return match linked {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(e),
        };
    }
    match tmp.persist(dest) {
        Ok(_) => {}
        Err(e) if missing(&e.error) => {
            make_parent()?;
            e.file.persist(dest).map_err(|e| e.error)?;
        }
        Err(e) => return Err(e.error),
    }
    Ok(PutOutcome::Created)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("store file task panicked")
}

fn info(key: &str, m: &std::fs::Metadata) -> ObjectInfo {
    let last_modified_ms = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    ObjectInfo {
        key: key.to_string(),
        size: m.len(),
        last_modified_ms,
        metadata: Vec::new(),
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// `complete_multipart` copies every part into the object: one PUT per file writes
    /// half as much.
    fn completion_copies_parts(&self) -> bool {
        true
    }

    fn root_prefix(&self) -> &str {
        ""
    }

    async fn confirm_exists(&self) -> Result<(), StoreError> {
        match self.dir.is_dir() {
            true => Ok(()),
            false => Err(self.no_store_dir("stat", "Data/")),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path_of(key, "HEAD")?;
        let key2 = key.to_string();
        let meta_path = self.meta_path(key);
        match blocking(move || std::fs::metadata(path)).await {
            Ok(m) if m.is_file() => {
                let mut i = info(&key2, &m);
                i.metadata = read_metadata(&meta_path);
                Ok(Some(i))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("HEAD", key, e)),
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetObject, StoreError> {
        let path = self.path_of(key, "GET")?;
        let meta_path = self.meta_path(key);
        type Opened = (std::fs::File, u64, Vec<(String, String)>);
        let opened = blocking(move || -> std::io::Result<Opened> {
            let f = std::fs::File::open(path)?;
            let len = f.metadata()?.len();
            Ok((f, len, read_metadata(&meta_path)))
        })
        .await;
        let (file, len, metadata) = opened.map_err(|e| self.io("GET", key, e))?;
        let range = range.unwrap_or(0..len);
        if range.end > len || range.start > range.end {
            return Err(self.failed(
                "GET",
                key,
                format!("range {range:?} outside an object of {len} bytes"),
                false,
            ));
        }
        let content_length = range.end - range.start;
        let file = Arc::new(file);
        let (describe, key, bandwidth) = (
            self.describe.clone(),
            key.to_string(),
            self.bandwidth.clone(),
        );
        let end = range.end;
        let body = futures::stream::unfold(range.start, move |pos| {
            let (file, describe, key, bandwidth) = (
                file.clone(),
                describe.clone(),
                key.clone(),
                bandwidth.clone(),
            );
            async move {
                if pos >= end {
                    return None;
                }
                let want = (end - pos).min(CHUNK as u64) as usize;
                let read = blocking(move || -> std::io::Result<Vec<u8>> {
                    let mut buf = vec![0; want];
                    file.read_exact_at(&mut buf, pos)?;
                    Ok(buf)
                })
                .await;
                match read {
                    Ok(buf) => {
                        bandwidth.download.acquire(buf.len()).await;
                        Some((Ok(Bytes::from(buf)), pos + want as u64))
                    }
                    Err(e) => {
                        let err = StoreError::Failed {
                            store: describe,
                            op: "GET",
                            key,
                            message: e.to_string(),
                            retryable: true,
                        };
                        Some((Err(err), end))
                    }
                }
            }
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
        let dest = self.path_of(key, "PUT")?;
        self.pace_upload(&body, opts.sent.as_deref()).await;
        let tmp = self.temp_file().map_err(|e| self.io("PUT", key, e))?;
        let (meta, if_none_match) = (self.meta_file(key, opts), opts.if_none_match);
        let result = blocking(move || -> std::io::Result<PutOutcome> {
            let mut tmp = tmp;
            tmp.write_all(&body)?;
            commit(tmp, &dest, meta, if_none_match)
        })
        .await;
        result.map_err(|e| self.io("PUT", key, e))
    }

    async fn put_file(
        &self,
        key: &str,
        source: Arc<FileSource>,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let dest = self.path_of(key, "PUT")?;
        let mut tmp = self.temp_file().map_err(|e| self.io("PUT", key, e))?;
        let mut chunks = Box::pin(source.chunks());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|error| source.store_error(error))?;
            self.pace_upload(&chunk, None).await;
            tmp = blocking(move || tmp.write_all(&chunk).map(|()| tmp))
                .await
                .map_err(|e| self.io("PUT", key, e))?;
        }
        let (meta, if_none_match) = (self.meta_file(key, opts), opts.if_none_match);
        blocking(move || commit(tmp, &dest, meta, if_none_match))
            .await
            .map_err(|e| self.io("PUT", key, e))
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StoreError> {
        self.path_of(key, "CreateMultipartUpload")?;
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = self.upload_dir(&id)?;
        let named = key.to_string();
        self.make_dirs()
            .map_err(|e| self.io("CreateMultipartUpload", key, e))?;
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(UPLOAD_KEY_FILE), named)
        })
        .await
        .map_err(|e| self.io("CreateMultipartUpload", key, e))?;
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        counted: Option<Arc<SentBytes>>,
    ) -> Result<String, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        if !dir.is_dir() {
            return Err(self.failed(
                "UploadPart",
                key,
                format!("no open upload {upload_id}"),
                false,
            ));
        }
        self.pace_upload(&body, counted.as_deref()).await;
        let tmp = self
            .temp_file()
            .map_err(|e| self.io("UploadPart", key, e))?;
        let etag = part_etag(&body);
        // The write goes on if this request is dropped: an abort waits for it.
        let token = self.parts_in_flight.token(upload_id);
        blocking(move || -> std::io::Result<()> {
            let _token = token;
            let mut tmp = tmp;
            tmp.write_all(&body)?;
            tmp.persist(dir.join(format!("{part_number:05}")))
                .map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(|e| self.io("UploadPart", key, e))?;
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        let dest = self.path_of(key, "CompleteMultipartUpload")?;
        let dir = self.upload_dir(upload_id)?;
        let tmp = self
            .temp_file()
            .map_err(|e| self.io("CompleteMultipartUpload", key, e))?;
        let parts: Vec<i32> = parts.iter().map(|(n, _)| *n).collect();
        blocking(move || -> std::io::Result<()> {
            let mut tmp = tmp;
            for n in parts {
                let mut part = std::fs::File::open(dir.join(format!("{n:05}")))?;
                std::io::copy(&mut part, tmp.as_file_mut())?;
            }
            commit(tmp, &dest, None, false)?;
            std::fs::remove_dir_all(&dir)
        })
        .await
        .map_err(|e| self.io("CompleteMultipartUpload", key, e))?;
        self.parts_in_flight.forget(upload_id);
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        self.parts_in_flight
            .settle(upload_id, key, SETTLE_WITHIN)
            .await;
        match blocking(move || std::fs::remove_dir_all(dir)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("AbortMultipartUpload", key, e)),
        }
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<UploadedPart>>, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        let named = key.to_string();
        blocking(move || list_parts(&dir, &named))
            .await
            .map_err(|e| self.io("ListParts", key, e))
    }

    /// The same hash the part's upload answered with.
    fn part_etag(&self, body: &[u8]) -> String {
        part_etag(body)
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let root = self.dir.join(MULTIPART_DIR);
        let prefix_owned = prefix.to_string();
        blocking(move || list_uploads(&root, &prefix_owned))
            .await
            .map_err(|e| self.io("ListMultipartUploads", prefix, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.dir.clone();
        let prefix_owned = prefix.to_string();
        blocking(move || list_dir(&root, &prefix_owned))
            .await
            .map_err(|e| self.io("LIST", prefix, e))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            let path = self.path_of(key, "DELETE")?;
            match blocking(move || std::fs::remove_file(path)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("DELETE", key, e)),
            }
        }
        Ok(())
    }
}

/// A part's ETag in this store: the XXH128 of its bytes.
fn part_etag(body: &[u8]) -> String {
    crate::hash::ContentHash::of(body).to_hex()
}

/// The parts in an upload's directory (`None`: no such upload of `key`), each hashed for its
/// ETag.
fn list_parts(dir: &Path, key: &str) -> std::io::Result<Option<Vec<UploadedPart>>> {
    match std::fs::read_to_string(dir.join(UPLOAD_KEY_FILE)) {
        Ok(named) if named == key => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(number) = entry
            .file_name()
            .to_str()
            .filter(|n| n.len() == 5)
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let part = crate::hash::file::hash_file(
            &entry.path(),
            CHUNK,
            &tokio_util::sync::CancellationToken::new(),
            &|_| {},
        )
        .map_err(std::io::Error::other)?;
        parts.push(UploadedPart {
            number,
            size: part.stat.size,
            etag: part.hash.to_hex(),
            last_modified_ms: entry.metadata().ok().as_ref().and_then(modified_ms),
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(Some(parts))
}

/// A file's mtime in milliseconds since the epoch.
fn modified_ms(meta: &std::fs::Metadata) -> Option<i64> {
    let since = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(since.as_millis() as i64)
}

/// The upload dirs under `root` whose `key` file starts with `prefix`; one without a key file
/// (from attache before 2026-11-22) is listed under the key "" whatever the prefix.
fn list_uploads(root: &Path, prefix: &str) -> std::io::Result<Vec<OpenUpload>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(upload_id) = entry.file_name().into_string() else {
            continue;
        };
        let key_file = entry.path().join(UPLOAD_KEY_FILE);
        let (key, started) = match std::fs::read_to_string(&key_file) {
            Ok(k) if k.starts_with(prefix) => (k, std::fs::metadata(&key_file)?),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), entry.metadata()?)
            }
            Err(e) => return Err(e),
        };
        // The key file is written once, at the start; the dir changes with every part.
        let initiated_ms = modified_ms(&started);
        out.push(OpenUpload {
            key,
            upload_id,
            initiated_ms,
        });
    }
    out.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
    Ok(out)
}

/// Every file under `root` whose key starts with `prefix`, skipping attache's own directories.
fn list_dir(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
    // Walk only the directory the prefix names, not the whole store.
    let base = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    let mut stack = vec![root.join(base)];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            if rel.starts_with(".attache-") {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                if prefix.starts_with(&format!("{rel}/")) || rel.starts_with(prefix) {
                    stack.push(path);
                }
            } else if ft.is_file() && rel.starts_with(prefix) {
                out.push(info(&rel, &entry.metadata()?));
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_disk_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FsStore::open(dir.path().to_path_buf(), Arc::new(Bandwidth::default())).unwrap();
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let msg = store.io("PUT", "Data/x.xxh128", full).to_string();
        assert!(
            msg.contains("PUT Data/x.xxh128: No space left on device"),
            "{msg}"
        );
        assert!(msg.contains("free some space on it"), "{msg}");
    }

    #[tokio::test]
    async fn a_read_of_a_store_whose_directory_is_missing_says_so_and_makes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("nas-not-mounted/store");
        let store = FsStore::open(dir.clone(), Arc::new(Bandwidth::default())).unwrap();
        let err = store.get("Data/x.xxh128", None).await.err().unwrap();
        assert!(!err.is_not_found(), "{err}");
        assert!(
            err.to_string()
                .contains("does not exist (is the share mounted?"),
            "{err}"
        );
        assert!(store.head("Data/x.xxh128").await.unwrap().is_none());
        assert!(store.list("Data/").await.unwrap().is_empty());
        assert!(!t.path().join("nas-not-mounted").exists());
        // A write makes it; then a missing object is just missing.
        store
            .put(
                "Data/y.xxh128",
                Bytes::from_static(b"y"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let err = store.get("Data/x.xxh128", None).await.err().unwrap();
        assert!(err.is_not_found(), "{err}");
        // Emptied by hand under a running process: made again by the next write.
        std::fs::remove_dir_all(&dir).unwrap();
        store
            .put(
                "Data/z.xxh128",
                Bytes::from_static(b"z"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        assert!(store.head("Data/z.xxh128").await.unwrap().is_some());
    }

    /// A key in a directory not there yet is placed (the directory made), a put over it
    /// replaces it, and a put only-if-absent leaves it and says so; no temporary file stays.
    #[tokio::test]
    async fn puts_make_the_key_s_directory_when_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FsStore::open(dir.path().to_path_buf(), Arc::new(Bandwidth::default())).unwrap();
        let put = |key: &'static str, body: &'static [u8], if_none_match: bool| {
            let opts = PutOptions {
                if_none_match,
                ..PutOptions::default()
            };
            let store = &store;
            async move { store.put(key, Bytes::from_static(body), &opts).await }
        };
        let read = |key: &str| std::fs::read(dir.path().join(key)).unwrap();
        assert_eq!(
            put("a/b/c", b"one", false).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            put("a/b/c", b"two", false).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(read("a/b/c"), b"two");
        let created = put("Data/d/e", b"three", true).await.unwrap();
        assert_eq!(created, PutOutcome::Created);
        let again = put("Data/d/e", b"four", true).await.unwrap();
        assert_eq!(again, PutOutcome::AlreadyExists);
        assert_eq!(read("Data/d/e"), b"three");
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join(TMP_DIR))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }

    /// An output manifest's `asset-root` comes back with its body, as from S3.
    #[tokio::test]
    async fn a_get_returns_the_metadata_the_put_gave() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FsStore::open(dir.path().to_path_buf(), Arc::new(Bandwidth::default())).unwrap();
        let opts = PutOptions {
            metadata: vec![("asset-root".into(), "/proj".into())],
            ..PutOptions::default()
        };
        store
            .put("Manifests/x_output", Bytes::from_static(b"{}"), &opts)
            .await
            .unwrap();
        store
            .put("Data/y", Bytes::from_static(b"y"), &PutOptions::default())
            .await
            .unwrap();
        let got = store.get("Manifests/x_output", None).await.unwrap();
        assert_eq!(
            crate::store::meta(&got.metadata, "Asset-Root"),
            Some("/proj")
        );
        assert!(store.get("Data/y", None).await.unwrap().metadata.is_empty());
    }
}
