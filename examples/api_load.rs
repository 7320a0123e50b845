//! Load generator for the daemon's API (used by `bench/daemon_load.py`): N concurrent clients
//! each sending `GET PATH` over the daemon's Unix socket, one new connection per request (as
//! `attache status` does), every `--interval-ms` (0 = back to back), until the job the path
//! names reaches a final state or `--max-seconds` pass.
//!
//! ```text
//! cargo run --release --example api_load -- --socket S --path /v1/jobs/ID [--clients 400]
//!     [--interval-ms 250] [--max-seconds 120]
//! ```
//! Prints one JSON line: requests, errors, seconds, and latency p50/p90/p99/max in ms.
//! Compiled rather than Python so the generator's own CPU and event loop stay out of the
//! latencies it measures (the machine has two vCPUs, shared with the transfer under test).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

struct Args {
    socket: String,
    path: String,
    clients: usize,
    interval: Duration,
    max: Duration,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        socket: String::new(),
        path: String::new(),
        clients: 400,
        interval: Duration::from_millis(250),
        max: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--socket" => a.socket = value,
            "--path" => a.path = value,
            "--clients" => a.clients = value.parse()?,
            "--interval-ms" => a.interval = Duration::from_millis(value.parse()?),
            "--max-seconds" => a.max = Duration::from_secs_f64(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.socket.is_empty() || a.path.is_empty() {
        bail!("usage: api_load --socket S --path /v1/jobs/ID [--clients N] [--interval-ms MS]");
    }
    Ok(a)
}

/// One request on a fresh connection; returns the body.
async fn get(socket: &str, path: &str) -> anyhow::Result<bytes::Bytes> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "attache")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

fn finished(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
        .is_some_and(|s| matches!(s.as_str(), "succeeded" | "failed" | "cancelled"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Arc::new(parse()?);
    let done = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.clients {
        let (a, done, errors) = (a.clone(), done.clone(), errors.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            // Spread the clients over one interval so they do not all fire at once.
            let offset = a.interval.mul_f64(i as f64 / a.clients as f64);
            tokio::time::sleep(offset).await;
            let mut next = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < a.max {
                let t0 = Instant::now();
                match get(&a.socket, &a.path).await {
                    Ok(body) => {
                        lat.push(t0.elapsed());
                        if finished(&body) {
                            done.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += a.interval;
                tokio::time::sleep_until(next.max(Instant::now()).into()).await;
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r?);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients, "interval_ms": a.interval.as_millis() as u64,
            "requests": all.len(), "errors": errors.load(Ordering::Relaxed), "seconds": secs,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        })
    );
    Ok(())
}
