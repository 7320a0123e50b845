//! `attache daemon`, and the commands that talk to it: `jobs`, `status`, `cancel`; plus the
//! packaging helpers `completions` and `man`.

use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::{Cli, Context};
use crate::daemon::client::{HttpMethod, call};

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
    println!(
        "{:<38} {:<17} {:<12} {:>12} {:>14}",
        "ID", "KIND", "STATE", "FILES", "BYTES"
    );
    for j in list.as_array().into_iter().flatten() {
        let p = &j["progress"];
        println!(
            "{:<38} {:<17} {:<12} {:>12} {:>14}",
            j["id"].as_str().unwrap_or_default(),
            j["kind"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or_default(),
            format!("{}/{}", p["files_done"], p["files_total"]),
            format!("{}/{}", p["bytes_done"], p["bytes_total"]),
        );
    }
    Ok(ExitCode::SUCCESS)
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
        println!(
            "{} {} {}: {}/{} files, {}/{} bytes{}",
            j["id"].as_str().unwrap_or_default(),
            j["kind"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or_default(),
            p["files_done"],
            p["files_total"],
            p["bytes_done"],
            p["bytes_total"],
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
