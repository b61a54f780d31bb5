"""How the commands write: sizes for people, aligned tables, JSON, and one line per error.

Errors a user can act on (:class:`~modelkitfs.errors.ModelKitFSError` and the OS errors of
paths they gave) are shown as ``modelkitfs: error: ...`` on one line; a closed pipe on standard
output (``modelkitfs ls ... | head``) ends the command quietly, as it ends ``ls``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelkitfs.errors import ModelKitFSError
from modelkitfs.reference import parse_reference

PATIENCE = 1.0  # seconds before a terminal is told the command waits
EXIT_PIPE = 128 + 13  # as a process killed by SIGPIPE: what 'ls | head' leaves ls with

_EXPECTED = (ModelKitFSError, OSError)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def share(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a whole percentage; 100 % only when all of it."""
    if not whole:
        return "100%"
    percent = int(100 * part / whole)
    return f"{99 if percent == 100 and part < whole else percent}%"


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))


def expected_failure(exc: BaseException) -> BaseException | None:
    """The error to show of ``exc``: itself when expected, or the first expected error of an
    exception group (tasks failing together) made only of such errors; else None (a bug)."""
    if isinstance(exc, _EXPECTED):
        return exc
    inner = getattr(exc, "exceptions", None)  # an exception group (Python 3.11 and later)
    if isinstance(inner, tuple):
        found = [expected_failure(one) for one in inner]
        if found and all(found):
            return found[0]
    return None


def message_of(exc: BaseException) -> str:
    """One line: an OS error as its reason and the path it names, not ``[Errno 2] ...``."""
    if isinstance(exc, OSError) and not isinstance(exc, ModelKitFSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}"
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: BaseException) -> int:
    print(f"modelkitfs: error: {message_of(exc)}", file=sys.stderr)
    return 1


def stdout_closed() -> bool:
    """Whether whoever read standard output has gone (a pipe whose reader closed it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True


def quiet_exit_on_closed_pipe() -> int:
    """Standard output has gone: write nothing more, not even at the interpreter's exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE


@contextlib.contextmanager
def patience(reference: str, timeout: float, after: float = PATIENCE) -> Iterator[None]:
    """On a terminal, one line once opening a kit takes a while: a registry that never answers
    would otherwise leave the user looking at nothing until the timeout ends it."""
    if not sys.stderr.isatty():
        yield
        return
    try:
        ref = parse_reference(reference)
        where = "the kit" if ref.is_layout else f"registry {ref.registry}"
    except ModelKitFSError:
        where = "the kit"
    done = threading.Event()

    def say() -> None:
        if not done.wait(after):
            print(
                f"modelkitfs: waiting for {where} (up to {timeout:g} s, --timeout)...",
                file=sys.stderr,
                flush=True,
            )

    thread = threading.Thread(target=say, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class OneLine(logging.Formatter):
    """``modelkitfs: warning: ...``, as the command's errors are written."""

    def format(self, record: logging.LogRecord) -> str:
        return f"modelkitfs: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def show_warnings() -> None:
    """Warnings of the libraries (a cache that cannot be written, say) as one line each on
    stderr; not for ``mount --foreground``, which logs everything itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    handler.setLevel(logging.WARNING)
    package = logging.getLogger("modelkitfs")
    package.addHandler(handler)
    package.setLevel(logging.WARNING)
    package.propagate = False
