#!/usr/bin/env bash
# content_cache.sh — a render worker's next session: sync-inputs of one job into a fresh
# session directory, without the content cache, with it empty (the first session, which fills
# it), and with it filled by an earlier session (every later session, and every job sharing
# those inputs).
#
#   bench/content_cache.sh OUT ROUNDS [DELAY_SECONDS]
#   bench/content_cache.sh /tmp/cc 3            # the local server as it is
#   bench/content_cache.sh /tmp/cc 3 0.02       # every response 20 ms late: a store across a WAN
#
# One s3s-fs server (the benchmark's s3_server, TCP_NODELAY set) serves every run; TREE is
# submitted once. Each round runs the three variants in turn, each with a fresh cache dir
# (so no hash cache and no known-present index help) except that "warm" reuses "cold"'s
# content cache; sessions and caches are kept until the end (WORKDIR needs ROUNDS × 3 × the
# tree's size). Prints and appends to OUT/runs.txt one line per run: wall s, client CPU
# (user+sys) s, peak RSS KiB, data-object requests the server saw, and attache's summary.
# Environment: ATTACHE_BIN (default $CARGO_TARGET_DIR/release/attache, else
# target/release/attache), EXAMPLES_DIR (where s3_server is), TREE (default
# /tmp/attache-bench-journaled/trees/small), WORKDIR (default: beside TREE).
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
bench_tree content_cache /tmp/attache-bench-journaled/trees/small
start_bench content_cache cc "${WORKDIR:-$(dirname "$tree")}" "$bin"
mkdir -p "$out"
export ATTACHE_STORE__URL="s3://$s3s_bucket/cc"
data_requests() { server_stat data_requests; }

ATTACHE_CACHE__DIR="$w/submit-cache" "$bin" submit "$tree" --farm-id farm-1 --queue-id queue-1 \
    -o "$w/attachments.json" 2>"$w/submit.log" || { cat "$w/submit.log" >&2; exit 1; }
post "/faults/delay?seconds=$delay"
echo "# $(date -u +%FT%TZ) tree $tree, response delay ${delay}s, load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out/runs.txt"

n=0
for _ in $(seq 1 "$rounds"); do
    for variant in off cold warm; do
        n=$((n + 1))
        size=200GiB
        case $variant in
            off) size=0; cache="$w/cache-off-$n" ;;
            cold) cache="$w/cache-on-$n"; warm_cache=$cache ;;
            # The content cache the cold run filled; the rest of its cache dir (hash cache,
            # known-present index) does not take part in a sync into an empty directory.
            warm) cache=$warm_cache ;;
        esac
        before=$(data_requests)
        ATTACHE_CACHE__DIR=$cache ATTACHE_CACHE__CONTENT_SIZE=$size \
            /usr/bin/time -f "%e %U %S %M" -o "$w/time" \
            "$bin" sync-inputs --attachments "$w/attachments.json" --session-dir "$w/session$n" \
            -o /dev/null 2>"$w/stderr" || { cat "$w/stderr" >&2; exit 1; }
        read -r wall user sys rss <"$w/time"
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        summary=$(grep -- ' -> ' "$w/stderr" | tail -1 | sed 's/^.*: \([0-9]* files;\)/\1/')
        echo "$variant wall $wall cpu $cpu rss $rss data_requests $(($(data_requests) - before)) | $summary" |
            tee -a "$out/runs.txt"
        # Nothing is deleted until the end: creating files soon after deleting thousands
        # costs ext4 a search for inodes not recently freed (seen here: the same sync 1.6 s,
        # then 3.6 s after the previous run's session was removed).
        sync
        sleep 1
    done
done
post /faults/clear
