//! attache: a job-attachment transfer agent for render farms, speaking the AWS Deadline Cloud
//! job-attachments storage format byte for byte.

/// The command line: arguments, config loading, dispatch, progress display, exit codes.
pub mod cli;
/// The wall clock in the units records and stores keep time in.
pub mod clock;
/// Settings: defaults, layered loading (file < environment < flags), units, the bandwidth
/// timetable, validation.
pub mod config;
/// The daemon: local API server, job registry, signals and reload, bandwidth set by hand, the
/// TCP listener's token and TLS (re-read at a reload), and its CLI client (this machine's
/// socket or another's listener).
pub mod daemon;
/// Small file-system helpers: atomic writes, files staged unnamed until complete, placed files
/// given to the group a job runs as, what another user may do with a path.
pub mod fsutil;
/// Content hashing: XXH3-128 hash type, file hashing, parallel hasher, hash cache and recorder.
pub mod hash;
/// Workflows run by the CLI and the daemon: hash, put, get, submit (and the job bundle's asset
/// references and template PATH parameters it reads), sync-inputs/outputs, verify, cleanup, check of a store against
/// manifests, doctor (setup probes), the machine's caches (`local_caches`: show, clear, trim).
pub mod jobs;
/// The SQLite files kept on each machine (hash cache, known-present index): open and close.
pub mod local_db;
/// Log output setup (text or JSON, filtered by `log.level`), and the warnings each daemon job
/// gives, kept for its record (`logging::job_warnings`).
pub mod logging;
/// Manifests: v2023-03-03 model, canonical codec, path validation, merge and diff.
pub mod manifest;
/// Progress counters (files and bytes, done and total) shared by workers and displays, and the
/// progress lines logged where no bar can be drawn.
pub mod progress;
/// Parallel directory walk of input roots, with the symlink and special-file policy, the
/// exclusion and inclusion patterns (`scan::filter`), rclone's filter rules (`scan::rules`),
/// bounds on size and age (`scan::size_age`) and the marker files that leave a directory out.
pub mod scan;
/// Object stores: the `ObjectStore` trait, S3 and local-directory stores, the key layout, files
/// sent as request bodies, bodies' bytes counted as they go out.
pub mod store;
/// Moving content between trees and a store: upload, download, multipart (the records of open
/// ones, taking over those abandoned elsewhere, stores that copy parts on completion), partial
/// downloads kept, bandwidth, retries.
pub mod transfer;
