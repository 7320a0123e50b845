# Sourced by the bench scripts: builds the TCP_NODELAY shim (nodelay_shim.c, for servers that
# leave Nagle's algorithm on) into $ATTACHE_TOOLS_DIR when missing or older than its source,
# and prints its path.
#   shim=$(nodelay_shim)
nodelay_shim() {
    local src tools shim
    src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nodelay_shim.c"
    tools="${ATTACHE_TOOLS_DIR:-$HOME/.cache/attache-tools}"
    shim="$tools/nodelay_shim.so"
    if [[ ! -f "$shim" || "$src" -nt "$shim" ]]; then
        echo "building the TCP_NODELAY shim" >&2
        mkdir -p "$tools"
        gcc -O2 -shared -fPIC -o "$shim" "$src" -ldl >&2
    fi
    echo "$shim"
}
