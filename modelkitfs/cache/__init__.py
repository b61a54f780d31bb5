"""The shared block cache: blocks and sidecar files keyed by digest, on disk for every process
on the machine or in this process's memory. It knows digests, block sizes and indexes, never
blobs, stores or sources; its size cap and eviction live behind its writes
(:mod:`~modelkitfs.cache.budget`), as Mountpoint-s3's disk cache enforces its limit in
``put_block``.

The read engine (:mod:`modelkitfs.blobs`), the sessions and the commands that manage a cache
folder use the names below; the modules behind them are this package's own.
"""

from modelkitfs.cache.blockfile import make_folders
from modelkitfs.cache.budget import (
    DEFAULT_MAX_FRACTION,
    MIN_FREE_FRACTION,
    CacheBudget,
    CacheWrites,
    check_max_size,
    parse_size,
    settle_cap,
)
from modelkitfs.cache.disk import BlobEntry, DiskCache
from modelkitfs.cache.health import advice, describe
from modelkitfs.cache.layout import default_cache_dir
from modelkitfs.cache.memory import BlockMemory, MemoryCache
from modelkitfs.cache.pages import PAGE, PageSpan, Sums, page_sums
from modelkitfs.cache.protocol import BlockCache, BlockClaim

__all__ = [
    "DEFAULT_MAX_FRACTION",
    "MIN_FREE_FRACTION",
    "PAGE",
    "BlobEntry",
    "BlockCache",
    "BlockClaim",
    "BlockMemory",
    "CacheBudget",
    "CacheWrites",
    "DiskCache",
    "MemoryCache",
    "PageSpan",
    "Sums",
    "advice",
    "check_max_size",
    "default_cache_dir",
    "describe",
    "make_folders",
    "page_sums",
    "parse_size",
    "settle_cap",
]
