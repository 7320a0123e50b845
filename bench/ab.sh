#!/usr/bin/env bash
# ab.sh — two (or more) attache variants, alternating, against one local S3 server.
#
#   bench/ab.sh OUT ROUNDS VARIANT...
#   bench/ab.sh /tmp/ab 4 old/attache new/attache                       # two binaries
#   SERVER=s3s bench/ab.sh /tmp/ab 5 target/release/attache \
#       target/release/attache,ATTACHE_TRANSFER__WORKERS=64,ATTACHE_S3__MAX_CONNECTIONS=64
#
# A VARIANT is an attache binary, optionally followed by ,NAME=VALUE settings put in its
# environment (any ATTACHE_* config key). Each round runs every variant in turn: `submit` of
# TREE (a fresh store prefix and cache each time), then `sync-inputs` of what it submitted into
# an empty session directory. One server serves every run, so the variants see the same
# server and, alternating, the same host: for before/after changes smaller than the spread
# between benchmark sets taken hours apart.
# Prints and appends to OUT/runs.txt one line per command: wall s, client CPU (user+sys) s,
# peak RSS KiB, the server's CPU in clock ticks (1/100 s), and the machine's idle
# core-seconds while the command ran, and the part of them spent waiting for the disk
# (iowait; bench/idle_timeline.py).
# Environment: SERVER (garage, the default, or s3s), TREE (default
# /tmp/attache-bench-journaled/trees/small, the transfer benchmark's small tree on its
# journaled image; any directory works), EXAMPLES_DIR (where the s3s server's build is;
# default $CARGO_TARGET_DIR/release/examples, else target/release/examples), WORKDIR (where
# the server's data, caches and sessions go; default: beside TREE), ATTACHE_TOOLS_DIR,
# ATTACHE_GARAGE_DB_ENGINE (scripted_tests/garage.sh).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2   # the header comment above
    exit 2
fi
out=$1 rounds=$2
shift 2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
server="${SERVER:-garage}"
tree="${TREE:-/tmp/attache-bench-journaled/trees/small}"
examples="${EXAMPLES_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release/examples}"
[[ -d "$tree" ]] || { echo "ab: no tree at $tree (set TREE)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "ab: needs GNU time (Debian package time)" >&2; exit 2; }
case "$server" in
    garage) ;;
    s3s) [[ -x "$examples/s3_server" ]] || {
        echo "ab: no $examples/s3_server: cargo build --release --examples, or set EXAMPLES_DIR" >&2
        exit 2
    } ;;
    *) echo "ab: SERVER must be garage or s3s, not '$server'" >&2; exit 2 ;;
esac
for variant in "$@"; do
    [[ -x "${variant%%,*}" ]] || { echo "ab: no attache binary at ${variant%%,*}" >&2; exit 2; }
done
mkdir -p "$out"
w=$(mktemp -d "${WORKDIR:-$(dirname "$tree")}/ab-$server-XXXX")
server_pid=
stop() {
    if [[ $server == garage ]]; then
        bash "$repo/scripted_tests/garage.sh" stop "$w/g" >/dev/null 2>&1 || true
    elif [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$w"
}
trap stop EXIT

if [[ $server == garage ]]; then
    # shellcheck source=lib/nodelay_shim.sh
    source "$here/lib/nodelay_shim.sh"
    shim=$(nodelay_shim)
    LD_PRELOAD=$shim bash "$repo/scripted_tests/garage.sh" start "$w/g" >/dev/null
    # shellcheck disable=SC1091
    source "$w/g/env.sh"
    server_pid=$(cat "$w/g/garage.pid")
else
    # shellcheck source=lib/s3s_server.sh
    source "$here/lib/s3s_server.sh"
    start_s3s_server "$examples" "$w" ab
fi
server_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
# The scripts' own ATTACHE_* variables (ATTACHE_TOOLS_DIR, ATTACHE_GARAGE_*, ...) are not
# settings, and attache refuses unknown ATTACHE_* names: they are left out of its environment.
not_settings=()
while read -r name; do
    [[ $name == ATTACHE_* && $name != *__* ]] && not_settings+=(-u "$name")
done < <(compgen -e)

n=0
for _ in $(seq 1 "$rounds"); do
    for variant in "$@"; do
        n=$((n + 1))
        bin=${variant%%,*}
        settings=()
        [[ $variant == *,* ]] && IFS=, read -r -a settings <<<"${variant#*,}"
        name=$(basename "$bin")${settings[*]:+[${settings[*]}]}
        if [[ $server == garage ]]; then
            bucket=$GARAGE_BUCKET
        else
            # A fresh bucket per run, removed after it: every run starts on an empty server.
            bucket=ab-$n
            python3 -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='POST'))" \
                "$control/buckets/$bucket"
        fi
        printf '[store]\nurl = "s3://%s/p%d"\n[cache]\ndir = "%s/cache%d"\n' \
            "$bucket" "$n" "$w" "$n" >"$w/a.toml"
        for phase in up down; do
            if [[ $phase == up ]]; then
                cmd=("$bin" --config "$w/a.toml" submit "$tree" --farm-id farm-1
                    --queue-id queue-1 -o "$w/attachments.json")
            else
                cmd=("$bin" --config "$w/a.toml" sync-inputs --attachments "$w/attachments.json"
                    --session-dir "$w/session$n" -o /dev/null)
            fi
            before=$(server_ticks)
            env "${not_settings[@]}" "${settings[@]}" python3 "$here/idle_timeline.py" \
                /usr/bin/time -f "%e %U %S %M" -o "$w/time" "${cmd[@]}" 2>"$w/stderr" ||
                { cat "$w/stderr" >&2; exit 1; }
            read -r wall user sys rss <"$w/time"
            # idle_timeline.py's line: "wall W s, idle core-seconds I (iowait O) of T".
            read -r idle iowait < <(sed -n \
                's/^wall .*idle core-seconds \([0-9.]*\) (iowait \([0-9.]*\)).*/\1 \2/p' "$w/stderr")
            cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
            echo "$name $phase wall $wall cpu $cpu user $user sys $sys rss $rss" \
                "${server}_ticks $(($(server_ticks) - before)) idle $idle iowait $iowait" |
                tee -a "$out/runs.txt"
            sync
            sleep 1
        done
        rm -rf "$w/session$n" "$w/cache$n"
        if [[ $server == s3s ]]; then
            # The bucket, and the two files s3s-fs keeps per object beside the buckets.
            rm -rf "${w:?}/s3s/$bucket"
            find "$w/s3s" -maxdepth 1 -name '.bucket-*' -delete
        fi
    done
done
