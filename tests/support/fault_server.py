"""A scripted fault server: raw sockets in front of a real registry, breaking HTTP on demand the
way real servers, CDNs and middleboxes do.

An HTTP library would refuse to send most of these answers (a bad status line, an over-long
header, a 206 that lies about its range), so this server writes bytes to sockets itself. Every
request is forwarded to the real registry (CNCF Distribution) unless a scripted fault is queued
for its target; then the registry's real answer is fetched and sent broken, in one of the ways
of :data:`KINDS`. It has two listeners: the registry (``address``) and, with ``redirect`` on,
an object store on 127.0.0.2 that blob GETs are redirected to, which can vanish (connections
refused) and come back on the same port. With ``auth`` on it asks for bearer tokens, which it
issues itself at ``/token`` and refuses once ``token_lifetime`` has passed.

It runs in a process of its own, so that a test blocked in a read holding the GIL (safetensors
faulting in pages of a mounted file) cannot stall it; the test scripts it over HTTP
(:class:`FaultServer`). Targets: ``blob`` (blob GETs at the registry), ``storage`` (GETs at the
object store), ``token``, ``manifest``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Any

KINDS = (
    "status",  # answer `status` (503), with Retry-After `retry_after` when given
    "reset",  # close the connection with a RST before answering
    "stall_headers",  # say nothing for `seconds`, then close
    "stall_body",  # the headers and half the body, then nothing for `seconds`, then close
    "trickle",  # the headers, then the body at `rate` bytes per second
    "bad_status",  # a status line that is not HTTP
    "long_header",  # a header line of 100,000 bytes
    "many_headers",  # 200 header lines
    "chunked",  # the real 206, its body chunked (a valid answer)
    "no_content_range",  # a 206 without Content-Range whose bytes start one byte later
    "wrong_content_range",  # a 206 for the range one byte later, saying so
    "longer",  # a 206 whose body and Content-Range run 100 bytes past the range
    "ignore_range",  # 200 with the whole blob (bytes sent counted as `whole_blob_bytes`)
    "endless",  # `status` (500) with a body that never ends
    "endless_redirect",  # a redirect to the object store with a body that never ends
)
BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "host"}
CONTROL = "/_fault/"


class State:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.healed = threading.Event()
        self.queue: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.redirect = False
        self.auth = False
        self.token_lifetime = 3600.0
        self.tokens: dict[str, float] = {}
        self.storage_port = 0

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def fault_for(self, target: str) -> dict[str, Any] | None:
        with self.lock:
            for position, fault in enumerate(self.queue):
                if fault.get("target", "blob") == target:
                    if fault.get("count", 1) <= 1:
                        del self.queue[position]
                    else:
                        fault["count"] -= 1
                    key = f"fault:{fault['kind']}"
                    self.counters[key] = self.counters.get(key, 0) + 1
                    return dict(fault)
        return None


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body

    @property
    def route(self) -> str:
        return urllib.parse.urlsplit(self.path).path


def read_request(stream: Any) -> Request | None:
    line = stream.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := stream.readline(65537)) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", 0) or 0))
    return Request(method, path, headers, body)


def head(status: int, headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        self.sock: socket.socket = self.request
        with self.server.lock:
            self.server.connections.add(self.sock)
        stream = self.sock.makefile("rb")
        try:
            while (request := read_request(stream)) is not None:
                if not self.serve(request):
                    return
        except (OSError, ValueError):
            return
        finally:
            with self.server.lock:
                self.server.connections.discard(self.sock)

    @property
    def state(self) -> State:
        return self.server.state

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def serve(self, request: Request) -> bool:
        """Answer one request; False when the connection is to be closed."""
        if request.route.startswith(CONTROL):
            return self.control(request)
        if self.server.storage:
            return self.blob(request, "storage")
        if request.route == "/token":
            return self.token(request)
        if self.state.auth and not self.authorized(request):
            realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
            match = BLOB.match(request.route) or re.match(
                r"^/v2/(?P<repo>.+)/manifests/", request.route
            )
            scope = f"repository:{match['repo']}:pull" if match else ""
            challenge = f'Bearer realm="{realm}",service="faults",scope="{scope}"'
            self.send(head(401, {"WWW-Authenticate": challenge, "Content-Length": "0"}))
            return True
        if BLOB.match(request.route) and request.method == "GET":
            if self.state.redirect:
                return self.redirect(request)
            return self.blob(request, "blob")
        target = "manifest" if "/manifests/" in request.route else "other"
        self.state.count(f"{target}_requests")
        fault = self.state.fault_for(target) if target == "manifest" else None
        return self.relay(request, fault)

    def authorized(self, request: Request) -> bool:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self.state.lock:
            issued = self.state.tokens.get(token)
        return issued is not None and time.monotonic() - issued < self.state.token_lifetime

    def token(self, request: Request) -> bool:
        self.state.count("token_requests")
        fault = self.state.fault_for("token")
        if fault is not None:
            return self.fail(fault, 503, b'{"errors": []}')
        value = f"t{time.monotonic_ns()}"
        with self.state.lock:
            self.state.tokens[value] = time.monotonic()
        body = json.dumps({"token": value, "expires_in": self.state.token_lifetime}).encode()
        self.send(head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}))
        self.send(body)
        return True

    def redirect(self, request: Request) -> bool:
        self.state.count("redirects")
        location = f"http://127.0.0.2:{self.state.storage_port}{request.route}?sig=x"
        fault = self.state.fault_for("blob")
        if fault is not None and fault["kind"] == "endless_redirect":
            self.send(head(307, {"Location": location, "Content-Length": str(1 << 40)}))
            return self.endless()
        if fault is not None:
            return self.fail(fault, 500, b"")
        self.send(head(307, {"Location": location, "Content-Length": "0"}))
        return True

    def blob(self, request: Request, target: str) -> bool:
        self.state.count(f"{target}_requests")
        fault = self.state.fault_for(target)
        status, headers, body = self.upstream(
            Request(
                "GET",
                request.route,
                {k: v for k, v in request.headers.items() if k in ("range", "authorization")},
                b"",
            )
        )
        if fault is None or status not in (200, 206):
            self.state.count(f"{target}_bytes", len(body))
            self.send(head(status, {**headers, "Content-Length": str(len(body))}))
            self.send(body)
            return True
        return self.broken(fault, request, status, headers, body)

    def broken(
        self,
        fault: dict[str, Any],
        request: Request,
        status: int,
        headers: dict[str, str],
        body: bytes,
    ) -> bool:
        kind = fault["kind"]
        start, end = parse_range(request.headers.get("range", ""), len(body))
        whole: bytes | None = None
        if kind in ("no_content_range", "wrong_content_range", "longer", "ignore_range"):
            _, _, whole = self.upstream(Request("GET", request.route, {}, b""))
        if kind == "chunked":
            self.send(head(status, {**headers, "Transfer-Encoding": "chunked"}))
            for i in range(0, len(body), 65536):
                chunk = body[i : i + 65536]
                self.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.send(b"0\r\n\r\n")
            return True
        if whole is not None:
            total = len(whole)
            if kind == "ignore_range":
                status, served, lie = 200, whole, None
            elif kind == "longer":
                served, lie = (
                    whole[start : end + 100],
                    f"bytes {start}-{min(end + 100, total) - 1}/{total}",
                )
                status = 206
            else:
                served = whole[start + 1 : end + 1]
                lie = (
                    f"bytes {start + 1}-{start + len(served)}/{total}"
                    if kind == "wrong_content_range"
                    else None
                )
                status = 206
            out = {"Content-Length": str(len(served)), "Content-Type": "application/octet-stream"}
            if lie:
                out["Content-Range"] = lie
            self.send(head(status, out))
            if kind != "ignore_range":
                self.send(served)
                return True
            # Counted as it goes: a client that has read what it wanted closes the connection.
            for i in range(0, len(served), 65536):
                self.send(served[i : i + 65536])
                self.state.count("whole_blob_bytes", len(served[i : i + 65536]))
            return True
        if kind == "stall_body":
            self.send(head(status, {**headers, "Content-Length": str(len(body))}))
            self.send(body[: len(body) // 2])
            self.state.healed.wait(fault.get("seconds", 3600))
            return False
        if kind == "trickle":
            self.send(head(status, {**headers, "Content-Length": str(len(body))}))
            rate = max(1, int(fault.get("rate", 4)))
            step = max(1, rate // 10)
            for i in range(0, len(body), step):
                if self.state.healed.is_set():
                    self.send(body[i:])
                    return True
                self.send(body[i : i + step])
                time.sleep(step / rate)
            return True
        return self.fail(fault, 500, b"")

    def fail(self, fault: dict[str, Any], default_status: int, body: bytes) -> bool:
        """The faults that need no real answer."""
        kind = fault["kind"]
        if kind == "status":
            status = int(fault.get("status", 503))
            headers = {"Content-Length": str(len(body))}
            if fault.get("retry_after"):
                headers["Retry-After"] = str(fault["retry_after"])
            self.send(head(status, headers) + body)
            return True
        if kind == "reset":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if kind == "stall_headers":
            self.state.healed.wait(fault.get("seconds", 3600))
            return False
        if kind == "bad_status":
            self.send(b"HTTP/1.1 two-hundred OK\r\n\r\n")
            return False
        if kind == "long_header":
            self.send(b"HTTP/1.1 206 Partial Content\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
            return False
        if kind == "many_headers":
            lines = [(f"X-Header-{i}", "v") for i in range(200)]
            self.send(head(206, lines))
            return False
        if kind == "endless":
            self.send(
                head(int(fault.get("status", default_status)), {"Content-Length": str(1 << 40)})
            )
            return self.endless()
        raise ValueError(f"fault {kind} does not apply here")

    def endless(self) -> bool:
        chunk = b" " * 65536
        while not self.state.healed.is_set():
            self.send(chunk)
            self.state.count("endless_bytes", len(chunk))
        return False

    def relay(self, request: Request, fault: dict[str, Any] | None) -> bool:
        if fault is not None:
            return self.fail(fault, 503, b"")
        status, headers, body = self.upstream(request)
        self.send(head(status, {**headers, "Content-Length": str(len(body))}))
        if request.method != "HEAD":
            self.send(body)
        return True

    def upstream(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.state.upstream, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k not in HOP}
            connection.request(
                request.method, request.path, body=request.body or None, headers=headers
            )
            response = connection.getresponse()
            body = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in HOP and k.lower() != "content-length"
            }
            return response.status, kept, body
        finally:
            connection.close()

    def control(self, request: Request) -> bool:
        verb = request.route[len(CONTROL) :]
        document = json.loads(request.body or b"{}")
        state = self.state
        with state.lock:
            if verb == "script":
                state.healed.clear()
                state.queue += document["faults"]
            elif verb == "set":
                for key, value in document.items():
                    setattr(state, key, value)
            elif verb == "heal":
                state.queue.clear()
                state.healed.set()
            elif verb == "reset":
                state.counters.clear()
        if verb == "storage":
            self.server.owner.storage_up(bool(document["up"]))
        with state.lock:
            body = json.dumps({"counters": state.counters, "queued": len(state.queue)}).encode()
        self.send(head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}))
        self.send(body)
        return True


def parse_range(header: str, length: int) -> tuple[int, int]:
    match = re.match(r"bytes=(\d+)-(\d*)", header)
    if match is None:
        return 0, length
    start = int(match[1])
    return start, (int(match[2]) + 1 if match[2] else start + length)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: State, owner: Main, *, storage: bool):
        self.state, self.owner, self.storage = state, owner, storage
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(address, Handler)

    def vanish(self) -> None:
        """Stop listening and cut every open connection, as a host that goes away does."""
        self.shutdown()
        self.server_close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class Main:
    def __init__(self, upstream: str) -> None:
        self.state = State(upstream)
        self.registry = Server(("127.0.0.1", 0), self.state, self, storage=False)
        self.storage: Server | None = None
        self.storage_up(True)

    def storage_up(self, up: bool) -> None:
        if up and self.storage is None:
            self.storage = Server(
                ("127.0.0.2", self.state.storage_port), self.state, self, storage=True
            )
            self.state.storage_port = self.storage.server_address[1]
            threading.Thread(target=self.storage.serve_forever, args=(0.05,), daemon=True).start()
        elif not up and self.storage is not None:
            self.storage.vanish()
            self.storage = None


class FaultServer:
    """The test's handle on a fault server process in front of ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fault_server", upstream],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        if not ready or ready[0] != "READY":
            self.close()
            raise RuntimeError("the fault server did not start")
        self.address = f"127.0.0.1:{ready[1]}"

    def _call(self, verb: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
        connection = http.client.HTTPConnection(self.address, timeout=30)
        try:
            body = json.dumps(document or {})
            connection.request(
                "POST", CONTROL + verb, body=body, headers={"Content-Length": str(len(body))}
            )
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def script(self, kind: str, count: int = 1, target: str = "blob", **params: Any) -> None:
        """Break the next ``count`` requests to ``target`` in the way ``kind`` says."""
        assert kind in KINDS, kind
        self._call(
            "script", {"faults": [{"kind": kind, "count": count, "target": target, **params}]}
        )

    def set(self, **settings: Any) -> None:
        """``redirect``, ``auth``, ``token_lifetime``."""
        self._call("set", settings)

    def storage(self, up: bool) -> None:
        """Take the object store away (connections refused) or bring it back, same port."""
        self._call("storage", {"up": up})

    def heal(self) -> None:
        """Drop every queued fault and end those in progress (stalls, trickles, endless bodies)."""
        self._call("heal")

    def reset(self) -> None:
        self._call("reset")

    @property
    def counters(self) -> dict[str, int]:
        return self._call("counters")["counters"]

    def count(self, key: str) -> int:
        return self.counters.get(key, 0)

    @property
    def queued(self) -> int:
        return int(self._call("counters")["queued"])

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


def main() -> None:
    server = Main(sys.argv[1])
    print("READY", server.registry.server_address[1], flush=True)
    server.registry.serve_forever(0.05)


if __name__ == "__main__":
    main()
