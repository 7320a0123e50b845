//! Raw XXH3-128 speed on an in-memory buffer: the ceiling for one hashing thread.
//!
//! ```text
//! cargo run --release --example xxh3_speed -- [--size 1GiB] [--runs 5]
//! ```
//!
//! Fills a buffer (default 1 GiB) with pseudo-random bytes, then hashes it `--runs` times two
//! ways: one-shot `xxh3_128(&buf)`, and streaming `Xxh3::update` in 1 MiB pieces (what a
//! file hasher reading 1 MiB at a time does). Prints one JSON line; `gib_per_s` is the best
//! one-shot run, `streaming_gib_per_s` the best streaming run. The two digests must agree.
//! No file I/O: this is CPU and memory bandwidth only.

use std::hint::black_box;
use std::time::Instant;

use xxhash_rust::xxh3::{Xxh3, xxh3_128};

const GIB: f64 = (1u64 << 30) as f64;
const CHUNK: usize = 1 << 20;

/// A size like `1MiB` or `4096`, as attache's config parses it.
fn parse_size(s: &str) -> Result<usize, String> {
    s.parse::<attache::config::ByteSize>()
        .map(|b| b.0 as usize)
        .map_err(|e| e.to_string())
}

fn usage() -> ! {
    eprintln!("usage: xxh3_speed [--size SIZE (default 1GiB)] [--runs N (default 5)]");
    std::process::exit(2)
}

fn main() {
    let mut size = 1usize << 30;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => {
                size = args
                    .next()
                    .map(|v| parse_size(&v))
                    .unwrap_or_else(|| usage())
                    .unwrap_or_else(|e| {
                        eprintln!("xxh3_speed: {e}");
                        std::process::exit(2)
                    })
            }
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }

    // Deterministic, incompressible content (xorshift64*); touching every page also keeps
    // page-fault cost out of the timed loops.
    let mut buf = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }

    let mut oneshot = Vec::with_capacity(runs);
    let mut streaming = Vec::with_capacity(runs);
    let mut digest_oneshot = 0u128;
    let mut digest_streaming = 0u128;
    for _ in 0..runs {
        let t = Instant::now();
        digest_oneshot = black_box(xxh3_128(black_box(&buf)));
        oneshot.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut h = Xxh3::new();
        for piece in black_box(&buf).chunks(CHUNK) {
            h.update(piece);
        }
        digest_streaming = black_box(h.digest128());
        streaming.push(t.elapsed().as_secs_f64());
    }
    if digest_oneshot != digest_streaming {
        eprintln!(
            "xxh3_speed: one-shot and streaming digests differ: {digest_oneshot:032x} vs {digest_streaming:032x}"
        );
        std::process::exit(1);
    }

    let gib = size as f64 / GIB;
    let rate = |v: &[f64]| v.iter().map(|s| gib / s).collect::<Vec<_>>();
    let best = |v: &[f64]| v.iter().cloned().fold(0.0f64, f64::max);
    let one = rate(&oneshot);
    let st = rate(&streaming);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"gib_per_s\":{:.3},\"streaming_gib_per_s\":{:.3},\"bytes\":{},\"runs\":{},\"chunk\":{},\"oneshot_runs_gib_per_s\":[{}],\"streaming_runs_gib_per_s\":[{}],\"xxh128\":\"{:032x}\",\"simd\":\"{}\"}}",
        best(&one),
        best(&st),
        size,
        runs,
        CHUNK,
        fmt(&one),
        fmt(&st),
        digest_oneshot,
        simd()
    );
}

/// Which vector unit xxhash-rust was compiled for (it picks at compile time, not run time).
fn simd() -> &'static str {
    if cfg!(target_feature = "avx512f") {
        "avx512"
    } else if cfg!(target_feature = "avx2") {
        "avx2"
    } else if cfg!(target_feature = "sse2") {
        "sse2"
    } else if cfg!(target_feature = "neon") {
        "neon"
    } else {
        "scalar"
    }
}
