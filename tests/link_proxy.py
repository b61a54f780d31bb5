"""A proxy that makes a loopback registry behave like one backed by object storage.

Each request waits ``latency`` before its first byte; each connection is capped at
``per_connection`` bytes/s and all of them together at ``total`` bytes/s. Single-stream clients
are stuck at the per-connection cap; parallel range requests are not. Runs in its own process
(``python -m tests.link_proxy UPSTREAM``, prints its address), so pacing it costs the process
under test nothing.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.threaded_servers import LoopbackHTTPServer

CHUNK = 64 * 1024
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
        upstream = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            upstream.request(self.command, self.path, headers=headers)
            response = upstream.getresponse()
            time.sleep(self.server.latency)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            self.end_headers()
            while chunk := response.read(CHUNK):
                wait = max(
                    self.bucket.delay_for(len(chunk)), self.server.total.delay_for(len(chunk))
                )
                if wait:
                    time.sleep(wait)
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            upstream.close()


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
            [sys.executable, "-m", "tests.link_proxy", *arguments],
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
