#!/usr/bin/env bash
# Generates what the Debian package installs besides the binary: shell completions and the
# man page (from the CLI's own definitions), then builds the .deb with cargo-deb.
#   packaging/build.sh            (installs cargo-deb once if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
out=target/packaging
mkdir -p "$out/completions"
bin=target/release/attache
"$bin" completions bash >"$out/completions/attache"
"$bin" completions zsh >"$out/completions/_attache"
"$bin" completions fish >"$out/completions/attache.fish"
"$bin" man | gzip -9n >"$out/attache.1.gz"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo deb --no-build --strip
ls -l target/debian/*.deb
