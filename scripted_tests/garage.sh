#!/usr/bin/env bash
# garage.sh — a throw-away single-node Garage (real S3 store) on 127.0.0.1 for scripted tests.
#
#   scripted_tests/garage.sh install          # build garage once into the tools dir (~13 min cold)
#   scripted_tests/garage.sh start DIR        # start a node under DIR, print DIR/env.sh
#   scripted_tests/garage.sh stop DIR         # stop it (pid file DIR/garage.pid); idempotent
#   scripted_tests/garage.sh status DIR       # exit 0 when the node under DIR is running
#   scripted_tests/garage.sh selftest         # start, put/get/delete with boto3, stop
#
# Or source it (defines functions, runs nothing, never exits the caller):
#   source scripted_tests/garage.sh
#   garage_start "$dir" && trap 'garage_stop "$dir"' EXIT && source "$dir/env.sh"
#
# `start` writes DIR/garage.toml, DIR/meta, DIR/data, DIR/garage.log, DIR/garage.pid and
# DIR/env.sh (AWS_* for boto3/the official client, ATTACHE_S3__* for attache, GARAGE_BUCKET),
# and makes one layout (replication_factor 1, lmdb metadata), one static key and one bucket
# the key may read, write and own. Everything listens on 127.0.0.1 only, on free ports chosen
# at start (or ATTACHE_GARAGE_{S3,RPC,ADMIN}_PORT).
#
# Environment:
#   ATTACHE_TOOLS_DIR         tools dir (default ~/.cache/attache-tools); garage goes in
#                             $ATTACHE_TOOLS_DIR/garage/bin/garage, its build dir in
#                             $ATTACHE_TOOLS_DIR/garage-build (deleted after a good build)
#   ATTACHE_GARAGE_VERSION    crates.io version to build (default 2.5.0)
#   ATTACHE_GARAGE_BIN        use this garage binary instead of building one
#   GARAGE_BUCKET             bucket name (default attache-interop)
#   ATTACHE_GARAGE_REGION     Garage's s3_region, exported as AWS_REGION (default garage)
#   ATTACHE_GARAGE_DB_ENGINE  metadata engine: lmdb (default, as Garage's own) or sqlite
#   ATTACHE_GARAGE_KEY_ID / ATTACHE_GARAGE_SECRET   static key (defaults below; test-only)
# Progress goes to stderr; `start` prints only the env file on stdout.

_garage_tools_dir() { printf '%s\n' "${ATTACHE_TOOLS_DIR:-$HOME/.cache/attache-tools}"; }
_garage_version() { printf '%s\n' "${ATTACHE_GARAGE_VERSION:-2.5.0}"; }
_garage_log() { echo "garage.sh: $*" >&2; }

# Path of the garage binary (may not exist yet).
garage_bin() {
    if [[ -n "${ATTACHE_GARAGE_BIN:-}" ]]; then
        printf '%s\n' "$ATTACHE_GARAGE_BIN"
    else
        printf '%s\n' "$(_garage_tools_dir)/garage/bin/garage"
    fi
}

# True when the binary exists and reports the pinned version.
_garage_installed() {
    local bin ver
    bin="$(garage_bin)"
    [[ -x "$bin" ]] || return 1
    [[ -n "${ATTACHE_GARAGE_BIN:-}" ]] && return 0
    ver="$("$bin" --version 2>/dev/null)" || return 1
    # e.g. "garage cargo:2.5.0 [features: ...]" (a crates.io build), "garage v2.5.0 ..." (release)
    local v_re
    v_re="$(_garage_version)"
    v_re="${v_re//./\\.}"
    [[ "$ver" =~ [\ :v]${v_re}([\ ]|$) ]]
}

# Build garage with cargo once; later calls return at once.
garage_install() {
    if _garage_installed; then
        return 0
    fi
    if [[ -n "${ATTACHE_GARAGE_BIN:-}" ]]; then
        _garage_log "ATTACHE_GARAGE_BIN=$ATTACHE_GARAGE_BIN is not executable"
        return 1
    fi
    local tools version lockfd rc=0
    tools="$(_garage_tools_dir)"
    version="$(_garage_version)"
    mkdir -p "$tools" || return 1
    if command -v flock >/dev/null 2>&1; then
        exec {lockfd}>"$tools/.garage-install.lock" || return 1
        flock "$lockfd" || return 1
    fi
    if ! _garage_installed; then
        command -v cargo >/dev/null 2>&1 || { _garage_log "cargo not found (need Rust to build garage)"; rc=1; }
        if [[ $rc -eq 0 ]]; then
            _garage_log "building garage $version with cargo install (about 13 min on 2 cores; once)"
            local t0=$SECONDS
            # Own target dir: never touches the repo's target/, and resumes after an interrupted build.
            if CARGO_TARGET_DIR="$tools/garage-build" \
                cargo install garage --version "=$version" --locked --root "$tools/garage" >&2; then
                _garage_log "garage $version built in $((SECONDS - t0)) s: $(garage_bin)"
                [[ "${ATTACHE_KEEP_GARAGE_BUILD:-0}" == 1 ]] || rm -rf "$tools/garage-build"
            else
                rc=$?
                _garage_log "cargo install garage $version failed (exit $rc)"
            fi
        fi
    fi
    if [[ -n "${lockfd:-}" ]]; then exec {lockfd}>&-; fi
    [[ $rc -eq 0 ]] && _garage_installed
}

# Three distinct free TCP ports on 127.0.0.1.
_garage_free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

_garage_rand_hex() { # N hex digits
    od -An -N"$(( ($1 + 1) / 2 ))" -tx1 /dev/urandom | tr -d ' \n' | cut -c1-"$1"
}

# garage CLI against the node under DIR (bounded: a CLI call never hangs the caller).
garage_cli() {
    local dir="$1"; shift
    timeout 15 "$(garage_bin)" -c "$dir/garage.toml" "$@"
}

garage_status() {
    local dir="$1" pid
    [[ -f "$dir/garage.pid" ]] || return 1
    pid="$(cat "$dir/garage.pid" 2>/dev/null)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# Retry a command until it succeeds or TIMEOUT seconds pass; its stdout is passed through on
# success, its stderr shown only when giving up.
_garage_retry() {
    local timeout="$1"; shift
    local deadline=$((SECONDS + timeout)) out errf
    errf="$(mktemp)"
    while true; do
        if out="$("$@" 2>"$errf")"; then
            rm -f "$errf"
            [[ -n "$out" ]] && printf '%s\n' "$out"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            _garage_log "gave up after ${timeout}s: $*"
            cat "$errf" >&2
            rm -f "$errf"
            return 1
        fi
        sleep 0.2
    done
}

garage_start() {
    local dir="${1:?usage: garage_start DIR}"
    local t0=$SECONDS
    garage_install || return 1
    mkdir -p "$dir" || return 1
    dir="$(cd "$dir" && pwd)"
    if garage_status "$dir"; then
        _garage_log "already running under $dir (pid $(cat "$dir/garage.pid"))"
        cat "$dir/env.sh"
        return 0
    fi

    local bucket="${GARAGE_BUCKET:-attache-interop}"
    local region="${ATTACHE_GARAGE_REGION:-garage}"
    # Fixed test-only credentials (format: GK + 24 hex, secret 64 hex). Not secrets: the
    # server is loopback-only and lives for one test run.
    local key_id="${ATTACHE_GARAGE_KEY_ID:-GK0a77ac4e0000000000000001}"
    local secret="${ATTACHE_GARAGE_SECRET:-a77ac4e0a77ac4e0a77ac4e0a77ac4e0a77ac4e0a77ac4e0a77ac4e0a77ac4e0}"
    local s3_port rpc_port admin_port
    read -r s3_port rpc_port admin_port <<<"$(_garage_free_ports)" || return 1
    s3_port="${ATTACHE_GARAGE_S3_PORT:-$s3_port}"
    rpc_port="${ATTACHE_GARAGE_RPC_PORT:-$rpc_port}"
    admin_port="${ATTACHE_GARAGE_ADMIN_PORT:-$admin_port}"

    # lmdb is Garage's own default. With sqlite, a 5,000-file upload cost Garage 8.4 s of CPU
    # and took 6.6 s, against 4.6 s and 3.5 s with lmdb
    # (bench/results/garage-db-engine-20261205T1146Z.txt).
    local db_engine="${ATTACHE_GARAGE_DB_ENGINE:-lmdb}"
    case "$db_engine" in
        sqlite | lmdb) ;;
        *) _garage_log "ATTACHE_GARAGE_DB_ENGINE must be sqlite or lmdb, not '$db_engine'"; return 2 ;;
    esac

    mkdir -p "$dir/meta" "$dir/data"
    cat >"$dir/garage.toml" <<EOF
# written by scripted_tests/garage.sh — single test node on loopback
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "$db_engine"
metadata_fsync = false
data_fsync = false
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(_garage_rand_hex 64)"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(_garage_rand_hex 32)"
metrics_token = "$(_garage_rand_hex 32)"
EOF
    chmod 600 "$dir/garage.toml"

    # Own session: a Ctrl-C in the caller's terminal reaches the caller, whose trap stops us.
    RUST_LOG="${ATTACHE_GARAGE_LOG:-garage=info}" \
        setsid "$(garage_bin)" -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 </dev/null &
    echo $! >"$dir/garage.pid"
    _garage_log "started pid $! (S3 127.0.0.1:$s3_port, RPC :$rpc_port, admin :$admin_port), log $dir/garage.log"

    _garage_setup "$dir" "$bucket" "$key_id" "$secret" || {
        _garage_log "setup failed; last log lines:"
        tail -n 20 "$dir/garage.log" >&2
        garage_stop "$dir"
        return 1
    }

    local endpoint="http://127.0.0.1:$s3_port"
    # The S3 API answers (any HTTP status, e.g. 403 for an anonymous request).
    local deadline=$((SECONDS + 30)) code
    while true; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$endpoint/" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && break
        if ((SECONDS >= deadline)) || ! garage_status "$dir"; then
            _garage_log "S3 endpoint $endpoint does not answer"
            tail -n 20 "$dir/garage.log" >&2
            garage_stop "$dir"
            return 1
        fi
        sleep 0.2
    done

    cat >"$dir/env.sh" <<EOF
# Garage test node under $dir (written by scripted_tests/garage.sh)
export AWS_ENDPOINT_URL='$endpoint'
export AWS_ACCESS_KEY_ID='$key_id'
export AWS_SECRET_ACCESS_KEY='$secret'
export AWS_REGION='$region'
export AWS_DEFAULT_REGION='$region'
export AWS_ACCOUNT_ID='123456789012'
export AWS_EC2_METADATA_DISABLED='true'
export AWS_CONFIG_FILE='/dev/null'
export AWS_SHARED_CREDENTIALS_FILE='/dev/null'
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
export ATTACHE_S3__ENDPOINT_URL='$endpoint'
export ATTACHE_S3__FORCE_PATH_STYLE='true'
export ATTACHE_S3__REGION='$region'
export ATTACHE_S3__ACCESS_KEY_ID='$key_id'
export ATTACHE_S3__SECRET_ACCESS_KEY='$secret'
export GARAGE_BUCKET='$bucket'
export GARAGE_DIR='$dir'
EOF
    _garage_log "ready in $((SECONDS - t0)) s: bucket $bucket at $endpoint"
    cat "$dir/env.sh"
}

_garage_setup() {
    local dir="$1" bucket="$2" key_id="$3" secret="$4" node
    # RPC up: `node id` answers once the daemon listens.
    node="$(_garage_retry 30 garage_cli "$dir" node id -q)" || return 1
    node="${node%%@*}"
    node="$(printf '%s' "$node" | tr -d '[:space:]')"
    [[ "$node" =~ ^[0-9a-f]{64}$ ]] || { _garage_log "unexpected node id: $node"; return 1; }
    _garage_retry 30 garage_cli "$dir" layout assign -z dc1 -c 1G "$node" >/dev/null || return 1
    _garage_retry 30 garage_cli "$dir" layout apply --version 1 >/dev/null || return 1
    # Right after apply the new layout may not be active yet: retry until it is.
    _garage_retry 30 garage_cli "$dir" key import --yes -n attache-test "$key_id" "$secret" >/dev/null || return 1
    _garage_retry 30 garage_cli "$dir" bucket create "$bucket" >/dev/null || return 1
    _garage_retry 30 garage_cli "$dir" bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null || return 1
}

# Stop the node under DIR: SIGTERM, wait up to 10 s, then SIGKILL. Safe to call twice.
garage_stop() {
    local dir="${1:?usage: garage_stop DIR}" pid i
    [[ -f "$dir/garage.pid" ]] || return 0
    pid="$(cat "$dir/garage.pid" 2>/dev/null)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            _garage_log "pid $pid ignored SIGTERM for 10 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        _garage_log "stopped pid $pid"
    fi
    rm -f "$dir/garage.pid"
}

# Start, PUT/GET/LIST/DELETE through boto3 (from the deadline venv), stop.
garage_selftest() {
    local here dir rc=0
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # shellcheck source=lib/deadline_venv.sh
    source "$here/lib/deadline_venv.sh" || return 1
    dir="$(mktemp -d "${TMPDIR:-/tmp}/attache-garage-selftest.XXXXXX")"
    garage_start "$dir" >/dev/null || { rm -rf "$dir"; return 1; }
    (
        # shellcheck disable=SC1091
        source "$dir/env.sh"
        "$DEADLINE_PY" - <<'EOF'
import hashlib, os, boto3
s3 = boto3.client("s3")  # AWS_ENDPOINT_URL / AWS_REGION from env.sh
b = os.environ["GARAGE_BUCKET"]
small = b"hello garage\n"
big = os.urandom(9 * 1024 * 1024)  # multipart through the transfer manager
s3.put_object(Bucket=b, Key="selftest/small", Body=small, Metadata={"asset-root": "/x"})
s3.upload_fileobj(__import__("io").BytesIO(big), b, "selftest/big",
                  Config=boto3.s3.transfer.TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
assert s3.get_object(Bucket=b, Key="selftest/small")["Body"].read() == small
head = s3.head_object(Bucket=b, Key="selftest/small")
assert head["Metadata"] == {"asset-root": "/x"}, head["Metadata"]
got = s3.get_object(Bucket=b, Key="selftest/big")["Body"].read()
assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="selftest/")["Contents"])
assert keys == ["selftest/big", "selftest/small"], keys
try:
    s3.head_object(Bucket=b, Key="selftest/missing")
    raise SystemExit("HEAD of a missing key succeeded")
except s3.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys]})
print("garage selftest: put/get/head/list/delete ok (13 B, 9 MiB multipart)")
EOF
    ) || rc=$?
    garage_stop "$dir"
    rm -rf "$dir"
    return "$rc"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    cmd="${1:-}"
    case "$cmd" in
        install) garage_install ;;
        start) garage_start "${2:?usage: garage.sh start DIR}" ;;
        stop) garage_stop "${2:?usage: garage.sh stop DIR}" ;;
        status) garage_status "${2:?usage: garage.sh status DIR}" ;;
        selftest) garage_selftest ;;
        bin) garage_bin ;;
        *)
            sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
            exit 2
            ;;
    esac
fi
