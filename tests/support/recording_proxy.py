"""A proxy in front of a registry that records the ``Authorization`` of every request: which
credentials reached which host (each proxy is a host of its own, ``127.0.0.1:<port>``).

It runs in threads of the test process, forwards GET and HEAD as they come (the registry's
401 challenges included) and relays the answers whole.
"""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler

from tests.support.threaded_servers import LoopbackHTTPServer, ServedInThreads

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class RecordingProxy(ServedInThreads):
    """Forwards to ``upstream`` (plain-HTTP ``host:port``); ``authorizations`` holds each
    request's header (None when it had none), in order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.authorizations: list[str | None] = []
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self.address = f"127.0.0.1:{server.server_address[1]}"
        self._serve(server)

    def reset(self) -> None:
        with self.lock:
            self.authorizations.clear()

    def logins(self) -> set[str]:
        """The ``user:password`` pairs of the Basic headers received (Bearer ones as such)."""
        with self.lock:
            return {_decoded(header) for header in self.authorizations if header is not None}


def _decoded(header: str) -> str:
    scheme, _, value = header.partition(" ")
    return base64.b64decode(value).decode() if scheme.lower() == "basic" else header


class _Server(LoopbackHTTPServer):
    owner: RecordingProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")

    def _forward(self, method: str) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.authorizations.append(self.headers.get("Authorization"))
        host, port = owner.upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            connection.request(method, self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            connection.close()
