//! A standalone local S3 server for the benchmark and the scripted tests: s3s-fs 0.14.1 (the
//! same storage engine and wrapper as the integration tests' in-process server,
//! `tests/common/s3.rs`) on 127.0.0.1, with TCP_NODELAY set on every accepted connection,
//! per-operation request counting and fault injection, driven over a small control API.
//!
//! ```text
//! cargo run --release --example s3_server -- --root DIR [--port 0] [--control-port 0] [--bucket B]
//! ```
//! Prints one JSON line on stdout once it serves (`endpoint`, `control`, `bucket`, `access_key`,
//! `secret_key`, `pid`), then serves until SIGTERM or SIGINT. Objects stay under `--root`, so a
//! server stopped and started again on the same root and port behaves like a restarted endpoint.
//!
//! Control API (plain HTTP on `control`):
//! - `GET /stats`: requests by S3 operation, data-object requests (keys with `/Data/`), body
//!   bytes in and out, TCP connections (total, most at once, open now), open multipart uploads
//!   (`?multipart=false` leaves those out: counting them lists the root directory).
//! - `POST /reset`: forget the counters.
//! - `POST /buckets/{name}`: create a bucket (a directory, as s3s-fs's CreateBucket does).
//! - `POST /faults/slowdown?seconds=N`: every request gets 503 SlowDown for N seconds.
//! - `POST /faults/delay?seconds=N`: every response comes N seconds late (a store across a
//!   WAN: `0.02` is a 20 ms round trip), until cleared.
//! - `POST /faults/clear`: disarm faults.

#[path = "../tests/common/s3.rs"]
mod s3;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Parser;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Local S3 server (s3s-fs 0.14.1) with request counting, for benchmarks")]
struct Args {
    /// Directory holding the buckets (created if missing, kept on exit).
    #[arg(long)]
    root: PathBuf,
    /// S3 port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Control API port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Bucket created at start.
    #[arg(long, default_value = s3::TEST_BUCKET)]
    bucket: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.root)?;
    let server = s3::TestS3::start_at(
        &args.root,
        &format!("127.0.0.1:{}", args.port),
        &args.bucket,
    )
    .await?;
    let server = Arc::new(server);

    let app = axum::Router::new()
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/buckets/{name}", post(create_bucket))
        .route("/faults/slowdown", post(slowdown))
        .route("/faults/delay", post(delay))
        .route("/faults/clear", post(clear_faults))
        .with_state(server.clone());
    let control = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port)).await?;
    let ready = json!({
        "endpoint": server.endpoint,
        "control": format!("http://{}", control.local_addr()?),
        "bucket": server.bucket,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "pid": std::process::id(),
    });
    println!("{ready}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(control, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[derive(Deserialize)]
struct StatsQuery {
    /// `false` skips counting multipart uploads, which lists the root directory (one entry per
    /// object there): pollers that only watch the traffic pass `multipart=false`.
    multipart: Option<bool>,
}

async fn stats(State(s3): State<Arc<s3::TestS3>>, Query(q): Query<StatsQuery>) -> Json<Value> {
    let sum = s3.stats.summary();
    let (open_mpu, parts) = if q.multipart.unwrap_or(true) {
        (
            Some(s3.open_multipart_uploads()),
            Some(s3.multipart_part_files()),
        )
    } else {
        (None, None)
    };
    Json(json!({
        "requests": sum.requests,
        "operations": sum.operations,
        "data_requests": sum.data_requests,
        "bytes_in": sum.bytes_in,
        "bytes_out": sum.bytes_out,
        "connections_total": s3.stats.total_connections(),
        "connections_max": s3.stats.max_concurrent_connections(),
        "connections_open": s3.stats.open_connections(),
        "open_multipart_uploads": open_mpu,
        "multipart_part_files": parts,
    }))
}

async fn reset(State(s3): State<Arc<s3::TestS3>>) -> StatusCode {
    s3.stats.reset();
    StatusCode::NO_CONTENT
}

async fn create_bucket(
    State(s3): State<Arc<s3::TestS3>>,
    Path(name): Path<String>,
) -> (StatusCode, String) {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            format!("bad bucket name {name:?}\n"),
        );
    }
    match std::fs::create_dir_all(s3.root.join(&name)) {
        Ok(()) => (StatusCode::CREATED, String::new()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[derive(Deserialize)]
struct Seconds {
    seconds: f64,
}

async fn slowdown(State(s3): State<Arc<s3::TestS3>>, Query(q): Query<Seconds>) -> StatusCode {
    s3.faults
        .slow_down_for(Duration::from_secs_f64(q.seconds.max(0.0)));
    StatusCode::NO_CONTENT
}

async fn delay(State(s3): State<Arc<s3::TestS3>>, Query(q): Query<Seconds>) -> StatusCode {
    s3.faults
        .delay_responses(Duration::from_secs_f64(q.seconds.max(0.0)));
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(s3): State<Arc<s3::TestS3>>) -> StatusCode {
    s3.faults.clear();
    StatusCode::NO_CONTENT
}
