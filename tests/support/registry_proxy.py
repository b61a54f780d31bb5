"""A proxy of ours in front of the real registry: counts what clients download, and injects
the faults of a flaky registry on demand.

Every test that asserts "bytes fetched" reads the counters here, measured at the server side of
the connection, so nothing the daemon reports about itself is trusted. It runs in a process of
its own: a test blocked in a read that holds the GIL (safetensors does) must not stall it.

Faults apply to blob GETs only (manifests and tokens pass), either the next ``count`` of them
(:meth:`CountingProxy.inject`) or each with a probability (:meth:`CountingProxy.inject_randomly`):

- ``status``: answer HTTP ``status`` (503 unless given) without asking the registry, with a
  ``Retry-After`` header when ``retry_after`` is given;
- ``cut``: send the headers and half the body, then drop the connection;
- ``stall``: send the headers, then go silent for ``seconds`` and drop the connection;
- ``truncate``: a well-formed response whose ``Content-Length`` and body are half of what the
  registry sent (the connection stays usable);
- ``wrong``: the registry's response with one byte in the middle of the body flipped;
- ``bloat``: the registry's response followed by ``size`` bytes of white space (JSON still).

``target="manifest"`` aims a fault at manifest GETs instead.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import httpx

from tests.support.threaded_servers import LoopbackHTTPServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
CONTROL = "/_proxy/"
BASE_COUNTERS = ("blob_bytes", "blob_requests", "manifest_requests")
FAULT_KINDS = ("status", "cut", "stall", "truncate", "wrong", "bloat")


@dataclass
class Fault:
    kind: str
    status: int = 503
    retry_after: str = ""
    seconds: float = 0.0
    size: int = 0
    target: str = "blob"


@dataclass
class FaultPlan:
    queue: list[Fault] = field(default_factory=list)  # the next blob GETs, in order
    rate: float = 0.0  # then: the chance of a fault on each blob GET
    mix: list[Fault] = field(default_factory=list)  # ... drawn from these
    random: random.Random = field(default_factory=random.Random)

    def next(self, target: str) -> Fault | None:
        for position, fault in enumerate(self.queue):
            if fault.target == target:
                return self.queue.pop(position)
        if target == "blob" and self.mix and self.random.random() < self.rate:
            return self.random.choice(self.mix)
        return None


class ProxyServer(LoopbackHTTPServer):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.counters = dict.fromkeys(BASE_COUNTERS, 0)
        self.corrupt: set[str] = set()  # blob digests served with a flipped first byte
        self.faults = FaultPlan()
        super().__init__(("127.0.0.1", 0), Handler)

    def count(self, key: str, n: int) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def next_fault(self, target: str) -> Fault | None:
        with self.lock:
            fault = self.faults.next(target)
            if fault is not None:
                key = f"fault:{fault.kind}"
                self.counters[key] = self.counters.get(key, 0) + 1
            return fault

    def plan(self, query: dict[str, str]) -> None:
        fault = Fault(
            query.get("kind", "status"),
            int(query.get("status", 503)),
            query.get("retry_after", ""),
            float(query.get("seconds", 0)),
            int(query.get("size", 0)),
            query.get("target", "blob"),
        )
        with self.lock:
            if "rate" in query:
                kinds = query["kind"].split(",")
                self.faults.mix = [dataclasses.replace(fault, kind=k) for k in kinds]
                self.faults.rate = float(query["rate"])
                self.faults.random.seed(int(query.get("seed", 0)))
            else:
                self.faults.queue += [fault] * int(query.get("count", 1))


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
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path.startswith(CONTROL + "corrupt/"):
            self.server.corrupt.add(url.path.rsplit("/", 1)[1])
        elif url.path == CONTROL + "faults":
            self.server.plan(query)
        elif url.path == CONTROL + "heal":
            self.server.corrupt.clear()
            with self.server.lock:
                self.server.faults = FaultPlan()
        elif url.path == CONTROL + "reset":
            with self.server.lock:
                self.server.counters = dict.fromkeys(BASE_COUNTERS, 0)
        with self.server.lock:
            body = json.dumps(self.server.counters).encode()
        self._reply(200, body)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, method: str) -> None:
        is_blob = "/blobs/" in self.path and method == "GET"
        is_manifest = "/manifests/" in self.path and method == "GET"
        self.server.count("blob_requests", is_blob)
        self.server.count("manifest_requests", "/manifests/" in self.path)
        target = "blob" if is_blob else "manifest" if is_manifest else ""
        fault = self.server.next_fault(target) if target else None
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._reply(fault.status, b'{"errors":[{"code":"UNAVAILABLE"}]}', headers)
            return
        host, port = self.server.upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        connection.request(method, self.path, headers=headers)
        response = connection.getresponse()
        if fault is not None and response.status not in (200, 206):
            fault = None  # only bodies of content are damaged
        body = response.read() if fault is not None else b""
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() in HOP_HEADERS:
                continue
            if key.lower() == "content-length" and fault is not None and fault.kind == "truncate":
                value = str(len(body) // 2)
            if key.lower() == "content-length" and fault is not None and fault.kind == "bloat":
                value = str(len(body) + fault.size)
            self.send_header(key, value)
        self.end_headers()
        digest = self.path.rsplit("/", 1)[1]
        try:
            if fault is not None:
                self._send_faulty(fault, body, is_blob, digest)
                return
            corrupt = is_blob and digest in self.server.corrupt
            while chunk := response.read(1 << 20):
                if corrupt and response.status in (200, 206):
                    chunk, corrupt = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                self._send_body(chunk, is_blob, digest)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            connection.close()

    def _send_body(self, chunk: bytes, is_blob: bool, digest: str) -> None:
        self.wfile.write(chunk)
        if is_blob:
            self.server.count("blob_bytes", len(chunk))
            self.server.count("blob:" + digest, len(chunk))

    def _send_faulty(self, fault: Fault, body: bytes, is_blob: bool, digest: str) -> None:
        half = len(body) // 2
        if fault.kind == "bloat":
            self._send_body(body + b" " * fault.size, is_blob, digest)
        elif fault.kind == "wrong" and body:
            body = body[:half] + bytes([body[half] ^ 0xFF]) + body[half + 1 :]
            self._send_body(body, is_blob, digest)
        elif fault.kind == "truncate":
            self._send_body(body[:half], is_blob, digest)
        else:
            self._send_body(body[:half] if fault.kind == "cut" else b"", is_blob, digest)
            self.wfile.flush()
            time.sleep(fault.seconds)
            self.close_connection = True


class CountingProxy:
    """Starts the proxy process, reads its counters and plans its faults."""

    def __init__(self, upstream: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.registry_proxy", upstream],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()
        self._http = httpx.Client(base_url=f"http://{self.address}", timeout=10)

    def _counters(self, action: str = "stats", **query: object) -> dict[str, int]:
        return self._http.get(CONTROL + action, params={k: str(v) for k, v in query.items()}).json()

    def reset(self) -> None:
        self._counters("reset")

    @property
    def counters(self) -> dict[str, int]:
        return self._counters()

    @property
    def blob_bytes(self) -> int:
        return self._counters()["blob_bytes"]

    @property
    def blob_requests(self) -> int:
        return self._counters()["blob_requests"]

    def corrupt(self, digest: str) -> None:
        """Serve ``digest`` with a wrong first byte in every response, until :meth:`heal`."""
        self._counters(f"corrupt/{digest}")

    def inject(self, kind: str, count: int = 1, **params: object) -> None:
        """Give the next ``count`` blob GETs fault ``kind`` (see the module docstring)."""
        assert kind in FAULT_KINDS, kind
        self._counters("faults", kind=kind, count=count, **params)

    def inject_randomly(
        self, kinds: list[str], rate: float, seed: int = 0, **params: object
    ) -> None:
        """From now on, each blob GET gets one of ``kinds`` with probability ``rate``."""
        assert set(kinds) <= set(FAULT_KINDS), kinds
        self._counters("faults", kind=",".join(kinds), rate=rate, seed=seed, **params)

    def heal(self) -> None:
        """Stop every fault and corruption."""
        self._counters("heal")

    @property
    def faults_injected(self) -> dict[str, int]:
        return {k[6:]: v for k, v in self._counters().items() if k.startswith("fault:")}

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
