//! Request concurrency that backs off while the store throttles, and retries with backoff.
//!
//! Every store request takes a permit. When the store answers 503 SlowDown (counted by the
//! S3 interceptor), the number of permits is halved, at most once a second; each quiet second
//! after that it doubles again up to the maximum. (Growing back by one every two seconds took
//! over a minute to return to full speed after a 10 s burst of 503s.) [`Gate::run`] owns the
//! retries (`s3.retry_attempts`, with exponential backoff and no permit held while it waits).
//! The S3 client adds at most one immediate retry of its own (a dropped idle connection, a
//! skewed clock it corrects); were both layers to retry fully, a lasting 500 would be tried
//! 36 times over 100 s before it is reported.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{TransferError, cancellable, reply_within};
use crate::store::StoreError;

pub struct Gate {
    sem: Semaphore,
    max: usize,
    state: Mutex<GateState>,
    /// Where throttling replies are counted (the S3 store's interceptor).
    throttles: Arc<AtomicU64>,
    /// Times the gate lowered its limit, for reports and metrics.
    pub backoffs: AtomicU64,
    /// Store operations retried by the gate.
    pub retries: AtomicU64,
    /// Attempts of one operation: the first and `s3.retry_attempts` retries.
    attempts: u32,
}

struct GateState {
    limit: usize,
    /// Permits to retire as they come back, after a decrease.
    debt: usize,
    seen_throttles: u64,
    last_change: Instant,
}

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(20);

impl Gate {
    /// A gate of `max` concurrent requests, watching `throttles`, retrying a failed request
    /// `retries` times (5 retries wait 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s, enough to ride out a
    /// throttling burst).
    pub fn new(max: usize, throttles: Arc<AtomicU64>, retries: u32) -> Gate {
        let max = max.max(1);
        Gate {
            sem: Semaphore::new(max),
            max,
            state: Mutex::new(GateState {
                limit: max,
                debt: 0,
                seen_throttles: 0,
                last_change: Instant::now(),
            }),
            throttles,
            backoffs: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            attempts: retries.saturating_add(1),
        }
    }

    /// The current limit on requests in flight.
    pub fn limit(&self) -> usize {
        self.state.lock().expect("not poisoned").limit
    }

    /// Runs one store operation under a permit, retrying retryable failures with exponential
    /// backoff. Cancellation drops the operation at once.
    pub async fn run<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        op: F,
    ) -> Result<T, TransferError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.retrying(cancel, true, Duration::ZERO, op).await
    }

    /// Like [`Gate::run`], for a request whose effect outlives it (creating a multipart
    /// upload): once sent, a cancel gives it `grace` to bring its reply, so that the caller
    /// learns what the store did and can undo it. Dropped at once, the store may act on it
    /// and nobody would know the upload it made.
    pub async fn run_to_reply<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        grace: Duration,
        op: F,
    ) -> Result<T, TransferError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.retrying(cancel, true, grace, op).await
    }

    /// Runs a clean-up operation (aborting a multipart upload, deleting manifests of an
    /// unfinished submit) with the same retries, for at most `deadline`; `None` if that passed.
    /// It takes no permit, so it never queues behind the requests it cleans up after, and no
    /// job's token: it must happen especially when the job was cancelled.
    pub async fn run_within<T, F, Fut>(
        &self,
        deadline: Duration,
        op: F,
    ) -> Option<Result<T, TransferError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let never = CancellationToken::new();
        tokio::time::timeout(deadline, self.retrying(&never, false, Duration::ZERO, op))
            .await
            .ok()
    }

    async fn retrying<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        queued: bool,
        grace: Duration,
        mut op: F,
    ) -> Result<T, TransferError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = if queued {
                let permit = cancellable(cancel, self.sem.acquire())
                    .await?
                    .expect("never closed");
                let r = reply_within(cancel, grace, op()).await;
                self.release(permit);
                r?
            } else {
                reply_within(cancel, grace, op()).await?
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.attempts => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff = Duration::from_millis(200 << attempt.min(10)).min(MAX_BACKOFF)
                        + Duration::from_millis(rand::random::<u64>() % 200);
                    tracing::debug!("retrying in {backoff:?}: {e}");
                    cancellable(cancel, tokio::time::sleep(backoff)).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Returns a permit, adjusting the limit to what the store said meanwhile.
    fn release(&self, permit: tokio::sync::SemaphorePermit<'_>) {
        let mut s = self.state.lock().expect("not poisoned");
        let throttles = self.throttles.load(Ordering::Relaxed);
        let since = s.last_change.elapsed();
        if throttles > s.seen_throttles {
            s.seen_throttles = throttles;
            if since >= Duration::from_secs(1) && s.limit > 1 {
                let new = (s.limit / 2).max(1);
                s.debt += s.limit - new;
                s.limit = new;
                s.last_change = Instant::now();
                self.backoffs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the store is throttling (503 SlowDown): {new} requests in flight at most for now"
                );
            }
        } else if s.limit < self.max && since >= Duration::from_secs(1) {
            let grow = s.limit.min(self.max - s.limit);
            s.limit += grow;
            s.last_change = Instant::now();
            // Permits still to retire are cancelled first; the rest are new.
            let repaid = grow.min(s.debt);
            s.debt -= repaid;
            self.sem.add_permits(grow - repaid);
        }
        if s.debt > 0 {
            s.debt -= 1;
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(retryable: bool) -> StoreError {
        StoreError::Failed {
            store: "s".into(),
            op: "GET",
            key: "k".into(),
            message: "boom".into(),
            retryable,
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_then_reported() {
        let gate = Gate::new(4, Arc::default(), 2);
        let calls = AtomicU64::new(0);
        let r: Result<(), _> = gate
            .run(&CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(failing(true))
            })
            .await;
        assert!(matches!(r, Err(TransferError::Store(_))));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "the first attempt and 2 retries"
        );
        let calls = AtomicU64::new(0);
        let _ = gate
            .run(&CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(failing(false))
            })
            .await;
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "a lasting refusal is not retried"
        );
    }

    #[tokio::test]
    async fn throttling_halves_the_limit() {
        let throttles = Arc::new(AtomicU64::new(0));
        let gate = Gate::new(16, throttles.clone(), 5);
        gate.state.lock().unwrap().last_change = Instant::now() - Duration::from_secs(5);
        throttles.store(3, Ordering::Relaxed);
        gate.run(&CancellationToken::new(), || async {
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(gate.limit(), 8);
        assert_eq!(gate.backoffs.load(Ordering::Relaxed), 1);
        // Within a second, more throttles do not halve again.
        throttles.store(9, Ordering::Relaxed);
        gate.run(&CancellationToken::new(), || async {
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(gate.limit(), 8);
        // Permits still out, less those to retire, is the new limit.
        assert_eq!(
            gate.sem.available_permits() - gate.state.lock().unwrap().debt,
            8
        );
    }

    #[tokio::test]
    async fn the_limit_doubles_back_each_quiet_second() {
        let throttles = Arc::new(AtomicU64::new(0));
        let gate = Gate::new(16, throttles.clone(), 5);
        let ok = || async { Ok::<_, StoreError>(()) };
        let age = |g: &Gate| {
            g.state.lock().unwrap().last_change = Instant::now() - Duration::from_secs(2)
        };
        age(&gate);
        throttles.store(1, Ordering::Relaxed);
        gate.run(&CancellationToken::new(), ok).await.unwrap();
        assert_eq!(gate.limit(), 8);
        for want in [16, 16] {
            age(&gate);
            gate.run(&CancellationToken::new(), ok).await.unwrap();
            assert_eq!(gate.limit(), want, "doubles, up to the maximum");
        }
        let s = gate.state.lock().unwrap();
        assert_eq!(
            gate.sem.available_permits() - s.debt,
            16,
            "every permit back"
        );
    }

    #[tokio::test]
    async fn a_clean_up_needs_no_permit_is_retried_and_ends_at_its_deadline() {
        let gate = Gate::new(1, Arc::default(), 2);
        let _held = gate.sem.acquire().await.unwrap();
        let calls = AtomicU64::new(0);
        let r = gate
            .run_within(Duration::from_secs(10), || async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(failing(true)),
                    _ => Ok(()),
                }
            })
            .await;
        assert!(
            matches!(r, Some(Ok(()))),
            "retried once, without the held permit"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let r = gate
            .run_within(Duration::from_millis(50), || {
                std::future::pending::<Result<(), StoreError>>()
            })
            .await;
        assert!(r.is_none(), "the deadline ends it");
    }

    #[tokio::test]
    async fn cancel_stops_waiting_for_a_permit() {
        let gate = Gate::new(1, Arc::default(), 5);
        let held = gate.sem.acquire().await.unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = gate
            .run(&cancel, || async { Ok::<_, StoreError>(()) })
            .await;
        assert!(matches!(r, Err(TransferError::Cancelled(_))));
        drop(held);
    }

    /// A request sent before the cancel: `run` drops it; `run_to_reply` waits for its reply
    /// within the grace, and not beyond.
    #[tokio::test]
    async fn a_request_run_to_its_reply_outlives_the_cancel_by_the_grace_only() {
        let gate = Gate::new(4, Arc::default(), 0);
        let reply_after = |d: Duration| {
            move || async move {
                tokio::time::sleep(d).await;
                Ok::<_, StoreError>("upload-id")
            }
        };
        let cancelled_soon = || {
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c.cancel();
            });
            cancel
        };
        let slow = Duration::from_millis(200);
        let r = gate.run(&cancelled_soon(), reply_after(slow)).await;
        assert!(matches!(r, Err(TransferError::Cancelled(_))), "{r:?}");
        let r = gate
            .run_to_reply(&cancelled_soon(), Duration::from_secs(5), reply_after(slow))
            .await;
        assert_eq!(r.unwrap(), "upload-id");
        let started = Instant::now();
        let r = gate
            .run_to_reply(
                &cancelled_soon(),
                Duration::from_millis(50),
                reply_after(slow),
            )
            .await;
        assert!(matches!(r, Err(TransferError::Cancelled(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "waited past the grace"
        );
    }
}
