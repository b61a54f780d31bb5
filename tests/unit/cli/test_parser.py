"""The CLI's grammar without running a command: values that start with a dash reach their
parser, refused options say why, every kit option lands in MountOptions parsed, and each
command's help is its run function's docstring."""

from __future__ import annotations

import argparse

import pytest

from modelkitfs.cli import build_parser
from modelkitfs.cli.parser import KIT, help_texts, join_dashed_values, options_from
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


@pytest.mark.parametrize("command", ["mount", "serve", "prefetch", "inspect", "ls", "cat", "cp"])
def test_every_command_that_reads_a_kit_takes_cosign_s_flags(tmp_path, command) -> None:
    from tests.support import cosign

    key = cosign.write_public(cosign.new_key(), tmp_path / "cosign.pub")
    root = cosign.trusted_root(tmp_path / "root.json", cosign.Fulcio(), cosign.Rekor())
    positional = {"mount": ["/mnt"], "serve": [], "cat": ["f"], "cp": ["f", "d"]}.get(command, [])
    reference = [] if command == "serve" else ["r.io/k:v1"]
    args = build_parser().parse_args(
        [
            command,
            *("--verify-key", str(key), "--certificate-identity", "ci@example.com"),
            *("--certificate-oidc-issuer", "https://issuer.example"),
            *("--trusted-root", str(root), "--insecure-ignore-tlog"),
            *(["/kits"] if command == "serve" else [*reference, *positional]),
        ]
    )
    options = options_from(args)
    assert options.verify_keys == (str(key),) and options.trusted_root == str(root)
    assert options.certificate_identity == "ci@example.com"
    assert options.certificate_oidc_issuer == "https://issuer.example"
    assert options.insecure_ignore_tlog
    policy = options.signature_policy()
    assert policy is not None and len(policy.rules[0].authorities) == 2


def test_cosign_s_environment_names_the_signers_when_no_flag_does(tmp_path, monkeypatch) -> None:
    from tests.support import cosign

    key = cosign.write_public(cosign.new_key(), tmp_path / "cosign.pub")
    monkeypatch.setenv("COSIGN_KEY", str(key))
    options = options_from(build_parser().parse_args(["ls", "--insecure-ignore-tlog", "r.io/k:v"]))
    assert options.verify_keys == (str(key),)
    other = cosign.write_public(cosign.new_key(), tmp_path / "other.pub")
    flagged = build_parser().parse_args(["ls", "--verify-key", str(other), "r.io/k:v"])
    assert options_from(flagged).verify_keys == (str(other),)  # a flag wins, alone
    monkeypatch.delenv("COSIGN_KEY")
    monkeypatch.setenv("COSIGN_CERT_IDENTITY", "ci@example.com")
    monkeypatch.setenv("COSIGN_CERT_OIDC_ISSUER", "https://issuer.example")
    with pytest.raises(Exception, match="give --trusted-root FILE"):
        options_from(build_parser().parse_args(["ls", "r.io/k:v"]))


def test_policy_is_for_serve_and_verify_only() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--policy", "p.yaml", "r.io/k:v", "/mnt"])


def test_a_command_s_help_is_the_docstring_of_what_runs_it() -> None:
    def run_thing(args: argparse.Namespace) -> None:
        """do a thing to a ModelKit

        Do the thing to REFERENCE, in a sentence that
        takes two lines here.

        And a paragraph of its own.

        examples:
          modelkitfs thing {KIT}
          modelkitfs thing --fast {KIT} \\
              --more     # a comment
        """

    assert help_texts(run_thing) == (
        "do a thing to a ModelKit",
        "Do the thing to REFERENCE, in a sentence that takes two lines here.\n\n"
        "And a paragraph of its own.",
        f"\n  modelkitfs thing {KIT}\n  modelkitfs thing --fast {KIT} \\"
        "\n      --more     # a comment",
    )


def test_every_command_has_a_help_line_a_description_and_examples() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = {action.dest: action.help for action in commands._choices_actions}
    assert set(commands.choices) == {*lines, "unmount"}  # umount's alias
    for name, command in commands.choices.items():
        assert lines.get(name, lines["umount"]), name
        assert command.description and "\n" not in command.description, name
        examples = command.epilog.partition("examples:\n")[2]
        assert examples.startswith("  ") and "modelkitfs " in examples, name
    overview = parser.format_help().partition("\nexamples:\n")[2]
    assert "  modelkitfs mount " in overview and "  modelkitfs cache clear --yes" in overview
