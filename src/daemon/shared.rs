//! What every job of the daemon shares: the settings (swapped whole on reload), one bandwidth
//! limiter per direction (and the limits set by hand, see daemon::bandwidth), and per store
//! one client (one connection pool) and one request gate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::progress::Progress;
use crate::store::{self, ObjectStore, OpenStoreError};
use crate::transfer::Transfer;
use crate::transfer::gate::Gate;
use crate::transfer::inflight::InFlight;
use crate::transfer::known_present::KnownPresent;
use crate::transfer::limiter::Bandwidth;

/// A store's client with the gate its jobs share, and its place in the order they were opened.
type StoreEntry = (Arc<dyn ObjectStore>, Arc<Gate>, usize);

pub struct Shared {
    settings: ArcSwap<Settings>,
    pub bandwidth: Arc<Bandwidth>,
    /// Keyed by store URL and the S3 settings it was opened with: a reload that changes the
    /// endpoint or the pool opens a new client for new jobs; jobs in flight keep theirs.
    stores: tokio::sync::Mutex<HashMap<String, StoreEntry>>,
    known: Mutex<Option<Arc<KnownPresent>>>,
    /// Objects some job is transferring right now: another job needing one waits for it.
    inflight: Arc<InFlight>,
    /// Bandwidth limits set by hand, over the config's (see daemon::bandwidth).
    pub(super) set_limits: Mutex<Option<super::bandwidth::SetLimits>>,
}

impl Shared {
    pub fn new(settings: Settings) -> Shared {
        Shared {
            bandwidth: Arc::new(Bandwidth::new(&settings.bandwidth)),
            settings: ArcSwap::from_pointee(settings),
            stores: Default::default(),
            known: Mutex::new(None),
            inflight: Arc::default(),
            set_limits: Mutex::new(None),
        }
    }

    /// The settings in force now; a job keeps the snapshot it started with.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Applies reloaded settings: bandwidth at once (unless limits set by hand are in force),
    /// everything else for new jobs.
    pub fn apply(&self, new: Settings) {
        *self.known.lock().expect("not poisoned") = None;
        self.settings.store(Arc::new(new));
        self.apply_bandwidth();
    }

    /// (store identity, client, gate) of every client opened so far, oldest first, for
    /// metrics. A reload that changes the [s3] settings opens a second client for a store.
    pub async fn gates(&self) -> Vec<(String, Arc<dyn ObjectStore>, Arc<Gate>)> {
        let mut entries: Vec<StoreEntry> = self.stores.lock().await.values().cloned().collect();
        entries.sort_by_key(|e| e.2);
        entries
            .into_iter()
            .map(|(s, g, _)| (s.identity(), s, g))
            .collect()
    }

    /// A transfer context for one job on `url`, sharing the store client, gate and limiters.
    pub async fn transfer_for(
        &self,
        url: &str,
        settings: &Settings,
        progress: Arc<Progress>,
    ) -> Result<Arc<Transfer>, OpenStoreError> {
        let key = client_key(url, &settings.s3);
        let (store, gate) = {
            let mut stores = self.stores.lock().await;
            match stores.get(&key) {
                Some((store, gate, _)) => (store.clone(), gate.clone()),
                None => {
                    let store = store::open(url, settings, self.bandwidth.clone()).await?;
                    let gate = Arc::new(Gate::new(
                        settings.s3.max_connections,
                        store.throttle_signal(),
                        settings.s3.retry_attempts,
                    ));
                    // Entries are never removed: the count so far orders them.
                    let opened = stores.len();
                    stores.insert(key, (store.clone(), gate.clone(), opened));
                    (store, gate)
                }
            }
        };
        let mut transfer = Transfer::new(
            store,
            settings,
            gate,
            progress,
            self.known_present(settings).await,
        );
        transfer.inflight = Some(self.inflight.clone());
        Ok(Arc::new(transfer))
    }

    async fn known_present(&self, settings: &Settings) -> Option<Arc<KnownPresent>> {
        if !settings.cache.hash_cache {
            return None;
        }
        if let Some(known) = self.known.lock().expect("not poisoned").clone() {
            return Some(known);
        }
        // No lock held while it opens: a locked index must not hold the other jobs. Two jobs
        // opening it at once keep the first.
        let opened = KnownPresent::open_for(settings).await?;
        let mut known = self.known.lock().expect("not poisoned");
        // Kept only if opened with the settings in force: not past a reload since the job
        // started (which may move the cache or change the TTL).
        if std::ptr::eq(&*self.settings(), settings) {
            return Some(known.get_or_insert(opened).clone());
        }
        Some(opened)
    }
}

/// Which store client a job shares: one per URL and `[s3]` settings. Secrets serialize as
/// `<redacted>`, so their hash joins the key: a secret key or proxy password rotated by a
/// reload opens a new client instead of keeping the old (perhaps revoked) one.
fn client_key(url: &str, s3: &crate::config::S3Settings) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for secret in [&s3.secret_access_key, &s3.session_token, &s3.proxy] {
        h.update(secret.as_ref().map_or("", |s| s.expose()).as_bytes());
        h.update(&[0]);
    }
    format!(
        "{url}\n{}\n{:032x}",
        serde_json::to_string(s3).unwrap_or_default(),
        h.digest128()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{S3Settings, Secret};

    #[test]
    fn a_rotated_secret_is_another_client() {
        let old = S3Settings {
            secret_access_key: Some(Secret::new("old")),
            ..S3Settings::default()
        };
        let new = S3Settings {
            secret_access_key: Some(Secret::new("new")),
            ..S3Settings::default()
        };
        assert_eq!(
            client_key("s3://b/p", &old),
            client_key("s3://b/p", &old.clone())
        );
        assert_ne!(client_key("s3://b/p", &old), client_key("s3://b/p", &new));
        assert!(!client_key("s3://b/p", &old).contains("old"));
    }
}
