#!/usr/bin/env python3
"""Hash a tree with the official AWS Deadline Cloud client, the way a job submission does.

    official_hash.py ROOT --cache-dir DIR [-o MANIFEST]   # prints one JSON line
    official_hash.py --self-test                          # checks against shared fixtures

Drives the real job-attachments API of PyPI `deadline` (0.60.10):

  1. walk ROOT with os.walk and collect every file, as `deadline bundle submit` does for an
     input directory (client/api/_submit_job_bundle.py);
  2. S3AssetManager.prepare_paths_for_upload(input_paths=files, output_paths=[ROOT], ...)
     groups them into one asset root (ROOT is passed as an output path, as the client's own
     `_create_manifest_for_single_root` does, so the asset root is ROOT itself rather than the
     common path of the files);
  3. S3AssetManager.hash_assets_and_create_manifest(..., hash_cache_dir=DIR) hashes every file
     (thread pool, 8 KiB reads, xxh3_128) through the SQLite hash cache
     `DIR/hash_cache.db`. A submission passes `config_file.get_cache_directory()`
     (~/.deadline/cache, not settable by environment); here it is --cache-dir;
  4. manifest.encode() gives the canonical v2023-03-03 bytes that would be uploaded.

Output JSON (stdout, one line):
  files, bytes         what the manifest lists
  seconds              walk + group + hash + encode, measured in-process (excludes interpreter
                       start-up and imports, about 0.5-1 s, so it favours the official client)
  walk_seconds, group_seconds, hash_seconds, encode_seconds   the parts of `seconds`
  hashed_files, hashed_bytes, cached_files, cached_bytes      from the client's own summary
                       (cached = hash cache hit, content not read)
  manifest_hash        xxh3_128 of the manifest bytes (as `inputManifestHash`)
  manifest             path written with -o, else null
  gib_per_s, files_per_s

No network and no AWS credentials are needed: the S3 client the manager constructs is never
used; dummy AWS_* variables and an unroutable endpoint make sure nothing leaves the machine.
If `deadline` is not importable, the script re-executes itself under the venv made by
scripted_tests/lib/deadline_venv.sh.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIXTURES = Path(os.environ.get("ATTACHE_FIXTURES", REPO.parent / "shared" / "fixtures" / "deadline"))


def _isolate_from_aws() -> None:
    """Dummy credentials and an unroutable endpoint: nothing may reach AWS."""
    dummies = {
        "AWS_ACCESS_KEY_ID": "AKIDATTACHEBENCHDUMMY",
        "AWS_SECRET_ACCESS_KEY": "attache-bench-dummy-secret",
        "AWS_SESSION_TOKEN": "attache-bench-dummy-token",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_REGION": "us-west-2",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in dummies.items():
        os.environ[k] = v
    os.environ.pop("AWS_PROFILE", None)
    # Keep the client's own config/telemetry away from the user's ~/.deadline.
    os.environ.setdefault(
        "DEADLINE_CONFIG_FILE_PATH", os.path.join(tempfile.gettempdir(), "attache-bench-deadline-config")
    )


def _ensure_deadline_importable() -> None:
    import importlib

    try:
        importlib.import_module("deadline.job_attachments.upload")
    except ImportError:
        if os.environ.get("ATTACHE_OFFICIAL_HASH_REEXEC"):
            raise
        venv_sh = REPO / "scripted_tests" / "lib" / "deadline_venv.sh"
        py = subprocess.run(
            ["bash", str(venv_sh)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip().splitlines()[-1]
        os.environ["ATTACHE_OFFICIAL_HASH_REEXEC"] = "1"
        os.execv(py, [py, str(Path(__file__).resolve()), *sys.argv[1:]])


def official_hash(root: str, cache_dir: str, manifest_out: str | None = None) -> dict:
    """Hash ROOT with the official client; return the summary dict (and manifest bytes)."""
    import xxhash

    from deadline.job_attachments.upload import S3AssetManager

    root = os.path.normpath(os.path.abspath(root))
    asset_manager = S3AssetManager()  # builds an S3 client object; makes no calls

    t0 = time.perf_counter()
    # 1. Walk, as the submitter expands an input directory.
    files: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        files.extend(os.path.normpath(os.path.join(dirpath, f)) for f in filenames)
    t1 = time.perf_counter()
    # 2. Group into asset roots (stats every input).
    upload_group = asset_manager.prepare_paths_for_upload(
        input_paths=sorted(files), output_paths=[root], referenced_paths=[]
    )
    t2 = time.perf_counter()
    # 3. Hash through the hash cache in cache_dir.
    summary, manifests = asset_manager.hash_assets_and_create_manifest(
        asset_groups=upload_group.asset_groups,
        total_input_files=upload_group.total_input_files,
        total_input_bytes=upload_group.total_input_bytes,
        hash_cache_dir=cache_dir,
        on_preparing_to_submit=lambda _m: True,
    )
    t3 = time.perf_counter()
    # 4. Canonical manifest bytes, exactly what upload_assets would PUT.
    if len(manifests) != 1 or manifests[0].asset_manifest is None:
        raise SystemExit(f"official_hash: expected one asset root with inputs, got {manifests!r}")
    if manifests[0].root_path != root:
        raise SystemExit(f"official_hash: asset root is {manifests[0].root_path!r}, expected {root!r}")
    manifest = manifests[0].asset_manifest
    manifest_bytes = manifest.encode().encode("utf-8")
    t4 = time.perf_counter()

    if manifest_out:
        with open(manifest_out, "wb") as f:
            f.write(manifest_bytes)

    seconds = t4 - t0
    nbytes = int(manifest.totalSize)
    nfiles = len(manifest.paths)
    return {
        "root": root,
        "files": nfiles,
        "bytes": nbytes,
        "seconds": seconds,
        "walk_seconds": t1 - t0,
        "group_seconds": t2 - t1,
        "hash_seconds": t3 - t2,
        "encode_seconds": t4 - t3,
        "hashed_files": summary.processed_files,
        "hashed_bytes": summary.processed_bytes,
        "cached_files": summary.skipped_files,
        "cached_bytes": summary.skipped_bytes,
        "gib_per_s": (nbytes / 2**30) / seconds if seconds > 0 else None,
        "files_per_s": nfiles / seconds if seconds > 0 else None,
        "manifest_hash": xxhash.xxh3_128_hexdigest(manifest_bytes),
        "manifest": manifest_out,
        "_manifest_bytes": manifest_bytes,
        "_hash_cache_db": os.path.join(cache_dir, "hash_cache.db"),
    }


def _fixture_content(f: dict) -> bytes:
    if "content_base64" in f:
        return base64.b64decode(f["content_base64"])
    # Large fixture files are described as e.g. "b'x' * 70000".
    m = re.fullmatch(r"""b(['"])(.+?)\1 \* (\d+)""", f.get("content_spec", ""))
    if not m:
        raise SystemExit(f"official_hash: cannot build fixture content for {f.get('path')!r}")
    data = m.group(2).encode("latin-1").decode("unicode_escape").encode("latin-1") * int(m.group(3))
    if len(data) != f["size"]:
        raise SystemExit(f"official_hash: fixture content for {f['path']!r} has wrong size")
    return data


def _recreate_tree(tree_json: Path, dest: Path) -> None:
    tree = json.loads(tree_json.read_text())
    for f in tree["files"]:
        # name_utf8_hex gives the exact bytes of the relative path (may not be UTF-8).
        rel = os.fsdecode(bytes.fromhex(f["name_utf8_hex"])) if "name_utf8_hex" in f else f["path"]
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_fixture_content(f))
        os.utime(p, ns=(f["mtime_ns"], f["mtime_ns"]))


def self_test() -> int:
    """Recreate each fixture tree, hash it with the official client, compare manifest bytes.

    Fixture `tiny` is required; `edge` (sort order, astral/fullwidth names, duplicate content)
    is checked too when present. Each case runs cold (fresh hash cache) and warm (same cache).
    """
    import xxhash

    cases = ["tiny"] + [c for c in ("edge",) if (FIXTURES / c / "tree.json").exists()]
    passed = failed = 0

    def check(ok: bool, what: str) -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", file=sys.stderr)

    for case in cases:
        d = FIXTURES / case
        expected = (d / "manifest.json").read_bytes()
        tree = json.loads((d / "tree.json").read_text())
        n = len(tree["files"])
        print(f"self-test {case}: {d}", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f"attache-official-selftest-{case}-"))
        try:
            root = tmp / "root"
            root.mkdir()
            _recreate_tree(d / "tree.json", root)
            cache = tmp / "cache"
            cold = official_hash(str(root), str(cache))
            warm = official_hash(str(root), str(cache))
            for name, r in (("cold", cold), ("warm", warm)):
                same = r["_manifest_bytes"] == expected
                check(same, f"{name} cache: manifest ({len(r['_manifest_bytes'])} bytes) "
                            f"byte-identical to {case}/manifest.json")
                if not same:
                    print(f"       got:      {r['_manifest_bytes']!r}", file=sys.stderr)
                    print(f"       expected: {expected!r}", file=sys.stderr)
            check(os.path.isfile(cold["_hash_cache_db"]),
                  f"hash cache written to --cache-dir ({cold['_hash_cache_db']})")
            check(cold["hashed_files"] == n and cold["cached_files"] == 0,
                  f"cold run hashed all {n} files (hashed={cold['hashed_files']}, cached={cold['cached_files']})")
            check(warm["cached_files"] == n and warm["hashed_files"] == 0,
                  f"warm run served all {n} files from the cache (hashed={warm['hashed_files']}, cached={warm['cached_files']})")
            check(cold["files"] == n and cold["bytes"] == sum(f["size"] for f in tree["files"]),
                  f"files/bytes reported ({cold['files']}, {cold['bytes']})")
            # Manifest object name = xxh128(root path string) + "_input" (fixture's own root).
            keyhash = xxhash.xxh3_128_hexdigest(tree["root_path"].encode())
            manifest_key = tree.get("s3", {}).get("manifest_key", "")
            if manifest_key:
                check(manifest_key.endswith(f"/{keyhash}_input"),
                      f"xxh128(root_path) = {keyhash} names the manifest object")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", help="directory to hash (the asset root)")
    ap.add_argument("--cache-dir", help="directory for the client's SQLite hash cache (hash_cache.db)")
    ap.add_argument("-o", "--manifest", help="write the canonical manifest bytes here")
    ap.add_argument("--self-test", action="store_true", help="check against shared fixtures")
    args = ap.parse_args()

    _isolate_from_aws()
    _ensure_deadline_importable()
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    if args.self_test:
        return self_test()
    if not args.root or not args.cache_dir:
        ap.error("ROOT and --cache-dir are required (or --self-test)")
    if not os.path.isdir(args.root):
        ap.error(f"not a directory: {args.root}")
    r = official_hash(args.root, args.cache_dir, args.manifest)
    out = {k: v for k, v in r.items() if not k.startswith("_")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
