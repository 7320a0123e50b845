#!/usr/bin/env bash
# check_bench.sh — `attache check` by HEADs and by listing, against a bucket of 205,000 objects.
#
#   bench/check_bench.sh                    # Garage, 3 runs
#   bench/check_bench.sh --server s3s --runs 1
#
# Builds attache (release; BUILD=0 skips it), the TCP_NODELAY shim and Garage when missing
# (cached in $ATTACHE_TOOLS_DIR, default ~/.cache/attache-tools), then runs
# bench/check_bench.py with the arguments given. Trees live in $BENCH_DIR (default
# /tmp/attache-bench), made once by gen_tree.py; results go to bench/results/check-*.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
if [[ "${BUILD:-1}" != 0 ]]; then
    echo "check_bench: cargo build --release --bins --examples" >&2
    cargo build --release --bins --examples >&2
fi
target="${CARGO_TARGET_DIR:-$repo/target}"
export ATTACHE_BIN="${ATTACHE_BIN:-$target/release/attache}"
export EXAMPLES_DIR="${EXAMPLES_DIR:-$target/release/examples}"
[[ -x /usr/bin/time ]] || { echo "check_bench: needs GNU time (Debian package time)" >&2; exit 2; }
# shellcheck source=lib/nodelay_shim.sh
source "$here/lib/nodelay_shim.sh"
NODELAY_SHIM=$(nodelay_shim)
export NODELAY_SHIM
if [[ " $* " != *" s3s"* && " $* " != *"=s3s"* ]]; then
    scripted_tests/garage.sh install
fi
mkdir -p "${BENCH_DIR:-/tmp/attache-bench}"
exec python3 "$here/check_bench.py" --attache "$ATTACHE_BIN" --examples "$EXAMPLES_DIR" "$@"
