//! The transfer engine against a real HTTP S3 server on 127.0.0.1 (s3s-fs, in process):
//! round trips, the connection cap, bandwidth, cancellation, faults, changed files, and the
//! known-present index.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attache::config::{ByteSize, Rate, Secret, Settings};
use attache::hash::ContentHash;
use attache::jobs::get::{GetReport, GetSpec};
use attache::jobs::hash::HashSpec;
use attache::jobs::put::{PutError, PutReport};
use attache::jobs::submit::{SubmitError, SubmitSpec};
use attache::jobs::{get, put, setup, submit};
use attache::manifest::Manifest;
use attache::progress::Progress;
use attache::scan::ScanOptions;
use attache::transfer::limiter::Bandwidth;
use attache::transfer::{Transfer, TransferError};
use common::s3::TestS3;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

/// Settings for the test server: small multipart threshold and parts (5 MiB, S3's minimum).
fn settings(s3: &TestS3, prefix: &str, cache: &Path) -> Settings {
    let mut s = Settings::default();
    s.store.url = s3.store_url(prefix);
    s.s3.endpoint_url = Some(s3.endpoint.clone());
    s.s3.force_path_style = true;
    s.s3.region = Some("us-east-1".into());
    s.s3.access_key_id = Some(s3.access_key.clone());
    s.s3.secret_access_key = Some(Secret::new(s3.secret_key.clone()));
    s.s3.retry_attempts = 3;
    s.transfer.multipart_threshold = ByteSize(5 * MIB);
    s.transfer.part_size = ByteSize(5 * MIB);
    s.cache.dir = cache.to_path_buf();
    s
}

fn fs_settings(store: &Path, cache: &Path) -> Settings {
    let mut s = Settings::default();
    s.store.url = format!("file://{}", store.display());
    s.transfer.multipart_threshold = ByteSize(5 * MIB);
    s.transfer.part_size = ByteSize(5 * MIB);
    // The file store copies parts on completion: without this, files up to 5 GiB would go
    // to it in one PUT, and these tests are of its multipart uploads too.
    s.transfer.copying_store_threshold = ByteSize(0);
    s.cache.dir = cache.to_path_buf();
    s
}

async fn transfer(s: &Settings) -> Arc<Transfer> {
    let bandwidth = Arc::new(Bandwidth::new(&s.bandwidth));
    setup::transfer_for(&s.store.url, s, bandwidth, Arc::new(Progress::default()))
        .await
        .unwrap()
}

fn hash_spec(root: &Path, s: &Settings) -> HashSpec {
    HashSpec {
        roots: vec![root.to_path_buf()],
        cache_dir: s.cache.hash_cache.then(|| s.cache.dir.clone()),
        threads: 2,
        read_buffer: MIB as usize,
        scan: ScanOptions::default(),
    }
}

/// Starts a `put` of `src` in the background; the token cancels it.
async fn spawn_put(
    src: &Path,
    s: &Settings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<PutReport, PutError>>,
) {
    let cancel = CancellationToken::new();
    let (tr, spec) = (transfer(s).await, hash_spec(src, s));
    let job = {
        let cancel = cancel.clone();
        tokio::spawn(async move { put::run(spec, tr, &cancel).await })
    };
    (cancel, job)
}

/// Cancels a put started by [`spawn_put`], checks that it ends `Cancelled` within a second,
/// and says how long it took.
async fn cancel_put(
    cancel: CancellationToken,
    job: tokio::task::JoinHandle<Result<PutReport, PutError>>,
) -> Duration {
    let sent = Instant::now();
    cancel.cancel();
    let r = job.await.unwrap();
    let took = sent.elapsed();
    assert!(
        matches!(r, Err(PutError::Transfer(TransferError::Cancelled(_)))),
        "{:?}",
        r.err()
    );
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    took
}

/// Waits until the server has seen at least `n` requests matching `pred` (at most 60 s).
async fn wait_for_requests(
    s3: &TestS3,
    n: usize,
    what: &str,
    pred: impl Fn(&common::s3::RequestInfo) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.stats.requests_matching(&pred) < n {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn put_tree(root: &Path, s: &Settings) -> Result<PutReport, PutError> {
    put::run(
        hash_spec(root, s),
        transfer(s).await,
        &CancellationToken::new(),
    )
    .await
}

async fn get_tree(m: &Manifest, dest: &Path, s: &Settings) -> Result<GetReport, TransferError> {
    let spec = GetSpec {
        for_caller: None,
        replaceable: None,
        record: None,
        manifest: m.clone(),
        dest: dest.to_path_buf(),
        cache_dir: None,
        conflict: Default::default(),
        check_space: false,
    };
    get::run(spec, transfer(s).await, &CancellationToken::new()).await
}

/// Deterministic bytes that differ per seed.
fn content(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The mtime every generated file gets.
const MTIME_NS: i64 = 1_600_000_000_000_000_000;

/// Writes `n` files: file `i` gets the name and content `file(i)` returns, and [`MTIME_NS`].
fn write_files(root: &Path, n: u64, file: impl Fn(u64) -> (String, Vec<u8>)) {
    for i in 0..n {
        let (rel, data) = file(i);
        write(root, &rel, &data, MTIME_NS);
    }
}

fn write(root: &Path, rel: &str, data: &[u8], mtime_ns: i64) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    common::set_mtime_ns(&p, mtime_ns);
    p
}

/// 0-byte, small, exactly-threshold, multi-part, non-ASCII names, and a duplicate.
fn mixed_tree(root: &Path) {
    write(root, "empty.txt", b"", 1_600_000_000_000_000_001);
    write(root, "small/a.txt", b"hello", 1_600_000_000_123_456_789);
    write(
        root,
        "small/dup-of-a.txt",
        b"hello",
        1_600_000_001_000_000_000,
    );
    write(
        root,
        "exact.bin",
        &content(5 * MIB, 1),
        1_600_000_002_000_000_000,
    );
    write(
        root,
        "big/multi.bin",
        &content(12 * MIB + 3, 2),
        1_600_000_003_000_000_000,
    );
    // Below the multipart threshold and over several write batches, the last one partial.
    write(
        root,
        "mid/texture.exr",
        &content(3 * MIB / 2 + 7, 4),
        1_600_000_003_500_000_000,
    );
    write(
        root,
        "déjà vu/日本 😀.exr",
        &content(70_000, 3),
        1_600_000_004_000_000_000,
    );
}

fn assert_same_tree(a: &Path, b: &Path, m: &Manifest) {
    for e in m.entries() {
        let rel = e.path.as_str().unwrap();
        let (x, y) = (a.join(rel), b.join(rel));
        assert_eq!(
            std::fs::read(&x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{rel}"
        );
        let my = std::fs::metadata(&y).unwrap();
        let got_us = filetime::FileTime::from_last_modification_time(&my);
        let got_us = got_us.unix_seconds() * 1_000_000 + i64::from(got_us.nanoseconds()) / 1000;
        assert_eq!(got_us, e.mtime_us, "mtime of {rel}");
    }
}

/// attache's temporary files under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    common::files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".attache-"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_tree_round_trips_through_s3_and_file_store() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    mixed_tree(&src);
    for (name, s) in [
        (
            "s3",
            settings(&s3, "DeadlineCloud", &t.path().join("cache-s3")),
        ),
        (
            "file",
            fs_settings(&t.path().join("store"), &t.path().join("cache-fs")),
        ),
    ] {
        let put = put_tree(&src, &s).await.unwrap();
        let m = put.hash.roots[0].manifest.clone();
        assert_eq!(put.upload.files, 7, "{name}");
        assert_eq!(put.upload.objects, 6, "{name}: the duplicate is one object");
        assert_eq!(put.upload.uploaded_objects, 6, "{name}");
        assert_eq!(
            put.upload.multipart_objects, 1,
            "{name}: only the 12 MiB file is above the threshold"
        );
        let dest = t.path().join(format!("dest-{name}"));
        let got = get_tree(&m, &dest, &s).await.unwrap();
        assert_eq!(got.download.objects, 6, "{name}");
        assert_eq!(got.download.copied_files, 1, "{name}");
        assert_same_tree(&src, &dest, &m);
        assert!(leftovers(&dest).is_empty(), "{name}: temp files left");
    }
    // The keys are the Deadline layout.
    let keys = s3.object_keys();
    let h = ContentHash::of(b"hello");
    assert!(
        keys.contains(&format!("DeadlineCloud/Data/{h}.xxh128")),
        "{keys:?}"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_with_many_workers() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 300, |i| {
        (format!("d{}/f{i}", i % 7), content(2000 + i, i))
    });
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.s3.max_connections = 4;
    s.transfer.workers = 32;
    let put = put_tree(&src, &s).await.unwrap();
    assert_eq!(put.upload.uploaded_objects, 300);
    let m = put.hash.roots[0].manifest.clone();
    get_tree(&m, &t.path().join("dest"), &s).await.unwrap();
    let max = s3.stats.max_concurrent_connections();
    assert!(
        max <= 4,
        "server saw {max} concurrent connections with a cap of 4"
    );
    assert!(max >= 2, "transfers should run in parallel ({max})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_paces_both_directions() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 4, |i| {
        (format!("f{i}.bin"), content(16 * MIB, 10 + i))
    });
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.bandwidth.upload = Rate(16 * MIB);
    s.bandwidth.download = Rate(16 * MIB);
    let started = Instant::now();
    let put = put_tree(&src, &s).await.unwrap();
    let up = started.elapsed();
    let m = put.hash.roots[0].manifest.clone();
    let started = Instant::now();
    get_tree(&m, &t.path().join("dest"), &s).await.unwrap();
    let down = started.elapsed();
    // The lower bound is the cap; the upper one only catches gross over-throttling (a busy
    // 2-core CI machine stretched a 4 s download to 4.7 s).
    for (dir, took) in [("upload", up), ("download", down)] {
        let secs = took.as_secs_f64();
        assert!(
            (3.4..=5.5).contains(&secs),
            "64 MiB at 16 MiB/s took {secs:.2} s to {dir}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_present_content_makes_no_request() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    // More objects than are looked up one by one, so the loaded index is used too.
    write_files(&src, 400, |i| (format!("f{i}"), content(100 + i, i)));
    let s = settings(&s3, "p", &t.path().join("cache"));
    put_tree(&src, &s).await.unwrap();
    s3.stats.reset();
    let again = put_tree(&src, &s).await.unwrap();
    assert_eq!(again.upload.known_objects, 400);
    let data_requests = s3.stats.requests_matching(|r| r.path.contains("/Data/"));
    assert_eq!(data_requests, 0, "{:?}", s3.stats.log());

    // Without the index (no cache) and without conditional PUTs, each object is asked about
    // once with HEAD, and none uploaded.
    let mut no_cache = s.clone();
    no_cache.cache.hash_cache = false;
    no_cache.s3.conditional_put = false;
    s3.stats.reset();
    let third = put_tree(&src, &no_cache).await.unwrap();
    assert_eq!(third.upload.present_objects, 400);
    assert_eq!(s3.stats.requests_of("HEAD"), 400);
    assert_eq!(s3.stats.requests_of("PUT"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_are_uploaded_with_one_conditional_put_and_large_ones_head_first() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 20, |i| (format!("small{i}"), content(1000 + i, i)));
    write(&src, "big", &content(3000, 99), MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.cache.hash_cache = false; // no known-present index: every object goes to the store
    s.s3.conditional_put_max_size = ByteSize(2000);
    assert!(s.s3.conditional_put, "on by default");

    let first = put_tree(&src, &s).await.unwrap();
    assert_eq!(first.upload.uploaded_objects, 21);
    let log = s3.stats.log();
    let small_heads = log
        .iter()
        .filter(|r| r.method == "HEAD" && r.key.contains("/Data/"));
    assert_eq!(
        small_heads.count(),
        1,
        "only the object over the limit is asked about: {log:?}"
    );
    assert_eq!(s3.stats.requests_of("PUT"), 21);

    // Everything is there now: the small objects are refused with 412 and counted present,
    // the big one is found by HEAD and not sent again.
    s3.stats.reset();
    let again = put_tree(&src, &s).await.unwrap();
    assert_eq!(again.upload.uploaded_objects, 0);
    assert_eq!(again.upload.present_objects, 21);
    let log = s3.stats.log();
    let refused = log
        .iter()
        .filter(|r| r.method == "PUT" && r.status == 412)
        .count();
    assert_eq!(refused, 20, "{log:?}");
    assert_eq!(s3.stats.requests_of("HEAD"), 1);
    assert_eq!(s3.stats.requests_of("PUT"), 20);
    // The store's objects are intact.
    for i in 0..20u64 {
        let key = format!("p/Data/{}.xxh128", ContentHash::of(&content(1000 + i, i)));
        assert_eq!(s3.read_object(&key).unwrap(), content(1000 + i, i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_for_a_known_object_is_uploaded_again_next_time() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "a", b"content a", MTIME_NS);
    let s = settings(&s3, "p", &t.path().join("cache"));
    let first = put_tree(&src, &s).await.unwrap();
    let m = first.hash.roots[0].manifest.clone();
    // A lifecycle rule deletes the object behind attache's back.
    let key = format!("p/Data/{}.xxh128", ContentHash::of(b"content a"));
    let store = transfer(&s).await.store.clone();
    store.delete_many(std::slice::from_ref(&key)).await.unwrap();
    let err = get_tree(&m, &t.path().join("dest"), &s).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let again = put_tree(&src, &s).await.unwrap();
    assert_eq!(
        again.upload.uploaded_objects, 1,
        "the 404 invalidated the known-present entry"
    );
    get_tree(&m, &t.path().join("dest"), &s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bucket_name_at_another_endpoint_is_another_store() {
    // A studio's test store and its AWS bucket can share a name: what this machine remembers
    // of one (objects known present, uploads left open) must not count for the other.
    let (a, b) = (TestS3::start().await, TestS3::start().await);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 20, |i| (format!("f{i}"), content(100 + i, i)));
    let cache = t.path().join("cache");
    let (sa, sb) = (settings(&a, "p", &cache), settings(&b, "p", &cache));
    assert_eq!(sa.store.url, sb.store.url, "one bucket name, two endpoints");
    put_tree(&src, &sa).await.unwrap();
    let ta = transfer(&sa).await;
    let key = "p/Data/left.xxh128";
    let id = ta.store.create_multipart(key).await.unwrap();
    let (identity, url) = (ta.store.identity(), ta.store.describe());
    // An abort the store did not confirm: the next upload to A repeats it.
    let mut left = ta.open_uploads.record(&identity, &url, key, &id).unwrap();
    left.give_up();
    drop(left);

    let to_b = put_tree(&src, &sb).await.unwrap();
    assert_eq!(
        (to_b.upload.uploaded_objects, to_b.upload.known_objects),
        (20, 0),
        "nothing is known present in B"
    );
    assert_eq!(to_b.upload.aborted_leftover_uploads, 0);
    assert_eq!(
        a.open_multipart_uploads(),
        1,
        "A's upload is not B's to abort"
    );
    let m = to_b.hash.roots[0].manifest.clone();
    get_tree(&m, &t.path().join("from-b"), &sb).await.unwrap();

    let to_a = put_tree(&src, &sa).await.unwrap();
    assert_eq!(to_a.upload.known_objects, 20);
    assert_eq!(to_a.upload.aborted_leftover_uploads, 1);
    assert_eq!(a.open_multipart_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_many_file_download_returns_within_a_second_and_leaves_nothing() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 5000, |i| {
        (format!("d{}/f{i}", i % 50), content(1024 + i % 3000, i))
    });
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    let m = put_tree(&src, &s).await.unwrap().hash.roots[0]
        .manifest
        .clone();
    // Slow the server so the download is surely mid-flight when cancelled.
    s3.faults.delay_responses(Duration::from_millis(20));
    s.transfer.workers = 16;
    let dest = t.path().join("dest");
    let get_cache = t.path().join("get-cache");
    let cancel = CancellationToken::new();
    let records = t.path().join("records");
    let spec = GetSpec {
        for_caller: None,
        replaceable: None,
        record: Some(attache::fsutil::beneath::Beneath::new(
            &records,
            "dest.manifest",
        )),
        manifest: m.clone(),
        dest: dest.clone(),
        cache_dir: Some(get_cache.clone()),
        conflict: Default::default(),
        check_space: false,
    };
    let tr = transfer(&s).await;
    let job = {
        let cancel = cancel.clone();
        tokio::spawn(async move { get::run(spec, tr, &cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = Instant::now();
    cancel.cancel();
    let r = job.await.unwrap();
    let took = sent.elapsed();
    assert!(
        matches!(r, Err(TransferError::Cancelled(_))),
        "{:?}",
        r.err()
    );
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(
        leftovers(&dest).is_empty(),
        "temp files left: {:?}",
        leftovers(&dest)
    );
    // The record of what is placed is written only for a whole download: neither it nor
    // its temporary file is left.
    let left: Vec<_> = std::fs::read_dir(&records).unwrap().collect();
    assert!(left.is_empty(), "record files left: {left:?}");
    // Every file that is there is complete and correct.
    let mut present = Vec::new();
    for e in m.entries() {
        let p = dest.join(e.path.as_str().unwrap());
        if let Ok(data) = std::fs::read(&p) {
            assert_eq!(
                ContentHash::of(&data),
                e.hash,
                "partial or wrong file {}",
                p.display()
            );
            present.push((p, e.hash));
        }
    }
    let present_n = present.len();
    assert!(present_n < 5000, "the download was not cut short");
    // The files it placed (all small) still reach the hash cache, so the sync that follows
    // the cancelled one does not read them again. The cancel did not wait for that.
    let cache = attache::hash::cache::HashCache::open(&get_cache).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (p, hash) in present {
        use std::os::unix::ffi::OsStrExt;
        let stat = attache::scan::FileStat::of(&p.metadata().unwrap());
        while cache.lookup(p.as_os_str().as_bytes(), &stat).unwrap() != Some(hash) {
            assert!(Instant::now() < deadline, "{} never recorded", p.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("download cancelled in {took:?} with {present_n} of 5000 files done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_large_multipart_upload_aborts_it_within_a_second() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Sparse: 3 GiB of zeros costs no disk.
    std::fs::File::create(src.join("huge.bin"))
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.bandwidth.upload = Rate(200 * MIB);
    let (cancel, job) = spawn_put(&src, &s).await;
    wait_for_requests(&s3, 3, "the multipart upload", |r| {
        r.query.contains("partNumber")
    })
    .await;
    assert_eq!(s3.open_multipart_uploads(), 1);
    let took = cancel_put(cancel, job).await;
    assert_eq!(
        s3.open_multipart_uploads(),
        0,
        "the multipart upload was not aborted"
    );
    assert!(
        s3.object_keys().iter().all(|k| !k.contains("/Data/")),
        "nothing stored"
    );
    eprintln!("multipart upload cancelled and aborted in {took:?}");
}

/// A part whose bytes all reached the store may be stored after the client gave it up. The
/// abort must come after it, or the part outlives the abort (s3s-fs keeps it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_waits_for_parts_the_store_already_has_before_aborting() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "big.bin", &content(40 * MIB, 7), MTIME_NS);
    let s = settings(&s3, "p", &t.path().join("cache"));
    s3.faults.land_parts_late(Duration::from_millis(400));
    let (cancel, job) = spawn_put(&src, &s).await;
    // Cancel once the server holds a whole part it has not stored yet.
    wait_for_requests(&s3, 1, "a whole part", |r| {
        r.operation() == "UploadPart" && r.bytes_in == 5 * MIB && r.status == 0
    })
    .await;
    cancel_put(cancel, job).await;
    // Every part the server was holding has landed by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s3.open_multipart_uploads(), 0, "the upload was not aborted");
    assert_eq!(
        s3.multipart_part_files(),
        0,
        "a part stored after the abort was left behind"
    );
    let aborts = s3
        .stats
        .log()
        .into_iter()
        .filter(|r| r.operation() == "AbortMultipartUpload")
        .collect::<Vec<_>>();
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert_eq!(aborts[0].status, 204, "{aborts:?}");
}

/// A CreateMultipartUpload the store has carried out when the cancel comes, its reply still
/// on the way: the upload it made must not stay open, unknown to anyone. The reply is awaited
/// (briefly) and the upload it names aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_create_of_a_multipart_upload_aborts_what_it_created() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "big.bin", &content(40 * MIB, 9), MTIME_NS);
    let s = settings(&s3, "p", &t.path().join("cache"));
    // Creates and completes (the POSTs) are answered 150 ms after the store did them.
    s3.faults.only_for(|m, _| m.as_str() == "POST");
    s3.faults.delay_responses(Duration::from_millis(150));
    let (cancel, job) = spawn_put(&src, &s).await;
    wait_for_requests(&s3, 1, "the create", |r| {
        r.operation() == "CreateMultipartUpload"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s3.open_multipart_uploads(), 1, "the store made the upload");
    cancel_put(cancel, job).await;
    assert_eq!(
        s3.open_multipart_uploads(),
        0,
        "the upload the cancelled create made was left open"
    );
    let parts = s3
        .stats
        .requests_matching(|r| r.operation() == "UploadPart");
    assert_eq!(parts, 0, "parts were sent after the cancel");
}

/// A submit cancelled while its manifest is being stored says truly whether it was published:
/// a manifest PUT answered within the grace (500 ms) counts as done; a later one is dropped and
/// the manifest deleted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_cancelled_while_publishing_says_truly_whether_it_published() {
    for (reply_after, published) in [
        (Duration::from_millis(150), true),
        (Duration::from_secs(3), false),
    ] {
        let s3 = TestS3::start().await;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write_files(&src, 5, |i| (format!("f{i}"), content(1000, i)));
        let s = settings(&s3, "p", &t.path().join("cache"));
        // Stored at once; answered late.
        s3.faults
            .only_for(|m, k| m.as_str() == "PUT" && k.contains("/Manifests/"));
        s3.faults.delay_responses(reply_after);
        let spec = SubmitSpec {
            inputs: vec![src.clone()],
            output_dirs: vec![],
            referenced: vec![],
            farm_id: "farm-1".into(),
            queue_id: "queue-1".into(),
            local_locations: vec![],
            shared_locations: vec![],
            require_paths_exist: false,
            hash: hash_spec(&src, &s),
        };
        let cancel = CancellationToken::new();
        let tr = transfer(&s).await;
        let job = {
            let cancel = cancel.clone();
            tokio::spawn(async move { submit::run(spec, tr, &cancel).await })
        };
        wait_for_requests(&s3, 1, "a manifest PUT", |r| r.key.contains("/Manifests/")).await;
        cancel.cancel();
        let r = job.await.unwrap();
        tokio::time::sleep(reply_after).await;
        let manifests: Vec<String> = s3
            .object_keys()
            .into_iter()
            .filter(|k| k.contains("/Manifests/"))
            .collect();
        if published {
            let report = r.expect("answered within the grace: published");
            assert_eq!(manifests.len(), 1, "{manifests:?}");
            assert_eq!(
                Some(&manifests[0]),
                report.roots[0].manifest_key.as_ref(),
                "the report names the stored manifest"
            );
        } else {
            assert!(
                matches!(r, Err(SubmitError::Transfer(TransferError::Cancelled(_)))),
                "{:?}",
                r.err()
            );
            assert_eq!(
                manifests,
                Vec::<String>::new(),
                "a cancelled submit left its manifest"
            );
        }
    }
}

/// The renderer rewrites the end of a 30 MiB file, same size.
fn rewrite_end(path: &Path) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&[0xFF; 4096], 29 * MIB)
        .unwrap();
}

/// An upload of render.exr, changed while it was sent, ends saying so and naming the file.
fn assert_changed_during_upload(err: &PutError, what: &str) {
    let err = err.to_string();
    assert!(err.contains("file changed during upload"), "{what}: {err}");
    assert!(err.contains("render.exr"), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_multipart_upload_is_refused() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let path = write(&src, "render.exr", &content(30 * MIB, 7), MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.bandwidth.upload = Rate(10 * MIB);
    // One part at a time: the last part is still unread when the file changes (with all 6
    // parts in flight at once, a busy machine could read them all first and rightly succeed).
    s.transfer.max_parts_in_flight = 1;
    let planned = ContentHash::of(&std::fs::read(&path).unwrap());
    let tr = transfer(&s).await;
    let job = {
        let spec = hash_spec(&src, &s);
        tokio::spawn(async move { put::run(spec, tr, &CancellationToken::new()).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3
        .stats
        .requests_matching(|r| r.query.contains("partNumber"))
        < 1
    {
        assert!(Instant::now() < deadline, "multipart upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rewrite_end(&path);
    assert_changed_during_upload(&job.await.unwrap().unwrap_err(), "s3 multipart");
    let key = format!("p/Data/{planned}.xxh128");
    assert!(
        !s3.object_keys().contains(&key),
        "content stored under a key that is not its hash"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
}

/// With `multipart_threshold` raised (stores that copy parts again on Complete), a file bigger
/// than a part goes in one PUT read from the file as it is sent: one request, the content
/// intact, and a retry after a server error sends it all again. Downloads keep their ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_put_bigger_than_a_part_is_read_as_it_is_sent() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let big = content(23 * MIB + 5, 11);
    write(&src, "cache.vdb", &big, MTIME_NS);
    write(&src, "tex.exr", &content(6 * MIB, 12), MTIME_NS);
    let big_key = format!("p/Data/{}.xxh128", ContentHash::of(&big));
    for (name, mut s) in [
        ("s3", settings(&s3, "p", &t.path().join("cache-s3"))),
        (
            "file",
            fs_settings(&t.path().join("store"), &t.path().join("cache-fs")),
        ),
    ] {
        s.transfer.multipart_threshold = ByteSize(64 * MIB);
        if name == "s3" {
            let k = big_key.clone();
            s3.faults
                .only_for(move |m, key| m.as_str() == "PUT" && key == k);
            s3.faults.internal_error_next(1);
        }
        let put = put_tree(&src, &s).await.unwrap();
        assert_eq!(put.upload.uploaded_objects, 2, "{name}");
        assert_eq!(put.upload.multipart_objects, 0, "{name}");
        assert_eq!(put.upload.uploaded_bytes, 29 * MIB + 5, "{name}");
        let m = put.hash.roots[0].manifest.clone();
        let dest = t.path().join(format!("dest-{name}"));
        get_tree(&m, &dest, &s).await.unwrap();
        assert_same_tree(&src, &dest, &m);
    }
    assert_eq!(
        s3.stats
            .requests_matching(|r| r.method == "PUT" && r.key == big_key),
        2,
        "one PUT, and one retry after the server error"
    );
    assert_eq!(
        s3.stats
            .requests_matching(|r| r.query.contains("uploads") || r.query.contains("partNumber")),
        0,
        "no multipart request"
    );
    assert_eq!(s3.read_object(&big_key).as_deref(), Some(&big[..]));
    assert_eq!(
        s3.stats
            .requests_matching(|r| r.is_get() && r.key == big_key),
        5,
        "the download still goes in ranged parts of part_size, whatever the threshold"
    );
}

/// A store whose multipart completions take as long as a copy of the parts (s3s-fs copies
/// every part again) is measured so after two uploads of 64 MiB or more, and the next run
/// sends files up to `transfer.copying_store_threshold` to it in one PUT; a store that
/// completes quickly keeps getting parts, and so does one with the threshold at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_completes_slowly_gets_large_files_in_one_put() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let base = content(64 * MIB, 21);
    let tree = |name: &str, ids: &[u8]| {
        let root = t.path().join(name);
        for &i in ids {
            let mut data = base.clone();
            data[0] = i;
            write(&root, &format!("cache{i}.vdb"), &data, MTIME_NS);
        }
        root
    };
    let (first, second, third) = (tree("a", &[1, 2]), tree("b", &[3]), tree("c", &[4]));
    let multipart_requests = |s3: &TestS3| {
        s3.stats
            .requests_matching(|r| r.query.contains("uploads") || r.query.contains("partNumber"))
    };

    // Completions (and creations) take 2 s: slow against parts sent in well under 4 s.
    let cache = t.path().join("cache-slow");
    let slow = settings(&s3, "slow", &cache);
    s3.faults
        .only_for(|m, key| m.as_str() == "POST" && key.contains("/Data/"));
    s3.faults.delay_responses(Duration::from_secs(2));
    let put = put_tree(&first, &slow).await.unwrap();
    assert_eq!(put.upload.multipart_objects, 2);
    let measured = attache::transfer::copying_stores::measured(&cache);
    let (store, m) = measured.iter().next().expect("the store was measured");
    assert!(store.starts_with(&slow.store.url), "{store}");
    let now = attache::clock::now_ms();
    let day = 24 * 3600 * 1000;
    let until = m.copies_until(now).expect("taken for a copying store");
    assert!(
        until > now + day - 60_000 && until <= now + day,
        "for a day"
    );
    assert!(m.0.iter().all(|m| m.slow() && m.bytes == 64 * MIB), "{m:?}");
    s3.faults.clear();

    s3.stats.reset();
    let put = put_tree(&second, &slow).await.unwrap();
    assert_eq!(put.upload.uploaded_objects, 1);
    assert_eq!(put.upload.multipart_objects, 0, "one PUT");
    assert_eq!(multipart_requests(&s3), 0);
    let m = put.hash.roots[0].manifest.clone();
    let dest = t.path().join("dest");
    get_tree(&m, &dest, &slow).await.unwrap();
    assert_same_tree(&second, &dest, &m);

    // Measured quick (and the threshold at 0, measured slow): parts, as configured. The quick
    // store's parts are answered 3 s late, so that its completions (s3s-fs copies the parts
    // again) stay small beside them also on a loaded machine, where a 64 MiB copy can take
    // over the 500 ms and half the parts' time that make a completion slow.
    let quick = settings(&s3, "quick", &t.path().join("cache-quick"));
    s3.faults
        .only_for(|m, key| m.as_str() == "PUT" && key.contains("/Data/"));
    s3.faults.delay_responses(Duration::from_secs(3));
    put_tree(&first, &quick).await.unwrap();
    s3.faults.clear();
    s3.stats.reset();
    let put = put_tree(&second, &quick).await.unwrap();
    assert_eq!(put.upload.multipart_objects, 1);
    let mut off = settings(&s3, "off", &t.path().join("cache-off"));
    off.transfer.copying_store_threshold = ByteSize(0);
    s3.faults
        .only_for(|m, key| m.as_str() == "POST" && key.contains("/Data/"));
    s3.faults.delay_responses(Duration::from_secs(2));
    put_tree(&first, &off).await.unwrap();
    s3.faults.clear();
    let put = put_tree(&third, &off).await.unwrap();
    assert_eq!(put.upload.multipart_objects, 1);
    assert!(attache::transfer::copying_stores::measured(&t.path().join("cache-off")).is_empty());
}

/// The file store copies every part on completion, and says so: files up to
/// `transfer.copying_store_threshold` go to it in one PUT from the first upload on, and in
/// parts with the threshold at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_gets_large_files_in_one_put_from_the_first_upload() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "cache.vdb", &content(23 * MIB, 31), MTIME_NS);
    for (threshold, in_parts) in [(5 << 30, 0), (0, 1)] {
        let store = t.path().join(format!("store-{threshold}"));
        let mut s = fs_settings(&store, &t.path().join(format!("cache-{threshold}")));
        s.transfer.copying_store_threshold = ByteSize(threshold);
        let put = put_tree(&src, &s).await.unwrap();
        assert_eq!(put.upload.uploaded_objects, 1);
        assert_eq!(
            put.upload.multipart_objects, in_parts,
            "threshold {threshold}"
        );
        let m = put.hash.roots[0].manifest.clone();
        let dest = t.path().join(format!("dest-{threshold}"));
        get_tree(&m, &dest, &s).await.unwrap();
        assert_same_tree(&src, &dest, &m);
    }
}

/// Waits until the PUT of `key` has begun: the server saw it ("s3"), or the file store made
/// its temporary file ("file").
async fn wait_for_put_start(name: &str, s3: &TestS3, store: &Path, key: &str) {
    if name == "s3" {
        wait_for_requests(s3, 1, "the PUT", |r| r.method == "PUT" && r.key == key).await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::files_under(&store.join(".attache-tmp")).is_empty() {
        assert!(Instant::now() < deadline, "the PUT never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Nothing stored under `key` on store `name`, and ("file") no temporary file left.
fn assert_not_stored(name: &str, s3: &TestS3, store: &Path, key: &str, why: &str) {
    if name == "s3" {
        assert!(!s3.object_keys().contains(&key.to_string()), "{why}");
    } else {
        assert!(!store.join(key).exists(), "{why}");
        assert!(common::files_under(&store.join(".attache-tmp")).is_empty());
    }
}

/// A file that changes while its single PUT is read and sent is never stored, on either store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_a_streamed_put_is_refused() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    for (name, mut s) in [
        ("s3", settings(&s3, "p", &t.path().join("cache-s3"))),
        ("file", fs_settings(&store, &t.path().join("cache-fs"))),
    ] {
        let src = t.path().join(format!("src-{name}"));
        let path = write(&src, "render.exr", &content(30 * MIB, 7), MTIME_NS);
        s.transfer.multipart_threshold = ByteSize(64 * MIB);
        // 3 s to send: the last MiB is read long after the PUT starts.
        s.bandwidth.upload = Rate(10 * MIB);
        let planned = ContentHash::of(&std::fs::read(&path).unwrap());
        let key = format!("p/Data/{planned}.xxh128");
        let (_cancel, job) = spawn_put(&src, &s).await;
        wait_for_put_start(name, &s3, &store, &key).await;
        rewrite_end(&path);
        assert_changed_during_upload(&job.await.unwrap().unwrap_err(), name);
        assert_not_stored(name, &s3, &store, &key, "stored under a wrong hash");
    }
}

/// For another user's job only the very file hashed is uploaded: where its path names
/// another file by then (a link swapped in, to a file that user may not read), not a byte of
/// it is sent, whichever way it would go (one PUT from memory, one streamed, in parts), even
/// with the content the manifest expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_very_file_hashed_is_uploaded_for_another_user() {
    use attache::transfer::upload::{UploadItem, upload_stream};
    use std::os::unix::fs::MetadataExt;
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.transfer.copying_store_threshold = ByteSize(0);
    let hashed = write(t.path(), "hashed.exr", b"x", MTIME_NS);
    let meta = std::fs::metadata(&hashed).unwrap();
    for (how, size) in [
        ("in memory", 1000),
        ("streamed", 2 * MIB),
        ("in parts", 12 * MIB),
    ] {
        if how == "streamed" {
            s.transfer.multipart_threshold = ByteSize(64 * MIB);
        } else {
            s.transfer.multipart_threshold = ByteSize(5 * MIB);
        }
        let data = content(size, size);
        let path = write(t.path(), "render.exr", &data, MTIME_NS);
        let item = UploadItem {
            hash: ContentHash::of(&data),
            size,
            path,
            data: None,
            same_file: Some((meta.dev(), meta.ino())),
        };
        let tr = transfer(&s).await;
        let before = s3.stats.requests_matching(|r| r.method == "PUT");
        let e = upload_stream(tr, futures::stream::iter([item]), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(e, TransferError::ChangedDuringUpload { .. }),
            "{how}: {e}"
        );
        let key = format!("p/Data/{}.xxh128", ContentHash::of(&data));
        assert!(!s3.object_keys().contains(&key), "{how}: stored");
        let sent = s3.stats.requests_matching(|r| r.method == "PUT") - before;
        assert_eq!(sent, 0, "{how}: {sent} PUTs of the file sent");
        assert_eq!(s3.open_multipart_uploads(), 0, "{how}");
    }
}

/// A cancel in the middle of a streamed single PUT returns within a second and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_streamed_put_stops_within_a_second_and_stores_nothing() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    let data = content(30 * MIB, 8);
    write(&src, "render.exr", &data, MTIME_NS);
    let key = format!("p/Data/{}.xxh128", ContentHash::of(&data));
    for (name, mut s) in [
        ("s3", settings(&s3, "p", &t.path().join("cache-s3"))),
        ("file", fs_settings(&store, &t.path().join("cache-fs"))),
    ] {
        s.transfer.multipart_threshold = ByteSize(64 * MIB);
        s.bandwidth.upload = Rate(10 * MIB);
        let (cancel, job) = spawn_put(&src, &s).await;
        wait_for_put_start(name, &s3, &store, &key).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel_put(cancel, job).await;
        assert_not_stored(name, &s3, &store, &key, "a cut-short PUT was stored");
    }
}

/// `big.bin` (23 MiB, fetched in ranged parts of 5 MiB) put under `dir`, with the server's
/// GET faults to come aimed at its object only: its bytes, the settings and the manifest.
async fn one_big_object_with_faulty_gets(
    s3: &TestS3,
    dir: &Path,
    seed: u64,
) -> (Vec<u8>, Settings, Manifest) {
    let src = dir.join("src");
    let data = content(23 * MIB + 77, seed);
    write(&src, "big.bin", &data, MTIME_NS);
    let s = settings(s3, "p", &dir.join("cache"));
    let m = put_tree(&src, &s).await.unwrap().hash.roots[0]
        .manifest
        .clone();
    let data_key = format!("p/Data/{}.xxh128", ContentHash::of(&data));
    s3.faults
        .only_for(move |m, k| m.as_str() == "GET" && k == data_key);
    (data, s, m)
}

/// A ranged download is hashed while its parts land; a corrupted part must still be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_part_of_a_ranged_download_is_caught_and_fetched_again() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let (data, s, m) = one_big_object_with_faulty_gets(&s3, t.path(), 5).await;
    s3.faults.corrupt_get_body_next(2);
    let dest = t.path().join("dest");
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), data);
    assert!(got.download.refetched >= 1, "{:?}", got.download);
    let ranged = s3
        .stats
        .requests_matching(|r| r.is_get() && r.key.ends_with(".xxh128"));
    assert!(ranged >= 2 * 5, "fetched in parts, twice: {ranged} GETs");
}

/// A part of a large download whose connection is lost mid-body is fetched on from where it
/// stopped: the bytes that came are kept, neither the part nor the object fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_part_of_a_ranged_download_is_fetched_on_from_where_it_stopped() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let (data, s, m) = one_big_object_with_faulty_gets(&s3, t.path(), 6).await;
    s3.faults.cut_get_body_next(2);
    s3.stats.reset();
    let dest = t.path().join("dest");
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), data);
    let d = &got.download;
    assert_eq!((d.resumed_parts, d.refetched), (2, 0), "{d:?}");
    assert_eq!(
        d.downloaded_bytes,
        data.len() as u64,
        "no byte fetched twice: {d:?}"
    );
    let gets = s3
        .stats
        .requests_matching(|r| r.is_get() && r.key.ends_with(".xxh128"));
    assert_eq!(
        gets,
        5 + 2,
        "five parts of 5 MiB, and the rest of the two cut ones"
    );
}

/// A get of `big.bin` (five parts) that fails once two parts came: the store is lost past
/// any retries. Returns the destination, left empty, and the partial download's directory.
async fn a_get_that_fails_after_two_parts(
    s3: &TestS3,
    dir: &Path,
    m: &Manifest,
    s: &Settings,
) -> (PathBuf, PathBuf) {
    s3.faults.fail_data_gets_after(2);
    let dest = dir.join("dest");
    // Lost for good: no need to wait out the SDK's backoffs.
    let mut once = s.clone();
    once.s3.retry_attempts = 1;
    let err = get_tree(m, &dest, &once).await.unwrap_err();
    assert!(
        err.to_string().contains("big.bin") || err.to_string().contains("Data/"),
        "{err}"
    );
    assert!(
        common::files_under(&dest).is_empty(),
        "nothing half-written in the destination"
    );
    let kept = s.cache.dir.join("partial-downloads");
    assert_eq!(
        common::files_under(&kept).len(),
        2,
        "the .part and its record"
    );
    s3.faults.clear();
    s3.stats.reset();
    (dest, kept)
}

/// What a failed download fetched of a large object is kept: the next one fetches only the
/// parts that did not land, and the object is still verified whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_get_fetches_only_the_parts_a_failed_one_did_not_land() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let (data, s, m) = one_big_object_with_faulty_gets(&s3, t.path(), 8).await;
    let (dest, kept) = a_get_that_fails_after_two_parts(&s3, t.path(), &m, &s).await;
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), data);
    let d = &got.download;
    assert!(d.resumed_bytes >= 3 * MIB, "two parts kept: {d:?}");
    assert_eq!(
        d.resumed_bytes + d.downloaded_bytes,
        data.len() as u64,
        "no byte fetched twice: {d:?}"
    );
    let gets = s3
        .stats
        .requests_matching(|r| r.is_get() && r.key.ends_with(".xxh128"));
    assert_eq!(gets, 3, "the three parts that did not land");
    assert!(common::files_under(&kept).is_empty(), "it became the file");
}

/// A cancel keeps the parts in flight as far as they came, not only the whole ones: the next
/// download fetches the rest of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_get_keeps_its_parts_in_flight_as_far_as_they_came() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let (data, s, m) = one_big_object_with_faulty_gets(&s3, t.path(), 10).await;
    // Five parts of 5 MiB at once, 4 MiB/s between them: none is whole after a second.
    let mut slow = s.clone();
    slow.bandwidth.download = Rate(4 * MIB);
    let (dest, cancel) = (t.path().join("dest"), CancellationToken::new());
    let spec = GetSpec {
        for_caller: None,
        replaceable: None,
        record: None,
        manifest: m.clone(),
        dest: dest.clone(),
        cache_dir: None,
        conflict: Default::default(),
        check_space: false,
    };
    let get = tokio::spawn({
        let (transfer, cancel) = (transfer(&slow).await, cancel.clone());
        async move { get::run(spec, transfer, &cancel).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    assert!(matches!(
        get.await.unwrap(),
        Err(TransferError::Cancelled(_))
    ));
    assert!(common::files_under(&dest).is_empty());
    let kept = s.cache.dir.join("partial-downloads");
    let record = common::files_under(&kept)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "landed"))
        .unwrap();
    let ranges: Vec<(u64, u64)> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(
        ranges
            .iter()
            .any(|(a, b)| b - a < 5 * MIB && b % (5 * MIB) != 0),
        "a part cut by the cancel is recorded as far as it came: {ranges:?}"
    );

    s3.stats.reset();
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), data);
    let d = &got.download;
    let recorded: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    assert_eq!(d.resumed_bytes, recorded, "{d:?}");
    assert_eq!(d.resumed_bytes + d.downloaded_bytes, data.len() as u64);
    assert!(common::files_under(&kept).is_empty());
}

/// A kept partial download whose bytes changed on disk does not verify: the object is
/// fetched again whole, and the right content lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_partial_download_that_changed_on_disk_is_fetched_again_whole() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let (data, s, m) = one_big_object_with_faulty_gets(&s3, t.path(), 9).await;
    let (dest, kept) = a_get_that_fails_after_two_parts(&s3, t.path(), &m, &s).await;
    let part = common::files_under(&kept)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    // The two parts that came landed whole: flipping a byte in each 5 MiB hits them.
    for at in (MIB..bytes.len() as u64).step_by(5 * MIB as usize) {
        bytes[at as usize] ^= 0xff;
    }
    std::fs::write(&part, &bytes).unwrap();
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), data);
    assert_eq!(got.download.refetched, 1, "{:?}", got.download);
    assert!(common::files_under(&kept).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_in_correct_content_or_a_clear_error() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 20, |i| (format!("f{i}"), content(50_000 + i, i)));
    write(&src, "big.bin", &content(11 * MIB, 99), MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.cache.hash_cache = false;

    // Throttling and server errors during upload: retried, then everything is there.
    s3.faults.slow_down_next(15);
    s3.faults.internal_error_next(5);
    let put = put_tree(&src, &s).await.unwrap();
    let m = put.hash.roots[0].manifest.clone();
    for e in m.entries() {
        let key = format!("p/Data/{}.xxh128", e.hash);
        assert!(s3.object_keys().contains(&key), "{key} missing");
    }

    // Cut and corrupted bodies during download: fetched again, files correct.
    s3.faults.cut_get_body_next(3);
    s3.faults.corrupt_get_body_next(3);
    let dest = t.path().join("dest");
    let got = get_tree(&m, &dest, &s).await.unwrap();
    assert_same_tree(&src, &dest, &m);
    assert!(
        got.download.refetched >= 1,
        "corrupt bodies must be fetched again"
    );

    // A corrupt or cut body fetched again is counted again: the progress ends at its total,
    // which grew by what is fetched twice, not beyond it.
    for (i, fault) in ["corrupt", "cut"].into_iter().enumerate() {
        match fault {
            "corrupt" => s3.faults.corrupt_get_body_next(2),
            _ => s3.faults.cut_get_body_next(2),
        }
        let progress = Arc::new(Progress::default());
        let bandwidth = Arc::new(Bandwidth::new(&s.bandwidth));
        let tr = setup::transfer_for(&s.store.url, &s, bandwidth, progress.clone())
            .await
            .unwrap();
        let spec = GetSpec {
            for_caller: None,
            replaceable: None,
            record: None,
            manifest: m.clone(),
            dest: t.path().join(format!("dest-progress-{i}")),
            cache_dir: None,
            conflict: Default::default(),
            check_space: false,
        };
        let got = get::run(spec, tr, &CancellationToken::new()).await.unwrap();
        assert!(got.download.refetched >= 1, "{fault}: {:?}", got.download);
        let p = progress.snapshot();
        assert_eq!(p.bytes_done, p.bytes_total, "{fault}: {p:?}");
        assert_eq!(
            p.bytes_total, got.download.downloaded_bytes,
            "{fault}: {p:?}"
        );
    }

    // A store that keeps corrupting: a clear error and no file.
    s3.faults.corrupt_get_body_next(1000);
    let dest2 = t.path().join("dest2");
    let err = get_tree(&m, &dest2, &s).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    s3.faults.corrupt_get_body_next(0);
    for e in m.entries() {
        let p = dest2.join(e.path.as_str().unwrap());
        if let Ok(data) = std::fs::read(&p) {
            assert_eq!(
                ContentHash::of(&data),
                e.hash,
                "wrong file written: {}",
                p.display()
            );
        }
    }
    assert!(leftovers(&dest2).is_empty());

    // A burst of 503s for every request: the gate backs off and the upload still completes.
    let src2 = t.path().join("src2");
    write_files(&src2, 30, |i| {
        (format!("g{i}"), content(10_000 + i, 500 + i))
    });
    s3.faults.slow_down_for(Duration::from_secs(3));
    let put = put_tree(&src2, &s).await.unwrap();
    assert_eq!(put.upload.uploaded_objects, 30);
}

/// Every `method` request for the object of `data` fails with a 500 from now on; its key.
fn fail_lastingly(s3: &TestS3, method: &'static str, data: &[u8]) -> String {
    let data_key = format!("p/Data/{}.xxh128", ContentHash::of(data));
    let k = data_key.clone();
    s3.faults
        .only_for(move |m, key| m.as_str() == method && key == k);
    s3.faults.internal_error_next(1000);
    data_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_server_error_is_tried_retry_attempts_times_not_more() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let data = content(20_000, 7);
    write(&src, "only.bin", &data, MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.s3.retry_attempts = 2;
    let data_key = fail_lastingly(&s3, "PUT", &data);

    let err = put_tree(&src, &s).await.unwrap_err().to_string();
    // What a person reads: the status, the store's code, no dump of the SDK's structures.
    assert!(
        err.contains("HTTP 500 Internal Server Error: InternalError"),
        "{err}"
    );
    assert!(!err.contains("ServiceError"), "{err}");
    let puts = s3
        .stats
        .requests_matching(|r| r.method == "PUT" && r.key == data_key);
    // The first attempt and 2 retries, each of which the S3 client may retry once at once:
    // at most 6 requests. Both layers retrying fully made it 3 x 3 = 9 (36 by default).
    assert!((3..=6).contains(&puts), "{puts} PUTs of a lasting 500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_head_names_the_object_and_the_status() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    // Above the multipart threshold: uploaded after a HEAD, whose reply has no body to name
    // an error code.
    let data = content(6 * MIB, 8);
    write(&src, "big.bin", &data, MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.s3.retry_attempts = 0;
    let data_key = fail_lastingly(&s3, "HEAD", &data);

    let err = put_tree(&src, &s).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("HEAD {data_key}: HTTP 500 Internal Server Error")),
        "{err}"
    );
    assert!(!err.contains("ServiceError"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_400_to_a_head_says_what_to_check() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "big.bin", &content(6 * MIB, 9), MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    // Too short for a bucket name: the server refuses it, and a HEAD's reply has no body.
    s.store.url = "s3://b1/p".into();
    s.s3.retry_attempts = 0;
    let err = put_tree(&src, &s).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 400 Bad Request (check s3.region and the bucket name)"),
        "{err}"
    );
}

/// `cleanup` aborts what the store holds open under the root prefix's Data/: this machine's
/// recorded leftovers at once, others only past `--older-than`; never an upload a transfer on
/// this machine is running, never one under another prefix; a dry run aborts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_aborts_open_uploads_by_age_and_spares_running_ones() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(&s3, "p", &t.path().join("cache"));
    check_cleanup(transfer(&s).await, &|| s3.multipart_upload_ids()).await;
    let store = t.path().join("store");
    let s = fs_settings(&store, &t.path().join("cache-fs"));
    let open = || {
        std::fs::read_dir(store.join(".attache-multipart"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    check_cleanup(transfer(&s).await, &open).await;
}

async fn check_cleanup(tr: Arc<Transfer>, open: &dyn Fn() -> Vec<String>) {
    use attache::jobs::cleanup::{self, CleanupSpec};
    let (store, url) = (tr.store.identity(), tr.store.describe());
    let data = |name: &str| attache::store::layout::join(tr.store.root_prefix(), name);
    let keys = [
        data("Data/a.xxh128"),
        data("Data/b.xxh128"),
        data("Data/c.xxh128"),
        "q/Data/d.xxh128".to_string(),
    ];
    let mut ids = Vec::new();
    for key in &keys {
        ids.push(tr.store.create_multipart(key).await.unwrap());
    }
    // c: left by an earlier run of this machine; b: a transfer here is running it.
    drop(
        tr.open_uploads
            .record(&store, &url, &keys[2], &ids[2])
            .unwrap(),
    );
    let running = tr
        .open_uploads
        .record(&store, &url, &keys[1], &ids[1])
        .unwrap();
    let cancel = CancellationToken::new();
    let run = |older_than: Duration, dry_run: bool| {
        let spec = CleanupSpec { older_than };
        let (tr, cancel) = (tr.clone().dry_run_if(dry_run), cancel.clone());
        async move { cleanup::run(spec, tr, &cancel).await.unwrap() }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // A dry run counts what a real run would do: the recorded leftover (c) whatever its age.
    let r = run(Duration::ZERO, true).await;
    assert_eq!((r.recorded_aborted, r.listed), (1, 3), "{store}: {r:?}");
    let would: Vec<_> = r.aborted.iter().map(|u| u.key.clone()).collect();
    assert_eq!(would, [keys[0].clone()], "{store}: {r:?}");
    let r = run(Duration::from_secs(24 * 3600), true).await;
    assert_eq!(
        (r.recorded_aborted, r.kept_younger, r.kept_in_progress_here),
        (1, 1, 1),
        "{store}: {r:?}"
    );
    assert!(r.aborted.is_empty(), "{store}: {r:?}");
    assert_eq!(open().len(), 4, "{store}: a dry run aborts nothing");

    let r = run(Duration::from_secs(24 * 3600), false).await;
    assert_eq!(r.recorded_aborted, 1, "{store}: {r:?}");
    assert_eq!(
        (r.listed, r.kept_younger, r.kept_in_progress_here),
        (2, 1, 1),
        "{store}: {r:?}"
    );
    assert!(
        r.aborted.is_empty() && r.failed.is_empty(),
        "{store}: {r:?}"
    );
    assert_eq!(open().len(), 3, "{store}");

    let r = run(Duration::ZERO, false).await;
    let aborted: Vec<_> = r.aborted.iter().map(|u| u.upload_id.clone()).collect();
    assert_eq!(aborted, [ids[0].clone()], "{store}: {r:?}");
    assert_eq!(r.kept_in_progress_here, 1, "{store}: {r:?}");
    assert_eq!(
        sorted(open()),
        sorted(vec![ids[1].clone(), ids[3].clone()]),
        "{store}: the running upload and the other prefix's stay"
    );
    running.done();
}

/// `r`, a put of `data` ([`RESUMED_LEN`]) with settings `s`, resumed an upload that held its
/// first two parts: it sent the other three (`sent` UploadParts), left nothing open nor
/// recorded, and the object is the file.
fn assert_resumed_after_two_parts(
    s3: &TestS3,
    r: &PutReport,
    sent: usize,
    s: &Settings,
    data: &[u8],
) {
    assert_eq!(
        (r.upload.resumed_uploads, r.upload.resumed_bytes),
        (1, 10 * MIB),
        "{:?}",
        r.upload
    );
    assert_eq!(sent, 3, "parts 3 to 5 only");
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&s.cache.dir).is_empty());
    let key = format!("p/Data/{}.xxh128", ContentHash::of(data));
    assert!(
        s3.read_object(&key).unwrap() == data,
        "the object is not the file"
    );
}

/// A multipart upload another machine (another cache dir) left open is taken over by the
/// next upload of the same file once it has been idle for half an hour (or
/// `transfer.take_over_after`), keeping the parts the store holds; one that may still be at
/// work is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_another_machine_abandoned_is_taken_over_once_idle() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let machine = |cache: &str| machine_settings(&s3, &t.path().join(cache));
    let (a, b) = (machine("a-cache"), machine("b-cache"));
    let part_puts = || {
        s3.stats
            .requests_matching(|r| r.method == "PUT" && r.query.contains("partNumber"))
    };
    // Machine A's upload of a file fails after two parts, and is kept open for A.
    let left_by_a = |name: &str, seed: u64| {
        let src = t.path().join(name);
        let data = content(RESUMED_LEN, seed);
        write(&src, "big.bin", &data, MTIME_NS);
        (src, data)
    };
    let (src, data) = left_by_a("src", 11);
    s3.faults.fail_data_puts_after(2);
    put_tree(&src, &a).await.unwrap_err();
    s3.faults.clear();
    assert_eq!(s3.open_multipart_uploads(), 1);

    // Idle for 31 minutes: machine B, uploading the same file, takes it over.
    s3.age_multipart_uploads(Duration::from_secs(31 * 60));
    let before = part_puts();
    let r = put_tree(&src, &b).await.unwrap();
    assert_resumed_after_two_parts(&s3, &r, part_puts() - before, &b, &data);

    // Left a minute ago, it may still be at work on A: B leaves it alone.
    let (src, _) = left_by_a("src2", 12);
    s3.faults.fail_data_puts_after(2);
    put_tree(&src, &a).await.unwrap_err();
    s3.faults.clear();
    s3.age_multipart_uploads(Duration::from_secs(60));
    let before = part_puts();
    let r = put_tree(&src, &b).await.unwrap();
    assert_eq!(r.upload.resumed_uploads, 0, "{:?}", r.upload);
    assert_eq!(part_puts() - before, 5, "all of it, in B's own upload");
    assert_eq!(
        s3.open_multipart_uploads(),
        1,
        "A's upload is A's to resume or abort"
    );

    // `transfer.take_over_after` sets how long: a machine that takes uploads over after 30 s
    // takes over one idle for a minute; one set to take none over starts its own.
    let mut quick = machine("quick-cache");
    quick.transfer.take_over_after = attache::config::Duration::secs(30);
    let mut never = machine("never-cache");
    never.transfer.take_over_after = attache::config::Duration::secs(0);
    for (name, seed, s, resumed) in [("src3", 13, &quick, 1), ("src4", 14, &never, 0)] {
        let (src, _) = left_by_a(name, seed);
        s3.faults.fail_data_puts_after(2);
        put_tree(&src, &a).await.unwrap_err();
        s3.faults.clear();
        s3.age_multipart_uploads(Duration::from_secs(60));
        let before = part_puts();
        let r = put_tree(&src, s).await.unwrap();
        assert_eq!(r.upload.resumed_uploads, resumed, "{name}: {:?}", r.upload);
        assert_eq!(part_puts() - before, 5 - 2 * resumed as usize, "{name}");
    }
}

/// An upload another machine took over stays in its hands while it is at work: the machine
/// that left it, its time to resume past, does not abort it while a part landed in it within
/// half an hour, nor does `cleanup` from a third machine; once it is idle, its leftover is
/// aborted as before, and the taker's next run starts the file again in an upload of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_another_machine_took_over_is_not_aborted_while_it_is_at_work() {
    use attache::jobs::cleanup::{self, CleanupSpec};
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let machine = |cache: &str| machine_settings(&s3, &t.path().join(cache));
    let (mut a, b) = (machine("a-cache"), machine("b-cache"));
    a.transfer.resume_for = attache::config::Duration::secs(600);
    let (src, small) = (t.path().join("src"), t.path().join("small"));
    let data = content(RESUMED_LEN, 13);
    write(&src, "big.bin", &data, MTIME_NS);
    write(&small, "a.txt", b"another file of A's", MTIME_NS);

    // A leaves the upload after two parts; idle for 31 minutes, B takes it over and leaves it
    // in turn after one more part.
    s3.faults.fail_data_puts_after(2);
    put_tree(&src, &a).await.unwrap_err();
    s3.age_multipart_uploads(Duration::from_secs(31 * 60));
    age_open_upload_records(&a.cache.dir, Duration::from_secs(31 * 60));
    s3.faults.fail_data_puts_after(1);
    put_tree(&src, &b).await.unwrap_err();
    s3.faults.clear();
    s3.faults.for_all();
    assert_eq!(s3.open_multipart_uploads(), 1);
    assert_eq!(open_upload_records(&a.cache.dir).len(), 1);
    assert_eq!(open_upload_records(&b.cache.dir).len(), 1);

    // A's time to resume it (10 minutes) has passed, but B wrote to it a moment ago: A leaves
    // it alone.
    let r = put_tree(&small, &a).await.unwrap();
    assert_eq!(r.upload.aborted_leftover_uploads, 0, "{:?}", r.upload);
    assert_eq!(s3.open_multipart_uploads(), 1, "A aborted B's upload");
    assert_eq!(
        open_upload_records(&a.cache.dir).len(),
        1,
        "A looks again later"
    );

    // `cleanup --older-than 10m` from a third machine: started 31 minutes ago, but written
    // to since.
    let third = transfer(&machine("c-cache")).await;
    for dry_run in [true, false] {
        let spec = CleanupSpec {
            older_than: Duration::from_secs(600),
        };
        let r = cleanup::run(
            spec,
            third.clone().dry_run_if(dry_run),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.listed, r.kept_written_lately, r.aborted.len()),
            (1, 1, 0),
            "dry run {dry_run}: {r:?}"
        );
    }
    assert_eq!(s3.open_multipart_uploads(), 1);

    // Idle for 31 minutes: A's next run aborts its leftover, and B's next run, finding it
    // gone, uploads the file whole in an upload of its own.
    s3.age_multipart_uploads(Duration::from_secs(31 * 60));
    let r = put_tree(&small, &a).await.unwrap();
    assert_eq!(r.upload.aborted_leftover_uploads, 1, "{:?}", r.upload);
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&a.cache.dir).is_empty());
    let r = put_tree(&src, &b).await.unwrap();
    assert_eq!(
        (r.upload.uploaded_objects, r.upload.resumed_uploads),
        (1, 0),
        "{:?}",
        r.upload
    );
    assert!(open_upload_records(&b.cache.dir).is_empty());
    let key = format!("p/Data/{}.xxh128", ContentHash::of(&data));
    assert!(
        s3.read_object(&key).unwrap() == data,
        "the object is not the file"
    );
}

/// One "machine" of the tests of uploads left and taken over: its own cache dir, one try per
/// request and one part in flight, so that a fault stops its upload after a known part.
fn machine_settings(s3: &TestS3, cache: &Path) -> Settings {
    let mut s = settings(s3, "p", cache);
    s.s3.retry_attempts = 1;
    s.transfer.max_parts_in_flight = 1;
    s
}

/// 23 MiB: five parts of 5 MiB (the last 3 MiB) with [`settings`] and [`fs_settings`].
const RESUMED_LEN: u64 = 23 * MIB;

/// Part `n` (1-based) of `data` in 5 MiB parts.
fn part_of(data: &[u8], n: u64) -> bytes::Bytes {
    let start = ((n - 1) * 5 * MIB) as usize;
    let end = (n * 5 * MIB).min(data.len() as u64) as usize;
    bytes::Bytes::copy_from_slice(&data[start..end])
}

fn open_upload_records(cache: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(cache.join("open-uploads"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Moves the times in the open-upload records of `cache` (`started_at`, `kept_at`, and the
/// file's modification time, a crashed run's last heartbeat) `by` into the past, as if their
/// runs had stopped that much earlier.
fn age_open_upload_records(cache: &Path, by: Duration) {
    for e in std::fs::read_dir(cache.join("open-uploads"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let modified = filetime::FileTime::from_last_modification_time(&e.metadata().unwrap());
        let mut r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        for field in ["started_at", "kept_at"] {
            if let Some(at) = r[field].as_u64() {
                r[field] = (at - by.as_secs()).into();
            }
        }
        std::fs::write(e.path(), serde_json::to_vec(&r).unwrap()).unwrap();
        let aged = modified.unix_seconds() - by.as_secs() as i64;
        filetime::set_file_mtime(e.path(), filetime::FileTime::from_unix_time(aged, 0)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_an_earlier_run_left_open_is_resumed_keeping_only_proven_parts() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(&s3, "p", &t.path().join("cache"));
    check_resume(&s, t.path(), "s3").await;
    let store = t.path().join("store");
    check_resume(
        &fs_settings(&store, &t.path().join("cache-fs")),
        t.path(),
        "fs",
    )
    .await;
}

/// An earlier run left the multipart upload of a file open (as a crash does), with parts 1–3
/// in the store, part 3 holding other bytes of its size: the next put resumes it, keeps parts
/// 1 and 2, sends parts 3–5; the object is whole, and nothing stays open or recorded.
async fn check_resume(s: &Settings, dir: &Path, name: &str) {
    let src = dir.join(format!("src-{name}"));
    let data = content(RESUMED_LEN, 42);
    write(&src, "big.bin", &data, MTIME_NS);
    let tr = transfer(s).await;
    let key = attache::store::layout::data_key(tr.store.root_prefix(), ContentHash::of(&data));
    let id = tr.store.create_multipart(&key).await.unwrap();
    for n in 1..=2 {
        tr.store
            .upload_part(&key, &id, n as i32, part_of(&data, n), None)
            .await
            .unwrap();
    }
    let mut other = part_of(&data, 3).to_vec();
    other[1000] ^= 0xff;
    tr.store
        .upload_part(&key, &id, 3, other.into(), None)
        .await
        .unwrap();
    let (identity, url) = (tr.store.identity(), tr.store.describe());
    drop(tr.open_uploads.record(&identity, &url, &key, &id).unwrap());

    let r = put_tree(&src, s).await.unwrap();
    assert_eq!(
        (r.upload.resumed_uploads, r.upload.resumed_bytes),
        (1, 10 * MIB),
        "{name}: parts 1 and 2 kept, part 3 (other bytes) sent again: {:?}",
        r.upload
    );
    assert_eq!(r.upload.aborted_leftover_uploads, 0, "{name}");
    let m = r.hash.roots[0].manifest.clone();
    let dest = dir.join(format!("dest-{name}"));
    get_tree(&m, &dest, s).await.unwrap();
    assert!(
        std::fs::read(dest.join("big.bin")).unwrap() == data,
        "{name}: the object is not the file"
    );
    assert!(
        tr.store
            .list_multipart_uploads("")
            .await
            .unwrap()
            .is_empty(),
        "{name}: an upload stayed open"
    );
    assert!(open_upload_records(&s.cache.dir).is_empty(), "{name}");
}

/// A store failure during a multipart upload keeps the upload open and recorded: a later run
/// that uploads the file resumes it, one that does not leaves it alone, `cleanup` aborts it,
/// and with `transfer.resume_for = 0` the failure aborts it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_the_store_failed_is_kept_open_and_the_next_run_resumes_it() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let mut s = settings(&s3, "p", &cache);
    s.s3.retry_attempts = 1;
    s.transfer.max_parts_in_flight = 1;
    let (src, other, small) = (
        t.path().join("src"),
        t.path().join("other"),
        t.path().join("small"),
    );
    let data = content(RESUMED_LEN, 7);
    write(&src, "big.bin", &data, MTIME_NS);
    write(&other, "big2.bin", &content(RESUMED_LEN, 8), MTIME_NS);
    write(&small, "a.txt", b"a small file", MTIME_NS);
    let part_puts = || {
        s3.stats
            .requests_matching(|r| r.method == "PUT" && r.query.contains("partNumber"))
    };
    // Every UploadPart after the first two fails, whatever the file.
    let fail_after_two_parts = || s3.faults.fail_data_puts_after(2);

    // resume_for = 0: the failure aborts the upload, as before there was resuming.
    fail_after_two_parts();
    let mut abort_at_once = s.clone();
    abort_at_once.transfer.resume_for = attache::config::Duration::secs(0);
    let err = put_tree(&src, &abort_at_once).await.unwrap_err();
    assert!(err.to_string().contains("UploadPart"), "{err}");
    assert_eq!(s3.open_multipart_uploads(), 0, "resume_for = 0 aborts");
    assert!(open_upload_records(&cache).is_empty());

    // By default the failure keeps the upload, recorded as kept.
    fail_after_two_parts();
    put_tree(&src, &s).await.unwrap_err();
    assert_eq!(s3.open_multipart_uploads(), 1, "kept open to be resumed");
    let records = open_upload_records(&cache);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0]["kept_at"].is_u64(), "{records:?}");
    s3.faults.clear();
    s3.faults.for_all();

    // A run that does not upload that file leaves it alone.
    let r = put_tree(&small, &s).await.unwrap();
    assert_eq!(r.upload.aborted_leftover_uploads, 0);
    assert_eq!(s3.open_multipart_uploads(), 1, "another run aborted it");

    // The next run that uploads it sends only what the store lacks.
    let before = part_puts();
    let r = put_tree(&src, &s).await.unwrap();
    assert_resumed_after_two_parts(&s3, &r, part_puts() - before, &s, &data);

    // `cleanup` aborts a kept upload: the user asked for it.
    fail_after_two_parts();
    put_tree(&other, &s).await.unwrap_err();
    s3.faults.clear();
    s3.faults.for_all();
    assert_eq!(s3.open_multipart_uploads(), 1);
    let spec = attache::jobs::cleanup::CleanupSpec {
        older_than: Duration::from_secs(24 * 3600),
    };
    let r = attache::jobs::cleanup::run(spec, transfer(&s).await, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.recorded_aborted, 1, "{r:?}");
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&cache).is_empty());
}

/// Another machine stores the same large file first and the store drops this run's upload of
/// that key (Garage drops every other upload of a key when one completes): the object counts
/// as present, not as an error. An upload dropped with no object in its place (aborted from
/// elsewhere) fails naming that, and leaves no record; a resumed one is uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_the_store_dropped_is_present_when_another_stored_the_object() {
    use attache::store::PutOptions;
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let data = content(RESUMED_LEN, 9);
    write(&src, "big.bin", &data, MTIME_NS);
    let cache = t.path().join("cache");
    let mut s = settings(&s3, "p", &cache);
    s.bandwidth.upload = Rate(5 * MIB);
    s.transfer.max_parts_in_flight = 1;
    s.cache.hash_cache = false;
    let key = format!("p/Data/{}.xxh128", ContentHash::of(&data));
    let other = transfer(&settings(&s3, "p", &t.path().join("cache-other"))).await;
    let parts = |r: &common::s3::RequestInfo| r.query.contains("partNumber");

    let (_cancel, job) = spawn_put(&src, &s).await;
    wait_for_requests(&s3, 1, "a part", parts).await;
    other
        .store
        .put(
            &key,
            bytes::Bytes::from(data.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let id = s3.multipart_upload_ids()[0].clone();
    other.store.abort_multipart(&key, &id).await.unwrap();
    let r = job.await.unwrap().unwrap();
    assert_eq!(
        (r.upload.uploaded_objects, r.upload.present_objects),
        (0, 1),
        "{:?}",
        r.upload
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&cache).is_empty());
    assert!(s3.read_object(&key).unwrap() == data);

    other
        .store
        .delete_many(std::slice::from_ref(&key))
        .await
        .unwrap();
    // A put whose upload another machine aborts once a part landed.
    let aborted_midway = || async {
        let before = s3.stats.requests_matching(parts);
        let (_cancel, job) = spawn_put(&src, &s).await;
        wait_for_requests(&s3, before + 1, "a part", parts).await;
        let id = s3.multipart_upload_ids()[0].clone();
        other.store.abort_multipart(&key, &id).await.unwrap();
        (
            job.await.unwrap(),
            s3.stats.requests_matching(parts) - before,
        )
    };
    let err = aborted_midway().await.0.unwrap_err();
    assert!(
        err.to_string().contains("the store dropped the upload"),
        "{err}"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&cache).is_empty(), "nothing to resume");

    // A resumed upload aborted from elsewhere part-way (by the machine that left it, a
    // cleanup, a lifecycle rule): the file goes up again, whole, in an upload of its own.
    s3.faults.fail_data_puts_after(2);
    put_tree(&src, &s).await.unwrap_err();
    s3.faults.clear();
    s3.faults.for_all();
    let (r, part_puts) = aborted_midway().await;
    let r = r.unwrap();
    assert_eq!(
        (r.upload.uploaded_objects, r.upload.resumed_uploads),
        (1, 0),
        "{:?}",
        r.upload
    );
    assert!(
        part_puts > 5,
        "one part in the resumed upload, then all five again"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(open_upload_records(&cache).is_empty());
    assert!(s3.read_object(&key).unwrap() == data);
}

/// With `cache.content_size` set, a download keeps a copy of each object it fetched, and the
/// next download on the machine (another session directory) copies them from there without a
/// request; a damaged copy is never placed (it is dropped, the object fetched and cached
/// again), and the cache stays within its size, the least recently used going first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_content_cache_serves_the_next_download_and_never_places_a_damaged_copy() {
    let s3 = TestS3::start().await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_files(&src, 10, |i| {
        (format!("tex/t{i}.exr"), content(10_000 + i, i))
    });
    let big = content(12 * MIB, 99);
    write(&src, "cache/sim.bgeo", &big, MTIME_NS);
    let mut s = settings(&s3, "p", &t.path().join("cache"));
    s.cache.content_size = ByteSize(64 * MIB);
    let m = put_tree(&src, &s).await.unwrap().hash.roots[0]
        .manifest
        .clone();
    let total: u64 = (0..10).map(|i| 10_000 + i).sum::<u64>() + 12 * MIB;
    let data_gets = || {
        s3.stats
            .requests_matching(|r| r.method == "GET" && r.key.contains("/Data/"))
    };
    let content_dir = s.cache.content_dir();
    let blobs = || common::files_under(&content_dir);
    let same_tree = |dest: &Path| {
        for f in common::files_under(&src) {
            let got = dest.join(f.strip_prefix(&src).unwrap());
            assert!(
                std::fs::read(&got).unwrap() == std::fs::read(&f).unwrap(),
                "{got:?}"
            );
            assert_eq!(
                std::fs::metadata(&got).unwrap().modified().unwrap(),
                std::fs::metadata(&f).unwrap().modified().unwrap(),
                "{got:?}"
            );
        }
    };

    let first = get_tree(&m, &t.path().join("session1"), &s).await.unwrap();
    assert_eq!(
        (first.download.objects, first.download.content_cache_files),
        (11, 0)
    );
    assert_eq!(blobs().len(), 11, "every object fetched is kept");

    let before = data_gets();
    let dest = t.path().join("session2");
    let second = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(data_gets() - before, 0, "no object fetched again");
    let d = &second.download;
    assert_eq!(
        (
            d.objects,
            d.downloaded_bytes,
            d.content_cache_files,
            d.content_cache_bytes
        ),
        (0, 0, 11, total)
    );
    same_tree(&dest);

    // A dry run says what it would take from the cache.
    let dry = get::run(
        GetSpec {
            for_caller: None,
            replaceable: None,
            record: None,
            manifest: m.clone(),
            dest: t.path().join("dry"),
            cache_dir: None,
            conflict: Default::default(),
            check_space: false,
        },
        transfer(&s).await.dry_run_if(true),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (dry.download.objects, dry.download.content_cache_files),
        (0, 11)
    );

    // A copy damaged on disk (same size, other bytes) is not placed: fetched instead.
    let hash = ContentHash::of(&big);
    let blob = blobs()
        .into_iter()
        .find(|b| b.ends_with(hash.to_hex()))
        .unwrap();
    let mut damaged = big.clone();
    damaged[MIB as usize] ^= 1;
    std::fs::write(&blob, &damaged).unwrap();
    let before = data_gets();
    let dest = t.path().join("session3");
    let third = get_tree(&m, &dest, &s).await.unwrap();
    assert_eq!(
        (third.download.objects, third.download.content_cache_files),
        (1, 10)
    );
    assert!(data_gets() > before);
    same_tree(&dest);
    assert!(std::fs::read(&blob).unwrap() == big, "cached again, whole");

    // A run that adds to the cache brings it back within its size (which of them go is the
    // unit tests' business).
    s.cache.content_size = ByteSize(12 * MIB + 50_000);
    let t0 = ContentHash::of(&content(10_000, 0)).to_hex();
    std::fs::remove_file(blobs().into_iter().find(|b| b.ends_with(&t0)).unwrap()).unwrap();
    let fourth = get_tree(&m, &t.path().join("session4"), &s).await.unwrap();
    assert_eq!(fourth.download.objects, 1);
    let kept: u64 = blobs()
        .iter()
        .map(|b| std::fs::metadata(b).unwrap().len())
        .sum();
    assert!(kept <= 12 * MIB + 50_000, "{kept}");
    same_tree(&t.path().join("session4"));
}
