"""HTTP servers of ours run in daemon threads of the test process, for as long as a test needs."""

from __future__ import annotations

import threading
from http.server import HTTPServer, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per connection. The listen backlog is socketserver's 5 otherwise: a client
    opening a dozen connections at once (parallel range requests) had some of them dropped and
    retried by the kernel a second later, a stall no real registry or object store adds."""

    daemon_threads = True
    request_queue_size = 128


class ServedInThreads:
    """Serves ``servers`` until closed; a context manager."""

    def _serve(self, *servers: HTTPServer) -> None:
        self._servers = servers
        self._threads = [
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            for server in servers
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
