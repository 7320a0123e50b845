#!/usr/bin/env bash
# interop_deadline.sh — attache and the official AWS Deadline Cloud client (PyPI `deadline`
# 0.60.10) on one real S3 store (Garage on 127.0.0.1), both directions, byte for byte.
#
#   scripted_tests/interop_deadline.sh
#
#   A  attache -> official   `attache submit` a tree (fixtures tiny + edge with exact mtimes, a
#                            >20 MiB file, non-ASCII names); the official worker code
#                            (AssetSync.attachment_sync_inputs) materializes it; every file equal
#                            byte for byte, mtimes equal (within 1 us: the official client sets
#                            them through float seconds).
#   B  official -> attache   the official submitter code (S3AssetManager prepare / hash / upload)
#                            uploads another tree (non-ASCII root, 24 MiB multipart object,
#                            sub-microsecond and pre-1970 mtimes); `attache check --deep`
#                            finds every object of it; `attache sync-inputs` materializes it; files equal byte for byte, mtimes exact, mapping
#                            rules name S/assetroot-<shake_256(rootPath) 20 hex>.
#   C  same manifests        for the same tree the manifest object published by each tool is
#                            byte-identical and each inputManifestHash = xxh128(those bytes);
#                            also fixtures tiny and edge against their recorded manifest bytes.
#   D  step dependencies     a step's task 1 runs on attache (sync-inputs, render, sync-outputs),
#                            a chunk of its tasks too (no task id: step-level manifest), task 2
#                            on the official worker code (AssetSync sync_inputs and
#                            sync_outputs); a dependent task's inputs synced by the official
#                            client (step_dependencies) and by `attache sync-inputs
#                            --step-dependency` hold the job's inputs and all three frames, byte for byte.
#   E  a missing input       an input that does not exist yet is a referenced path for both
#                            tools by default: the same root and the same manifest bytes; with
#                            nothing else, the same attachments (a root with no manifest).
#   F  asset references      a job bundle's asset_references.yaml, read by the official client's
#                            loader and by `attache submit --asset-references`: the same root,
#                            manifest bytes and output directories.
#   G  template parameters   a job bundle's template PATH and LIST[PATH] parameters with a
#                            dataFlow, their values from -p, parameter_values.yaml and a default
#                            in the bundle, applied by the official client's own functions and by
#                            `attache submit --asset-references DIR -p`: the same root, manifest
#                            bytes and output directories.
#
# One summary line per check (PASS/FAIL/SKIP); exit 1 if anything failed. Needs python3, curl and,
# on the first run only, network access to crates.io and PyPI: Garage is built once (~13 min on
# 2 cores) and the venv made once, both under ${ATTACHE_TOOLS_DIR:-~/.cache/attache-tools}.
# Environment:
#   ATTACHE_BIN=path           use this attache binary, skip `cargo build --release`
#   ATTACHE_INTEROP_SKIP_MISSING=1   report checks needing a missing attache subcommand as SKIP
#                              (not FAIL); for running the official half before attache has them
#   ATTACHE_INTEROP_KEEP=1     keep the work dir (kept anyway when a check fails)
#   ATTACHE_FIXTURES=dir       fixture dir (default: tests/fixtures/deadline in the repo,
#                              then ../shared/fixtures/deadline beside it)
#   TMPDIR                     where the work dir goes
# Garage/venv knobs: see garage.sh and lib/deadline_venv.sh.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo="$(cd "$here/.." && pwd -P)"
t_start=$SECONDS

exec {errfd}>&2 # the script's stderr, also from traps that fire inside a redirected check
log() { echo "interop: $*" >&"$errfd"; }

# ---------------------------------------------------------------- results
n_pass=0 n_fail=0 n_skip=0
failed_names=()
pass() { n_pass=$((n_pass + 1)); printf 'PASS  %s\n' "$*"; }
fail() { n_fail=$((n_fail + 1)); failed_names+=("${1%%:*}"); printf 'FAIL  %s\n' "$*"; }
skip() { n_skip=$((n_skip + 1)); printf 'SKIP  %s\n' "$*"; }
# Not run because an attache subcommand is missing: FAIL, or SKIP when asked.
missing() {
    if [[ "${ATTACHE_INTEROP_SKIP_MISSING:-0}" == 1 ]]; then skip "$@"; else fail "$@"; fi
}

# check NAME CMD...: run CMD with output in $logs/NAME.log; PASS with its last stdout line, or
# FAIL with the log's tail.
check() {
    local name="$1"; shift
    local logf="$logs/$name.log"
    if "$@" >"$logf" 2>&1; then
        pass "$name: $(tail -n 1 "$logf")"
        return 0
    fi
    fail "$name: $(tail -n 1 "$logf")"
    tail -n 15 "$logf" | sed 's/^/        | /'
    return 1
}

# step NAME CMD...: a producing step (upload, submit, download) reported like a check.
step() { check "$@"; }

# ---------------------------------------------------------------- tools
# shellcheck source=lib/deadline_venv.sh
source "$here/lib/deadline_venv.sh" || { echo "FAIL  setup: deadline venv"; exit 1; }
# shellcheck source=garage.sh
source "$here/garage.sh"
PY="$DEADLINE_PY"
OFFICIAL=("$PY" "$here/lib/official.py")

fixtures="${ATTACHE_FIXTURES:-}"
if [[ -z "$fixtures" ]]; then
    for d in "$repo/tests/fixtures/deadline" "$repo/../shared/fixtures/deadline"; do
        [[ -f "$d/tiny/tree.json" ]] && { fixtures="$(cd "$d" && pwd -P)"; break; }
    done
fi
[[ -n "$fixtures" && -f "$fixtures/tiny/tree.json" ]] || {
    echo "FAIL  setup: fixtures not found (set ATTACHE_FIXTURES to the dir holding tiny/ and edge/)"
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/attache-interop.XXXXXX")" || exit 1
work="$(cd "$work" && pwd -P)" # physical path: both tools must see the same rootPath
logs="$work/logs"
mkdir -p "$logs"
garage_dir="$work/garage"

cleanup() {
    local rc=$?
    garage_stop "$garage_dir" 2>/dev/null
    if [[ "${ATTACHE_INTEROP_KEEP:-0}" == 1 || $n_fail -gt 0 || $rc -ne 0 ]]; then
        log "work dir kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# Garage (built once), attache (cargo decides what to rebuild), then a fresh Garage node.
log "garage: install/check"
if ! garage_install; then
    echo "FAIL  setup: garage install"
    exit 1
fi
if [[ -n "${ATTACHE_BIN:-}" ]]; then
    attache="$ATTACHE_BIN"
else
    log "cargo build --release (in $repo)"
    t0=$SECONDS
    if ! (cd "$repo" && cargo build --release) >"$logs/cargo-build.log" 2>&1; then
        echo "FAIL  setup: cargo build --release"
        tail -n 30 "$logs/cargo-build.log" | sed 's/^/        | /'
        exit 1
    fi
    target_dir="${CARGO_TARGET_DIR:-target}"
    [[ "$target_dir" = /* ]] || target_dir="$repo/$target_dir"
    attache="$target_dir/release/attache"
    log "built in $((SECONDS - t0)) s: $attache"
fi
t0=$SECONDS
if ! garage_start "$garage_dir" >"$logs/garage-start.log" 2>&1; then
    echo "FAIL  setup: garage start (see $logs/garage-start.log, $garage_dir/garage.log)"
    tail -n 20 "$logs/garage-start.log" | sed 's/^/        | /'
    exit 1
fi
# shellcheck disable=SC1091
source "$garage_dir/env.sh"
pass "setup: garage started in $((SECONDS - t0)) s at $AWS_ENDPOINT_URL, bucket $GARAGE_BUCKET"

[[ -x "$attache" ]] || { echo "FAIL  setup: no attache binary at $attache"; exit 1; }
# A private copy: a rebuild in the repo during the run must not swap the binary under the test.
mkdir -p "$work/bin" && cp "$attache" "$work/bin/attache" && attache="$work/bin/attache"
# attache reads every ATTACHE_* variable as config (ATTACHE_<SECTION>__<KEY>) and rejects unknown
# ones, so the scripts' own knobs (ATTACHE_BIN, ATTACHE_TOOLS_DIR, ...) are removed for it; and
# nobody's config file (~/.config/attache, /etc/attache) may change what this test runs.
: >"$work/attache.toml"
run_attache() {
    local -a scrub=()
    local v
    for v in $(compgen -e); do
        [[ "$v" == ATTACHE_* && "$v" != *__* ]] && scrub+=(-u "$v")
    done
    env "${scrub[@]}" "$attache" --config "$work/attache.toml" "$@"
}
have_submit=0 have_sync=0
run_attache submit --help >/dev/null 2>&1 && have_submit=1
run_attache sync-inputs --help >/dev/null 2>&1 && have_sync=1
((have_submit)) || log "attache has no 'submit' subcommand ($attache)"
((have_sync)) || log "attache has no 'sync-inputs' subcommand ($attache)"
# Hermetic attache state: a known-present index from an earlier Garage would skip uploads.
export ATTACHE_CACHE__DIR="$work/attache-cache"
export NO_COLOR=1

rand_hex() { od -An -N"$(($1 / 2))" -tx1 /dev/urandom | tr -d ' \n'; }
FARM="farm-$(rand_hex 32)"
QUEUE="queue-$(rand_hex 32)"
PREFIX="DeadlineCloud"
STORE="s3://$GARAGE_BUCKET/$PREFIX"
QARGS=(--bucket "$GARAGE_BUCKET" --root-prefix "$PREFIX" --farm-id "$FARM" --queue-id "$QUEUE")
log "farm $FARM queue $QUEUE store $STORE"

# ---------------------------------------------------------------- python helpers
helpers="$work/helpers.py"
cat >"$helpers" <<'PYEOF'
"""Tree building and comparison for interop_deadline.sh (runs under the deadline venv)."""
import base64, hashlib, json, os, random, re, stat, sys
from pathlib import Path
import xxhash

def die(msg):
    print(msg)
    sys.exit(1)

def fixture_content(f):
    if "content_base64" in f:
        return base64.b64decode(f["content_base64"])
    m = re.fullmatch(r"""b(['"])(.+?)\1 \* (\d+)""", f.get("content_spec", ""))
    if not m:
        die(f"cannot build fixture content for {f.get('path')!r}")
    data = m.group(2).encode("latin-1").decode("unicode_escape").encode("latin-1") * int(m.group(3))
    assert len(data) == f["size"], f["path"]
    return data

def put(root, rel, data, mtime_ns):
    p = Path(root) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))

def fixture_tree(fixtures, name, root, sub=""):
    tree = json.loads((Path(fixtures) / name / "tree.json").read_text(encoding="utf-8"))
    for f in tree["files"]:
        rel = os.fsdecode(bytes.fromhex(f["name_utf8_hex"])) if "name_utf8_hex" in f else f["path"]
        put(root, os.path.join(sub, rel) if sub else rel, fixture_content(f), f["mtime_ns"])
    return len(tree["files"])

def tree_a(fixtures, root):
    n = fixture_tree(fixtures, "tiny", root, "tiny")
    n += fixture_tree(fixtures, "edge", root, "edge")
    rng = random.Random(0xA77AC4E)
    put(root, "readme.txt", b"attache -> official interop tree A\n", 1712345678_123456789)
    put(root, "na\u00efve fa\u00e7ade \u65e5\u672c\u8a9e \U0001F600.txt", "non-ASCII name\n".encode(), 1600000000_000000999)
    put(root, "big/plate_0001.exr", rng.randbytes(20 * 1024 * 1024 + 1), 1700000123_456789000)
    put(root, "big/plate_0002.exr", rng.randbytes(5 * 1024 * 1024 - 7), 1700000124_000000001)
    put(root, "deep/a/b/c/d/e/leaf.txt", b"leaf\n", 1699999999_999999999)
    put(root, "dup-of-hello.txt", b"hello world\n", 1700000001_000000000)
    return n + 6

def tree_b(root):
    rng = random.Random(0xB0B)
    put(root, "scene.ma", b"//Maya ASCII 2024 scene\nrequires maya \"2024\";\n", 1710000000_000000000)
    put(root, "empty.txt", b"", 1710000001_000000000)
    put(root, "tex/diffuse 01.png", rng.randbytes(70_001), 1710000002_987654321)
    put(root, "tex/diffuse 01 copy.png", (Path(root) / "tex/diffuse 01.png").read_bytes(), 1710000003_000000500)
    put(root, "tex/\u00fcber/\u6587\u4ef6 \U0001F3A5.txt", "astral + CJK\n".encode(), 1710000004_000001000)
    put(root, "cache/sim.vdb", rng.randbytes(24 * 1024 * 1024 + 123), 1710000005_500000000)
    put(root, "cache/old.txt", b"before 1970\n", -1_234_567_891)
    put(root, "A.txt", b"upper\n", 1710000006_000000000)
    put(root, "a.txt", b"lower\n", 1710000007_000000000)
    put(root, "a b/c.txt", b"space\n", 1710000008_000000000)
    return 10

def walk_files(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, os.fsencode(root))] = p
    return out

def file_digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()

def cmd_compare(src, dst, mtime_mode):
    """Every file of src at the same path in dst, same bytes, same mtime; nothing else in dst."""
    if not os.path.isdir(dst):
        die(f"destination {dst} does not exist")
    a, b = walk_files(src), walk_files(dst)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    bad_content, bad_mtime, bad_type = [], [], []
    worst = 0
    nbytes = 0
    for rel in sorted(set(a) & set(b)):
        sa, sb = os.lstat(a[rel]), os.lstat(b[rel])
        if not stat.S_ISREG(sb.st_mode):
            bad_type.append(rel)
            continue
        nbytes += sa.st_size
        if sa.st_size != sb.st_size or file_digest(a[rel]) != file_digest(b[rel]):
            bad_content.append(rel)
        want_us = sa.st_mtime_ns // 1000  # what the manifest records (floor)
        if mtime_mode == "exact":
            ok = sb.st_mtime_ns == want_us * 1000
            dev = abs(sb.st_mtime_ns - want_us * 1000)
        else:  # official: os.utime(path, (us / 1e6, ...)) rounds through a float
            dev = abs(sb.st_mtime_ns // 1000 - want_us) * 1000
            ok = dev <= 1000
        worst = max(worst, dev)
        if not ok:
            bad_mtime.append((rel, sa.st_mtime_ns, sb.st_mtime_ns))
    problems = []
    def show(label, items):
        if items:
            shown = ", ".join(repr(os.fsdecode(x[0] if isinstance(x, tuple) else x)) for x in items[:5])
            problems.append(f"{len(items)} {label} ({shown}{', ...' if len(items) > 5 else ''})")
            for x in items[:5]:
                if isinstance(x, tuple):
                    print(f"  mtime {os.fsdecode(x[0])!r}: source {x[1]} ns, destination {x[2]} ns")
    show("missing", missing)
    show("extra", extra)
    show("not regular files", bad_type)
    show("content differs", bad_content)
    show(f"mtime differs ({mtime_mode})", bad_mtime)
    if problems:
        die("; ".join(problems))
    print(f"{len(a)} files, {nbytes} bytes identical; mtimes {mtime_mode} (max deviation {worst} ns)")

def cmd_attachments(path, root, farm, queue, want_outputs, fixture_attachments):
    """Shape of an attachments JSON (as the fixtures record it) for one root."""
    att = json.loads(Path(path).read_text(encoding="utf-8"))
    errs = []
    if set(att) != {"manifests", "fileSystem"}:
        errs.append(f"top-level keys {sorted(att)}")
    if att.get("fileSystem") != "COPIED":
        errs.append(f"fileSystem {att.get('fileSystem')!r}")
    ms = att.get("manifests") or []
    if len(ms) != 1:
        die(f"{len(ms)} manifests, expected 1: {ms}")
    m = ms[0]
    allowed = {"rootPath", "rootPathFormat", "fileSystemLocationName", "inputManifestPath",
               "inputManifestHash", "outputRelativeDirectories"}
    if set(m) - allowed:
        errs.append(f"unknown keys {sorted(set(m) - allowed)}")
    if m.get("rootPath") != root:
        errs.append(f"rootPath {m.get('rootPath')!r} != {root!r}")
    if m.get("rootPathFormat") != "posix":
        errs.append(f"rootPathFormat {m.get('rootPathFormat')!r}")
    if "fileSystemLocationName" in m:
        errs.append(f"fileSystemLocationName {m['fileSystemLocationName']!r} (none configured)")
    want_name = xxhash.xxh3_128_hexdigest(root.encode("utf-8")) + "_input"
    pat = rf"{re.escape(farm)}/{re.escape(queue)}/Inputs/[0-9a-f]{{32}}/{want_name}"
    if not re.fullmatch(pat, m.get("inputManifestPath", "")):
        errs.append(f"inputManifestPath {m.get('inputManifestPath')!r} !~ {farm}/{queue}/Inputs/<32 hex>/{want_name}")
    if not re.fullmatch(r"[0-9a-f]{32}", m.get("inputManifestHash", "")):
        errs.append(f"inputManifestHash {m.get('inputManifestHash')!r}")
    got_out = m.get("outputRelativeDirectories")
    if want_outputs is not None and got_out != want_outputs:
        errs.append(f"outputRelativeDirectories {got_out!r} != {want_outputs!r}")
    if fixture_attachments:
        fx = json.loads(Path(fixture_attachments).read_text(encoding="utf-8"))["manifests"][0]
        if list(m) != list(fx):
            errs.append(f"manifest keys/order {list(m)} != fixture {list(fx)}")
        if list(att) != ["manifests", "fileSystem"]:
            errs.append(f"top-level key order {list(att)}")
    if errs:
        die("; ".join(errs))
    print(f"rootPath {root!r}, {m['inputManifestPath']}, outputs {got_out!r}")

def cmd_layout(attachments, manifest_file, ls_file, prefix):
    """Every manifest entry has its CAS object (right size, no user metadata); the manifest object
    exists under Manifests/ with the recorded hash."""
    m = json.loads(Path(attachments).read_text(encoding="utf-8"))["manifests"][0]
    raw = Path(manifest_file).read_bytes()
    objs = {}
    for line in Path(ls_file).read_text(encoding="utf-8").splitlines():
        o = json.loads(line)
        objs[o["key"]] = o
    errs = []
    mkey = f"{prefix}/Manifests/{m['inputManifestPath']}"
    if mkey not in objs:
        errs.append(f"manifest object {mkey} missing")
    elif objs[mkey].get("metadata", {}) not in ({},):
        errs.append(f"input manifest has user metadata {objs[mkey]['metadata']}")
    if xxhash.xxh3_128_hexdigest(raw) != m["inputManifestHash"]:
        errs.append(f"xxh128(manifest bytes) {xxhash.xxh3_128_hexdigest(raw)} != inputManifestHash {m['inputManifestHash']}")
    man = json.loads(raw)
    hashes = {}
    for p in man["paths"]:
        hashes[p["hash"]] = p["size"]
    for h, size in sorted(hashes.items()):
        key = f"{prefix}/Data/{h}.xxh128"
        o = objs.get(key)
        if o is None:
            errs.append(f"data object {key} missing")
        elif o["size"] != size:
            errs.append(f"data object {key} is {o['size']} bytes, manifest says {size}")
        elif o.get("metadata", {}) != {}:
            errs.append(f"data object {key} has user metadata {o['metadata']}")
    if errs:
        die("; ".join(errs[:6]) + (f" (+{len(errs) - 6} more)" if len(errs) > 6 else ""))
    print(f"{len(man['paths'])} entries, {len(hashes)} CAS objects {prefix}/Data/<xxh128>.xxh128 present "
          f"with the right sizes and no metadata; {mkey.rsplit('/', 1)[-1]} present, hash ok")

def cmd_same_manifest(file_a, att_a, file_b, att_b, fixture_manifest):
    a, b = Path(file_a).read_bytes(), Path(file_b).read_bytes()
    ma = json.loads(Path(att_a).read_text(encoding="utf-8"))["manifests"][0]
    mb = json.loads(Path(att_b).read_text(encoding="utf-8"))["manifests"][0]
    errs = []
    if a != b:
        i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        errs.append(f"manifest bytes differ at offset {i} ({len(a)} vs {len(b)} bytes): "
                    f"{a[max(0, i - 40):i + 40]!r} vs {b[max(0, i - 40):i + 40]!r}")
    for raw, m, who in ((a, ma, "first"), (b, mb, "second")):
        if xxhash.xxh3_128_hexdigest(raw) != m["inputManifestHash"]:
            errs.append(f"{who}: inputManifestHash {m['inputManifestHash']} != xxh128 {xxhash.xxh3_128_hexdigest(raw)}")
    na, nb = ma["inputManifestPath"].rsplit("/", 1)[-1], mb["inputManifestPath"].rsplit("/", 1)[-1]
    if na != nb:
        errs.append(f"manifest object names differ: {na} vs {nb}")
    if ma["inputManifestPath"] == mb["inputManifestPath"]:
        errs.append("both submissions used the same Inputs/<guid>/ (guid must be fresh per submission)")
    if fixture_manifest:
        fx = Path(fixture_manifest).read_bytes()
        if a != fx:
            errs.append(f"differs from fixture {fixture_manifest} ({len(a)} vs {len(fx)} bytes)")
    if errs:
        die("; ".join(errs))
    extra = " and the fixture" if fixture_manifest else ""
    print(f"{len(a)} bytes identical{extra}, xxh128 {ma['inputManifestHash']}, object {na}")

def cmd_mapping(mapping, root, session):
    rules = json.loads(Path(mapping).read_text(encoding="utf-8"))
    want = os.path.join(session, "assetroot-" + hashlib.shake_256(root.encode("utf-8")).hexdigest(10))
    if not isinstance(rules, list):
        die(f"mapping is {type(rules).__name__}, expected a list")
    mine = [r for r in rules if r.get("source_path") == root]
    if len(mine) != 1:
        die(f"{len(mine)} rules for {root!r} in {rules}")
    r = mine[0]
    errs = []
    if set(r) != {"source_path_format", "source_path", "destination_path"}:
        errs.append(f"rule keys {sorted(r)}")
    if r.get("source_path_format") != "posix":
        errs.append(f"source_path_format {r.get('source_path_format')!r}")
    if os.path.realpath(r.get("destination_path", "")) != os.path.realpath(want):
        errs.append(f"destination_path {r.get('destination_path')!r} != {want!r}")
    if errs:
        die("; ".join(errs))
    print(f"{os.path.basename(want)} for {root!r}")

def main(argv):
    cmd = argv[0]
    if cmd == "tree-a": print(tree_a(argv[1], argv[2]), "files")
    elif cmd == "tree-b": print(tree_b(argv[1]), "files")
    elif cmd == "tree-fixture": print(fixture_tree(argv[1], argv[2], argv[3]), "files")
    elif cmd == "compare": cmd_compare(argv[1], argv[2], argv[3])
    elif cmd == "attachments":
        cmd_attachments(argv[1], argv[2], argv[3], argv[4],
                        json.loads(argv[5]) if argv[5] != "-" else None, argv[6] if argv[6] != "-" else None)
    elif cmd == "layout": cmd_layout(*argv[1:5])
    elif cmd == "same-manifest": cmd_same_manifest(*argv[1:5], argv[5] if argv[5] != "-" else None)
    elif cmd == "mapping": cmd_mapping(*argv[1:4])
    elif cmd == "dest": print(os.path.join(argv[2], "assetroot-" + hashlib.shake_256(argv[1].encode()).hexdigest(10)))
    elif cmd == "manifest-key":
        print(argv[2] + "/Manifests/" + json.loads(Path(argv[1]).read_text(encoding="utf-8"))["manifests"][0]["inputManifestPath"])
    else: die(f"unknown helper {cmd}")

main(sys.argv[1:])
PYEOF
H() { "$PY" "$helpers" "$@"; }

# Fetch the input manifest an attachments JSON names: H_fetch ATTACHMENTS OUT
fetch_manifest() {
    local key
    key="$(H manifest-key "$1" "$PREFIX")" || return 1
    "${OFFICIAL[@]}" manifest-bytes --bucket "$GARAGE_BUCKET" --key "$key" -o "$2"
}
# Key layout of one submission: layout NAME ATTACHMENTS
layout() {
    local att="$1" m="$1.manifest" ls="$1.ls"
    fetch_manifest "$att" "$m" || return 1
    "${OFFICIAL[@]}" ls --bucket "$GARAGE_BUCKET" --prefix "$PREFIX/" --metadata >"$ls" || return 1
    H layout "$att" "$m" "$ls" "$PREFIX"
}
attache_submit() { # ROOT OUT [more flags]
    local root="$1" out="$2"; shift 2
    run_attache submit --farm-id "$FARM" --queue-id "$QUEUE" --store "$STORE" "$@" "$root" -o "$out"
}

# ---------------------------------------------------------------- A: attache -> official
A="$work/a"; ROOT_A="$A/shot_a"
mkdir -p "$A"
check A0-tree H tree-a "$fixtures" "$ROOT_A"
if ((have_submit)); then
    if step A1-attache-submit attache_submit "$ROOT_A" "$A/attachments.json" --output-dir "$ROOT_A/out"; then
        check A2-attachments-shape H attachments "$A/attachments.json" "$ROOT_A" "$FARM" "$QUEUE" '["out"]' -
        check A3-key-layout layout "$A/attachments.json"
        if step A4-official-download "${OFFICIAL[@]}" download "${QARGS[@]}" \
            --attachments "$A/attachments.json" --dest "$A/session" -o "$A/official-mapping.json"; then
            check A5-official-mapping H mapping "$A/official-mapping.json" "$ROOT_A" "$A/session"
            check A6-files-equal H compare "$ROOT_A" "$(H dest "$ROOT_A" "$A/session")" official
        fi
    fi
else
    missing "A1-attache-submit: attache has no 'submit' subcommand; A2-A6 not run"
fi

# ---------------------------------------------------------------- B: official -> attache
B="$work/b"
ROOT_B="$B/projekt $(printf '\xc3\xbc')/shot 010" # non-ASCII root path (u-umlaut)
mkdir -p "$B"
check B0-tree H tree-b "$ROOT_B"
if step B1-official-upload "${OFFICIAL[@]}" upload "${QARGS[@]}" --output-dir "$ROOT_B/out" \
    "$ROOT_B" -o "$B/attachments.json"; then
    check B2-attachments-like-fixture H attachments "$B/attachments.json" "$ROOT_B" "$FARM" "$QUEUE" \
        '["out"]' "$fixtures/tiny/attachments.json"
    check B3-key-layout layout "$B/attachments.json"
    # attache check finds every object of the official submission, with its hash (--deep).
    check B3a-attache-check run_attache check --attachments "$B/attachments.json" \
        --store "$STORE" --deep
    # The harness itself: the official worker code reads what the official submitter wrote.
    if step B4-official-download "${OFFICIAL[@]}" download "${QARGS[@]}" \
        --attachments "$B/attachments.json" --dest "$B/official-session" -o "$B/official-mapping.json"; then
        check B5-official-roundtrip H compare "$ROOT_B" "$(H dest "$ROOT_B" "$B/official-session")" official
    fi
    if ((have_sync)); then
        if step B6-attache-sync-inputs run_attache sync-inputs --attachments "$B/attachments.json" \
            --store "$STORE" --session-dir "$B/session" -o "$B/mapping.json"; then
            check B7-attache-mapping H mapping "$B/mapping.json" "$ROOT_B" "$B/session"
            check B8-files-equal H compare "$ROOT_B" "$(H dest "$ROOT_B" "$B/session")" exact
        fi
    else
        missing "B6-attache-sync-inputs: attache has no 'sync-inputs' subcommand; B6-B8 not run"
    fi
fi

# ---------------------------------------------------------------- C: byte-identical manifests
# same_manifest ATT1 ATT2 [FIXTURE_MANIFEST]: fetch both published input manifests, compare the
# bytes (and with the fixture's recorded bytes), check both inputManifestHash values.
same_manifest() {
    local a1="$1" a2="$2" fx="${3:--}"
    fetch_manifest "$a1" "$a1.bytes" >/dev/null || return 1
    fetch_manifest "$a2" "$a2.bytes" >/dev/null || return 1
    H same-manifest "$a1.bytes" "$a1" "$a2.bytes" "$a2" "$fx"
}
official_vs_fixture() { # ATT FIXTURE_MANIFEST
    fetch_manifest "$1" "$1.bytes" >/dev/null || return 1
    cmp "$1.bytes" "$2" && echo "official manifest = fixture bytes ($(wc -c <"$2") bytes)"
}
C="$work/c"
mkdir -p "$C"
if ((have_submit)); then
    # C1: tree A: attache's submission (A1) vs the official upload of the same tree.
    if [[ -f "$A/attachments.json" ]] \
        && step C1-official-upload-tree-a "${OFFICIAL[@]}" upload "${QARGS[@]}" \
            --output-dir "$ROOT_A/out" "$ROOT_A" -o "$C/official-a.json"; then
        check C2-same-manifest-tree-a same_manifest "$A/attachments.json" "$C/official-a.json"
        check C3-same-attachments-tree-a H attachments "$C/official-a.json" "$ROOT_A" "$FARM" "$QUEUE" '["out"]' -
    fi
    # C4: tree B: the official submission (B1) vs attache's submission of the same tree.
    if [[ -f "$B/attachments.json" ]] \
        && step C4-attache-submit-tree-b attache_submit "$ROOT_B" "$C/attache-b.json" --output-dir "$ROOT_B/out"; then
        check C5-same-manifest-tree-b same_manifest "$B/attachments.json" "$C/attache-b.json"
        check C6-same-attachments-tree-b H attachments "$C/attache-b.json" "$ROOT_B" "$FARM" "$QUEUE" '["out"]' -
    fi
fi
# C7..: the fixtures, recreated with their exact mtimes, through both tools, against the
# manifest bytes the official client recorded when the fixtures were made.
for fx in tiny edge; do
    [[ -f "$fixtures/$fx/tree.json" ]] || { skip "C-$fx: no fixture $fixtures/$fx"; continue; }
    root="$C/fixture-$fx/root"
    check "C-$fx-tree" H tree-fixture "$fixtures" "$fx" "$root" || continue
    # No output dir: the root is the common path of the inputs (each fixture has a top-level file).
    step "C-$fx-official-upload" "${OFFICIAL[@]}" upload "${QARGS[@]}" "$root" -o "$C/official-$fx.json" \
        || continue
    if ((have_submit)); then
        if step "C-$fx-attache-submit" attache_submit "$root" "$C/attache-$fx.json"; then
            check "C-$fx-same-manifest" same_manifest "$C/official-$fx.json" "$C/attache-$fx.json" \
                "$fixtures/$fx/manifest.json"
        fi
    else
        # The official half alone: its published bytes against the fixture.
        check "C-$fx-official-vs-fixture" official_vs_fixture "$C/official-$fx.json" "$fixtures/$fx/manifest.json"
        missing "C-$fx-attache-submit: attache has no 'submit' subcommand"
    fi
done
((have_submit)) || missing "C1-C6: attache has no 'submit' subcommand; not run"

# ---------------------------------------------------------------- D: step dependencies
# A step that depends on another gets that step's outputs with its inputs. Task 1 of the step
# runs on attache, task 2 on the official worker code (sync inputs, "render", sync outputs);
# then each tool syncs a dependent task's inputs with --step-dependency: both find both tasks'
# outputs in the root, byte for byte.
D="$work/d"
if ((have_sync)) && [[ -f "$A/attachments.json" ]]; then
    mkdir -p "$D/frames"
    JOB="job-$(rand_hex 32)"
    STEP="step-$(rand_hex 32)"
    JARGS=(--farm-id "$FARM" --queue-id "$QUEUE" --job-id "$JOB")
    head -c 3000001 /dev/urandom >"$D/frames/f1.exr" && touch -d @1767323045.123456789 "$D/frames/f1.exr"
    # Whole seconds: the official writer takes the mtime through float seconds.
    printf 'frame 2 from the official worker code\n' >"$D/frames/f2.exr" && touch -d @1767323046 "$D/frames/f2.exr"
    printf 'frame 3 from a chunk of tasks\n' >"$D/frames/f3.exr" && touch -d @1767323047.5 "$D/frames/f3.exr"
    # What a dependent task must see: the job's inputs and every frame in out/.
    cp -a "$ROOT_A" "$D/expected" && mkdir -p "$D/expected/out" \
        && cp -p "$D/frames/"*.exr "$D/expected/out/"
    attache_task() { # SESSION FRAME [TASK_ID]: sync inputs, render FRAME, sync outputs
        local session="$1" local_root
        run_attache sync-inputs --attachments "$A/attachments.json" --store "$STORE" \
            --session-dir "$session" -o /dev/null || return 1
        local_root="$(H dest "$ROOT_A" "$session")"
        mkdir -p "$local_root/out" && cp -p "$D/frames/$2" "$local_root/out/" || return 1
        # Without a task id: a session action that ran a chunk of the step's tasks.
        run_attache sync-outputs --attachments "$A/attachments.json" --store "$STORE" \
            --session-dir "$session" "${JARGS[@]}" --step-id "$STEP" ${3:+--task-id "$3"} \
            --session-action-id "sessionaction-$(rand_hex 32)-0"
    }
    if step D1-attache-task attache_task "$D/task-1" f1.exr "task-$(rand_hex 32)-1" \
        && step D1a-attache-chunk attache_task "$D/chunk" f3.exr \
        && step D2-official-task "${OFFICIAL[@]}" task "${QARGS[@]}" --attachments "$A/attachments.json" \
            --dest "$D/task-2" --job-id "$JOB" --step-id "$STEP" --task-id "task-$(rand_hex 32)-2" \
            --session-action-id "sessionaction-$(rand_hex 32)-1" --render "out/f2.exr=$D/frames/f2.exr"; then
        if step D3-official-sync-dependency "${OFFICIAL[@]}" download "${QARGS[@]}" \
            --attachments "$A/attachments.json" --dest "$D/official-next" --job-id "$JOB" \
            --step-dependency "$STEP" -o "$D/official-next.json"; then
            check D4-official-files-equal H compare "$D/expected" "$(H dest "$ROOT_A" "$D/official-next")" official
        fi
        if step D5-attache-sync-dependency run_attache sync-inputs --attachments "$A/attachments.json" \
            --store "$STORE" --session-dir "$D/next" "${JARGS[@]}" --step-dependency "$STEP" \
            -o "$D/next.json"; then
            check D6-attache-mapping H mapping "$D/next.json" "$ROOT_A" "$D/next"
            check D7-attache-files-equal H compare "$D/expected" "$(H dest "$ROOT_A" "$D/next")" exact
        fi
    fi
else
    skip "D: needs attache sync-inputs and section A's submission"
fi

# ---------------------------------------------------------------- E: a missing input
# An input that does not exist yet (a cache an earlier step of the job writes) is a referenced
# path for both tools by default: it shapes the root, so the root, the manifest's name and its
# bytes are the same.
E="$work/e"
if ((have_submit)); then
    mkdir -p "$E/proj/scene"
    printf 'scene\n' >"$E/proj/scene/shot.ma" && touch -d @1767323045 "$E/proj/scene/shot.ma"
    missing_input="$E/proj/sim/deep/cache.vdb"
    if step E1-official-upload "${OFFICIAL[@]}" upload "${QARGS[@]}" --allow-missing \
            "$E/proj/scene/shot.ma" "$missing_input" -o "$E/official.json" \
        && step E2-attache-submit attache_submit "$E/proj/scene/shot.ma" "$E/attache.json" "$missing_input"; then
        check E3-same-manifest same_manifest "$E/official.json" "$E/attache.json"
    fi
    # Nothing but the missing input: a root with no manifest (its rootPath the path itself, as
    # the official client groups a lone path), the same attachments document from both.
    if step E4-official-upload "${OFFICIAL[@]}" upload "${QARGS[@]}" --allow-missing \
            "$missing_input" -o "$E/official-ref.json" \
        && step E5-attache-submit attache_submit "$missing_input" "$E/attache-ref.json"; then
        check E6-same-attachments python3 -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(json.dumps(a)) if a == b else sys.exit(f"official {a}\nattache  {b}")' \
            "$E/official-ref.json" "$E/attache-ref.json"
    fi
else
    missing "E: attache has no 'submit' subcommand"
fi

# ---------------------------------------------------------------- F: a job bundle's asset references
# The asset_references.yaml of a job bundle (what `deadline bundle submit` and the DCC submitters
# read: input files and directories, output directories, referenced paths), read by the official
# client's own loader and by `attache submit --asset-references`: the same root, manifest bytes
# and output directories.
F="$work/f"
if ((have_submit)); then
    mkdir -p "$F/proj/scene" "$F/proj/tex/sub" "$F/bundle"
    printf 'scene\n' >"$F/proj/scene/shot.ma" && touch -d @1767323045 "$F/proj/scene/shot.ma"
    printf 'a\n' >"$F/proj/tex/a.png" && touch -d @1767323046 "$F/proj/tex/a.png"
    printf 'b\n' >"$F/proj/tex/sub/b.png" && touch -d @1767323047 "$F/proj/tex/sub/b.png"
    cat >"$F/bundle/asset_references.yaml" <<YAML
assetReferences:
  inputs:
    filenames:
    - $F/proj/scene/shot.ma
    directories:
    - $F/proj/tex
  outputs:
    directories:
    - $F/proj/renders
  referencedPaths:
  - $F/proj/sim/cache.vdb
YAML
    if step F1-official-upload "${OFFICIAL[@]}" upload "${QARGS[@]}" \
            --asset-references "$F/bundle" -o "$F/official.json" \
        && step F2-attache-submit run_attache submit --farm-id "$FARM" --queue-id "$QUEUE" \
            --store "$STORE" --asset-references "$F/bundle" -o "$F/attache.json"; then
        check F3-same-manifest same_manifest "$F/official.json" "$F/attache.json"
        check F4-official-attachments H attachments "$F/official.json" "$F/proj" "$FARM" "$QUEUE" '["renders"]' -
        check F5-attache-attachments H attachments "$F/attache.json" "$F/proj" "$FARM" "$QUEUE" '["renders"]' -
    fi
else
    missing "F: attache has no 'submit' subcommand"
fi

# ---------------------------------------------------------------- G: a job bundle's template parameters
# A template's PATH parameters with a dataFlow are inputs and outputs, as `deadline bundle
# submit` applies them (read_job_bundle_parameters, apply_job_parameters): a scene given with
# -p, a LIST[PATH] given with -p as a JSON array, a texture directory by its default inside the
# bundle, an output directory and an output FILE (its directory) from parameter_values.yaml, a
# referenced path without a dataFlow.
G="$work/g"
if ((have_submit)); then
    mkdir -p "$G/proj/scene" "$G/proj/extra" "$G/bundle/tex"
    printf 'scene\n' >"$G/proj/scene/shot.ma" && touch -d @1767323045 "$G/proj/scene/shot.ma"
    printf 'x\n' >"$G/proj/extra/x.abc" && touch -d @1767323046 "$G/proj/extra/x.abc"
    printf 'y\n' >"$G/proj/extra/y.abc" && touch -d @1767323047 "$G/proj/extra/y.abc"
    printf 'a\n' >"$G/bundle/tex/a.png" && touch -d @1767323048 "$G/bundle/tex/a.png"
    cat >"$G/bundle/template.yaml" <<'YAML'
specificationVersion: jobtemplate-2023-09
name: interop-g
parameterDefinitions:
- {name: SceneFile, type: PATH, objectType: FILE, dataFlow: IN}
- {name: Extras, type: "LIST[PATH]", objectType: FILE, dataFlow: IN}
- {name: Textures, type: PATH, objectType: DIRECTORY, dataFlow: IN, default: tex}
- {name: OutDir, type: PATH, objectType: DIRECTORY, dataFlow: OUT}
- {name: CompFile, type: PATH, objectType: FILE, dataFlow: OUT}
- {name: Plugins, type: PATH, objectType: DIRECTORY}
- {name: Frames, type: STRING, default: "1-3"}
steps:
- name: render
  script:
    actions:
      onRun: {command: "true"}
YAML
    cat >"$G/bundle/parameter_values.yaml" <<YAML
parameterValues:
- {name: OutDir, value: $G/proj/renders}
- {name: CompFile, value: $G/proj/comp/final.exr}
- {name: Plugins, value: $G/proj/plugins}
YAML
    g_params=(-p "SceneFile=$G/proj/scene/shot.ma"
              -p "Extras=[\"$G/proj/extra/x.abc\", \"$G/proj/extra/y.abc\"]")
    if step G1-official-upload "${OFFICIAL[@]}" upload "${QARGS[@]}" \
            --asset-references "$G/bundle" "${g_params[@]}" -o "$G/official.json" \
        && step G2-attache-submit run_attache submit --farm-id "$FARM" --queue-id "$QUEUE" \
            --store "$STORE" --asset-references "$G/bundle" "${g_params[@]}" -o "$G/attache.json"; then
        check G3-same-manifest same_manifest "$G/official.json" "$G/attache.json"
        check G4-official-attachments H attachments "$G/official.json" "$G" "$FARM" "$QUEUE" '["proj/comp", "proj/renders"]' -
        check G5-attache-attachments H attachments "$G/attache.json" "$G" "$FARM" "$QUEUE" '["proj/comp", "proj/renders"]' -
    fi
else
    missing "G: attache has no 'submit' subcommand"
fi

# ---------------------------------------------------------------- summary
echo "interop_deadline: $n_pass passed, $n_fail failed, $n_skip skipped in $((SECONDS - t_start)) s" \
    "(attache $(run_attache --version 2>/dev/null | head -n 1), deadline $("$PY" -c 'import importlib.metadata as m; print(m.version("deadline"))'), garage $("$(garage_bin)" --version 2>/dev/null | head -n 1))"
if ((n_fail > 0)); then
    echo "interop_deadline: failed: ${failed_names[*]}"
    exit 1
fi
exit 0
