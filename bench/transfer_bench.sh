#!/usr/bin/env bash
# transfer_bench.sh — attache vs the official Deadline client, rclone and aws-cli on local S3.
#
#   bench/transfer_bench.sh                        # s3s-fs server, all trees, all tools
#   bench/transfer_bench.sh --servers s3s,garage --trees small
#   bench/transfer_bench.sh --quick                # tiny trees, one run: a smoke test
#
# Installs what it needs first (once; cached outside the repo):
#   - release build of attache and its examples s3_server (the s3s-fs 0.14.1 server) and
#     plain_s3 (the plain parallel PUT/GET reference);
#   - the TCP_NODELAY shim for Garage (gcc);
#   - rclone from Debian (apt-get) when missing;
#   - aws-cli (PyPI awscli, pinned) in $ATTACHE_TOOLS_DIR/venv-awscli-<version>;
#   - the official client (deadline==0.60.10) venv, via scripted_tests/lib/deadline_venv.sh;
#   - Garage (scripted_tests/garage.sh install) when --servers includes garage.
# Then runs bench/transfer_bench.py with the arguments given (see its --help and
# bench/README.md). Environment: BUILD=0 skips the cargo build; BENCH_DIR (default
# /tmp/attache-bench) holds trees and per-run state; ATTACHE_TOOLS_DIR (default
# ~/.cache/attache-tools) holds the tools.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
tools_dir="${ATTACHE_TOOLS_DIR:-$HOME/.cache/attache-tools}"
mkdir -p "$tools_dir"
say() { echo "transfer_bench: $*" >&2; }

if [[ "${BUILD:-1}" != 0 ]]; then
    say "cargo build --release --bins --examples"
    cargo build --release --bins --examples >&2
fi
target="${CARGO_TARGET_DIR:-$repo/target}"
export ATTACHE_BIN="${ATTACHE_BIN:-$target/release/attache}"
export EXAMPLES_DIR="${EXAMPLES_DIR:-$target/release/examples}"
# Before any run writes its (then empty) result files.
for needed in "$ATTACHE_BIN" "$EXAMPLES_DIR/s3_server" "$EXAMPLES_DIR/plain_s3"; do
    if [[ ! -x "$needed" ]]; then
        say "no $needed: build it (run without BUILD=0), or point CARGO_TARGET_DIR, ATTACHE_BIN or EXAMPLES_DIR at the build"
        exit 2
    fi
done

# shellcheck source=lib/nodelay_shim.sh
source "$here/lib/nodelay_shim.sh"
shim=$(nodelay_shim)
export NODELAY_SHIM="$shim"

if ! command -v rclone >/dev/null 2>&1; then
    say "installing rclone (Debian package)"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y rclone >&2 || { apt-get update >&2 && apt-get install -y rclone >&2; }
    else
        sudo apt-get install -y rclone >&2
    fi
fi

if [[ ! -x /usr/bin/time ]]; then
    say "installing GNU time (Debian package time: it reports each command's peak RSS)"
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y time >&2; else sudo apt-get install -y time >&2; fi
fi

awscli_version="${AWSCLI_VERSION:-1.45.11}"
awsvenv="$tools_dir/venv-awscli-$awscli_version"
if [[ ! -x "$awsvenv/bin/aws" ]]; then
    say "making the aws-cli venv (awscli==$awscli_version)"
    rm -rf "$awsvenv"
    python3 -m venv "$awsvenv"
    "$awsvenv/bin/pip" install --quiet --disable-pip-version-check "awscli==$awscli_version" >&2
fi
export AWS_CLI="$awsvenv/bin/aws"

# shellcheck source=../scripted_tests/lib/deadline_venv.sh
source "$repo/scripted_tests/lib/deadline_venv.sh"
export DEADLINE_PY

if [[ " $* " == *garage* ]]; then
    scripted_tests/garage.sh install
fi

# JOURNALED_FS=SIZE: run everything (trees, servers' data, downloads) on a journaled ext4
# image of SIZE mounted through a loop device. A filesystem without a journal (the root disk
# of the development VM) checks every free inode for a recent deletion when it makes a file,
# which makes creating files right after deleting others 10x dearer for every tool; render
# nodes and S3 servers run journaled filesystems. The image (JOURNALED_FS_IMAGE) is kept, with
# its trees, between runs; it is mounted for the run only. Needs root.
mounted=""
lock_fd=""
unmount_bench() {
    # The lock file lives on the image: close it, or the unmount finds the image busy.
    if [[ -n "$lock_fd" ]]; then exec {lock_fd}>&-; fi
    # After an interrupt the servers and tools may take a moment to exit.
    for _ in $(seq 20); do
        umount "$mounted" 2>/dev/null && return
        sleep 0.5
    done
    say "could not unmount $mounted (still in use); umount it by hand"
}
if [[ -n "${JOURNALED_FS:-}" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        say "JOURNALED_FS needs root (it mounts an image through a loop device): run as root, or unset it"
        exit 2
    fi
    if ! command -v mkfs.ext4 >/dev/null 2>&1; then
        say "JOURNALED_FS needs mkfs.ext4: apt-get install e2fsprogs"
        exit 2
    fi
    image="${JOURNALED_FS_IMAGE:-/var/tmp/attache-bench-ext4.img}"
    bench_dir="${BENCH_DIR:-/tmp/attache-bench-journaled}"
    if [[ ! -f "$image" ]]; then
        say "making a journaled ext4 image of $JOURNALED_FS at $image"
        truncate -s "$JOURNALED_FS" "$image"
        mkfs.ext4 -q -F "$image"
    fi
    # The image is sparse: it takes disk space as it fills. Should the disk under it run out,
    # the loop device loses writes that were already reported done ("critical space allocation
    # error" in dmesg) and the objects and files on the image are silently corrupt: a
    # benchmark run then fails on downloads that do not match their hash. So the disk must
    # have room for the whole image.
    apparent=$(stat -c %s "$image")
    allocated=$(( $(stat -c %b "$image") * $(stat -c %B "$image") ))
    free=$(( $(df --output=avail -B1 "$(dirname "$image")" | tail -1) ))
    if (( free < apparent - allocated )); then
        say "the image $image may grow by $(( (apparent - allocated) >> 30 )) GiB more, but its disk has only $(( free >> 30 )) GiB free: free space, or shrink the image (unmounted: e2fsck -f IMAGE; resize2fs IMAGE SIZE; truncate -s SIZE IMAGE)"
        exit 2
    fi
    mkdir -p "$bench_dir"
    if ! mountpoint -q "$bench_dir"; then
        # discard: blocks freed inside give their space back to the (sparse) image file.
        mount -o loop,discard "$image" "$bench_dir"
        mounted="$bench_dir"
        # Also when the run fails or is interrupted.
        trap unmount_bench EXIT
    fi
else
    bench_dir="${BENCH_DIR:-/tmp/attache-bench}"
    mkdir -p "$bench_dir"
fi
# One benchmark at a time: two at once would halve each other's numbers on 2 cores.
exec {lock_fd}>"$bench_dir/.transfer_bench.lock"
flock "$lock_fd"
export BENCH_DIR="$bench_dir"
python3 "$here/transfer_bench.py" "$@"
