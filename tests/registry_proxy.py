"""A proxy of ours in front of the real registry: counts what clients download.

Every test that asserts "bytes fetched" reads the counters here, measured at the server side of
the connection, so nothing the daemon reports about itself is trusted. It runs in a process of
its own: a test blocked in a read that holds the GIL (safetensors does) must not stall it.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
CONTROL = "/_proxy/"
BASE_COUNTERS = ("blob_bytes", "blob_requests", "manifest_requests")


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.counters = dict.fromkeys(BASE_COUNTERS, 0)
        self.corrupt: set[str] = set()  # blob digests served with a flipped first byte
        super().__init__(("127.0.0.1", 0), Handler)

    def count(self, key: str, n: int) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith(CONTROL):
            self._control()
        else:
            self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")

    def _control(self) -> None:
        if self.path.startswith(CONTROL + "corrupt/"):
            self.server.corrupt.add(self.path.rsplit("/", 1)[1])
        elif self.path == CONTROL + "heal":
            self.server.corrupt.clear()
        elif self.path == CONTROL + "reset":
            with self.server.lock:
                self.server.counters = dict.fromkeys(BASE_COUNTERS, 0)
        with self.server.lock:
            body = json.dumps(self.server.counters).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, method: str) -> None:
        host, port = self.server.upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        connection.request(method, self.path, headers=headers)
        response = connection.getresponse()
        is_blob = "/blobs/" in self.path and method == "GET"
        self.server.count("blob_requests", is_blob)
        self.server.count("manifest_requests", "/manifests/" in self.path)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.end_headers()
        corrupt = is_blob and self.path.rsplit("/", 1)[1] in self.server.corrupt
        try:
            while chunk := response.read(1 << 20):
                if corrupt and response.status in (200, 206):
                    chunk, corrupt = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                self.wfile.write(chunk)
                if is_blob:
                    self.server.count("blob_bytes", len(chunk))
                    self.server.count("blob:" + self.path.rsplit("/", 1)[1], len(chunk))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            connection.close()


class CountingProxy:
    """Starts the proxy process and reads its counters."""

    def __init__(self, upstream: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.registry_proxy", upstream],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()
        self._http = httpx.Client(base_url=f"http://{self.address}", timeout=10)

    def _counters(self, action: str = "stats") -> dict[str, int]:
        return self._http.get(CONTROL + action).json()

    def reset(self) -> None:
        self._counters("reset")

    @property
    def blob_bytes(self) -> int:
        return self._counters()["blob_bytes"]

    @property
    def blob_requests(self) -> int:
        return self._counters()["blob_requests"]

    def corrupt(self, digest: str) -> None:
        """Serve ``digest`` with a wrong first byte in every response, until :meth:`heal`."""
        self._counters(f"corrupt/{digest}")

    def heal(self) -> None:
        self._counters("heal")

    @property
    def blobs_fetched(self) -> set[str]:
        """Digests of the blobs any bytes were fetched of since the last reset."""
        return {k[5:] for k, v in self._counters().items() if k.startswith("blob:") and v}

    @property
    def manifest_requests(self) -> int:
        return self._counters()["manifest_requests"]

    def close(self) -> None:
        self._http.close()
        self.process.terminate()
        self.process.wait(10)


def main() -> None:
    server = ProxyServer(sys.argv[1])
    print(f"127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
