"""The optional configuration file: settings a machine's users share, such as mirrors.

``$MODELKITFS_CONFIG``, else ``$XDG_CONFIG_HOME/modelkitfs/config.yaml``, else
``~/.config/modelkitfs/config.yaml``::

    mirrors:                      # tried in order before the registry itself
      "*": [mirror.internal:5000] # for every registry
      registry.example: [http://127.0.0.1:5001]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from modelkitfs.errors import ModelKitFSError


def config_path() -> Path:
    if explicit := os.environ.get("MODELKITFS_CONFIG"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "modelkitfs" / "config.yaml"


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelKitFSError(f"cannot read the configuration {path}: {exc}") from None
    if not isinstance(document, dict):
        raise ModelKitFSError(f"the configuration {path} is not a YAML mapping")
    return document


def configured_mirrors(registry: str) -> list[str]:
    """Mirrors for ``registry`` from the configuration file: its own, then those for ``*``."""
    mirrors = load_config().get("mirrors") or {}
    if isinstance(mirrors, list):
        mirrors = {"*": mirrors}
    if not isinstance(mirrors, dict):
        raise ModelKitFSError(f"'mirrors' in {config_path()} must map registries to lists")
    found = [*(mirrors.get(registry) or []), *(mirrors.get("*") or [])]
    return [str(m) for m in found]
