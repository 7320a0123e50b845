#!/usr/bin/env python3
"""Peak RSS of `attache sync-inputs` and `attache get` of an N-entry manifest (default 1,000,000).

  cargo build --release && bench/sync_memory.py [N] [--cancel | --api]

--cancel: instead of memory, how long attache takes to exit after Ctrl-C (SIGINT) at points
of that sync: `sync-inputs` at 0.3, 0.8 and 1.5 s (fetch, decode, plan, copies);
`sync-outputs` of that session at 0.2, 0.6 and 1.5 s (reading sync-inputs' record, scanning
the tree); `get` into the materialized tree with an empty hash cache at 4 s (the plan
re-reading files in place). Goal: within 1 s.

--api: how the daemon's API answers while it runs that sync: `attache daemon` on a temporary
socket, the sync submitted as a job, and one client asking for the job's status every 20 ms
(a new connection each time) until the job ends; prints the job's wall time and the latency
of those requests (p50, p99, max). With one runtime worker (2 vCPUs), anything heavy on it
stalls every request.

The manifest (31-byte paths over 300 small objects, like upload_scale_test's) is put in a
file:// store on /dev/shm with its attachments JSON; both commands materialize it on tmpfs
under GNU time (%M). Goal: peak RSS <= 64 MiB + 200 B x N. `sync-inputs` is then run again
into the same session (the next task's sync: every input in place), and `sync-outputs` of
that session with the whole root as its output directory: once with no output (every file
as placed), once after the task wrote one new file. Env: ATTACHE_BIN.
"""
import json, os, subprocess, sys, shutil, hashlib
CANCEL = "--cancel" in sys.argv
API = "--api" in sys.argv
args = [a for a in sys.argv[1:] if a not in ("--cancel", "--api")]
N = int(args[0]) if args else 1_000_000
A = os.environ.get("ATTACHE_BIN", str(__import__("pathlib").Path(__file__).resolve().parent.parent / "target/release/attache"))
W = "/dev/shm/attache-sync-memory"
shutil.rmtree(W, ignore_errors=True)
os.makedirs(f"{W}/src")
for i in range(300):
    with open(f"{W}/src/o{i}", "wb") as f:
        f.write(os.urandom(1 + i * 13))
env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHE_")}
store = f"file://{W}/store"
subprocess.run([A, "put", "--store", store, "--cache-dir", f"{W}/c0", "-o", f"{W}/src.manifest", f"{W}/src"],
               check=True, env=env, stdout=subprocess.DEVNULL)
src = json.load(open(f"{W}/src.manifest"))["paths"]
paths = []
for i in range(N):
    e = src[i % len(src)]
    paths.append({"hash": e["hash"], "mtime": 1700000000000000, "path": f"shot{i // 100000:02d}/seq{(i // 1000) % 100:03d}/frame_{i:07d}.exr", "size": e["size"]})
paths.sort(key=lambda p: p["path"])
m = {"hashAlg": "xxh128", "manifestVersion": "2023-03-03", "paths": paths, "totalSize": sum(p["size"] for p in paths)}
data = json.dumps(m, separators=(",", ":")).encode()
rel = "farm-1/queue-1/Inputs/abc/def_input"
os.makedirs(os.path.dirname(f"{W}/store/Manifests/{rel}"), exist_ok=True)
open(f"{W}/store/Manifests/{rel}", "wb").write(data)
# the manifest's own hash (xxh128 of its bytes), from attache's hash of that one file
mh = subprocess.run([A, "hash", "--no-cache", f"{W}/store/Manifests/farm-1/queue-1/Inputs/abc"], env=env, capture_output=True, text=True).stdout
mhash = json.loads(mh)["paths"][0]["hash"]
att = {"manifests": [{"rootPath": "/proj", "rootPathFormat": "posix", "inputManifestPath": rel, "inputManifestHash": mhash, "outputRelativeDirectories": ["."]}], "fileSystem": "COPIED"}
json.dump(att, open(f"{W}/att.json", "w"))
print(f"manifest {len(data)/2**20:.0f} MiB, {N} entries; limit {(64*2**20 + 200*N)/2**20:.0f} MiB")
SYNC = [A, "sync-inputs", "--store", store, "--cache-dir", f"{W}/c1", "--attachments", f"{W}/att.json", "--session-dir", f"{W}/sess", "-o", "/dev/null"]
GET = [A, "get", "--store", store, "--cache-dir", f"{W}/c2", "--dest", f"{W}/out", f"{W}/big.manifest"]
OUTPUTS = [A, "sync-outputs", "--store", store, "--cache-dir", f"{W}/c1", "--attachments", f"{W}/att.json", "--session-dir", f"{W}/sess", "-o", "/dev/null",
           "--farm-id", "farm-1", "--queue-id", "queue-1", "--job-id", "job-1", "--step-id", "step-1", "--task-id", "task-1", "--session-action-id", "sessionaction-1"]
def measure(name, args):
    r = subprocess.run(["/usr/bin/time", "-f", "%M %e %U %S", *args], env=env, capture_output=True, text=True)
    line = r.stderr.strip().splitlines()[-1]
    kb, e, u, s = line.split()
    print(f"{name}: rc {r.returncode}, peak RSS {int(kb)/1024:.0f} MiB, wall {e} s, cpu {float(u)+float(s):.1f} s")
    if r.returncode: print(r.stderr[-2000:])
def cancel_at(name, args, at):
    import signal, time
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(at)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.wait()
    took = time.monotonic() - t0
    print(f"{name}: Ctrl-C at {at} s -> exit {p.returncode} after {took:.3f} s{'' if took <= 1 else '  OVER 1 s'}")
def api_latency():
    import time
    cfg = f"{W}/daemon.toml"
    open(cfg, "w").write(f'[store]\nurl = "{store}"\n[cache]\ndir = "{W}/c3"\n'
                         f'[daemon]\nsocket = "{W}/run/attache.sock"\nstate_dir = "{W}/state"\n')
    denv = dict(env, XDG_CONFIG_HOME=f"{W}/no-config")
    d = subprocess.Popen([A, "--config", cfg, "daemon"], env=denv, stderr=open(f"{W}/daemon.log", "w"))
    sock = f"{W}/run/attache.sock"
    from daemon_api import request, wait_ready
    req = lambda method, path, body=b"": json.loads(request(sock, method, path, body))
    wait_ready(sock)
    job = json.dumps({"kind": "sync_inputs", "attachments": f"{W}/att.json", "session_dir": f"{W}/sess-api"}).encode()
    t0 = time.monotonic()
    jid = req("POST", "/v1/jobs", job)["id"]
    lat, state = [], "queued"
    while state in ("queued", "running") and time.monotonic() - t0 < 600:
        s0 = time.monotonic()
        state = req("GET", f"/v1/jobs/{jid}")["state"]
        lat.append(time.monotonic() - s0)
        time.sleep(0.02)
    wall = time.monotonic() - t0
    d.terminate()
    d.wait()
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
    print(f"daemon sync_inputs job: {state} in {wall:.1f} s; {len(lat)} status requests: "
          f"p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1] * 1000:.0f} ms")
if API:
    api_latency()
    shutil.rmtree(W, ignore_errors=True)
    sys.exit(0)
if CANCEL:
    for at in (0.3, 0.8, 1.5):
        shutil.rmtree(f"{W}/sess", ignore_errors=True)
        shutil.rmtree(f"{W}/c1", ignore_errors=True)
        cancel_at("sync-inputs", SYNC, at)
    # sync-outputs over the whole materialized tree: reading sync-inputs' record of a million
    # entries, then scanning a million files against it.
    subprocess.run(SYNC, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for at in (0.2, 0.6, 1.5):
        cancel_at("sync-outputs", OUTPUTS, at)
    subprocess.run(["cp", f"{W}/store/Manifests/{rel}", f"{W}/big.manifest"])
    subprocess.run(GET, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(f"{W}/c2")
    cancel_at("get, files in place, empty hash cache", GET, 4.0)
    shutil.rmtree(W, ignore_errors=True)
    sys.exit(0)
measure("sync-inputs", SYNC)
# The next task's sync: every input already in place, known to the hash cache from the download.
measure("sync-inputs again", SYNC)
measure("sync-outputs, no output", OUTPUTS)
root = next(d for d in os.listdir(f"{W}/sess") if d.startswith("assetroot-"))
open(f"{W}/sess/{root}/shot00/new_output.exr", "wb").write(b"x" * 1000)
measure("sync-outputs, one new file", OUTPUTS)
shutil.rmtree(f"{W}/sess", ignore_errors=True)
subprocess.run(["cp", f"{W}/store/Manifests/{rel}", f"{W}/big.manifest"])
measure("get", GET)
shutil.rmtree(W, ignore_errors=True)
