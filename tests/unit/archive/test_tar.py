"""The tar index against kit's Go writer, other writers, and hostile archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkitfs.archive import EntryKind, LayerIndex, tar
from modelkitfs.archive.index import normalize_name
from modelkitfs.archive.tar import build_tar_index, parse_pax
from modelkitfs.errors import ArchiveError
from tests.support.kitbuilder import empty_files_tar, go_tar, other_tar, pax_record


class BytesSource:
    """An in-memory layer that counts the range requests the index builder makes: ``reads``
    all of them, ``dense`` those through the cache, where bytes fetched (or on their way) once
    cost no second request. Each request takes ``latency`` seconds."""

    def __init__(self, data: bytes, latency: float = 0.0) -> None:
        self.data = data
        self.digest = "sha256:" + "0" * 64
        self.size = len(data)
        self.latency = latency
        self.cached = True
        self.reads: list[tuple[int, int]] = []
        self.dense: list[tuple[int, int]] = []
        self.fetched_blocks: set[int] = set()  # of 512 bytes
        self.in_flight = self.most_in_flight = 0

    async def read_sparse(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await trio.sleep(self.latency)
        self.in_flight -= 1
        return self.data[offset : offset + length]

    async def read(self, offset: int, length: int) -> bytes:
        blocks = set(range(offset // 512, -(-min(offset + length, self.size) // 512)))
        if blocks <= self.fetched_blocks:
            return self.data[offset : offset + length]
        self.fetched_blocks |= blocks
        self.dense.append((offset, length))
        return await self.read_sparse(offset, length)


def index_of(
    data: bytes, latency: float = 0.0, *, cached: bool = True
) -> tuple[LayerIndex, BytesSource]:
    source = BytesSource(data, latency)
    source.cached = cached
    # Virtual time: requests of the same moment overlap however slow the machine is.
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(build_tar_index, source, clock=clock), source


def small_files_tar(folder: Path, count: int, size: int) -> bytes:
    members = []
    for i in range(count):
        path = folder / f"f{i:05}"
        path.write_bytes(b"x" * size)
        members.append((path.name, path))
    return go_tar(members)


def with_field(header: bytes, start: int, value: bytes, checksum_delta: int = 0) -> bytes:
    """``header`` with bytes ``value`` at ``start`` and its checksum made right again (then
    moved by ``checksum_delta``)."""
    block = bytearray(header[:512])
    block[start : start + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) + checksum_delta)
    return bytes(block) + header[512:]


@pytest.fixture
def tree(tmp_path: Path) -> list[tuple[str, Path]]:
    long_dir = "d" * 90 + "/" + "e" * 90
    files = {
        "model/weights.bin": b"w" * 5000,
        f"{long_dir}/{'f' * 99}": b"long",
        "données/résumé.txt": "été".encode(),
        "x/" + "g" * 120: b"too long to split",
    }
    members = []
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in sorted(tmp_path.rglob("*")):
        members.append((path.relative_to(tmp_path).as_posix(), path))
    return members


@pytest.mark.parametrize("style", ["go", "gnu", "pax"])
def test_every_member_at_its_offset(tree: list[tuple[str, Path]], style: str) -> None:
    data = go_tar(tree) if style == "go" else other_tar(tree, style)
    index, _ = index_of(data)
    by_path = {e.path: e for e in index.entries}
    assert set(by_path) == {name for name, _ in tree}
    for name, source in tree:
        entry = by_path[name]
        if source.is_dir():
            assert entry.kind is EntryKind.DIRECTORY
        else:
            assert entry.kind is EntryKind.FILE
            assert data[entry.offset : entry.offset + entry.size] == source.read_bytes()
        assert entry.mode == source.stat().st_mode & 0o7777


def test_round_trips_through_json(tree: list[tuple[str, Path]]) -> None:
    index, _ = index_of(go_tar(tree))
    assert LayerIndex.from_json(index.to_json()) == index


def test_many_small_files_cost_few_reads(tmp_path: Path) -> None:
    index, source = index_of(small_files_tar(tmp_path, 2000, 100))
    assert len(index.entries) == 2000
    assert len(source.reads) <= 12, source.reads  # most of them in parallel


def test_headers_back_to_back_are_fetched_ahead_in_parallel_through_the_cache(
    tmp_path: Path,
) -> None:
    index, source = index_of(small_files_tar(tmp_path, 3000, 1000), latency=0.01)
    assert len(index.entries) == 3000
    assert source.most_in_flight > 2  # one window read, others fetched ahead
    sparse = sorted(read for read in source.reads if read not in source.dense)
    tail = (source.size - tar.MIN_WINDOW, tar.MIN_WINDOW)
    assert sparse == [(0, tar.MIN_WINDOW), tail]  # then everything through the cache


def test_big_file_costs_one_header_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(8 * 1024 * 1024))
    small = tmp_path / "small"
    small.write_bytes(b"s")
    index, source = index_of(go_tar([("big", big), ("small", small)]), latency=0.01)
    assert [e.path for e in index.entries] == ["big", "small"]
    assert sum(length for _, length in source.reads) < 512 * 1024
    assert not source.dense
    # The first window and the last, at once: the header after the big file and the end of
    # the archive are in the last, so the walk costs one round trip.
    assert len(source.reads) == 2 and source.most_in_flight == 2, source.reads


def test_pax_global_header_applies_to_later_members() -> None:
    """A global record holds for every later member unless its own header says otherwise
    (a record the index keeps, ``path``, so that the test fails when it is not applied)."""
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "global.txt"}
    ) as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    data = out.getvalue()
    index, _ = index_of(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == ["global.txt"]  # as Python's reader applies it
    assert [e.path for e in index.entries] == ["global.txt"]
    entry = index.entries[0]
    assert data[entry.offset : entry.offset + entry.size] == b"abc"


def test_a_source_whose_reads_are_not_cached_is_not_fetched_ahead(tmp_path: Path) -> None:
    index, source = index_of(small_files_tar(tmp_path, 3000, 1000), latency=0.001, cached=False)
    assert len(index.entries) == 3000
    assert source.most_in_flight == 1  # a gzip stream keeps a few chunks: they would be lost


@pytest.mark.timeout(20)  # a negative size looped forever
@pytest.mark.parametrize("size", [b"-1000\0", b"+7\0", b"0o17\0", b"1_0\0"])
def test_a_size_that_is_not_octal_digits_is_refused(
    tree: list[tuple[str, Path]], size: bytes
) -> None:
    data = with_field(go_tar(tree), 124, size.ljust(12, b"\0"))
    with pytest.raises(ArchiveError, match="size"):
        index_of(data)


@pytest.mark.parametrize("delta", [65521, -65521, 131042])
def test_a_checksum_off_by_a_multiple_of_65521_is_wrong(
    tree: list[tuple[str, Path]], delta: int
) -> None:
    with pytest.raises(ArchiveError, match="checksum"):
        index_of(with_field(go_tar(tree), 0, b"", checksum_delta=delta))


def test_corrupt_header_is_an_archive_error(tree: list[tuple[str, Path]]) -> None:
    data = bytearray(go_tar(tree))
    data[100] ^= 0x01  # a mode digit: the checksum no longer matches
    with pytest.raises(ArchiveError, match="checksum"):
        index_of(bytes(data))


def test_truncated_archive_is_an_archive_error(tree: list[tuple[str, Path]]) -> None:
    data = go_tar(tree)
    with pytest.raises(ArchiveError, match="truncated"):
        index_of(data[: 512 * 3 + 100])


def test_escaping_and_link_members_never_enter_the_index(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name in ("../evil", "/etc/passwd", "ok/../../evil2", "good"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        archive.addfile(link)
    index, _ = index_of(out.getvalue())
    assert {(e.path, e.kind) for e in index.entries} == {
        ("good", EntryKind.FILE),
        ("link", EntryKind.SYMLINK),
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("./a/b/", "a/b"),
        ("a//b", "a/b"),
        (".", ""),
        ("./", ""),
        ("../x", None),
        ("/abs", None),
        ("a/../../x", None),
        ("a/./b", "a/b"),
    ],
)
def test_normalize_name(name: str, expected: str | None) -> None:
    assert normalize_name(name) == expected


def test_parse_pax_records() -> None:
    records = pax_record("path", "d/été") + pax_record("size", "9999999999")
    assert parse_pax(records) == {"path": "d/été", "size": "9999999999"}
    with pytest.raises(ArchiveError):
        parse_pax(b"99 path=x\n")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_safe_or_refused(data: bytes) -> None:
    """A hostile archive is indexed safely or refused with an ArchiveError, nothing else."""
    try:
        index, _ = index_of(data)
    except ArchiveError:
        return
    for entry in index.entries:
        assert normalize_name(entry.path) == entry.path
        assert entry.size >= 0 and entry.offset >= 0
        if entry.kind is EntryKind.FILE:
            assert entry.offset + entry.size <= len(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    assert_safe_or_refused(data)


@FUZZ
@given(st.data())
def test_fuzz_damaged_archives(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "d").mkdir(exist_ok=True)
    (root / "d" / "f.bin").write_bytes(b"x" * 700)
    (root / ("é" * 60)).write_bytes(b"pax name")
    members = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*"))]
    archive = bytearray(go_tar(members))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(archive) - 1))
        archive[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(archive)))
    assert_safe_or_refused(bytes(archive[:cut]))


def test_too_many_entries_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tar, "MAX_ENTRIES", 10)
    assert len(index_of(empty_files_tar(f"f{i}" for i in range(10)))[0].entries) == 10
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        index_of(empty_files_tar(f"f{i}" for i in range(11)))
