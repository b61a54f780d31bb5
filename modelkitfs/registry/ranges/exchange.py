"""One range request and its answer: what a range transport is given, what it gives back, and
what an answer must say before its bytes are believed.

The client builds one frozen :class:`RangeRequest` per attempt and hands it down unchanged, but
for the URL a redirect names or the registry's credentials (as httpx passes a ``Request``): no
hop spells the request out again. Every transport judges an answer by :func:`classify`, the one
place a status and headers become a result:

- A 206 is only the range asked for when its ``Content-Range`` says exactly that range: without
  it, a server (or a proxy that rewrote the request) may send the bytes from another offset, and
  shifted bytes would be cached and served as the file. Anything else is a protocol error worth
  another attempt, never data.
- A 200 is the whole blob, from a server that ignores ``Range``: the range is skipped to.
- A redirect, or any other status, holds no bytes of the range: its body is read up to
  :data:`~modelkitfs.registry.network.MAX_ERROR_BODY` at most.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from modelkitfs.errors import TransientError
from modelkitfs.registry.source import Deliver
from modelkitfs.registry.status import host

REDIRECTS = (301, 302, 303, 307, 308)
DEADLINE = "not done within its deadline"  # a RangeResult.broken
LONGER = "its body is longer than the range"  # a RangeResult.problem
WHOLE_BLOB_KEPT = "the whole blob, kept open at its start"  # a RangeResult.problem

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RangeRequest:
    """One GET of bytes ``[start, end)`` of ``url``: each buffer of ``piece`` bytes (the last
    one shorter) goes to ``deliver`` once it has arrived, in order; given up at trio time
    ``deadline``. ``authorization`` is the registry's credential: the client adds it to the
    request it sends the registry alone, never to one it builds from a redirect's URL."""

    url: str
    start: int
    end: int
    piece: int
    deliver: Deliver
    deadline: float = math.inf
    authorization: str = ""

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Range": f"bytes={self.start}-{self.end - 1}"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers


@dataclass
class RangeResult:
    status: int
    url: str
    delivered: int = 0  # bytes of the range handed over, in pieces, from its start
    challenge: str = ""  # WWW-Authenticate of a 401
    retry_after: str = ""
    broken: str = ""  # why the body stopped short of the range, after ``delivered``
    problem: str = ""  # why the answer is not the range asked for
    location: str = ""  # of a redirect


class RangeTransport(Protocol):
    async def get(self, request: RangeRequest) -> RangeResult:
        """One GET of ``request``, no redirect followed, no retry, given up at its deadline
        (``delivered`` says how far it got, ``broken`` why); a connection that fails is an
        :class:`~modelkitfs.errors.Unreachable`, a :class:`~modelkitfs.errors.TransientError`,
        or a final :class:`~modelkitfs.errors.RegistryError` (TLS that cannot work)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Body:
    """An answer whose body holds the range: after ``skip`` bytes; with ``strict``, checked to
    end with the range before its last piece goes (no ``Content-Length`` frames it)."""

    status: int
    skip: int = 0
    strict: bool = False

    def result(self, request: RangeRequest, delivered: int, broken: str) -> RangeResult:
        """The answer once its body was read: ``delivered`` bytes of the range, and why it
        stopped short ("" when it did not)."""
        if broken == LONGER:
            return RangeResult(self.status, request.url, delivered, problem=LONGER)
        return RangeResult(self.status, request.url, delivered, broken=broken)


def classify(
    request: RangeRequest, status: int, header: Callable[[str], str | None]
) -> RangeResult | Body:
    """What an answer's status and headers (``header(name)``) make of it: the :class:`Body` to
    read when it holds the range, else the result, final without its body (a redirect or an
    error, whose body the transport drains; a 206 for another range, whose body it leaves)."""
    if status in REDIRECTS:
        return RangeResult(status, request.url, location=header("Location") or "")
    if status == 206:
        length = header("Content-Length")
        problem = range_problem(header("Content-Range"), length, request.start, request.end)
        if problem:
            return RangeResult(206, request.url, problem=problem)
        chunked = "chunked" in (header("Transfer-Encoding") or "").lower()
        return Body(206, strict=chunked or length is None)
    if status == 200:
        return Body(200, skip=request.start)
    return RangeResult(
        status,
        request.url,
        challenge=header("WWW-Authenticate") or "",
        retry_after=header("Retry-After") or "",
    )


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


def no_answer(request: RangeRequest) -> TransientError:
    """The failure of a request given up at its deadline before any of the range came."""
    return TransientError(f"{host(request.url)} sent no answer within its deadline")
