"""The mount daemon's process: how it is started, what it reports, where it logs.

:func:`main` is what :func:`modelkitfs.mount.mount` starts in the background. It reads what to
mount from its standard input (a pipe: options, a proxy's credentials among them, never appear
on a command line that every user can read), takes the title ``modelkitfs: REFERENCE on
MOUNTPOINT`` (``ps``, ``pgrep modelkitfs``), reports on standard output, once, either ``ready``
or ``error<TAB>message``, then logs to the log file only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import sys
from functools import partial
from pathlib import Path
from typing import TextIO

import setproctitle
import trio

from modelkitfs.daemon.service import serve_kits
from modelkitfs.daemon.serving import serve_modelkit
from modelkitfs.errors import ModelKitFSError
from modelkitfs.session.options import MountOptions

log = logging.getLogger("modelkitfs")

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


def process_title(reference: str, mountpoint: str) -> str:
    return f"modelkitfs: {reference} on {mountpoint}"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s modelkitfs[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def main() -> int:
    """Entry of the background daemon (see the module docstring for the protocol)."""
    _one_malloc_arena()
    arguments = pickle.loads(sys.stdin.buffer.read())  # from our parent, through a pipe
    options: MountOptions = arguments["options"]
    setproctitle.setproctitle(process_title(arguments["reference"], arguments["mountpoint"]))
    configure_logging(options.log_level)
    report = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints go to the log, never into the report pipe

    def ready() -> None:
        log.info("mounted %s at %s", arguments["reference"], arguments["mountpoint"])
        report.write("ready\n")
        report.close()

    def warn(warning: str) -> None:
        report.write(f"warning\t{' '.join(warning.split())}\n")
        report.flush()

    try:
        if (service := arguments.get("service")) is not None:  # modelkitfs serve ROOT
            trio.run(
                partial(serve_kits, arguments["mountpoint"], options, ready, **service),
            )
        else:
            trio.run(
                serve_modelkit,
                arguments["reference"],
                arguments["mountpoint"],
                options,
                ready,
                arguments["log"],
                warn,
            )
    except ModelKitFSError as exc:
        log.error("%s", exc)
        _report_error(report, str(exc), type(exc).__name__)
        return 1
    except Exception as exc:
        log.exception("daemon failed")
        _report_error(report, f"unexpected failure: {exc!r} (see the log for details)")
        return 1
    return 0


def _one_malloc_arena() -> None:
    """Worker threads allocate the buffers of range requests and the trio thread frees them;
    with glibc's arena per thread the freed memory stays behind in each; one arena costs no
    speed (README, Speed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def _report_error(report: TextIO, message: str, kind: str = "") -> None:
    """Tell the waiting parent the error's message and ``kind`` (its class's name, for
    :class:`~modelkitfs.mount.DaemonError`); closed at once, as nothing flushes it at a hard
    exit."""
    if not report.closed:
        report.write(f"error\t{kind}\t{message}\n")
        report.close()


def log_path(cache_dir: str) -> Path:
    return Path(cache_dir) / "logs" / "modelkitfs.log"
