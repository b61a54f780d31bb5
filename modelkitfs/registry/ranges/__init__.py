"""The two ways blob ranges travel, behind one interface.

A :class:`RangeTransport` is given a :class:`RangeRequest` and sends one GET: no redirects
followed, no retries, bounded by the request's deadline, answered with a :class:`RangeResult`
or a typed error. Both transports judge an answer the same way (:mod:`.exchange`), keep what
arrived of a transfer cut short, and never read more of a body than the range or a bounded
error body.

- :class:`ThreadedRanges` (:mod:`.threaded`): blocking ``http.client`` connections in worker
  threads (:mod:`.connections`), the fast path.
- :class:`HttpxRanges` (:mod:`.proxied`): httpx on the event loop, when a proxy is in play.

Their doubles are in :mod:`modelkitfs.registry.testing`.
"""

from modelkitfs.registry.ranges.connections import RangeFetcher
from modelkitfs.registry.ranges.exchange import RangeRequest, RangeResult, RangeTransport
from modelkitfs.registry.ranges.proxied import HttpxRanges
from modelkitfs.registry.ranges.threaded import ThreadedRanges

__all__ = [
    "HttpxRanges",
    "RangeFetcher",
    "RangeRequest",
    "RangeResult",
    "RangeTransport",
    "ThreadedRanges",
]
