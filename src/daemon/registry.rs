//! The daemon's jobs: each a record (spec, state, progress, result or error) that is kept in
//! memory, persisted under `daemon.state_dir/jobs/` at every state change, and restored after a
//! restart (a job that was queued or running then is reported `interrupted`). Finished jobs
//! are forgotten beyond `daemon.jobs_kept` and after `daemon.jobs_kept_for` (at start, when a
//! job finishes, and every hour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::Metrics;
use super::shared::Shared;
use super::slots::{DEFAULT_PRIORITY, Slots, Turn};
use crate::fsutil::access::Caller;
use crate::jobs::spec::{JobError, JobSpec};
use crate::logging::job_warnings::Warnings;
use crate::progress::{Progress, ProgressSnapshot};
use tracing::Instrument;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (crash, restart) while the job was queued or running.
    Interrupted,
}

impl JobState {
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// The state as the API spells it: `queued`, `running`, ….
    pub fn name(self) -> String {
        let v = serde_json::to_value(self).expect("states serialize");
        v.as_str().unwrap_or_default().to_string()
    }
}

/// What the API reports about a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub state: JobState,
    pub spec: JobSpec,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub progress: ProgressSnapshot,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// The job this one runs again (`attache retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// 0 to 100: a queued job of a higher priority gets the next free slot first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// A queued job's place in the queue (1: it starts next); in the API's answers, not in
    /// the stored record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// The job that ran this one again (`attache retry`); in the API's answers, not in the
    /// stored record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<String>,
    /// For a job that failed or was interrupted: whether running it again as it is may
    /// succeed (the store unreachable or throttling, the daemon stopped), or the cause is
    /// lasting (a damaged manifest, a refused path, a full disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// The user the job acts for, when a client of another user asked for it: a retry, by
    /// whoever asks for it, acts for that user again (after a restart too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<Caller>,
    /// The warnings the job gave, as a local run prints them (the first 100; a last line
    /// counts the others): a client following it shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// Sets a queued job's `queue_position` from the queue's order.
fn place_in(queue: &[String], r: &mut JobRecord) {
    if r.state == JobState::Queued {
        r.queue_position = queue.iter().position(|id| *id == r.id).map(|i| i + 1);
    }
}

/// Why a job's priority cannot be changed.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("job {id} is not queued ({state}): only a queued job's priority can be changed")]
    NotQueued { id: String, state: String },
}

/// Why a job cannot be run again.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("job {id} {what}: only a failed, cancelled or interrupted job is run again")]
    NotRetryable { id: String, what: &'static str },
    #[error(
        "job {id} was already run again as {by} ({state}); retry that one if it did not succeed"
    )]
    AlreadyRetried {
        id: String,
        by: String,
        state: String,
    },
    #[error(transparent)]
    Job(#[from] JobError),
}

pub struct Job {
    record: Mutex<JobRecord>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    /// The client that asked for the job, when it is another user: the job reads and writes
    /// only what that user could.
    caller: Option<Arc<Caller>>,
    /// Bumped at every state change, so event streams wake at once.
    changed: watch::Sender<u64>,
    /// What the job warned of so far.
    warnings: Warnings,
}

impl Job {
    /// The record with live progress.
    pub fn snapshot(&self) -> JobRecord {
        let mut r = self.record.lock().expect("not poisoned").clone();
        if !r.state.is_final() {
            r.progress = self.progress.snapshot();
            r.warnings = self.warnings.lines();
        }
        r
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a client of `user` may see and change this job. `None`: the daemon's own user,
    /// root or the TCP listener's token holder, who may act on every job; another user, only
    /// on the jobs that act for them (a job's paths are theirs to see, its cancel theirs).
    pub fn is_for(&self, user: Option<&Caller>) -> bool {
        user.is_none_or(|u| self.caller.as_ref().is_some_and(|c| c.uid == u.uid))
    }
}

pub struct Registry {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    dir: PathBuf,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    /// Parent of every job's token: cancelling it stops everything (shutdown).
    root: CancellationToken,
    tracker: TaskTracker,
    /// One slot per job allowed to run at once (`daemon.max_running_jobs`); the others wait
    /// queued, by priority, then in the order they came.
    slots: Arc<Slots>,
    /// Held while a job is retried (see [`Registry::retry`]).
    retrying: Mutex<()>,
}

/// A span between two record times (never negative: the clock may have been set back).
fn ms(span: i64) -> Duration {
    Duration::from_millis(span.max(0) as u64)
}

/// Now, in milliseconds since the epoch: the unit of a job record's times.
pub use crate::clock::now_ms;

impl Registry {
    /// Opens the job records under `state_dir`, marking jobs that were still queued or running
    /// as interrupted.
    pub fn open(
        state_dir: &Path,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Registry>> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir)?;
        // The records hold every job's paths and results: the daemon's alone, as the API
        // shows another user only its own jobs.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let mut record: JobRecord = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!(file = %path.display(), "unreadable job record; ignoring it");
                    continue;
                }
            };
            if !record.state.is_final() {
                record.state = JobState::Interrupted;
                record.retryable = Some(true);
                record.error = Some(format!(
                    "the daemon stopped while this job was running; `attache retry {}` runs it again",
                    record.id
                ));
                // It ended when its record was last saved (its progress is that save's), not
                // now: how long it ran leaves out the time the daemon was down.
                let saved = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64);
                let since = record.started_ms.unwrap_or(record.created_ms);
                record.finished_ms = Some(saved.unwrap_or_else(now_ms).max(since));
                write_record(&dir, &record);
            }
            let (changed, _) = watch::channel(0);
            let job = Job {
                record: Mutex::new(record.clone()),
                progress: Arc::default(),
                cancel: CancellationToken::new(),
                caller: record.run_as.clone().map(Arc::new),
                changed,
                warnings: Warnings::default(),
            };
            jobs.insert(record.id.clone(), Arc::new(job));
        }
        let slots = Slots::new(shared.settings().daemon.max_running_jobs);
        let registry = Registry {
            jobs: Mutex::new(jobs),
            dir,
            shared,
            metrics,
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            slots,
            retrying: Mutex::new(()),
        };
        registry.forget_old_jobs();
        Ok(Arc::new(registry))
    }

    /// Forgets the finished jobs beyond `daemon.jobs_kept` (the longest finished first) and
    /// those that finished more than `daemon.jobs_kept_for` ago: their records leave memory
    /// and `state_dir`, so a daemon that runs for months holds a bounded history. Queued and
    /// running jobs stay; so does the job that has just finished (the most recent, and the
    /// age limit is at least a minute), for the client waiting on it.
    pub fn forget_old_jobs(&self) {
        let limits = self.shared.settings().daemon.clone();
        let now = now_ms();
        let max_age_ms = limits.jobs_kept_for.0.as_millis() as i64;
        let mut jobs = self.jobs.lock().expect("not poisoned");
        let mut finished: Vec<(i64, String)> = jobs
            .values()
            .filter_map(|j| {
                let r = j.record.lock().expect("not poisoned");
                r.state
                    .is_final()
                    .then(|| (r.finished_ms.unwrap_or(r.created_ms), r.id.clone()))
            })
            .collect();
        finished.sort_unstable_by(|a, b| b.cmp(a)); // the most recently finished first
        let gone: Vec<String> = finished
            .into_iter()
            .enumerate()
            .filter(|(i, (ended, _))| {
                *i >= limits.jobs_kept || (max_age_ms > 0 && now - ended > max_age_ms)
            })
            .map(|(_, (_, id))| id)
            .collect();
        for id in &gone {
            jobs.remove(id);
        }
        drop(jobs);
        for id in &gone {
            let path = self.dir.join(format!("{id}.json"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(file = %path.display(), "cannot remove a forgotten job's record: {e}")
                }
                _ => {}
            }
        }
        if !gone.is_empty() {
            tracing::debug!(
                forgotten = gone.len(),
                jobs_kept = limits.jobs_kept,
                jobs_kept_for = %limits.jobs_kept_for,
                "finished jobs forgotten"
            );
        }
    }

    /// Validates and starts a job for `caller` (`None`: a client of the daemon's own user, or
    /// root). Its id is returned at once; it runs in the background.
    pub fn submit(
        self: &Arc<Self>,
        spec: JobSpec,
        priority: u8,
        caller: Option<Arc<Caller>>,
    ) -> Result<JobRecord, JobError> {
        // Before a job bundle is read for it, and again for the paths a bundle gave.
        if let Some(c) = &caller {
            self.check_store(&spec)?;
            spec.check_caller(c)?;
        }
        let bundles = matches!(&spec, JobSpec::Submit(j) if !j.asset_references.is_empty());
        // Read now, so the record (and a retry) holds the paths the job was given.
        let spec = spec.take_asset_references(caller.as_deref())?;
        if let Some(c) = caller.as_ref().filter(|_| bundles) {
            spec.check_caller(c)?;
        }
        let limited = caller.is_some();
        self.start(spec, None, priority, caller, limited)
    }

    /// Changes a queued job's priority (a running or finished one holds its slot, or needs
    /// none: refused); returns its record.
    pub fn set_priority(&self, id: &str, priority: u8) -> Result<JobRecord, PriorityError> {
        let job = self
            .get(id)
            .ok_or_else(|| PriorityError::NoSuchJob(id.to_string()))?;
        let mut r = job.record.lock().expect("not poisoned");
        if r.state != JobState::Queued {
            return Err(PriorityError::NotQueued {
                id: id.to_string(),
                state: r.state.name(),
            });
        }
        // Not in the queue yet: `run` reads the record's priority when it queues the job.
        self.slots.set_priority(id, priority);
        r.priority = priority;
        write_record(&self.dir, &r);
        Ok(r.clone())
    }

    /// Starts a failed, cancelled or interrupted job again, as a new job with the same spec
    /// (`retry_of` names the old one): an upload resumes what the first run left open, a
    /// download or sync skips what is already in place. A job that succeeded, or is still
    /// queued or running, is refused.
    pub fn retry(
        self: &Arc<Self>,
        id: &str,
        caller: Option<Arc<Caller>>,
    ) -> Result<JobRecord, RetryError> {
        // One retry of a job at a time: two wranglers retrying it together make one new job.
        let _one_at_a_time = self.retrying.lock().expect("not poisoned");
        let old = self
            .get(id)
            .ok_or_else(|| RetryError::NoSuchJob(id.to_string()))?
            .snapshot();
        let what = match old.state {
            JobState::Failed | JobState::Cancelled | JobState::Interrupted => None,
            JobState::Queued => Some("is queued"),
            JobState::Running => Some("is running"),
            JobState::Succeeded => Some("succeeded"),
        };
        if let Some(what) = what {
            return Err(RetryError::NotRetryable { id: old.id, what });
        }
        if let Some((by, state)) = self.run_again_as(id) {
            return Err(RetryError::AlreadyRetried {
                id: old.id,
                by,
                state: state.name(),
            });
        }
        // The new job acts for the user the old one did: a retry by root (or the daemon's own
        // user, or a TCP client) must not run another user's spec with the daemon's rights. A
        // client of another user retrying it must be able to do it too.
        let run_as = old.run_as.map(Arc::new);
        if caller.is_some() || run_as.is_some() {
            // (The daemon's store may have changed since, by a reload.)
            self.check_store(&old.spec)?;
        }
        for user in [&caller, &run_as].into_iter().flatten() {
            old.spec.check_caller(user)?;
        }
        // The limit of jobs per user binds the user asking, not root retrying its jobs.
        let limited = caller.is_some();
        Ok(self.start(old.spec, Some(old.id), old.priority, run_as, limited)?)
    }

    /// A client of another user gets the daemon's own store only: another would be read and
    /// written with the daemon's credentials, a `file://` one with the daemon's rights.
    fn check_store(&self, spec: &JobSpec) -> Result<(), JobError> {
        let own = self.shared.settings().store.url.clone();
        match spec.store() {
            Some(store) if !crate::store::StoreUrl::same(store, &own) => {
                Err(JobError::NotTheCallersStore {
                    store: store.to_string(),
                    own,
                })
            }
            _ => Ok(()),
        }
    }

    /// Records and starts a job acting for `caller`; one asked for by a client of another
    /// user (`limited`) is refused when that user has `daemon.max_jobs_per_user` jobs queued
    /// or running already.
    fn start(
        self: &Arc<Self>,
        spec: JobSpec,
        retry_of: Option<String>,
        priority: u8,
        caller: Option<Arc<Caller>>,
        limited: bool,
    ) -> Result<JobRecord, JobError> {
        spec.validate()?;
        if self.root.is_cancelled() {
            return Err(JobError::Invalid {
                field: "kind",
                message: "the daemon is shutting down".into(),
            });
        }
        let id = format!("job-{:032x}", rand::random::<u128>());
        let record = JobRecord {
            id: id.clone(),
            kind: spec.kind().into(),
            state: JobState::Queued,
            spec,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            progress: ProgressSnapshot::default(),
            result: None,
            error: None,
            retry_of,
            priority,
            queue_position: None,
            retried_by: None,
            retryable: None,
            run_as: caller.as_deref().cloned(),
            warnings: Vec::new(),
        };
        let limit = self.shared.settings().daemon.max_jobs_per_user;
        let (changed, _) = watch::channel(0);
        let job = Arc::new(Job {
            record: Mutex::new(record.clone()),
            progress: Arc::default(),
            cancel: self.root.child_token(),
            caller,
            changed,
            warnings: Warnings::default(),
        });
        {
            // Counted and added under one lock: two submits at once cannot both take the
            // last place.
            let mut jobs = self.jobs.lock().expect("not poisoned");
            if let Some(user) = job.caller.as_deref().filter(|_| limited && limit > 0) {
                let active = jobs
                    .values()
                    .filter(|j| j.caller.as_ref().is_some_and(|c| c.uid == user.uid))
                    .filter(|j| !j.record.lock().expect("not poisoned").state.is_final())
                    .count();
                if active >= limit {
                    return Err(JobError::TooManyJobs {
                        who: user.describe(),
                        active,
                    });
                }
            }
            write_record(&self.dir, &record);
            jobs.insert(id, job.clone());
        }
        let this = self.clone();
        self.tracker.spawn(async move { this.run(job).await });
        Ok(record)
    }

    async fn run(&self, job: Arc<Job>) {
        // Queued until a slot is free; a cancel while queued ends the job before it starts.
        // The priority is read and the job queued under its record's lock, so that a change of
        // priority (`set_priority`) is never lost between the two.
        let turn = {
            let r = job.record.lock().expect("not poisoned");
            (self.slots.take_or_queue(&r.id, r.priority), r.priority)
        };
        let _slot = match turn {
            (Turn::Now(slot), _) => slot,
            (turn, priority) => {
                tracing::info!(
                    job = %job.snapshot().id,
                    priority,
                    "queued: daemon.max_running_jobs jobs are running"
                );
                tokio::select! {
                    slot = turn.slot() => slot,
                    _ = job.cancel.cancelled() => {
                        let state = self.update(&job, |r| {
                            r.finished_ms = Some(now_ms());
                            self.cancelled(r);
                            r.state
                        });
                        self.metrics.job_finished(state);
                        tracing::info!(job = %job.snapshot().id, "job cancelled while queued");
                        self.forget_old_jobs();
                        return;
                    }
                }
            }
        };
        let (spec, queued_ms) = self.update(&job, |r| {
            r.state = JobState::Running;
            let now = now_ms();
            r.started_ms = Some(now);
            (r.spec.clone(), now - r.created_ms)
        });
        self.metrics.job_started(spec.kind(), ms(queued_ms));
        let settings = self.shared.settings();
        let url = spec
            .store()
            .map(str::to_string)
            .unwrap_or_else(|| settings.store.url.clone());
        let kind = spec.kind();
        tracing::info!(
            job = %job.snapshot().id,
            kind,
            on = %spec.describe(),
            store = %url,
            "job started"
        );
        // The job's own span: its log lines name it, and its warnings go to its record.
        let span = tracing::warn_span!("job", id = %job.snapshot().id);
        crate::logging::job_warnings::capture(&span, job.warnings.clone());
        let run = async {
            // Opening may be held (the known-present index locked by another process).
            let opening = self
                .shared
                .transfer_for(&url, &settings, job.progress.clone());
            match crate::transfer::cancellable(&job.cancel, opening)
                .await
                .map_err(crate::transfer::TransferError::from)?
            {
                Ok(t) => {
                    spec.run(&settings, t, &job.cancel, job.caller.clone())
                        .await
                }
                Err(e) => Err(JobError::Open(e)),
            }
        }
        .instrument(span);
        let outcome = tokio::select! {
            outcome = run => outcome,
            never = log_progress(&job, kind, &settings.log) => match never {},
            never = self.save_progress(&job) => match never {},
        };
        let progress = job.progress.snapshot();
        let (state, ran_ms) = self.update(&job, |r| {
            let now = now_ms();
            r.finished_ms = Some(now);
            r.progress = progress;
            r.warnings = job.warnings.lines();
            match outcome {
                Ok(out) => {
                    self.metrics.count_output(&out);
                    r.result = Some(serde_json::to_value(&out).unwrap_or_default());
                    r.state = JobState::Succeeded;
                }
                Err(e) if e.is_cancelled() => self.cancelled(r),
                Err(e) => {
                    r.error = Some(e.to_string());
                    r.retryable = Some(e.is_retryable());
                    r.state = JobState::Failed;
                }
            }
            (r.state, now - r.started_ms.unwrap_or(now))
        });
        self.metrics.job_finished(state);
        if state == JobState::Succeeded {
            self.metrics.job_succeeded(kind, ms(ran_ms));
        }
        // A failure says why in the daemon's log too: a farm reads the service's journal,
        // not each client's output.
        let record = job.snapshot();
        match (&record.error, state) {
            (Some(error), JobState::Failed) => {
                tracing::warn!(job = %record.id, kind, %error, "job failed");
            }
            _ => tracing::info!(
                job = %record.id,
                kind,
                state = state.name(),
                seconds = ran_ms as f64 / 1000.0,
                "job finished"
            ),
        }
        self.forget_old_jobs();
        if self.active() == 0 {
            // Idle: give back what the job freed (a blocking call: it walks the heap).
            tokio::task::spawn_blocking(release_freed_memory);
        }
    }

    /// A job that stopped on its cancel: `cancelled` when someone cancelled it; `interrupted`
    /// when the daemon was stopping, as after a crash, so that a client following it does not
    /// take a restart for a cancel, and `retry --state interrupted` runs it again.
    fn cancelled(&self, r: &mut JobRecord) {
        if self.root.is_cancelled() {
            r.state = JobState::Interrupted;
            r.retryable = Some(true);
            r.error = Some(format!(
                "the daemon stopped while the job was {}; `attache retry {}` runs it again",
                if r.started_ms.is_some() {
                    "running"
                } else {
                    "queued"
                },
                r.id
            ));
        } else {
            r.state = JobState::Cancelled;
        }
    }

    /// Saves a running job's record with its progress every [`SAVE_PROGRESS_EVERY`] (telling
    /// no one: nothing changed but the figures), until dropped.
    async fn save_progress(&self, job: &Job) -> std::convert::Infallible {
        let every = SAVE_PROGRESS_EVERY;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            write_record(&self.dir, &job.snapshot());
        }
    }

    /// Changes a job's record, persists it and wakes its watchers.
    fn update<T>(&self, job: &Job, f: impl FnOnce(&mut JobRecord) -> T) -> T {
        let (out, record) = {
            let mut r = job.record.lock().expect("not poisoned");
            let out = f(&mut r);
            (out, r.clone())
        };
        write_record(&self.dir, &record);
        job.changed.send_modify(|n| *n += 1);
        out
    }

    /// The jobs in the order they were created (the newest last), those in one of `states`
    /// only (all when empty), the `last` most recent only (all when `None`), those a client
    /// of `user` may see only ([`Job::is_for`]).
    pub fn list(
        &self,
        states: &[JobState],
        last: Option<usize>,
        user: Option<&Caller>,
    ) -> Vec<JobRecord> {
        let (mut jobs, retried): (Vec<JobRecord>, BTreeMap<String, String>) = {
            let all = self.jobs.lock().expect("not poisoned");
            // Which job ran each one again, also when that one is not listed (a list of the
            // interrupted jobs, whose retries succeeded).
            let retried = all
                .values()
                .filter_map(|j| {
                    let r = j.record.lock().expect("not poisoned");
                    Some((r.retry_of.clone()?, r.id.clone()))
                })
                .collect();
            let listed = all
                .values()
                .filter(|j| {
                    j.is_for(user)
                        && (states.is_empty()
                            || states.contains(&j.record.lock().expect("not poisoned").state))
                })
                .map(|j| j.snapshot())
                .collect();
            (listed, retried)
        };
        let queue = self.slots.queue();
        for j in &mut jobs {
            place_in(&queue, j);
            j.retried_by = retried.get(&j.id).cloned();
        }
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        if let Some(n) = last {
            jobs.drain(..jobs.len().saturating_sub(n));
        }
        jobs
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().expect("not poisoned").get(id).cloned()
    }

    /// A job's record as the API answers it: with its place in the queue when queued, and
    /// the job that ran it again once it has ended.
    pub fn record(&self, id: &str) -> Option<JobRecord> {
        let mut r = self.get(id)?.snapshot();
        place_in(&self.slots.queue(), &mut r);
        if r.state.is_final() {
            r.retried_by = self.run_again_as(id).map(|(by, _)| by);
        }
        Some(r)
    }

    /// The job that ran job `id` again, and its state. Each record's own fields: a snapshot
    /// of every job (results included) is not needed.
    fn run_again_as(&self, id: &str) -> Option<(String, JobState)> {
        self.jobs
            .lock()
            .expect("not poisoned")
            .values()
            .find_map(|j| {
                let r = j.record.lock().expect("not poisoned");
                (r.retry_of.as_deref() == Some(id)).then(|| (r.id.clone(), r.state))
            })
    }

    /// Cancels a job (no effect once it has finished); returns its record.
    pub fn cancel(&self, id: &str) -> Option<JobRecord> {
        let job = self.get(id)?;
        job.cancel.cancel();
        Some(job.snapshot())
    }

    /// Jobs queued or running.
    pub fn active(&self) -> usize {
        self.count(|s| !s.is_final())
    }

    /// Jobs waiting for a slot (`daemon.max_running_jobs`).
    pub fn queued(&self) -> usize {
        self.count(|s| s == JobState::Queued)
    }

    fn count(&self, which: impl Fn(JobState) -> bool) -> usize {
        self.jobs
            .lock()
            .expect("not poisoned")
            .values()
            // The state alone: a snapshot would clone every record, results included.
            .filter(|j| which(j.record.lock().expect("not poisoned").state))
            .count()
    }

    /// Cancels every job and waits (up to `deadline`) for them to clean up: multipart uploads
    /// aborted, temporary files removed, records written.
    pub async fn shutdown(&self, deadline: Duration) {
        self.root.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("jobs did not stop within {deadline:?}");
        }
    }
}

/// How often a running job's record is saved with its progress: after a crash (`kill -9`, a
/// power cut) the record says how far the job got and when it was last seen running.
const SAVE_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Logs a running job's progress every `log.stats` (never, with 0), until dropped.
async fn log_progress(
    job: &Job,
    kind: &str,
    log: &crate::config::LogSettings,
) -> std::convert::Infallible {
    let every = log.stats.0;
    if every.is_zero() {
        return std::future::pending().await;
    }
    let id = job.snapshot().id;
    let mut lines = crate::progress::ProgressLog::new(format!("{id} ({kind})"), log.format);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        lines.log(&job.progress.snapshot());
    }
}

/// Writes a record through a temporary file and a rename; a failure is logged, not fatal.
/// Not synced: the load skips a record a power cut left unreadable.
fn write_record(dir: &Path, record: &JobRecord) {
    let path = dir.join(format!("{}.json", record.id));
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    if let Err(e) = crate::fsutil::write_atomic_unsynced(&path, &bytes) {
        tracing::warn!(file = %path.display(), "cannot save the job record: {e}");
    }
}

/// Returns the heap's free pages to the kernel. glibc keeps what a job freed mapped in its
/// arenas: after a submit of 200,000 files the idle daemon kept 48 MiB (20 MiB with this),
/// and the same submit again peaked at 118-121 MiB (93-96 MiB; `bench/daemon_memory.sh`).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
