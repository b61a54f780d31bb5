"""Render the ``Kitfile`` that ``kit unpack`` writes from a ModelKit config.

kit decodes the config JSON into its Go structs and encodes them with yaml.v3 (indent 2), so the
file has the structs' key order whatever order the author wrote, drops unknown keys and the
layer ``digest``/``diffId``, omits empty values, writes ``authors`` in flow style and
double-quotes strings that would otherwise read as another type.
"""

from __future__ import annotations

from typing import Any

import yaml

_ENTRY_TAIL = ("description", "license")
# Field order of kit's Go structs (pkg/artifact/kitfile.go); "!" marks a field kept when empty.
_PACKAGE = ("name", "version", "description", "license", "authors")
_MODEL = (
    "name",
    "path",
    "license",
    "framework",
    "format",
    "version",
    "description",
    "parts",
    "parameters",
)
_PART = ("name", "path", "license", "type")
_CODE = ("path", "description", "license")
_DATASET = ("name", "path", "remotePath", "remoteHash", "description", "license", "parameters")
_DOCS = ("!path", "description")
_PROMPT = ("name", "path", "description")
_MCP = ("name", "path", "description")
_KITFILE = (
    "!manifestVersion",
    "package",
    "model",
    "code",
    "datasets",
    "docs",
    "prompts",
    "mcpServers",
)
_NESTED = {
    "package": _PACKAGE,
    "model": _MODEL,
    "parts": _PART,
    "code": _CODE,
    "datasets": _DATASET,
    "docs": _DOCS,
    "prompts": _PROMPT,
    "mcpServers": _MCP,
}


class _Flow(list[Any]):
    """A list yaml.v3 writes in flow style (kit tags ``authors`` with ``flow``)."""


def _empty(value: Any) -> bool:
    return (
        value is None or value == "" or value == [] or value == {} or value is False or value == 0
    )


def _shape(value: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for spec in fields:
        key = spec.lstrip("!")
        item = value.get(key)
        if _empty(item) and not spec.startswith("!"):
            continue
        nested = _NESTED.get(key) if key != "parameters" else None
        if nested and isinstance(item, list):
            item = [_shape(element, nested) for element in item]
        elif nested and isinstance(item, dict):
            item = _shape(item, nested)
            if not item:
                continue
        elif key == "authors" and isinstance(item, list):
            item = _Flow(item)
        elif key == "parameters":
            item = _sorted_keys(item)
        out[key] = "" if item is None else item
    return out


def _sorted_keys(value: Any) -> Any:
    """Parameters pass through ``map[string]any``, whose keys yaml.v3 writes sorted."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


class _GoYAMLDumper(yaml.SafeDumper):
    """Approximates yaml.v3's block style: sequences indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    # yaml.v3 double-quotes a string that would read back as another type ("true", "1.0").
    implicit = dumper.resolve(yaml.ScalarNode, value, (True, False))
    style = '"' if implicit != "tag:yaml.org,2002:str" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    if value.is_integer() and abs(value) < 1e21:
        return dumper.represent_int(int(value))  # Go formats float64 123 as 123
    return dumper.represent_float(value)


_GoYAMLDumper.add_representer(str, _represent_str)
_GoYAMLDumper.add_representer(float, _represent_float)
_GoYAMLDumper.add_representer(
    _Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def render_kitfile(config: dict[str, Any]) -> bytes:
    """The Kitfile bytes ``kit unpack`` writes for this config."""
    document = _shape(config, _KITFILE)
    text = yaml.dump(
        document,
        Dumper=_GoYAMLDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**31 - 1,
        indent=2,
    )
    return text.encode()
