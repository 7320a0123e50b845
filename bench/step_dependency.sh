#!/usr/bin/env bash
# step_dependency.sh — a step that depends on another, on one worker: a render task writes
# TREE into its session's output directory and runs sync-outputs; then a task of the
# dependent step (a comp) runs sync-inputs --step-dependency in a fresh session on the same
# worker. Without the content cache the comp fetches every frame back from the store; with it,
# sync-outputs kept them (hard links) and the comp copies them from local disk.
#
#   bench/step_dependency.sh OUT ROUNDS [DELAY_SECONDS]
#   bench/step_dependency.sh /tmp/sd 3            # the local server as it is
#   bench/step_dependency.sh /tmp/sd 3 0.02       # every response 20 ms late: a store across a WAN
#
# One s3s-fs server (the benchmark's s3_server, TCP_NODELAY set) serves every run. Each round
# runs both variants (cache off, on) with a fresh cache dir, fresh sessions and a store prefix
# of its own (content is stored by hash: an earlier run's outputs would already be there). Prints and appends to OUT/runs.txt one line per
# command: wall s, client CPU (user+sys) s, peak RSS KiB, data-object requests the server saw,
# and attache's summary. WORKDIR needs ROUNDS × 2 × 3 × the tree's size.
# Environment: ATTACHE_BIN (default $CARGO_TARGET_DIR/release/attache, else
# target/release/attache), EXAMPLES_DIR (where s3_server is), TREE (default
# /tmp/attache-bench-journaled/trees/mixed), WORKDIR (default: beside TREE).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2   # the header comment above
    exit 2
fi
out=$1 rounds=$2 delay=${3:-0}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/s3s_server.sh
source "$here/lib/s3s_server.sh"
# shellcheck source=lib/bench_env.sh
source "$here/lib/bench_env.sh"
bench_paths
bench_tree step_dependency /tmp/attache-bench-journaled/trees/mixed
start_bench step_dependency sd "${WORKDIR:-$(dirname "$tree")}" "$bin"
mkdir -p "$out"
data_requests() { server_stat data_requests; }

# The job: one scene file in, renders/ out; submitted to each run's store.
mkdir -p "$w/proj/renders"
echo "scene" >"$w/proj/shot.ma"
submit() {
    ATTACHE_CACHE__DIR="$w/submit-cache-$n" "$bin" submit "$w/proj/shot.ma" \
        --output-dir "$w/proj/renders" --farm-id farm-1 --queue-id queue-1 \
        -o "$w/attachments.json" 2>"$w/submit.log" || { cat "$w/submit.log" >&2; exit 1; }
}
local_root() { python3 -c "import hashlib,sys; print(sys.argv[2] + '/assetroot-' + hashlib.shake_256(sys.argv[1].encode()).hexdigest(10))" "$w/proj" "$1"; }
post "/faults/delay?seconds=$delay"
echo "# $(date -u +%FT%TZ) tree $tree, response delay ${delay}s, load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out/runs.txt"

# timed LABEL CMD...: runs CMD under GNU time with the variant's cache, prints one line.
timed() {
    local label=$1; shift
    local before
    before=$(data_requests)
    ATTACHE_CACHE__DIR=$cache ATTACHE_CACHE__CONTENT_SIZE=$size \
        /usr/bin/time -f "%e %U %S %M" -o "$w/time" "$@" 2>"$w/stderr" >/dev/null ||
        { cat "$w/stderr" >&2; exit 1; }
    read -r wall user sys rss <"$w/time"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    summary=$(grep -E ' -> |new or changed' "$w/stderr" | tail -1 | sed 's/^[^:]*: //')
    echo "$variant $label wall $wall cpu $cpu rss $rss data_requests $(($(data_requests) - before)) | $summary" |
        tee -a "$out/runs.txt"
}

n=0
for _ in $(seq 1 "$rounds"); do
    for variant in off on; do
        n=$((n + 1))
        export ATTACHE_STORE__URL="s3://$s3s_bucket/sd-$n"
        submit
        cache="$w/cache-$n" size=200GiB
        [[ $variant == off ]] && size=0
        ids=(--farm-id farm-1 --queue-id queue-1 --job-id "job-$n")
        render="$w/render-$n" comp="$w/comp-$n"
        ATTACHE_CACHE__DIR=$cache ATTACHE_CACHE__CONTENT_SIZE=$size "$bin" sync-inputs \
            --attachments "$w/attachments.json" --session-dir "$render" -o /dev/null 2>/dev/null
        cp -a "$tree/." "$(local_root "$render")/renders/" # the render
        sync
        timed sync-outputs "$bin" sync-outputs --attachments "$w/attachments.json" \
            --session-dir "$render" "${ids[@]}" --step-id step-render --task-id task-1 \
            --session-action-id "sessionaction-$n"
        sync
        timed comp-sync-inputs "$bin" sync-inputs --attachments "$w/attachments.json" \
            --session-dir "$comp" "${ids[@]}" --step-dependency step-render -o /dev/null
        sync
        sleep 1
    done
done
post /faults/clear
