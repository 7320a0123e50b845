//! Log output: human text (default) or JSON lines on stderr, filtered by `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Checks a `log.level` filter: it parses, and each directive without `=` is a level. A bare
/// word other than a level (`warning`, `verbose`) would parse as a target and turn every log
/// off but that target's, warnings included.
pub fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[', '{'])
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        {
            return Err(format!(
                "{directive:?} is not a level: use one of {} or TARGET=LEVEL (attache=debug)",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Installs the global subscriber. A bad `log.level` falls back to `info` with a warning
/// rather than hiding every log.
pub fn init(settings: &LogSettings) {
    let (mut filter, bad) = match EnvFilter::try_new(&settings.level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    if !settings.level.contains("aws_config") {
        // Off EC2 the SDK warns, with a debug dump, that instance metadata has no region: the
        // normal case on a workstation or an on-prem node, where attache signs for us-east-1
        // (logged at debug) unless s3.region says otherwise.
        filter = filter.add_directive("aws_config::imds::region=error".parse().expect("valid"));
        // The credential chain warns, with a debug dump, of a provider that failed; the error
        // attache reports carries the same cause, readably.
        filter = filter.add_directive(
            "aws_config::meta::credentials::chain=error"
                .parse()
                .expect("valid"),
        );
    }
    // Colours only for a person at a terminal: in a farm's task log, journald or a file, the
    // escape codes are noise around every line. NO_COLOR turns them off there too.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(
            "log.level {:?} is not a valid filter ({e}); using \"info\"",
            settings.level
        );
    }
}
