#!/usr/bin/env bash
# outputs_kept.sh — sync-outputs of many small outputs with the content cache on: what keeping
# each output in the cache (a hard link, for a dependent step's task on this machine) costs.
#
#   bench/outputs_kept.sh OUT ROUNDS BIN...
#   bench/outputs_kept.sh /tmp/ok 4 /tmp/attache-before target/release/attache
#
# Everything is on /dev/shm (a file:// store, the session, the caches), so the store's writes
# and the disk cost little and the per-file work shows. One job is submitted once; before
# every run its FILES outputs (default 20000, 2 KiB each, in 20 directories) get new content,
# and the content cache is emptied. Each round runs every BIN in turn with
# cache.content_size = 1GiB. Prints and appends to OUT/runs.txt one line per run: the binary,
# wall s, user s, sys s, and the outputs the run kept in the content cache.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2   # the header comment above
    exit 2
fi
out=$1 rounds=$2
shift 2
files=${FILES:-20000}
[[ -x /usr/bin/time ]] || { echo "outputs_kept: needs GNU time (Debian package time)" >&2; exit 2; }
for b in "$@"; do
    [[ -x "$b" ]] || { echo "outputs_kept: no attache at $b" >&2; exit 2; }
done
mkdir -p "$out"
w=$(mktemp -d /dev/shm/outputs-kept-XXXX)
trap 'rm -rf "$w"' EXIT
export ATTACHE_STORE__URL="file://$w/store" ATTACHE_CACHE__DIR="$w/cache" \
    ATTACHE_CACHE__CONTENT_SIZE=1GiB
ids=(--farm-id farm-1 --queue-id queue-1 --job-id job-1)
mkdir -p "$w/job/renders"
echo "scene" > "$w/job/scene.txt"
"$1" submit "$w/job" --output-dir "$w/job/renders" --farm-id farm-1 --queue-id queue-1 \
    -o "$w/attachments.json" 2>/dev/null
"$1" sync-inputs --attachments "$w/attachments.json" --session-dir "$w/session" "${ids[@]}" \
    -o /dev/null 2>/dev/null
renders=$(echo "$w"/session/assetroot-*)/renders
echo "# $(date -u +%FT%TZ) $files outputs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out/runs.txt"
for ((round = 1; round <= rounds; round++)); do
    for b in "$@"; do
        python3 - "$renders" "$files" <<'EOF'
import os, sys
renders, files = sys.argv[1], int(sys.argv[2])
for i in range(files):
    d = os.path.join(renders, "layer%02d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f.%06d.exr" % i), "wb") as f:
        f.write(os.urandom(2048))
EOF
        rm -rf "$w/cache/content"
        /usr/bin/time -f "%e %U %S" -o "$w/time" "$b" sync-outputs --json \
            --attachments "$w/attachments.json" --session-dir "$w/session" "${ids[@]}" \
            --step-id step-1 --task-id "task-$round" --session-action-id "sa-$round" \
            >"$w/report.json" 2>"$w/log" || { cat "$w/log" >&2; exit 1; }
        kept=$(python3 -c 'import json, sys; print(sum(r["content_cache_files"] for r in json.load(open(sys.argv[1]))["roots"]))' "$w/report.json")
        read -r wall user sys <"$w/time"
        echo "$b wall $wall s, user $user s, sys $sys s, kept $kept" | tee -a "$out/runs.txt"
    done
done
