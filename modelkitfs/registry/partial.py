"""What an answer to a range request must say before its bytes are believed.

A 206 is only the range asked for when its ``Content-Range`` says exactly that range: without
it, a server (or a proxy that rewrote the request) may send the bytes from another offset, and
shifted bytes would be cached and served as the file. So both transports check every 206 here,
the same way, and anything else is a protocol error worth another attempt, never data.

Bodies that are not blob data are bounded, so that a broken or hostile server cannot make the
daemon hold gigabytes: documents (manifests, configs) at :data:`MAX_DOCUMENT_SIZE`, error,
redirect and token bodies at :data:`MAX_ERROR_BODY`.
"""

from __future__ import annotations

import re

MAX_DOCUMENT_SIZE = 4 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def range_problem(
    content_range: str | None, content_length: str | None, start: int, end: int
) -> str:
    """Why a 206 with these headers is not bytes ``[start, end)``, or "" when it is."""
    asked = f"bytes={start}-{end - 1}"
    if not content_range:
        return f"a 206 without Content-Range for {asked}"
    match = _CONTENT_RANGE.match(content_range)
    if match is None:
        return f"a 206 with a malformed Content-Range ({content_range!r}) for {asked}"
    first, last, total = match.groups()
    if int(first) != start or int(last) != end - 1:
        return f"a 206 for another range ({content_range}) than {asked}"
    if total != "*" and int(total) < end:
        return f"a 206 whose total ({total}) ends before the range {asked}"
    if content_length is not None and content_length.strip() != str(end - start):
        return f"a 206 of Content-Length {content_length} for {asked} ({end - start} bytes)"
    return ""
