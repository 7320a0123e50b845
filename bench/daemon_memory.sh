#!/usr/bin/env bash
# daemon_memory.sh — the daemon's memory around two big jobs: a submit of a 200,000-file tree
# (0-4 KiB files, the bench's huge-count tree) to a file:// store, then the same submit again
# (no change), printing VmHWM (the peak during each job, reset before it) and VmRSS once the
# daemon is idle again.
#
#   bench/daemon_memory.sh [--record] BIN...     # each BIN in turn, e.g. an old and a new build
#
# The tree is generated once under ${BENCH_DIR:-/tmp/attache-bench}/trees-daemon-memory.
# With --record the output is also written to bench/results/daemon-memory-<UTC time>.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
record=0
if [[ "${1:-}" == --record ]]; then record=1; shift; fi
(( $# )) || { echo "usage: $0 [--record] BIN..." >&2; exit 2; }
bench="${BENCH_DIR:-/tmp/attache-bench}"
tree="$bench/trees-daemon-memory/huge-count"
python3 "$here/gen_tree.py" "$tree" --stamp "$bench/trees-daemon-memory/stamp.json" \
    --count 200000 --min-size 0 --max-size 4KiB --depth 3 --fanout 10 --seed 41 >/dev/null

run() {
    local bin=$1 d
    d=$(mktemp -d "$bench/daemon-memory.XXXXXX")
    cat > "$d/c.toml" <<C
[store]
url = "file://$d/store"
[cache]
dir = "$d/cache"
[daemon]
socket = "$d/d.sock"
state_dir = "$d/state"
C
    env -i PATH=/usr/bin:/bin HOME="$d" "$bin" daemon --config "$d/c.toml" 2>"$d/daemon.log" &
    local pid=$!
    for _ in $(seq 200); do [[ -S $d/d.sock ]] && break; sleep 0.05; done
    # A field of the daemon's /proc status, in MiB.
    mib() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
    printf '%s (%s)\n' "$bin" "$("$bin" --version)"
    printf '  idle at start: RSS %6s MiB\n' "$(mib VmRSS)"
    for job in "submit" "same submit"; do
        echo 5 > "/proc/$pid/clear_refs"   # VmHWM := VmRSS
        env -i PATH=/usr/bin:/bin HOME="$d" "$bin" --config "$d/c.toml" submit "$tree" \
            --farm-id farm-1 --queue-id queue-1 --daemon -o "$d/att.json" >/dev/null 2>"$d/job.log"
        local peak; peak=$(mib VmHWM)
        sleep 2
        printf '  %-12s peak %6s MiB, idle 2 s after: RSS %6s MiB\n' "$job" "$peak" "$(mib VmRSS)"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$d"
}

out=$( {
    echo "daemon_memory.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) vCPU, load $(cut -d' ' -f1 /proc/loadavg)"
    echo "tree: 200,000 files of 0-4 KiB; store: file://; limit for 200,000 entries: 64 MiB + 200 B/entry = 102.1 MiB"
    for bin in "$@"; do run "$bin"; done
} | tee /dev/stderr )
if (( record )); then
    f="$here/results/daemon-memory-$(date -u +%Y%m%dT%H%M%SZ).txt"
    printf '%s\n' "$out" > "$f"
    echo "recorded: $f" >&2
fi
