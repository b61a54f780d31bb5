"""The README's examples marked ``<!-- tested -->`` run as written: against a TLS registry whose CA
the environment trusts (``SSL_CERT_FILE``), holding a kit like the one they name. Only the
kit's address and the mountpoint are swapped for this machine's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import write
from tests.support.kitbuilder import build_modelkit, push
from tests.support.pki import CA
from tests.support.registry_server import running_registry, tls_context

README = Path(__file__).parents[2] / "README.md"
EXAMPLE_KIT = "registry.example:5000/team/llm:v1"
EXAMPLE_MOUNTPOINT = "/mnt/llm"
KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "llm"},
    "model": {"name": "llm", "path": "model.safetensors"},
    "datasets": [{"name": "train", "path": "data"}],
}


def readme_examples() -> list[tuple[str, str]]:
    blocks = re.findall(r"<!-- tested -->\n```(\w+)\n(.*?)```", README.read_text(), re.S)
    assert {language for language, _ in blocks} == {"sh", "python"}
    return blocks


@pytest.fixture(scope="module")
def registry_with_kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(the kit's reference, the CA to trust) on a TLS registry."""
    base = tmp_path_factory.mktemp("readme")
    source = base / "kit"
    source.mkdir()
    rng = np.random.default_rng(3)
    save_file({"embed": rng.random((64, 32)).astype(np.float32)}, str(source / "model.safetensors"))
    write(
        source / "data/train.csv", b"x,y\n" + b"".join(b"%d,%d\n" % (i, 2 * i) for i in range(100))
    )
    ca = CA.create(base / "pki")
    (base / "storage").mkdir()
    with running_registry(base / "storage", tls=ca.issue("registry")) as address:
        push(
            address,
            "team/llm",
            "v1",
            build_modelkit(source, KITFILE),
            tls=tls_context(ca.cert_path),
        )
        yield f"{address}/team/llm:v1", ca.cert_path


@pytest.mark.parametrize(
    ("language", "code"), readme_examples(), ids=lambda v: v[:12] if len(v) > 6 else v
)
def test_readme_example_runs_as_written(
    language: str, code: str, registry_with_kit: tuple[str, Path], tmp_path: Path
) -> None:
    reference, ca = registry_with_kit
    mountpoint = tmp_path / "mnt/llm"
    code = code.replace(EXAMPLE_KIT, reference).replace(EXAMPLE_MOUNTPOINT, str(mountpoint))
    environment = {
        **os.environ,
        "SSL_CERT_FILE": str(ca),
        "MODELKITFS_CACHE_DIR": str(tmp_path / "cache"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if language == "sh"
        else [sys.executable, "-c", code]
    )
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=environment, timeout=120
        )
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if language == "sh":
        assert "x,y\n0,0\n1,2\n" in result.stdout
        assert "user.modelkitfs.layer=" in result.stdout
        assert "MEDIA TYPE" in result.stdout and "train.csv" in result.stdout
    else:
        assert result.stdout.splitlines() == ["['embed']", "x,y", "100"]
