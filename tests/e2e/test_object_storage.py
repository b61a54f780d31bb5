"""A registry on object storage, as production runs them: Distribution's ``redirect`` storage
middleware answers blob GETs with a redirect to a static server (nginx) holding the registry's
storage folder. Reads fetch the bytes from there, once, and resolve each blob's redirect at the
registry once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkitfs import MountOptions, mount, unmount
from tests.conftest import MiB, one_file_kit
from tests.support.kitbuilder import push
from tests.support.registry_server import running_registry, storage_folder
from tests.support.static_server import running_nginx

SIZE = 40 * MiB + 3


class Storage:
    def __init__(self, base: Path) -> None:
        self.base = base

    def requests(self) -> list[tuple[str, str, int, int]]:
        """(method, path, status, body bytes) of every request nginx served."""
        lines = (self.base / "access.log").read_text().splitlines()
        return [(m, p, int(s), int(b)) for m, p, s, b in (line.split() for line in lines)]


@pytest.fixture(scope="module")
def on_object_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Storage]]:
    base = tmp_path_factory.mktemp("object-storage")
    storage_folder(base / "registry").mkdir(parents=True)
    with (
        running_nginx(base / "nginx", storage_folder(base / "registry")) as nginx,
        running_registry(base / "registry", redirect=f"http://{nginx}") as registry,
    ):
        yield registry, Storage(base / "nginx")


def test_reads_come_from_object_storage_once(
    on_object_storage: tuple[str, Storage], tmp_path: Path
) -> None:
    registry, storage = on_object_storage
    data, artifact = one_file_kit(tmp_path / "kit", SIZE, 41)
    push(registry, "storage/kit", "v1", artifact)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    mount(
        f"{registry}/storage/kit:v1",
        mountpoint,
        MountOptions(plain_http=True, cache_dir=str(cache)),
    )
    try:
        assert (mountpoint / "weights.bin").read_bytes() == data
        with open(mountpoint / "weights.bin", "rb") as f:
            f.seek(SIZE - MiB)
            assert f.read() == data[-MiB:]
    finally:
        unmount(mountpoint)
    served = storage.requests()
    assert all(status in (200, 206) for _, _, status, _ in served), served
    blob_bytes = sum(size for _, _, _, size in served)
    assert SIZE <= blob_bytes <= SIZE + 2 * MiB  # the layer once, and the small config
    assert os.path.isdir(cache / "blocks")
