//! Part uploads that may still land after their request was dropped, per multipart upload,
//! so that an abort waits for them first.
//!
//! Why: a cancelled transfer drops its part requests and aborts the upload. A part whose
//! bytes had all reached the store is stored anyway, and if that happens after the abort
//! removed the upload's parts, the part outlives the abort: s3s-fs and MinIO-style stores
//! keep it forever, and AWS asks for the abort to be repeated. So a part request that can no
//! longer be stopped holds a token until its reply, and the abort waits for the tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long an abort waits for parts the store already has all the bytes of. The store
/// only has to write them, so this is a bound for a stuck store, not a usual wait.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct PartsInFlight(Mutex<HashMap<String, TaskTracker>>);

impl PartsInFlight {
    /// A token to hold while a part of `upload_id` may still be stored.
    pub fn token(&self, upload_id: &str) -> TaskTrackerToken {
        self.0
            .lock()
            .expect("not poisoned")
            .entry(upload_id.to_string())
            .or_default()
            .token()
    }

    /// Waits (at most `within`) until no part of `upload_id` (an upload of `key`) can still
    /// be stored, and forgets the upload. False, with a warning, when parts were still
    /// running at the deadline.
    pub async fn settle(&self, upload_id: &str, key: &str, within: Duration) -> bool {
        let Some(tracker) = self.0.lock().expect("not poisoned").remove(upload_id) else {
            return true;
        };
        tracker.close();
        let settled = tokio::time::timeout(within, tracker.wait()).await.is_ok();
        if !settled {
            tracing::warn!(
                "a part of {key} was still being stored {within:?} after the upload was given up; aborting anyway (the store may keep that part: repeat the abort or let a lifecycle rule remove it)"
            );
        }
        settled
    }

    /// Forgets a completed upload.
    pub fn forget(&self, upload_id: &str) {
        self.0.lock().expect("not poisoned").remove(upload_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn settle_waits_for_every_token_of_the_upload_only() {
        let parts = PartsInFlight::default();
        let late = parts.token("u1");
        let _other = parts.token("u2");
        let landed = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let landed = landed.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                landed.store(true, Ordering::SeqCst);
                drop(late);
            }
        });
        assert!(parts.settle("u1", "k", SETTLE_WITHIN).await);
        assert!(
            landed.load(Ordering::SeqCst),
            "settled before the part landed"
        );
        // Still held at the deadline (u2's token above): reported, and the abort goes on.
        assert!(!parts.settle("u2", "k", Duration::from_millis(20)).await);
        assert!(parts.settle("never-seen", "k", SETTLE_WITHIN).await);
    }
}
