//! `attache bwlimit`: show or change the daemon's bandwidth limits while it runs, as rclone's
//! `rc core/bwlimit` does (a command's own `--bwlimit` is for that command only).

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::daemon_cmd::{DaemonUrlArgs, ask_all};
use super::{Context, UsageError};
use crate::cli::stdout::outln;
use crate::daemon::bandwidth::parse_setting;
use crate::daemon::client::{DaemonAddress, HttpMethod, call, call_with};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  attache bwlimit                      # the limits in force, and where they come from\n  attache bwlimit 20MB/s --for 2h      # both directions, for two hours\n  attache bwlimit 10MB/s:off           # uploads 10 MB/s, downloads unlimited, until reset\n  attache bwlimit --reset              # back to the config's limits (or its timetable's)\n  attache bwlimit 5MB/s --daemon-url https://render042:7070 --token-file ~/farm.token"
)]
pub struct BwlimitArgs {
    /// The limits for every transfer of the daemon, those in flight too: RATE for both
    /// directions, or UP:DOWN; "off" is unlimited. They replace the config's limits and
    /// timetable until --reset or until --for runs out, a restart of the daemon included.
    #[arg(value_name = "RATE", conflicts_with = "reset")]
    rate: Option<String>,
    /// How long the limits hold, e.g. 2h or 30m (default: until reset).
    #[arg(
        long = "for",
        value_name = "DURATION",
        requires = "rate",
        conflicts_with = "reset"
    )]
    lasting: Option<String>,
    /// Drop the limits set by hand: the config's apply again.
    #[arg(long)]
    reset: bool,
    /// Print the limits as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonUrlArgs,
}

pub fn run(ctx: &Context, a: BwlimitArgs) -> anyhow::Result<ExitCode> {
    if let Some(rate) = &a.rate {
        // Checked here too, so a typo is bad usage (exit 2) before any daemon is asked.
        parse_setting(rate, a.lasting.as_deref()).map_err(|e| UsageError {
            message: match e.field {
                "for" => format!("--{}", e.message),
                _ => e.message,
            },
        })?;
    }
    let daemons = a.daemon.addresses(&ctx.settings)?;
    let ask = |at: &DaemonAddress| match (&a.rate, a.reset) {
        (Some(rate), _) => {
            let body = json!({"rate": rate, "for": a.lasting});
            call_with(at, HttpMethod::PUT, "/v1/bandwidth", Some(&body))
        }
        (None, true) => call(at, HttpMethod::DELETE, "/v1/bandwidth"),
        (None, false) => call(at, HttpMethod::GET, "/v1/bandwidth"),
    };
    let (views, failed) = ask_all(&daemons, ask)?;
    let several = daemons.len() > 1;
    if a.json {
        let views: Vec<serde_json::Value> = views
            .into_iter()
            .map(|(at, mut v)| {
                if several {
                    v["daemon"] = at.describe().into();
                }
                v
            })
            .collect();
        match (several, views.as_slice()) {
            (false, [one]) => outln!("{}", serde_json::to_string_pretty(one)?),
            _ => outln!("{}", serde_json::to_string_pretty(&views)?),
        }
    } else {
        for (at, view) in views {
            match several {
                true => outln!("{}: {}", at.describe(), describe(&view)),
                false => outln!("{}", describe(&view)),
            }
        }
    }
    Ok(match failed {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

/// "upload 20MB/s, download 20MB/s (set by hand, until 2026-12-06T06:00:00Z, 1h 59m left)".
fn describe(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let source = match v["source"].as_str() {
        Some("set") => match (v["until"].as_str(), v["seconds_left"].as_u64()) {
            (Some(until), Some(left)) => format!(
                "set by hand, until {until}, {} left",
                crate::config::Duration::secs(left)
            ),
            _ => "set by hand, until `attache bwlimit --reset`".into(),
        },
        Some("schedule") => "the config's timetable, bandwidth.schedule".into(),
        _ => "the config's bandwidth.upload and bandwidth.download".into(),
    };
    format!(
        "upload {}, download {} ({source})",
        s("upload"),
        s("download")
    )
}
