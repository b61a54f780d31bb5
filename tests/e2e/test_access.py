"""Access patterns other than one stream, end to end: a random reader's small read brings the
rest of its cache block into the kernel's page cache (pushed, never past the file's end),
under ``mount`` and ``serve``, and parallel random readers get every byte right."""

from __future__ import annotations

import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MiB, Mounts, write
from tests.e2e.test_serve import Service
from tests.support.kitbuilder import build_modelkit
from tests.support.waiting import wait_for

SIZE = 24 * MiB + 600_001  # its last block holds 600 KB of it, its last page part of one
PAGE = 4096


@pytest.fixture(scope="module")
def random_kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[bytes, str]:
    """A kit of one 24 MiB file (a token file, read at random): its bytes and repo:tag."""
    source = tmp_path_factory.mktemp("access")
    data = np.random.default_rng(30).bytes(SIZE)
    write(source / "tokens.bin", data)
    kit = build_modelkit(source, {"manifestVersion": "1.0.0", "datasets": [{"path": "tokens.bin"}]})
    return data, publish(kit, "access/tokens")


def resident(path: Path) -> int:
    """Bytes of ``path`` in the kernel's page cache (util-linux ``fincore``)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.strip())


def pushed(folder: Path) -> int:
    return int(json.loads(os.getxattr(folder, "user.modelkitfs.stats"))["pushed_bytes"])


def read_at_random(path: Path, offset: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # the kernel reads no more
        return os.pread(f.fileno(), PAGE, offset)


def test_a_small_random_read_brings_its_block_into_the_page_cache(
    random_kit: tuple[bytes, str], mounts: Mounts
) -> None:
    data, ref = random_kit
    mountpoint = mounts.mount(ref)
    path = mountpoint / "tokens.bin"
    at = 10 * MiB + 5000
    assert resident(path) == 0
    assert read_at_random(path, at) == data[at : at + PAGE]
    wait_for(lambda: resident(path) >= MiB - PAGE, "the block around the read pushed")
    assert pushed(mountpoint) >= MiB - PAGE
    assert resident(path) <= 2 * MiB  # the block, not the file
    with open(path, "rb", buffering=0) as f:  # what the kernel holds is the file's bytes
        start = max(at - MiB, 0)
        assert os.pread(f.fileno(), 2 * MiB, start) == data[start : start + 2 * MiB]


def test_a_push_at_the_end_of_a_file_stops_at_its_end(
    random_kit: tuple[bytes, str], mounts: Mounts
) -> None:
    """The file's last block holds bytes of whatever the layer holds next: a push stops at
    the file's end (a store past it would make the kernel grow the file)."""
    data, ref = random_kit
    mountpoint = mounts.mount(ref)
    path = mountpoint / "tokens.bin"
    at = SIZE - 3000
    assert read_at_random(path, at) == data[at:]
    wait_for(lambda: pushed(mountpoint) > 0, "the file's last block pushed")
    assert path.stat().st_size == SIZE
    with open(path, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), MiB, SIZE - MiB // 2) == data[SIZE - MiB // 2 :]
        assert os.pread(f.fileno(), PAGE, SIZE) == b""


def test_parallel_random_readers_get_every_byte_right(
    random_kit: tuple[bytes, str], mounts: Mounts
) -> None:
    data, ref = random_kit
    path = mounts.mount(ref) / "tokens.bin"

    def reader(seed: int) -> int:
        rng, wrong = random.Random(seed), 0
        with open(path, "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            for _ in range(400):
                offset, length = rng.randrange(SIZE), rng.choice([1, 100, PAGE, 3 * PAGE + 7])
                wrong += os.pread(f.fileno(), length, offset) != data[offset : offset + length]
        return wrong

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(reader, range(4))) == [0, 0, 0, 0]
    assert path.read_bytes() == data


def test_serve_pushes_into_the_page_cache_of_the_kit_read(
    random_kit: tuple[bytes, str], proxy, tmp_path: Path
) -> None:
    """Under ``serve`` a kit's files have inode numbers of their own slot: the push lands in
    the file read, with its bytes."""
    data, ref = random_kit
    service = Service(tmp_path, tmp_path / "cache")
    try:
        path = service.root / proxy.address / ref / "tokens.bin"
        at = 3 * MiB + 100
        assert read_at_random(path, at) == data[at : at + PAGE]
        wait_for(lambda: resident(path) >= MiB - PAGE, "the block around the read pushed")
        with open(path, "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 2 * MiB, 2 * MiB) == data[2 * MiB : 4 * MiB]
    finally:
        service.stop()
