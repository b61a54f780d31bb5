"""The plugin of each test module, as the DaemonSet runs it, and the pods of each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.csi_plugin import Plugin, Pod, pods_of, running_plugin


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    with running_plugin(tmp_path_factory.mktemp("csi")) as handle:
        yield handle


@pytest.fixture
def pods(plugin: Plugin) -> Iterator[list[Pod]]:
    with pods_of(plugin) as made:
        yield made
