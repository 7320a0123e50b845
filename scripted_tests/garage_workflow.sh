#!/usr/bin/env bash
# garage_workflow.sh — the whole farm cycle on a real distributed store (Garage on 127.0.0.1),
# with real-length farm, queue, job, step, task and session-action ids:
#
#   doctor (every required probe of the setup passes; Garage ignores If-None-Match), then
#   submit -> sync-inputs -> (the task writes outputs) -> sync-outputs -> download-outputs,
#   then a re-submit of the unchanged tree (must upload nothing and publish one manifest),
#   then a killed put resumed by the next one, one taken over by another machine, `cleanup` of
#   an upload a killed put left open (on its machine right after the kill, and from another),
#   and a put with no region set (Garage wants its own: the error must name s3.region).
#
#   scripted_tests/garage_workflow.sh        (ATTACHE_BIN=path: use that binary, no cargo build)
#
# One PASS/FAIL line per check; exit 1 if any failed. Garage is built once by garage.sh.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo="$(cd "$here/.." && pwd -P)"
# shellcheck source=garage.sh
source "$here/garage.sh"

n_fail=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { n_fail=$((n_fail + 1)); printf 'FAIL  %s\n' "$*"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/attache-workflow.XXXXXX")" && work="$(cd "$work" && pwd -P)" || exit 1
garage_dir="$work/garage"
cleanup() {
    garage_stop "$garage_dir" 2>/dev/null
    if ((n_fail == 0)); then rm -rf "$work"; else echo "work dir kept: $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

garage_install || { echo "FAIL  setup: garage install"; exit 1; }
if [[ -n "${ATTACHE_BIN:-}" ]]; then
    attache="$ATTACHE_BIN"
else
    (cd "$repo" && cargo build --release --quiet) || { echo "FAIL  setup: cargo build --release"; exit 1; }
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    attache="$target_dir/release/attache"
fi
garage_start "$garage_dir" >"$work/garage-start.log" 2>&1 || { echo "FAIL  setup: garage start"; cat "$work/garage-start.log"; exit 1; }
# shellcheck disable=SC1091
source "$garage_dir/env.sh"
pass "setup: garage at $AWS_ENDPOINT_URL"

# The scripts' own ATTACHE_* knobs are not attache settings: keep them from it.
: >"$work/attache.toml"
# Sets `cmd` to the command line of attache with cache CACHE_NAME and ARGS.
attache_cmd() { # CACHE_NAME ARGS...
    local cache="$1"; shift
    local -a scrub=()
    local v
    for v in $(compgen -e); do
        [[ "$v" == ATTACHE_* && "$v" != *__* ]] && scrub+=(-u "$v")
    done
    cmd=(env "${scrub[@]}" ATTACHE_CACHE__DIR="$work/$cache" ATTACHE_STORE__URL="s3://$GARAGE_BUCKET/DeadlineCloud"
        "$attache" --config "$work/attache.toml" "$@")
}
run_attache() { # CACHE_NAME ARGS...
    local -a cmd
    attache_cmd "$@"
    "${cmd[@]}"
}
hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
farm="farm-$(hex)" queue="queue-$(hex)" job="job-$(hex)" step="step-$(hex)" task="task-$(hex)-1"
ids=(--farm-id "$farm" --queue-id "$queue")
# Starts `run_attache CACHE put ARGS...` in the background, waits for the record of its
# multipart upload, lets it run SECONDS more, then kills it with SIGKILL (no abort: the upload
# stays open). attache itself is the background job (`env` execs it), so `wait` returns once
# it is gone and its records' locks with it: a shell's pid there would leave the killed attache
# exiting, its records still held, while the next command looks at them.
put_then_kill() { # CACHE SECONDS LOG ARGS...
    local cache="$1" secs="$2" log="$3" pid
    shift 3
    local -a cmd
    attache_cmd "$cache" put "$@"
    "${cmd[@]}" 2>"$log" &
    pid=$!
    for _ in $(seq 300); do
        compgen -G "$work/$cache/open-uploads/*.json" >/dev/null && break
        sleep 0.1
    done
    sleep "$secs"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }

# A project: small files, a 24 MiB file (multipart), a non-ASCII name, an output directory.
proj="$work/proj"
mkdir -p "$proj/scenes" "$proj/tex/wood" "$proj/renders"
for i in $(seq 1 200); do printf 'texture %d\n' "$i" >"$proj/tex/wood/t$i.png"; done
printf 'scene\n' >"$proj/scenes/shot010.ma"
printf 'caf\xc3\xa9\n' >"$proj/scenes/notes déjà vu.txt"
head -c $((24 << 20)) /dev/urandom >"$proj/tex/big.exr"
touch -d @1700000000 "$proj"/scenes/* "$proj/tex/big.exr"

# The setup check a studio runs first: every required probe passes on a real store, and it
# says that Garage 2.5 ignores If-None-Match (a second conditional PUT of an object is stored).
if run_attache ws doctor >"$work/doctor.txt" 2>&1 &&
    grep -q '^warning *conditional put' "$work/doctor.txt"; then
    pass "doctor: $(grep -c '^ok ' "$work/doctor.txt") probes ok; warns that Garage ignores If-None-Match"
else
    fail "doctor"; cat "$work/doctor.txt"
fi

if run_attache ws submit "${ids[@]}" "$proj/scenes" "$proj/tex" --output-dir "$proj/renders" -o "$work/att.json" 2>"$work/submit.log"; then
    pass "submit: $(json "$work/att.json" "d['manifests'][0]['inputManifestPath']")"
else
    fail "submit"; cat "$work/submit.log"; exit 1
fi

session="$work/session"
if run_attache worker sync-inputs --attachments "$work/att.json" --session-dir "$session" -o "$work/rules.json" 2>"$work/sync.log"; then
    local_root="$(json "$work/rules.json" "d[0]['destination_path']")"
    if diff -r "$proj/scenes" "$local_root/scenes" >/dev/null && diff -r "$proj/tex" "$local_root/tex" >/dev/null; then
        pass "sync-inputs: inputs identical in $local_root"
    else
        fail "sync-inputs: materialized files differ"
    fi
else
    fail "sync-inputs"; cat "$work/sync.log"
fi

mkdir -p "$local_root/renders/beauty"
for f in 1001 1002 1003; do head -c 300000 /dev/urandom >"$local_root/renders/beauty/f$f.exr"; done
sa="sessionaction-$(hex)-0"
if run_attache worker sync-outputs "${ids[@]}" --job-id "$job" --step-id "$step" --task-id "$task" \
    --session-action-id "$sa" --attachments "$work/att.json" --session-dir "$session" -o "$work/outputs.json" 2>"$work/outs.log"; then
    pass "sync-outputs: $(json "$work/outputs.json" "d[0]['outputManifestPath']")"
else
    fail "sync-outputs"; cat "$work/outs.log"
fi

if run_attache ws download-outputs "${ids[@]}" --job-id "$job" 2>"$work/dl.log" &&
    diff -r "$local_root/renders" "$proj/renders" >/dev/null; then
    pass "download-outputs: renders back in $proj/renders, identical"
else
    fail "download-outputs"; cat "$work/dl.log"
fi

if run_attache ws submit "${ids[@]}" "$proj/scenes" "$proj/tex" --output-dir "$proj/renders" --json -o "$work/again-attachments.json" >"$work/again.json" 2>"$work/again.log"; then
    up="$(json "$work/again.json" "sum(r['upload']['uploaded_objects'] for r in d['roots'] if r['upload'])")"
    known="$(json "$work/again.json" "sum(r['upload']['known_objects'] for r in d['roots'] if r['upload'])")"
    if [[ "$up" == 0 ]]; then pass "re-submit: uploaded 0 objects, $known known present"; else fail "re-submit uploaded $up objects"; fi
else
    fail "re-submit"; cat "$work/again.log"
fi

# A put killed mid-multipart is resumed by the next put from the same machine: Garage's
# ListParts gives the parts it holds with their MD5 ETags, the put keeps those and sends the rest
# (one part at a time at 24 MiB/s: a few are whole when the first put is killed).
mkdir -p "$work/resume"
head -c 96M /dev/urandom >"$work/resume/big.bin"
ATTACHE_BANDWIDTH__UPLOAD=24MiB/s ATTACHE_TRANSFER__MAX_PARTS_IN_FLIGHT=1 \
    put_then_kill resumer 1.5 "$work/resume1.log" "$work/resume" -o "$work/resume.manifest"
if run_attache resumer put "$work/resume" -o "$work/resume.manifest" --json >"$work/resume.json" 2>"$work/resume2.log" &&
    run_attache fresh get "$work/resume.manifest" --dest "$work/resumed" 2>>"$work/resume2.log" &&
    cmp -s "$work/resume/big.bin" "$work/resumed/big.bin"; then
    kept="$(json "$work/resume.json" "d['upload']['resumed_bytes']")"
    if [[ "$(json "$work/resume.json" "d['upload']['resumed_uploads']")" == 1 && "$kept" -gt 0 ]]; then
        pass "resume: a killed put's multipart upload resumed, $((kept >> 20)) MiB of 96 MiB kept, the file identical"
    else
        fail "resume: nothing resumed"; cat "$work/resume.json" "$work/resume2.log"
    fi
else
    fail "resume"; cat "$work/resume2.log"
fi

# A put killed mid-multipart on "machine A" is taken over by "machine B" (another cache dir,
# transfer.take_over_after = 2s) once idle that long: Garage's ListMultipartUploads and
# ListParts give the upload and its parts with their times; B keeps the parts A sent. A's next
# put, its resume time past, finds the upload completed and drops its record.
mkdir -p "$work/takeover" "$work/takeover-tiny"
head -c 96M /dev/urandom >"$work/takeover/big.bin"
echo tiny >"$work/takeover-tiny/a.txt"
ATTACHE_BANDWIDTH__UPLOAD=24MiB/s ATTACHE_TRANSFER__MAX_PARTS_IN_FLIGHT=1 \
    put_then_kill machine-a 1.5 "$work/takeover1.log" "$work/takeover" -o "$work/takeover.manifest"
sleep 2.5
if ATTACHE_TRANSFER__TAKE_OVER_AFTER=2s run_attache machine-b put "$work/takeover" \
        -o "$work/takeover.manifest" --json >"$work/takeover.json" 2>"$work/takeover2.log" &&
    run_attache fresh get "$work/takeover.manifest" --dest "$work/takenover" 2>>"$work/takeover2.log" &&
    cmp -s "$work/takeover/big.bin" "$work/takenover/big.bin" &&
    ATTACHE_TRANSFER__RESUME_FOR=1s run_attache machine-a put "$work/takeover-tiny" \
        -o "$work/takeover-tiny.manifest" 2>>"$work/takeover2.log"; then
    kept="$(json "$work/takeover.json" "d['upload']['resumed_bytes']")"
    records="$(find "$work/machine-a/open-uploads" -name '*.json' 2>/dev/null | wc -l)"
    if [[ "$(json "$work/takeover.json" "d['upload']['resumed_uploads']")" == 1 && "$kept" -gt 0 && "$records" == 0 ]]; then
        pass "takeover: machine B took over the upload killed machine A left, $((kept >> 20)) MiB of 96 MiB kept, the file identical; A's record gone"
    else
        fail "takeover: resumed $(json "$work/takeover.json" "d['upload']['resumed_uploads']"), $kept bytes kept, $records record(s) left on A"
        cat "$work/takeover.json" "$work/takeover2.log"
    fi
else
    fail "takeover"; cat "$work/takeover2.log"
fi

# A put killed mid-multipart (kill -9: no abort) leaves an open upload on the store and its
# record in the cache. Right after the kill, `cleanup` on that machine aborts it: the record's
# time is the killed run's last part, so the parts Garage lists (ListParts) are taken for the
# run's own, not for another machine's at work.
mkdir -p "$work/sparse"
truncate -s 1G "$work/sparse/huge.bin"
put_then_kill crashed 1.5 "$work/crashed.log" "$work/sparse" -o "$work/crashed.manifest"
if run_attache crashed cleanup --json >"$work/cleanup0.json" 2>"$work/cleanup0.log"; then
    recorded="$(json "$work/cleanup0.json" "d['recorded_aborted']")"
    records="$(find "$work/crashed/open-uploads" -name '*.json' | wc -l)"
    if [[ "$recorded" == 1 && "$records" == 0 ]]; then
        pass "cleanup right after a crash: its machine aborted the upload it left (its own parts)"
    else
        fail "cleanup right after a crash: $recorded recorded upload(s) aborted, $records record(s) left"
        cat "$work/cleanup0.json" "$work/cleanup0.log"
    fi
else
    fail "cleanup right after a crash"; cat "$work/cleanup0.log"
fi

# Another put killed the same way; `cleanup` from another machine finds its upload through
# Garage's ListMultipartUploads and aborts it.
put_then_kill killed 0.5 "$work/killed.log" "$work/sparse" -o "$work/killed.manifest"
if run_attache other cleanup --older-than 0 --json >"$work/cleanup.json" 2>"$work/cleanup.log" &&
    run_attache other cleanup --older-than 0 --dry-run --json >"$work/cleanup2.json" 2>>"$work/cleanup.log"; then
    aborted="$(json "$work/cleanup.json" "len(d['aborted'])")"
    left="$(json "$work/cleanup2.json" "d['listed']")"
    if [[ "$aborted" -ge 1 && "$left" == 0 ]]; then
        pass "cleanup: aborted $aborted upload(s) a killed put left open; none listed after"
    else
        fail "cleanup: aborted $aborted, still listed $left"; cat "$work/cleanup.log"
    fi
else
    fail "cleanup"; cat "$work/cleanup.log"
fi

# Garage wants its own region ("garage"); a put signed for us-east-1 (no region set anywhere)
# must say which setting to fix, at once.
mkdir -p "$work/tiny" && echo tiny >"$work/tiny/one.txt"
(unset AWS_REGION AWS_DEFAULT_REGION ATTACHE_S3__REGION
    run_attache noregion put "$work/tiny" -o "$work/noregion.manifest" >/dev/null 2>"$work/noregion.log")
rc=$?
if [[ $rc == 1 ]] && grep -q "AuthorizationHeaderMalformed.*set s3.region" "$work/noregion.log"; then
    pass "no region: refused by Garage, and the error says to set s3.region"
else
    fail "no region: exit $rc"; cat "$work/noregion.log"
fi

((n_fail == 0)) && echo "garage workflow: all checks passed" || echo "garage workflow: $n_fail checks failed"
exit $((n_fail > 0))
