//! Smoke tests for the in-process S3 test server (tests/common/s3.rs), driven by aws-sdk-s3
//! configured the way attache configures it.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use common::s3::*;
use hyper::http::Method;

fn client(s3: &TestS3, max_connections: usize, max_attempts: u32) -> aws_sdk_s3::Client {
    let pool = aws_smithy_http_client::pool::ConnectionPool::builder()
        .max_connections_per_host(max_connections)
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https()
        .unwrap();
    let http = aws_smithy_http_client::pool::Client::new(&pool).unwrap();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&s3.endpoint)
        .force_path_style(true)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            &s3.access_key,
            &s3.secret_key,
            None,
            None,
            "test",
        ))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Polls `cond` until it holds or 5 s pass (connection tasks end asynchronously).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn put(c: &aws_sdk_s3::Client, s3: &TestS3, key: &str, data: &[u8]) {
    c.put_object()
        .bucket(&s3.bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .map_err(|e| panic!("put {key}: {}", DisplayErrorContext(e)))
        .unwrap();
}

async fn get(c: &aws_sdk_s3::Client, s3: &TestS3, key: &str) -> Vec<u8> {
    let resp = c
        .get_object()
        .bucket(&s3.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| panic!("get {key}: {}", DisplayErrorContext(e)))
        .unwrap();
    resp.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_object_operations() {
    let s3 = TestS3::start().await;
    let c = client(&s3, 8, 1);
    assert!(s3.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(s3.store_url("root"), "s3://attache-test/root");
    let env = s3.env();
    assert!(env.contains(&("ATTACHE_S3__ENDPOINT_URL".into(), s3.endpoint.clone())));
    assert!(env.contains(&("ATTACHE_S3__FORCE_PATH_STYLE".into(), "true".into())));

    put(&c, &s3, "root/Data/a.xxh128", b"hello").await;
    put(&c, &s3, "root/Data/b c+d%é.xxh128", b"world!").await;
    put(&c, &s3, "other/x", b"").await;
    assert_eq!(get(&c, &s3, "root/Data/a.xxh128").await, b"hello");
    assert_eq!(get(&c, &s3, "root/Data/b c+d%é.xxh128").await, b"world!");
    assert_eq!(get(&c, &s3, "other/x").await, b"");
    assert_eq!(
        s3.object_keys(),
        ["other/x", "root/Data/a.xxh128", "root/Data/b c+d%é.xxh128"]
    );
    assert_eq!(s3.read_object("root/Data/a.xxh128").unwrap(), b"hello");

    let head = c
        .head_object()
        .bucket(&s3.bucket)
        .key("root/Data/b c+d%é.xxh128")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(6));
    let missing = c
        .head_object()
        .bucket(&s3.bucket)
        .key("root/nope")
        .send()
        .await
        .unwrap_err();
    assert!(missing.as_service_error().unwrap().is_not_found());

    // A seeded object is served like an uploaded one.
    s3.write_object("root/Data/seeded", b"seed");
    assert_eq!(get(&c, &s3, "root/Data/seeded").await, b"seed");

    let list = c
        .list_objects_v2()
        .bucket(&s3.bucket)
        .prefix("root/Data/")
        .send()
        .await
        .unwrap();
    let mut keys: Vec<_> = list.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "root/Data/a.xxh128",
            "root/Data/b c+d%é.xxh128",
            "root/Data/seeded"
        ]
    );

    c.delete_object()
        .bucket(&s3.bucket)
        .key("root/Data/a.xxh128")
        .send()
        .await
        .unwrap();
    // DeleteObjects carries a CRC32 even with WhenRequired; s3s accepts it.
    c.delete_objects()
        .bucket(&s3.bucket)
        .delete(
            Delete::builder()
                .objects(ObjectIdentifier::builder().key("other/x").build().unwrap())
                .objects(
                    ObjectIdentifier::builder()
                        .key("root/Data/seeded")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map_err(|e| panic!("{}", DisplayErrorContext(e)))
        .unwrap();
    assert_eq!(s3.object_keys(), ["root/Data/b c+d%é.xxh128"]);

    // The log decodes keys and records status and sizes.
    let log = s3.stats.log();
    let put_b = log
        .iter()
        .find(|r| r.method == "PUT" && r.key == "root/Data/b c+d%é.xxh128")
        .unwrap();
    assert_eq!(
        (put_b.status, put_b.bytes_in, put_b.bucket.as_str()),
        (200, 6, "attache-test")
    );
    let get_b = log
        .iter()
        .find(|r| r.method == "GET" && r.key == "root/Data/b c+d%é.xxh128")
        .unwrap();
    assert_eq!(
        (get_b.status, get_b.bytes_out, get_b.complete),
        (200, 6, true)
    );
    let head_missing = log.iter().find(|r| r.key == "root/nope").unwrap();
    assert_eq!(
        (head_missing.method.as_str(), head_missing.status),
        ("HEAD", 404)
    );
    assert_eq!(s3.stats.requests_of("PUT"), 3);
    assert_eq!(s3.stats.requests_of("GET"), 5); // 4 objects + ListObjectsV2
    assert_eq!(s3.stats.requests_of("HEAD"), 2);
    assert_eq!(s3.stats.requests_of("DELETE"), 1);
    assert_eq!(s3.stats.requests_of("POST"), 1); // DeleteObjects
    assert_eq!(s3.stats.requests(), 12);
    assert_eq!(
        s3.stats
            .requests_matching(|r| r.key.starts_with("root/") && r.status == 200),
        6 // PUT a, PUT b, GET a, GET b, HEAD b, GET seeded (DELETE is 204, LIST has no key)
    );
    assert!(s3.stats.total_connections() >= 1);
    assert!(log.iter().all(|r| r.fault.is_none()));

    s3.stats.reset();
    assert_eq!(s3.stats.requests(), 0);
    assert_eq!(s3.stats.total_connections(), 0);

    // After stop nothing listens on the port any more.
    let addr = s3.endpoint.trim_start_matches("http://").to_owned();
    s3.stop().await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

type SdkResult<T, E> = Result<T, aws_sdk_s3::error::SdkError<E>>;

async fn create_upload(c: &aws_sdk_s3::Client, b: &str, key: &str) -> String {
    c.create_multipart_upload()
        .bucket(b)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap()
}

async fn upload_part(
    c: &aws_sdk_s3::Client,
    b: &str,
    key: &str,
    id: &str,
    n: i32,
    data: Vec<u8>,
) -> CompletedPart {
    let up = c
        .upload_part()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap();
    CompletedPart::builder()
        .part_number(n)
        .e_tag(up.e_tag().unwrap())
        .build()
}

async fn complete_upload(
    c: &aws_sdk_s3::Client,
    b: &str,
    key: &str,
    id: &str,
    parts: Vec<CompletedPart>,
) -> SdkResult<
    aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadOutput,
    aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError,
> {
    c.complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
}

async fn abort_upload(
    c: &aws_sdk_s3::Client,
    b: &str,
    key: &str,
    id: &str,
) -> SdkResult<
    aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadOutput,
    aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError,
> {
    c.abort_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads() {
    let s3 = TestS3::start().await;
    let c = client(&s3, 4, 1);
    let b = s3.bucket.clone();

    // Completed: 5 MiB + 1 byte.
    let key = "root/Data/big";
    let part1: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let id = create_upload(&c, &b, key).await;
    assert_eq!(s3.open_multipart_uploads(), 1);
    assert_eq!(s3.multipart_upload_ids(), std::slice::from_ref(&id));
    let mut parts = Vec::new();
    for (n, data) in [(1, part1.clone()), (2, vec![7u8])] {
        parts.push(upload_part(&c, &b, key, &id, n, data).await);
    }
    assert_eq!(s3.multipart_part_files(), 2);
    let done = complete_upload(&c, &b, key, &id, parts)
        .await
        .map_err(|e| panic!("{}", DisplayErrorContext(e)))
        .unwrap();
    assert!(
        done.e_tag().unwrap().ends_with("-2\""),
        "{:?}",
        done.e_tag()
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert_eq!(s3.multipart_part_files(), 0);
    let got = get(&c, &s3, key).await;
    assert_eq!(got.len(), 5 * 1024 * 1024 + 1);
    assert_eq!(&got[..part1.len()], &part1[..]);
    assert_eq!(got[part1.len()], 7);
    let part_ops = s3.stats.requests_matching(|r| r.is_multipart_part_op());
    assert_eq!(part_ops, 3); // 2 UploadPart + Complete

    // Aborted: nothing left.
    let key = "root/Data/aborted";
    let id = create_upload(&c, &b, key).await;
    upload_part(&c, &b, key, &id, 1, vec![1u8; 1000]).await;
    assert_eq!(
        (s3.open_multipart_uploads(), s3.multipart_part_files()),
        (1, 1)
    );
    abort_upload(&c, &b, key, &id).await.unwrap();
    assert_eq!(
        (s3.open_multipart_uploads(), s3.multipart_part_files()),
        (0, 0)
    );

    // Started, not finished: counts 1.
    let key = "root/Data/dangling";
    let id = create_upload(&c, &b, key).await;
    upload_part(&c, &b, key, &id, 1, vec![1u8; 10]).await;
    assert_eq!(s3.open_multipart_uploads(), 1);
    assert_eq!(s3.multipart_upload_ids(), std::slice::from_ref(&id));
    assert_eq!(s3.object_keys(), ["root/Data/big"]);
    // ListParts gives each part's MD5 as its ETag, as S3 does (s3s-fs lists none).
    let list_parts = || c.list_parts().bucket(&b).key(key).upload_id(&id).send();
    let listed = list_parts().await.unwrap();
    let parts: Vec<_> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.size(), p.e_tag().map(str::to_string)))
        .collect();
    let md5: String = {
        use md5::Digest as _;
        md5::Md5::digest([1u8; 10])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(parts, [(Some(1), Some(10), Some(format!("\"{md5}\"")))]);
    abort_upload(&c, &b, key, &id).await.unwrap();
    // An upload that is gone: NoSuchUpload, to a part, a ListParts and an abort alike.
    let err = list_parts().await.unwrap_err();
    assert_eq!(err.code(), Some("NoSuchUpload"));
    let err = c
        .upload_part()
        .bucket(&b)
        .key(key)
        .upload_id(&id)
        .part_number(2)
        .body(vec![2u8; 10].into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchUpload"));

    // s3s-fs quirk: a failed Complete (here EntityTooSmall) unregisters the upload but leaves
    // its parts; it cannot be aborted any more (the server answers NoSuchUpload, as S3 does
    // for an upload that is gone). Real S3 keeps the upload open.
    let key = "root/Data/small-parts";
    let id = create_upload(&c, &b, key).await;
    let mut parts = Vec::new();
    for n in 1..=2 {
        parts.push(upload_part(&c, &b, key, &id, n, vec![1u8; 1024]).await);
    }
    let err = complete_upload(&c, &b, key, &id, parts).await.unwrap_err();
    assert_eq!(err.code(), Some("EntityTooSmall"));
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert_eq!(s3.multipart_part_files(), 2);
    let err = abort_upload(&c, &b, key, &id).await.unwrap_err();
    assert_eq!(err.code(), Some("NoSuchUpload"));
    assert_eq!(s3.multipart_part_files(), 2);
    assert_eq!(s3.object_keys(), ["root/Data/big"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_is_observable() {
    let s3 = TestS3::start().await;
    for i in 0..16 {
        s3.write_object(&format!("root/Data/{i}"), &[i as u8; 1000]);
    }
    // Every response waits 300 ms, so all 16 GETs are in flight together.
    s3.faults.delay_responses(Duration::from_millis(300));

    async fn get_all(c: &aws_sdk_s3::Client, s3: &TestS3) {
        let gets = (0..16).map(|i| {
            let c = c.clone();
            let bucket = s3.bucket.clone();
            tokio::spawn(async move {
                let r = c
                    .get_object()
                    .bucket(bucket)
                    .key(format!("root/Data/{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.body.collect().await.unwrap().into_bytes().len(), 1000);
            })
        });
        for g in gets.collect::<Vec<_>>() {
            g.await.unwrap();
        }
    }

    let capped = client(&s3, 4, 1);
    get_all(&capped, &s3).await;
    assert_eq!(s3.stats.requests_of("GET"), 16);
    assert_eq!(s3.stats.max_concurrent_connections(), 4);
    assert_eq!(s3.stats.total_connections(), 4);
    drop(capped);

    // Control: without a tight cap the same workload opens 16 connections.
    eventually("dropped client closed its connections", || {
        s3.stats.open_connections() == 0
    })
    .await;
    s3.stats.reset();
    let wide = client(&s3, 64, 1);
    get_all(&wide, &s3).await;
    assert_eq!(s3.stats.max_concurrent_connections(), 16);
    assert_eq!(
        s3.stats.open_connections(),
        16,
        "idle connections stay pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_and_internal_error() {
    let s3 = TestS3::start().await;
    s3.write_object("root/Data/k", b"payload");
    let c3 = client(&s3, 4, 3);
    let c1 = client(&s3, 4, 1);

    // 2 x 503 then success within 3 attempts.
    s3.faults.slow_down_next(2);
    assert_eq!(get(&c3, &s3, "root/Data/k").await, b"payload");
    let log = s3.stats.log();
    let statuses: Vec<_> = log.iter().map(|r| (r.status, r.fault)).collect();
    assert_eq!(
        statuses,
        [
            (503, Some(Fault::SlowDown)),
            (503, Some(Fault::SlowDown)),
            (200, None)
        ]
    );

    // More faults than attempts: the SDK gives up with the S3 error code.
    s3.stats.reset();
    s3.faults.slow_down_next(5);
    let err = c3
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("SlowDown"),
        "{}",
        DisplayErrorContext(&err)
    );
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 503);
    assert_eq!(s3.stats.requests(), 3);
    s3.faults.clear();

    // HEAD errors have no body; the SDK still sees the 503.
    s3.faults.slow_down_next(1);
    let err = c1
        .head_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 503);

    // A time window.
    s3.faults.slow_down_for(Duration::from_millis(300));
    let err = c1
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("SlowDown"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&c1, &s3, "root/Data/k").await, b"payload");

    // 500 InternalError: retried, or surfaced with max_attempts 1.
    s3.stats.reset();
    s3.faults.internal_error_next(1);
    assert_eq!(get(&c3, &s3, "root/Data/k").await, b"payload");
    assert_eq!(
        s3.stats
            .requests_matching(|r| r.status == 500 && r.fault == Some(Fault::InternalError)),
        1
    );
    s3.faults.internal_error_next(1);
    let err = c1
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));

    // A PUT that gets 503 is retried with its body; the server drained the failed attempt's body.
    s3.stats.reset();
    s3.faults.slow_down_next(1);
    put(&c3, &s3, "root/Data/p", &[5u8; 100_000]).await;
    let log = s3.stats.log();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].status, log[0].bytes_in), (503, 100_000));
    assert_eq!((log[1].status, log[1].bytes_in), (200, 100_000));
    assert_eq!(s3.read_object("root/Data/p").unwrap(), vec![5u8; 100_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_corrupt_bodies() {
    let s3 = TestS3::start().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    s3.write_object("root/Data/k", &data);
    let c = client(&s3, 4, 3);

    // Cut: headers fine (the SDK does not retry), reading the body fails part-way.
    s3.faults.cut_get_body_next(1);
    let resp = c
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.content_length(), Some(data.len() as i64));
    let mut body = resp.body;
    let mut received = Vec::new();
    let err = loop {
        match body.next().await {
            Some(Ok(chunk)) => received.extend_from_slice(&chunk),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(err.is_some(), "body read must fail");
    assert_eq!(received.len(), data.len() / 2);
    assert_eq!(&received[..], &data[..data.len() / 2]);
    let log = s3.stats.log();
    let r = log.last().unwrap();
    assert_eq!(
        (r.fault, r.complete, r.bytes_out),
        (Some(Fault::CutBody), false, 150_000)
    );
    eventually("the server closed the connection", || {
        s3.stats.open_connections() == 0
    })
    .await;

    // The next GET is clean.
    assert_eq!(get(&c, &s3, "root/Data/k").await, data);

    // A Range GET is cut at half the range.
    s3.faults.cut_get_body_next(1);
    let mut body = c
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .range("bytes=1000-1999")
        .send()
        .await
        .unwrap()
        .body;
    let mut received = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, &data[1000..1500]);
    let r = s3.stats.log().pop().unwrap();
    assert_eq!((r.status, r.fault), (206, Some(Fault::CutBody)));

    // Exactly half arrives even when the client is slow to read (socket buffers full when the
    // cut point is reached: the server waits for hyper to flush before closing).
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    s3.write_object("root/Data/big", &big);
    s3.faults.cut_get_body_next(1);
    let mut body = c
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/big")
        .send()
        .await
        .unwrap()
        .body;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = Vec::new();
    let err = loop {
        match body.next().await {
            Some(Ok(chunk)) => received.extend_from_slice(&chunk),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(err.is_some(), "body read must fail");
    assert_eq!(received.len(), big.len() / 2);
    assert!(received == big[..big.len() / 2]);

    // Corrupt: same length, one byte differs (in the middle).
    s3.faults.corrupt_get_body_next(1);
    let got = get(&c, &s3, "root/Data/k").await;
    assert_eq!(got.len(), data.len());
    let diffs: Vec<usize> = (0..data.len()).filter(|&i| got[i] != data[i]).collect();
    assert_eq!(diffs, [data.len() / 2]);
    assert_eq!(got[data.len() / 2], data[data.len() / 2] ^ 0xFF);
    assert_eq!(
        s3.stats.log().last().unwrap().fault,
        Some(Fault::CorruptBody)
    );
    assert_eq!(get(&c, &s3, "root/Data/k").await, data);

    // Body faults skip failed GETs (404) and are not consumed by them.
    s3.faults.corrupt_get_body_next(1);
    let err = c
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchKey"));
    assert_ne!(get(&c, &s3, "root/Data/k").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_filter() {
    let s3 = TestS3::start().await;
    s3.write_object("root/Data/k", b"data");
    s3.write_object("root/Manifests/m", b"manifest");
    let c = client(&s3, 4, 1);

    s3.faults.delay_responses(Duration::from_millis(300));
    let t = Instant::now();
    c.head_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Only GETs of Data/ keys get faults and delay.
    s3.faults
        .only_for(|m, k| m == Method::GET && k.contains("/Data/"));
    s3.faults.internal_error_next(1);
    let t = Instant::now();
    assert_eq!(get(&c, &s3, "root/Manifests/m").await, b"manifest");
    c.head_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
    let err = c
        .get_object()
        .bucket(&s3.bucket)
        .key("root/Data/k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));

    s3.faults.clear();
    let t = Instant::now();
    assert_eq!(get(&c, &s3, "root/Data/k").await, b"data");
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_length_limits_of_s3s_fs() {
    let s3 = TestS3::start().await;
    let c = client(&s3, 4, 1);
    let key = |n: usize| format!("k/{}", "x".repeat(n - 2));

    put(&c, &s3, &key(156), b"ok").await;
    let err = c
        .put_object()
        .bucket(&s3.bucket)
        .key(key(157))
        .body(ByteStream::from_static(b"no"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
    // ... yet the object file was written before the metadata failed.
    assert_eq!(s3.read_object(&key(157)).unwrap(), b"no");

    let ok = c
        .create_multipart_upload()
        .bucket(&s3.bucket)
        .key(key(123))
        .send()
        .await;
    assert!(ok.is_ok());
    let err = c
        .create_multipart_upload()
        .bucket(&s3.bucket)
        .key(key(124))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
}

/// The background variant serves a plain (non-async) test doing blocking I/O.
#[test]
fn background_server_serves_blocking_callers() {
    use std::io::{Read, Write};
    let s3 = TestS3::start_background();
    let addr = s3.endpoint.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    // Unsigned, so s3s answers 403 AccessDenied (as XML) without touching the store.
    write!(
        conn,
        "GET /attache-test/some%20key HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("<Code>AccessDenied</Code>"), "{resp}");
    let log = s3.stats.log();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].key.as_str(), log[0].status), ("some key", 403));
    drop(s3);
    // The runtime shuts down in the background; the listener goes away with it.
    let t = Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(5), "still listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}
