#!/usr/bin/env python3
"""Deterministic benchmark trees: same arguments, same bytes, names and mtimes, every time.

    gen_tree.py DEST --count 50000 --min-size 1KiB --max-size 64KiB --seed 1
    gen_tree.py DEST --single 2GiB --seed 1            # one file DEST/big.bin

Layout of a many-file tree: DEST/dNN/dNN/.../fNNNNNNN.bin, `--depth` directory levels of
`--fanout` directories each; files are dealt round-robin over the leaf directories. File i's
size is drawn uniformly from [min, max] by random.Random(seed); its content is a 16-byte
header (seed, index) followed by a slice of a 64 MiB pseudo-random pool (also from the seed)
at a seeded offset, so every file's content is distinct and incompressible, and generation
is bounded by write speed (about 1 s per GiB here) rather than by the random generator.
mtimes are fixed: --mtime + i seconds (so manifests are reproducible byte for byte).

Idempotent: a stamp `DEST.gen.json` beside DEST (or `--stamp PATH`) records the arguments; a second run with the
same arguments returns at once (use --force to regenerate). Prints a JSON summary on stdout.
Sizes accept plain bytes or KiB/MiB/GiB (also K/M/G = powers of 1024).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

POOL_SIZE = 64 << 20
BLOCK = 1 << 20
HEADER = 16


def parse_size(s: str) -> int:
    s = s.strip()
    units = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
             "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):].upper()
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (use e.g. 4096, 64KiB, 2GiB)")
    return int(float(num) * units[unit])


def make_pool(seed: int) -> bytes:
    rng = random.Random(f"attache-bench-pool-{seed}")
    # randbytes in 1 MiB pieces (one huge call overflows); ~0.25 s for 64 MiB.
    return b"".join(rng.randbytes(BLOCK) for _ in range(POOL_SIZE // BLOCK))


def header(seed: int, index: int) -> bytes:
    return seed.to_bytes(8, "little", signed=False) + index.to_bytes(8, "little")


def gen_single(dest: str, size: int, seed: int, mtime: int) -> dict:
    os.makedirs(dest, exist_ok=True)
    pool = make_pool(seed)
    rng = random.Random(f"attache-bench-single-{seed}")
    path = os.path.join(dest, "big.bin")
    with open(path, "wb", buffering=0) as f:
        left, block = size, 0
        while left > 0:
            n = min(BLOCK, left)
            off = rng.randrange(0, POOL_SIZE - BLOCK)
            data = header(seed, block) + pool[off + HEADER: off + n] if n > HEADER else pool[off: off + n]
            f.write(data[:n])
            left -= n
            block += 1
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return {"files": 1, "bytes": size}


def leaf_dirs(depth: int, fanout: int) -> list[str]:
    dirs = [""]
    for _ in range(depth):
        dirs = [os.path.join(d, f"d{i:02d}") for d in dirs for i in range(fanout)]
    return dirs


def gen_many(dest: str, count: int, lo: int, hi: int, seed: int, mtime: int,
             depth: int, fanout: int) -> dict:
    pool = make_pool(seed)
    rng = random.Random(f"attache-bench-tree-{seed}")
    leaves = leaf_dirs(depth, fanout)
    for d in leaves:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    total = 0
    for i in range(count):
        size = rng.randint(lo, hi)
        off = rng.randrange(0, POOL_SIZE - size)
        rel = os.path.join(leaves[i % len(leaves)], f"f{i:07d}.bin")
        path = os.path.join(dest, rel)
        if size >= HEADER:
            data = header(seed, i) + pool[off + HEADER: off + size]
        else:
            data = header(seed, i)[:size]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        t = (mtime + i) * 10**9
        os.utime(path, ns=(t, t))
        total += size
    return {"files": count, "bytes": total, "dirs": len(leaves)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to create (its content is replaced)")
    ap.add_argument("--count", type=int, default=50000, help="number of files (default 50000)")
    ap.add_argument("--min-size", type=parse_size, default=parse_size("1KiB"))
    ap.add_argument("--max-size", type=parse_size, default=parse_size("64KiB"))
    ap.add_argument("--single", type=parse_size, metavar="SIZE",
                    help="instead: one file DEST/big.bin of SIZE bytes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--depth", type=int, default=2, help="directory levels (default 2)")
    ap.add_argument("--fanout", type=int, default=16, help="directories per level (default 16)")
    ap.add_argument("--mtime", type=int, default=1_700_000_000,
                    help="mtime of file 0 in epoch seconds; file i gets +i (default 1700000000)")
    ap.add_argument("--force", action="store_true", help="regenerate even if the stamp matches")
    ap.add_argument("--stamp", metavar="PATH",
                    help="where the stamp goes (default DEST.gen.json; move it out of a tree that "
                         "DEST is part of)")
    args = ap.parse_args()

    if args.min_size > args.max_size:
        ap.error("--min-size is larger than --max-size")
    if args.max_size > POOL_SIZE - BLOCK:
        ap.error(f"--max-size is limited to {POOL_SIZE - BLOCK} bytes; use --single for big files")
    if args.seed < 0:
        ap.error("--seed must be >= 0")

    dest = os.path.abspath(args.dest)
    stamp = os.path.abspath(args.stamp) if args.stamp else dest.rstrip("/") + ".gen.json"
    params = {"generator": "attache-bench-gen-tree/1", "seed": args.seed, "mtime": args.mtime}
    if args.single is not None:
        params.update(kind="single", size=args.single)
    else:
        params.update(kind="many", count=args.count, min_size=args.min_size,
                      max_size=args.max_size, depth=args.depth, fanout=args.fanout)

    if not args.force and os.path.isdir(dest) and os.path.isfile(stamp):
        try:
            with open(stamp) as f:
                old = json.load(f)
            if old.get("params") == params:
                print(json.dumps({**old["result"], "dest": dest, "generated": False,
                                  "seconds": 0.0}))
                return 0
        except (OSError, ValueError, KeyError):
            pass

    t0 = time.perf_counter()
    if os.path.exists(stamp):
        os.remove(stamp)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    if args.single is not None:
        result = gen_single(dest, args.single, args.seed, args.mtime)
    else:
        result = gen_many(dest, args.count, args.min_size, args.max_size, args.seed,
                          args.mtime, args.depth, args.fanout)
    secs = time.perf_counter() - t0
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as f:
        json.dump({"params": params, "result": result}, f)
    print(json.dumps({**result, "dest": dest, "generated": True, "seconds": round(secs, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
