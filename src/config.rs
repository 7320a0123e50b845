//! Settings: defaults, layered loading (file < environment < CLI flags) and validation.
//!
//! The `config` crate merges the layers. Its errors only say "in the environment" and cannot
//! tell which file, variable or flag set a bad value, so this module checks every key against
//! [`KEYS`] itself and remembers who set what, to name the key *and* the source in errors.

mod schedule;
pub mod starter;
mod units;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use schedule::{Schedule, WeekTime, parse_rates};
pub use units::{ByteSize, Duration, ParseUnitError, Rate};

// ---- settings ----

/// Everything attache can be configured with. See `config.example.toml` for each key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub store: StoreSettings,
    pub s3: S3Settings,
    pub transfer: TransferSettings,
    pub bandwidth: BandwidthSettings,
    pub hash: HashSettings,
    pub cache: CacheSettings,
    pub daemon: DaemonSettings,
    pub log: LogSettings,
    pub storage_profile: StorageProfileSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `s3://bucket/rootPrefix` or `file:///absolute/dir` (the embedded local store).
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Custom endpoint for S3-compatible stores (Garage, MinIO, Ceph).
    pub endpoint_url: Option<String>,
    /// HTTP(S) proxy for every request: a URL (may carry `user:password@`), or `none`;
    /// `None`: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` from the environment.
    /// Shown with its password alone redacted.
    #[serde(serialize_with = "serialize_proxy")]
    pub proxy: Option<Secret>,
    /// PEM file of CA certificates trusted besides the system's; `None`: `AWS_CA_BUNDLE`.
    pub ca_bundle: Option<PathBuf>,
    /// `None`: AWS_REGION, the profile, the EC2 instance metadata (AWS only), else us-east-1
    /// (`store::s3::region`).
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Bucket in the path instead of the host name; needed for IP endpoints.
    pub force_path_style: bool,
    /// Static credentials; `None`: the AWS chain (env, profile, instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub expected_bucket_owner: Option<String>,
    /// Hard cap on open HTTP connections.
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Retries after the first attempt, by the transfer gate (the SDK adds at most one
    /// immediate retry per attempt).
    pub retry_attempts: u32,
    pub request_checksum_calculation: ChecksumMode,
    pub response_checksum_validation: ChecksumMode,
    /// Upload with `If-None-Match: *` instead of a HEAD to skip existing content.
    pub conditional_put: bool,
    /// Largest object uploaded that way; bigger ones are asked about with HEAD first, since
    /// sending them only to hear that the store has them would waste bandwidth.
    pub conditional_put_max_size: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSettings {
    /// Files in flight.
    pub workers: usize,
    pub part_size: ByteSize,
    pub multipart_threshold: ByteSize,
    /// `multipart_threshold` for a store seen to copy every part again when it completes a
    /// multipart upload (`transfer::copying_stores`); 0: off.
    pub copying_store_threshold: ByteSize,
    /// Parts in flight per file; memory is bounded by parts × part size.
    pub max_parts_in_flight: usize,
    /// How long a hash seen in the store is trusted without asking again.
    pub known_present_ttl: Duration,
    /// Known-present entries re-checked against the store each run.
    pub known_present_sample: usize,
    /// How long a multipart upload that a store or network failure interrupted (or a crash
    /// left) stays open for a later run on this machine to resume; 0: abort it at once. Also
    /// how long an interrupted download's partial objects are kept (0: none is).
    pub resume_for: Duration,
    /// How long a multipart upload another machine left open, and each of its parts, must
    /// have been idle for this machine to take it over; also how recently a part must have
    /// landed in an upload this machine left for it to be spared as taken over. 0: take none
    /// over (and spare as by the default).
    pub take_over_after: Duration,
    /// Async worker threads (network and scheduling); 0: see [`Settings::runtime_threads`].
    pub runtime_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BandwidthSettings {
    pub upload: Rate,
    pub download: Rate,
    /// A timetable (`[DAY-]HH:MM,UP[:DOWN]` entries, see [`Schedule`]); when set, its entry
    /// in force replaces `upload` and `download`.
    pub schedule: Vec<String>,
}

impl BandwidthSettings {
    /// The (upload, download) limits in force at `t`.
    pub fn in_force(&self, t: WeekTime) -> (Rate, Rate) {
        // Checked when the settings were loaded.
        Schedule::parse(&self.schedule)
            .ok()
            .and_then(|s| s.in_force(t))
            .unwrap_or((self.upload, self.download))
    }

    /// Seconds from `t` until the schedule's next entry starts, if it has one.
    pub fn next_change(&self, t: WeekTime) -> Option<u32> {
        Schedule::parse(&self.schedule).ok()?.next_change(t)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashSettings {
    /// 0: one per core; see [`Settings::hash_threads`].
    pub threads: usize,
    pub read_buffer: ByteSize,
    pub follow_external_symlinks: bool,
    /// Patterns of paths scans leave out (see `scan::filter`).
    pub exclude: Vec<String>,
    /// Patterns of the only files scans take (none: every file not excluded).
    pub include: Vec<String>,
    /// rclone's ordered filter rules (`+ PATTERN`, `- PATTERN`, `!`), asked before the
    /// patterns (see `scan::rules`).
    pub filter: Vec<String>,
    /// Names of marker files: a directory holding one is left out whole (see
    /// `scan::ScanOptions::exclude_if_present`).
    pub exclude_if_present: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    pub dir: PathBuf,
    pub hash_cache: bool,
    /// Size of the local content cache (copies of fetched objects); 0: off.
    pub content_size: ByteSize,
    /// Where the content cache lives; `None`: `<dir>/content`.
    pub content_dir: Option<PathBuf>,
}

impl CacheSettings {
    /// The content cache's directory.
    pub fn content_dir(&self) -> PathBuf {
        self.content_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("content"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    pub socket: PathBuf,
    /// Group given access to the socket (mode 0660 instead of 0600).
    pub socket_group: Option<String>,
    /// `host:port` for a TCP listener; `None`: Unix socket only.
    pub listen: Option<String>,
    /// Bearer token required on the TCP listener.
    pub token_file: Option<PathBuf>,
    /// The TCP listener's certificate (PEM, with its chain) and private key: with both, it
    /// speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Finished jobs whose records are kept (in memory and in `state_dir`): the most recently
    /// finished this many (at least 1); older ones are forgotten.
    pub jobs_kept: usize,
    /// Finished jobs are forgotten this long after they end (at least a minute); 0: no age
    /// limit.
    pub jobs_kept_for: Duration,
    /// Jobs that run at once; the others wait, queued (at least 1).
    pub max_running_jobs: usize,
    /// Jobs a client of another user (through the socket) may have queued or running at
    /// once; 0: no limit. The daemon's own user, root and the TCP listener's token holder are
    /// not limited.
    pub max_jobs_per_user: usize,
}

impl Settings {
    /// The keys whose value here differs from `started`'s and which a running daemon takes
    /// only at its next start: the listeners' addresses, the state directory, the number of
    /// jobs run at once, and the log's filter and format (its output is set up once). The
    /// job history's limits, the token and certificate files, and TLS on or off apply at a
    /// reload.
    pub fn restart_keys(&self, started: &Settings) -> Vec<&'static str> {
        let (d, s) = (&self.daemon, &started.daemon);
        [
            ("daemon.socket", d.socket != s.socket),
            ("daemon.socket_group", d.socket_group != s.socket_group),
            ("daemon.listen", d.listen != s.listen),
            ("daemon.state_dir", d.state_dir != s.state_dir),
            (
                "daemon.max_running_jobs",
                d.max_running_jobs != s.max_running_jobs,
            ),
            ("log.level", self.log.level != started.log.level),
            ("log.format", self.log.format != started.log.format),
            ("log.file", self.log.file != started.log.file),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }
}

/// This machine's file-system locations of the farm's storage profile; the `--location` and
/// `--shared` flags add to them (a flag's NAME replaces the same NAME here).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageProfileSettings {
    /// LOCAL locations, `NAME=PATH`: submit groups inputs under PATH into a root named NAME;
    /// sync-inputs and sync-outputs place that root at PATH.
    pub locations: Vec<String>,
    /// SHARED locations: the farm reads them directly, so submit uploads nothing under them.
    pub shared: Vec<PathBuf>,
}

impl StorageProfileSettings {
    /// `given` (`NAME=PATH` flags or job fields) and then the configured locations whose
    /// NAME none of `given` has.
    pub fn locations_with(&self, given: &[String]) -> Vec<String> {
        let name = |v: &String| v.split_once('=').map(|(n, _)| n.to_owned());
        let names: Vec<_> = given.iter().filter_map(name).collect();
        let configured = self
            .locations
            .iter()
            .filter(|v| name(v).is_none_or(|n| !names.contains(&n)));
        given.iter().chain(configured).cloned().collect()
    }

    /// `given` and the configured shared locations.
    pub fn shared_with(&self, given: &[PathBuf]) -> Vec<PathBuf> {
        let mut all = given.to_vec();
        all.extend(self.shared.iter().filter(|p| !given.contains(p)).cloned());
        all
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing `EnvFilter` directive.
    pub level: String,
    pub format: LogFormat,
    /// When stderr is not a terminal (a farm's task log, a service), a progress line this
    /// often; 0: none.
    pub stats: Duration,
    /// A file the log goes to instead of stderr (appended to), with each command's summary
    /// and error too; `None`: stderr only.
    pub file: Option<PathBuf>,
    /// `-q`: no progress bar and no summary, only warnings and errors (the command line's
    /// alone, not a config key).
    #[serde(skip)]
    pub quiet: bool,
}

/// When the S3 SDK computes request checksums / validates response checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum ChecksumMode {
    /// Default: several S3-compatible stores reject the SDK's streaming CRC32 trailer.
    #[default]
    WhenRequired,
    WhenSupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

// Parsed by hand because the `config` crate's enum errors do not list the allowed values.
impl TryFrom<String> for ChecksumMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "when_required" => Ok(Self::WhenRequired),
            "when_supported" => Ok(Self::WhenSupported),
            _ => Err(one_of(&s, &["when_required", "when_supported"])),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(one_of(&s, &["text", "json"])),
        }
    }
}

fn one_of(got: &str, allowed: &[&str]) -> String {
    format!("expected one of {}, got {got:?}", allowed.join(", "))
}

/// A credential. `Debug` and `Serialize` never show it, so it cannot leak into logs or
/// `config show`; call [`Secret::expose`] only where it is handed to the SDK.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

const REDACTED: &str = "<redacted>";

/// `s3.proxy` as `config show` prints it: the URL with the password it may carry redacted,
/// so a wrangler sees which proxy is in use.
fn serialize_proxy<S: serde::Serializer>(proxy: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match proxy {
        None => s.serialize_none(),
        Some(p) => s.serialize_some(&redact_password(p.expose())),
    }
}

/// `scheme://user:password@host…` with the password redacted (a user name alone, too); a
/// URL without them as it is; anything else (not a URL) redacted whole.
fn redact_password(url: &str) -> String {
    if url == "none" {
        return url.into();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        // A user name alone may be the secret (a token): redacted whole.
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{}", &rest[at + 1..]),
            None => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        },
        None => url.into(),
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

// ---- defaults ----

impl Default for StoreSettings {
    fn default() -> Self {
        let dir = xdg(dirs::data_dir(), "/var/lib").join("store");
        Self {
            url: format!("file://{}", dir.display()),
        }
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            proxy: None,
            ca_bundle: None,
            region: None,
            profile: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            expected_bucket_owner: None,
            max_connections: 64,
            idle_timeout: Duration::secs(30),
            connect_timeout: Duration::secs(5),
            read_timeout: Duration::secs(60),
            retry_attempts: 5,
            request_checksum_calculation: ChecksumMode::WhenRequired,
            response_checksum_validation: ChecksumMode::WhenRequired,
            conditional_put: true,
            conditional_put_max_size: ByteSize::mib(1),
        }
    }
}

impl Default for TransferSettings {
    fn default() -> Self {
        Self {
            workers: 32,
            part_size: ByteSize::mib(8),
            multipart_threshold: ByteSize::mib(16),
            copying_store_threshold: MAX_PART,
            max_parts_in_flight: 8,
            known_present_ttl: Duration::secs(24 * 3600),
            known_present_sample: 32,
            resume_for: Duration::secs(24 * 3600),
            take_over_after: Duration::secs(30 * 60),
            runtime_threads: 0,
        }
    }
}

impl Default for HashSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            read_buffer: ByteSize::mib(1),
            follow_external_symlinks: false,
            exclude: Vec::new(),
            include: Vec::new(),
            filter: Vec::new(),
            exclude_if_present: Vec::new(),
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dir: xdg(dirs::cache_dir(), "/var/cache"),
            hash_cache: true,
            content_size: ByteSize(0),
            content_dir: None,
        }
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        let state = dirs::state_dir().or_else(dirs::data_dir);
        Self {
            socket: xdg(dirs::runtime_dir(), "/run").join("attache.sock"),
            socket_group: None,
            listen: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            state_dir: xdg(state, "/var/lib").join("daemon"),
            jobs_kept: 1000,
            jobs_kept_for: Duration::secs(7 * 24 * 3600),
            max_running_jobs: 8,
            max_jobs_per_user: 100,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            stats: Duration::secs(30),
            file: None,
            quiet: false,
        }
    }
}

/// `<XDG dir>/attache`; services without a home directory get the system `fallback`.
fn xdg(dir: Option<PathBuf>, fallback: &str) -> PathBuf {
    dir.unwrap_or_else(|| fallback.into()).join("attache")
}

impl Settings {
    /// The settings as TOML, for `config show`; set secrets appear as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        // Only a non-UTF-8 path can fail; say so rather than panic in `config show`.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot show settings: {e}\n"))
    }

    /// Async worker threads: `transfer.runtime_threads`, or half the cores (at least one).
    /// Hashing and file I/O have threads of their own; more async workers than that only
    /// hand each small request between threads (measured: 10-12% more CPU and a slower
    /// 5,000-file get with 2 workers than with 1 on 2 cores).
    pub fn runtime_threads(&self) -> usize {
        match self.transfer.runtime_threads {
            0 => (cores() / 2).max(1),
            n => n,
        }
    }

    /// Hashing threads, with 0 resolved to the number of cores.
    pub fn hash_threads(&self) -> usize {
        match self.hash.threads {
            0 => cores(),
            n => n,
        }
    }
}

/// The cores this process may use (1 when that cannot be told).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Every key, by section; unknown-key checks walk the sources against it.
const KEYS: &[(&str, &[&str])] = &[
    ("store", &["url"]),
    (
        "s3",
        &[
            "endpoint_url",
            "proxy",
            "ca_bundle",
            "region",
            "profile",
            "force_path_style",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "expected_bucket_owner",
            "max_connections",
            "idle_timeout",
            "connect_timeout",
            "read_timeout",
            "retry_attempts",
            "request_checksum_calculation",
            "response_checksum_validation",
            "conditional_put",
            "conditional_put_max_size",
        ],
    ),
    (
        "transfer",
        &[
            "workers",
            "part_size",
            "multipart_threshold",
            "copying_store_threshold",
            "max_parts_in_flight",
            "known_present_ttl",
            "known_present_sample",
            "resume_for",
            "take_over_after",
            "runtime_threads",
        ],
    ),
    ("bandwidth", &["upload", "download", "schedule"]),
    (
        "hash",
        &[
            "threads",
            "read_buffer",
            "follow_external_symlinks",
            "exclude",
            "include",
            "filter",
            "exclude_if_present",
        ],
    ),
    (
        "cache",
        &["dir", "hash_cache", "content_size", "content_dir"],
    ),
    (
        "daemon",
        &[
            "socket",
            "socket_group",
            "listen",
            "token_file",
            "tls_cert",
            "tls_key",
            "state_dir",
            "jobs_kept",
            "jobs_kept_for",
            "max_running_jobs",
            "max_jobs_per_user",
        ],
    ),
    ("log", &["level", "format", "stats", "file"]),
    ("storage_profile", &["locations", "shared"]),
];

/// List settings; in the environment their items are separated by `;`
/// (`ATTACHE_STORAGE_PROFILE__LOCATIONS="Projects=/mnt/projects;Library=/mnt/lib"`).
const LIST_KEYS: &[&str] = &[
    "storage_profile.locations",
    "storage_profile.shared",
    "hash.exclude",
    "hash.include",
    "hash.filter",
    "hash.exclude_if_present",
    "bandwidth.schedule",
];

// ---- errors ----

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// The variable's name, e.g. `ATTACHE_TRANSFER__PART_SIZE`.
    Env(String),
    /// The flag's name, e.g. `--store`.
    Flag(String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
            Self::Default => f.write_str("the built-in default"),
        }
    }
}

/// Anything wrong with the configuration. The CLI exits with code 2 on all of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist (given by --config or ATTACHE_CONFIG): give an existing file, or neither for the default files", path.display())]
    FileNotFound { path: PathBuf },
    #[error("cannot read config file {}: {source}", path.display())]
    FileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {message}", path.display())]
    FileParse { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {origin}; {known}")]
    UnknownKey {
        key: String,
        origin: Origin,
        /// The keys that would have been accepted there.
        known: String,
    },
    #[error("invalid value for `{key}` in {origin}: {reason}")]
    InvalidValue {
        key: String,
        origin: Origin,
        reason: String,
    },
    /// A `config` crate error that names no key (not expected after the checks here).
    #[error("invalid configuration: {0}")]
    Other(#[from] config::ConfigError),
}

/// The key `key` was likely meant to be: the same name in another section or outside any
/// (`s3.workers`, `workers` for `transfer.workers`), a variable's `_` for its `__`
/// (`s3_region`), else a known key or section within two typos.
fn closest_key(key: &str) -> Option<String> {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let all = || {
        KEYS.iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
    };
    let known = |k: &str| all().any(|known| known == k);
    if let Some(found) = all().find(|k| k.split_once('.').is_some_and(|(_, n)| n == name)) {
        return Some(found);
    }
    if let Some((s, n)) = key.split_once('_').filter(|_| section.is_empty()) {
        let dotted = format!("{s}.{n}");
        return known(&dotted).then_some(dotted);
    }
    let near = |wanted: &str, candidates: &mut dyn Iterator<Item = String>| {
        candidates
            .map(|c| (strsim::levenshtein(wanted, &c), c))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
    };
    if section.is_empty() {
        return None;
    }
    if KEYS.iter().any(|(s, _)| *s == section) {
        return near(key, &mut all());
    }
    // An unknown section: the nearest one, with the name if it has it.
    let sections = &mut KEYS.iter().map(|(s, _)| s.to_string());
    near(section, sections).map(|s| match format!("{s}.{name}") {
        k if known(&k) => k,
        _ => format!("[{s}]"),
    })
}

fn unknown_key(key: &str, origin: &Origin) -> ConfigError {
    let section = key.split('.').next().unwrap_or(key);
    let known = match KEYS.iter().find(|(name, _)| *name == section) {
        Some((name, keys)) => format!("keys in [{name}] are: {}", keys.join(", ")),
        None => {
            let sections: Vec<_> = KEYS.iter().map(|(name, _)| *name).collect();
            format!("sections are: {}", sections.join(", "))
        }
    };
    let known = match closest_key(key) {
        Some(meant) => format!("did you mean `{meant}`? {known}"),
        None => known,
    };
    let known = match origin {
        Origin::Env(_) => format!("{known} (variables are named ATTACHE_<SECTION>__<KEY>)"),
        _ => known,
    };
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin: origin.clone(),
        known,
    }
}

fn check_key(key: &str, origin: &Origin) -> Result<(), ConfigError> {
    let known = key.split_once('.').is_some_and(|(section, name)| {
        KEYS.iter()
            .any(|(s, keys)| *s == section && keys.contains(&name))
    });
    if known {
        Ok(())
    } else {
        Err(unknown_key(key, origin))
    }
}

// ---- loading ----

/// What [`load`] reads besides the default file locations.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config`: must exist. `None`: the user file, then /etc, then defaults only.
    pub config_file: Option<PathBuf>,
    /// CLI flags, highest precedence.
    pub overrides: Vec<Override>,
    pub env: EnvSource,
}

/// One CLI flag that sets a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key, e.g. `store.url`.
    pub key: String,
    pub value: String,
    /// The flag, for error messages, e.g. `--store`.
    pub source: String,
}

/// Where `ATTACHE_*` variables come from; tests pass a map instead of touching the process.
#[derive(Debug, Clone, Default)]
pub enum EnvSource {
    #[default]
    Process,
    Map(HashMap<String, String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub settings: Settings,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// The secrets that file sets (`s3.secret_access_key`, `s3.session_token`, a password in
    /// `s3.proxy`) when every user of the machine can read it: what a warning names.
    pub secrets_open_to_others: Vec<&'static str>,
}

const ENV_PREFIX: &str = "ATTACHE_";

/// `ATTACHE_*` variables that steer the command line rather than set a setting.
pub const CLIENT_ENV_VARS: &[&str] = &[
    "ATTACHE_CONFIG",
    "ATTACHE_DAEMON",
    "ATTACHE_DAEMON_URL",
    "ATTACHE_DAEMON_TOKEN_FILE",
    "ATTACHE_DAEMON_CA",
];

/// Reads the file, environment and flags, merges them over the defaults and validates.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let mut setters = Setters::default();
    let mut builder = config::Config::builder();

    let file = read_config_file(opts.config_file.as_deref())?;
    if let Some((path, text)) = &file {
        setters.add_file(path, text)?;
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }

    let mut env = env_vars(&opts.env)?;
    setters.add_env(&env)?;
    // The `config` crate splits lists only when it also guesses types, which would turn a
    // profile or secret like "007" into a number: lists are split here and set directly
    // (no flag sets them, so they still rank below flags).
    let lists: Vec<(String, Vec<String>)> = env
        .extract_if(.., |(name, _)| LIST_KEYS.contains(&env_key(name).as_str()))
        .map(|(name, value)| {
            let items = value
                .split(';')
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            (env_key(&name), items.collect())
        })
        .collect();
    // Values stay strings (no try_parsing): "007" must remain "007" for a profile or a
    // secret, and strings still deserialize into numbers and booleans, as flags do.
    let env_source = config::Environment::with_prefix("ATTACHE")
        .prefix_separator("_")
        .separator("__")
        .ignore_empty(true)
        .source(Some(env.into_iter().collect()));
    builder = builder.add_source(env_source);
    for (key, items) in lists {
        builder = builder.set_override(key, items)?;
    }

    for flag in &opts.overrides {
        setters.add_flag(flag)?;
        if LIST_KEYS.contains(&flag.key.as_str()) {
            // A list on the command line: items separated by `;` or spaces.
            let items: Vec<String> = flag
                .value
                .split(|c: char| c == ';' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder.set_override(&flag.key, items)?;
            continue;
        }
        builder = builder.set_override(&flag.key, flag.value.clone())?;
        // A rate given on the command line (--bwlimit) is this run's, whatever the timetable
        // says.
        if flag.key.starts_with("bandwidth.") {
            builder = builder.set_override("bandwidth.schedule", Vec::<String>::new())?;
        }
    }

    let settings: Settings = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| setters.explain(e))?;
    validate(&settings).map_err(|v| setters.invalid(v.key, v.reason))?;
    let secrets_open_to_others = match &file {
        Some((path, _)) => setters.secrets_open_to_others(path, &settings),
        None => Vec::new(),
    };
    Ok(Loaded {
        settings,
        file: file.map(|(path, _)| path),
        secrets_open_to_others,
    })
}

/// The explicit file (which must exist), else the first default location that exists.
fn read_config_file(explicit: Option<&Path>) -> Result<Option<(PathBuf, String)>, ConfigError> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => match default_files().into_iter().find(|p| p.exists()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ConfigError::FileNotFound { path })
        }
        Err(source) => Err(ConfigError::FileRead { path, source }),
    }
}

fn default_files() -> Vec<PathBuf> {
    let user = dirs::config_dir().map(|d| d.join("attache/config.toml"));
    user.into_iter()
        .chain([PathBuf::from("/etc/attache/config.toml")])
        .collect()
}

/// Non-empty `ATTACHE_*` variables, sorted so the first error reported is stable.
fn env_vars(source: &EnvSource) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = match source {
        EnvSource::Process => process_env()?,
        EnvSource::Map(map) => map.clone().into_iter().collect(),
    };
    vars.retain(|(name, value)| {
        has_env_prefix(name) && !value.is_empty() && !CLIENT_ENV_VARS.contains(&name.as_str())
    });
    vars.sort();
    Ok(vars)
}

fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let ours = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
        .filter(|(name, _)| has_env_prefix(name) && !CLIENT_ENV_VARS.contains(&name.as_str()));
    ours.map(|(name, value)| match value.into_string() {
        Ok(value) => Ok((name, value)),
        Err(_) => Err(ConfigError::InvalidValue {
            key: env_key(&name),
            origin: Origin::Env(name),
            reason: "the value is not valid UTF-8".into(),
        }),
    })
    .collect()
}

// Case-insensitive, as in the `config` crate, so both agree on which variables are ours.
fn has_env_prefix(name: &str) -> bool {
    name.get(..ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
}

/// `ATTACHE_S3__ENDPOINT_URL` -> `s3.endpoint_url`, the way the `config` crate maps it.
fn env_key(name: &str) -> String {
    name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".")
}

/// `section = 1` where `[section]` belongs: unknown if there is no such section.
fn not_a_table(section: &str, origin: Origin) -> ConfigError {
    if !KEYS.iter().any(|(s, _)| *s == section) {
        return unknown_key(section, &origin);
    }
    ConfigError::InvalidValue {
        key: section.to_owned(),
        origin,
        reason: format!("expected a [{section}] table"),
    }
}

/// Who set each key, in precedence order: the last entry for a key is the one that won.
#[derive(Default)]
struct Setters(Vec<(String, Origin)>);

impl Setters {
    fn add_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::FileParse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let origin = Origin::File(path.to_owned());
        for (section, value) in &table {
            let toml::Value::Table(keys) = value else {
                return Err(not_a_table(section, origin));
            };
            for key in keys.keys() {
                self.add(format!("{section}.{key}"), origin.clone())?;
            }
        }
        Ok(())
    }

    fn add_env(&mut self, vars: &[(String, String)]) -> Result<(), ConfigError> {
        vars.iter()
            .try_for_each(|(name, _)| self.add(env_key(name), Origin::Env(name.clone())))
    }

    fn add_flag(&mut self, flag: &Override) -> Result<(), ConfigError> {
        self.add(flag.key.clone(), Origin::Flag(flag.source.clone()))
    }

    fn add(&mut self, key: String, origin: Origin) -> Result<(), ConfigError> {
        check_key(&key, &origin)?;
        self.0.push((key, origin));
        Ok(())
    }

    /// The secrets the file at `path` set (and nothing after it), when every user may read
    /// it.
    fn secrets_open_to_others(&self, path: &Path, settings: &Settings) -> Vec<&'static str> {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
        if !open {
            return Vec::new();
        }
        let from_file = |key: &str| matches!(self.origin_of(key), Origin::File(_));
        let proxy_password = settings
            .s3
            .proxy
            .as_ref()
            .is_some_and(|p| redact_password(p.expose()) != p.expose());
        [
            ("s3.secret_access_key", "s3.secret_access_key", true),
            ("s3.session_token", "s3.session_token", true),
            ("s3.proxy", "the password in s3.proxy", proxy_password),
        ]
        .into_iter()
        .filter(|(key, _, held)| *held && from_file(key))
        .map(|(_, name, _)| name)
        .collect()
    }

    fn origin_of(&self, key: &str) -> Origin {
        let last = self.0.iter().rev().find(|(k, _)| k == key);
        last.map_or(Origin::Default, |(_, origin)| origin.clone())
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_owned(),
            origin: self.origin_of(key),
            reason,
        }
    }

    /// Names the source of a value the `config` crate could not deserialize.
    fn explain(&self, err: config::ConfigError) -> ConfigError {
        match err {
            config::ConfigError::Type {
                key: Some(key),
                unexpected,
                expected,
                ..
            } => self.invalid(&key, format!("expected {expected}, got {unexpected}")),
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => self.invalid(&key, error.to_string()),
            other => ConfigError::Other(other),
        }
    }
}

// ---- validation ----

/// A value that parsed but is outside what attache (or S3) accepts.
struct Violation {
    key: &'static str,
    reason: String,
}

const MIN_PART: ByteSize = ByteSize::mib(5);
const MAX_PART: ByteSize = ByteSize::gib(5);

fn validate(s: &Settings) -> Result<(), Violation> {
    check_store_url(&s.store.url)?;
    if let Some(url) = &s.s3.endpoint_url {
        check_endpoint_url(url)?;
    }
    crate::logging::check_level(&s.log.level).map_err(|reason| Violation {
        key: "log.level",
        reason,
    })?;
    if let Some(proxy) = &s.s3.proxy {
        crate::store::s3::proxy_setting(proxy.expose()).map_err(|reason| Violation {
            key: "s3.proxy",
            reason,
        })?;
    }
    if let Some(path) = &s.s3.ca_bundle {
        crate::store::s3::read_ca_bundle(path).map_err(|reason| Violation {
            key: "s3.ca_bundle",
            reason,
        })?;
    }
    at_least("s3.max_connections", s.s3.max_connections, 1)?;
    at_least(
        "s3.connect_timeout",
        s.s3.connect_timeout,
        Duration(MIN_TIMEOUT),
    )?;
    at_least("s3.read_timeout", s.s3.read_timeout, Duration(MIN_TIMEOUT))?;
    at_least("transfer.workers", s.transfer.workers, 1)?;
    // S3 multipart parts are 5 MiB to 5 GiB (only the last may be smaller).
    at_least("transfer.part_size", s.transfer.part_size, MIN_PART)?;
    at_most("transfer.part_size", s.transfer.part_size, MAX_PART)?;
    at_least(
        "transfer.multipart_threshold",
        s.transfer.multipart_threshold,
        MIN_PART,
    )?;
    // The largest object S3 takes in one PutObject.
    at_most(
        "transfer.multipart_threshold",
        s.transfer.multipart_threshold,
        MAX_PART,
    )?;
    if s.transfer.copying_store_threshold.0 != 0 {
        let t = s.transfer.copying_store_threshold;
        at_least("transfer.copying_store_threshold", t, MIN_PART)
            .and_then(|()| at_most("transfer.copying_store_threshold", t, MAX_PART))
            .map_err(|v| Violation {
                reason: format!("{} (\"0\" turns it off)", v.reason),
                ..v
            })?;
    }
    at_least(
        "transfer.max_parts_in_flight",
        s.transfer.max_parts_in_flight,
        1,
    )?;
    at_least("hash.read_buffer", s.hash.read_buffer, ByteSize::kib(64))?;
    at_most("hash.read_buffer", s.hash.read_buffer, ByteSize::mib(64))?;
    Schedule::parse(&s.bandwidth.schedule).map_err(|reason| Violation {
        key: "bandwidth.schedule",
        reason,
    })?;
    crate::scan::PathFilter::excluding(&s.hash.exclude).map_err(|e| Violation {
        key: "hash.exclude",
        reason: e.to_string(),
    })?;
    crate::scan::PathFilter::new(&[] as &[&str], &s.hash.include).map_err(|e| Violation {
        key: "hash.include",
        reason: e.to_string(),
    })?;
    crate::scan::rules::Rules::new(&s.hash.filter).map_err(|e| Violation {
        key: "hash.filter",
        reason: e.to_string(),
    })?;
    crate::scan::check_marker_names(&s.hash.exclude_if_present).map_err(|reason| Violation {
        key: "hash.exclude_if_present",
        reason,
    })?;
    check_listener(&s.daemon)?;
    // A client must be able to read the result of the job it has just run.
    at_least("daemon.jobs_kept", s.daemon.jobs_kept, 1)?;
    at_least("daemon.max_running_jobs", s.daemon.max_running_jobs, 1)?;
    if !s.daemon.jobs_kept_for.0.is_zero() {
        at_least(
            "daemon.jobs_kept_for",
            s.daemon.jobs_kept_for,
            Duration::secs(60),
        )?;
    }
    check_storage_profile(&s.storage_profile)
}

/// Every location is `NAME=PATH` with an absolute PATH, and no NAME twice.
fn check_storage_profile(p: &StorageProfileSettings) -> Result<(), Violation> {
    let mut names = Vec::new();
    for v in &p.locations {
        let bad = |reason: String| Violation {
            key: "storage_profile.locations",
            reason,
        };
        let Some((name, path)) = v
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        else {
            return Err(bad(format!("{v:?}: expected NAME=PATH")));
        };
        if !Path::new(path).is_absolute() {
            return Err(bad(format!("{v:?}: {path} must be an absolute path")));
        }
        if names.contains(&name) {
            return Err(bad(format!("location {name:?} is given twice")));
        }
        names.push(name);
    }
    match p.shared.iter().find(|s| !s.is_absolute()) {
        Some(s) => Err(Violation {
            key: "storage_profile.shared",
            reason: format!("{} must be an absolute path", s.display()),
        }),
        None => Ok(()),
    }
}

/// A zero timeout would fail every request.
const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1);

fn at_least<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
) -> Result<(), Violation> {
    if value >= min {
        return Ok(());
    }
    Err(Violation {
        key,
        reason: format!("{value} is too small, the minimum is {min}"),
    })
}

fn at_most<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    max: T,
) -> Result<(), Violation> {
    if value <= max {
        return Ok(());
    }
    Err(Violation {
        key,
        reason: format!("{value} is too large, the maximum is {max}"),
    })
}

/// A TCP listener is reachable by other users, so it is only allowed with a token; its
/// certificate and key go together, and with a listener.
fn check_listener(d: &DaemonSettings) -> Result<(), Violation> {
    if d.listen.is_some() && d.token_file.is_none() {
        return Err(Violation {
            key: "daemon.listen",
            reason: "a TCP listener needs daemon.token_file to be set".into(),
        });
    }
    let (key, reason) = match (&d.tls_cert, &d.tls_key) {
        (Some(_), None) => ("daemon.tls_key", "daemon.tls_cert needs its private key"),
        (None, Some(_)) => ("daemon.tls_cert", "daemon.tls_key needs its certificate"),
        (Some(_), Some(_)) if d.listen.is_none() => (
            "daemon.tls_cert",
            "TLS is for the TCP listener: set daemon.listen too",
        ),
        _ => return Ok(()),
    };
    Err(Violation {
        key,
        reason: reason.into(),
    })
}

/// An endpoint that is not `http(s)://HOST[:PORT]` would fail only at the first request,
/// after the hashing, as a "dispatch failure".
fn check_endpoint_url(url: &str) -> Result<(), Violation> {
    let ok = url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if ok {
        return Ok(());
    }
    Err(Violation {
        key: "s3.endpoint_url",
        reason: format!("expected http://HOST:PORT or https://HOST[:PORT], got {url:?}"),
    })
}

fn check_store_url(url: &str) -> Result<(), Violation> {
    let ok = match url.split_once("://") {
        Some(("s3", bucket_and_prefix)) => {
            !bucket_and_prefix.is_empty() && !bucket_and_prefix.starts_with('/')
        }
        Some(("file", path)) => path.starts_with('/'),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(Violation {
        key: "store.url",
        reason: format!("expected s3://bucket/prefix or file:///absolute/dir, got {url:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));

    /// A config file in a temp dir; tests always pass one so the user's own file is not read.
    struct TestFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn file(text: &str) -> TestFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        TestFile { _dir: dir, path }
    }

    fn options(file: &TestFile, env: &[(&str, &str)], flags: &[(&str, &str, &str)]) -> LoadOptions {
        LoadOptions {
            config_file: Some(file.path.clone()),
            env: EnvSource::Map(env.iter().map(|&(k, v)| (k.into(), v.into())).collect()),
            overrides: flags
                .iter()
                .map(|&(key, value, source)| Override {
                    key: key.into(),
                    value: value.into(),
                    source: source.into(),
                })
                .collect(),
        }
    }

    fn settings(text: &str, env: &[(&str, &str)], flags: &[(&str, &str, &str)]) -> Settings {
        load(&options(&file(text), env, flags)).unwrap().settings
    }

    /// The error message, asserted to contain every one of `parts`.
    fn error(text: &str, env: &[(&str, &str)], flags: &[(&str, &str, &str)], parts: &[&str]) {
        let f = file(text);
        let msg = load(&options(&f, env, flags)).unwrap_err().to_string();
        let msg = msg.replace(&f.path.display().to_string(), "<file>");
        for part in parts {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    #[test]
    fn example_file_equals_the_defaults() {
        let f = file(EXAMPLE);
        let loaded = load(&options(&f, &[], &[])).unwrap();
        assert_eq!(loaded.settings, Settings::default());
        assert_eq!(loaded.file, Some(f.path.clone()));
    }

    #[test]
    fn example_file_documents_every_key() {
        let mut documented = Vec::new();
        let mut section = "";
        for line in EXAMPLE.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((key, _)) = line.split_once(" = ") {
                // Prose such as "MB = 10^6 bytes" is not a key.
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    documented.push(format!("{section}.{key}"));
                }
            }
        }
        let all: Vec<String> = KEYS
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
            .collect();
        assert_eq!(documented, all);
    }

    #[test]
    fn key_table_matches_the_settings_struct() {
        // serde_json keeps `None` fields as null, so every field shows up.
        let json = serde_json::to_value(Settings::default()).unwrap();
        let mut from_struct: Vec<(String, Vec<String>)> = json
            .as_object()
            .unwrap()
            .iter()
            .map(|(s, keys)| {
                (
                    s.clone(),
                    keys.as_object().unwrap().keys().cloned().collect(),
                )
            })
            .collect();
        let mut from_table: Vec<(String, Vec<String>)> = KEYS
            .iter()
            .map(|(s, keys)| (s.to_string(), keys.iter().map(|k| k.to_string()).collect()))
            .collect();
        for (_, keys) in &mut from_table {
            keys.sort();
        }
        from_table.sort();
        for (_, keys) in &mut from_struct {
            keys.sort();
        }
        from_struct.sort();
        assert_eq!(from_struct, from_table);
    }

    #[test]
    fn defaults_are_resolved_to_real_paths() {
        let s = Settings::default();
        assert!(s.store.url.starts_with("file:///"), "{}", s.store.url);
        assert!(s.store.url.ends_with("/attache/store"), "{}", s.store.url);
        assert!(s.cache.dir.is_absolute() && s.cache.dir.ends_with("attache"));
        assert!(s.daemon.socket.ends_with("attache/attache.sock"));
        assert!(s.daemon.state_dir.ends_with("attache/daemon"));
        assert_eq!(s.transfer.part_size, ByteSize::mib(8));
        assert_eq!(s.bandwidth.download, Rate::UNLIMITED);
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let text = "[transfer]\npart_size = \"16MiB\"\nworkers = 4\n";
        let env = [("ATTACHE_TRANSFER__PART_SIZE", "32MiB")];
        let flag = [("transfer.part_size", "64MiB", "--part-size")];

        assert_eq!(
            settings(text, &[], &[]).transfer.part_size,
            ByteSize::mib(16)
        );
        let with_env = settings(text, &env, &[]);
        assert_eq!(with_env.transfer.part_size, ByteSize::mib(32));
        assert_eq!(
            with_env.transfer.workers, 4,
            "keys the env does not set stay"
        );
        assert_eq!(
            settings(text, &env, &flag).transfer.part_size,
            ByteSize::mib(64)
        );
    }

    #[test]
    fn environment_values_are_taken_verbatim_and_converted_per_key() {
        let env = [
            ("ATTACHE_S3__PROFILE", "007"),
            ("ATTACHE_S3__FORCE_PATH_STYLE", "true"),
            ("ATTACHE_TRANSFER__WORKERS", "16"),
            ("ATTACHE_BANDWIDTH__DOWNLOAD", "50MB/s"),
            ("ATTACHE_S3__REGION", ""),
        ];
        let s = settings("", &env, &[]);
        assert_eq!(s.s3.profile.as_deref(), Some("007"));
        assert!(s.s3.force_path_style);
        assert_eq!(s.transfer.workers, 16);
        assert_eq!(s.bandwidth.download, Rate(50_000_000));
        assert_eq!(s.s3.region, None, "empty variables are ignored");
    }

    #[test]
    fn flags_set_strings_numbers_and_booleans() {
        let flags = [
            ("store.url", "s3://bucket/root", "--store"),
            ("s3.conditional_put", "false", "--conditional-put"),
            ("transfer.workers", "3", "--workers"),
        ];
        let s = settings("", &[], &flags);
        assert_eq!(s.store.url, "s3://bucket/root");
        assert!(!s.s3.conditional_put);
        assert_eq!(s.transfer.workers, 3);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_source() {
        let in_file = "[transfer]\npart_sise = \"8MiB\"\n";
        error(
            in_file,
            &[],
            &[],
            &[
                "`transfer.part_sise`",
                "config file <file>",
                "did you mean `transfer.part_size`?",
            ],
        );
        error(
            "[transfr]\nworkers = 1\n",
            &[],
            &[],
            &[
                "`transfr.workers`",
                "<file>",
                "did you mean `transfer.workers`?",
                "sections are",
            ],
        );
        error(
            "[transfr]\nspeed = 1\n",
            &[],
            &[],
            &["did you mean `[transfer]`?"],
        );
        error(
            "[s3]\nworkers = 1\n",
            &[],
            &[],
            &["did you mean `transfer.workers`?", "keys in [s3] are"],
        );
        error(
            "workers = 1\n",
            &[],
            &[],
            &["`workers`", "<file>", "did you mean `transfer.workers`?"],
        );
        let env = [("ATTACHE_S3_REGION", "eu-west-1")];
        error(
            "",
            &env,
            &[],
            &[
                "`s3_region`",
                "environment variable ATTACHE_S3_REGION",
                "did you mean `s3.region`?",
            ],
        );
        let flag = [("transfer.speed", "1", "--speed")];
        error("", &[], &flag, &["`transfer.speed`", "flag --speed"]);
        let e = load(&options(&file("[daemon]\nfoo = 1\n"), &[], &[]))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "nothing near: {e}");
    }

    #[test]
    fn a_proxy_is_none_or_a_url_and_its_password_is_never_shown() {
        let ok = settings("[s3]\nproxy = \"http://u:pw@proxy.lan:3128\"\n", &[], &[]);
        assert_eq!(
            ok.s3.proxy.as_ref().map(Secret::expose),
            Some("http://u:pw@proxy.lan:3128")
        );
        assert!(!format!("{:?}", ok.s3).contains("pw@"));
        assert!(!serde_json::to_string(&ok.s3).unwrap().contains("pw@"));
        settings("[s3]\nproxy = \"none\"\n", &[], &[]);
        let f = file("[s3]\nproxy = \"socks5://u:hunter2@proxy.lan\"\n");
        let e = load(&options(&f, &[], &[])).unwrap_err().to_string();
        assert!(e.contains("`s3.proxy`") && e.contains("http://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_the_source_and_what_is_accepted() {
        let size = "expected a size like 8MiB";
        error(
            "[transfer]\npart_size = \"8 parsecs\"\n",
            &[],
            &[],
            &["`transfer.part_size`", "<file>", size],
        );
        let env = [("ATTACHE_TRANSFER__PART_SIZE", "8 parsecs")];
        error(
            "",
            &env,
            &[],
            &[
                "`transfer.part_size`",
                "environment variable ATTACHE_TRANSFER__PART_SIZE",
                size,
            ],
        );
        let flag = [("bandwidth.upload", "fast", "--upload-limit")];
        error(
            "",
            &[],
            &flag,
            &[
                "`bandwidth.upload`",
                "flag --upload-limit",
                "a rate like 50MB/s",
            ],
        );
        let env = [("ATTACHE_S3__FORCE_PATH_STYLE", "maybe")];
        error(
            "",
            &env,
            &[],
            &[
                "`s3.force_path_style`",
                "ATTACHE_S3__FORCE_PATH_STYLE",
                "a boolean",
            ],
        );
        error(
            "[log]\nformat = \"xml\"\n",
            &[],
            &[],
            &["`log.format`", "<file>", "one of text, json"],
        );
        error(
            "[transfer]\nworkers = -1\n",
            &[],
            &[],
            &["`transfer.workers`", "<file>"],
        );
        error(
            "transfer = 5\n",
            &[],
            &[],
            &["`transfer`", "<file>", "[transfer] table"],
        );
    }

    #[test]
    fn a_bad_value_is_blamed_on_the_source_that_won() {
        let text = "[transfer]\nworkers = 4\n";
        let env = [("ATTACHE_TRANSFER__WORKERS", "many")];
        error(text, &env, &[], &["ATTACHE_TRANSFER__WORKERS"]);
        let f = file(text);
        let msg = load(&options(&f, &env, &[])).unwrap_err().to_string();
        assert!(!msg.contains("config file"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_source() {
        error(
            "[transfer]\npart_size = \"1MiB\"\n",
            &[],
            &[],
            &["`transfer.part_size`", "<file>", "minimum is 5MiB"],
        );
        let env = [("ATTACHE_TRANSFER__PART_SIZE", "6GiB")];
        error(
            "",
            &env,
            &[],
            &["ATTACHE_TRANSFER__PART_SIZE", "maximum is 5GiB"],
        );
        // S3's largest single PUT: a bigger threshold would send files S3 refuses.
        error(
            "[transfer]\nmultipart_threshold = \"6GiB\"\n",
            &[],
            &[],
            &["`transfer.multipart_threshold`", "maximum is 5GiB"],
        );
        error(
            "[transfer]\ncopying_store_threshold = \"1MiB\"\n",
            &[],
            &[],
            &[
                "`transfer.copying_store_threshold`",
                "minimum is 5MiB",
                "\"0\" turns it off",
            ],
        );
        let flag = [("transfer.workers", "0", "--workers")];
        error(
            "",
            &[],
            &flag,
            &["`transfer.workers`", "flag --workers", "minimum is 1"],
        );
        error(
            "[hash]\nread_buffer = 4096\n",
            &[],
            &[],
            &["`hash.read_buffer`", "minimum is 64KiB"],
        );
        error(
            "[s3]\nread_timeout = 0\n",
            &[],
            &[],
            &["`s3.read_timeout`", "<file>"],
        );
        // The daemon's history: a client reads the result of the job it has just run.
        error(
            "[daemon]\njobs_kept = 0\n",
            &[],
            &[],
            &["`daemon.jobs_kept`", "minimum is 1"],
        );
        error(
            "[daemon]\njobs_kept_for = \"30s\"\n",
            &[],
            &[],
            &["`daemon.jobs_kept_for`", "minimum is 1m"],
        );
        error(
            "[store]\nurl = \"bucket/dir\"\n",
            &[],
            &[],
            &["`store.url`", "s3://bucket/prefix"],
        );
        error(
            "[daemon]\nlisten = \"0.0.0.0:7070\"\n",
            &[],
            &[],
            &["`daemon.listen`", "token_file"],
        );
        error(
            "[daemon]\nlisten = \"0.0.0.0:7070\"\ntoken_file = \"/t\"\ntls_cert = \"/c.pem\"\n",
            &[],
            &[],
            &["`daemon.tls_key`", "needs its private key"],
        );
        error(
            "[daemon]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
            &[],
            &[],
            &["`daemon.tls_cert`", "set daemon.listen too"],
        );
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let opts = LoadOptions {
            config_file: Some("/nonexistent/attache.toml".into()),
            env: EnvSource::Map(HashMap::new()),
            ..LoadOptions::default()
        };
        let err = load(&opts).unwrap_err();
        assert!(matches!(err, ConfigError::FileNotFound { .. }));
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/attache.toml does not exist (given by --config or ATTACHE_CONFIG): give an existing file, or neither for the default files"
        );
    }

    #[test]
    fn an_unparsable_file_is_an_error_naming_it_and_the_line() {
        error(
            "[transfer]\nworkers = \n",
            &[],
            &[],
            &["cannot parse config file <file>", "line 2"],
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_toml() {
        let env = [
            ("ATTACHE_S3__ACCESS_KEY_ID", "GKPUBLIC"),
            ("ATTACHE_S3__SECRET_ACCESS_KEY", "hunter2-secret"),
        ];
        let s = settings("", &env, &[]);
        assert_eq!(
            s.s3.secret_access_key.as_ref().map(Secret::expose),
            Some("hunter2-secret")
        );
        let shown = s.to_redacted_toml();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("secret_access_key = \"<redacted>\""),
            "{shown}"
        );
        assert!(shown.contains("access_key_id = \"GKPUBLIC\""), "{shown}");
        assert!(
            !shown.contains("session_token"),
            "unset secrets are not shown: {shown}"
        );
    }

    #[test]
    fn a_proxy_is_shown_with_its_password_alone_redacted() {
        for (proxy, shown) in [
            (
                "http://render:hunter2@proxy.lan:3128",
                "http://render:<redacted>@proxy.lan:3128",
            ),
            ("http://proxy.lan:3128/", "http://proxy.lan:3128/"),
            (
                "https://s3cr3t-token@proxy.lan",
                "https://<redacted>@proxy.lan",
            ),
            ("none", "none"),
        ] {
            let s = settings("", &[("ATTACHE_S3__PROXY", proxy)], &[]);
            let text = s.to_redacted_toml();
            assert!(text.contains(&format!("proxy = \"{shown}\"")), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("s3cr3t"),
                "{text}"
            );
        }
    }

    #[test]
    fn shown_settings_load_back_to_the_same_settings() {
        let mut s = Settings::default();
        s.transfer.part_size = ByteSize(3 << 29);
        s.bandwidth.upload = Rate(50_000_000);
        s.s3.read_timeout = Duration::secs(5400);
        s.log.format = LogFormat::Json;
        assert_eq!(settings(&s.to_redacted_toml(), &[], &[]), s);
    }

    #[test]
    fn runtime_threads_resolve_zero_to_half_the_cores() {
        let mut s = Settings::default();
        assert_eq!(s.runtime_threads(), (cores() / 2).max(1));
        s.transfer.runtime_threads = 3;
        assert_eq!(s.runtime_threads(), 3);
    }

    #[test]
    fn hash_threads_resolves_zero_to_the_core_count() {
        let mut s = Settings::default();
        assert!(s.hash_threads() >= 1);
        s.hash.threads = 3;
        assert_eq!(s.hash_threads(), 3);
    }

    #[test]
    fn storage_profile_locations_come_from_the_file_or_the_environment() {
        let text = "[storage_profile]\nlocations = [\"Projects=/mnt/projects\"]\nshared = [\"/mnt/lib\"]\n";
        let s = settings(text, &[], &[]);
        assert_eq!(s.storage_profile.locations, ["Projects=/mnt/projects"]);
        assert_eq!(s.storage_profile.shared, [PathBuf::from("/mnt/lib")]);
        // The environment wins over the file; its items are split at `;`, and a value like
        // "007" in another key stays a string.
        let s = settings(
            text,
            &[
                (
                    "ATTACHE_STORAGE_PROFILE__LOCATIONS",
                    "Projects=/net/p;Lib=/net/lib",
                ),
                ("ATTACHE_S3__PROFILE", "007"),
            ],
            &[],
        );
        assert_eq!(
            s.storage_profile.locations,
            ["Projects=/net/p", "Lib=/net/lib"]
        );
        assert_eq!(s.storage_profile.shared, [PathBuf::from("/mnt/lib")]);
        assert_eq!(s.s3.profile.as_deref(), Some("007"));
    }

    #[test]
    fn a_bandwidth_timetable_comes_from_the_file_or_the_environment_and_a_flag_overrides_it() {
        let text =
            "[bandwidth]\nupload = \"1MB/s\"\nschedule = [\"08:00,10MB/s\", \"19:00,off\"]\n";
        let s = settings(text, &[], &[]);
        assert_eq!(s.bandwidth.schedule, ["08:00,10MB/s", "19:00,off"]);
        let noon = WeekTime::new(2, 12, 0, 0);
        assert_eq!(
            s.bandwidth.in_force(noon),
            (Rate(10_000_000), Rate(10_000_000)),
            "the timetable replaces upload and download"
        );
        assert_eq!(s.bandwidth.next_change(noon), Some(7 * 3600));
        let s = settings(
            text,
            &[(
                "ATTACHE_BANDWIDTH__SCHEDULE",
                "Sat-00:00,off;Mon-00:00,2MB/s:3MB/s",
            )],
            &[],
        );
        assert_eq!(
            s.bandwidth.in_force(noon),
            (Rate(2_000_000), Rate(3_000_000))
        );
        // --bwlimit is this run's limit: no timetable.
        let s = settings(text, &[], &[("bandwidth.upload", "5MB/s", "--bwlimit")]);
        assert!(s.bandwidth.schedule.is_empty());
        assert_eq!(s.bandwidth.in_force(noon).0, Rate(5_000_000));
        assert_eq!(s.bandwidth.next_change(noon), None);
        // ... or this run's timetable, in rclone's form.
        let s = settings(
            text,
            &[],
            &[(
                "bandwidth.schedule",
                "00:00,1MB/s 12:00,7MB/s:off",
                "--bwlimit",
            )],
        );
        assert_eq!(s.bandwidth.schedule, ["00:00,1MB/s", "12:00,7MB/s:off"]);
        assert_eq!(
            s.bandwidth.in_force(noon),
            (Rate(7_000_000), Rate::UNLIMITED)
        );
        error(
            "",
            &[],
            &[("bandwidth.schedule", "08:00,fast", "--bwlimit")],
            &["bandwidth.schedule", "--bwlimit", "fast"],
        );
        error(
            "[bandwidth]\nschedule = [\"8:00-1MB/s\"]\n",
            &[],
            &[],
            &[
                "bandwidth.schedule",
                "<file>",
                "\"8:00-1MB/s\": expected [DAY-]HH:MM,RATE",
            ],
        );
    }

    #[test]
    fn bad_storage_profile_locations_are_named() {
        error(
            "[storage_profile]\nlocations = [\"Projects\"]\n",
            &[],
            &[],
            &["storage_profile.locations", "<file>", "expected NAME=PATH"],
        );
        error(
            "",
            &[("ATTACHE_STORAGE_PROFILE__LOCATIONS", "P=mnt/p")],
            &[],
            &[
                "storage_profile.locations",
                "ATTACHE_STORAGE_PROFILE__LOCATIONS",
                "absolute",
            ],
        );
        error(
            "[storage_profile]\nlocations = [\"P=/a\", \"P=/b\"]\n",
            &[],
            &[],
            &["\"P\" is given twice"],
        );
        error(
            "[storage_profile]\nshared = [\"lib\"]\n",
            &[],
            &[],
            &["storage_profile.shared", "absolute"],
        );
    }

    #[test]
    fn given_locations_replace_configured_ones_of_the_same_name() {
        let p = StorageProfileSettings {
            locations: vec!["Projects=/mnt/projects".into(), "Lib=/mnt/lib".into()],
            shared: vec!["/mnt/shared".into()],
        };
        assert_eq!(
            p.locations_with(&["Projects=/tmp/p".into()]),
            ["Projects=/tmp/p", "Lib=/mnt/lib"]
        );
        assert_eq!(p.locations_with(&[]), p.locations);
        assert_eq!(
            p.shared_with(&["/mnt/shared".into(), "/x".into()]),
            [PathBuf::from("/mnt/shared"), PathBuf::from("/x")]
        );
    }
}
