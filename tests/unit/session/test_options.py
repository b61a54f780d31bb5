"""MountOptions: parsed once, at construction, into typed frozen values; bad values are one
line naming the option."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import Filter
from modelkitfs.session.options import MountOptions, merged_options


def test_values_as_written_become_typed_values() -> None:
    options = MountOptions(
        cache_max_size="1G",
        filters=["model,datasets:train", "docs"],
        labels=["quant=q4", "size=7b"],
        mirrors=["m.internal"],
        timeout="30",
        log_level="DEBUG",
    )
    assert options.cache_max_size == 2**30
    assert options.filters == (Filter(("model", "datasets"), ("train",)), Filter(("docs",)))
    assert options.labels == (("quant", "q4"), ("size", "7b"))
    assert options.mirrors == ("m.internal",)
    assert options.timeout == 30.0
    assert options.log_level == "debug"
    assert options.replace(plain_http=True) == dataclasses.replace(options, plain_http=True)
    assert pickle.loads(pickle.dumps(options)) == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"filters": ["dataset"]},
            "--filter 'dataset': 'dataset' is not a type; did you mean datasets? types are "
            "kitfile, model, datasets, code, prompts, docs, mcpservers "
            "(TYPES[:IDS], e.g. -f model,datasets:train)",
        ),
        (
            {"proxy": "notaurl"},
            "--proxy 'notaurl' is not a proxy URL: give http://HOST:PORT (or https://, socks5://), "
            "with user:password@ before the host if it asks for them",
        ),
        ({"timeout": "soon"}, "--timeout must be a positive number of seconds, not 'soon'"),
        ({"timeout": 0}, "--timeout must be a positive number of seconds, not 0"),
        ({"prefetch": "some"}, "unknown --prefetch 'some': use one of none, model, all"),
        ({"labels": ["novalue"]}, "invalid label 'novalue': expected key=value"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(overrides: dict, message: str) -> None:
    with pytest.raises(ModelKitFSError) as raised:
        merged_options(None, overrides)
    assert str(raised.value) == message


def test_a_proxy_password_is_neither_shown_nor_repeated() -> None:
    options = MountOptions(proxy="http://user:s3cret@proxy.internal:3128")
    assert "s3cret" not in repr(options)
    with pytest.raises(ModelKitFSError) as raised:
        MountOptions(proxy="ftp://user:s3cret@proxy.internal")
    assert "s3cret" not in str(raised.value)
