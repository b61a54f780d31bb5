"""Passes remembered: a manifest digest is checked once per policy, not on every open.

A pass is kept in memory and in the cache folder (``signatures/``, created 0700, files 0600:
the cache is its owner's, README, Security), under the sha256 of the policy's digest, the
repository and the manifest digest: another policy (a new key, a changed trusted root) or
another repository (whose rules may differ) checks again. Only passes are kept: a refusal is
checked again next time, so that a kit signed since is served. A cache that cannot be written
(or whose parent folder is not made yet) keeps passes in memory only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import trio

from modelkitfs.signing.verifier import Signer

log = logging.getLogger(__name__)

FOLDER = "signatures"


class Remembered:
    def __init__(self, cache_dir: str | None) -> None:
        self.folder = Path(cache_dir) / FOLDER if cache_dir else None
        self._passes: dict[str, list[Signer]] = {}

    @staticmethod
    def key(policy: str, name: str, digest: str) -> str:
        return hashlib.sha256(f"{policy}\n{name}\n{digest}".encode()).hexdigest()

    async def get(self, key: str) -> list[Signer] | None:
        if key in self._passes:
            return self._passes[key]
        found = await trio.to_thread.run_sync(self._read, key)
        if found is not None:
            self._passes[key] = found
        return found

    async def put(self, key: str, signers: list[Signer]) -> None:
        self._passes[key] = signers
        await trio.to_thread.run_sync(self._write, key, signers)

    def _read(self, key: str) -> list[Signer] | None:
        if self.folder is None:
            return None
        try:
            listed = json.loads((self.folder / key).read_text())
            return [Signer(**entry) for entry in listed]
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, key: str, signers: list[Signer]) -> None:
        if self.folder is None:
            return
        try:
            for folder in (self.folder.parent, self.folder):  # the cache's, and never above it
                folder.mkdir(mode=0o700, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.folder, suffix=".tmp", delete=False
            ) as out:  # created 0600
                try:
                    json.dump([s.as_dict() for s in signers], out)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(out.name)
                    raise
            os.replace(out.name, self.folder / key)
        except OSError as exc:
            log.debug("signature pass kept in memory only: %s", exc)
