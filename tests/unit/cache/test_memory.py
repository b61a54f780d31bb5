"""Blocks in memory: the LRU that lets blocks a reader passed go first, and the memory cache
built on it."""

from __future__ import annotations

from modelkitfs.cache.memory import BlockMemory, MemoryCache


def test_a_block_the_reader_passed_goes_before_older_ones() -> None:
    dropped: list[tuple[str, int]] = []
    memory = BlockMemory(3, on_drop=dropped.append)
    for index in range(3):
        memory.put(("d", index), b"x")
    memory.passed(("d", 2))
    memory.put(("d", 3), b"x")
    assert dropped == [("d", 2)]
    assert ("d", 0) in memory and ("d", 2) not in memory


def test_the_memory_cache_is_bounded_and_claims_stop_at_cached_or_claimed_blocks() -> None:
    cache = MemoryCache(max_bytes=3 * 4)
    for index in range(4):
        cache.write_block("d", 4, index, b"abcd")
    assert cache.cached_blocks("d", 4, 0, 3) == {1, 2, 3}  # the oldest went
    assert cache.read_block("d", 4, 1, 4) == bytearray(b"abcd")
    assert cache.read_block("d", 4, 1, 5) is None  # not the size expected: absent
    assert cache.claim_run("d", 4, 1, 3) is None  # block 1 is cached
    claim = cache.claim_run("d", 4, 0, 3)
    assert claim is not None and claim.held == {0}  # stops at block 1
    elsewhere = cache.claim_run("d", 4, 0, 0)
    assert elsewhere is not None and elsewhere.held == set()  # claimed elsewhere: wait
    claim.release(0)
    again = cache.claim_run("d", 4, 0, 0)
    assert again is not None and again.held == {0}
    cache.remove_blocks("d")
    assert not cache.cached_blocks("d", 4, 0, 3)


def test_pins_count_and_meta_is_kept() -> None:
    cache = MemoryCache()
    cache.pin("d", 4, 0)
    cache.pin("d", 4, 0)
    cache.unpin("d", 4, 0)
    assert cache.pinned == {("d", 4, 0): 1}
    cache.unpin("d", 4, 0)
    assert cache.pinned == {}
    cache.write_meta("d", "x.json", b"{}")
    assert cache.read_meta("d", "x.json") == b"{}" and cache.read_meta("d", "y") is None
