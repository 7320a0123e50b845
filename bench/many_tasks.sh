#!/usr/bin/env bash
# many_tasks.sh — a step of many tasks, read back: every task of a render step publishes an
# output manifest (one small frame each); then a dependent task runs `sync-inputs
# --step-dependency` and a workstation runs `download-outputs` of the step. Both read one
# output manifest per task (and its metadata), which on a store across a WAN is a round trip
# each unless they are read several at once.
#
#   bench/many_tasks.sh OUT TASKS ROUNDS [DELAY_SECONDS] [BIN...]
#   bench/many_tasks.sh /tmp/mt 200 3 0.02                          # this build
#   bench/many_tasks.sh /tmp/mt 200 3 0.02 /tmp/attache-old /tmp/attache-new   # A/B
#   bench/many_tasks.sh /tmp/mt 200 3 0.02 BIN official     # and the official client
#
# A BIN named `official` is the official client (`deadline` 0.60.10, its venv made by
# scripted_tests/lib/deadline_venv.sh): `official.py download --step-dependency`, the worker
# agent's `sync_inputs(step_dependencies=[…])`; it has no download-outputs without the Deadline
# API, so that row is left out.
# One s3s-fs server (the benchmark's s3_server, TCP_NODELAY set); the tasks are published once
# (by the first BIN, without delay), then every response is DELAY late and each BIN runs both
# commands ROUNDS times, alternating. Prints and appends to OUT/runs.txt one line per run:
# binary, command, wall s, client CPU s, requests the server saw.
# Environment: ATTACHE_BIN (the default BIN: $CARGO_TARGET_DIR/release/attache, else
# target/release/attache), EXAMPLES_DIR (where s3_server is), WORKDIR (default /tmp).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2   # the header comment above
    exit 2
fi
out=$1 tasks=$2 rounds=$3 delay=${4:-0}
shift $(($# < 4 ? $# : 4))
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/s3s_server.sh
source "$here/lib/s3s_server.sh"
# shellcheck source=lib/bench_env.sh
source "$here/lib/bench_env.sh"
bench_paths
bins=("$@")
((${#bins[@]})) || bins=("$bin")
attache_bins=()
for b in "${bins[@]}"; do
    if [[ $b == official ]]; then
        # shellcheck source=../scripted_tests/lib/deadline_venv.sh
        source "$repo/scripted_tests/lib/deadline_venv.sh"
    else
        attache_bins+=("$b")
    fi
done
start_bench many_tasks mt "${WORKDIR:-/tmp}" "${attache_bins[@]}"
mkdir -p "$out"
export ATTACHE_STORE__URL="s3://$s3s_bucket/mt"
requests() { server_stat requests; }

# The official client, as a program `time` can run, reaching the same server (and nothing
# else: official.py refuses any other endpoint).
if [[ -n ${DEADLINE_PY:-} ]]; then
    cat >"$w/official" <<EOF
#!/usr/bin/env bash
export AWS_ENDPOINT_URL='$ATTACHE_S3__ENDPOINT_URL' AWS_ACCESS_KEY_ID='$ATTACHE_S3__ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$ATTACHE_S3__SECRET_ACCESS_KEY' AWS_REGION='$ATTACHE_S3__REGION'
export AWS_DEFAULT_REGION='$ATTACHE_S3__REGION' AWS_ACCOUNT_ID=123456789012
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
exec '$DEADLINE_PY' '$repo/scripted_tests/lib/official.py' "\$@"
EOF
    chmod +x "$w/official"
fi

# The job and its render step: TASKS sync-outputs, one frame each, in one session.
bin=${attache_bins[0]}
ids=(--farm-id farm-1 --queue-id queue-1)
mkdir -p "$w/proj/renders"
echo "scene" >"$w/proj/shot.ma"
export ATTACHE_CACHE__DIR="$w/publish-cache"
"$bin" submit "$w/proj/shot.ma" --output-dir "$w/proj/renders" "${ids[@]}" \
    -o "$w/attachments.json" 2>/dev/null
"$bin" sync-inputs --attachments "$w/attachments.json" --session-dir "$w/render" -o /dev/null 2>/dev/null
renders=$(echo "$w"/render/assetroot-*)/renders
mkdir -p "$renders"
for i in $(seq 1 "$tasks"); do
    echo "frame $i" >"$renders/f$i.exr"
    "$bin" sync-outputs --attachments "$w/attachments.json" --session-dir "$w/render" "${ids[@]}" \
        --job-id job-1 --step-id step-render --task-id "task-$i" --session-action-id "sa-$i" \
        >/dev/null 2>&1
    rm "$renders/f$i.exr"
done
post "/faults/delay?seconds=$delay"
echo "# $(date -u +%FT%TZ) $tasks tasks, response delay ${delay}s, load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out/runs.txt"

n=0
for _ in $(seq 1 "$rounds"); do
    for b in "${bins[@]}"; do
        for cmd in sync-inputs download-outputs; do
            n=$((n + 1))
            export ATTACHE_CACHE__DIR="$w/cache-$n"
            case $b/$cmd in
                official/sync-inputs) args=("$w/official" download --bucket "$s3s_bucket"
                    --root-prefix mt "${ids[@]}" --attachments "$w/attachments.json"
                    --dest "$w/comp-$n" --job-id job-1 --step-dependency step-render -o /dev/null) ;;
                official/*) continue ;;
                */sync-inputs) args=("$b" sync-inputs --attachments "$w/attachments.json"
                    --session-dir "$w/comp-$n" "${ids[@]}" --job-id job-1
                    --step-dependency step-render -o /dev/null) ;;
                */download-outputs) args=("$b" download-outputs "${ids[@]}" --job-id job-1
                    --step-id step-render --root-map "$w/proj=$w/home-$n") ;;
            esac
            before=$(requests)
            /usr/bin/time -f "%e %U %S" -o "$w/time" "${args[@]}" >/dev/null 2>"$w/stderr" ||
                { cat "$w/stderr" >&2; exit 1; }
            read -r wall user sys <"$w/time"
            cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
            echo "$b $cmd wall $wall cpu $cpu requests $(($(requests) - before))" | tee -a "$out/runs.txt"
        done
    done
done
post /faults/clear
