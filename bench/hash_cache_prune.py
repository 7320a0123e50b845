#!/usr/bin/env python3
"""A render worker's hash cache after many sessions: what forgetting the removed sessions
costs a `sync-inputs`, and what a whole pass (`attache cache trim`) costs.

    bench/hash_cache_prune.py ATTACHE_BIN [--sessions 20] [--files 50000] [--kept 2]

The cache is built directly in SQLite (the schema of src/hash/cache.rs): SESSIONS session
directories of FILES rows each, as sync-inputs records them (`…/sessions/sN/assetroot-x/dDDD/fFFFF`),
of which the last KEPT still exist on disk (their directories made); the others were removed,
as the worker agent removes a finished session. Then, each timed:

  1. `sync-inputs` into a new session (an outputs-only job: no download, so its time is the
     pruning's and the process's): the first run catches up with every removed session;
  2. one more session removed, another sync-inputs: the steady state of a worker;
  3. nothing removed, another sync-inputs: the cost when there is nothing to forget;
  4. the same without the hash cache (`cache.hash_cache = false`): the process alone;
  5. `attache cache trim` over what is left (every directory there: a read-only pass).

Local files only (a file:// store in a temp dir); stops by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_cache(db: Path, sessions: Path, n_sessions: int, n_files: int, kept: int) -> None:
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(
        """CREATE TABLE IF NOT EXISTS hashes (
             path BLOB PRIMARY KEY,
             dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
             mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
             hash BLOB NOT NULL, check_ INTEGER NOT NULL, hashed_at INTEGER NOT NULL
           ) WITHOUT ROWID;"""
    )
    per_dir = 1000
    for s in range(n_sessions):
        root = sessions / f"s{s:03}" / "assetroot-x"
        rows = []
        for f in range(n_files):
            d = root / f"d{f // per_dir:03}"
            rows.append((os.fsencode(d / f"f{f % per_dir:04}.exr"), 1, 2, 3, 4, 5, b"\0" * 16, 0, 0))
            if s >= n_sessions - kept and f % per_dir == 0:
                d.mkdir(parents=True, exist_ok=True)
        con.executemany("INSERT INTO hashes VALUES (?,?,?,?,?,?,?,?,?)", rows)
        con.commit()
    con.close()


def rows(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM hashes").fetchone()[0]
    finally:
        con.close()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    said = [l for l in p.stderr.splitlines() if "hash cache:" in l] + [
        l for l in p.stdout.splitlines() if "hash cache:" in l
    ]
    return took, said[0].split("hash cache: ", 1)[1] if said else "nothing said"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--kept", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="attache-prune-") as d:
        d = Path(d)
        cache, sessions = d / "cache", d / "sessions"
        cache.mkdir()
        db = cache / "hash-cache-v1.sqlite3"
        t = time.perf_counter()
        build_cache(db, sessions, a.sessions, a.files, a.kept)
        print(f"cache: {rows(db)} rows in {a.sessions} sessions of {a.files} files, "
              f"{a.kept} of them still there, {db.stat().st_size / 2**20:.0f} MiB "
              f"(built in {time.perf_counter() - t:.1f} s)")
        att = d / "attachments.json"
        att.write_text(json.dumps({
            "manifests": [{"rootPath": "/proj", "rootPathFormat": "posix",
                           "outputRelativeDirectories": ["out"]}],
            "fileSystem": "COPIED",
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHE_")}
        env.update({"ATTACHE_CACHE__DIR": str(cache), "ATTACHE_STORE__URL": f"file://{d}/store",
                    "XDG_CONFIG_HOME": str(d / "no-config")})

        def sync(name: str, extra_env: dict[str, str] | None = None) -> None:
            cmd = [a.binary, "sync-inputs", "--attachments", str(att), "--session-dir",
                   str(sessions / name), "-o", str(d / "rules.json")]
            took, said = timed(cmd, {**env, **(extra_env or {})})
            print(f"  sync-inputs into {name}: {took:.3f} s, {rows(db)} rows left; {said}")

        print("1. the first sync after the removals:")
        sync("new-1")
        print("2. one more session removed (the steady state):")
        victim = sorted(p for p in sessions.iterdir() if p.name.startswith("s"))[0]
        subprocess.run(["rm", "-rf", str(victim)], check=True)
        sync("new-2")
        print("3. nothing removed:")
        sync("new-3")
        print("4. without the hash cache:")
        sync("new-4", {"ATTACHE_CACHE__HASH_CACHE": "false"})
        print("5. attache cache trim, every directory there:")
        took, said = timed([a.binary, "cache", "trim"], env)
        print(f"  {took:.3f} s; {said}")


if __name__ == "__main__":
    main()
