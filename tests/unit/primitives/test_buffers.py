"""Aligned buffers: where direct I/O may read into them, and what an unzeroed one holds."""

from __future__ import annotations

from modelkitfs.primitives.buffers import ALIGN, aligned, is_aligned


def test_a_buffer_is_aligned_writable_and_of_its_size() -> None:
    for size in (ALIGN, 3 * ALIGN, 1024 * 1024 + ALIGN):
        for zeroed in (True, False):
            buffer = aligned(size, zeroed=zeroed)
            assert len(buffer) == size and not buffer.readonly
            assert is_aligned(buffer)
            buffer[:] = b"x" * size  # a direct read may fill every byte
            assert bytes(buffer[-3:]) == b"xxx"


def test_a_zeroed_buffer_holds_zeros_even_where_freed_memory_held_bytes() -> None:
    for _ in range(8):  # memory freed full of bytes, which the allocator hands out again
        dirty = aligned(64 * ALIGN, zeroed=False)
        dirty[:] = b"\xaa" * len(dirty)
        del dirty
        assert bytes(aligned(64 * ALIGN)) == bytes(64 * ALIGN)


def test_is_aligned_refuses_what_direct_io_cannot_use() -> None:
    assert not is_aligned(bytes(2 * ALIGN))  # read-only
    assert not is_aligned(bytearray(ALIGN // 2))  # shorter than a page
    assert not is_aligned(aligned(2 * ALIGN)[1:])  # off the page boundary
