"""The plugin's command line: what it refuses before serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkitfs.csi import main
from modelkitfs.csi.plugin import _socket_path


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("unix:///csi/csi.sock", "/csi/csi.sock"), ("unix://csi/csi.sock", "/csi/csi.sock")],
)
def test_endpoints(endpoint: str, path: str) -> None:
    assert _socket_path(endpoint) == path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--endpoint", "tcp://0.0.0.0:10000"],
            "--endpoint 'tcp://0.0.0.0:10000' is not a unix socket: write unix:///csi/csi.sock",
        ),
        (
            ["--endpoint", "unix:///x.sock", "--timeout", "0"],
            "--timeout must be a positive number of seconds, not 0.0",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, arguments: list[str], message: str
) -> None:
    state = ["--state-dir", str(tmp_path), "--node-id", "n"]
    assert main([*arguments, *state]) == 2
    assert [r.getMessage() for r in caplog.records] == [message]
