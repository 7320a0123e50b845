//! The CLI side of the daemon API: submit a job and follow it with the same progress bar and
//! result as a local run; list, show and cancel jobs, on this machine's socket or on another
//! machine's TCP listener (with its bearer token).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;

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
    #[error("cannot reach the attache daemon at {socket}: {message}. {advice}")]
    Connect {
        socket: String,
        message: String,
        advice: String,
    },
    #[error(
        "cannot reach the attache daemon at {url}: {message}. Check that the daemon runs there with daemon.listen set to that address, and that no firewall is in the way"
    )]
    ConnectTcp { url: String, message: String },
    #[error(
        "--daemon-url {url}: {message}. Write https://HOST:PORT (a daemon with daemon.tls_cert) or http://HOST:PORT, HOST:PORT being the daemon.listen of that machine"
    )]
    BadUrl { url: String, message: String },
    #[error("--daemon-ca {0}")]
    CaFile(super::tls::TlsFileError),
    #[error(
        "TLS with the daemon at {url}: {message}. Its certificate must be for the URL's host and signed by a CA this machine trusts or by the one given with --daemon-ca FILE (a self-signed one is given itself, and needs basicConstraints CA:FALSE); a daemon without daemon.tls_cert speaks http://"
    )]
    Tls { url: String, message: String },
    #[error(
        "--daemon-url needs the bearer token of that daemon's daemon.token_file: give a copy of it with --token-file FILE (or ATTACHE_DAEMON_TOKEN_FILE, or daemon.token_file)"
    )]
    NoToken,
    #[error("--token-file {0}")]
    TokenFile(#[from] super::token::TokenFileError),
    #[error(
        "the daemon at {url} refused the token of {token_file}: it is not the one in that daemon's daemon.token_file"
    )]
    WrongToken { url: String, token_file: String },
    #[error("daemon: {0}")]
    Api(String),
    /// The daemon answered 404: it has no such job.
    #[error("daemon: {0}")]
    NotFound(String),
    #[error("job {id} {state}: {message}")]
    JobFailed {
        id: String,
        state: String,
        message: String,
        /// Running it again as it is may succeed (its record's `retryable`).
        retryable: bool,
    },
}

impl ClientError {
    /// The daemon answered and refused the request (not: could not be reached).
    pub fn is_api(&self) -> bool {
        matches!(self, ClientError::Api(_) | ClientError::NotFound(_))
    }

    /// The daemon answered that it has no such job.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound(_))
    }
}

/// Where the daemon is: this machine's Unix socket, or another machine's TCP listener (with
/// its bearer token, over TLS for `https://`), for `jobs`, `status`, `cancel`, `retry`,
/// `bwlimit` and `doctor` with `--daemon-url`.
#[derive(Clone)]
pub enum DaemonAddress {
    Socket(PathBuf),
    Tcp {
        /// As given, for messages: `https://render042:7070`.
        url: String,
        /// `host:port`, connected to and sent as `Host`.
        authority: String,
        token: String,
        token_file: PathBuf,
        /// For `https://`: what the client trusts, and the name the certificate must have.
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    },
}

impl std::fmt::Debug for DaemonAddress {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DaemonAddress({})", self.describe())
    }
}

/// The system service's socket (packaging/attache.service), and the default where no
/// `XDG_RUNTIME_DIR` is set.
const SYSTEM_SOCKET: &str = "/run/attache/attache.sock";

const START_ADVICE: &str = "Start it with `attache daemon` (or `systemctl start attache`), or check daemon.socket; a transfer also runs without --daemon";

/// What to do when the socket cannot be connected to: start the daemon, or, when it is
/// there but refused, join the group it is shared with.
fn connect_advice(socket: &Path, e: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return START_ADVICE.into();
    }
    // The socket, or the directory that keeps others out of it.
    let guarded = std::fs::metadata(socket)
        .or_else(|_| std::fs::metadata(socket.parent().unwrap_or(socket)))
        .ok();
    let me = crate::fsutil::running_user();
    match guarded {
        // Shared with a group (daemon.socket_group): the socket 0660, its directory 0750.
        Some(m) if m.mode() & 0o050 != 0 => {
            let group = crate::fsutil::group::group_name(m.gid())
                .unwrap_or_else(|| format!("gid {}", m.gid()));
            format!(
                "The daemon is there, shared with its owner and group {group} only (daemon.socket_group), and attache runs as {me}: add that user to group {group} (then log in again), or run as the daemon's user"
            )
        }
        Some(m) => {
            let owner = crate::fsutil::user_name(m.uid())
                .map_or_else(|| format!("uid {}", m.uid()), |name| format!("user {name}"));
            format!(
                "The daemon is there, for its own user ({owner}) only, and attache runs as {me}: run as {owner}, or set daemon.socket_group in the daemon's config to a group of that user and restart the daemon"
            )
        }
        None => format!(
            "attache runs as {me}, which may not open it: check the socket's owner, group and mode"
        ),
    }
}

impl DaemonAddress {
    /// Where it is, for messages: the socket's path or the URL.
    pub fn describe(&self) -> String {
        match self {
            DaemonAddress::Socket(p) => p.display().to_string(),
            DaemonAddress::Tcp { url, .. } => url.clone(),
        }
    }

    /// This machine's daemon, at `daemon.socket`. With that setting left to its default (in
    /// `$XDG_RUNTIME_DIR`, a login's) and no daemon there, the system service's socket when it
    /// is there: a worker's agent or job user, logged in, reaches the service as its
    /// environment-less runs do.
    pub fn local(settings: &Settings) -> DaemonAddress {
        let socket = &settings.daemon.socket;
        let system = Path::new(SYSTEM_SOCKET);
        if *socket == crate::config::DaemonSettings::default().socket
            && !socket.exists()
            && system.exists()
        {
            return DaemonAddress::Socket(system.to_path_buf());
        }
        DaemonAddress::Socket(socket.clone())
    }

    /// The daemon listening at `url` (`https://HOST:PORT`, `http://HOST:PORT` or
    /// `HOST:PORT`), with the token read from `token_file`; over `https://` trusting `ca`
    /// (else the system's roots).
    pub fn remote(
        url: &str,
        token_file: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<DaemonAddress, ClientError> {
        let parsed = parse_url(url)?;
        let token_file = token_file.ok_or(ClientError::NoToken)?;
        let token = super::token::read_token_file(token_file)?;
        let tls = match parsed.tls {
            false => None,
            true => {
                let config = super::tls::client_config(ca).map_err(ClientError::CaFile)?;
                let name =
                    ServerName::try_from(parsed.host.clone()).map_err(|_| ClientError::BadUrl {
                        url: url.to_string(),
                        message: format!("{:?} is not a host name or address", parsed.host),
                    })?;
                Some((config, name))
            }
        };
        Ok(DaemonAddress::Tcp {
            url: url.trim_end_matches('/').to_string(),
            authority: parsed.authority,
            token,
            token_file: token_file.to_path_buf(),
            tls,
        })
    }
}

/// A daemon URL taken apart.
#[derive(Debug, PartialEq)]
struct DaemonUrl {
    tls: bool,
    /// `host:port`
    authority: String,
    /// The host alone (an IPv6 address without its brackets), for the certificate's name.
    host: String,
}

/// `https://HOST:PORT`, `http://HOST:PORT` or `HOST:PORT` (plain HTTP); no path, no default
/// port.
fn parse_url(url: &str) -> Result<DaemonUrl, ClientError> {
    let bad = |message: &str| ClientError::BadUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, url),
    };
    if rest.contains("://") {
        return Err(bad("only https:// and http:// are spoken"));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("not a host and port"));
    }
    let uri: hyper::Uri = format!("http://{authority}/")
        .parse()
        .map_err(|_| bad("not a host and port"))?;
    let (Some(host), Some(_)) = (uri.host(), uri.port_u16()) else {
        return Err(bad("no port (the daemon has no default one)"));
    };
    Ok(DaemonUrl {
        tls,
        authority: authority.to_string(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    })
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// Whom it is connected to: the `Host`, the token and the messages come from it.
    at: DaemonAddress,
}

async fn connect(at: &DaemonAddress) -> Result<Conn, ClientError> {
    match at {
        DaemonAddress::Socket(socket) => {
            let cerr = |e: &dyn std::fmt::Display, advice: String| ClientError::Connect {
                socket: socket.display().to_string(),
                message: e.to_string(),
                advice,
            };
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| cerr(&e, connect_advice(socket, &e)))?;
            let sender = handshake(stream)
                .await
                .map_err(|e| cerr(&e, START_ADVICE.into()))?;
            Ok(Conn {
                sender,
                at: at.clone(),
            })
        }
        DaemonAddress::Tcp {
            url,
            authority,
            tls,
            ..
        } => {
            let cerr = |e: &dyn std::fmt::Display| ClientError::ConnectTcp {
                url: url.clone(),
                message: e.to_string(),
            };
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect(authority.as_str()),
            )
            .await
            .map_err(|_| cerr(&"no answer within 10 s"))?
            .map_err(|e| cerr(&e))?;
            // Requests are small and interactive: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let sender = match tls {
                Some((config, name)) => {
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    let tls_stream = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        connector.connect(name.clone(), stream),
                    )
                    .await
                    .map_err(|_| cerr(&"no TLS handshake within 10 s"))?
                    .map_err(|e| ClientError::Tls {
                        url: url.clone(),
                        message: tls_failure(&e),
                    })?;
                    handshake(tls_stream).await.map_err(|e| cerr(&e))?
                }
                None => handshake(stream).await.map_err(|e| cerr(&e))?,
            };
            Ok(Conn {
                sender,
                at: at.clone(),
            })
        }
    }
}

/// Why the daemon's certificate was not taken, in words: rustls's own text for some of its
/// refusals is a dump of algorithm ids.
fn tls_failure(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let rustls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(c)) = rustls else {
        return e.to_string();
    };
    match c {
        C::UnknownIssuer
        | C::BadSignature
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "its certificate is not signed by a CA this machine trusts".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "its certificate is not for the URL's host name".into()
        }
        C::Expired | C::ExpiredContext { .. } => "its certificate has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "its certificate is not valid yet (is this machine's clock right?)".into()
        }
        _ => e.to_string(),
    }
}

/// How long a connection to another machine's daemon may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Conn {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        req = match &self.at {
            DaemonAddress::Socket(_) => req.header(hyper::header::HOST, "attache"),
            DaemonAddress::Tcp {
                authority, token, ..
            } => req
                .header(hyper::header::HOST, authority.as_str())
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}")),
        };
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request");
        let resp = self.sender.send_request(req).await.map_err(|e| {
            ClientError::Api(match &self.at {
                // A TLS listener closes a connection that speaks plain HTTP to it.
                DaemonAddress::Tcp { url, tls: None, .. } => {
                    format!("{url}: {e} (a daemon with daemon.tls_cert speaks https:// only)")
                }
                _ => e.to_string(),
            })
        })?;
        if resp.status() == hyper::StatusCode::UNAUTHORIZED
            && let DaemonAddress::Tcp {
                url, token_file, ..
            } = &self.at
        {
            return Err(ClientError::WrongToken {
                url: url.clone(),
                token_file: token_file.display().to_string(),
            });
        }
        Ok(resp)
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
        let value = json_body(resp).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(status, &value))
    }
}

/// A reply's JSON body (`null` when it is not JSON).
async fn json_body(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<serde_json::Value, ClientError> {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Api(e.to_string()))?
        .to_bytes();
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The daemon's refusal, from its status and `{"error"}` reply.
fn refusal(status: hyper::StatusCode, reply: &serde_json::Value) -> ClientError {
    let message = reply["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    match status {
        hyper::StatusCode::NOT_FOUND => ClientError::NotFound(message),
        _ => ClientError::Api(message),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Submits `spec` to this machine's daemon, shows its progress, cancels it on Ctrl-C, and
/// returns its result.
pub fn run_job(
    settings: &Settings,
    spec: &JobSpec,
    priority: Option<u8>,
) -> anyhow::Result<serde_json::Value> {
    run_job_at(&DaemonAddress::local(settings), settings, spec, priority)
}

/// [`run_job`] with the daemon at `at`.
pub fn run_job_at(
    at: &DaemonAddress,
    settings: &Settings,
    spec: &JobSpec,
    priority: Option<u8>,
) -> anyhow::Result<serde_json::Value> {
    let at = at.clone();
    let body = job_body(spec, priority)?;
    runtime()?.block_on(async move {
        let mut conn = connect(&at).await?;
        let created = conn.json(Method::POST, "/v1/jobs", Some(body)).await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        tracing::info!(job = %id, "submitted to the daemon");
        let last = follow(&at, settings, &id, OnInterrupt::CancelTheJob).await?;
        match last["state"].as_str() {
            Some("succeeded") => Ok(last["result"].clone()),
            Some("cancelled") => Err(anyhow::Error::new(Cancelled)),
            // The stream ended before the job did: the daemon went away (a crash, a kill).
            Some("queued" | "running") | None => Err(ClientError::JobFailed {
                message: format!(
                    "the daemon stopped answering before the job ended (a crash or a kill?); once it is back, `attache status {id}` says what became of it and `attache retry {id}` runs it again"
                ),
                id,
                state: "was cut off".into(),
                retryable: true,
            }
            .into()),
            Some(state) => Err(ClientError::JobFailed {
                id,
                state: state.to_string(),
                message: last["error"].as_str().unwrap_or_default().to_string(),
                retryable: last["retryable"].as_bool().unwrap_or(false),
            }
            .into()),
        }
    })
}

/// Starts `spec` in this machine's daemon and returns its record at once, without following
/// it (`--detach`).
pub fn start_job(
    settings: &Settings,
    spec: &JobSpec,
    priority: Option<u8>,
) -> anyhow::Result<serde_json::Value> {
    let at = DaemonAddress::local(settings);
    let body = job_body(spec, priority)?;
    runtime()?.block_on(async move {
        let mut conn = connect(&at).await?;
        Ok(conn.json(Method::POST, "/v1/jobs", Some(body)).await?)
    })
}

/// The body of `POST /v1/jobs`: the spec, and the priority if given.
fn job_body(spec: &JobSpec, priority: Option<u8>) -> anyhow::Result<Vec<u8>> {
    let mut body = serde_json::to_value(spec)?;
    if let Some(p) = priority {
        body["priority"] = p.into();
    }
    Ok(serde_json::to_vec(&body)?)
}

/// Follows a job the daemon already runs (`attache status ID --follow`) with the progress
/// display until it ends; returns its last record. Ctrl-C stops following, not the job.
pub fn watch_job(
    at: &DaemonAddress,
    settings: &Settings,
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    runtime()?.block_on(follow(at, settings, id, OnInterrupt::StopFollowing))
}

/// What Ctrl-C (or SIGTERM) does while a job is followed.
#[derive(PartialEq)]
enum OnInterrupt {
    /// The command started the job: cancel it (the daemon cleans up), as a local run does.
    CancelTheJob,
    /// Someone else's job: leave it running.
    StopFollowing,
}

/// Ctrl-C while following a job someone else started: this command stops (exit 130), the
/// job does not.
#[derive(Debug, thiserror::Error)]
#[error("stopped following job {0}; it goes on in the daemon")]
pub struct StoppedFollowing(pub String);

/// Shows a job's progress from its event stream until it ends; returns the last record.
async fn follow(
    at: &DaemonAddress,
    settings: &Settings,
    id: &str,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<serde_json::Value> {
    let progress = Arc::new(Progress::default());
    let _bar = crate::cli::progress_bar::Bar::start("daemon job", progress.clone(), &settings.log);
    let mut events = connect(at).await?;
    let resp = events
        .send(Method::GET, &format!("/v1/jobs/{id}/events"), None)
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(refusal(status, &json_body(resp).await?).into());
    }
    let body = resp.into_body().into_data_stream().map_err_io();
    let mut lines = StreamReader::new(body).lines();
    let mut last = serde_json::Value::Null;
    let mut cancelled = false;
    let mut said_queued = false;
    let mut first = true;
    let mut warned = 0;
    let mut interrupts = crate::cli::Interrupts::new()?;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    last = serde_json::from_str(&l).unwrap_or(serde_json::Value::Null);
                    if last["state"] == "queued" && !said_queued {
                        said_queued = true;
                        crate::say!(
                            "job {id} is queued: the daemon runs daemon.max_running_jobs jobs at once"
                        );
                    }
                    mirror(&progress, &last["progress"], first);
                    first = false;
                    warned = warn_of(&last, warned);
                }
                _ => break,
            },
            _ = interrupts.next(), if !cancelled => {
                if on_interrupt == OnInterrupt::StopFollowing {
                    return Err(StoppedFollowing(id.to_string()).into());
                }
                cancelled = true;
                crate::say!("cancelling job {id}…");
                let mut c = connect(at).await?;
                c.json(Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
            }
        }
    }
    Ok(last)
}

/// Logs the job's warnings after the first `said`, as a local run logs its own (in the task's
/// log, in the log's format); returns how many are said now.
fn warn_of(record: &serde_json::Value, said: usize) -> usize {
    let warnings = record["warnings"].as_array().map_or(&[][..], Vec::as_slice);
    for w in warnings.iter().skip(said) {
        tracing::warn!("{}", w.as_str().unwrap_or_default());
    }
    warnings.len().max(said)
}

/// Copies the daemon's progress numbers into the local counters the bar reads; those of
/// the `first` record were done before the display began (a job followed while it runs).
fn mirror(local: &Progress, remote: &serde_json::Value, first: bool) {
    let get = |k: &str| remote[k].as_u64().unwrap_or(0);
    let now = local.snapshot();
    local.add_total(
        get("files_total").saturating_sub(now.files_total),
        get("bytes_total").saturating_sub(now.bytes_total),
    );
    local.add_files(get("files_done").saturating_sub(now.files_done));
    let bytes = get("bytes_done").saturating_sub(now.bytes_done);
    match first {
        true => local.add_bytes_before(bytes),
        false => local.add_bytes(bytes),
    }
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

/// A request without a body, returning the JSON reply.
pub fn call(at: &DaemonAddress, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
    call_with(at, method, path, None)
}

/// A request with an optional JSON body, returning the JSON reply.
pub fn call_with(
    at: &DaemonAddress,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let path = path.to_string();
    let body = body.map(serde_json::to_vec).transpose()?;
    runtime()?.block_on(async move {
        let mut conn = connect(at).await?;
        Ok(conn.json(method, &path, body).await?)
    })
}

pub use hyper::Method as HttpMethod;

#[cfg(test)]
mod tests {
    use super::{DaemonUrl, START_ADVICE, connect_advice, parse_url};

    #[test]
    fn a_refused_socket_names_the_group_to_join_a_missing_one_says_to_start_the_daemon() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let socket = t.path().join("attache.sock");
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(connect_advice(&socket, &gone), START_ADVICE);
        std::fs::write(&socket, b"").unwrap();
        let gid = std::fs::metadata(&socket).unwrap().gid();
        let group = crate::fsutil::group::group_name(gid).unwrap_or(format!("gid {gid}"));
        let refused = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let mode = |m| std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(m));
        mode(0o660).unwrap();
        let advice = connect_advice(&socket, &refused);
        assert!(
            advice.contains(&format!("add that user to group {group}")),
            "{advice}"
        );
        // Owner only (no daemon.socket_group): joining its group would not let anyone in.
        mode(0o600).unwrap();
        let advice = connect_advice(&socket, &refused);
        assert!(!advice.contains("add that user to group"), "{advice}");
        assert!(
            advice.contains("or set daemon.socket_group in the daemon's config"),
            "{advice}"
        );
    }

    #[test]
    fn a_daemon_url_is_https_or_http_to_a_host_and_port() {
        let url = |tls: bool, authority: &str, host: &str| DaemonUrl {
            tls,
            authority: authority.into(),
            host: host.into(),
        };
        for (given, want) in [
            (
                "http://render042:7070",
                url(false, "render042:7070", "render042"),
            ),
            (
                "http://render042:7070/",
                url(false, "render042:7070", "render042"),
            ),
            (
                "render042.farm.lan:7070",
                url(false, "render042.farm.lan:7070", "render042.farm.lan"),
            ),
            (
                "https://render042:7070",
                url(true, "render042:7070", "render042"),
            ),
            (
                "http://10.0.3.42:7070",
                url(false, "10.0.3.42:7070", "10.0.3.42"),
            ),
            (
                "https://[fd00::42]:7070",
                url(true, "[fd00::42]:7070", "fd00::42"),
            ),
        ] {
            assert_eq!(parse_url(given).unwrap(), want, "{given}");
        }
        for (given, why) in [
            ("ftp://render042:7070", "only https:// and http://"),
            ("http://render042", "no port"),
            ("https://render042", "no port"),
            ("http://render042:7070/v1/jobs", "not a host and port"),
            ("http://user@render042:7070", "not a host and port"),
            ("", "not a host and port"),
        ] {
            let e = parse_url(given).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("https://HOST:PORT"),
                "{given}: {e}"
            );
        }
    }
}
