"""Sequential readahead: notice a reader going through a blob in order and fetch ahead of it.

Readers are told apart by position, not by file handle, so page faults of an mmap (safetensors)
count as well as ``read`` calls: each blob keeps a few cursors, and a read that starts near where
one ended (up to 1 MiB back; forward, up to four times its own length, at least 128 KiB and at
most 16 MiB: the kernel reorders its readahead requests) continues it. Only the bytes read
count as read in order, never a jump: a random reader, whose reads now and then land a little
past a cursor, is no stream (counting its jumps fetched 4 MiB windows behind 4 KiB reads).
Once a cursor has read 1 MiB in order it gets a window of parts fetched ahead of it, which
grows with the bytes read in order: an eighth of them, between 4 and 64 MiB, and no more than
its share of ``max_bytes`` (the memory blocks fetched ahead wait in) among the streams going
on: four readers of one file each get a quarter, rather than pushing each other's blocks out of
memory before they are read. So a long stream soon has many requests in flight, while a reader
that stops (one tensor of a model) leaves little fetched in vain. A read that matches no cursor
starts a new one.

A reader that jumps into a unit it takes whole (a safetensors tensor: the tree knows where they
end) gets the rest of the unit fetched at once, in parallel parts: one tensor costs one round
trip and about its own bytes.

The window is fetched in parts of an eighth of it (1 to 8 MiB), one range request each, issued
only whole: a reader moving on by 1 MiB does not cost a 1 MiB request. Each request costs the
server some CPU whatever its size (README, Speed, has the registry's figures), while behind a
per-connection cap many requests in parallel beat a few large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
MIN_PART = MiB
MAX_PART = 8 * MiB
PARTS_PER_WINDOW = 8
MIN_WINDOW = 4 * MiB
MIN_SEQUENTIAL = MiB  # a header or two read in order is not yet a stream
MAX_WINDOW = 64 * MiB
GROWTH_DIVISOR = 8
BACKWARD = MiB
FORWARD = 16 * MiB
MIN_FORWARD = 128 * 1024
JUMP_READS = 4  # a read continues a cursor up to this many of its lengths past its end
CURSORS_PER_BLOB = 8
RECENT = 64  # reads (of any blob) since a stream's last one for it to count as going on


@dataclass(frozen=True, slots=True)
class ReadHint:
    """What a read says of itself to the readahead, from the kit tree (which knows files and
    tensors) through the archive and the blob to the store, unchanged on the way.

    ``ahead``: whether it is a reader's read, to be followed and fetched ahead of (a tar index
    walk or a safetensors header read fetches its own bytes and is none); ``file_end``: where
    the file being read ends in the blob, when known: fetching ahead stops there; ``unit_end``:
    where the unit the read falls in ends, when the reader takes units whole (a safetensors
    tensor): the rest of it is fetched at once."""

    ahead: bool = True
    file_end: int | None = None
    unit_end: int | None = None


READ_AHEAD = ReadHint()  # a reader's read, nothing more known of it
NO_READAHEAD = ReadHint(ahead=False)


@dataclass
class _Cursor:
    end: int  # where the last read of this reader ended
    sequential: int  # bytes it has read in order
    ahead: int  # how far fetching ahead has been asked for
    used: int  # recency, for replacing the oldest cursor


class Readahead:
    """Decides what to fetch ahead; the blob store does the fetching."""

    def __init__(self, max_bytes: int = MAX_WINDOW) -> None:
        self.max_bytes = max_bytes
        self._cursors: dict[str, list[_Cursor]] = {}
        self._moving: dict[int, int] = {}  # streams (ids of their cursors): last read
        self._clock = 0

    def advise(
        self, digest: str, size: int, offset: int, end: int, hint: ReadHint = READ_AHEAD
    ) -> list[tuple[int, int]]:
        """Note a read of ``[offset, end)``; the byte ranges worth fetching now, in order,
        never past the hint's ``file_end``. A reader that has not been going in order and
        enters a unit (the hint's ``unit_end``) gets the rest of it at once (up to 64 MiB
        ahead). One that has keeps its stream's window: the kernel's readahead runs past the
        end of a tensor into the next, which a reader that stops does not want whole."""
        self._clock += 1
        unit_end, limit = hint.unit_end, hint.file_end
        data_end = min(size, limit if limit is not None else size)
        unit_target = min(unit_end, end + MAX_WINDOW, data_end) if unit_end is not None else 0
        cursors = self._cursors.setdefault(digest, [])
        reach = min(FORWARD, max(MIN_FORWARD, JUMP_READS * (end - offset)))
        cursor = next((c for c in cursors if c.end - BACKWARD <= offset <= c.end + reach), None)
        if cursor is None:
            cursor = _Cursor(end, end - offset, end, self._clock)
            cursors.append(cursor)
            if len(cursors) > CURSORS_PER_BLOB:
                cursors.remove(min(cursors, key=lambda c: c.used))
            return self._parts(cursor, unit_target, unit_target - end, unit_target)
        cursor.used = self._clock
        cursor.sequential += max(0, end - max(offset, cursor.end))
        cursor.end = max(cursor.end, end)
        if cursor.sequential < MIN_SEQUENTIAL:
            return self._parts(cursor, unit_target, unit_target - cursor.end, unit_target)
        share = max(MIN_WINDOW, self.max_bytes // self._streams(cursor))
        window = min(max(cursor.sequential // GROWTH_DIVISOR, MIN_WINDOW), MAX_WINDOW, share)
        return self._parts(cursor, min(data_end, cursor.end + window), window, data_end)

    def _streams(self, cursor: _Cursor) -> int:
        """Streams going on, ``cursor`` among them: cursors read in order that have moved in
        the last ``RECENT`` reads."""
        self._moving[id(cursor)] = self._clock
        for key in [k for k, used in self._moving.items() if used <= self._clock - RECENT]:
            del self._moving[key]
        return len(self._moving)

    @staticmethod
    def _parts(cursor: _Cursor, target: int, window: int, last: int) -> list[tuple[int, int]]:
        """Parts from where fetching ahead stopped to ``target``: an eighth of ``window`` each
        (rounded up to whole MiB, 1 to 8), only whole ones unless they reach ``last`` (the end
        of the data, or of a unit)."""
        part = min(max(-(-window // PARTS_PER_WINDOW // MiB) * MiB, MIN_PART), MAX_PART)
        start = max(cursor.ahead, cursor.end) // MiB * MiB
        parts = []
        while start < target and (start + part <= target or target == last):
            parts.append((start, min(start + part, target)))
            start += part
        cursor.ahead = max(cursor.ahead, min(start, target))
        return parts
