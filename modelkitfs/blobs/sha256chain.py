"""One SHA-256 pass over a blob that checks both the blob and each of its blocks.

A blob is verified against its digest, and each block downloaded again later must be checked
on its own (the registry may serve other bytes by then). Hashing every block a second time for
that doubled the cost of verifying: SHA-256 runs at about 0.6 ms of CPU per MiB here, more
than everything else a cold byte costs. SHA-256 is a chain: the state after block ``i`` (a
block is a whole number of 64-byte SHA-256 chunks) is the starting point for block ``i + 1``,
and the last state gives the digest. Keeping those states (32 bytes a block) is enough to check
block ``i`` alone: hashing its bytes from state ``i - 1`` must give state ``i`` (or, for the
last block, the digest). Forging a block that passes means finding a second preimage of
SHA-256's compression chain, as for the blob's digest itself.

:mod:`hashlib` hides the state, so this calls OpenSSL's ``SHA256_*`` functions (the library
:mod:`hashlib` itself uses) through :mod:`ctypes`, which releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Iterable

from modelkitfs.primitives.buffers import Buffer

CHUNK = 64  # bytes SHA-256 compresses at a time: a block size must be a multiple


class _Context(ctypes.Structure):
    """OpenSSL's ``SHA256_CTX`` (``openssl/sha.h``): the chaining state ``h`` and the length
    so far in bits (``Nl``, ``Nh``), then the pending partial chunk."""

    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    library = ctypes.CDLL(name)
    for function in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
        getattr(library, function).restype = ctypes.c_int
    library.SHA256_Update.argtypes = [ctypes.POINTER(_Context), ctypes.c_void_p, ctypes.c_size_t]
    return library


_crypto = _library()


class ChainHash:
    """SHA-256 of a blob fed block by block, with the state after each block.

    ``start`` is the state before ``offset`` (bytes hashed so far, a multiple of ``CHUNK``):
    None for the start of the blob."""

    def __init__(self, start: bytes | None = None, offset: int = 0) -> None:
        if offset % CHUNK:
            raise ValueError(f"a chain restarts at a multiple of {CHUNK} bytes, not {offset}")
        self._context = _Context()
        _crypto.SHA256_Init(ctypes.byref(self._context))
        if start is not None:
            self._context.h[:] = [int.from_bytes(start[i : i + 4], "big") for i in range(0, 32, 4)]
            bits = offset * 8
            self._context.Nl, self._context.Nh = bits & 0xFFFFFFFF, bits >> 32

    def update(self, data: Buffer) -> None:
        if isinstance(data, bytes):
            _crypto.SHA256_Update(ctypes.byref(self._context), data, len(data))
            return
        with memoryview(data).cast("B") as view:
            if view.readonly:  # a view of bytes: rare (blocks are bytearrays)
                _crypto.SHA256_Update(ctypes.byref(self._context), bytes(view), len(view))
                return
            array = (ctypes.c_char * len(view)).from_buffer(view)
            try:
                _crypto.SHA256_Update(ctypes.byref(self._context), array, len(view))
            finally:
                del array  # the view can be released only once no ctypes array holds it

    def state(self) -> bytes:
        """The chaining state now: valid at a multiple of ``CHUNK`` bytes."""
        if self._context.num:
            raise ValueError("the state is defined only at the end of a whole chunk")
        return b"".join(word.to_bytes(4, "big") for word in self._context.h)

    def digest(self) -> str:
        """``sha256:<hex>`` of what was fed; ends the chain."""
        out = ctypes.create_string_buffer(32)
        _crypto.SHA256_Final(out, ctypes.byref(self._context))
        return "sha256:" + out.raw.hex()


class BlobChain:
    """A blob of ``count`` blocks hashed in order: the blocks fed so far (``next``), the state
    after each but the last, and, once all are fed, the blob's digest."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0
        self.states: list[bytes] = []
        self.digest: str | None = None
        self._chain = ChainHash()

    def feed(self, blocks: Iterable[Buffer]) -> None:
        """Hash the next blocks; blocking for a while: call from a worker thread."""
        for block in blocks:
            self._chain.update(block)
            self.next += 1
            if self.next < self.count:
                self.states.append(self._chain.state())
            else:
                self.digest = self._chain.digest()


def block_in_chain(
    block: Buffer, index: int, block_size: int, states: list[bytes], digest: str
) -> bool:
    """Whether block ``index`` of a blob verified as ``digest``, with chaining ``states``, is
    ``block``: it leads from the state before it to the state after it (the digest, for the
    last block)."""
    chain = ChainHash(states[index - 1] if index else None, index * block_size)
    chain.update(block)
    return chain.state() == states[index] if index < len(states) else chain.digest() == digest


def to_record(states: list[bytes]) -> list[str]:
    return [state.hex() for state in states]


def from_record(states: object) -> list[bytes]:
    """Chaining states read from a record; ValueError when they are not."""
    if not isinstance(states, list):
        raise ValueError("not a list of states")
    parsed = [bytes.fromhex(str(state)) for state in states]
    if any(len(state) != 32 for state in parsed):
        raise ValueError("a state is not 32 bytes")
    return parsed


def self_check() -> None:
    """Fail loudly, once, if the library's state is laid out otherwise than assumed."""
    data = bytes(range(256)) * 8
    chain = ChainHash()
    chain.update(data[:1024])
    rest = ChainHash(chain.state(), 1024)
    rest.update(data[1024:])
    if rest.digest() != "sha256:" + hashlib.sha256(data).hexdigest():
        raise RuntimeError("OpenSSL's SHA256_CTX is not laid out as modelkitfs expects")


self_check()
