//! The daemon's HTTP API (JSON; see the README for curl examples):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/jobs` | start a job from a spec `{"kind": "submit", ...}` (and `"priority"`); 201 with its record |
//! | `GET /v1/jobs` | the jobs' records, oldest first (`?state=running,queued`, `?last=N`) |
//! | `GET /v1/jobs/{id}` | one job: state, progress, result or error |
//! | `GET /v1/jobs/{id}/events` | NDJSON: the record every 250 ms and at each change, until it ends |
//! | `DELETE /v1/jobs/{id}` | cancel |
//! | `POST /v1/jobs/{id}/retry` | run a failed, cancelled or interrupted job again: a new job |
//! | `PUT /v1/jobs/{id}/priority` | a queued job's priority: `{"priority": 90}` |
//! | `GET /v1/health` | liveness, version, active jobs, bandwidth in force |
//! | `GET /v1/bandwidth` | the limits in force and where they come from |
//! | `PUT /v1/bandwidth` | set limits by hand: `{"rate": "10MB/s[:DOWN]", "for": "2h"}` |
//! | `DELETE /v1/bandwidth` | back to the config's limits |
//! | `GET /metrics` | Prometheus text |
//! | `POST /v1/reload` | re-read the config (as SIGHUP) |
//!
//! A client of another user than the daemon's (not root) sees and changes its own jobs only,
//! and may not change the bandwidth or reload the config.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use super::bandwidth::parse_setting;
use super::metrics::Metrics;
use super::registry::{Job, JobState, PriorityError, Registry, RetryError};
use super::shared::Shared;
use super::slots::{DEFAULT_PRIORITY, MAX_PRIORITY};
use crate::fsutil::access::Caller;
use crate::jobs::spec::{JobError, JobSpec};

/// Re-reads the config: the keys changed that wait for the next start, or what was wrong
/// (the old config stays).
pub type Reload = dyn Fn() -> Result<Vec<&'static str>, String> + Send + Sync;

pub struct Api {
    pub registry: Arc<Registry>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    pub reload: Box<Reload>,
    /// The TCP listener's: its token is required as `Authorization: Bearer …`.
    pub tcp: Option<Arc<super::tcp_secrets::TcpSecrets>>,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/jobs", post(create).get(list))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/priority", put(set_priority))
        .route("/v1/health", get(health))
        .route(
            "/v1/bandwidth",
            get(bandwidth).put(set_bandwidth).delete(reset_bandwidth),
        )
        .route("/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see the README's API table",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(api)
}

/// Every refusal as `{"error", "field"}`, also those axum makes itself (a query that does
/// not parse, a body over the limit, a method the route does not take): a client reads one
/// shape, and its JSON parser never meets a plain-text reply.
async fn json_errors(res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(res.status().is_client_error() || res.status().is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = match (text.is_empty(), parts.headers.get(header::ALLOW)) {
        (true, Some(allow)) => format!(
            "method not allowed: this route takes {} only; see the README's API table",
            allow.to_str().unwrap_or_default()
        ),
        (true, None) => parts
            .status
            .canonical_reason()
            .unwrap_or("refused")
            .to_string(),
        (false, _) => text,
    };
    // "Failed to deserialize query string: last: invalid digit …" names `last`.
    let field = message
        .strip_prefix("Failed to deserialize query string: ")
        .and_then(|rest| rest.split_once(':'))
        .map(|(f, _)| f.to_string())
        .filter(|f| !f.contains(' '))
        .or_else(|| field_of(&message));
    let mut out = error(parts.status, &message, field.as_deref());
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "field": field})),
    )
        .into_response()
}

/// On the TCP listener every request needs the bearer token; the Unix socket is guarded by
/// its file mode instead.
async fn auth(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(tcp) = &api.tcp {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !tcp.token_matches(given) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (daemon.token_file)",
                None,
            );
        }
    }
    next.run(req).await
}

/// The field a serde error names, if it names one.
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// A job's `priority` (0 to 100), beside its spec in `POST /v1/jobs`, or alone in
/// `PUT /v1/jobs/{id}/priority`; a bad one is a 400 naming the field.
fn priority_of(value: Option<serde_json::Value>) -> Result<u8, Box<Response>> {
    let Some(v) = value else {
        return Ok(DEFAULT_PRIORITY);
    };
    match v.as_u64().filter(|p| *p <= u64::from(MAX_PRIORITY)) {
        Some(p) => Ok(p as u8),
        None => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "priority {v}: give a whole number from 0 to {MAX_PRIORITY} (default {DEFAULT_PRIORITY}; higher runs first)"
            ),
            Some("priority"),
        ))),
    }
}

/// The peer of a Unix socket request, set by [`peer`] (none on the TCP listener, whose token
/// holder is trusted as the daemon's user).
pub type PeerExt = Option<axum::Extension<Peer>>;

/// For the Unix socket's router: the peer (`SO_PEERCRED`) of each request, for the handlers
/// that start jobs.
pub async fn peer(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    req.extensions_mut().insert(peer);
    next.run(req).await
}

/// What the kernel says of a Unix socket connection's other end, when it connected: its user
/// (`SO_PEERCRED`) and groups (`SO_PEERGROUPS`).
#[derive(Clone, Debug)]
pub struct Peer(Option<(tokio::net::unix::UCred, Option<Vec<u32>>)>);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        use std::os::fd::AsRawFd;
        let io = stream.io();
        Peer(
            io.peer_cred()
                .ok()
                .map(|c| (c, crate::fsutil::access::peer_groups(io.as_raw_fd()))),
        )
    }
}

/// The client a job is started for, when it is another user than the daemon's (and not
/// root): its jobs read and write only what its user could, with the groups it had when it
/// connected.
fn caller(peer: PeerExt) -> Option<Arc<Caller>> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let (c, groups) = peer?.0.0.filter(|(c, _)| c.uid() != me && c.uid() != 0)?;
    Some(Arc::new(Caller::of_peer(c.uid(), c.gid(), groups)))
}

/// Job `id`, when the client may see and change it ([`Job::is_for`]): 404 when there is
/// none, 403 when it acts for another user.
fn job_for(api: &Api, id: &str, caller: Option<&Caller>) -> Result<Arc<Job>, Box<Response>> {
    let Some(job) = api.registry.get(id) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("no job {id}"),
            Some("id"),
        )));
    };
    if !job.is_for(caller) {
        let who = caller.map(Caller::describe).unwrap_or_default();
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            &format!(
                "job {id} acts for another user: {who} may see and change only the jobs started for it (root and the daemon's own user, all of them)"
            ),
            Some("id"),
        )));
    }
    Ok(job)
}

/// What only root, the daemon's own user or the TCP listener's token holder may do, as it
/// acts on every job of the machine: change the bandwidth, reload the config.
fn machine_wide(peer: PeerExt, what: &str) -> Result<(), Box<Response>> {
    match caller(peer) {
        None => Ok(()),
        Some(c) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            &format!(
                "{} may not {what}: it acts on every job of the machine; only root or the daemon's own user may",
                c.describe()
            ),
            None,
        ))),
    }
}

/// A job refused: 400 naming the field, 403 for what the client's user may not do, 429 for a
/// user with `daemon.max_jobs_per_user` jobs already.
fn refused_job(e: JobError) -> Response {
    match e {
        JobError::Invalid { field, message } => error(
            StatusCode::BAD_REQUEST,
            &format!("{field}: {message}"),
            Some(field),
        ),
        e @ JobError::NotTheCallers(_) => error(StatusCode::FORBIDDEN, &e.to_string(), None),
        e @ JobError::NotTheCallersStore { .. } => {
            error(StatusCode::FORBIDDEN, &e.to_string(), Some("store"))
        }
        e @ JobError::NotTheCallersGroup { .. } => {
            error(StatusCode::FORBIDDEN, &e.to_string(), Some("job_group"))
        }
        e @ JobError::TooManyJobs { .. } => {
            error(StatusCode::TOO_MANY_REQUESTS, &e.to_string(), None)
        }
        e => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

async fn create(State(api): State<Arc<Api>>, peer: PeerExt, body: Bytes) -> Response {
    // The priority is the job's, not its spec's: taken out before the spec is read.
    let (spec, priority) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            let priority = match priority_of(fields.remove("priority")) {
                Ok(p) => p,
                Err(refused) => return *refused,
            };
            (serde_json::from_value::<JobSpec>(fields.into()), priority)
        }
        Ok(other) => (serde_json::from_value::<JobSpec>(other), DEFAULT_PRIORITY),
        Err(e) => (Err(e), DEFAULT_PRIORITY),
    };
    let spec: JobSpec = match spec {
        Ok(s) => s,
        Err(e) => {
            // serde lists the spec's own fields; `priority` sits beside them.
            let also = if e.to_string().contains("unknown field") {
                " (and `priority`, 0 to 100)"
            } else {
                ""
            };
            let msg = format!("invalid job spec: {e}{also}");
            return error(
                StatusCode::BAD_REQUEST,
                &msg,
                field_of(&e.to_string()).as_deref(),
            );
        }
    };
    match api.registry.submit(spec, priority, caller(peer)) {
        Ok(record) => (StatusCode::CREATED, axum::Json(record)).into_response(),
        Err(e) => refused_job(e),
    }
}

/// `GET /v1/jobs?state=running,queued&last=20`: both optional.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    last: Option<usize>,
}

async fn list(State(api): State<Arc<Api>>, peer: PeerExt, query: Query<ListQuery>) -> Response {
    let mut states = Vec::new();
    for s in query.state.iter().flat_map(|s| s.split(',')) {
        match serde_json::from_value::<JobState>(serde_json::Value::String(s.trim().into())) {
            Ok(state) => states.push(state),
            Err(_) => {
                let message = format!(
                    "state {s:?}: expected queued, running, succeeded, failed, cancelled or interrupted (comma-separated)"
                );
                return error(StatusCode::BAD_REQUEST, &message, Some("state"));
            }
        }
    }
    let caller = caller(peer);
    axum::Json(api.registry.list(&states, query.last, caller.as_deref())).into_response()
}

async fn status(State(api): State<Arc<Api>>, Path(id): Path<String>, peer: PeerExt) -> Response {
    if let Err(refused) = job_for(&api, &id, caller(peer).as_deref()) {
        return *refused;
    }
    match api.registry.record(&id) {
        Some(record) => axum::Json(record).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no job {id}"), Some("id")),
    }
}

async fn cancel(State(api): State<Arc<Api>>, Path(id): Path<String>, peer: PeerExt) -> Response {
    if let Err(refused) = job_for(&api, &id, caller(peer).as_deref()) {
        return *refused;
    }
    match api.registry.cancel(&id) {
        Some(record) => (StatusCode::ACCEPTED, axum::Json(record)).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no job {id}"), Some("id")),
    }
}

async fn retry(State(api): State<Arc<Api>>, Path(id): Path<String>, peer: PeerExt) -> Response {
    let caller = caller(peer);
    if let Err(refused) = job_for(&api, &id, caller.as_deref()) {
        return *refused;
    }
    match api.registry.retry(&id, caller) {
        Ok(record) => (StatusCode::CREATED, axum::Json(record)).into_response(),
        Err(e @ RetryError::NoSuchJob(_)) => {
            error(StatusCode::NOT_FOUND, &e.to_string(), Some("id"))
        }
        Err(e @ (RetryError::NotRetryable { .. } | RetryError::AlreadyRetried { .. })) => {
            error(StatusCode::CONFLICT, &e.to_string(), Some("id"))
        }
        // The daemon shutting down, a spec an older version accepted and this one does not,
        // or one the retrying client's user may not run.
        Err(RetryError::Job(e)) => refused_job(e),
    }
}

/// `PUT /v1/jobs/{id}/priority` `{"priority": 90}`: a queued job's place in the queue.
async fn set_priority(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    peer: PeerExt,
    body: Bytes,
) -> Response {
    if let Err(refused) = job_for(&api, &id, caller(peer).as_deref()) {
        return *refused;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        priority: serde_json::Value,
    }
    let priority = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => match priority_of(Some(b.priority)) {
            Ok(p) => p,
            Err(refused) => return *refused,
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"priority\": N}}: {e}"),
                Some("priority"),
            );
        }
    };
    match api.registry.set_priority(&id, priority) {
        Ok(record) => axum::Json(record).into_response(),
        Err(e @ PriorityError::NoSuchJob(_)) => {
            error(StatusCode::NOT_FOUND, &e.to_string(), Some("id"))
        }
        Err(e @ PriorityError::NotQueued { .. }) => {
            error(StatusCode::CONFLICT, &e.to_string(), Some("id"))
        }
    }
}

/// One JSON record per line: now, at every state change, and every 250 ms for progress;
/// the stream ends after the final state.
async fn events(State(api): State<Arc<Api>>, Path(id): Path<String>, peer: PeerExt) -> Response {
    let job = match job_for(&api, &id, caller(peer).as_deref()) {
        Ok(job) => job,
        Err(refused) => return *refused,
    };
    let changes = job.subscribe();
    // The first record at once; then each one after the wait, so that it is as fresh as it
    // can be (taken before the wait, every record was 250 ms old when it was sent).
    let stream = futures::stream::unfold(
        (api, id, job, changes, true, false),
        |(api, id, job, mut changes, first, done)| async move {
            if done {
                return None;
            }
            if !first {
                let _ = tokio::time::timeout(Duration::from_millis(250), changes.changed()).await;
            }
            // As `GET /v1/jobs/{id}` answers it: a queued job with its place in the queue.
            let record = api.registry.record(&id).unwrap_or_else(|| job.snapshot());
            let finished = record.state.is_final();
            let mut line = serde_json::to_vec(&record).expect("records serialize");
            line.push(b'\n');
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                (api, id, job, changes, false, finished),
            ))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("static headers")
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let s = api.shared.settings();
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "jobs_active": api.registry.active(),
        "jobs_queued": api.registry.queued(),
        "bandwidth": {"upload": api.shared.bandwidth.upload.rate().to_string(), "download": api.shared.bandwidth.download.rate().to_string(), "source": api.shared.bandwidth_view().source},
        "store": s.store.url,
    }))
    .into_response()
}

async fn bandwidth(State(api): State<Arc<Api>>) -> Response {
    axum::Json(api.shared.bandwidth_view()).into_response()
}

/// `{"rate": "UP[:DOWN]", "for": DURATION}`: what `attache bwlimit RATE [--for DURATION]` sends.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBandwidth {
    rate: String,
    #[serde(default, rename = "for")]
    lasting: Option<String>,
}

async fn set_bandwidth(State(api): State<Arc<Api>>, peer: PeerExt, body: Bytes) -> Response {
    if let Err(refused) = machine_wide(peer, "change the daemon's bandwidth") {
        return *refused;
    }
    let req: SetBandwidth = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!(
                "bad request body: {e}; expected {{\"rate\": \"10MB/s\" or \"10MB/s:off\", \"for\": \"2h\" (optional)}}"
            );
            return error(StatusCode::BAD_REQUEST, &message, None);
        }
    };
    let (up, down, lasting) = match parse_setting(&req.rate, req.lasting.as_deref()) {
        Ok(setting) => setting,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.message, Some(e.field)),
    };
    api.shared.set_bandwidth(up, down, lasting);
    axum::Json(api.shared.bandwidth_view()).into_response()
}

async fn reset_bandwidth(State(api): State<Arc<Api>>, peer: PeerExt) -> Response {
    if let Err(refused) = machine_wide(peer, "change the daemon's bandwidth") {
        return *refused;
    }
    api.shared.reset_bandwidth();
    axum::Json(api.shared.bandwidth_view()).into_response()
}

async fn reload(State(api): State<Arc<Api>>, peer: PeerExt) -> Response {
    if let Err(refused) = machine_wide(peer, "reload the daemon's config") {
        return *refused;
    }
    match (api.reload)() {
        Ok(at_restart) => {
            axum::Json(json!({"reloaded": true, "at_restart": at_restart})).into_response()
        }
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("config not reloaded, the previous one stays: {e}"),
            None,
        ),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = api.metrics.render(&api.registry, &api.shared).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
