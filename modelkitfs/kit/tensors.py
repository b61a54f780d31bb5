"""Where the tensors of a safetensors file lie, from its header.

Loaders take a tensor whole, from its start (safetensors' ``get_tensor``, and torch or
transformers through it), so a read that enters a tensor tells what comes next and where
reading stops: the blob store fetches the rest of the tensor at once, in parallel, and nothing
past it. The format: eight bytes, the little-endian length of a JSON header; the header,
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``; then the
data, offsets counted from its start.
"""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
MIN_FILE = 16 * 1024 * 1024  # below this, what readahead fetches anyway costs as little
MAX_HEADER = 16 * 1024 * 1024  # real ones are a few MiB at most (the library allows 100 MB)
PARSE_ON_LOOP = 1024 * 1024  # larger headers are parsed in a worker thread
PAGE = 4096


@dataclass(frozen=True)
class TensorLayout:
    """The tensors' byte ranges in the file, sorted."""

    starts: list[int]
    ends: list[int]

    def entered(self, offset: int, size: int) -> int | None:
        """Where the tensor that a read of ``size`` bytes at ``offset`` enters ends, if it
        enters one: a tensor that starts in the page the read starts in, or in the page in its
        middle (the kernel reads around a page fault, half before the faulting page and half
        after). A loader takes a tensor from its start; a read that lands inside one (a random
        reader, a slice) gets only what it asks for. None too for a read that starts in the
        header: what follows it is the kernel's readahead, not a tensor wanted."""
        if not self.starts or offset < self.starts[0]:
            return None
        for probe in (offset + size // 2, offset):
            page = probe // PAGE * PAGE
            i = bisect.bisect_left(self.starts, page + PAGE) - 1  # the last starting by then
            if i >= 0 and self.starts[i] >= page:
                return self.ends[i]
        return None


def header_length(prefix: bytes) -> int | None:
    """The JSON header's length from the file's first eight bytes; None if implausible."""
    if len(prefix) < 8:
        return None
    length = int.from_bytes(prefix[:8], "little")
    return length if 2 <= length <= MAX_HEADER else None


def parse_layout(header: bytes, file_size: int) -> TensorLayout | None:
    """The layout the header describes, or None when it is not a safetensors header whose
    tensors lie inside a file of ``file_size`` bytes (then reads are fetched as for any file)."""
    data_start = 8 + len(header)
    try:
        document = json.loads(header)
        ranges = sorted(
            (data_start + begin, data_start + end)
            for name, tensor in document.items()
            if name != "__metadata__"
            for begin, end in [tensor["data_offsets"]]
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        log.debug("not a safetensors header: %s", exc)
        return None
    if not all(
        isinstance(start, int) and isinstance(end, int) and data_start <= start <= end <= file_size
        for start, end in ranges
    ):
        return None
    return TensorLayout([start for start, _ in ranges], [end for _, end in ranges])
