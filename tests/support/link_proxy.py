"""A proxy that makes a loopback registry behave like one backed by object storage.

Each request waits ``latency`` before its first byte; each connection is capped at
``per_connection`` bytes/s and all of them together at ``total`` bytes/s. Single-stream clients
are stuck at the per-connection cap; parallel range requests are not. Runs in its own process
(``python -m tests.support.link_proxy UPSTREAM``, prints its address), so pacing it costs the
process under test nothing, and moves bodies with ``splice`` so that it costs the machine little: it
stands for a network, whose work is done elsewhere.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.support.threaded_servers import LoopbackHTTPServer

CHUNK = 256 * 1024
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade"}


class TokenBucket:
    """At most ``rate`` bytes per second, bursts of a tenth of a second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.allowance = rate / 10
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def delay_for(self, n: int) -> float:
        with self.lock:
            now = time.monotonic()
            self.allowance = min(self.rate / 10, self.allowance + (now - self.stamp) * self.rate)
            self.stamp = now
            self.allowance -= n
            return max(0.0, -self.allowance / self.rate)


class LinkServer(LoopbackHTTPServer):
    def __init__(self, upstream: str, latency: float, per_connection: float, total: float):
        self.upstream = upstream
        self.latency = latency
        self.per_connection = per_connection
        self.total = TokenBucket(total)
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LinkServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Without it, the tail of each response waits for the client's delayed ACK (Nagle):
        # 40 ms more per request on a kept-alive connection, which object storage does not add.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bucket = TokenBucket(self.server.per_connection)

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        host, port = self.server.upstream.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=60) as upstream:
                upstream.settimeout(None)  # splice needs a blocking socket
                upstream.sendall(self._request_head())
                status, reason, headers, body = _response_head(upstream)
                time.sleep(self.server.latency)
                self.send_response(status, reason)
                length = None
                for key, value in headers:
                    if key.lower() == "content-length":
                        length = int(value)
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                if length is None:
                    body += _read_to_end(upstream)
                    length = len(body)
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command == "HEAD" or status in (204, 304):
                    return
                arrived = body[:length]  # what came with the headers
                self._pace(len(arrived))
                self.wfile.write(arrived)
                self._splice(upstream, length - len(arrived))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self.close_connection = True

    def _request_head(self) -> bytes:
        # HTTP/1.0: the registry frames the body by its length or by closing, never in chunks.
        lines = [f"{self.command} {self.path} HTTP/1.0"]
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in HOP_HEADERS]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _splice(self, upstream: socket.socket, left: int) -> None:
        """Moves the body through a pipe inside the kernel (no copy into this process): this
        process stands for the network, whose cost is not the machine's under test."""
        read_end, write_end = os.pipe()
        try:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
            client = self.connection.fileno()
            while left > 0:
                got = os.splice(upstream.fileno(), write_end, min(CHUNK, left))
                if not got:
                    raise EOFError("the registry closed the connection mid-body")
                self._pace(got)
                left -= got
                while got:
                    got -= os.splice(read_end, client, got)
        finally:
            os.close(read_end)
            os.close(write_end)

    def _pace(self, n: int) -> None:
        wait = max(self.bucket.delay_for(n), self.server.total.delay_for(n))
        if wait:
            time.sleep(wait)


def _response_head(upstream: socket.socket) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Status, reason, headers, and the bytes of the body that came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = upstream.recv(65536)
        if not chunk:
            raise EOFError("the registry closed the connection before its headers")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = status_line.split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines)]
    return int(status), reason[0] if reason else "", headers, body


def _read_to_end(upstream: socket.socket) -> bytes:
    chunks = []
    while chunk := upstream.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class LinkProxy:
    """Starts the proxy process in front of ``upstream``."""

    def __init__(
        self,
        upstream: str,
        latency: float = 0.030,
        per_connection: float = 50e6,
        total: float = 400e6,
    ) -> None:
        arguments = [upstream, str(latency), str(per_connection), str(total)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.link_proxy", *arguments],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main() -> None:
    upstream, latency, per_connection, total = sys.argv[1:5]
    server = LinkServer(upstream, float(latency), float(per_connection), float(total))
    print(f"127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
