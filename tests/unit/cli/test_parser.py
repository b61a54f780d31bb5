"""The CLI's grammar without running a command: values that start with a dash reach their
parser, refused options say why, and every kit option lands in MountOptions parsed."""

from __future__ import annotations

import pytest

from modelkitfs.cli import build_parser
from modelkitfs.cli.parser import join_dashed_values, options_from
from modelkitfs.kit import Filter


def test_a_value_that_starts_with_a_dash_is_joined_to_its_option() -> None:
    parser = build_parser()
    joined = join_dashed_values(parser, ["prefetch", "--cache-max-size", "-5G", "r.io/k:v"])
    assert joined == ["prefetch", "--cache-max-size=-5G", "r.io/k:v"]
    flags = ["ls", "--plain-http", "-l", "r.io/k:v", "--", "-odd"]
    assert join_dashed_values(parser, flags) == flags  # flags and '--' stay as they are


def test_every_kit_flag_becomes_a_parsed_option(tmp_path) -> None:
    args = build_parser().parse_args(
        [
            *("mount", "-f", "model", "--filter", "datasets:train", "--label", "q=4"),
            *("--cache-max-size", "1G", "--timeout", "30", "--prefetch", "model"),
            *("--mirror", "m.internal", "--cache-dir", str(tmp_path), "r.io/k:v1", "/mnt"),
        ]
    )
    options = options_from(args)
    assert options.filters == (Filter(("model",)), Filter(("datasets",), ("train",)))
    assert options.labels == (("q", "4"),)
    assert options.cache_max_size == 2**30 and options.timeout == 30.0
    assert options.prefetch == "model" and options.mirrors == ("m.internal",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--verify", "full", "r.io/k:v"], "--verify does nothing for inspect"),
        (["cache", "info", "--max-size", "1G"], "--max-size does nothing for cache info"),
        (["prefetch", "-l", "a=b", "r.io/k:v"], "-l does nothing for prefetch"),
    ],
)
def test_options_that_do_nothing_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith(f"modelkitfs: error: {message}")
