//! `attache daemon`, and the commands that talk to it: `jobs`, `status`, `cancel`; plus the
//! packaging helpers `completions` and `man`.

use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::{Cli, Context, json_size};
use crate::daemon::client::{HttpMethod, call};
use crate::daemon::registry::now_ms;

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id (from `attache jobs` or the submit reply).
    pub id: String,
    /// Print the full record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn daemon(ctx: &Context) -> anyhow::Result<ExitCode> {
    let settings = ctx.settings.clone();
    let load = ctx.load.clone();
    let rt = crate::transfer::runtime(settings.runtime_threads())?;
    rt.block_on(crate::daemon::server::serve(settings, load))?;
    Ok(ExitCode::SUCCESS)
}

pub fn jobs(ctx: &Context, json: bool) -> anyhow::Result<ExitCode> {
    let list = call(&ctx.settings, HttpMethod::GET, "/v1/jobs")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    println!(
        "{:<38} {:<17} {:<12} {:>8} {:>8} {:>13} {:>21}",
        "ID", "KIND", "STATE", "AGE", "TOOK", "FILES", "BYTES"
    );
    for j in list.as_array().into_iter().flatten() {
        let p = &j["progress"];
        println!(
            "{:<38} {:<17} {:<12} {:>8} {:>8} {:>13} {:>21}",
            j["id"].as_str().unwrap_or_default(),
            j["kind"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or_default(),
            j["created_ms"]
                .as_i64()
                .map_or_else(String::new, |t| span(now - t)),
            took(j, now),
            format!("{}/{}", p["files_done"], p["files_total"]),
            format!(
                "{}/{}",
                json_size(&p["bytes_done"]),
                json_size(&p["bytes_total"])
            ),
        );
    }
    Ok(ExitCode::SUCCESS)
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

pub fn status(ctx: &Context, a: JobArgs) -> anyhow::Result<ExitCode> {
    let j = call(
        &ctx.settings,
        HttpMethod::GET,
        &format!("/v1/jobs/{}", a.id),
    )?;
    print_job(&j, a.json)
}

pub fn cancel(ctx: &Context, a: JobArgs) -> anyhow::Result<ExitCode> {
    let j = call(
        &ctx.settings,
        HttpMethod::DELETE,
        &format!("/v1/jobs/{}", a.id),
    )?;
    print_job(&j, a.json)
}

fn print_job(j: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else {
        let p = &j["progress"];
        let took = took(j, now_ms());
        println!(
            "{} {} {}: {}/{} files, {}/{}{}{}",
            j["id"].as_str().unwrap_or_default(),
            j["kind"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or_default(),
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
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Shell completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "attache",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// The man page (roff), on stdout.
pub fn man() -> anyhow::Result<ExitCode> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
