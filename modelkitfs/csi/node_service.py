"""The node service the plugin's shared volumes are bound from: ``modelkitfs serve`` on a root.

Told a root (``--serve-root``, a service run beside the plugin, as the DaemonSet does), the
plugin only uses it. Otherwise it starts one daemon of its own on ``STATE/kits``, in a session
of its own so that it outlives a restart of the plugin: a restarted plugin finds it serving and
keeps using it (the pods' bind mounts point into it), and starts a new one only when it is gone.
A kit idle under a pod's bind mount is unloaded like any other: the service keeps its inode
numbers and builds its tree again when the pod reads on. Whether it answers is asked of the
daemon itself (``statfs``: the kernel caches a folder's attributes, never that), with a
deadline (:mod:`modelkitfs.primitives.calls`): a stopped daemon is one that does not answer,
never one that hangs the plugin.
``python -m modelkitfs.csi.node_service`` is that daemon: settings as one JSON line on standard
input, ``ready`` on standard output once the root is mounted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
from dataclasses import asdict
from functools import partial
from pathlib import Path

from modelkitfs.csi.binds import Target, state, unmount
from modelkitfs.errors import ModelKitFSError, MountError
from modelkitfs.primitives.calls import Calls, NoAnswer
from modelkitfs.session.options import MountOptions

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
ANSWER_TIMEOUT = 5.0  # seconds the daemon has to answer whether it serves
ENTRY = "modelkitfs.csi.node_service"


class NodeService:
    def __init__(self, root: str, options: MountOptions | None, log_path: Path | None) -> None:
        """``options`` None: the service at ``root`` is someone else's, never started here."""
        self.root = os.path.abspath(root)
        self.options = options
        self.log_path = log_path
        self._lock = threading.Lock()
        self._calls = Calls()

    @property
    def owned(self) -> bool:
        return self.options is not None

    def status(self) -> Target:
        """What the root is now; :class:`NoAnswer` when its daemon does not say in time."""
        try:
            return self._calls.run(
                ANSWER_TIMEOUT,
                f"the node service at {self.root}",
                lambda _: _ask(self.root),
                key=self.root,
            )
        except NoAnswer as exc:
            where = f"its log {self.log_path}" if self.log_path else "its container's log"
            raise NoAnswer(f"{exc}: see whether its process is stopped, and {where}") from None

    def alive(self) -> bool:
        try:
            return self.status() is Target.MOUNTED
        except NoAnswer:
            return False

    def ensure(self) -> None:
        """Make sure the root is served: start the daemon when it is this plugin's to start."""
        with self._lock:
            now = self.status()
            if now is Target.MOUNTED:
                return
            if not self.owned:
                raise MountError(
                    f"the node service at {self.root} is not running: start 'modelkitfs serve "
                    f"{self.root}' (the DaemonSet's node-service container)"
                )
            if now is Target.DEAD:
                log.warning("the node service at %s had stopped: starting it again", self.root)
                unmount(self.root)
            os.makedirs(self.root, exist_ok=True)
            self._start()

    def _start(self) -> None:
        assert self.options is not None and self.log_path is not None
        settings = {"root": self.root, "options": asdict(self.options)}
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", ENTRY],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # outlives the plugin: pods' volumes point into it
            )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write((json.dumps(settings) + "\n").encode())
        process.stdin.close()
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            line = (
                process.stdout.readline().decode().strip() if selector.select(READY_TIMEOUT) else ""
            )
        process.stdout.close()
        if line == "ready":
            log.info("node service serving %s (pid %d)", self.root, process.pid)
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        raise MountError(
            f"the node service did not start at {self.root}: "
            f"{line.partition(chr(9))[2] or f'see {self.log_path}'}"
        )

    def stop(self) -> None:
        """Stop the daemon this plugin started (for tests and uninstall; never at exit)."""
        if self.owned and state(self.root) in (Target.MOUNTED, Target.DEAD):
            unmount(self.root)


def _ask(root: str) -> Target:
    with contextlib.suppress(OSError):  # a dead daemon's mount, or none: state() says which
        os.statvfs(root)  # the daemon answers this itself, never the kernel's caches
    return state(root)


def main() -> int:
    """The daemon's entry (see the module docstring)."""
    import trio

    from modelkitfs.daemon.process import configure_logging
    from modelkitfs.daemon.service import serve_kits

    settings = json.loads(sys.stdin.readline())
    options = MountOptions(**settings["options"])
    configure_logging(options.log_level)
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints go to the log, never into the report pipe

    def ready() -> None:
        report.write("ready\n")
        report.close()

    try:
        trio.run(partial(serve_kits, settings["root"], options, ready))
    except ModelKitFSError as exc:
        logging.getLogger("modelkitfs").error("%s", exc)
        if not report.closed:
            report.write(f"error\t{exc}\n")
            report.close()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
