"""Wrong bytes a registry served before the blob could be checked: once the blob fails
verification, the kernel forgets the pages it kept of the blob's files (``keep_cache`` keeps
them across opens otherwise), so the same mount serves the right bytes again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import MiB, Mounts, one_file_kit
from tests.support.registry_proxy import CountingProxy
from tests.support.waiting import wait_for

SIZE = 16 * MiB + 5


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, bytes]:
    data, artifact = one_file_kit(tmp_path_factory.mktemp("corruption"), SIZE, 23)
    assert len(json.loads(artifact.manifest)["layers"]) == 1
    return publish(artifact, "corruption/kit"), data


def test_pages_of_a_blob_that_fails_verification_are_dropped_by_the_kernel(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts
) -> None:
    reference, data = kit
    path = mounts.mount(reference) / "weights.bin"
    open(path, "rb").close()  # the layer's tar index is read: the next GET is the file's data
    faulty.reset()
    faulty.inject("wrong", 1)  # one byte flipped in the middle of one response
    try:
        first = path.read_bytes()
    except OSError:
        first = None  # the blob failed verification before the read was done: also right
    assert faulty.faults_injected == {"wrong": 1}
    if first is not None:
        # Unverified bytes are served as they come (only a whole blob can be checked); the
        # wrong one is the flipped byte, nothing else.
        assert len(first) == SIZE
        differ = np.frombuffer(first, np.uint8) != np.frombuffer(data, np.uint8)
        assert np.count_nonzero(differ) <= 1
    wait_for(lambda: "failed verification" in mounts.log, "the blob failed verification")
    # The fault is over (it was one response); the same mount, the same file, right bytes: what
    # the kernel kept of the wrong download was dropped, what the cache kept was evicted.
    assert path.read_bytes() == data
    with open(path, "rb") as f:
        f.seek(SIZE // 2)
        assert f.read(MiB) == data[SIZE // 2 : SIZE // 2 + MiB]
