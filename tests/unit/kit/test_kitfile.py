from modelkitfs.kit.kitfile import render_kitfile

# What kit unpack writes for this config: struct key order (code before datasets), no
# digest/diffId, unknown keys dropped, flow-style authors, yaml.v3 quoting, 2-space indent.
CONFIG = {
    "manifestVersion": "1.0.0",
    "datasets": [
        {"name": "training", "path": "data/train.csv", "digest": "sha256:1", "diffId": "sha256:1"}
    ],
    "code": [{"path": "src", "digest": "sha256:2"}],
    "package": {
        "name": "my-model",
        "version": "1.0",
        "authors": ["Alice", "Bob"],
        "unknown": "dropped",
    },
    "model": {
        "name": "my-model",
        "path": "model.gguf",
        "parameters": {"b": 1.0, "a": "true"},
        "parts": [{"name": "adapter", "path": "adapter.bin"}],
    },
    "docs": [{"path": "README.md", "description": "two\nlines"}],
}
EXPECTED = """\
manifestVersion: 1.0.0
package:
  name: my-model
  version: "1.0"
  authors: [Alice, Bob]
model:
  name: my-model
  path: model.gguf
  parts:
    - name: adapter
      path: adapter.bin
  parameters:
    a: "true"
    b: 1
code:
  - path: src
datasets:
  - name: training
    path: data/train.csv
docs:
  - path: README.md
    description: |-
      two
      lines
"""


def test_renders_what_kit_unpack_writes() -> None:
    assert render_kitfile(CONFIG).decode() == EXPECTED


def test_empty_package_is_omitted() -> None:
    assert (
        render_kitfile({"manifestVersion": "1.0.0", "package": {}}) == b"manifestVersion: 1.0.0\n"
    )
