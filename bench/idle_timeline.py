#!/usr/bin/env python3
"""Runs a command and reports how busy the whole machine was while it ran.

    bench/idle_timeline.py CMD [ARG...]

Samples /proc/stat every 5 ms. Prints to stderr the wall time, the machine's idle
core-seconds (iowait counted as idle, and also shown alone) out of its total, and a
timeline of busy cores per 50 ms bucket, as `start:busy`. /proc/stat counts in
clock ticks (10 ms here), so a bucket's figure is coarse. The sum is what matters.

Use it around a transfer while a local S3 server shares the machine's cores. Idle time
is capacity that neither the client nor the server used. A transfer can only finish
sooner by using that idle time, or by spending less CPU.
"""
import os
import subprocess
import sys
import time

BUCKET_S = 0.05


def cpu_ticks() -> tuple[int, int, int]:
    """(all ticks, idle + iowait ticks, iowait ticks), summed over every core."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return sum(v[:8]), v[3] + v[4], v[4]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    samples = [(0.0, cpu_ticks())]
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        time.sleep(0.005)
        samples.append((time.monotonic() - t0, cpu_ticks()))
    wall = time.monotonic() - t0
    samples.append((wall, cpu_ticks()))

    timeline = []
    start_t, start = samples[0]
    for t, s in samples[1:]:
        if t - start_t >= BUCKET_S or t == wall:
            total, idle = s[0] - start[0], s[1] - start[1]
            busy = (total - idle) / max(total, 1) * cores
            timeline.append(f"{start_t:.2f}:{busy:.1f}")
            start_t, start = t, s
    first, last = samples[0][1], samples[-1][1]
    total, idle, iowait = (last[i] - first[i] for i in range(3))
    print(f"wall {wall:.3f} s, idle core-seconds {idle / hz:.2f} (iowait {iowait / hz:.2f}) "
          f"of {total / hz:.2f}", file=sys.stderr)
    print(" ".join(timeline), file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
