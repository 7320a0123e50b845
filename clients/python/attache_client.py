"""The attache daemon's API from Python, for a DCC plugin or a pipeline tool: submit a job (a
job bundle's asset references, or paths), follow its progress, cancel or retry it, change the
bandwidth. One file, the standard library only, Python 3.7 and later (the Pythons of Maya,
Houdini, Nuke and Blender): copy it next to the plugin.

    from attache_client import Daemon, DaemonError

    daemon = Daemon()                      # this machine's daemon, on its Unix socket
    job = daemon.submit(farm_id="farm-…", queue_id="queue-…",
                        asset_references=["/tmp/bundles/shot010"])
    for record in daemon.events(job["id"]):        # at every change, and every 250 ms
        p = record["progress"]
        print(record["state"], p["bytes_done"], "of", p["bytes_total"])
    if record["state"] == "succeeded":
        attachments = record["result"]["attachments"]   # for CreateJob's "attachments";
        # None when every path is on SHARED storage: create the job without attachments

    # Another machine's daemon (its daemon.listen), with a copy of its token:
    worker = Daemon(url="https://render042:7070", token_file="~/farm.token",
                    ca_file="~/studio-ca.pem")
    worker.bandwidth("5MB/s", lasting="2h")

Every method returns the daemon's JSON reply (a dict or a list); a refused request raises
DaemonError with the HTTP status, the message and the field at fault. The routes are in the
README ("Run as a service"); the socket's default path is the daemon's: $XDG_RUNTIME_DIR/
attache/attache.sock, else /run/attache/attache.sock.
"""

import http.client
import json
import os
import socket
import ssl
from urllib.parse import quote, urlsplit

__all__ = ["Daemon", "DaemonError", "UnixHTTPConnection", "default_socket"]


class DaemonError(Exception):
    """The daemon refused a request (`status`: its HTTP status; `field`: the spec's field at
    fault, if one is), or could not be reached (`status` 0)."""

    def __init__(self, status, message, field=None):
        super().__init__(message)
        self.status = status
        self.field = field


SYSTEM_SOCKET = "/run/attache/attache.sock"
# The states a job ends in.
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


def default_socket():
    """The daemon's socket when daemon.socket is not set: the login's, in $XDG_RUNTIME_DIR;
    when no daemon is there and the system service's socket is, that one (as the CLI)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return SYSTEM_SOCKET
    mine = os.path.join(runtime, "attache", "attache.sock")
    if not os.path.exists(mine) and os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return mine


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a Unix socket (the daemon's), for http.client."""

    def __init__(self, path, timeout=None):
        super().__init__("attache", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Daemon:
    """An attache daemon: this machine's (`socket_path`, default the daemon's own), or another
    machine's TCP listener (`url`: https://HOST:PORT, or http:// for one without
    daemon.tls_cert) with its bearer token (`token_file`) and, over https, the CA that signed
    its certificate (`ca_file`; default: the system's)."""

    def __init__(self, socket_path=None, url=None, token_file=None, ca_file=None, timeout=30.0):
        self._timeout = timeout
        self._token = None
        if url is None:
            self._socket = os.path.expanduser(socket_path or default_socket())
            return
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.port:
            raise ValueError(url + ": expected https://HOST:PORT or http://HOST:PORT")
        if token_file is None:
            raise ValueError("a daemon's TCP listener needs its token: give token_file")
        with open(os.path.expanduser(token_file), encoding="utf-8") as f:
            self._token = f.read().strip()
        self._url = parts
        self._tls = None
        if parts.scheme == "https":
            self._tls = ssl.create_default_context(
                cafile=os.path.expanduser(ca_file) if ca_file else None)

    def _connection(self, timeout):
        if self._token is None:
            return UnixHTTPConnection(self._socket, timeout)
        host, port = self._url.hostname, self._url.port
        if self._tls is not None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _send(self, method, path, body=None, timeout=None):
        conn = self._connection(self._timeout if timeout is None else timeout)
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = "Bearer " + self._token
        data = None if body is None else json.dumps(body).encode("utf-8")
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise DaemonError(0, "cannot reach the attache daemon: %s" % e) from e
        if resp.status >= 400:
            try:
                body = resp.read()
            finally:
                conn.close()
            try:
                reply = json.loads(body or b"null")
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                # Not the daemon's JSON refusal (a proxy's page): its text, still a DaemonError.
                text = body.decode("utf-8", "replace").strip()
                reply = {"error": text or resp.reason}
            raise DaemonError(resp.status, reply.get("error", resp.reason), reply.get("field"))
        return conn, resp

    def _call(self, method, path, body=None):
        conn, resp = self._send(method, path, body)
        try:
            return json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def health(self):
        """Status, version, active and queued jobs, bandwidth in force."""
        return self._call("GET", "/v1/health")

    def start(self, spec):
        """Starts a job from a spec: {"kind": "submit" | "sync_inputs" | "sync_outputs" |
        "download_outputs" | "doctor", ...} with the CLI's flags in snake_case, and
        "priority" (0 to 100, default 50: a queued job of a higher priority starts first).
        Returns its record ("id", "state")."""
        return self._call("POST", "/v1/jobs", spec)

    def submit(self, farm_id, queue_id, inputs=(), output_dirs=(), referenced=(),
               asset_references=(), parameters=None, **more):
        """Starts a submission: absolute paths of inputs (files and directories), output
        directories, referenced paths, and job bundles (or their asset_references files) to
        take more from; `parameters`: values of the bundles' template parameters, a dict
        {name: value} (a PATH parameter with a dataFlow is an input or output; a LIST[PATH]'s
        value a list); `more`: other fields (priority, store, exclude, include, filter,
        exclude_if_present, size_age, locations, shared, require_paths_exist, dry_run)."""
        spec = dict(kind="submit", farm_id=farm_id, queue_id=queue_id, inputs=list(inputs),
                    output_dirs=list(output_dirs), referenced=list(referenced),
                    asset_references=list(asset_references), **more)
        if parameters:
            spec["parameters"] = [{"name": k, "value": v} for k, v in parameters.items()]
        return self.start(spec)

    def job(self, job_id):
        """A job's record: state, progress, result or error."""
        return self._call("GET", "/v1/jobs/" + quote(job_id))

    def jobs(self, states=(), last=None):
        """The jobs' records, oldest first; only those in `states`, only the `last` N."""
        query = []
        if states:
            query.append("state=" + ",".join(states))
        if last is not None:
            query.append("last=%d" % last)
        return self._call("GET", "/v1/jobs" + ("?" + "&".join(query) if query else ""))

    def events(self, job_id):
        """Yields the job's record at every change and every 250 ms, until it ends (the last
        one yielded is its final record). Raises DaemonError (status 0) when the stream stops
        before the job has ended: the daemon stopped or the connection broke, and the job's
        outcome is not known (ask job() once the daemon is back; retry() runs it again)."""
        # No read timeout: a queued job may wait long between two records' worth of change.
        conn, resp = self._send("GET", "/v1/jobs/%s/events" % quote(job_id), timeout=None)
        record, broken = None, None
        try:
            for line in resp:
                if line.strip():
                    record = json.loads(line)
                    yield record
        except (OSError, http.client.HTTPException) as e:
            broken = e
        finally:
            conn.close()
        if record is None or record.get("state") not in FINAL_STATES:
            state = record.get("state") if record else "unknown"
            raise DaemonError(0, "job %s was cut off: the daemon stopped answering while it "
                              "was %s; ask again once it is back (retry() runs it again)"
                              % (job_id, state)) from broken

    def wait(self, job_id):
        """Waits for the job to end; returns its final record."""
        record = None
        for record in self.events(job_id):
            pass
        return record

    def cancel(self, job_id):
        """Cancels a job (queued or running); returns its record."""
        return self._call("DELETE", "/v1/jobs/" + quote(job_id))

    def retry(self, job_id):
        """Runs a failed, cancelled or interrupted job again; returns the new job's record."""
        return self._call("POST", "/v1/jobs/%s/retry" % quote(job_id))

    def set_priority(self, job_id, priority):
        """Changes a queued job's priority (0 to 100); returns its record."""
        return self._call("PUT", "/v1/jobs/%s/priority" % quote(job_id), {"priority": priority})

    def bandwidth(self, rate=None, lasting=None, reset=False):
        """The bandwidth limits in force; with `rate` ("20MB/s", or "UP:DOWN", "off":
        unlimited) sets them, for `lasting` ("2h") or until reset; `reset`: back to the
        config's."""
        if reset:
            return self._call("DELETE", "/v1/bandwidth")
        if rate is not None:
            return self._call("PUT", "/v1/bandwidth", {"rate": rate, "for": lasting})
        return self._call("GET", "/v1/bandwidth")
