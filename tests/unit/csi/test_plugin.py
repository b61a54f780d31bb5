"""The plugin's command line, as README and --help give it, what it refuses before serving,
what it says without its extra, and how long it gives a call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modelkitfs.cli import build_parser
from modelkitfs.cli import main as cli_main
from modelkitfs.cli.serve import run_csi
from modelkitfs.csi import main
from modelkitfs.csi.plugin import _seconds, _socket_path
from modelkitfs.csi.volumes import CALL_TIMEOUT


def test_the_documented_command_line_parses() -> None:
    command = "csi --endpoint unix:///csi/csi.sock --node-id n --state-dir /s --mirror m:5000"
    args = build_parser().parse_args(command.split())
    assert (args.endpoint, args.node_id, args.state_dir) == ("unix:///csi/csi.sock", "n", "/s")
    assert args.mirror == ["m:5000"] and args.run is run_csi


def test_the_node_s_signature_policy_is_a_flag_of_the_plugin(tmp_path: Path) -> None:
    from modelkitfs.options import SIGNING_FIELDS, MountOptions

    command = "csi --endpoint unix:///c.sock --node-id n --policy /p.yaml --verify-key /k.pub"
    args = build_parser().parse_args([*command.split(), "--insecure-ignore-tlog"])
    given = {name: getattr(args, name) for name in SIGNING_FIELDS}
    assert given["policy"] == "/p.yaml" and given["verify_keys"] == ["/k.pub"]
    assert given["insecure_ignore_tlog"] is True
    assert set(given) <= set(MountOptions.__dataclass_fields__)


class Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("remaining", "seconds"), [(None, CALL_TIMEOUT), (1e6, CALL_TIMEOUT), (120, 119), (1, 0.5)]
)
def test_a_call_answers_before_its_caller_gives_up(remaining: float | None, seconds: float) -> None:
    assert _seconds(Context(remaining)) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("unix:///csi/csi.sock", "/csi/csi.sock"), ("unix://csi/csi.sock", "/csi/csi.sock")],
)
def test_endpoints(endpoint: str, path: str) -> None:
    assert _socket_path(endpoint) == path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--endpoint", "tcp://0.0.0.0:10000"],
            "--endpoint 'tcp://0.0.0.0:10000' is not a unix socket: write unix:///csi/csi.sock",
        ),
        (
            ["--endpoint", "unix:///x.sock", "--timeout", "0"],
            "--timeout must be a positive number of seconds, not 0.0",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, arguments: list[str], message: str
) -> None:
    state = ["--state-dir", str(tmp_path), "--node-id", "n"]
    assert main([*arguments, *state]) == 2
    assert [r.getMessage() for r in caplog.records] == [message]


@pytest.mark.parametrize(
    ("blocked", "package"), [("grpc", "grpcio"), ("google.protobuf", "protobuf")]
)
def test_without_the_csi_extra_both_entry_points_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], blocked: str, package: str
) -> None:
    """grpcio and protobuf are the csi extra: without one, the plugin's two commands end with
    one line naming it and the extra, not an import's traceback."""
    for name in [n for n in sys.modules if n.startswith(f"{blocked}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)  # 'import grpc' fails as when not installed
    monkeypatch.delitem(sys.modules, "modelkitfs.csi.plugin")  # imported again, and fails
    monkeypatch.delitem(sys.modules, "modelkitfs.csi.protocol")
    arguments = ["--endpoint", "unix:///c.sock", "--node-id", "n", "--state-dir", "/nowhere"]
    expected = (
        f"the CSI plugin needs grpcio and protobuf, and {package} is not installed: "
        "install modelkitfs[csi] (pip install 'modelkitfs[csi]')"
    )

    assert main(arguments) == 1
    assert capfd.readouterr().err == f"modelkitfs csi: error: {expected}\n"

    assert cli_main(["csi", *arguments]) == 1
    assert capfd.readouterr().err == f"modelkitfs: error: {expected}\n"


def test_another_missing_module_is_not_blamed_on_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only grpcio's and protobuf's absence is the extra's: any other is a bug, raised as is."""
    monkeypatch.setitem(sys.modules, "modelkitfs.csi.node_service", None)
    monkeypatch.delitem(sys.modules, "modelkitfs.csi.plugin")
    with pytest.raises(ModuleNotFoundError) as raised:
        main(["--endpoint", "unix:///c.sock", "--node-id", "n"])
    assert raised.value.name == "modelkitfs.csi.node_service"
