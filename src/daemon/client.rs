//! The CLI side of the daemon API: submit a job and follow it with the same progress bar and
//! result as a local run; list, show and cancel jobs.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio_util::io::StreamReader;

use crate::config::Settings;
use crate::jobs::Cancelled;
use crate::jobs::spec::JobSpec;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the attache daemon at {socket}: {message}. Start it with `attache daemon` (or `systemctl start attache`), or check daemon.socket; a transfer also runs without --daemon"
    )]
    Connect { socket: String, message: String },
    #[error("daemon: {0}")]
    Api(String),
    #[error("job {id} {state}: {message}")]
    JobFailed {
        id: String,
        state: String,
        message: String,
    },
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

async fn connect(socket: &Path) -> Result<Conn, ClientError> {
    let cerr = |e: &dyn std::fmt::Display| ClientError::Connect {
        socket: socket.display().to_string(),
        message: e.to_string(),
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| cerr(&e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| cerr(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender })
}

impl Conn {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "attache")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request");
        self.sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Api(e.to_string()))
    }

    /// A request whose whole JSON reply is wanted; a 4xx/5xx becomes an error with its message.
    async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Api(e.to_string()))?
            .to_bytes();
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Api(
                value["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| status.to_string()),
            ))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Submits `spec`, shows its progress, cancels it on Ctrl-C, and returns its result.
pub fn run_job(settings: &Settings, spec: &JobSpec) -> anyhow::Result<serde_json::Value> {
    let socket = settings.daemon.socket.clone();
    let body = serde_json::to_vec(spec)?;
    runtime()?.block_on(async move {
        let mut conn = connect(&socket).await?;
        let created = conn.json(Method::POST, "/v1/jobs", Some(body)).await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        tracing::info!(job = %id, "submitted to the daemon");
        let last = follow(settings, &id, OnInterrupt::CancelTheJob).await?;
        match last["state"].as_str() {
            Some("succeeded") => Ok(last["result"].clone()),
            Some("cancelled") => Err(anyhow::Error::new(Cancelled)),
            state => Err(ClientError::JobFailed {
                id,
                state: state.unwrap_or("ended").to_string(),
                message: last["error"]
                    .as_str()
                    .unwrap_or("the event stream ended early")
                    .to_string(),
            }
            .into()),
        }
    })
}

/// Follows a job the daemon already runs (`attache status ID --follow`) with the progress
/// display until it ends; returns its last record. Ctrl-C stops following, not the job.
pub fn watch_job(settings: &Settings, id: &str) -> anyhow::Result<serde_json::Value> {
    runtime()?.block_on(follow(settings, id, OnInterrupt::StopFollowing))
}

/// What Ctrl-C (or SIGTERM) does while a job is followed.
#[derive(PartialEq)]
enum OnInterrupt {
    /// The command started the job: cancel it (the daemon cleans up), as a local run does.
    CancelTheJob,
    /// Someone else's job: leave it running.
    StopFollowing,
}

/// Shows a job's progress from its event stream until it ends; returns the last record.
async fn follow(
    settings: &Settings,
    id: &str,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<serde_json::Value> {
    let socket = &settings.daemon.socket;
    let progress = Arc::new(Progress::default());
    let _bar = crate::cli::progress_bar::Bar::start("daemon job", progress.clone(), &settings.log);
    let mut events = connect(socket).await?;
    let resp = events
        .send(Method::GET, &format!("/v1/jobs/{id}/events"), None)
        .await?;
    if !resp.status().is_success() {
        return Err(ClientError::Api(format!("no job {id} (HTTP {})", resp.status())).into());
    }
    let body = resp.into_body().into_data_stream().map_err_io();
    let mut lines = StreamReader::new(body).lines();
    let mut last = serde_json::Value::Null;
    let mut cancelled = false;
    let mut said_queued = false;
    let mut interrupts = crate::cli::Interrupts::new()?;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    last = serde_json::from_str(&l).unwrap_or(serde_json::Value::Null);
                    if last["state"] == "queued" && !said_queued {
                        said_queued = true;
                        eprintln!(
                            "job {id} is queued: the daemon runs daemon.max_running_jobs jobs at once"
                        );
                    }
                    mirror(&progress, &last["progress"]);
                }
                _ => break,
            },
            _ = interrupts.next(), if !cancelled => {
                if on_interrupt == OnInterrupt::StopFollowing {
                    eprintln!("stopped following job {id}; it goes on in the daemon");
                    return Err(anyhow::Error::new(Cancelled));
                }
                cancelled = true;
                eprintln!("cancelling job {id}…");
                let mut c = connect(socket).await?;
                c.json(Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
            }
        }
    }
    Ok(last)
}

/// Copies the daemon's progress numbers into the local counters the bar reads.
fn mirror(local: &Progress, remote: &serde_json::Value) {
    let get = |k: &str| remote[k].as_u64().unwrap_or(0);
    let now = local.snapshot();
    local.add_total(
        get("files_total").saturating_sub(now.files_total),
        get("bytes_total").saturating_sub(now.bytes_total),
    );
    local.add_files(get("files_done").saturating_sub(now.files_done));
    local.add_bytes(get("bytes_done").saturating_sub(now.bytes_done));
}

trait MapErrIo {
    type Out;
    fn map_err_io(self) -> Self::Out;
}

impl<S> MapErrIo for S
where
    S: futures::Stream<Item = Result<Bytes, hyper::Error>>,
{
    type Out = futures::stream::MapErr<S, fn(hyper::Error) -> std::io::Error>;
    fn map_err_io(self) -> Self::Out {
        futures::TryStreamExt::map_err(self, std::io::Error::other)
    }
}

/// `GET` or `DELETE` on the API, returning the JSON reply.
pub fn call(settings: &Settings, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
    call_with(settings, method, path, None)
}

/// A request with an optional JSON body, returning the JSON reply.
pub fn call_with(
    settings: &Settings,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let socket = settings.daemon.socket.clone();
    let path = path.to_string();
    let body = body.map(serde_json::to_vec).transpose()?;
    runtime()?.block_on(async move {
        let mut conn = connect(&socket).await?;
        Ok(conn.json(method, &path, body).await?)
    })
}

pub use hyper::Method as HttpMethod;
