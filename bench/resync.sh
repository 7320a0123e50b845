#!/usr/bin/env bash
# resync.sh TREE ROUNDS BIN... : the next task's sync-inputs when every file is in place (a file:// store, the hash cache on), per binary, alternating. Prints wall, user and system seconds per run. WORKDIR: where the store, caches and sessions go (default /tmp).
set -euo pipefail
tree=$1 rounds=$2; shift 2
w=$(mktemp -d "${WORKDIR:-/tmp}/resync-XXXX")
for bin in "$@"; do
  n=$(basename $bin)
  printf '[store]\nurl = "file://%s/store"\n[cache]\ndir = "%s/cache-%s"\n' "$w" "$w" "$n" > $w/$n.toml
  $bin --config $w/$n.toml submit $tree --farm-id farm-1 --queue-id queue-1 -o $w/$n.att.json 2>/dev/null
  $bin --config $w/$n.toml sync-inputs --attachments $w/$n.att.json --session-dir $w/s-$n -o /dev/null 2>/dev/null
done
for r in $(seq 1 $rounds); do
  for bin in "$@"; do
    n=$(basename $bin)
    /usr/bin/time -f "$n resync wall %e user %U sys %S" $bin --config $w/$n.toml sync-inputs --attachments $w/$n.att.json --session-dir $w/s-$n -o /dev/null 2>&1 >/dev/null | grep "resync wall"
  done
done
rm -rf $w
