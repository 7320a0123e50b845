//! `GET /metrics`: Prometheus text of what the daemon did and is doing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::registry::{JobState, Registry};
use super::shared::Shared;
use crate::jobs::spec::JobOutput;
use crate::transfer::open_uploads::OpenUploads;

#[derive(Default)]
pub struct Metrics {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    /// Stopped by the daemon's shutdown (not by a user's cancel).
    interrupted: AtomicU64,
    bytes_up: AtomicU64,
    objects_up: AtomicU64,
    bytes_resumed: AtomicU64,
    bytes_down: AtomicU64,
    objects_down: AtomicU64,
    bytes_down_kept: AtomicU64,
    bytes_content_cache: AtomicU64,
    known_present_hits: AtomicU64,
    hash_cache_hits: AtomicU64,
    files_hashed: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// By job kind: how long jobs waited for a slot, how long those that succeeded ran.
    queued: Mutex<BTreeMap<&'static str, Histogram>>,
    ran: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// Upper bounds of the job-time histograms, in seconds: from a warm sync (tenths of a second)
/// to a night's submission.
const BUCKETS: [f64; 11] = [
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
];

/// A Prometheus histogram of durations: how many fell at or under each bound, their count and
/// their sum.
#[derive(Default, Clone)]
struct Histogram {
    at_most: [u64; BUCKETS.len()],
    count: u64,
    sum: Duration,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (n, bound) in self.at_most.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += d;
    }

    /// The text lines of `attache_{name}` for the histograms of each kind.
    fn render(o: &mut String, name: &str, help: &str, by_kind: &BTreeMap<&'static str, Histogram>) {
        let _ = writeln!(
            o,
            "# HELP attache_{name} {help}\n# TYPE attache_{name} histogram"
        );
        for (kind, h) in by_kind {
            for (n, bound) in h.at_most.iter().zip(BUCKETS) {
                let _ = writeln!(
                    o,
                    "attache_{name}_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "attache_{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "attache_{name}_sum{{kind=\"{kind}\"}} {}",
                h.sum.as_secs_f64()
            );
            let _ = writeln!(o, "attache_{name}_count{{kind=\"{kind}\"}} {}", h.count);
        }
    }
}

impl Metrics {
    /// A job of `kind` starts, after waiting `queued` for a slot.
    pub fn job_started(&self, kind: &'static str, queued: Duration) {
        self.started.fetch_add(1, Relaxed);
        let mut by_kind = self.queued.lock().expect("not poisoned");
        by_kind.entry(kind).or_default().observe(queued);
    }

    /// A job of `kind` succeeded after running `ran`.
    pub fn job_succeeded(&self, kind: &'static str, ran: Duration) {
        let mut by_kind = self.ran.lock().expect("not poisoned");
        by_kind.entry(kind).or_default().observe(ran);
    }

    pub fn job_finished(&self, state: JobState) {
        match state {
            JobState::Succeeded => &self.succeeded,
            JobState::Cancelled => &self.cancelled,
            JobState::Interrupted => &self.interrupted,
            _ => &self.failed,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        if ok {
            &self.reloads
        } else {
            &self.reload_failures
        }
        .fetch_add(1, Relaxed);
    }

    /// Adds a finished job's transfer counters.
    pub fn count_output(&self, out: &JobOutput) {
        let upload = |u: &crate::transfer::upload::UploadReport,
                      h: &crate::hash::parallel::HashStats| {
            self.bytes_up.fetch_add(u.uploaded_bytes, Relaxed);
            self.objects_up.fetch_add(u.uploaded_objects, Relaxed);
            self.bytes_resumed.fetch_add(u.resumed_bytes, Relaxed);
            self.known_present_hits.fetch_add(u.known_objects, Relaxed);
            self.hash_cache_hits.fetch_add(h.cached_files, Relaxed);
            self.files_hashed.fetch_add(h.hashed_files, Relaxed);
        };
        let download = |d: &crate::transfer::download::DownloadReport| {
            self.bytes_down.fetch_add(d.downloaded_bytes, Relaxed);
            self.objects_down.fetch_add(d.objects, Relaxed);
            self.bytes_down_kept.fetch_add(d.resumed_bytes, Relaxed);
            self.bytes_content_cache
                .fetch_add(d.content_cache_bytes, Relaxed);
        };
        match out {
            JobOutput::Submit(r) => r.roots.iter().for_each(|root| {
                if let Some(u) = &root.upload {
                    upload(u, &root.hash);
                }
            }),
            JobOutput::SyncInputs(r) => r
                .roots
                .iter()
                .for_each(|root| download(&root.report.download)),
            JobOutput::SyncOutputs(r) => r
                .roots
                .iter()
                .for_each(|root| upload(&root.upload, &root.hash)),
            JobOutput::DownloadOutputs(r) => r
                .roots
                .iter()
                .for_each(|root| download(&root.report.download)),
            JobOutput::Doctor(_) => {}
        }
    }

    pub async fn render(&self, registry: &Registry, shared: &Shared) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(
                o,
                "# HELP attache_{name} {help}\n# TYPE attache_{name} {kind}"
            );
            for (labels, v) in samples {
                let _ = writeln!(o, "attache_{name}{labels} {v}");
            }
        };
        let one = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        metric(
            "jobs_active",
            "gauge",
            "Jobs queued or running.",
            &[(String::new(), registry.active() as u64)],
        );
        metric(
            "jobs_queued",
            "gauge",
            "Jobs waiting for a slot (daemon.max_running_jobs).",
            &[(String::new(), registry.queued() as u64)],
        );
        metric(
            "jobs_finished_total",
            "counter",
            "Jobs finished, by state.",
            &[
                ("{state=\"succeeded\"}".into(), self.succeeded.load(Relaxed)),
                ("{state=\"failed\"}".into(), self.failed.load(Relaxed)),
                ("{state=\"cancelled\"}".into(), self.cancelled.load(Relaxed)),
                (
                    "{state=\"interrupted\"}".into(),
                    self.interrupted.load(Relaxed),
                ),
            ],
        );
        metric(
            "jobs_started_total",
            "counter",
            "Jobs started.",
            &one(&self.started),
        );
        metric(
            "uploaded_bytes_total",
            "counter",
            "Content bytes uploaded (finished jobs).",
            &one(&self.bytes_up),
        );
        metric(
            "uploaded_objects_total",
            "counter",
            "Content objects uploaded (finished jobs).",
            &one(&self.objects_up),
        );
        metric(
            "resumed_bytes_total",
            "counter",
            "Bytes of resumed multipart uploads the store already held, not sent again (finished jobs).",
            &one(&self.bytes_resumed),
        );
        metric(
            "downloaded_bytes_total",
            "counter",
            "Content bytes downloaded (finished jobs).",
            &one(&self.bytes_down),
        );
        metric(
            "downloaded_objects_total",
            "counter",
            "Content objects downloaded (finished jobs).",
            &one(&self.objects_down),
        );
        metric(
            "download_resumed_bytes_total",
            "counter",
            "Bytes of large objects an interrupted download had fetched, kept on this machine and not fetched again (finished jobs).",
            &one(&self.bytes_down_kept),
        );
        metric(
            "content_cache_bytes_total",
            "counter",
            "Content bytes copied from the local content cache instead of downloaded (finished jobs).",
            &one(&self.bytes_content_cache),
        );
        metric(
            "known_present_hits_total",
            "counter",
            "Objects skipped without a request.",
            &one(&self.known_present_hits),
        );
        metric(
            "hash_cache_hits_total",
            "counter",
            "Files whose hash came from the hash cache.",
            &one(&self.hash_cache_hits),
        );
        metric(
            "files_hashed_total",
            "counter",
            "Files read and hashed.",
            &one(&self.files_hashed),
        );
        // One sample per direction of the shared limiters.
        let by_direction = |f: fn(&crate::transfer::limiter::Limiter) -> u64| {
            [
                (
                    "{direction=\"upload\"}".to_string(),
                    f(&shared.bandwidth.upload),
                ),
                (
                    "{direction=\"download\"}".to_string(),
                    f(&shared.bandwidth.download),
                ),
            ]
        };
        metric(
            "limiter_wait_milliseconds_total",
            "counter",
            "Time transfers waited on the bandwidth limit.",
            &by_direction(|l| l.waited().as_millis() as u64),
        );
        metric(
            "transferred_bytes_total",
            "counter",
            "Data bytes sent and received as they go, running jobs' included (a part or object sent again counts again): rate() shows the throughput while long jobs run, where uploaded_bytes_total and downloaded_bytes_total move when a job ends.",
            &by_direction(|l| l.passed()),
        );
        metric(
            "bandwidth_limit_bytes_per_second",
            "gauge",
            "The bandwidth limit in force (0: unlimited): the config's, its timetable's, or one set by `attache bwlimit`.",
            &by_direction(|l| l.rate().0),
        );
        let gates = shared.gates().await;
        // One sample per store, labelled by its identity (URL, region, endpoint: one bucket
        // name at two endpoints is two stores). A store with several clients (a reload changed
        // the [s3] settings) sums their counters and shows its newest client's gauge: a label
        // set given twice would make Prometheus reject the scrape.
        let per_store =
            |f: &dyn Fn(&crate::transfer::gate::Gate, &dyn crate::store::ObjectStore) -> u64,
             counter: bool|
             -> Vec<(String, u64)> {
                let mut by_store = std::collections::BTreeMap::<&str, u64>::new();
                for (identity, s, g) in &gates {
                    let v = f(g, s.as_ref());
                    let total = by_store.entry(identity).or_default();
                    *total = if counter { *total + v } else { v };
                }
                by_store
                    .into_iter()
                    .map(|(identity, v)| (format!("{{store=\"{}\"}}", label_value(identity)), v))
                    .collect()
            };
        metric(
            "retries_total",
            "counter",
            "Store requests retried by attache.",
            &per_store(&|g, _| g.retries.load(Relaxed), true),
        );
        metric(
            "throttled_total",
            "counter",
            "503 SlowDown replies from the store.",
            &per_store(&|_, s| s.throttle_signal().load(Relaxed), true),
        );
        metric(
            "backoffs_total",
            "counter",
            "Times concurrency was halved for throttling.",
            &per_store(&|g, _| g.backoffs.load(Relaxed), true),
        );
        metric(
            "requests_limit",
            "gauge",
            "Requests allowed in flight now.",
            &per_store(&|g, _| g.limit() as u64, false),
        );
        // The daemon's records of multipart uploads (its cache dir), read off the runtime: a
        // count that keeps growing in `to_abort` is billed storage nothing is cleaning up.
        let settings = shared.settings();
        let open = tokio::task::spawn_blocking(move || {
            OpenUploads::new(&settings.cache.dir).tally(settings.transfer.resume_for.0)
        })
        .await
        .unwrap_or_default();
        metric(
            "open_uploads",
            "gauge",
            "Multipart uploads recorded open in the daemon's cache dir: running, kept to resume (within transfer.resume_for), to abort (by the next upload to the store, or `attache cleanup`).",
            &[
                ("{state=\"running\"}".into(), open.running),
                ("{state=\"kept\"}".into(), open.kept),
                ("{state=\"to_abort\"}".into(), open.to_abort),
            ],
        );
        metric(
            "config_reloads_total",
            "counter",
            "Config reloads applied.",
            &one(&self.reloads),
        );
        metric(
            "config_reload_failures_total",
            "counter",
            "Config reloads refused (the old config stayed).",
            &one(&self.reload_failures),
        );
        let queued = self.queued.lock().expect("not poisoned").clone();
        Histogram::render(
            &mut o,
            "job_queued_seconds",
            "Time jobs waited for a slot (daemon.max_running_jobs) before they started, by kind.",
            &queued,
        );
        let ran = self.ran.lock().expect("not poisoned").clone();
        Histogram::render(
            &mut o,
            "job_duration_seconds",
            "Time succeeded jobs ran, from start to result, by kind.",
            &ran,
        );
        o
    }
}

/// `v` as a Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_duration_under_every_bound_it_fits() {
        let mut h = Histogram::default();
        for secs in [0.05, 2.0, 7200.0, 90_000.0] {
            h.observe(Duration::from_secs_f64(secs));
        }
        let mut o = String::new();
        Histogram::render(&mut o, "t", "help", &BTreeMap::from([("submit", h)]));
        for line in [
            "# TYPE attache_t histogram",
            "attache_t_bucket{kind=\"submit\",le=\"0.1\"} 1",
            "attache_t_bucket{kind=\"submit\",le=\"1\"} 1",
            "attache_t_bucket{kind=\"submit\",le=\"5\"} 2",
            "attache_t_bucket{kind=\"submit\",le=\"3600\"} 2",
            "attache_t_bucket{kind=\"submit\",le=\"14400\"} 3",
            "attache_t_bucket{kind=\"submit\",le=\"43200\"} 3",
            "attache_t_bucket{kind=\"submit\",le=\"+Inf\"} 4",
            "attache_t_sum{kind=\"submit\"} 97202.05",
            "attache_t_count{kind=\"submit\"} 4",
        ] {
            assert!(o.lines().any(|l| l == line), "{line}:\n{o}");
        }
    }

    #[test]
    fn a_label_value_escapes_what_would_end_or_break_it() {
        assert_eq!(
            label_value("s3://b/a\"b\\c\nd region=r"),
            "s3://b/a\\\"b\\\\c\\nd region=r"
        );
    }
}
