//! The daemon's bandwidth limits at run time: the config's (`bandwidth.upload`/`download`, or
//! its timetable's entry), unless limits were set by hand (`attache bwlimit`,
//! `PUT /v1/bandwidth`). Limits set by hand replace the config's and its timetable, for every
//! transfer in flight too, until they are reset or their time is up; a config reload keeps
//! them, and so does a restart (they are kept in `daemon.state_dir/bandwidth.json`): a
//! wrangler's `--for 8h` on a farm's workers outlives a package upgrade.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::shared::Shared;
use crate::config::{BandwidthSettings, Rate, WeekTime};

/// Numbers the settings made by hand.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Limits set by hand.
#[derive(Debug, Clone)]
pub struct SetLimits {
    pub upload: Rate,
    pub download: Rate,
    /// When they give way to the config's again; `None`: when reset.
    pub until: Option<SystemTime>,
    /// Tells a later setting from this one, so this one's expiry leaves that one alone.
    serial: u64,
}

/// Limits set by hand as `daemon.state_dir/bandwidth.json` keeps them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    upload: Rate,
    download: Rate,
    /// Unix seconds; `None`: until reset.
    until_unix: Option<u64>,
}

fn kept_at(settings: &crate::config::Settings) -> std::path::PathBuf {
    settings.daemon.state_dir.join("bandwidth.json")
}

/// Where the limits in force come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsFrom {
    /// `bandwidth.upload` and `bandwidth.download`.
    Config,
    /// The entry of `bandwidth.schedule` in force.
    Schedule,
    /// `attache bwlimit` or `PUT /v1/bandwidth`.
    Set,
}

/// The longest a setting by hand may last (longer: leave the duration out, until reset).
const MAX_LASTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// A setting by hand that cannot be taken: the field at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SetError {
    /// `rate` or `for`, as the API names them.
    pub field: &'static str,
    pub message: String,
}

/// Parses a setting by hand, `RATE` or `UP:DOWN` (`off`: unlimited) and how long it lasts
/// (`None`: until reset), for the API and the CLI alike.
pub fn parse_setting(
    rate: &str,
    lasting: Option<&str>,
) -> Result<(Rate, Rate, Option<Duration>), SetError> {
    // A timetable (`08:00,10MB/s 19:00,off`) is the config's, not a setting by hand.
    if rate.contains(',') {
        return Err(SetError {
            field: "rate",
            message: format!(
                "rate {rate:?} is a timetable: `attache bwlimit` sets one rate (RATE, or UP:DOWN) for a while; a timetable goes in the daemon's bandwidth.schedule (a reload applies it)"
            ),
        });
    }
    let (up, down) = crate::config::parse_rates(rate).map_err(|e| SetError {
        field: "rate",
        message: format!(
            "rate {rate:?}: {e} (RATE for both directions, or UP:DOWN; \"off\" is unlimited)"
        ),
    })?;
    let lasting = match lasting.map(|l| (l, l.parse::<crate::config::Duration>())) {
        None => None,
        Some((_, Ok(d))) if !d.0.is_zero() && d.0 <= MAX_LASTING => Some(d.0),
        Some((l, Ok(_))) => {
            return Err(SetError {
                field: "for",
                message: format!(
                    "for {l:?}: give a duration above 0 and at most 365 days, like 2h, or leave it out (until reset)"
                ),
            });
        }
        Some((_, Err(e))) => {
            return Err(SetError {
                field: "for",
                message: format!("for: {e}"),
            });
        }
    };
    Ok((up, down, lasting))
}

/// What `GET /v1/bandwidth` and `attache bwlimit` show.
#[derive(Debug, Serialize)]
pub struct BandwidthView {
    /// The limits in force, e.g. "10MB/s" or "unlimited".
    pub upload: String,
    pub download: String,
    /// Bytes per second; 0: unlimited.
    pub upload_bytes_per_second: u64,
    pub download_bytes_per_second: u64,
    pub source: LimitsFrom,
    /// When limits set by hand give way to the config's (RFC 3339, UTC).
    pub until: Option<String>,
    pub seconds_left: Option<u64>,
}

impl Shared {
    /// The bandwidth settings in force: the limits set by hand (without a timetable), else the
    /// config's.
    pub fn bandwidth_settings(&self) -> BandwidthSettings {
        match &*self.set_limits.lock().expect("not poisoned") {
            Some(set) => BandwidthSettings {
                upload: set.upload,
                download: set.download,
                schedule: Vec::new(),
            },
            None => self.settings().bandwidth.clone(),
        }
    }

    /// Sets the limits of both directions, for every job, for `lasting` or until reset.
    pub fn set_bandwidth(
        self: &Arc<Self>,
        upload: Rate,
        download: Rate,
        lasting: Option<Duration>,
    ) {
        // Never reused (a reset in between must not let an old setting's expiry end a new one).
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let set = SetLimits {
            upload,
            download,
            until: lasting.and_then(|d| SystemTime::now().checked_add(d)),
            serial,
        };
        self.keep_set_limits(Some(&set));
        *self.set_limits.lock().expect("not poisoned") = Some(set);
        tracing::info!(
            upload = %upload,
            download = %download,
            lasting = %lasting.map_or("until reset".into(), |d| crate::config::Duration(d).to_string()),
            "bandwidth limits set by hand"
        );
        self.apply_bandwidth();
        if let Some(d) = lasting {
            let shared = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(shared) = shared.upgrade() {
                    shared.expire_bandwidth(serial);
                }
            });
        }
    }

    /// Back to the config's limits (or its timetable's). Returns whether limits were set.
    pub fn reset_bandwidth(&self) -> bool {
        let was = self
            .set_limits
            .lock()
            .expect("not poisoned")
            .take()
            .is_some();
        if was {
            self.keep_set_limits(None);
            tracing::info!("bandwidth limits set by hand reset: the config's apply");
            self.apply_bandwidth();
        }
        was
    }

    /// Takes back the limits set by hand before the daemon last stopped, for the time they
    /// had left; those whose time ran out meanwhile are dropped.
    pub fn restore_bandwidth(self: &Arc<Self>) {
        let path = kept_at(&self.settings());
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let Ok(kept) = serde_json::from_str::<Kept>(&text) else {
            tracing::warn!(file = %path.display(), "unreadable bandwidth limits set by hand; the config's apply");
            let _ = std::fs::remove_file(&path);
            return;
        };
        let until = kept
            .until_unix
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let lasting = match until.map(|t| t.duration_since(SystemTime::now())) {
            None => None,
            Some(Ok(left)) if !left.is_zero() => Some(left),
            Some(_) => {
                tracing::info!(
                    "the bandwidth limits set by hand ran out while the daemon was stopped"
                );
                let _ = std::fs::remove_file(&path);
                return;
            }
        };
        tracing::info!("bandwidth limits set by hand before the restart are taken back");
        self.set_bandwidth(kept.upload, kept.download, lasting);
    }

    /// Writes (or, with `None`, removes) the record of the limits set by hand, so a restart
    /// takes them back. A failure only costs that: it is logged.
    fn keep_set_limits(&self, set: Option<&SetLimits>) {
        let path = kept_at(&self.settings());
        let done = match set {
            Some(s) => {
                let kept = Kept {
                    upload: s.upload,
                    download: s.download,
                    until_unix: s
                        .until
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                };
                let json = serde_json::to_vec(&kept).expect("serializes");
                crate::fsutil::write_atomic(&path, &json)
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = done {
            tracing::warn!(file = %path.display(), "cannot keep the bandwidth limits set by hand for a restart: {e}");
        }
    }

    fn expire_bandwidth(&self, serial: u64) {
        let mut set = self.set_limits.lock().expect("not poisoned");
        if set.as_ref().is_some_and(|s| s.serial == serial) {
            *set = None;
            drop(set);
            self.keep_set_limits(None);
            tracing::info!("bandwidth limits set by hand ran out: the config's apply");
            self.apply_bandwidth();
        }
    }

    /// Puts the limits in force on the limiters, and has the timetable's follower look again.
    pub(super) fn apply_bandwidth(&self) {
        self.bandwidth.apply(&self.bandwidth_settings());
        self.bandwidth.settings_changed.notify_waiters();
    }

    pub fn bandwidth_view(&self) -> BandwidthView {
        let set = self.set_limits.lock().expect("not poisoned").clone();
        let config = self.settings().bandwidth.clone();
        let (source, (up, down)) = match &set {
            Some(s) => (LimitsFrom::Set, (s.upload, s.download)),
            None if config.schedule.is_empty() => {
                (LimitsFrom::Config, (config.upload, config.download))
            }
            None => (LimitsFrom::Schedule, config.in_force(WeekTime::now())),
        };
        let until = set.and_then(|s| s.until);
        BandwidthView {
            upload: up.to_string(),
            download: down.to_string(),
            upload_bytes_per_second: up.0,
            download_bytes_per_second: down.0,
            source,
            until: until.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            seconds_left: until.map(|t| {
                t.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs()
            }),
        }
    }
}
