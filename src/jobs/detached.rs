//! Pure work (decoding a manifest, building a lookup of it) on a thread of its own, awaited
//! unless the job is cancelled. A million-entry manifest takes a second or more to decode, and
//! the decoder cannot stop halfway; on a `spawn_blocking` thread a cancel still had to wait for
//! it, because the CLI's runtime waits for its blocking threads when it shuts down. Nothing
//! waits for these threads: a cancel returns at once and the thread finishes and drops its
//! result on its own. Only for work that writes nothing, so nothing is left half done.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Cancelled;

/// How often a blocking wait looks at the cancel token.
const POLL: Duration = Duration::from_millis(20);

/// Runs `work` on its own thread; returns its result, or `Cancelled` as soon as `cancel` fires.
pub async fn run<T: Send + 'static>(
    cancel: &CancellationToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Cancelled> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(move || {
        let _ = tx.send(work());
    });
    crate::transfer::cancellable(cancel, rx)
        .await
        .map(|r| r.expect("detached work panicked"))
}

/// Like [`run`], for a caller that is itself on a blocking thread (a hashing job).
pub fn run_blocking<T: Send + 'static>(
    cancel: &CancellationToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Cancelled> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn(move || {
        let _ = tx.send(work());
    });
    loop {
        match rx.recv_timeout(POLL) {
            Ok(v) => return Ok(v),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                return Err(Cancelled);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("detached work panicked")
            }
        }
    }
}

/// Starts `f` on a thread nothing waits for.
pub(super) fn spawn(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name("attache-detached".into())
        .spawn(f)
        .expect("cannot start a thread");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn returns_the_result_of_the_work() {
        let cancel = CancellationToken::new();
        assert_eq!(run(&cancel, || 6 * 7).await.unwrap(), 42);
        assert_eq!(run_blocking(&cancel, || "done").unwrap(), "done");
    }

    /// The work blocks until the test lets it go (or 10 s pass): the cancel must return while
    /// it still runs.
    #[tokio::test]
    async fn a_cancel_returns_without_waiting_for_the_work() {
        let cancel = CancellationToken::new();
        let (release, wait) = mpsc::channel::<()>();
        let (finished_tx, finished) = mpsc::channel::<()>();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let r = run(&cancel, move || {
            let _ = wait.recv_timeout(Duration::from_secs(10));
            let _ = finished_tx.send(());
        })
        .await;
        assert!(r.is_err(), "cancelled");
        assert!(
            finished.try_recv().is_err(),
            "returned while the work still runs"
        );
        release.send(()).unwrap();
        finished.recv().unwrap();

        let cancel = CancellationToken::new();
        let (release, wait) = mpsc::channel::<()>();
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.cancel();
        });
        let r = run_blocking(&cancel, move || wait.recv_timeout(Duration::from_secs(10)));
        assert!(r.is_err(), "returned while the work still runs");
        release.send(()).unwrap();
    }
}
