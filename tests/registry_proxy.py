"""A proxy of ours in front of the real registry: counts what clients download.

Every test that asserts "bytes fetched" reads the counters here, measured at the server side of
the connection, so nothing the daemon reports about itself is trusted.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.blob_bytes = 0
        self.blob_requests = 0
        self.manifest_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self, "GET")

            def do_HEAD(self) -> None:
                proxy._forward(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.blob_bytes = self.blob_requests = self.manifest_requests = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        host, port = self.upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        connection.request(method, handler.path, headers=headers)
        response = connection.getresponse()
        is_blob = "/blobs/" in handler.path and method == "GET"
        with self.lock:
            self.blob_requests += is_blob
            self.manifest_requests += "/manifests/" in handler.path
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                handler.send_header(key, value)
        handler.end_headers()
        try:
            while chunk := response.read(1 << 20):
                handler.wfile.write(chunk)
                if is_blob:
                    with self.lock:
                        self.blob_bytes += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            connection.close()
