"""The SHA-256 chain: one pass gives the blob's digest and the states that check each block
on its own, and a block that differs by one byte, or comes from elsewhere in the blob, fails."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from modelkitfs.blobs.sha256chain import (
    BlobChain,
    ChainHash,
    block_in_chain,
    from_record,
    to_record,
)

BLOCK = 4096


def chained(data: bytes) -> tuple[list[bytes], BlobChain]:
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    chain = BlobChain(len(blocks))
    chain.feed(blocks[:2])  # fed in steps, as blocks come in
    chain.feed(bytearray(b) for b in blocks[2:])
    return blocks, chain


@pytest.mark.parametrize("size", [1, BLOCK, 5 * BLOCK, 5 * BLOCK + 77])
def test_one_pass_gives_the_digest_and_checks_every_block(size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    blocks, chain = chained(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert chain.digest == digest
    assert len(chain.states) == len(blocks) - 1
    states = from_record(to_record(chain.states))  # as a record keeps them
    for index, block in enumerate(blocks):
        assert block_in_chain(memoryview(bytearray(block)), index, BLOCK, states, digest)
        changed = bytearray(block)
        changed[-1] ^= 1
        assert not block_in_chain(changed, index, BLOCK, states, digest)
    if len(blocks) > 2:
        assert not block_in_chain(blocks[1], 2, BLOCK, states, digest)


def test_a_chain_restarts_only_at_a_whole_chunk() -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        ChainHash(bytes(32), 100)
    chain = ChainHash()
    chain.update(b"x" * 65)
    with pytest.raises(ValueError, match="whole chunk"):
        chain.state()


@pytest.mark.parametrize("states", [{"a": 1}, ["00" * 31], ["zz" * 32]])
def test_a_damaged_record_is_refused(states: object) -> None:
    with pytest.raises(ValueError):
        from_record(states)
