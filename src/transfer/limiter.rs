//! Bandwidth limits: one shared GCRA limiter per direction, paced in 1 KiB cells, swappable at
//! run time.
//!
//! governor keeps the replenish interval in whole nanoseconds, so with one cell per byte any
//! rate above ~500 MB/s would be wrong; one cell per KiB keeps it exact to ~500 GB/s. Bytes are
//! counted exactly across all streams (a running total), so many small bodies are not each
//! rounded up to a whole KiB.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::{BandwidthSettings, Rate, WeekTime};

const CELL: u64 = 1024;

/// The limiter of one direction. `acquire` waits until the bytes may pass.
#[derive(Default)]
pub struct Limiter {
    inner: ArcSwapOption<Paced>,
    /// Bytes ever acquired: cells are taken when this crosses a KiB boundary.
    total: AtomicU64,
    /// Time spent waiting, for metrics (nanoseconds).
    waited_ns: AtomicU64,
    /// The rate set, in bytes per second (0: unlimited).
    rate: AtomicU64,
    /// Bytes that passed, limited or not: the daemon's live count of what its transfers move.
    passed: AtomicU64,
}

struct Paced {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(rate: crate::config::Rate) -> Self {
        let l = Limiter::default();
        l.set_rate(rate);
        l
    }

    /// Changes the rate for every transfer from now on (0 = unlimited). Waits already under
    /// way finish against the old rate.
    pub fn set_rate(&self, rate: Rate) {
        self.rate.store(rate.0, Ordering::Relaxed);
        self.inner
            .store(rate.per_second().map(|bps| Arc::new(Paced::new(bps))));
    }

    /// The rate in force.
    pub fn rate(&self) -> Rate {
        Rate(self.rate.load(Ordering::Relaxed))
    }

    pub fn is_limited(&self) -> bool {
        self.inner.load().is_some()
    }

    /// Total time transfers have waited on this limiter.
    pub fn waited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Bytes that have passed (every transfer's data, as it goes; one re-sent is counted
    /// again).
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Waits until `bytes` more may pass. Cancel by dropping the future.
    pub async fn acquire(&self, bytes: usize) {
        self.passed.fetch_add(bytes as u64, Ordering::Relaxed);
        let Some(paced) = self.inner.load_full() else {
            return;
        };
        let before = self.total.fetch_add(bytes as u64, Ordering::Relaxed);
        let mut cells = (before + bytes as u64) / CELL - before / CELL;
        let started = std::time::Instant::now();
        while cells > 0 {
            let n = cells.min(u64::from(paced.burst)) as u32;
            paced.take(n).await;
            cells -= u64::from(n);
        }
        self.waited_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Paced {
    fn new(bytes_per_second: u64) -> Paced {
        let kib_per_second = (bytes_per_second / CELL).clamp(1, u64::from(u32::MAX)) as u32;
        // A burst of ~50 ms (at least 64 KiB, one body chunk) keeps pacing smooth.
        let burst = (kib_per_second / 20).max(64);
        let quota = Quota::per_second(NonZeroU32::new(kib_per_second).expect("clamped to >= 1"))
            .allow_burst(NonZeroU32::new(burst).expect(">= 64"));
        Paced {
            limiter: governor::RateLimiter::direct(quota),
            burst,
            clock: DefaultClock::default(),
        }
    }

    async fn take(&self, n: u32) {
        let n = NonZeroU32::new(n).expect("caller passes n > 0");
        loop {
            match self.limiter.check_n(n) {
                Ok(Ok(())) => return,
                Ok(Err(not_until)) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                }
                Err(_) => unreachable!("n is capped at the burst size"),
            }
        }
    }
}

/// The limiters of both directions, shared by every transfer of a process.
#[derive(Default)]
pub struct Bandwidth {
    pub upload: Limiter,
    pub download: Limiter,
    /// Wakes [`Bandwidth::follow_schedule`] to look at its settings again now (the daemon's
    /// limits were set or reset by hand).
    pub settings_changed: tokio::sync::Notify,
}

impl Bandwidth {
    /// The limiters, at the limits in force now (the timetable's, when there is one).
    pub fn new(settings: &BandwidthSettings) -> Self {
        let (up, down) = settings.in_force(WeekTime::now());
        Bandwidth {
            upload: Limiter::new(up),
            download: Limiter::new(down),
            settings_changed: tokio::sync::Notify::new(),
        }
    }

    /// Applies the limits in force live (config reload, a timetable's next entry).
    pub fn apply(&self, settings: &BandwidthSettings) {
        let (up, down) = settings.in_force(WeekTime::now());
        if (up, down) == (self.upload.rate(), self.download.rate()) {
            return; // a new limiter would start a fresh burst for nothing
        }
        tracing::info!(upload = %up, download = %down, "bandwidth limits now");
        self.upload.set_rate(up);
        self.download.set_rate(down);
    }

    /// Follows `settings`' timetable: applies each entry when its time comes, for as long as
    /// the returned future runs. `settings` is asked again each time (a daemon's reload
    /// changes them), and at least every minute, so that a changed clock or time zone is
    /// noticed, or sooner when [`Bandwidth::settings_changed`] says so.
    pub async fn follow_schedule(&self, settings: impl Fn() -> BandwidthSettings) {
        loop {
            let wait = settings()
                .next_change(WeekTime::now())
                .map_or(60, |s| s.min(60));
            let sleep = tokio::time::sleep(std::time::Duration::from_secs(u64::from(wait.max(1))));
            tokio::select! {
                _ = sleep => {}
                _ = self.settings_changed.notified() => continue,
            }
            let now = settings();
            if !now.schedule.is_empty() {
                self.apply(&now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn unlimited_never_waits() {
        let l = Limiter::new(Rate(0));
        let t = Instant::now();
        for _ in 0..1000 {
            l.acquire(1 << 20).await;
        }
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn paces_to_the_rate_and_can_be_changed_live() {
        // 4 MiB/s, 2 MiB past the initial burst: ~0.5 s.
        let l = Limiter::new(Rate(4 << 20));
        let t = Instant::now();
        for _ in 0..(2 << 20) / 65536 + 4 {
            l.acquire(65536).await;
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(900),
            "{took:?}"
        );
        l.set_rate(Rate(0));
        let t = Instant::now();
        l.acquire(100 << 20).await;
        assert!(t.elapsed() < Duration::from_millis(50));
        assert!(!l.is_limited());
    }

    #[tokio::test]
    async fn small_bodies_are_counted_exactly() {
        // 10,000 bodies of 100 bytes = ~977 KiB, not 10,000 KiB: at 1 MiB/s well under 1 s.
        let l = Limiter::new(Rate(1 << 20));
        let t = Instant::now();
        for _ in 0..10_000 {
            l.acquire(100).await;
        }
        assert!(
            t.elapsed() < Duration::from_millis(1100),
            "{:?}",
            t.elapsed()
        );
    }
}
