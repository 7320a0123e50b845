//! A request body's bytes counted into a transfer's progress as they go out, so that an
//! upload held back by a bandwidth limit or a slow link shows its bytes moving, instead of
//! a jump when each file or part is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::progress::Progress;

/// The bytes of one body counted so far. A retry sends the body again from its start: only
/// what goes past the furthest point an attempt reached is counted.
#[derive(Debug)]
pub struct SentBytes {
    progress: Arc<Progress>,
    /// Also counts into this (a multipart upload's whole count, taken back if it restarts).
    also: Option<Arc<AtomicU64>>,
    reported: AtomicU64,
}

impl SentBytes {
    pub fn new(progress: Arc<Progress>) -> SentBytes {
        SentBytes {
            progress,
            also: None,
            reported: AtomicU64::new(0),
        }
    }

    /// Counting also into `also`.
    pub fn also_into(progress: Arc<Progress>, also: Arc<AtomicU64>) -> SentBytes {
        SentBytes {
            also: Some(also),
            ..SentBytes::new(progress)
        }
    }

    /// The body went out up to `end` bytes from its start.
    pub fn sent_up_to(&self, end: u64) {
        let before = self.reported.fetch_max(end, Relaxed);
        if end > before {
            self.progress.add_bytes(end - before);
            if let Some(also) = &self.also {
                also.fetch_add(end - before, Relaxed);
            }
        }
    }

    /// The bytes counted so far.
    pub fn reported(&self) -> u64 {
        self.reported.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_counts_only_past_the_furthest_point_reached() {
        let progress = Arc::new(Progress::default());
        let total = Arc::new(AtomicU64::new(0));
        let sent = SentBytes::also_into(progress.clone(), total.clone());
        sent.sent_up_to(100);
        sent.sent_up_to(250);
        // The retry, from the start.
        sent.sent_up_to(100);
        sent.sent_up_to(300);
        assert_eq!(sent.reported(), 300);
        assert_eq!(progress.snapshot().bytes_done, 300);
        assert_eq!(total.load(Relaxed), 300);
    }
}
