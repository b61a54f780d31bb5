"""Buffers that direct I/O can use: block-sized reads from the network land in them, and the
cache writes them to disk by DMA, without a copy through the page cache.

Direct I/O (``O_DIRECT``) wants a buffer whose address, length and file offset are multiples
of the disk's sector; ``ALIGN``, a page, suits every disk. An anonymous map is page aligned
but each of its pages costs a fault when first touched (1 ms of CPU per MiB, measured on this
project's machines), so :func:`aligned` cuts an aligned view out of a bytearray a page larger,
memory the allocator reuses.
"""

from __future__ import annotations

import ctypes

Buffer = bytes | bytearray | memoryview

ALIGN = 4096


_uninitialized = ctypes.pythonapi.PyByteArray_FromStringAndSize
_uninitialized.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_uninitialized.restype = ctypes.py_object


def aligned(size: int, *, zeroed: bool = True) -> memoryview:
    """A writable buffer of ``size`` bytes at an ``ALIGN``-aligned address. ``zeroed=False``
    skips zeroing it (the C API's uninitialized bytearray): its bytes are then whatever this
    process's allocator held there, so only a buffer that a read fills, and of which only the
    bytes read are kept, may ask so (a block file read; a download's buffer, handed on only
    once full). Zeroing a block's buffer before a direct read overwrote it was 7% of the
    daemon's CPU on a sequential reader of cached blocks."""
    raw = bytearray(size + ALIGN) if zeroed else _uninitialized(None, size + ALIGN)
    array = (ctypes.c_char * len(raw)).from_buffer(raw)
    skip = -ctypes.addressof(array) % ALIGN
    del array  # releases its export of raw
    return memoryview(raw)[skip : skip + size]


def is_aligned(data: Buffer) -> bool:
    """Whether direct I/O may write ``data`` from where it is: an aligned, writable buffer."""
    with memoryview(data) as view:
        if view.readonly or not view.c_contiguous or len(view) < ALIGN:
            return False
        with view.cast("B") as flat:
            array = (ctypes.c_char * len(flat)).from_buffer(flat)
            aligned_address = ctypes.addressof(array) % ALIGN == 0
            del array
    return aligned_address
