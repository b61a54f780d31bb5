"""Configs kept in the block cache: a second mount asks the network for none."""

from __future__ import annotations

import trio

from modelkitfs.blobs.configs import WHOLE_BLOB, CachedConfigs
from modelkitfs.cache import MemoryCache
from modelkitfs.registry.testing import MemorySource


def test_a_config_is_fetched_once_then_read_from_the_cache() -> None:
    source = MemorySource()
    config = b'{"manifestVersion": "1.0.0"}'
    digest = source.add(config)
    cache = MemoryCache()

    async def main() -> None:
        assert await CachedConfigs(source, cache).get_blob("repo", digest, len(config)) == config
        assert source.sent == len(config)
        assert await CachedConfigs(source, cache).get_blob("repo", digest, len(config)) == config
        assert source.sent == len(config)

    trio.run(main)


def test_a_damaged_cached_config_is_fetched_again() -> None:
    source = MemorySource()
    config = b'{"model": {}}'
    digest = source.add(config)
    cache = MemoryCache()
    cache.write_meta(digest, WHOLE_BLOB, b'{"model": []}')

    async def main() -> None:
        assert await CachedConfigs(source, cache).get_blob("repo", digest, len(config)) == config
        assert source.sent == len(config)
        assert cache.read_meta(digest, WHOLE_BLOB) == config

    trio.run(main)


def test_everything_else_passes_through() -> None:
    source = MemorySource(registry="registry.example", in_place=False)
    wrapped = CachedConfigs(source, MemoryCache())
    assert (wrapped.registry, wrapped.in_place, wrapped.stats) == (
        "registry.example",
        False,
        source.stats,
    )
