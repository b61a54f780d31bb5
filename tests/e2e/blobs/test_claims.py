"""Download claims that cannot stop a read (issue 29, case 5), through ``modelkitfs cat`` and a
real registry: a process stopped while it downloads (Ctrl-Z) held its claims for ever, and every
other reader of the blob waited on them until its timeout; so did a read lock that any local
user could take on a lock file. The reader now overtakes a claim held too long and ignores read
locks, and the cache's folders let no other user open its lock files."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkitfs.cache import DiskCache
from modelkitfs.cache.locks import PIN_BASE
from tests.conftest import MiB, one_file_kit
from tests.support.waiting import wait_for

NOBODY = 65534
_FLOCK = "hhqqi4x"  # struct flock, as the cache's locks use it


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish, proxy) -> tuple[str, bytes, str]:
    """A kit of one 8 MiB file, through the counting proxy: (reference, bytes, layer digest)."""
    data, artifact = one_file_kit(tmp_path_factory.mktemp("claims"), 8 * MiB + 3, 29)
    layer = json.loads(artifact.manifest)["layers"][0]["digest"]
    return f"{proxy.address}/{publish(artifact, 'claims/one')}", data, layer


def modelkitfs(*args: str, cache: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelkitfs.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(cache)},
    )


def cat(reference: str, cache: Path, timeout: int) -> tuple[bytes, str, float]:
    """``modelkitfs cat --timeout`` of the kit's file: its output, its warnings and how long
    it took (for the report; no bound is asserted)."""
    started = time.monotonic()
    process = modelkitfs(
        "cat", "--plain-http", "--timeout", str(timeout), reference, "weights.bin", cache=cache
    )
    out, err = process.communicate(timeout=120)
    took = time.monotonic() - started
    assert process.returncode == 0, err.decode()
    return out, err.decode(), took


def warmed(reference: str, cache: Path) -> None:
    """The kit's manifest, config and tar index in the cache (``ls``), its file's blocks not
    (nor its lock file): the next command's first blob request is for the file's bytes."""
    listed = modelkitfs("ls", "--plain-http", reference, cache=cache)
    out, err = listed.communicate(timeout=120)
    assert listed.returncode == 0 and out.split() == [b"Kitfile", b"weights.bin"], err


def test_a_reader_overtakes_the_claims_of_a_stopped_process(kit, faulty, tmp_path: Path) -> None:
    """A ``cat`` stopped while its request hangs holds its claims; a second ``cat`` waits for
    them half its timeout, then downloads the blocks itself."""
    reference, data, layer = kit
    cache = tmp_path / "cache"
    warmed(reference, cache)
    faulty.inject("stall", seconds=30)  # the first cat's request: its claims stay held
    holder = modelkitfs(
        "cat", "--plain-http", "--timeout", "300", reference, "weights.bin", cache=cache
    )
    try:
        wait_for(lambda: faulty.faults_injected.get("stall"), "the first cat's request")
        os.kill(holder.pid, signal.SIGSTOP)
        assert claimed(DiskCache(cache).lock_path(layer, MiB)), "the stopped cat holds no claim"
        out, err, took = cat(reference, cache, timeout=4)
        assert out == data
        assert f"of blob {layer} have been claimed by another download" in err
        print(f"read with a stopped holder in {took:.1f} s (--timeout 4)")
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.communicate()


def claimed(lock_file: Path) -> bool:
    """Whether some process holds a download claim (a write lock) on the lock file."""
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, PIN_BASE, 0)
        held = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
        return held == fcntl.F_WRLCK
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_by_nobody(lock_file: Path) -> Iterator[list[str]]:
    """A process of uid 65534 that opens ``lock_file`` as it can and, when it can read it,
    read-locks every block's byte, until the block ends; yields what it could do."""
    status, report = os.pipe()
    done, wait = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then out
        try:
            os.close(status)
            os.close(wait)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            words = []
            for name, flags in (("write", os.O_RDWR), ("read", os.O_RDONLY)):
                try:
                    fd = os.open(lock_file, flags)
                except PermissionError:
                    words.append(f"no-{name}")
                    continue
                words.append(f"opened-{name}")
                lock = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, PIN_BASE, 0)
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
                words.append("read-locked")
                break
            os.write(report, " ".join(words).encode() + b"\n")
            os.close(report)
            os.read(done, 1)  # until the parent closes its end
        except BaseException as exc:
            os.write(report, repr(exc).encode() + b"\n")
        finally:
            os._exit(0)
    os.close(report)
    os.close(done)
    try:
        with os.fdopen(status) as answer:
            yield answer.readline().split()
    finally:
        os.close(wait)
        os.waitpid(pid, 0)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user may enter (pytest's are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="modelkitfs-claims-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="takes another uid")
def test_a_lock_of_another_user_stops_no_read(kit, faulty, open_folder: Path) -> None:
    """A fresh cache's lock files cannot be opened by another user at all; in a cache whose
    modes an earlier version set (folders 0755, lock files 0644) another user can read-lock
    them, and that is no claim: root's read goes on."""
    reference, data, layer = kit
    cache = open_folder / "cache"
    warmed(reference, cache)
    claim = DiskCache(cache).claim_run(layer, MiB, 0, 0)  # the lock file, as a read makes it
    assert claim is not None
    claim.close()
    lock_file = DiskCache(cache).lock_path(layer, MiB)
    with held_by_nobody(lock_file) as could:
        assert could == ["no-write", "no-read"]
    for path in [cache, *cache.rglob("*")]:  # as an earlier version left them
        path.chmod(0o755 if path.is_dir() else 0o644)
    with held_by_nobody(lock_file) as could:
        assert could == ["no-write", "opened-read", "read-locked"]
        out, err, took = cat(reference, cache, timeout=4)
        assert out == data
        assert "claimed by another download" not in err  # not waited for, not overtaken
        print(f"read under another user's read lock in {took:.1f} s (--timeout 4)")
    assert cache.joinpath("locks").stat().st_mode & 0o777 == 0o700  # closed by the writer
