# Sourced by the benchmark scripts that run attache against the benchmark's s3s-fs server
# (content_cache.sh, step_dependency.sh, many_tasks.sh), after lib/s3s_server.sh.
#
# bench_paths: sets repo, target ($CARGO_TARGET_DIR, else repo/target), bin ($ATTACHE_BIN,
#   else the release build) and examples ($EXAMPLES_DIR, else the release examples), from
#   here (the script's bench/ directory).
# bench_tree NAME DEFAULT: sets tree to $TREE, else DEFAULT; exits 2 unless it is a directory.
# need_tools NAME EXAMPLES_DIR BIN...: exits 2, naming what is missing, without an attache
#   binary at each BIN, EXAMPLES_DIR/s3_server, or GNU time.
# make_workdir BASE NAME: makes a fresh work dir under BASE and sets w to it; on exit the
#   server (server_pid, once started) is stopped and w removed.
# start_bench NAME TAG BASE BIN...: need_tools, then make_workdir BASE TAG, then the s3s-fs
#   server started in w (start_s3s_server with $examples): every script's prologue.
# post PATH: a POST to the server's control API (e.g. /faults/delay?seconds=0.02).
# server_stat FIELD: a field of the server's /stats (requests, data_requests, ...).

bench_paths() {
    repo="$(cd "$here/.." && pwd)"
    target="${CARGO_TARGET_DIR:-$repo/target}"
    bin="${ATTACHE_BIN:-$target/release/attache}"
    examples="${EXAMPLES_DIR:-$target/release/examples}"
}

bench_tree() {
    tree="${TREE:-$2}"
    [[ -d "$tree" ]] || { echo "$1: no tree at $tree (set TREE)" >&2; exit 2; }
}

need_tools() {
    local name=$1 examples=$2 b
    shift 2
    for b in "$@"; do
        [[ -x "$b" ]] || { echo "$name: no attache at $b (set ATTACHE_BIN)" >&2; exit 2; }
    done
    [[ -x "$examples/s3_server" ]] || {
        echo "$name: no $examples/s3_server: cargo build --release --examples, or set EXAMPLES_DIR" >&2
        exit 2
    }
    [[ -x /usr/bin/time ]] || { echo "$name: needs GNU time (Debian package time)" >&2; exit 2; }
}

make_workdir() {
    w=$(mktemp -d "$1/$2-XXXX")
    server_pid=
    trap stop_workdir EXIT
}

stop_workdir() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$w"
}

start_bench() {
    local name=$1 tag=$2 base=$3
    shift 3
    need_tools "$name" "$examples" "$@"
    make_workdir "$base" "$tag"
    start_s3s_server "$examples" "$w" "$name"
}

post() {
    python3 -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='POST'))" "$control$1"
}

server_stat() {
    python3 -c "import json, sys, urllib.request as u; print(json.load(u.urlopen(sys.argv[1]))[sys.argv[2]])" \
        "$control/stats?multipart=false" "$1"
}
