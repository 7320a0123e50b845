//! Log output: human text (default) or JSON lines on stderr or in `log.file`, filtered by
//! `log.level`.

pub mod job_warnings;

use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// The AWS SDK's and the HTTP stack's crates, which log every request's headers and
/// signing steps (the access key id among them) at debug: thousands of lines a job.
const LIBRARIES: [&str; 9] = [
    "aws_config",
    "aws_runtime",
    "aws_sdk_s3",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "hyper",
    "hyper_util",
    "rustls",
];

/// With a bare `debug` or `trace` (`--log-level debug` to see what attache does), the
/// libraries stay at `info` unless the filter names them (`aws_smithy_runtime=debug`).
fn quiet_libraries(level: &str) -> Vec<String> {
    let bare = level
        .split(',')
        .rev()
        .map(|d| d.trim().to_ascii_lowercase())
        .find(|d| !d.contains(['=', '[', '{']));
    if !matches!(bare.as_deref(), Some("debug" | "trace")) {
        return Vec::new();
    }
    LIBRARIES
        .iter()
        .filter(|lib| !level.contains(*lib))
        .map(|lib| format!("{lib}=info"))
        .collect()
}

/// Whether the log output is JSON lines (`log.format`), once [`init`] has run.
static JSON: AtomicBool = AtomicBool::new(false);

/// `-q`: [`say`] keeps a command's errors and warnings, not its summary.
static QUIET: AtomicBool = AtomicBool::new(false);

/// The log file (`log.file`), once [`init`] opened it.
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

/// The file the log goes to, reopened by [`reopen_file`] (after logrotate moved it away).
struct LogFile {
    path: PathBuf,
    file: RwLock<File>,
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Appended to: each line one write, so lines of several processes do not mix.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// One line's writer on the log file.
struct LogFileWriter(RwLockReadGuard<'static, File>);

impl std::io::Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

struct MakeLogFileWriter(&'static LogFile);

impl<'a> MakeWriter<'a> for MakeLogFileWriter {
    type Writer = LogFileWriter;

    fn make_writer(&'a self) -> LogFileWriter {
        LogFileWriter(self.0.file.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Opens `log.file` again at its path: logrotate moved the old one away (the daemon does so at
/// each reload, SIGHUP). Without a log file, nothing.
pub fn reopen_file() -> std::io::Result<()> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(());
    };
    let reopened = open_log_file(&log.path)?;
    *log.file.write().unwrap_or_else(|e| e.into_inner()) = reopened;
    Ok(())
}

/// Says `line` (a command's summary, its error) on stderr: as it is, or with
/// `log.format = "json"` as a JSON line of `level` in the log's shape, so that a log shipper
/// reading stderr as JSON lines meets nothing else. Whatever `log.level` lets through: it is
/// the command's output, not a log event (with `-q`, its errors and warnings only). With
/// `log.file`, there too, as a log line.
pub fn say(level: tracing::Level, line: std::fmt::Arguments<'_>) {
    if QUIET.load(Relaxed) && level > tracing::Level::WARN {
        return;
    }
    let now = || humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let record = JSON.load(Relaxed).then(|| {
        serde_json::json!({
            "timestamp": now().to_string(),
            "level": level.as_str(),
            "fields": {"message": line.to_string()},
            "target": "attache",
        })
    });
    // Not eprintln!, which panics when stderr is gone (a terminal closed, then the hangup
    // that cancels the command: it still ends as cancelled).
    let mut stderr = std::io::stderr().lock();
    let _ = match &record {
        Some(record) => writeln!(stderr, "{record}"),
        None if level == tracing::Level::ERROR => writeln!(stderr, "error: {line}"),
        None if level == tracing::Level::WARN => writeln!(stderr, "warning: {line}"),
        None => writeln!(stderr, "{line}"),
    };
    drop(stderr);
    if let Some(log) = LOG_FILE.get() {
        let text = match &record {
            Some(record) => format!("{record}\n"),
            None => format!("{} {:>5} {line}\n", now(), level.as_str()),
        };
        let file = log.file.read().unwrap_or_else(|e| e.into_inner());
        let _ = (&*file).write_all(text.as_bytes());
    }
}

/// [`say`] a line of the command's, as `eprintln!` takes it.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say(tracing::Level::INFO, format_args!($($arg)*))
    };
}

/// [`say`] a warning of the command's (`warning: …` in text), kept by `-q`.
#[macro_export]
macro_rules! say_warn {
    ($($arg:tt)*) => {
        $crate::logging::say(tracing::Level::WARN, format_args!($($arg)*))
    };
}

/// [`say`] an error of the command's (`error: …` in text), as `eprintln!` takes it.
#[macro_export]
macro_rules! say_error {
    ($($arg:tt)*) => {
        $crate::logging::say(tracing::Level::ERROR, format_args!($($arg)*))
    };
}

/// Installs the global subscriber, writing to stderr or to `log.file` (an error naming it if
/// it cannot be opened). A bad `log.level` falls back to `info` with a warning rather than
/// hiding every log.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let writer = match &settings.file {
        None => BoxMakeWriter::new(std::io::stderr),
        Some(path) => {
            let file = open_log_file(path).map_err(|e| {
                format!(
                    "cannot open log.file {}: {e}; create its directory, or choose another file",
                    path.display()
                )
            })?;
            let log = LOG_FILE.get_or_init(|| LogFile {
                path: path.clone(),
                file: RwLock::new(file),
            });
            BoxMakeWriter::new(MakeLogFileWriter(log))
        }
    };
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
    for directive in quiet_libraries(&settings.level) {
        filter = filter.add_directive(directive.parse().expect("valid"));
    }
    // Colours only for a person at a terminal: in a farm's task log, journald or a file, the
    // escape codes are noise around every line. NO_COLOR turns them off there too.
    let colour = settings.file.is_none()
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    JSON.store(settings.format == LogFormat::Json, Relaxed);
    QUIET.store(settings.quiet, Relaxed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    // With the layer that keeps each daemon job's warnings for its record.
    let _ = match settings.format {
        LogFormat::Text => builder
            .with_target(false)
            .finish()
            .with(job_warnings::Layer)
            .try_init(),
        LogFormat::Json => builder.json().finish().with(job_warnings::Layer).try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(
            "log.level {:?} is not a valid filter ({e}); using \"info\"",
            settings.level
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quiet_libraries;

    #[test]
    fn a_bare_debug_keeps_the_sdk_at_info_unless_it_is_named() {
        let quiet = quiet_libraries("debug");
        assert!(quiet.contains(&"aws_sigv4=info".to_string()), "{quiet:?}");
        assert!(quiet.contains(&"hyper=info".to_string()), "{quiet:?}");
        let named = quiet_libraries("trace,aws_smithy_runtime=debug");
        assert!(
            !named.iter().any(|d| d.starts_with("aws_smithy_runtime=")),
            "{named:?}"
        );
        assert!(named.contains(&"aws_sigv4=info".to_string()), "{named:?}");
        // No bare debug: the libraries are at the filter's own level (never raised to info).
        for level in ["info", "warn,attache=debug", "attache=trace"] {
            assert_eq!(quiet_libraries(level), Vec::<String>::new(), "{level}");
        }
    }
}
