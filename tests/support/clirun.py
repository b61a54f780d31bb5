"""Running the ``modelkitfs`` command as a user would, and checking what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str, cache: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelkitfs.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(cache), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed command (exit 1, no traceback, nothing else)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modelkitfs: error: "), lines[0]
    return lines[0].removeprefix("modelkitfs: error: ")


def assert_one_line_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    line = one_line_error(result)
    for phrase in phrases:
        assert phrase in line, line


def read_terminal(controller: int) -> bytes:
    """All a command wrote to the pseudo-terminal whose controlling end is ``controller``,
    until the command closed its end; closes ``controller``."""
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return shown
