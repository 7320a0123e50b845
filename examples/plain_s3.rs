//! The benchmark's "plain parallel GET/PUT" reference: what the store and the connection reach
//! with no hashing and no manifest, one request per object, all objects at once.
//!
//! ```text
//! cargo run --release --example plain_s3 -- put DIR --store s3://bucket/prefix
//! cargo run --release --example plain_s3 -- put-parts DIR --store s3://bucket/prefix
//! cargo run --release --example plain_s3 -- get DIR --store s3://bucket/prefix [--out OUT]
//! ```
//! `put` reads every regular file under DIR into memory first (not timed), then PUTs
//! them all concurrently as single requests to `prefix/plain/<relative path>` and times that.
//! `put-parts` does the same, but a file of `transfer.multipart_threshold` or more goes as a
//! multipart upload of `transfer.part_size` parts, all its parts at once: the request pattern
//! attache uses, without reading, hashing or pacing (some stores, s3s-fs among them, copy
//! every part again on Complete, so multipart costs them more than one PUT). `get`
//! GETs those objects concurrently and drops the bytes (no disk writes), or with `--out OUT`
//! writes each to `OUT/<relative path>` as it streams (what any download must at least do). Prints one JSON line:
//! `seconds`, `bytes`, `gib_per_s`. S3 access comes from the attache config and its
//! `ATTACHE_S3__*` variables, through attache's own S3 store (the same SDK client settings and
//! connection pool), so the figure is the ceiling a transfer through attache can approach.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use attache::config::{LoadOptions, load};
use attache::store::{ObjectStore, PutOptions, open};
use attache::transfer::limiter::Bandwidth;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, dir, url, out) = match args.as_slice() {
        [mode, dir, flag, url] if flag == "--store" => {
            (mode.clone(), dir.clone(), url.clone(), None)
        }
        [mode, dir, flag, url, o, out] if flag == "--store" && o == "--out" => (
            mode.clone(),
            dir.clone(),
            url.clone(),
            Some(std::path::PathBuf::from(out)),
        ),
        _ => bail!("usage: plain_s3 put|put-parts|get DIR --store s3://bucket/prefix [--out DIR]"),
    };
    let settings = load(&LoadOptions::default())?.settings;
    let bandwidth = Arc::new(Bandwidth::new(&settings.bandwidth));
    let store: Arc<dyn ObjectStore> = open(&url, &settings, bandwidth)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let mut names = Vec::new();
    list_files(std::path::Path::new(&dir), "", &mut names)?;
    names.sort();
    let key = |name: &str| {
        let prefix = store.root_prefix();
        if prefix.is_empty() {
            format!("plain/{name}")
        } else {
            format!("{prefix}/plain/{name}")
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    let started;
    match mode.as_str() {
        "put" | "put-parts" => {
            let parts = (mode == "put-parts").then_some((
                settings.transfer.multipart_threshold.0,
                settings.transfer.part_size.0.max(1),
            ));
            let mut bodies = Vec::new();
            for name in &names {
                let data = std::fs::read(format!("{dir}/{name}"))
                    .with_context(|| format!("read {dir}/{name}"))?;
                bodies.push((key(name), bytes::Bytes::from(data)));
            }
            started = Instant::now();
            for (key, body) in bodies {
                let store = store.clone();
                tasks.spawn(async move {
                    let n = body.len() as u64;
                    match parts {
                        Some((threshold, part)) if n >= threshold => {
                            put_parts(&*store, &key, body, part).await?
                        }
                        _ => {
                            store.put(&key, body, &PutOptions::default()).await?;
                        }
                    }
                    anyhow::Ok(n)
                });
            }
        }
        "get" => {
            started = Instant::now();
            for name in &names {
                let store = store.clone();
                let key = key(name);
                let mut file = match &out {
                    Some(o) => {
                        let path = o.join(name);
                        std::fs::create_dir_all(path.parent().expect("under --out"))?;
                        Some(tokio::fs::File::create(path).await?)
                    }
                    None => None,
                };
                tasks.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut obj = store.get(&key, None).await?;
                    let mut n = 0u64;
                    while let Some(chunk) = obj.body.next().await {
                        let chunk = chunk?;
                        n += chunk.len() as u64;
                        if let Some(f) = &mut file {
                            f.write_all(&chunk).await?;
                        }
                    }
                    if let Some(f) = &mut file {
                        f.flush().await?;
                    }
                    anyhow::Ok(n)
                });
            }
        }
        other => bail!("unknown mode {other:?}: put or get"),
    }
    let mut total = 0u64;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "objects": names.len(), "bytes": total, "seconds": secs,
            "gib_per_s": total as f64 / secs / (1u64 << 30) as f64,
        })
    );
    Ok(())
}

/// One multipart upload of `body` in parts of `part` bytes, every part at once.
async fn put_parts(
    store: &dyn ObjectStore,
    key: &str,
    body: bytes::Bytes,
    part: u64,
) -> anyhow::Result<()> {
    let upload_id = store.create_multipart(key).await?;
    let sends = (0..(body.len() as u64).div_ceil(part)).map(|i| {
        let (start, end) = (i * part, ((i + 1) * part).min(body.len() as u64));
        let chunk = body.slice(start as usize..end as usize);
        let upload_id = &upload_id;
        async move {
            let number = i as i32 + 1;
            let etag = store
                .upload_part(key, upload_id, number, chunk, None)
                .await?;
            anyhow::Ok((number, etag))
        }
    });
    let done = match futures::future::try_join_all(sends).await {
        Ok(etags) => store
            .complete_multipart(key, &upload_id, &etags)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if done.is_err() {
        let _ = store.abort_multipart(key, &upload_id).await;
    }
    done
}

/// Relative paths (`/`-separated) of the regular files under `dir`.
fn list_files(dir: &std::path::Path, rel: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
