"""The cancel test driver shared by download_cancel_test and upload_cancel_test.

Two scenarios: `files` (many small files: 5,000 of 0-256 KiB; quick 1,000) and `big` (one file
transferred in multipart: 4 GiB; quick 512 MiB). For each, an uncancelled baseline run gives the
transfer time T; then every mode cancels at seeded random points, drawn in turn over the bytes
and over the time: the first (and third) when the server has seen a fraction in [3%, 97%] of
the tree's bytes, the second at a point in [3%, 97%] of T. Points over the bytes fall while
data flows, where a killed put leaves parts to resume and a cancelled get leaves parts to keep;
points over the time also fall in a transfer's last phase (s3s-fs spends about half of a 4 GiB
upload in CompleteMultipartUpload, reading and copying every part again):

  cli-sigint      `attache get` / `attache put`, SIGINT (Ctrl-C) to the process
  cli-sigterm     the same, SIGTERM
  cli-sigkill     the same, SIGKILL (kill -9, the OOM killer: no chance to clean up). A put
                  killed so keeps its multipart upload open by design: the same put run again
                  with the same cache dir must resume it and leave nothing open
  daemon-api      a fresh `attache daemon`, a sync_inputs / submit job, DELETE /v1/jobs/ID
  daemon-sigterm  a fresh daemon, a job, SIGTERM to the daemon (must exit 0)
  official        the official client (official.py download / upload), SIGINT; figures only

After each cancel: time to exit (CLI, daemon) or to the `cancelled` state (API), time to idle
(that, and the S3 server seeing no request traffic for 300 ms), then the leftovers: temp files
(`.attache-*`), partial or corrupt files in the destination, objects in the store that are not
exactly their source file, open multipart uploads and part files on the server, input manifests
published by a cancelled submit. attache waits at most 0.5 s for the store to confirm an abort
after a cancel; an upload still open then must be recorded in the run's cache dir
(open-uploads/) and aborted by the next put to the store, which the test runs and counts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

from xfer import (GiB, IDLE_GOAL_S, MiB, Daemon, Run, S3Server, TrafficWatch, attache_env,
                  check_dest, check_store, deadline_python, dest_problems, exit_desc, fmt_bytes,
                  fmt_s, hash_index, log, make_big_file, make_tree, maximum, median,
                  read_manifest, rmtree)

FARM, QUEUE = "farm-1", "queue-1"
MODES = ["cli-sigint", "cli-sigterm", "cli-sigkill", "daemon-api", "daemon-sigterm"]
# What a mode's cancel points are drawn over, in turn (see the module's doc).
OVER = ["bytes", "time"]
EXIT_TIMEOUT = 30.0
OFFICIAL_EXIT_TIMEOUT = 90.0


def sizes(quick: bool) -> dict:
    if quick:
        return {"files": 1000, "file_max": 256 * 1024, "big": 512 * MiB, "points": 2,
                "official_points": 1}
    return {"files": 5000, "file_max": 256 * 1024, "big": 4 * GiB, "points": 3,
            "official_points": 2}


class CancelTest:
    def __init__(self, direction: str, work, report, args):
        assert direction in ("download", "upload")
        self.dir = direction
        self.work = work
        self.report = report
        self.args = args
        self.cfg = sizes(args.quick)
        self.seed = args.seed
        self.rows: list[list] = []
        self.results: list[dict] = []
        self.base_rows: list[list] = []
        self.n = 0

    # ------------------------------------------------------------------ helpers

    def attache(self, *argv, cache=None):
        cache = cache or self.work.fresh("cache")
        return [self.work.attache, "--config", self.work.empty_config, "--cache-dir", cache, *argv]

    def new_server(self, tag: str) -> S3Server:
        root = self.work.fresh(f"s3-{tag}-")
        return S3Server(self.work, root).start()

    def setup(self) -> None:
        w, cfg = self.work, self.cfg
        self.src = {}
        log(f"making trees: {cfg['files']} files of 0-{cfg['file_max'] // 1024} KiB, "
            f"one {fmt_bytes(cfg['big'])} file (seed {self.seed})")
        t = time.monotonic()
        root = w.path("src/files")
        idx = make_tree(root, cfg["files"], self.seed, 0, cfg["file_max"], per_dir=50, fanout=10)
        self.src["files"] = (root, idx)
        root = w.path("src/big")
        make_big_file(root / "big.bin", cfg["big"], self.seed)
        self.src["big"] = (root, {"big.bin": cfg["big"]})
        log(f"trees made in {time.monotonic() - t:.1f} s")
        self.manifest, self.by_hash, self.attachments = {}, {}, {}
        if self.dir == "download":
            self.server = self.new_server("dl")
        for scn, (root, _idx) in self.src.items():
            man = w.path(f"{scn}.manifest")
            if self.dir == "download":
                # submit (uploads and publishes, for sync_inputs and the official worker code),
                # then put with the same cache for the manifest `get` reads (no request).
                cache = w.fresh("cache")
                att = w.path(f"{scn}.attachments.json")
                self._must(Run(self.attache("submit", root, "--farm-id", FARM, "--queue-id", QUEUE,
                                            "--store", self.server.store_url("r"), "-o", att,
                                            cache=cache),
                               env=attache_env(self.server), log_path=w.logs / f"setup-{scn}.log",
                               work=w), f"setup: submit {scn}")
                self._must(Run(self.attache("put", root, "--store", self.server.store_url("r"),
                                            "-o", man, cache=cache),
                               env=attache_env(self.server), log_path=w.logs / f"setup-{scn}.log",
                               work=w), f"setup: put {scn}")
                self.attachments[scn] = att
            else:
                self._must(Run(self.attache("hash", root, "-o", man), env=attache_env(None),
                               log_path=w.logs / f"setup-{scn}.log", work=w), f"setup: hash {scn}")
            self.manifest[scn] = man
            self.by_hash[scn] = hash_index(read_manifest(man))
        self.official_py = None
        if not self.args.no_official:
            self.official_py = deadline_python()
            if not self.official_py:
                self.report.note("official client venv unavailable: official runs skipped")

    def _must(self, run: Run, what: str, timeout: float = 900) -> Run:
        if not run.wait(timeout):
            run.kill()
        if run.rc != 0:
            raise SystemExit(f"{what}: {exit_desc(run.rc)}: {run.log_tail()}")
        return run

    # ------------------------------------------------------------------ one transfer

    def start(self, scn: str, mode: str, server: S3Server, prefix: str, tag: str) -> dict:
        """Starts one transfer; returns a handle dict (kind cli|daemon|official)."""
        w = self.work
        root, _ = self.src[scn]
        h = {"scn": scn, "mode": mode, "prefix": prefix, "tag": tag}
        logf = w.logs / f"{tag}.log"
        if mode.startswith("daemon"):
            d = Daemon(w, server, w.fresh("daemon"), tag=f"{tag}-daemon")
            h["daemon"] = d
            h["cache"] = d.dir / "cache"
            if self.dir == "download":
                h["dest"] = w.fresh("session")
                spec = {"kind": "sync_inputs", "attachments": str(self.attachments[scn]),
                        "session_dir": str(h["dest"]), "store": server.store_url(prefix)}
            else:
                spec = {"kind": "submit", "inputs": [str(root)], "farm_id": FARM,
                        "queue_id": QUEUE, "store": server.store_url(prefix)}
            h["t_start"] = time.monotonic()
            h["job"] = d.submit_job(spec)
            h["kind"] = "daemon"
        elif mode == "official":
            h["kind"] = "official"
            off = [self.official_py, str(Path(__file__).resolve().parent / "official.py")]
            if self.dir == "download":
                h["dest"] = w.fresh("session")
                argv = off + ["download", "--bucket", server.bucket, "--root-prefix", prefix,
                              "--farm-id", FARM, "--queue-id", QUEUE, "--attachments",
                              self.attachments[scn], "--dest", h["dest"]]
            else:
                argv = off + ["upload", "--bucket", server.bucket, "--root-prefix", prefix,
                              "--farm-id", FARM, "--queue-id", QUEUE, root,
                              "-o", w.fresh("official-att")]
            env = server.aws_env()
            env["TMPDIR"] = str(w.path("tmp"))  # its temp dir, left behind when it is killed
            Path(env["TMPDIR"]).mkdir(exist_ok=True)
            h["run"] = Run(argv, env=env, log_path=logf, work=w)
            h["t_start"] = h["run"].t_start
        else:
            h["kind"] = "cli"
            h["cache"] = w.fresh("cache")
            if self.dir == "download":
                h["dest"] = w.fresh("dest")
                argv = self.attache("get", self.manifest[scn], "--dest", h["dest"],
                                    "--store", server.store_url(prefix), cache=h["cache"])
            else:
                argv = self.attache("put", root, "--store", server.store_url(prefix),
                                    "-o", w.fresh("out.manifest"), cache=h["cache"])
            h["run"] = Run(argv, env=attache_env(server), log_path=logf, work=w)
            h["t_start"] = h["run"].t_start
        return h

    def finished(self, h: dict) -> bool:
        if h["kind"] == "daemon":
            return h["daemon"].job(h["job"])["state"] not in ("queued", "running")
        return not h["run"].running()

    def wait_done(self, h: dict, timeout: float) -> dict:
        """Waits for the transfer to end on its own; returns outcome fields."""
        if h["kind"] == "daemon":
            rec = h["daemon"].wait_job(h["job"], timeout=timeout, interval=0.05)
            return {"ok": rec["state"] == "succeeded", "status": rec["state"],
                    "error": rec.get("error")}
        r = h["run"]
        if not r.wait(timeout):
            r.kill()
        return {"ok": r.rc == 0, "status": exit_desc(r.rc), "error": r.log_tail()}

    def cleanup_handle(self, h: dict) -> None:
        d = h.get("daemon")
        if d is not None and d.run.running():
            d.stop(15)

    # ------------------------------------------------------------------ checks

    def leftovers(self, h: dict, server: S3Server, expect_complete: bool) -> dict:
        scn = h["scn"]
        root, idx = self.src[scn]
        st = server.stats()
        out = {"open_mpu": st["open_multipart_uploads"], "mpu_parts": st["multipart_part_files"],
               "srv_tmp": server.server_tmp_files()}
        if self.dir == "download":
            res = check_dest(h["dest"], root, idx, expect_complete,
                             strip_assetroot=h["kind"] in ("daemon", "official"))
            out.update({"present": res["present"], "total": len(idx), "temp": len(res["temp"]),
                        "partial": len(res["partial"]), "unexpected": len(res["unexpected"]),
                        "missing": len(res["missing"]), "problems": dest_problems(res)})
            if h["kind"] == "official":
                # the official client's own temp names are "unexpected" files here
                out["temp"] += out.pop("unexpected")
                out["unexpected"] = 0
        else:
            res = check_store(server, h["prefix"], root, self.by_hash[scn])
            n_obj = len(self.by_hash[scn])
            out.update({"present": res["objects"], "total": n_obj, "bad": len(res["bad"]),
                        "unknown": len(res["unknown"]), "manifests": res["manifests"],
                        "problems": []})
            if res["bad"]:
                out["problems"].append(f"{len(res['bad'])} store object(s) not equal to their "
                                       f"source, e.g. {res['bad'][0]}")
            if res["unknown"]:
                out["problems"].append(f"{len(res['unknown'])} object(s) with no source hash, "
                                       f"e.g. {res['unknown'][0]}")
            if expect_complete and res["objects"] != n_obj:
                out["problems"].append(f"{n_obj - res['objects']} object(s) missing")
        ops = st.get("operations", {})
        out["aborts"] = ops.get("AbortMultipartUpload", 0)
        out["completes"] = ops.get("CompleteMultipartUpload", 0)
        out["orphans"] = 0
        out["next_run"] = 0
        if self.dir == "upload" and h["mode"] == "cli-sigkill":
            out.update(self.next_put_resumes(h, server, out))
        elif out["open_mpu"] and h.get("cache") and self.dir == "upload":
            d = h.get("daemon")
            if d is not None and d.run.running():
                out.update(self.daemon_finishes_abort(h, server, out))
            if out["open_mpu"]:
                out.update(self.next_run_aborts(h, server, out))
        if out["mpu_parts"] and not out["open_mpu"] and out["completes"] and \
                not self.args.strict_mpu:
            # s3s-fs deletes an upload's registration first, then assembles (and deletes) the
            # parts; a CompleteMultipartUpload dropped half-way (client gone) leaves the rest
            # of the parts with no upload to abort. AWS S3 finishes a Complete server-side.
            out["orphans"] = out["mpu_parts"]
        elif out["open_mpu"] or out["mpu_parts"]:
            out["problems"].append(f"{out['open_mpu']} open multipart upload(s), "
                                   f"{out['mpu_parts']} part file(s) on the server")
        return out

    def daemon_finishes_abort(self, h: dict, server: S3Server, out: dict) -> dict:
        """A daemon job's cancel waits 0.5 s for the store to confirm its abort; the daemon
        goes on with the abort meanwhile, holding the upload's record (a put run then leaves it
        alone, as one in progress). Waits up to 10 s for the daemon to finish it; else stops the
        daemon (its record, marked given up, is then the next put's to abort)."""
        t0 = time.monotonic()
        while time.monotonic() < t0 + 10:
            st = server.stats()
            if not st["open_multipart_uploads"] and not st["multipart_part_files"]:
                log(f"{h['tag']}: the daemon confirmed its abort "
                    f"{time.monotonic() - t0:.2f} s after the checks began")
                return {"open_mpu": 0, "mpu_parts": 0, "daemon_aborted": out["open_mpu"]}
            time.sleep(0.1)
        h["daemon"].stop(15)
        return {}

    def next_run_aborts(self, h: dict, server: S3Server, out: dict) -> dict:
        """An upload whose abort the store had not confirmed when attache gave up waiting (0.5 s
        after a cancel) must be recorded in the cache dir's open-uploads/ and aborted by the
        next upload to the store: runs a one-file put with the same cache, then counts again."""
        recorded = len(list((Path(h["cache"]) / "open-uploads").glob("*.json")))
        tiny = self.work.fresh("tiny")
        Path(tiny).mkdir(parents=True, exist_ok=True)
        (Path(tiny) / "a.txt").write_text(h["tag"])
        run = Run(self.attache("put", tiny, "--store", server.store_url(h["prefix"]),
                               "-o", self.work.fresh("tiny.manifest"), cache=h["cache"]),
                  env=attache_env(server), log_path=self.work.logs / f"{h['tag']}-next.log",
                  work=self.work)
        run.wait(60)
        st = server.stats()
        log(f"{h['tag']}: {out['open_mpu']} open multipart upload(s) after the cancel, "
            f"{recorded} recorded; after the next put: {st['open_multipart_uploads']} open")
        if recorded >= out["open_mpu"] and run.rc == 0:
            return {"next_run": out["open_mpu"], "open_mpu": st["open_multipart_uploads"],
                    "mpu_parts": st["multipart_part_files"]}
        return {}

    def next_put_resumes(self, h: dict, server: S3Server, out: dict) -> dict:
        """A put killed with SIGKILL leaves its multipart upload open, recorded in its cache
        dir as a crash's leftover: the same put run again with that cache dir must resume it,
        complete every object and leave no upload open. Returns the figures (next_run: the
        uploads it resumed; open_mpu, mpu_parts: what is open after it), with a problem when it
        failed or left something."""
        root = self.src[h["scn"]][0]
        out_path = self.work.fresh("next-put.json")
        run = Run(self.attache("put", root, "--json", "--store", server.store_url(h["prefix"]),
                               "-o", self.work.fresh("next.manifest"), cache=h["cache"]),
                  env=attache_env(server), log_path=self.work.logs / f"{h['tag']}-next.log",
                  stdout_path=out_path, work=self.work)
        run.wait(900)
        st = server.stats()
        res = {"open_mpu": st["open_multipart_uploads"], "mpu_parts": st["multipart_part_files"],
               "problems": list(out["problems"])}
        if run.rc != 0:
            res["problems"].append(f"the put after the kill failed: {exit_desc(run.rc)}: "
                                   f"{run.log_tail()}")
            return res
        u = json.loads(Path(out_path).read_text())["upload"]
        res["next_run"] = u["resumed_uploads"]
        res["next_put_kept"] = u["resumed_bytes"]
        done = check_store(server, h["prefix"], root, self.by_hash[h["scn"]])
        if done["objects"] != len(self.by_hash[h["scn"]]) or done["bad"]:
            res["problems"].append(f"after the put after the kill: {done['objects']} of "
                                   f"{len(self.by_hash[h['scn']])} objects, {len(done['bad'])} bad")
        log(f"{h['tag']}: {out['open_mpu']} multipart upload(s) open after the kill; the next put "
            f"resumed {u['resumed_uploads']} ({fmt_bytes(u['resumed_bytes'])} kept), "
            f"{st['open_multipart_uploads']} open after it")
        return res

    def next_get(self, h: dict, server: S3Server, tag: str, what: str) -> dict:
        """After a cancelled `attache get` of the big file, the next get with the same cache dir
        (after a daemon-api cancel: the job retried, POST /v1/jobs/ID/retry) fetches only what
        the cancelled one had not landed (its parts kept in cache.dir/partial-downloads/) and
        places the whole file: checks that, and returns the figures."""
        w, scn = self.work, h["scn"]
        root, idx = self.src[scn]
        size = sum(idx.values())
        t0 = time.monotonic()
        if h["kind"] == "daemon":
            d = h["daemon"]
            st, rec = d.request("POST", f"/v1/jobs/{h['job']}/retry")
            if st not in (200, 201):
                self.report.fail(f"{what}: retrying the cancelled job: HTTP {st}: {rec}")
                return {}
            rec = d.wait_job(rec["id"], timeout=900)
            took = time.monotonic() - t0
            if rec["state"] != "succeeded":
                self.report.fail(f"{what}: the retried job ended {rec['state']}: "
                                 f"{rec.get('error')}")
                return {}
            roots = (rec.get("result") or {}).get("roots", [])
            reports = [r["report"] for r in roots]
        else:
            out_path = w.fresh("next-get.json")
            run = Run(self.attache("get", "--json", self.manifest[scn], "--dest", h["dest"],
                                   "--store", server.store_url(h["prefix"]), cache=h["cache"]),
                      env=attache_env(server), log_path=w.logs / f"{tag}-next.log",
                      stdout_path=out_path, work=w)
            run.wait(900)
            took = time.monotonic() - t0
            if run.rc != 0:
                self.report.fail(f"{what}: the get after the cancel failed: "
                                 f"{exit_desc(run.rc)}: {run.log_tail()}")
                return {}
            reports = [json.loads(Path(out_path).read_text())]
        resumed = sum(r["download"].get("resumed_bytes", 0) for r in reports)
        fetched = sum(r["download"]["downloaded_bytes"] for r in reports)
        unchanged = sum(r.get("unchanged_files", 0) for r in reports)
        if not reports:
            self.report.fail(f"{what}: the next download reported nothing")
        left = check_dest(h["dest"], root, idx, True, strip_assetroot=h["kind"] == "daemon")
        for p in dest_problems(left):
            self.report.fail(f"{what}: after the next get: {p}")
        if unchanged == 0 and resumed + fetched != size:
            self.report.fail(f"{what}: the next get kept {resumed} bytes and fetched {fetched} "
                             f"of {size}: some were fetched twice or not at all")
        kept = list((Path(h["cache"]) / "partial-downloads").iterdir()) \
            if (Path(h["cache"]) / "partial-downloads").exists() else []
        if kept:
            self.report.fail(f"{what}: {len(kept)} file(s) left in partial-downloads/ after the "
                             f"next get, e.g. {kept[0]}")
        log(f"{tag}: the next get kept {fmt_bytes(resumed)}, fetched {fmt_bytes(fetched)} in "
            f"{took:.2f} s")
        return {"next_resumed": resumed, "next_fetched": fetched, "next_s": took}

    # ------------------------------------------------------------------ baseline

    def baseline(self, scn: str, tool: str) -> float | None:
        server = self.server if self.dir == "download" else self.new_server(f"base-{scn}")
        server.reset()
        prefix = "r" if self.dir == "download" else ("ob" if tool == "official" else "b")
        h = self.start(scn, "official" if tool == "official" else "cli-sigint", server, prefix,
                       f"baseline-{tool}-{scn}")
        out = self.wait_done(h, 1800)
        secs = (h["run"].t_exit - h["t_start"]) if out["ok"] else None
        left = self.leftovers(h, server, expect_complete=True)
        st = server.stats()
        self.base_rows.append([scn, tool, fmt_s(secs), out["status"],
                               f"{left['present']}/{left['total']}", st["requests"],
                               fmt_bytes(st["bytes_in"] if self.dir == "upload" else st["bytes_out"])])
        if tool == "attache":
            self.report.check(out["ok"], f"baseline {scn}: attache {self.dir} failed: "
                                         f"{out['status']}: {out['error']}")
            for p in left["problems"]:
                self.report.fail(f"baseline {scn}: attache {self.dir}: {p}")
        elif not out["ok"] or left["problems"]:
            self.report.note(f"official baseline {scn}: {out['status']}; {left['problems']}")
        if self.dir == "upload":
            server.stop()
            rmtree(server.root)
        else:
            rmtree(h["dest"])
        log(f"baseline {scn} {tool}: {fmt_s(secs)} s ({out['status']})")
        return secs

    # ------------------------------------------------------------------ one cancel

    def moved(self, st: dict) -> int | None:
        """The transfer's bytes the server has seen (in for an upload, out for a download)."""
        return st["bytes_in"] if self.dir == "upload" else st["bytes_out"]

    def wait_point(self, h: dict, server: S3Server, over: str, frac: float, base: float,
                   total: int) -> None:
        """Waits for the cancel point, unless the transfer ends first: `frac` of the baseline
        time T (`over` "time") or of the tree's bytes, as the server counts them ("bytes",
        polled every 20 ms as the traffic watch does)."""
        if over == "time":
            at = h["t_start"] + frac * base
            while time.monotonic() < at and not self.finished(h):
                time.sleep(min(0.01, max(0.0, at - time.monotonic())))
            return
        while not self.finished(h):
            moved = self.moved(server.stats(multipart=False))
            if moved is None or moved >= frac * total:
                return
            time.sleep(0.02)

    def cancel_run(self, scn: str, mode: str, over: str, frac: float, base: float) -> None:
        self.n += 1
        tag = f"{scn}-{mode}-{self.n}"
        if self.dir == "download":
            server, prefix = self.server, "r"
        else:
            server, prefix = self.new_server(tag), f"u{self.n}"
        server.reset()
        h = self.start(scn, mode, server, prefix, tag)
        total = sum(self.src[scn][1].values())
        res = {"scenario": scn, "mode": mode, "over": over, "point_frac": frac}
        try:
            self.wait_point(h, server, over, frac, base, total)
            early = self.finished(h)
            pre = server.stats()
            watch = TrafficWatch(server).start()
            t_sig = time.monotonic()
            res["delay_s"] = t_sig - h["t_start"]
            res["delay_frac"] = res["delay_s"] / base
            if not early:
                self.send_cancel(h, mode)
                end = self.wait_end(h, mode, t_sig)
            else:  # ended on its own before the cancel point: nothing was sent
                done = self.wait_done(h, 5)
                end = {"t_end": None, "status": done["status"],
                       "outcome": "finished" if done["ok"] else "bad-exit"}
                if h["kind"] == "daemon":
                    end["daemon_alive"] = h["daemon"].run.running()
            last = watch.wait_quiet(0.3, timeout=60)
            watch.stop()
            moved = self.moved(pre)
            t_end = end.pop("t_end")
            res.update(end)
            res["early"] = early
            res["at_bytes_frac"] = None if moved is None else moved / total
            res["req_after"] = (watch.last[0] - pre["requests"]) if watch.last else None
            if early:
                res["to_end_s"] = res["to_idle_s"] = None
            else:
                res["to_end_s"] = None if t_end is None else t_end - t_sig
                ends = [t for t in (t_end, last) if t is not None]
                res["to_idle_s"] = (max(ends) - t_sig) if t_end is not None else None
            finished_ok = end["outcome"] == "finished"
            left = self.leftovers(h, server, expect_complete=finished_ok)
            res.update({k: v for k, v in left.items()})
            self.judge(res, h, tag)
            if self.dir == "download" and scn == "big" and res["outcome"] == "cancelled" and \
                    (h["kind"] == "cli" or mode == "daemon-api"):
                res.update(self.next_get(h, server, tag, what=f"{tag} (seed {self.seed})"))
        finally:
            self.cleanup_handle(h)
            if self.dir == "upload":
                server.stop()
                rmtree(server.root)
            if h.get("dest"):
                rmtree(h["dest"])
        self.results.append(res)
        log(f"{tag}: cancel at {res['delay_s']:.2f} s ({over} point {100 * frac:.0f}%) -> "
            f"{res['outcome']} ({res['status']}), "
            f"end {fmt_s(res['to_end_s'])} s, idle {fmt_s(res['to_idle_s'])} s, "
            f"left: {res['problems'] or 'nothing'}")

    def send_cancel(self, h: dict, mode: str) -> None:
        if mode == "daemon-api":
            st, body = h["daemon"].request("DELETE", f"/v1/jobs/{h['job']}")
            h["delete_status"] = st
        elif mode == "daemon-sigterm":
            h["daemon"].run.signal(signal.SIGTERM)
        elif mode == "cli-sigterm":
            h["run"].signal(signal.SIGTERM)
        elif mode == "cli-sigkill":
            h["run"].signal(signal.SIGKILL)
        else:  # cli-sigint, official
            h["run"].signal(signal.SIGINT)

    def wait_end(self, h: dict, mode: str, t_sig: float) -> dict:
        """Waits for the cancel to take effect: the process exits (CLI, official, daemon on
        SIGTERM) or the job leaves `running` (API)."""
        if mode == "daemon-api":
            d = h["daemon"]
            deadline = t_sig + EXIT_TIMEOUT
            rec = None
            while time.monotonic() < deadline:
                rec = d.job(h["job"])
                if rec["state"] not in ("queued", "running"):
                    break
                time.sleep(0.005)
            t_end = time.monotonic() if rec and rec["state"] not in ("queued", "running") else None
            state = rec["state"] if rec else "?"
            outcome = {"cancelled": "cancelled", "succeeded": "finished"}.get(state, state)
            if t_end is None:
                outcome = "hung"
            alive = d.run.running()
            health = None
            if alive:
                try:
                    hst, hbody = d.request("GET", "/v1/health")
                    health = hbody.get("jobs_active") if hst == 200 else f"HTTP {hst}"
                except OSError as e:
                    health = f"error {e}"
            return {"t_end": t_end, "status": f"{state} (DELETE {h.get('delete_status')})",
                    "outcome": outcome, "daemon_alive": alive, "jobs_active": health}
        run = h["daemon"].run if mode == "daemon-sigterm" else h["run"]
        limit = OFFICIAL_EXIT_TIMEOUT if h["kind"] == "official" else EXIT_TIMEOUT
        killed = False
        if not run.wait(max(0.0, t_sig + limit - time.monotonic())):
            run.kill()
            killed = True
        rc = run.rc
        status = exit_desc(rc) + (f" (SIGKILL after {limit:.0f} s)" if killed else "")
        if mode == "daemon-sigterm":
            try:
                rec = json.loads((h["daemon"].dir / "state/jobs" / f"{h['job']}.json").read_text())
                status += f", job {rec.get('state')}"
                outcome = "finished" if rec.get("state") == "succeeded" else "cancelled"
            except (OSError, ValueError):
                outcome = "cancelled"
            if killed or rc != 0:
                outcome = "bad-exit"
        elif killed:
            outcome = "hung"
        elif rc == 0:
            outcome = "finished"
        elif rc in (130, 143) or (mode == "cli-sigkill" and rc == -signal.SIGKILL):
            outcome = "cancelled"
        elif h["kind"] == "official" and rc is not None and rc != 0:
            outcome = "cancelled"
        else:
            outcome = "bad-exit"
        return {"t_end": None if killed else run.t_exit, "status": status, "outcome": outcome}

    def judge(self, res: dict, h: dict, tag: str) -> None:
        if h["kind"] == "official":
            return  # the peer: figures only
        rep = self.report
        what = (f"{self.dir} {tag} ({res['mode']}, cancel at {res['delay_s']:.2f} s, seed "
                f"{self.seed})")
        if res["outcome"] == "hung":
            rep.fail(f"{what}: did not end within {EXIT_TIMEOUT:.0f} s of the cancel: {res['status']}")
        elif res["outcome"] == "bad-exit":
            rep.fail(f"{what}: bad exit after the cancel: {res['status']} (want 130, or 0 if it "
                     f"finished first{'; daemon: 0' if res['mode'] == 'daemon-sigterm' else ''})")
        if res["mode"] == "daemon-api":
            if not res.get("daemon_alive"):
                when = "with its job finished before the cancel" if res["early"] else \
                    "after DELETE"
                rep.fail(f"{what}: the daemon died {when}")
            elif res.get("jobs_active") not in (0, None):
                rep.fail(f"{what}: daemon still reports jobs_active={res['jobs_active']}")
        for k in ("to_end_s", "to_idle_s"):
            v = res.get(k)
            if v is not None and v > IDLE_GOAL_S:
                rep.fail(f"{what}: {k.removesuffix('_s').replace('_', ' ')} {v:.3f} s > "
                         f"{IDLE_GOAL_S:.0f} s goal")
        for p in res["problems"]:
            rep.fail(f"{what}: {p}")
        if self.dir == "upload" and res["mode"].startswith("daemon") and \
                res["outcome"] == "cancelled" and res.get("manifests"):
            rep.fail(f"{what}: a cancelled submit published {res['manifests']} manifest(s)")

    # ------------------------------------------------------------------ main

    def run(self) -> None:
        self.setup()
        rng_root = self.seed
        bases = {}
        for scn in ("files", "big"):
            bases[(scn, "attache")] = self.baseline(scn, "attache")
            if self.official_py:
                bases[(scn, "official")] = self.baseline(scn, "official")
        for scn in ("files", "big"):
            base = bases[(scn, "attache")]
            if not base:
                continue
            for mode in MODES:
                rng = random.Random(f"{rng_root}-{self.dir}-{scn}-{mode}")
                for i in range(self.cfg["points"]):
                    self.cancel_run(scn, mode, OVER[i % 2], rng.uniform(0.03, 0.97), base)
            obase = bases.get((scn, "official"))
            if self.official_py and obase:
                rng = random.Random(f"{rng_root}-{self.dir}-{scn}-official")
                for i in range(self.cfg["official_points"]):
                    self.cancel_run(scn, "official", OVER[i % 2], rng.uniform(0.03, 0.97), obase)
        self.tables()

    def tables(self) -> None:
        rep = self.report
        rep.figures.update({"direction": self.dir, "sizes": self.cfg, "runs": self.results})
        moved = "bytes in" if self.dir == "upload" else "bytes out"
        rep.table(f"Baselines (uncancelled {self.dir}; T is what time points are drawn from)",
                  ["scenario", "tool", "T s", "result", "complete", "requests", moved],
                  self.base_rows)
        rows = []
        for r in self.results:
            common = [r["scenario"], r["mode"], *point(r),
                      r["outcome"] + (" (before cancel)" if r.get("early") else ""),
                      fmt_s(r["to_end_s"]), fmt_s(r["to_idle_s"]), r["req_after"]]
            if self.dir == "download":
                extra = [f"{r['present']}/{r['total']}", r["temp"], r["partial"], r["unexpected"]]
            else:
                extra = [f"{r['present']}/{r['total']}", r["bad"], r["manifests"]]
            parts = f"{r['mpu_parts']}*" if r.get("orphans") else r["mpu_parts"]
            after = (f"daemon {r['daemon_aborted']}" if r.get("daemon_aborted")
                     else r.get("next_run", 0))
            mpu = [r["open_mpu"]] + ([after] if self.dir == "upload" else [])
            rows.append(common + extra + mpu + [parts, r.get("aborts"), r["srv_tmp"]])
        hdr = ["scenario", "mode", "drawn", "cancel s", "at", "outcome", "to exit s",
               "to idle s", "req after"]
        hdr += (["files ok", "temp", "partial", "extra"] if self.dir == "download"
                else ["objects ok", "bad", "manifests"])
        hdr += ["open MPU"] + (["next run"] if self.dir == "upload" else [])
        hdr += ["MPU parts", "aborts", "srv .tmp"]
        rep.table(f"Cancel runs ({self.dir}): 'to exit' = process exit (daemon-api: job "
                  f"cancelled); 'to idle' = that and no S3 traffic for 300 ms; 'drawn' = the "
                  f"point as drawn, of T or of the tree's bytes; 'at' = the bytes the server "
                  f"had seen at the cancel"
                  + ("; 'next run' = open uploads whose abort was not confirmed within 0.5 s, "
                     "recorded and aborted by the next put ('daemon N': the daemon, which goes "
                     "on with the abort after its job's cancel, confirmed it before the checks "
                     "ended), or, after cli-sigkill, the uploads the same put run again resumed "
                     "(open MPU is counted after it)"
                     if self.dir == "upload" else ""), hdr, rows)
        krows = [[r["scenario"], *point(r), r.get("next_run", 0), fmt_bytes(r["next_put_kept"])]
                 for r in self.results if "next_put_kept" in r]
        if krows:
            rep.table("The put after a killed one (cli-sigkill: the same put again, same cache "
                      "dir): the multipart uploads it resumed and the bytes it kept, not sent "
                      "again", ["scenario", "drawn", "kill s", "at", "resumed", "kept"], krows)
        nrows = [[r["mode"], *point(r), fmt_bytes(r["next_resumed"]), fmt_bytes(r["next_fetched"]),
                  fmt_s(r["next_s"])]
                 for r in self.results if "next_resumed" in r]
        if nrows:
            rep.table("The download after a cancelled one of the big file (cli: `attache get` "
                      "again, same cache dir; daemon-api: the job retried): 'kept' = bytes the "
                      "cancelled run had written (parts in flight as far as they came; after "
                      "cli-sigkill, to their last 4 MiB mark), not fetched again",
                      ["mode", "drawn", "cancel s", "at", "kept", "fetched", "next get s"],
                      nrows)
        srows = []
        for scn in ("files", "big"):
            for mode in MODES + ["official"]:
                rs = [r for r in self.results if r["scenario"] == scn and r["mode"] == mode]
                if not rs:
                    continue
                ends = [r["to_end_s"] for r in rs]
                idles = [r["to_idle_s"] for r in rs]
                dirty = sum(1 for r in rs if r["problems"] or r["outcome"] in ("hung", "bad-exit"))
                srows.append([scn, mode, len(rs), sum(1 for r in rs if r["outcome"] == "cancelled"),
                              fmt_s(median(ends)), fmt_s(maximum(ends)), fmt_s(median(idles)),
                              fmt_s(maximum(idles)), dirty])
        rep.table(f"Summary per mode (goal: idle <= {IDLE_GOAL_S:.0f} s; 'dirty' = runs that left "
                  f"something behind or exited badly)",
                  ["scenario", "mode", "runs", "cancelled", "exit med", "exit max", "idle med",
                   "idle max", "dirty"], srows)
        rep.figures["summary"] = srows
        orph = [r for r in self.results if r.get("orphans")]
        if orph:
            rep.note(f"{len(orph)} run(s) marked * left multipart part files with no open upload "
                     f"after a CompleteMultipartUpload was in flight at the cancel: s3s-fs "
                     f"deletes the upload first and assembles parts after, so a Complete dropped "
                     f"by the client half-way orphans them (AWS S3 finishes a Complete "
                     f"server-side). Not counted as failures; --strict-mpu counts them.")


def point(r: dict) -> list[str]:
    """A run's cancel point, as the tables' columns "drawn" (`time 45%` of T, or `bytes 45%`
    of the tree's), "cancel s" (when it came) and "at" (the bytes the server had seen)."""
    at = r["at_bytes_frac"]
    return [f"{r['over']} {100 * r['point_frac']:.0f}%", f"{r['delay_s']:.2f}",
            "-" if at is None else f"{100 * at:.0f}%"]


def main(direction: str, doc: str) -> int:
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from xfer import common_args, main_wrapper, resolve_seed
    ap = common_args(doc)
    ap.add_argument("--no-official", action="store_true",
                    help="skip the official client comparison")
    ap.add_argument("--strict-mpu", action="store_true",
                    help="also fail on part files orphaned by a CompleteMultipartUpload that "
                         "was in flight at the cancel (an s3s-fs artifact; see the notes)")
    args = ap.parse_args()
    seed = resolve_seed(args)
    log(f"{direction}_cancel_test: seed {seed} ({'quick' if args.quick else 'full'} mode); "
        f"rerun with --seed {seed}")
    return main_wrapper(f"{direction}_cancel_test",
                        lambda work, report: CancelTest(direction, work, report, args).run(), args)
