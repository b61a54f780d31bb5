"""The configuration file: mirrors per registry and for all."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkitfs import ModelKitFSError, MountOptions
from modelkitfs.cli import build_parser
from modelkitfs.session.config import configured_mirrors


def test_mirrors_from_the_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('mirrors:\n  "*": [cache.internal:5000]\n  r.io: ["http://127.0.0.1:5001"]\n')
    monkeypatch.setenv("MODELKITFS_CONFIG", str(config))
    assert configured_mirrors("r.io") == ["http://127.0.0.1:5001", "cache.internal:5000"]
    assert configured_mirrors("other.io") == ["cache.internal:5000"]
    network = MountOptions(mirrors=["cli.mirror"]).network("r.io")
    assert network.mirrors == ("cli.mirror", "http://127.0.0.1:5001", "cache.internal:5000")
    config.write_text("mirrors: 5\n")
    with pytest.raises(ModelKitFSError, match="must map registries to lists"):
        configured_mirrors("r.io")


def test_network_flags_parse_like_kit() -> None:
    args = build_parser().parse_args(
        [
            "mount",
            "--tls-verify=false",
            "--tls-cert",
            "ca.pem",
            "--mirror",
            "m1",
            "--mirror",
            "m2",
            "--proxy",
            "http://proxy:3128",
            "r.io/a/b:c",
            "/mnt",
        ]
    )
    assert args.tls_verify is False and args.tls_cert == "ca.pem"
    assert args.mirrors == ["m1", "m2"] and args.proxy == "http://proxy:3128"
    assert build_parser().parse_args(["mount", "r.io/a", "/mnt"]).tls_verify is True


def test_unreadable_tls_files_fail_before_mounting(tmp_path: Path) -> None:
    with pytest.raises(ModelKitFSError, match="cannot use --tls-cert"):
        MountOptions(tls_cert=str(tmp_path / "missing.pem")).check()
    with pytest.raises(ModelKitFSError, match="needs both --cert and --key"):
        MountOptions(cert=str(tmp_path / "c.pem")).check()
