//! What a transfer job needs before it starts: the store, the shared limiters, the gate, the
//! known-present index.

use std::sync::Arc;

use crate::config::Settings;
use crate::progress::Progress;
use crate::store::{self, OpenStoreError};
use crate::transfer::Transfer;
use crate::transfer::gate::Gate;
use crate::transfer::known_present::KnownPresent;
use crate::transfer::limiter::Bandwidth;

/// Opens `url` and builds the transfer context of one job. `bandwidth` is shared by every job
/// of the process (the daemon passes its own).
pub async fn transfer_for(
    url: &str,
    settings: &Settings,
    bandwidth: Arc<Bandwidth>,
    progress: Arc<Progress>,
) -> Result<Arc<Transfer>, OpenStoreError> {
    let store = store::open(url, settings, bandwidth).await?;
    let gate = Arc::new(Gate::new(
        settings.s3.max_connections,
        store.throttle_signal(),
        settings.s3.retry_attempts,
    ));
    let known = KnownPresent::open_for(settings).await;
    Ok(Arc::new(Transfer::new(
        store, settings, gate, progress, known,
    )))
}
