"""A 206 is the range asked for only when its Content-Range says exactly that range."""

from __future__ import annotations

import pytest

from modelkitfs.registry.ranges.exchange import range_problem


def test_the_exact_range_is_accepted() -> None:
    assert range_problem("bytes 100-199/1000", "100", 100, 200) == ""
    assert range_problem("bytes 100-199/*", None, 100, 200) == ""


@pytest.mark.parametrize(
    ("content_range", "content_length", "why"),
    [
        (None, "100", "without Content-Range"),
        ("bytes 101-200/1000", "100", "another range"),
        ("bytes 100-299/1000", "200", "another range"),
        ("bytes 100-199/150", "100", "ends before"),
        ("bytes 100-199/1000", "101", "Content-Length 101"),
        ("items 100-199/1000", "100", "malformed"),
        ("bytes -100-199/1000", "100", "malformed"),
    ],
)
def test_anything_else_is_a_problem_named_in_one_line(
    content_range: str | None, content_length: str | None, why: str
) -> None:
    problem = range_problem(content_range, content_length, 100, 200)
    assert why in problem and "bytes=100-199" in problem and "\n" not in problem
