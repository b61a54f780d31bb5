"""Block files read into unzeroed buffers: only the file's own bytes ever come back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelkitfs.cache import blockfile
from modelkitfs.cache.blockfile import read_into_buffer
from modelkitfs.primitives.buffers import ALIGN, aligned


def dirty_memory(size: int) -> None:
    """Leave freed memory full of a byte no file here holds, for the allocator to reuse."""
    for _ in range(8):
        buffer = aligned(size, zeroed=False)
        buffer[:] = b"\xaa" * size


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [1, ALIGN - 1, ALIGN + 8, 1024 * 1024 + 8])
def test_a_file_reads_back_as_exactly_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool, size: int
) -> None:
    if not direct:  # as on a file system without direct I/O
        monkeypatch.setattr(
            blockfile, "_open_direct", lambda path, flags: (os.open(path, flags), False)
        )
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "block"
    path.write_bytes(data)
    dirty_memory(-(-size // ALIGN) * ALIGN + ALIGN)
    found = read_into_buffer(path)
    assert found is not None
    assert bytes(found[0]) == data  # no byte past the file's end, none of the freed memory


def test_a_file_cut_short_as_it_is_read_gives_only_what_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "block"
    path.write_bytes(b"b" * (3 * ALIGN))
    real_fstat = os.fstat

    def fstat_then_cut(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        os.truncate(path, ALIGN)  # another process cuts it after its size was taken
        return info

    monkeypatch.setattr(blockfile.os, "fstat", fstat_then_cut)
    dirty_memory(4 * ALIGN)
    found = read_into_buffer(path)
    assert found is not None and bytes(found[0]) == b"b" * ALIGN


def test_an_absent_file_is_none(tmp_path: Path) -> None:
    assert read_into_buffer(tmp_path / "absent") is None
