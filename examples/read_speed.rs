//! Sequential read speed of one file with a 1 MiB buffer: the I/O ceiling for hashing it.
//!
//! ```text
//! cargo run --release --example read_speed -- FILE [--runs 5] [--buf 1MiB] [--hash] [--pipeline | --readers N]
//! ```
//!
//! Reads FILE start to end with `File::read` into one reused buffer of `--buf` bytes (default
//! 1 MiB, the read size attache's hasher uses), `--runs` times, and prints one JSON line with
//! the best rate (`gib_per_s`). No hashing unless `--hash`, which feeds every chunk to a
//! streaming XXH3-128 on the same thread (a one-thread read+hash reference). Warm the page cache
//! first (read the file once, e.g. with a first run) to measure page-cache reads, not the disk.
//!
//! `--pipeline` moves the reads to a second thread that hands filled buffers (a ring of 8) to
//! the main thread, which hashes them with `--hash` or just hands them back: a reference for a
//! hasher that overlaps reading and hashing. On the 2-vCPU development VM this ran about twice
//! as fast as the plain single-thread read (read throughput itself rose when the other vCPU was
//! busy), so the plain mode is the "sequential read measured the same way" figure and the
//! pipeline mode shows what overlap can reach.
//!
//! `--readers N` reads with N threads, each reading every N-th chunk at its offset (two buffers
//! each), while the main thread hashes (with `--hash`) the chunks in file order: the layout
//! attache's hasher uses for large files (3 readers).

use std::fs::File;
use std::hint::black_box;
use std::io::{ErrorKind, Read};
use std::sync::mpsc;
use std::time::Instant;

use xxhash_rust::xxh3::Xxh3;

const GIB: f64 = (1u64 << 30) as f64;

/// A size like `1MiB` or `4096`, as attache's config parses it.
fn parse_size(s: &str) -> Result<usize, String> {
    s.parse::<attache::config::ByteSize>()
        .map(|b| b.0 as usize)
        .map_err(|e| e.to_string())
}

fn usage() -> ! {
    eprintln!(
        "usage: read_speed FILE [--runs N (default 5)] [--buf SIZE (default 1MiB)] [--hash] [--pipeline | --readers N]"
    );
    std::process::exit(2)
}

/// A count option's value: a whole number above zero, or the usage message.
fn positive(value: Option<String>) -> usize {
    value
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| usage())
}

fn main() {
    let mut path = None;
    let mut runs = 5usize;
    let mut bufsize = 1usize << 20;
    let mut hash = false;
    let mut pipeline = false;
    let mut readers = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = positive(args.next()),
            "--buf" => {
                bufsize = args
                    .next()
                    .and_then(|v| parse_size(&v).ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--hash" => hash = true,
            "--pipeline" => pipeline = true,
            "--readers" => readers = positive(args.next()),
            "-h" | "--help" => usage(),
            _ if path.is_none() && !a.starts_with("--") => path = Some(a),
            _ => usage(),
        }
    }
    let path = path.unwrap_or_else(|| usage());

    let mut buf = vec![0u8; bufsize];
    let mut secs = Vec::with_capacity(runs);
    let mut bytes = 0u64;
    let mut digest = None;
    for _ in 0..runs {
        let t = Instant::now();
        let (n_total, d) = if readers > 0 {
            read_parallel(&path, bufsize, hash, readers)
        } else if pipeline {
            read_pipelined(&path, bufsize, hash)
        } else {
            read_plain(&path, &mut buf, hash)
        };
        secs.push(t.elapsed().as_secs_f64());
        bytes = n_total;
        digest = d;
    }

    let gib = bytes as f64 / GIB;
    let rates: Vec<f64> = secs.iter().map(|s| gib / s).collect();
    let best = rates.iter().cloned().fold(0.0f64, f64::max);
    let list = rates
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(",");
    let digest = digest
        .map(|d| format!("\"{d:032x}\""))
        .unwrap_or_else(|| "null".into());
    let path_json = serde_like_escape(&path);
    println!(
        "{{\"gib_per_s\":{best:.3},\"bytes\":{bytes},\"runs\":{runs},\"buf\":{bufsize},\"hash\":{hash},\"pipeline\":{pipeline},\"readers\":{readers},\"runs_gib_per_s\":[{list}],\"xxh128\":{digest},\"file\":{path_json}}}"
    );
}

fn fail(path: &str, e: std::io::Error) -> ! {
    eprintln!("read_speed: {path}: {e}");
    std::process::exit(1)
}

/// One thread: read into one reused buffer, optionally hash each chunk.
fn read_plain(path: &str, buf: &mut [u8], hash: bool) -> (u64, Option<u128>) {
    let mut f = File::open(path).unwrap_or_else(|e| fail(path, e));
    let mut hasher = hash.then(Xxh3::new);
    let mut total = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                match hasher.as_mut() {
                    Some(h) => h.update(&buf[..n]),
                    None => {
                        black_box(&buf[..n]);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => fail(path, e),
        }
    }
    (total, hasher.map(|h| h.digest128()))
}

/// Reader thread fills buffers from a ring of 8 and sends them; this thread hashes (or not)
/// and returns them.
fn read_pipelined(path: &str, bufsize: usize, hash: bool) -> (u64, Option<u128>) {
    const RING: usize = 8;
    let mut f = File::open(path).unwrap_or_else(|e| fail(path, e));
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(RING);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(RING);
    for _ in 0..RING {
        empty_tx.send(vec![0u8; bufsize]).expect("ring");
    }
    let owned_path = path.to_owned();
    let reader = std::thread::spawn(move || -> u64 {
        let mut total = 0u64;
        while let Ok(mut b) = empty_rx.recv() {
            let n = loop {
                match f.read(&mut b) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => fail(&owned_path, e),
                }
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            if full_tx.send((b, n)).is_err() {
                break;
            }
        }
        total
    });
    let mut hasher = hash.then(Xxh3::new);
    for (b, n) in full_rx {
        match hasher.as_mut() {
            Some(h) => h.update(&b[..n]),
            None => {
                black_box(&b[..n]);
            }
        }
        // The reader may have finished and dropped its receiver: ignore.
        let _ = empty_tx.send(b);
    }
    let total = reader.join().expect("reader thread panicked");
    (total, hasher.map(|h| h.digest128()))
}

/// `readers` threads read interleaved chunks at their offsets (pread); this thread hashes
/// them in file order.
fn read_parallel(path: &str, bufsize: usize, hash: bool, readers: usize) -> (u64, Option<u128>) {
    use std::os::unix::fs::FileExt;
    let per_reader = 2;
    let f = std::sync::Arc::new(File::open(path).unwrap_or_else(|e| fail(path, e)));
    let mut fulls = Vec::new();
    let mut empties = Vec::new();
    let mut handles = Vec::new();
    for r in 0..readers {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(per_reader);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(per_reader);
        for _ in 0..per_reader {
            empty_tx.send(vec![0u8; bufsize]).expect("ring");
        }
        fulls.push(full_rx);
        empties.push(empty_tx);
        let f = f.clone();
        let owned_path = path.to_owned();
        handles.push(std::thread::spawn(move || {
            let mut k = r as u64;
            while let Ok(mut b) = empty_rx.recv() {
                let off = k * bufsize as u64;
                let mut n = 0;
                while n < b.len() {
                    match f.read_at(&mut b[n..], off + n as u64) {
                        Ok(0) => break,
                        Ok(m) => n += m,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => fail(&owned_path, e),
                    }
                }
                if full_tx.send((b, n)).is_err() || n == 0 {
                    break;
                }
                k += readers as u64;
            }
        }));
    }
    let mut hasher = hash.then(Xxh3::new);
    let mut total = 0u64;
    'outer: for i in 0.. {
        let r = i % readers;
        let Ok((b, n)) = fulls[r].recv() else { break };
        if n == 0 {
            break 'outer;
        }
        total += n as u64;
        match hasher.as_mut() {
            Some(h) => h.update(&b[..n]),
            None => {
                black_box(&b[..n]);
            }
        }
        let _ = empties[r].send(b);
        if n < bufsize {
            break;
        }
    }
    drop(fulls);
    drop(empties);
    for h in handles {
        h.join().expect("reader thread panicked");
    }
    (total, hasher.map(|h| h.digest128()))
}

/// JSON string literal for a path (std only: no serde in examples).
fn serde_like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
