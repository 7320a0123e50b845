#!/usr/bin/env bash
# hash_bench.sh — hashing benchmark: attache vs the official Deadline client vs raw ceilings.
#
#   bench/hash_bench.sh                 # everything, RUNS=5
#   RUNS=3 bench/hash_bench.sh
#
# Builds release (attache + examples), makes the official-client venv, generates the trees
# under $BENCH_DIR, warms the page cache, runs every tool, writes
# bench/results/hash-<UTC timestamp>.{json,md} and prints the markdown table.
# See bench/README.md for what is measured and how to read it. Environment:
#   RUNS=5                 runs per measurement
#   OFFICIAL_TREE_RUNS     runs of the official client on the many-file tree (default min(RUNS,3))
#   BENCH_DIR=/tmp/attache-bench   where trees, caches and manifests go
#   BIG_SIZE=2GiB  TREE_COUNT=50000  TREE_MIN=1KiB  TREE_MAX=64KiB  SEED=1
#   TOOLS=attache,official,raw     subset to run (raw = xxh3_speed + read_speed)
#   BUILD=0                skip `cargo build --release` (use the binaries already built)
#   ATTACHE_BIN, EXAMPLES_DIR      override where the binaries are found
#   RESULTS_DIR=bench/results
#   SETTLE_MAX=60          wait up to this many seconds for the CPUs to go idle before measuring
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

tools="${TOOLS:-attache,official,raw}"

if [[ "${BUILD:-1}" != 0 ]]; then
    echo "hash_bench: cargo build --release --bins --examples" >&2
    # One cargo invocation; waits on cargo's lock if another build is running.
    cargo build --release --bins --examples >&2
fi

if [[ ",$tools," == *",official,"* ]]; then
    # shellcheck source=../scripted_tests/lib/deadline_venv.sh
    source "$repo/scripted_tests/lib/deadline_venv.sh"
    # Fail early (and cheaply) if the official client is not driven right.
    "$DEADLINE_PY" "$here/official_hash.py" --self-test >&2
fi

# One benchmark at a time per BENCH_DIR: two at once would share trees and manifests and
# halve each other's numbers on this 2-core machine. The lock fd stays open across exec.
bench_dir="${BENCH_DIR:-/tmp/attache-bench}"
mkdir -p "$bench_dir"
if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$bench_dir/.hash_bench.lock"
    if ! flock -n "$lock_fd"; then
        echo "hash_bench: another benchmark is running on $bench_dir; waiting for it" >&2
        flock "$lock_fd"
    fi
fi

export DEADLINE_PY="${DEADLINE_PY:-}"
exec python3 "$here/hash_bench.py" "$@"
