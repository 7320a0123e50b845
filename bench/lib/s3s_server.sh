# Sourced by the benchmark scripts. start_s3s_server EXAMPLES_DIR DIR NAME starts the
# benchmark's s3s-fs server (EXAMPLES_DIR/s3_server; it sets TCP_NODELAY itself) with its data
# under DIR/s3s, waits for the JSON line it prints once it serves, and sets server_pid,
# control (its control API's URL) and s3s_bucket, and exports the ATTACHE_S3__* settings
# that reach it. NAME prefixes its error message.
start_s3s_server() {
    local examples=$1 dir=$2 name=$3
    "$examples/s3_server" --root "$dir/s3s" >"$dir/s3s.json" 2>"$dir/s3s.log" &
    server_pid=$!
    for _ in $(seq 100); do
        [[ -s "$dir/s3s.json" ]] || ! kill -0 "$server_pid" 2>/dev/null && break
        sleep 0.05
    done
    [[ -s "$dir/s3s.json" ]] || {
        echo "$name: $examples/s3_server did not start (waited up to 5 s); its log:" >&2
        cat "$dir/s3s.log" >&2
        exit 1
    }
    local field=(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])"
        "$dir/s3s.json")
    export ATTACHE_S3__ENDPOINT_URL ATTACHE_S3__ACCESS_KEY_ID ATTACHE_S3__SECRET_ACCESS_KEY
    ATTACHE_S3__ENDPOINT_URL=$("${field[@]}" endpoint)
    ATTACHE_S3__ACCESS_KEY_ID=$("${field[@]}" access_key)
    ATTACHE_S3__SECRET_ACCESS_KEY=$("${field[@]}" secret_key)
    export ATTACHE_S3__REGION=us-east-1 ATTACHE_S3__FORCE_PATH_STYLE=true
    control=$("${field[@]}" control)
    s3s_bucket=$("${field[@]}" bucket)
}
