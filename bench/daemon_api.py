"""The attache daemon's HTTP API over its Unix socket, for the bench scripts (stdlib only), and
starting a daemon of its own for a benchmark."""
import os
import socket
import subprocess
import time
from pathlib import Path


def request(sock: str, method: str, path: str, body: bytes = b"") -> bytes:
    """One request on a new connection; returns the response body."""
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock)
    c.sendall(f"{method} {path} HTTP/1.1\r\nHost: attache\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    c.close()
    return data.partition(b"\r\n\r\n")[2]


def wait_ready(sock: str, seconds: float = 10) -> None:
    """Waits until the daemon answers on `sock` (bounded)."""
    end = time.monotonic() + seconds
    while True:
        try:
            request(sock, "GET", "/v1/health")
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def rss_kib(pid: int) -> int:
    """The process's resident memory now, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def daemon_config(d: Path, daemon_keys: str) -> tuple[Path, Path]:
    """A config in `d` for a daemon of its own: a file:// store, cache, socket and state dir
    in `d`, progress lines off, `daemon_keys` ("key = value" lines) in [daemon]. Returns
    (config file, socket)."""
    sock = d / "run" / "attache.sock"
    config = d / "attache.toml"
    config.write_text(
        f'[store]\nurl = "file://{d / "store"}"\n[cache]\ndir = "{d / "cache"}"\n'
        f'[daemon]\nsocket = "{sock}"\nstate_dir = "{d / "state"}"\n{daemon_keys}'
        f'[log]\nstats = "0"\n')
    return config, sock


def start_daemon(binary: str, config: Path, log: Path) -> subprocess.Popen:
    """`attache daemon` with `config` (and none of this environment's ATTACHE_ settings),
    its stderr appended to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHE_")}
    return subprocess.Popen([binary, "--config", str(config), "daemon"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
