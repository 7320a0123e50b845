//! `attache daemon`: listens on the Unix socket (mode 0600, or 0660 for `daemon.socket_group`),
//! and on TCP only when `daemon.listen` is set (then with the bearer token of
//! `daemon.token_file`, and HTTPS with `daemon.tls_cert` and `daemon.tls_key`). SIGHUP
//! re-reads the config (and the listener's token and certificate, TLS on or off); SIGTERM/SIGINT stop
//! accepting, cancel every job, let them clean up (abort multipart uploads, remove temporary
//! files), and exit 0; a second signal exits at once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::api::{Api, Reload, router};
use super::metrics::Metrics;
use super::registry::Registry;
use super::shared::Shared;
use super::tcp_secrets::{SecretsError as TcpSecretsError, TcpSecrets};
use crate::config::{self, LoadOptions, Settings};

/// How long jobs get to clean up after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("daemon.listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] TcpSecretsError),
    #[error("daemon.state_dir {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("daemon.socket_group {0:?}: no such group")]
    Group(String),
    #[error(
        "daemon.state_dir {}: another attache daemon uses it{}; stop it first, or give this one a daemon.state_dir of its own (two daemons would take each other's running jobs for interrupted ones)",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    StateInUse { path: PathBuf, pid: Option<u32> },
}

impl DaemonError {
    /// Whether a setting names what cannot be used (a token file others can read, a missing
    /// certificate, an unknown group): the config to fix, exit 2, as for the clients.
    pub fn is_setting(&self) -> bool {
        matches!(self, DaemonError::Secrets(_) | DaemonError::Group(_))
    }
}

/// Says at start, once, what would otherwise show only job by job: a `cache.dir` the daemon
/// cannot write (made by root, a read-only mount, a path through a file).
fn warn_if_cache_dir_unwritable(dir: &std::path::Path) {
    let writable = std::fs::create_dir_all(dir).and_then(|()| crate::fsutil::can_write_in(dir));
    if let Err(e) = writable {
        tracing::warn!(
            "cache.dir {}: cannot write there ({e}{}): the hash cache, the known-present index and the records of open uploads live there, so jobs fail on the hash cache or run without the others until it is fixed (or cache.hash_cache = false)",
            dir.display(),
            crate::fsutil::io_advice(&e)
        );
    }
}

/// Takes `<state_dir>/daemon.lock` for this daemon, with its pid in it, for as long as the
/// returned file is open: the job records and the bandwidth set by hand have one owner. The
/// kernel drops the lock with the process, so a crash leaves nothing to clean up.
fn lock_state_dir(state_dir: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let io = |source| DaemonError::State {
        path: state_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(state_dir.join("daemon.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(DaemonError::StateInUse {
                path: state_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// Aborts the multipart uploads earlier runs on this machine gave up on (an abort the store
/// did not confirm in time), in every store their records name, so a daemon restarted cleans
/// up before its next job needs to. Those a failure or a crash left (the daemon's own crash
/// too) wait out `transfer.resume_for` for the job sent again to resume them; older ones go.
async fn abort_leftovers_at_start(shared: Arc<Shared>) {
    let settings = shared.settings();
    let records = crate::transfer::open_uploads::OpenUploads::new(&settings.cache.dir);
    let Ok(stores) = tokio::task::spawn_blocking(move || records.stores_with_leftovers()).await
    else {
        return;
    };
    for url in stores {
        match shared.transfer_for(&url, &settings, Arc::default()).await {
            Ok(t) => {
                // Each one it could not abort is logged on its own.
                let n = crate::transfer::upload::abort_leftovers(&t, false)
                    .await
                    .len();
                if n > 0 {
                    tracing::info!("aborted {n} multipart upload(s) left open in {url}");
                }
            }
            Err(e) => tracing::warn!(
                "cannot open {url} to abort the multipart uploads left open there: {e}; the next upload to it will"
            ),
        }
    }
}

/// Runs the daemon until a shutdown signal. `load` is how the config was loaded, so a reload
/// reads the same file, environment and flags again.
pub async fn serve(settings: Settings, load: LoadOptions) -> Result<(), DaemonError> {
    let d = settings.daemon.clone();
    // A setting that cannot be used stops the start before anything is made (as this user).
    if let Some(g) = &d.socket_group
        && crate::fsutil::group::group_id(g).is_none()
    {
        return Err(DaemonError::Group(g.clone()));
    }
    let _state_lock = lock_state_dir(&d.state_dir)?;
    warn_if_cache_dir_unwritable(&settings.cache.dir);
    let started = settings.clone();
    let shared = Arc::new(Shared::new(settings));
    let metrics = Arc::new(Metrics::default());
    let registry =
        Registry::open(&d.state_dir, shared.clone(), metrics.clone()).map_err(|source| {
            DaemonError::State {
                path: d.state_dir.clone(),
                source,
            }
        })?;
    // The TCP listener's token and certificate: read before anything listens, read again at
    // each reload.
    let tcp_secrets = match &d.listen {
        Some(_) => Some(Arc::new(TcpSecrets::load(&d)?)),
        None => None,
    };
    let reload = {
        let (shared, metrics, secrets) = (shared.clone(), metrics.clone(), tcp_secrets.clone());
        move || reload_config(&load, &started, &shared, &metrics, secrets.as_deref())
    };
    let reload: Arc<Reload> = Arc::new(reload);
    let api = |tcp: Option<Arc<TcpSecrets>>| {
        let reload = reload.clone();
        Arc::new(Api {
            registry: registry.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            reload: Box::new(move || reload()),
            tcp,
        })
    };

    shared.restore_bandwidth();
    // The TCP address first: one another process holds fails the start before the socket is
    // made, so no socket is left behind that nothing answers on.
    let tcp_listener = match (&d.listen, tcp_secrets) {
        (Some(addr), Some(secrets)) => {
            let listen = |source| DaemonError::Listen {
                addr: addr.clone(),
                source,
            };
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
            let speaks = match secrets.tls() {
                Some(_) => "HTTPS",
                None => "plain HTTP",
            };
            let listener = super::tls::ApiListener::new(tcp, secrets.clone()).map_err(listen)?;
            Some((addr.clone(), secrets, speaks, listener))
        }
        _ => None,
    };
    let listener = bind_socket(&d.socket, d.socket_group.as_deref())?;
    tracing::info!(socket = %d.socket.display(), "attache daemon listening");
    tokio::spawn(abort_leftovers_at_start(shared.clone()));
    // bandwidth.schedule: each entry applies when its time comes, from the config in force
    // (not while limits set by hand are: they come without a timetable).
    tokio::spawn({
        let shared = shared.clone();
        async move {
            let bandwidth = shared.bandwidth.clone();
            bandwidth
                .follow_schedule(|| shared.bandwidth_settings())
                .await
        }
    });
    // The job history's age limit holds on an idle daemon too (a finishing job also prunes);
    // the machine's databases forget what they hold in vain (the hashes of removed sessions'
    // files, known-present entries too old to trust).
    let stop_housekeeping = CancellationToken::new();
    tokio::spawn({
        let (registry, shared) = (registry.clone(), shared.clone());
        let stop = stop_housekeeping.clone();
        async move {
            let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
            hourly.tick().await; // the first tick is now; the registry pruned when it opened
            // A pass still running (a network mount slow to answer a `stat`) is not doubled.
            let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
            loop {
                hourly.tick().await;
                registry.forget_old_jobs();
                if busy.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let (settings, busy, stop) = (shared.settings(), busy.clone(), stop.clone());
                tokio::task::spawn_blocking(move || {
                    match crate::jobs::local_caches::forget_stale(&settings, &|| {
                        stop.is_cancelled()
                    }) {
                        Ok(t) => tracing::info!(
                            hash_files = t.hash_files.unwrap_or(0),
                            hash_directories = t.hash_directories.unwrap_or(0),
                            known_present_expired = t.known_present_expired.unwrap_or(0),
                            partial_downloads_removed = t.partial_downloads.map_or(0, |p| p.files),
                            copying_stores_forgotten = t.copying_stores.unwrap_or(0),
                            "caches: forgot what no longer exists or is too old"
                        ),
                        Err(e) => tracing::warn!("caches: {e}"),
                    }
                    busy.store(false, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
    });
    let stop_accepting = CancellationToken::new();
    let mut servers = Vec::new();
    {
        let stop = stop_accepting.clone();
        // Who is on the other end of each connection: a client of another user gets jobs
        // that read and write only what its user could.
        let app = router(api(None))
            .layer(axum::middleware::from_fn(super::api::peer))
            .into_make_service_with_connect_info::<super::api::Peer>();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
    }
    let mut serving = format!("listening on {}", d.socket.display());
    if let Some((addr, secrets, speaks, listener)) = tcp_listener {
        serving.push_str(&format!(" and {addr} ({speaks})"));
        let stop = stop_accepting.clone();
        let app = router(api(Some(secrets)));
        tracing::info!(%addr, "TCP listener on, {speaks} (bearer token required)");
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
    }

    super::service_manager::ready(serving, registry.clone(), stop_housekeeping.clone());

    wait_for_shutdown(&*reload).await;
    super::service_manager::stopping();
    stop_housekeeping.cancel();
    tracing::info!("shutting down: cancelling jobs");
    // Jobs first (their event streams end with them), then the listeners.
    let second_signal = tokio::spawn(async {
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut int = signal(SignalKind::interrupt()).expect("signal handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
    registry.shutdown(SHUTDOWN_GRACE).await;
    stop_accepting.cancel();
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
    }
    second_signal.abort();
    let _ = std::fs::remove_file(&d.socket);
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP reloads; returns at SIGTERM or SIGINT.
async fn wait_for_shutdown(reload: &Reload) {
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = reload(); }
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// Re-reads the config; on any error logs it and keeps the settings in force.
fn reload_config(
    load: &LoadOptions,
    started: &Settings,
    shared: &Shared,
    metrics: &Metrics,
    tcp: Option<&TcpSecrets>,
) -> Result<Vec<&'static str>, String> {
    let loaded = config::load(load)
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            // A rotated token or certificate, TLS turned on or off: taken now, or the whole
            // reload is refused.
            match tcp {
                Some(tcp) if loaded.settings.daemon.listen.is_some() => {
                    match tcp.reload(&loaded.settings.daemon) {
                        Ok(Some(true)) => {
                            tracing::info!("the TCP listener speaks HTTPS from now on")
                        }
                        Ok(Some(false)) => tracing::warn!(
                            "the TCP listener speaks plain HTTP from now on: its token crosses the network in clear"
                        ),
                        Ok(None) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                    Ok(loaded)
                }
                _ => Ok(loaded),
            }
        });
    match loaded {
        Ok(loaded) => {
            // Against the settings the daemon started with, so that a second reload still
            // says what waits for the restart.
            let at_restart = loaded.settings.restart_keys(started);
            if !at_restart.is_empty() {
                tracing::warn!(
                    "{} changed: taken at the next start (systemctl restart attache), not now",
                    at_restart.join(", ")
                );
            }
            // After logrotate moved the file away (its postrotate sends SIGHUP).
            if let Err(e) = crate::logging::reopen_file() {
                tracing::error!("cannot open log.file again: {e}; logging on to the old file");
            }
            let listens = loaded.settings.daemon.listen.is_some();
            shared.apply(loaded.settings);
            metrics.reloaded(true);
            if tcp.is_some() && listens {
                tracing::info!("the TCP listener's token and certificate were read again");
            }
            if shared.bandwidth_view().source == super::bandwidth::LimitsFrom::Set {
                tracing::info!(
                    "config reloaded: settings apply to new jobs; the bandwidth limits set by hand stay (attache bwlimit --reset)"
                );
            } else {
                tracing::info!(
                    "config reloaded: bandwidth applies now, other settings to new jobs"
                );
            }
            Ok(at_restart)
        }
        Err(e) => {
            metrics.reloaded(false);
            tracing::error!("config reload failed, keeping the previous settings: {e}");
            Err(e)
        }
    }
}

/// Binds the Unix socket with its access mode set before anyone can connect: the socket is
/// created inside a directory only the owner (and the group, when configured) can enter.
fn bind_socket(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, DaemonError> {
    let err = |message: String| DaemonError::Socket {
        path: path.to_path_buf(),
        message,
    };
    let dir = path
        .parent()
        .ok_or_else(|| err("the socket needs a directory".into()))?;
    let gid = group
        .map(|g| crate::fsutil::group::group_id(g).ok_or_else(|| DaemonError::Group(g.to_string())))
        .transpose()?;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        let mode = if gid.is_some() { 0o750 } else { 0o700 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| err(e.to_string()))?;
        if let Some(gid) = gid {
            chown_group(dir, gid)
                .map_err(|e| err(format!("cannot give the directory to the group: {e}")))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(
                "another attache daemon is listening there; stop it first".into(),
            ));
        }
        // Left by a daemon that did not shut down cleanly.
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| err(format!("cannot listen: {e}")))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(e.to_string()))?;
    if let Some(gid) = gid {
        chown_group(path, gid)
            .map_err(|e| err(format!("cannot give the socket to the group: {e}")))?;
    }
    Ok(listener)
}

fn chown_group(path: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}
