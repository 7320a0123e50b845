//! Progress counters shared between the workers of a job and whoever displays them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Totals and done-counts of files and bytes. Files are counted as well as bytes so that a
/// run of tiny files never looks like a stall.
#[derive(Debug, Default)]
pub struct Progress {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    /// Of `bytes_done`, those done before the display began (a job followed while it runs):
    /// not counted in the rate it shows.
    bytes_before: AtomicU64,
}

/// A consistent-enough reading of [`Progress`] for display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressSnapshot {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    #[serde(skip)]
    pub bytes_before: u64,
}

impl Progress {
    pub fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Relaxed);
        self.bytes_total.fetch_add(bytes, Relaxed);
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Relaxed);
    }

    /// Bytes done before the display began, e.g. by a job already running when it is
    /// followed: done, but not part of the rate.
    pub fn add_bytes_before(&self, bytes: u64) {
        self.bytes_before.fetch_add(bytes, Relaxed);
        self.bytes_done.fetch_add(bytes, Relaxed);
    }

    pub fn add_files(&self, files: u64) {
        self.files_done.fetch_add(files, Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: self.files_total.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            bytes_done: self.bytes_done.load(Relaxed),
            bytes_before: self.bytes_before.load(Relaxed),
        }
    }
}

/// Logs a job's progress, one line at a time, with the rate since the line before: for logs
/// where no progress bar can be drawn (a farm's task log, the daemon's journal).
pub struct ProgressLog {
    label: String,
    json: bool,
    last: (std::time::Instant, u64),
}

impl ProgressLog {
    pub fn new(label: impl Into<String>, format: crate::config::LogFormat) -> Self {
        ProgressLog {
            label: label.into(),
            json: format == crate::config::LogFormat::Json,
            last: (std::time::Instant::now(), 0),
        }
    }

    /// "downloading: 1.2 GiB of 3.4 GiB (35%), 1234 of 5000 files, 112.0 MiB/s, 20s left", or
    /// those figures as fields for a log collector.
    pub fn log(&mut self, s: &ProgressSnapshot) {
        if s.files_total == 0 && s.bytes_total == 0 {
            return; // nothing found yet: "0 of 0" says nothing
        }
        // Bytes done before this log began are no part of its first rate.
        self.last.1 = self.last.1.max(s.bytes_before);
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.last.0).as_secs_f64().max(1e-3);
        let rate = (s.bytes_done.saturating_sub(self.last.1) as f64 / secs) as u64;
        self.last = (now, s.bytes_done);
        let left = (rate > 0 && s.bytes_total > s.bytes_done)
            .then(|| (s.bytes_total - s.bytes_done).div_ceil(rate));
        let label = &self.label;
        if self.json {
            tracing::info!(
                task = label,
                files_done = s.files_done,
                files_total = s.files_total,
                bytes_done = s.bytes_done,
                bytes_total = s.bytes_total,
                bytes_per_second = rate,
                seconds_left = left,
                "progress"
            );
            return;
        }
        let size = |n| bytesize::ByteSize(n).display().iec().to_string();
        let percent = match s.bytes_total {
            0 => String::new(),
            t => format!(" ({}%)", s.bytes_done.saturating_mul(100) / t),
        };
        let left = match left {
            Some(secs) => format!(", {} left", crate::config::Duration::secs(secs)),
            None => String::new(),
        };
        tracing::info!(
            "{label}: {} of {}{percent}, {} of {} files, {}/s{left}",
            size(s.bytes_done),
            size(s.bytes_total),
            s.files_done,
            s.files_total,
            size(rate),
        );
    }
}
