#!/usr/bin/env bash
# copying_store.sh — large uploads to s3s-fs, a store that copies every part again when it
# completes a multipart upload, with attache's defaults: the first upload goes in parts and
# measures the store (transfer.copying_store_threshold), the next ones go in one PUT per file.
# Each round puts TREE twice, alternating: "learned" keeps its cache.dir from round to round,
# "parts" has transfer.copying_store_threshold = 0 (multipart above 16 MiB, as before).
#
#   bench/copying_store.sh [--record] ROUNDS
#
# TREE (default /tmp/attache-bench/trees/large-copying: 4 files of 1 GiB, generated once)
# is given new content each run by rewriting the first bytes of each file, so every run
# uploads every byte; the server's objects are removed after each run. The server (the
# benchmark's s3s-fs build, EXAMPLES_DIR, as in ab.sh) keeps its data beside TREE.
# STORE=file puts to a file:// store beside TREE instead (attache's own store, which says it
# copies parts: "learned" sends one PUT per file from the first round on).
# Prints one line per run: wall s, client CPU s, peak RSS KiB, objects sent in parts.
# With --record the output also goes to bench/results/copying-store-<UTC time>.txt
# (copying-store-file-<UTC time>.txt with STORE=file).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
record=0
if [[ "${1:-}" == --record ]]; then record=1; shift; fi
[[ $# -eq 1 ]] || { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2; exit 2; }
rounds=$1
bin="${ATTACHE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/attache}"
examples="${EXAMPLES_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release/examples}"
tree="${TREE:-/tmp/attache-bench/trees/large-copying}"
[[ -x $bin ]] || { echo "copying_store: no attache at $bin (set ATTACHE_BIN)" >&2; exit 2; }
store="${STORE:-s3s}"
case "$store" in
    s3s) [[ -x $examples/s3_server ]] || { echo "copying_store: no $examples/s3_server" >&2; exit 2; } ;;
    file) ;;
    *) echo "copying_store: STORE must be s3s or file, not '$store'" >&2; exit 2 ;;
esac
if [[ -z ${TREE:-} ]]; then
    # The transfer benchmark's large tree (transfer_bench.py).
    for i in 0 1 2 3; do
        [[ -s $tree/f$i/big.bin ]] ||
            python3 "$here/gen_tree.py" "$tree/f$i" --single 1GiB --seed $((31 + i)) >/dev/null
    done
fi
w=$(mktemp -d "$(dirname "$tree")/copying-store-XXXX")
server_pid=
stop() {
    [[ -n $server_pid ]] && { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
    rm -rf "$w"
}
trap stop EXIT
if [[ $store == s3s ]]; then
    # shellcheck source=lib/s3s_server.sh
    source "$here/lib/s3s_server.sh"
    start_s3s_server "$examples" "$w" copying_store
    python3 -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='POST'))" \
        "$control/buckets/copying"
fi
for v in learned parts; do
    url="s3://copying/$v"
    [[ $store == file ]] && url="file://$w/s3s/copying/$v"
    printf '[store]\nurl = "%s"\n[cache]\ndir = "%s/cache-%s"\n' "$url" "$w" "$v" >"$w/$v.toml"
done
echo "copying-store ($store) $(date -u +%Y-%m-%dT%H:%M:%SZ) $("$bin" --version) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null)) load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee "$w/out.txt"
n=0
for round in $(seq 1 "$rounds"); do
    for v in learned parts; do
        n=$((n + 1))
        # New content: the run's number in each file's first bytes.
        find "$tree" -type f -exec sh -c \
            'for f; do printf "%08d" "$0" | dd of="$f" bs=8 count=1 conv=notrunc status=none; done' \
            "$n" {} +
        settings=()
        [[ $v == parts ]] && settings=(ATTACHE_TRANSFER__COPYING_STORE_THRESHOLD=0)
        env "${settings[@]}" /usr/bin/time -f "%e %U %S %M" -o "$w/time" \
            "$bin" --config "$w/$v.toml" put "$tree" --json -o /dev/null >"$w/report.json" 2>"$w/stderr" ||
            { cat "$w/stderr" >&2; exit 1; }
        read -r wall user sys rss <"$w/time"
        parts=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['upload']['multipart_objects'])" "$w/report.json")
        printf 'round %d %-7s wall %6.2f s  cpu %5.2f s  rss %7d KiB  in parts %d\n' \
            "$round" "$v" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$rss" "$parts" |
            tee -a "$w/out.txt"
        grep -h "copies every part" "$w/stderr" | sed 's/^/  /' | tee -a "$w/out.txt" || true
        # The next run sends everything again: the objects go, and what this machine knows.
        rm -rf "${w:?}/s3s/copying/$v"
        "$bin" --config "$w/$v.toml" cache clear --known-present >/dev/null
        sync
        sleep 1
    done
done
"$bin" --config "$w/learned.toml" cache | grep -A1 "copying stores" | tee -a "$w/out.txt"
if (( record )); then
    name=copying-store
    [[ $store == file ]] && name=copying-store-file
    cp "$w/out.txt" "$here/results/$name-$(date -u +%Y%m%dT%H%MZ).txt"
fi
