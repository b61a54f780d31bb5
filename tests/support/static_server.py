"""nginx on a free loopback port, serving a folder: the object storage behind a registry.

Production registries answer a blob GET with a redirect to object storage or a CDN, which
serves the bytes with ``sendfile`` at a small fraction of a registry's CPU. Distribution does the
same with its ``redirect`` storage middleware (see ``running_registry(redirect=...)``); this is
the static server the redirects point at. It runs as the current user, with every file it
writes (pid, logs, temporary bodies) under its own folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

CONFIG = """
{user}
daemon off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format counted '$request_method $uri $status $body_bytes_sent';
    access_log {base}/access.log counted;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(base: Path, root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on loopback; yields ``host:port``. Its access log, one line
    per request (method, path, status, body bytes), is ``base/access.log``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is not installed: run scripts/setup")
    base.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = base / "nginx.conf"
    # Run as root, nginx's workers would switch to nobody, who may not read the folder.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    config.write_text(CONFIG.format(user=user, base=base, port=port, root=root))
    process = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(base)],
        stdout=subprocess.DEVNULL,
        stderr=open(base / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(base / 'stderr.log').read_text()}")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
