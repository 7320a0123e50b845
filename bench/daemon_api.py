"""The attache daemon's HTTP API over its Unix socket, for the bench scripts (stdlib only)."""
import socket
import time


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
