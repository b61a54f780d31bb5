"""JSON as signatures use it: RFC 8785's canonical form, what Rekor signs when it promises to
log an entry; and the parsing of documents that whoever pushes beside a kit wrote.

The signed entry timestamp covers the canonical form of ``{body, integratedTime, logID,
logIndex}``: keys sorted by their UTF-16 code units, no whitespace, strings escaped minimally
(as ``json.dumps`` with ``ensure_ascii=False`` escapes them), integers in decimal. The log's
payloads hold no fractions, and a fraction is refused rather than formatted the ECMAScript way.
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(raw: bytes | str) -> Any:
    """A document someone else wrote, or ValueError: also when it nests deeper than Python's
    parser recurses (``[[[[...``), which would otherwise end the whole check with a traceback."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def canonical_json(value: Any) -> bytes:
    return _encode(value).encode()


def _encode(value: Any) -> str:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: str(key).encode("utf-16-be"))
        return "{" + ",".join(f"{_encode(str(k))}:{_encode(value[k])}" for k in keys) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    raise ValueError(f"no canonical JSON for {value!r}")
