//! Work in flight across jobs: when two jobs of the daemon need the same object at once, the
//! first transfers it and the second waits for that instead of transferring it again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::hash::ContentHash;

/// What became of a transfer another job was waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Uploaded (or found present): the object is in the store.
    Stored,
    /// Downloaded and verified at this path.
    Placed(PathBuf),
    /// Failed or cancelled: do it yourself.
    Failed,
}

type Key = (String, ContentHash, bool);

#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<Key, watch::Receiver<Option<Done>>>>,
}

/// Either this job does the work (and reports through the guard), or another job already is.
pub enum Claim {
    Mine(Guard),
    Theirs(watch::Receiver<Option<Done>>),
}

/// Held by the job doing the work; dropping it without [`Guard::done`] reports a failure.
pub struct Guard {
    owner: Arc<InFlight>,
    key: Key,
    tx: watch::Sender<Option<Done>>,
    reported: bool,
}

impl InFlight {
    /// Claims the upload (`download == false`) or download of `hash` in `store`.
    pub fn claim(self: &Arc<Self>, store: &str, hash: ContentHash, download: bool) -> Claim {
        let key = (store.to_string(), hash, download);
        let mut map = self.map.lock().expect("not poisoned");
        if let Some(rx) = map.get(&key)
            && rx.borrow().is_none()
        {
            return Claim::Theirs(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Claim::Mine(Guard {
            owner: self.clone(),
            key,
            tx,
            reported: false,
        })
    }
}

impl Guard {
    pub fn done(mut self, outcome: Done) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Done) {
        self.reported = true;
        let _ = self.tx.send(Some(outcome));
        self.owner
            .map
            .lock()
            .expect("not poisoned")
            .remove(&self.key);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(Done::Failed);
        }
    }
}

/// Waits for another job's outcome (`Failed` if it went away without one).
pub async fn wait(mut rx: watch::Receiver<Option<Done>>) -> Done {
    loop {
        if let Some(d) = rx.borrow().clone() {
            return d;
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone().unwrap_or(Done::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_second_claim_waits_for_the_first() {
        let f = Arc::new(InFlight::default());
        let h = ContentHash::of(b"x");
        let Claim::Mine(guard) = f.claim("s", h, false) else {
            panic!()
        };
        let Claim::Theirs(rx) = f.claim("s", h, false) else {
            panic!()
        };
        assert!(
            matches!(f.claim("s", h, true), Claim::Mine(_)),
            "downloads are separate"
        );
        let waiter = tokio::spawn(wait(rx));
        guard.done(Done::Stored);
        assert_eq!(waiter.await.unwrap(), Done::Stored);
        assert!(
            matches!(f.claim("s", h, false), Claim::Mine(_)),
            "finished work is not waited on"
        );
    }

    #[tokio::test]
    async fn a_dropped_claim_reports_failure() {
        let f = Arc::new(InFlight::default());
        let h = ContentHash::of(b"y");
        let Claim::Mine(guard) = f.claim("s", h, true) else {
            panic!()
        };
        let Claim::Theirs(rx) = f.claim("s", h, true) else {
            panic!()
        };
        drop(guard);
        assert_eq!(wait(rx).await, Done::Failed);
    }
}
