//! Multipart uploads a run that is gone left open where this machine keeps no record of them:
//! another machine's (a shared project submitted again from another workstation, a task's
//! outputs retried on another worker), or this machine's under another `cache.dir` (the
//! daemon's and a user's CLI). Found by listing the key's open uploads; one whose start and
//! every part are older than `transfer.take_over_after` (30 minutes) is taken as abandoned,
//! and the next upload of the same content takes it over (see `upload::resumable`) rather
//! than sending every part again.
//!
//! Why idle: a store does not say whether an uploader is still at work. A live upload lands a
//! part every few seconds (8 MiB by default); one idle for half an hour is not coming back, and
//! should it come back, both send the same bytes (the key is their hash): whichever completes
//! first stores the object, and the other finds it stored.
//!
//! The same rule holds the other way ([`taken_over_since`]): the machine that left an upload
//! does not abort it, when its time to resume it has passed, while a part landed in it within
//! that time since it left it: another machine has taken it over and is at work.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::open_uploads::LeftAs;
use super::{Transfer, TransferError};
use crate::clock::now_ms;
use crate::config::TransferSettings;
use crate::jobs::Cancelled;
use crate::store::UploadedPart;

/// How recently a part must have landed in an upload this machine left for it to be spared
/// as another machine's: `transfer.take_over_after`, the time the machines take one over
/// after (as a farm's machines share their settings), or its default where this machine takes
/// none over.
pub fn spare_window(settings: &TransferSettings) -> Duration {
    match settings.take_over_after.0 {
        d if d.is_zero() => TransferSettings::default().take_over_after.0,
        d => d,
    }
}

/// An abandoned open upload of `key` in `t`'s store that no record on this machine names, with
/// the parts it holds (the one holding the most bytes, when there are several); `None` when
/// there is none, or the store cannot list them (a store without ListMultipartUploads, a
/// policy without `s3:ListBucketMultipartUploads`: then it is not asked again).
pub async fn find(
    t: &Transfer,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Option<(String, Vec<UploadedPart>)>, Cancelled> {
    let idle_for = t.settings.take_over_after.0;
    if idle_for.is_zero() || !t.lists_open_uploads.load(Relaxed) {
        return Ok(None);
    }
    let uploads = match t
        .gate
        .run(cancel, || t.store.list_multipart_uploads(key))
        .await
    {
        Ok(uploads) => uploads,
        Err(TransferError::Cancelled(c)) => return Err(c),
        Err(e) => {
            if !matches!(&e, TransferError::Store(e) if e.is_retryable()) {
                t.lists_open_uploads.store(false, Relaxed);
            }
            tracing::debug!(
                key,
                "cannot list the open uploads of the key ({e}); none is taken over"
            );
            return Ok(None);
        }
    };
    let mut candidates: Vec<_> = uploads.into_iter().filter(|u| u.key == key).collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let (o, store) = (t.open_uploads.clone(), t.store.identity());
    let recorded = crate::logging::job_warnings::spawn_blocking(move || o.upload_ids(&store))
        .await
        .expect("reading the open-upload records panicked");
    let now_ms = now_ms();
    let idle = |ms: Option<i64>| idle_at(now_ms, ms, idle_for);
    candidates.retain(|u| {
        idle(u.initiated_ms)
            && !recorded.running.contains(&u.upload_id)
            && !recorded.left.contains_key(&u.upload_id)
    });
    let mut best: Option<(String, Vec<UploadedPart>)> = None;
    let bytes = |parts: &[UploadedPart]| parts.iter().map(|p| p.size).sum::<u64>();
    for u in candidates {
        let parts = match t
            .gate
            .run(cancel, || t.store.list_parts(key, &u.upload_id))
            .await
        {
            Ok(Some(parts)) => parts,
            Ok(None) => continue, // completed or aborted meanwhile
            Err(TransferError::Cancelled(c)) => return Err(c),
            Err(e) => {
                tracing::debug!(key, upload_id = u.upload_id, "cannot list its parts ({e})");
                continue;
            }
        };
        if parts.iter().all(|p| idle(p.last_modified_ms))
            && best.as_ref().is_none_or(|(_, b)| bytes(&parts) > bytes(b))
        {
            best = Some((u.upload_id, parts));
        }
    }
    Ok(best)
}

/// Whether another uploader is at work on an upload this machine left (`left_as`): one of
/// its parts landed less than `window` ([`spare_window`]) ago, and more than [`slack`] after
/// this machine's run stopped. Never for one this machine gave up. A part whose time the
/// store does not say is not counted.
pub fn taken_over_since(parts: &[UploadedPart], left_as: LeftAs, window: Duration) -> bool {
    let Some(at) = left_as.stopped_at() else {
        return false;
    };
    let after_ms = (at as i64)
        .saturating_mul(1000)
        .saturating_add(slack(window).as_millis() as i64);
    let within_ms = now_ms().saturating_sub(window.as_millis() as i64);
    landed_after(parts, after_ms.max(within_ms))
}

/// Whether a part of `parts` landed after `ms` (milliseconds since the epoch). A part whose
/// time the store does not say is not counted.
pub fn landed_after(parts: &[UploadedPart], ms: i64) -> bool {
    parts
        .iter()
        .any(|p| p.last_modified_ms.is_some_and(|landed| landed > ms))
}

/// How long after a run stopped (kept its upload open, or last beat before a crash) a part
/// that lands in its upload is still taken as the run's own: a part in flight may land a
/// little later, and the store's clock may be off this machine's. 5 minutes, less than
/// `window`: another machine's parts come later still, as it takes an upload over only once
/// it has been idle that long.
fn slack(window: Duration) -> Duration {
    Duration::from_secs(5 * 60).min(window / 2)
}

/// Whether a time the store gave (milliseconds since the epoch) is `idle_for` or more before
/// `now_ms`; a time it does not say is not known to be old.
fn idle_at(now_ms: i64, ms: Option<i64>, idle_for: Duration) -> bool {
    ms.is_some_and(|ms| now_ms - ms >= idle_for.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ago: Option<Duration>) -> UploadedPart {
        UploadedPart {
            number: 1,
            size: 1,
            etag: "\"e\"".into(),
            last_modified_ms: ago.map(|d| now_ms() - d.as_millis() as i64),
        }
    }

    #[test]
    fn an_upload_is_taken_over_while_a_part_landed_within_the_idle_time_after_it_was_left() {
        let min = Duration::from_secs(60);
        let window = 30 * min;
        let taken = |parts: &[UploadedPart], left_as| taken_over_since(parts, left_as, window);
        let at = |ago: Duration| (now_ms() / 1000) as u64 - ago.as_secs();
        // Crashed 40 minutes ago (its last heartbeat).
        let crashed = LeftAs::Crashed { at: at(40 * min) };
        assert!(taken(&[part(Some(40 * min)), part(Some(min))], crashed));
        assert!(!taken(
            &[part(Some(40 * min)), part(Some(31 * min))],
            crashed
        ));
        assert!(!taken(&[], crashed), "no part: nobody is at work");
        assert!(
            !taken(&[part(None)], crashed),
            "a time the store does not say is not taken as recent"
        );
        // Kept by a failure 2 minutes ago: a part of a minute ago is the failed run's own
        // (one in flight); kept 20 minutes ago, it is another machine's.
        let kept = |ago: Duration| LeftAs::Kept { at: at(ago) };
        assert!(!taken(&[part(Some(min))], kept(2 * min)));
        assert!(taken(&[part(Some(min))], kept(20 * min)));
        // A crash the same: its last heartbeat 2 minutes ago, a part of a minute ago is its
        // own (`attache cleanup` right after a crash aborts its upload).
        let crash = |ago: Duration| LeftAs::Crashed { at: at(ago) };
        assert!(!taken(&[part(Some(min))], crash(2 * min)));
        assert!(taken(&[part(Some(min))], crash(20 * min)));
        assert!(!taken(&[part(Some(min))], LeftAs::GivenUp));
        // A farm that takes uploads over after 2 minutes: within a minute of that.
        let short = |parts: &[UploadedPart], left_as| taken_over_since(parts, left_as, 2 * min);
        let secs = Duration::from_secs;
        assert!(short(&[part(Some(secs(10)))], kept(2 * min)));
        assert!(!short(&[part(Some(secs(10)))], kept(secs(30))));
        assert!(!short(&[part(Some(3 * min))], crashed), "idle again");
    }

    #[test]
    fn the_spare_window_is_the_take_over_time_or_its_default_where_none_is_taken_over() {
        let mut s = TransferSettings::default();
        assert_eq!(spare_window(&s), Duration::from_secs(30 * 60));
        s.take_over_after = crate::config::Duration::secs(120);
        assert_eq!(spare_window(&s), Duration::from_secs(120));
        s.take_over_after = crate::config::Duration::secs(0);
        assert_eq!(spare_window(&s), Duration::from_secs(30 * 60));
    }
}
