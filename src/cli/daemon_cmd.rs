//! `attache daemon`, and the commands that talk to it: `jobs`, `status`, `cancel`, `retry`,
//! `priority` (and `bwlimit` and `doctor`, in their own modules); plus the packaging helpers
//! `completions` and `man`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::{Cli, Context, UsageError, json_size};
use crate::cli::stdout::outln;
use crate::config::Settings;
use crate::daemon::client::{ClientError, DaemonAddress, HttpMethod, call, call_with};
use crate::daemon::registry::now_ms;
use crate::daemon::slots::DEFAULT_PRIORITY;

/// Which daemon a command talks to: this machine's, on its socket, or another machine's, on
/// the TCP listener its `daemon.listen` opens (a wrangler's view of a worker).
#[derive(Debug, Args)]
pub struct DaemonUrlArgs {
    /// The daemon of another machine, on its TCP listener (its daemon.listen), e.g.
    /// https://render042:7070 (http:// for one without daemon.tls_cert); default: this
    /// machine's, on daemon.socket. Takes several (repeatable, or comma-separated): one table,
    /// one setting or one line each for a farm (`jobs`, `bwlimit`, `doctor`), or the daemon
    /// that has the job (`status`, `cancel`, `retry`, `priority`).
    #[arg(
        long,
        value_name = "URL",
        env = "ATTACHE_DAEMON_URL",
        value_delimiter = ','
    )]
    pub daemon_url: Vec<String>,
    /// A copy of that daemon's token file, mode 0600 [default: daemon.token_file].
    #[arg(long, value_name = "FILE", env = "ATTACHE_DAEMON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// For an https:// URL: the certificate (PEM) of the CA that signed the daemon's, or the
    /// daemon's own [default: the system's trusted roots].
    #[arg(long, value_name = "FILE", env = "ATTACHE_DAEMON_CA")]
    pub daemon_ca: Option<PathBuf>,
}

impl DaemonUrlArgs {
    /// Whether another machine's daemon is named.
    pub fn remote(&self) -> bool {
        self.urls().next().is_some()
    }

    /// The URLs given (an empty item of a list, as a trailing comma leaves, is none).
    fn urls(&self) -> impl Iterator<Item = &String> {
        self.daemon_url.iter().filter(|u| !u.trim().is_empty())
    }

    /// The daemons to ask: those named, else this machine's. A bad URL or token file is bad
    /// usage (exit 2) before any request.
    pub fn addresses(&self, settings: &Settings) -> Result<Vec<DaemonAddress>, UsageError> {
        // `--daemon-url "$FARM"` with FARM unset must not act on this machine's daemon.
        let given_empty = !self.daemon_url.is_empty()
            || std::env::var_os("ATTACHE_DAEMON_URL").is_some_and(|v| v.is_empty());
        if given_empty && !self.remote() {
            return Err(UsageError {
                message: "--daemon-url (or ATTACHE_DAEMON_URL) is empty (an unset variable?): give the daemons' URLs, e.g. https://render042:7070, or leave it out for this machine's daemon".into(),
            });
        }
        if !self.remote() {
            return Ok(vec![DaemonAddress::local(settings)]);
        }
        let token_file = self
            .token_file
            .as_deref()
            .or(settings.daemon.token_file.as_deref());
        self.urls()
            .map(|url| {
                DaemonAddress::remote(url, token_file, self.daemon_ca.as_deref()).map_err(|e| {
                    UsageError {
                        message: e.to_string(),
                    }
                })
            })
            .collect()
    }
}

/// `request` sent to each daemon at once (a farm's worth answers in the time of the slowest):
/// the answers that came, in the order given, and whether one failed, each failure said on
/// stderr with its daemon named. With one daemon its failure is the command's (its exit code
/// too: a refused token is bad usage).
pub(crate) fn ask_all<T: Send>(
    daemons: &[DaemonAddress],
    request: impl Fn(&DaemonAddress) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<(Vec<(&DaemonAddress, T)>, bool)> {
    let asked: Vec<_> = std::thread::scope(|s| {
        let asking: Vec<_> = daemons
            .iter()
            .map(|at| (at, s.spawn(|| request(at))))
            .collect();
        asking
            .into_iter()
            .map(|(at, t)| (at, t.join().expect("a request panicked")))
            .collect()
    });
    let several = asked.len() > 1;
    let (mut ok, mut failed) = (Vec::new(), false);
    for (at, answer) in asked {
        match answer {
            Ok(v) => ok.push((at, v)),
            Err(e) if !several => return Err(e),
            Err(e) => {
                crate::say_error!("{}: {e:#}", at.describe());
                failed = true;
            }
        }
    }
    Ok((ok, failed))
}

#[derive(Debug, Args)]
#[command(
    after_help = "As SIGHUP (`systemctl reload attache` runs it), but the outcome is told: exit 0 once the daemon runs with the config file as it is now (the keys it takes only at a restart, changed since it started, are named: daemon.socket, socket_group, listen, state_dir, max_running_jobs, log.level, log.format, log.file); exit 1 and the daemon's reason when it keeps the one it had (a key it cannot use), exit 2 when this command cannot read the file itself.\nExamples:\n  attache reload\n  attache reload --daemon-url \"$FARM\"      # every worker, after a config rollout"
)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub daemon: DaemonUrlArgs,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id (from `attache jobs` or the submit reply).
    pub id: String,
    /// Print the full record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonUrlArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Show the job's progress until it ends; the exit status is then the job's (0 succeeded,
    /// 1 failed or interrupted, 130 cancelled). Ctrl-C stops following, not the job.
    #[arg(long)]
    follow: bool,
    /// Write what the job's command writes with -o, from its result, once it succeeded: a
    /// submit's attachments JSON, sync-inputs' path-mapping rules, sync-outputs' manifests
    /// (`-`: stdout, instead of the job's line).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The jobs to run again: failed, cancelled or interrupted ones (`attache jobs --state
    /// failed,cancelled,interrupted`). Each becomes a new job with the same spec.
    #[arg(
        value_name = "ID",
        required_unless_present = "state",
        conflicts_with = "state"
    )]
    ids: Vec<String>,
    /// Every job in this state that has not been run again yet: failed, cancelled,
    /// interrupted (repeatable, or comma-separated); e.g. all the interrupted ones after a
    /// crash.
    #[arg(
        long,
        value_name = "STATE",
        value_delimiter = ',',
        value_parser = ["failed", "cancelled", "interrupted"]
    )]
    state: Vec<String>,
    /// Show the new job's progress until it ends (one ID only); the exit status is then the
    /// job's. Ctrl-C stops following, not the job.
    #[arg(long, conflicts_with = "state")]
    follow: bool,
    /// With --follow: write what the job's command writes with -o, once it succeeded (a
    /// submit's attachments JSON, …; as `status -o`).
    #[arg(short, long, value_name = "FILE", requires = "follow")]
    output: Option<PathBuf>,
    /// Print the new jobs' records as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonUrlArgs,
}

#[derive(Debug, Args)]
pub struct PriorityArgs {
    /// The queued job.
    pub id: String,
    /// Its new priority, 0 to 100 (default of a job: 50): a queued job of a higher priority
    /// gets the next free slot (daemon.max_running_jobs) first.
    #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
    pub priority: u8,
    /// Print the job's record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonUrlArgs,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: queued, running, succeeded, failed, cancelled, interrupted
    /// (repeatable, or comma-separated).
    #[arg(
        long,
        value_name = "STATE",
        value_delimiter = ',',
        value_parser = ["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    )]
    state: Vec<String>,
    /// Only the N most recent.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Print the records as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonUrlArgs,
}

pub fn daemon(ctx: &Context) -> anyhow::Result<ExitCode> {
    let settings = ctx.settings.clone();
    let load = ctx.load.clone();
    let rt = crate::transfer::runtime(settings.runtime_threads())?;
    let served = rt.block_on(crate::daemon::server::serve(settings, load));
    // Jobs have cleaned up by now; a blocking call that does not return (a `stat` on a network
    // mount that hangs) must not keep the service from stopping.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    served.map_err(|e| match e.is_setting() {
        true => anyhow::Error::new(UsageError {
            message: e.to_string(),
        }),
        false => e.into(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `attache reload`: the daemon reads its config again (`POST /v1/reload`), and says whether
/// it took it.
pub fn reload(ctx: &Context, a: ReloadArgs) -> anyhow::Result<ExitCode> {
    let daemons = a.daemon.addresses(&ctx.settings)?;
    let (reloaded, failed) = ask_all(&daemons, |at| call(at, HttpMethod::POST, "/v1/reload"))?;
    for (at, reply) in reloaded {
        let waiting: Vec<&str> = reply["at_restart"]
            .as_array()
            .map_or_else(Vec::new, |keys| {
                keys.iter().filter_map(|k| k.as_str()).collect()
            });
        match waiting.as_slice() {
            [] => crate::say!("{}: config reloaded", at.describe()),
            keys => crate::say!(
                "{}: config reloaded; {} changed since the daemon started and take effect only at its restart (systemctl restart attache: running jobs are interrupted)",
                at.describe(),
                keys.join(", ")
            ),
        }
    }
    Ok(match failed {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

pub fn jobs(ctx: &Context, a: JobsArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if !a.state.is_empty() {
        query.push(format!("state={}", a.state.join(",")));
    }
    if let Some(n) = a.last {
        query.push(format!("last={n}"));
    }
    let path = match query.is_empty() {
        true => "/v1/jobs".to_string(),
        false => format!("/v1/jobs?{}", query.join("&")),
    };
    let daemons = a.daemon.addresses(&ctx.settings)?;
    let (lists, failed) = ask_all(&daemons, |at| call(at, HttpMethod::GET, &path))?;
    let several = daemons.len() > 1;
    // With several daemons: one list, each record naming its daemon, oldest first.
    let mut jobs: Vec<serde_json::Value> = Vec::new();
    for (at, list) in lists {
        for mut j in list.as_array().cloned().unwrap_or_default() {
            if several {
                j["daemon"] = at.describe().into();
            }
            jobs.push(j);
        }
    }
    jobs.sort_by_key(|j| j["created_ms"].as_i64().unwrap_or(0));
    let code = match failed {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(code);
    }
    if jobs.is_empty() {
        // Said rather than a bare header: what was asked, and where.
        let which = match a.state.as_slice() {
            [] => String::new(),
            states => format!(" {}", states.join(" or ")),
        };
        let place = match (several, failed) {
            (true, true) => " on the daemons that answered",
            (true, false) => " on any of the daemons",
            (false, _) => "",
        };
        crate::say!("no{which} jobs{place}");
        return Ok(code);
    }
    let now = now_ms();
    let host = |j: &serde_json::Value| match several {
        true => format!("{:<24} ", host_of(j["daemon"].as_str().unwrap_or_default())),
        false => String::new(),
    };
    outln!(
        "{}{:<38} {:<17} {:<12} {:>8} {:>8} {:>13} {:>21}  WHAT",
        match several {
            true => format!("{:<24} ", "DAEMON"),
            false => String::new(),
        },
        "ID",
        "KIND",
        "STATE",
        "AGE",
        "TOOK",
        "FILES",
        "BYTES"
    );
    for j in &jobs {
        let p = &j["progress"];
        let id = j["id"].as_str().unwrap_or_default();
        // Which job ran it again, for the failed and interrupted ones a wrangler looks at.
        let again = match (j["retried_by"].as_str(), j["retry_of"].as_str()) {
            (Some(by), _) => format!(" (run again as {by})"),
            (None, Some(of)) => format!(" (retry of {of})"),
            (None, None) => String::new(),
        } + &priority_note(j);
        outln!(
            "{}{:<38} {:<17} {:<12} {:>8} {:>8} {:>13} {:>21}  {}{again}",
            host(j),
            id,
            j["kind"].as_str().unwrap_or_default(),
            state_of(j),
            j["created_ms"]
                .as_i64()
                .map_or_else(String::new, |t| span(now - t)),
            took(j, now),
            counts(j, format!("{}/{}", p["files_done"], p["files_total"])),
            counts(
                j,
                format!(
                    "{}/{}",
                    json_size(&p["bytes_done"]),
                    json_size(&p["bytes_total"])
                )
            ),
            what(&j["spec"]),
        );
    }
    Ok(code)
}

/// A job's files or bytes done of the total; `-` while it is queued (nothing counted yet).
fn counts(j: &serde_json::Value, done_of_total: String) -> String {
    match j["state"].as_str() {
        Some("queued") => "-".into(),
        _ => done_of_total,
    }
}

/// A job's state, with its place in the daemon's queue when queued: `queued #2`.
fn state_of(j: &serde_json::Value) -> String {
    let state = j["state"].as_str().unwrap_or_default();
    match j["queue_position"].as_u64() {
        Some(n) => format!("{state} #{n}"),
        None => state.to_string(),
    }
}

/// " [priority 90]" for a job whose priority is not the default.
fn priority_note(j: &serde_json::Value) -> String {
    match j["priority"].as_u64() {
        Some(p) if p != u64::from(DEFAULT_PRIORITY) => format!(" [priority {p}]"),
        _ => String::new(),
    }
}

/// A daemon's URL without its scheme, for a table: `render042:7070`.
fn host_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// What a job works on, for the table: a submit's first input, a worker job's session
/// directory, the job whose outputs are downloaded, the store a doctor probes.
fn what(spec: &serde_json::Value) -> String {
    let s = |k: &str| spec[k].as_str().unwrap_or_default().to_string();
    match spec["kind"].as_str() {
        Some("submit") => {
            let inputs = spec["inputs"].as_array().map_or(&[][..], |v| v.as_slice());
            match inputs {
                [] => String::new(),
                [one] => one.as_str().unwrap_or_default().to_string(),
                [first, rest @ ..] => format!(
                    "{} (+{} more)",
                    first.as_str().unwrap_or_default(),
                    rest.len()
                ),
            }
        }
        Some("sync_inputs" | "sync_outputs") => s("session_dir"),
        Some("download_outputs") => match spec["step_id"].as_str() {
            Some(step) => format!("{} {step}", s("job_id")),
            None => s("job_id"),
        },
        Some("doctor") => spec["store"]
            .as_str()
            .unwrap_or("the configured store")
            .to_string(),
        _ => String::new(),
    }
}

/// How long a job ran (so far, while it runs); empty before it started.
fn took(j: &serde_json::Value, now: i64) -> String {
    match j["started_ms"].as_i64() {
        Some(start) => span(j["finished_ms"].as_i64().unwrap_or(now) - start),
        None => String::new(),
    }
}

/// A short duration for a table: 850ms, 45s, 3m12s, 1h03m, 2d04h.
fn span(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

pub fn status(ctx: &Context, a: StatusArgs) -> anyhow::Result<ExitCode> {
    crate::cli::check_output(&a.output, false)?;
    let job = &a.job;
    let (at, j) = holder_of(&job.daemon.addresses(&ctx.settings)?, &job.id)?;
    if !a.follow {
        return print_with_result(&j, job.json, &a.output);
    }
    follow_to_its_end(ctx, &at, &job.id, job.json, &a.output)
}

/// The job's line (or record), and with `-o` the document its command would have written;
/// a job that has not succeeded has none (exit 1).
fn print_with_result(
    j: &serde_json::Value,
    json: bool,
    output: &Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let Some(o) = output else {
        return print_job(j, json);
    };
    let succeeded = j["state"] == "succeeded";
    if crate::cli::output_file(output).is_some() || !succeeded {
        print_job(j, json)?;
    }
    if !succeeded {
        crate::say!(
            "job {} did not succeed ({}): nothing written to {}",
            j["id"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or("unknown"),
            o.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    super::farm::emit_result(
        j["kind"].as_str().unwrap_or_default(),
        &j["result"],
        crate::cli::output_file(output),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon to send a request about job `id` to: the one named, without asking it first (its
/// answer says if it lacks the job), else the one of several that has it ([`holder_of`]).
fn daemon_of(daemons: &[DaemonAddress], id: &str) -> anyhow::Result<DaemonAddress> {
    match daemons {
        [one] => Ok(one.clone()),
        several => Ok(holder_of(several, id)?.0),
    }
}

/// The daemon that has job `id`, and the job's record. Of several, each is asked at once (a
/// job's id is unique across a farm) and the one that knows it is named on stderr; one that
/// cannot be asked is said and the others still are.
fn holder_of(
    daemons: &[DaemonAddress],
    id: &str,
) -> anyhow::Result<(DaemonAddress, serde_json::Value)> {
    let path = format!("/v1/jobs/{id}");
    if let [one] = daemons {
        return Ok((one.clone(), call(one, HttpMethod::GET, &path)?));
    }
    let (answers, failed) = ask_all(daemons, |at| match call(at, HttpMethod::GET, &path) {
        Ok(j) => Ok(Some(j)),
        Err(e)
            if e.downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_not_found) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    })?;
    match answers.into_iter().find_map(|(at, j)| Some((at, j?))) {
        Some((at, j)) => {
            crate::say!("{id} is on {}", at.describe());
            Ok((at.clone(), j))
        }
        None => Err(ClientError::NotFound(format!(
            "no job {id} on any of the {} daemons{}",
            daemons.len(),
            if failed {
                " that answered (the others are named above)"
            } else {
                ""
            }
        ))
        .into()),
    }
}

/// Shows a job's progress until it ends, prints its record and returns its outcome as the
/// exit status: 0 succeeded, 130 cancelled, 1 otherwise.
fn follow_to_its_end(
    ctx: &Context,
    at: &DaemonAddress,
    id: &str,
    json: bool,
    output: &Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let j = crate::daemon::client::watch_job(at, &ctx.settings, id)?;
    // Its exit status is the job's, said below.
    print_with_result(&j, json, output)?;
    Ok(match j["state"].as_str() {
        Some("succeeded") => ExitCode::SUCCESS,
        Some("cancelled") => ExitCode::from(super::exit::CANCELLED),
        _ => ExitCode::FAILURE,
    })
}

/// `attache retry ID...`: each job run again as a new one; a job that cannot be (it
/// succeeded, or still runs) is said and the others go on (exit 1 at the end).
pub fn retry(ctx: &Context, a: RetryArgs) -> anyhow::Result<ExitCode> {
    crate::cli::check_output(&a.output, false)?;
    if a.follow && a.ids.len() > 1 {
        return Err(UsageError {
            message: "--follow follows one job: give one ID".into(),
        }
        .into());
    }
    let daemons = a.daemon.addresses(&ctx.settings)?;
    // One job named: its refusal is the command's failure (with --json, the failure line).
    let one = a.state.is_empty() && a.ids.len() == 1;
    // Each job with the daemon that has it.
    let mut jobs: Vec<(DaemonAddress, String)> = Vec::new();
    let mut refused = 0;
    if a.state.is_empty() {
        for id in &a.ids {
            // Of several: a job none of them has is said, and the others still go.
            let at = match daemon_of(&daemons, id) {
                Ok(at) => at,
                Err(e) if one => return Err(e),
                Err(e) => {
                    crate::say_error!("{e}");
                    refused += 1;
                    continue;
                }
            };
            jobs.push((at, id.clone()));
        }
    } else {
        let (lists, failed) = ask_all(&daemons, |at| call(at, HttpMethod::GET, "/v1/jobs"))?;
        refused += usize::from(failed);
        for (at, list) in lists {
            let ids = to_run_again(&list, &a.state);
            jobs.extend(ids.into_iter().map(|id| (at.clone(), id)));
        }
        if jobs.is_empty() {
            crate::say!("no {} job left to run again", a.state.join(" or "));
        }
    }
    // With --json, the new jobs' records as one document: a list, or the record of one job.
    let mut started = Vec::new();
    for (at, id) in &jobs {
        match call(at, HttpMethod::POST, &format!("/v1/jobs/{id}/retry")) {
            Ok(j) => {
                if a.follow {
                    let new = j["id"].as_str().unwrap_or_default().to_string();
                    crate::say!("{id} runs again as {new}");
                    return follow_to_its_end(ctx, at, &new, a.json, &a.output);
                }
                if a.json {
                    started.push(j);
                } else {
                    print_job(&j, false)?;
                }
            }
            Err(e) if one => return Err(e),
            // Only the daemon's refusal of this one job: an unreachable daemon stops here.
            Err(e) if is_refusal(&e) => {
                crate::say_error!("{e}");
                refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    match started.as_slice() {
        [j] if one => {
            print_job(j, true)?;
        }
        _ if a.json => outln!("{}", serde_json::to_string_pretty(&started)?),
        _ => {}
    }
    Ok(match refused {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The daemon answered and refused (not: could not be reached).
fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(ClientError::is_api)
}

/// The ids of a daemon's jobs in one of `states` that have not been run again (so that the
/// command can be run twice).
fn to_run_again(list: &serde_json::Value, states: &[String]) -> Vec<String> {
    let jobs = list.as_array().map_or(&[][..], |v| v.as_slice());
    let retried: std::collections::HashSet<&str> =
        jobs.iter().filter_map(|j| j["retry_of"].as_str()).collect();
    jobs.iter()
        .filter(|j| {
            j["state"]
                .as_str()
                .is_some_and(|s| states.iter().any(|w| w == s))
        })
        .filter_map(|j| j["id"].as_str())
        .filter(|id| !retried.contains(id))
        .map(str::to_string)
        .collect()
}

pub fn cancel(ctx: &Context, a: JobArgs) -> anyhow::Result<ExitCode> {
    let at = daemon_of(&a.daemon.addresses(&ctx.settings)?, &a.id)?;
    let path = format!("/v1/jobs/{}", a.id);
    let mut j = call(&at, HttpMethod::DELETE, &path)?;
    let done = |j: &serde_json::Value| !matches!(j["state"].as_str(), Some("queued" | "running"));
    if done(&j) {
        crate::say!(
            "job {} has ended ({}): nothing to cancel",
            a.id,
            j["state"].as_str().unwrap_or("ended")
        );
        return print_job(&j, a.json);
    }
    // It stops within a second: show it stopped, not the record from before the cancel. A
    // few requests (each a connection, TLS to another machine's daemon), not a busy loop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !done(&j) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        j = call(&at, HttpMethod::GET, &path)?;
    }
    if !done(&j) {
        crate::say!("job {} is still stopping", a.id);
    }
    print_job(&j, a.json)
}

/// `attache priority ID N`: a queued job's place in the daemon's queue.
pub fn priority(ctx: &Context, a: PriorityArgs) -> anyhow::Result<ExitCode> {
    let at = daemon_of(&a.daemon.addresses(&ctx.settings)?, &a.id)?;
    let body = serde_json::json!({ "priority": a.priority });
    let j = call_with(
        &at,
        HttpMethod::PUT,
        &format!("/v1/jobs/{}/priority", a.id),
        Some(&body),
    )?;
    print_job(&j, a.json)
}

fn print_job(j: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(j)?);
    } else {
        let p = &j["progress"];
        let took = took(j, now_ms());
        outln!(
            "{} {} {}: {}/{} files, {}/{}{}{}",
            j["id"].as_str().unwrap_or_default(),
            j["kind"].as_str().unwrap_or_default(),
            state_of(j),
            p["files_done"],
            p["files_total"],
            json_size(&p["bytes_done"]),
            json_size(&p["bytes_total"]),
            if took.is_empty() {
                String::new()
            } else {
                format!(", {took}")
            },
            j["error"]
                .as_str()
                .map(|e| format!("; {e}"))
                .unwrap_or_default()
                + &j["retry_of"]
                    .as_str()
                    .map(|old| format!(" (retry of {old})"))
                    .unwrap_or_default()
                + &priority_note(j)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Shell completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    // Generated into memory: clap_complete panics when its writer fails (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "attache", &mut script);
    std::io::Write::write_all(&mut crate::cli::stdout::stdout(), &script)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page (roff), on stdout: clap's sections, then what `--help` cannot say by
/// flag (the environment, the files, the exit status).
pub fn man() -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    page.extend_from_slice(MAN_SECTIONS.as_bytes());
    std::io::Write::write_all(&mut crate::cli::stdout::stdout(), &page)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page's ENVIRONMENT, FILES and EXIT STATUS sections (roff), as the README's
/// "Configuration" and "Commands" say them.
const MAN_SECTIONS: &str = r#".SH ENVIRONMENT
.TP
\fBATTACHE_\fISECTION\fB__\fIKEY\fR
Sets a key of the config file, over the file and under the flags, e.g.
\fBATTACHE_S3__ENDPOINT_URL=http://127.0.0.1:3900\fR or
\fBATTACHE_BANDWIDTH__DOWNLOAD=50MB/s\fR; a list's items are separated by \fB;\fR.
\fBattache config show\fR prints the settings in force.
.TP
\fBATTACHE_CONFIG\fR
The config file (\fB\-\-config\fR).
.TP
\fBATTACHE_DAEMON\fR
\fB1\fR: run workflow commands through the daemon (\fB\-\-daemon\fR).
.TP
\fBATTACHE_DAEMON_URL\fR, \fBATTACHE_DAEMON_TOKEN_FILE\fR, \fBATTACHE_DAEMON_CA\fR
\fB\-\-daemon\-url\fR, \fB\-\-token\-file\fR and \fB\-\-daemon\-ca\fR.
.TP
\fBDEADLINE_FARM_ID\fR, \fBDEADLINE_QUEUE_ID\fR, \fBDEADLINE_JOB_ID\fR, \fBDEADLINE_STEP_ID\fR, \fBDEADLINE_TASK_ID\fR, \fBDEADLINE_SESSIONACTION_ID\fR
The ids of the farm workflows, as a Deadline Cloud worker sets them for a task.
.TP
\fBAWS_REGION\fR, \fBAWS_PROFILE\fR, \fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_CA_BUNDLE\fR
The AWS chain, where the config sets no \fBs3.region\fR, \fBs3.profile\fR, keys or
\fBs3.ca_bundle\fR.
.TP
\fBHTTPS_PROXY\fR, \fBHTTP_PROXY\fR, \fBALL_PROXY\fR, \fBNO_PROXY\fR
The proxy, where \fBs3.proxy\fR is not set.
.TP
\fBXDG_CONFIG_HOME\fR, \fBXDG_CACHE_HOME\fR, \fBXDG_DATA_HOME\fR, \fBXDG_STATE_HOME\fR, \fBXDG_RUNTIME_DIR\fR
Where the files below are.
.TP
\fBNO_COLOR\fR
No colour in the log.
.SH FILES
.TP
\fB$XDG_CONFIG_HOME/attache/config.toml\fR, else \fB/etc/attache/config.toml\fR
The config file, where \fB\-\-config\fR names none.
.TP
\fB$XDG_CACHE_HOME/attache/\fR (a service: \fB/var/cache/attache/\fR)
\fBcache.dir\fR: the hash cache, the known\-present index, the records of open multipart
uploads (\fBopen\-uploads/\fR) and the content cache (\fBcontent/\fR).
.TP
\fB$XDG_DATA_HOME/attache/store/\fR (a service: \fB/var/lib/attache/store/\fR)
The embedded default store (\fBstore.url\fR).
.TP
\fB$XDG_RUNTIME_DIR/attache/attache.sock\fR, \fB/run/attache/attache.sock\fR
The daemon's socket (\fBdaemon.socket\fR; a client tries the system service's second).
.TP
\fB$XDG_STATE_HOME/attache/daemon/\fR (a service: \fB/var/lib/attache/daemon/\fR)
\fBdaemon.state_dir\fR: the daemon's job records and bandwidth limits set by hand.
.SH EXIT STATUS
.TP
\fB0\fR
Done.
.TP
\fB1\fR
Failed (with \fB\-\-json\fR, a line on stdout says why and whether a retry may succeed).
.TP
\fB2\fR
Bad usage or config.
.TP
\fB130\fR
Cancelled (Ctrl\-C, SIGTERM).
"#;
