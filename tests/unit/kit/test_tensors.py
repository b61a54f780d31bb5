"""Tensor layouts from safetensors headers written by the safetensors library itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelkitfs.kit.tensors import PAGE, TensorLayout, header_length, parse_layout


def layout_of(path: Path) -> tuple[TensorLayout, dict]:
    data = path.read_bytes()
    length = header_length(data[:8])
    assert length is not None
    layout = parse_layout(data[8 : 8 + length], len(data))
    assert layout is not None
    header = json.loads(data[8 : 8 + length])
    return layout, {
        name: (8 + length + b, 8 + length + e)
        for name, (b, e) in (
            (n, t["data_offsets"]) for n, t in header.items() if n != "__metadata__"
        )
    }


def test_layout_matches_the_library(tmp_path: Path) -> None:
    tensors = {
        "bias": np.zeros(3, np.float32),
        "weight": np.ones((256, 1024), np.float32),
        "half": np.ones(7, np.float16),
    }
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "np"})
    layout, ranges = layout_of(tmp_path / "m.safetensors")
    assert list(zip(layout.starts, layout.ends, strict=True)) == sorted(ranges.values())
    start, end = ranges["weight"]
    assert layout.entered(start, 4096) == end  # a read from its start
    assert layout.entered(start + 2 * PAGE, 4096) is None  # one that lands inside it
    assert layout.entered(end - 3 * PAGE, 100) is None


def test_a_read_around_a_fault_is_for_the_tensor_of_the_faulting_page(tmp_path: Path) -> None:
    save_file(
        {
            "0.first": np.ones((512, 1024), np.float32),
            "a.bias": np.zeros(5, np.float32),
            "a.weight": np.ones((512, 1024), np.float32),
        },
        tmp_path / "m.safetensors",
    )
    layout, ranges = layout_of(tmp_path / "m.safetensors")
    bias_end = ranges["a.bias"][1]
    # The kernel reads 1 MiB around the faulting page: half before it, half after. The page
    # holds the bias's end and the weight's start.
    page = bias_end // PAGE * PAGE
    assert layout.entered(page - 512 * 1024, 1024 * 1024) == ranges["a.weight"][1]


def test_a_read_from_the_header_is_for_no_tensor(tmp_path: Path) -> None:
    save_file({"w": np.ones((512, 1024), np.float32)}, tmp_path / "m.safetensors")
    layout, _ = layout_of(tmp_path / "m.safetensors")
    assert layout.entered(0, 1024 * 1024) is None


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"[1, 2]",
        b'{"w": {"data_offsets": [0]}}',
        b'{"w": {"data_offsets": ["0", "8"]}}',
        b'{"w": {"data_offsets": [0, 999999999]}}',
        b'{"w": {"dtype": "F32"}}',
        b'{"w": [0, 8]}',
        b"[" * 100_000,  # too deep for the JSON parser
    ],
)
def test_what_is_not_a_safetensors_header_has_no_layout(header: bytes) -> None:
    assert parse_layout(header, 1000) is None


def test_implausible_header_lengths() -> None:
    assert header_length(b"\x01") is None
    assert header_length((0).to_bytes(8, "little")) is None
    assert header_length((10**9).to_bytes(8, "little")) is None
    assert header_length((120).to_bytes(8, "little")) == 120
