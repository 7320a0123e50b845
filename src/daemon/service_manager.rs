//! Tells systemd (a `Type=notify` unit) when the daemon serves, what it is doing and when it
//! stops, and feeds its watchdog (`WatchdogSec=`). Nothing without `NOTIFY_SOCKET`.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;

/// How often the status line is brought up to date with the jobs.
const STATUS_EVERY: Duration = Duration::from_secs(2);

fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager at NOTIFY_SOCKET: {e}");
    }
}

fn status(serving: &str, running: usize, queued: usize) -> String {
    format!("{serving}; {running} job(s) running, {queued} queued")
}

/// The listeners are bound: `READY=1`, so that a unit ordered after this one (the worker
/// agent) starts only once the socket answers. Then, until `stop`, `STATUS=` follows the jobs
/// (`systemctl status attache` shows it) and the watchdog is fed at half its interval, from
/// the runtime that serves the jobs, so that a daemon stuck there is restarted.
pub fn ready(serving: String, registry: Arc<Registry>, stop: CancellationToken) {
    if !managed() {
        return;
    }
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status(&serving, 0, 0)),
    ]);
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut shown = (0, 0);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let queued = registry.queued();
            let now = (registry.active().saturating_sub(queued), queued);
            if now != shown {
                shown = now;
                send(&[NotifyState::Status(&status(&serving, now.0, now.1))]);
            }
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog]);
            }
        }
    });
}

/// A shutdown signal came: `STOPPING=1` while the jobs are cancelled and cleaned up.
pub fn stopping() {
    if managed() {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: cancelling jobs, aborting their uploads"),
        ]);
    }
}
