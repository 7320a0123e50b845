//! The `attache` command: parse, load config, run a job.

fn main() -> std::process::ExitCode {
    attache::cli::main()
}
