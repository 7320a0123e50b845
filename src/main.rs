//! The `attache` command: parse, load config, run a job.

fn main() -> std::process::ExitCode {
    tune_allocator();
    attache::cli::main()
}

/// glibc raises its mmap threshold each time a large block is freed, after which multi-MiB
/// transfer buffers come from per-thread arenas and stay resident once freed: the peak RSS of
/// a mixed-size upload was twice its peak heap. A fixed threshold sends every buffer of
/// 1 MiB or more (bodies, parts) back to the kernel when it is freed, and fewer arenas fragment less.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
