"""How the CLI writes: shares that say 100 % only when all is there, errors as one line."""

from __future__ import annotations

import errno
import sys

from modelkitfs.cli.output import expected_failure, human, message_of, share
from modelkitfs.errors import ModelKitFSError

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:
    from exceptiongroup import BaseExceptionGroup


def test_share_reaches_100_only_when_whole() -> None:
    assert share(0, 10) == "0%"
    assert share(999, 1000) == "99%"
    assert share(99999, 100000) == "99%"
    assert share(10, 10) == "100%"
    assert share(0, 0) == "100%"


def test_human_sizes() -> None:
    assert [human(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.5 MiB",
    ]


def test_errors_are_one_line() -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/var/cache/x")
    assert message_of(denied) == "/var/cache/x: permission denied"
    assert message_of(ModelKitFSError("two\nlines")) == "two lines"
    group = BaseExceptionGroup("tasks", [ModelKitFSError("first"), ModelKitFSError("second")])
    assert str(expected_failure(group)) == "first"
    assert expected_failure(BaseExceptionGroup("tasks", [KeyError("bug")])) is None
