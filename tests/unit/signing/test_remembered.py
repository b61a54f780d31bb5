"""Passes remembered in the cache: the cache owner's alone, as the rest of the cache is."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from modelkitfs.signing import Signer
from modelkitfs.signing.remembered import Remembered

PASS = [Signer("classic", key="sha256:" + "ab" * 32, key_name="cosign.pub")]


def test_a_pass_never_makes_a_folder_others_can_read(tmp_path: Path) -> None:
    """The cache makes its folders 0700; a pass written before it has made them (its sizing
    runs beside the first check) must not make them with the umask's 0755, nor any above."""
    cache = tmp_path / "home" / "cache"
    umask = os.umask(0o022)
    try:
        trio.run(Remembered(str(cache)).put, "key", PASS)
    finally:
        os.umask(umask)
    made = [p for p in (tmp_path / "home", cache, cache / "signatures") if p.exists()]
    assert [(p, oct(p.stat().st_mode & 0o777)) for p in made] == [(p, "0o700") for p in made]


def test_a_pass_is_read_again_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    trio.run(Remembered(str(cache)).put, "key", PASS)
    assert trio.run(Remembered(str(cache)).get, "key") == PASS
    modes = [
        oct(p.stat().st_mode & 0o777)
        for p in (cache, cache / "signatures", cache / "signatures" / "key")
    ]
    assert modes == ["0o700", "0o700", "0o600"]
