"""How an answer to a range request is judged: a 206 is the range asked for only when its
Content-Range says exactly that range, and read strictly when no length frames it; a 200 is
skipped to the range; anything else holds none of its bytes."""

from __future__ import annotations

import pytest

from modelkitfs.registry.ranges.exchange import (
    Body,
    RangeRequest,
    RangeResult,
    classify,
    range_problem,
)


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


def classified(status: int, **headers: str) -> RangeResult | Body:
    request = RangeRequest("http://reg.test/b", 100, 200, 64, lambda buffer: None)
    named = {name.replace("_", "-").lower(): value for name, value in headers.items()}
    return classify(request, status, lambda name: named.get(name.lower()))


def test_a_206_of_the_range_is_read_checked_to_end_with_it_unless_its_length_is_framed() -> None:
    exact = {"Content_Range": "bytes 100-199/1000"}
    assert classified(206, **exact, Content_Length="100") == Body(206, strict=False)
    assert classified(206, **exact) == Body(206, strict=True)
    chunked = classified(206, **exact, Content_Length="100", Transfer_Encoding="chunked")
    assert chunked == Body(206, strict=True)


def test_a_200_is_read_from_the_range_s_start_and_other_answers_hold_no_bytes() -> None:
    assert classified(200) == Body(200, skip=100)
    assert classified(206, Content_Range="bytes 0-99/1000") == RangeResult(
        206,
        "http://reg.test/b",
        problem="a 206 for another range (bytes 0-99/1000) than bytes=100-199",
    )
    assert classified(308, Location="/elsewhere") == RangeResult(
        308, "http://reg.test/b", location="/elsewhere"
    )
    assert classified(429, Retry_After="3", WWW_Authenticate="x") == RangeResult(
        429, "http://reg.test/b", challenge="x", retry_after="3"
    )
