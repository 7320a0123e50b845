#!/usr/bin/env bash
# ab_garage.sh — two (or more) attache binaries, alternating, against one Garage.
#
#   bench/ab_garage.sh OUT ROUNDS BIN...      # e.g. bench/ab_garage.sh /tmp/ab 4 old/attache new/attache
#
# Each round runs every BIN in turn: `submit` of TREE (a fresh store prefix and cache each
# time), then `sync-inputs` of what it submitted into an empty session directory. One Garage
# serves every run (scripted_tests/garage.sh, TCP_NODELAY shim as in transfer_bench.sh), so
# the binaries see the same server and, alternating, the same host: for before/after changes
# smaller than the spread between benchmark sets taken hours apart.
# Prints and appends to OUT/runs.txt one line per command: wall s, client CPU (user+sys) s,
# peak RSS KiB, Garage's CPU in clock ticks (1/100 s).
# Environment: TREE (default /tmp/attache-bench-journaled/trees/small, the transfer
# benchmark's small tree on its journaled image; any directory works), ATTACHE_TOOLS_DIR.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
out=$1 rounds=$2
shift 2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tree="${TREE:-/tmp/attache-bench-journaled/trees/small}"
[[ -d "$tree" ]] || { echo "ab_garage: no tree at $tree (set TREE)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "ab_garage: needs GNU time (Debian package time)" >&2; exit 2; }
# shellcheck source=lib/nodelay_shim.sh
source "$here/lib/nodelay_shim.sh"
shim=$(nodelay_shim)
mkdir -p "$out"
w=$(mktemp -d "$(dirname "$tree")/ab-garage-XXXX")
stop() {
    bash "$repo/scripted_tests/garage.sh" stop "$w/g" >/dev/null 2>&1 || true
    rm -rf "$w"
}
trap stop EXIT
LD_PRELOAD=$shim bash "$repo/scripted_tests/garage.sh" start "$w/g" >/dev/null
# shellcheck disable=SC1091
source "$w/g/env.sh"
garage_pid=$(cat "$w/g/garage.pid")
garage_ticks() { awk '{print $14 + $15}' "/proc/$garage_pid/stat"; }

n=0
for _ in $(seq 1 "$rounds"); do
    for bin in "$@"; do
        n=$((n + 1))
        name=$(basename "$bin")
        printf '[store]\nurl = "s3://%s/p%d"\n[cache]\ndir = "%s/cache%d"\n' \
            "$GARAGE_BUCKET" "$n" "$w" "$n" >"$w/a.toml"
        for phase in up down; do
            if [[ $phase == up ]]; then
                cmd=("$bin" --config "$w/a.toml" submit "$tree" --farm-id farm-1
                    --queue-id queue-1 -o "$w/attachments.json")
            else
                cmd=("$bin" --config "$w/a.toml" sync-inputs --attachments "$w/attachments.json"
                    --session-dir "$w/session$n" -o /dev/null)
            fi
            before=$(garage_ticks)
            /usr/bin/time -f "%e %U %S %M" -o "$w/time" "${cmd[@]}" >/dev/null 2>"$w/stderr" ||
                { cat "$w/stderr" >&2; exit 1; }
            read -r wall user sys rss <"$w/time"
            cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
            echo "$name $phase wall $wall cpu $cpu user $user sys $sys rss $rss" \
                "garage_ticks $(($(garage_ticks) - before))" | tee -a "$out/runs.txt"
            sync
            sleep 1
        done
        rm -rf "$w/session$n" "$w/cache$n"
    done
done
