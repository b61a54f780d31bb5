"""The ``modelkit://`` protocol for fsspec: pandas, pyarrow, Hugging Face ``datasets`` and
anything else that takes an fsspec URL read a kit's files lazily, without a mount, through the
shared cache.

>>> import pandas
>>> pandas.read_csv("modelkit://registry.example/team/llm:v1/data/train.csv",
...                 storage_options={"cache_dir": "/var/cache/modelkitfs"})

A URL is a kit reference with its tag or digest, then the path inside the kit. Storage options
are the fields of :class:`~modelkitfs.session.options.MountOptions`, as the CLI's flags
(``plain_http``, ``cache_dir``, ``filters``, ``timeout``...). Registered through the
``fsspec.specs`` entry point.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from modelkitfs.errors import InvalidReference
from modelkitfs.reader import EntryInfo, KitReader
from modelkitfs.session.options import OPTION_NAMES, MountOptions

PROTOCOL = "modelkit"


def split_url(path: str) -> tuple[str, str]:
    """``registry/repo:tag/inner/path`` as the kit reference and the path inside it. The
    reference ends with the component that carries its tag (``:``) or digest (``@``); a first
    component ``host:port`` is a registry."""
    parts = path.removeprefix(f"{PROTOCOL}://").strip("/").split("/")
    for position, part in enumerate(parts):
        if "@" in part or (":" in part and not (position == 0 and _is_host_port(part))):
            return "/".join(parts[: position + 1]), "/".join(parts[position + 1 :])
    raise InvalidReference(
        f"{PROTOCOL}://{path} names no tag or digest: write {PROTOCOL}://REGISTRY/REPOSITORY:TAG"
        "/PATH (or @sha256:DIGEST), so that the kit's reference ends where the path begins"
    )


def _is_host_port(part: str) -> bool:
    return part.rpartition(":")[2].isdigit()


class ModelKitFileSystem(AbstractFileSystem):
    """Read-only access to the files of ModelKits. One :class:`KitReader` per kit reference,
    opened on first use and kept for the life of the filesystem object."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, **storage_options: Any) -> None:
        options = {k: v for k, v in storage_options.items() if k in OPTION_NAMES}
        super().__init__(**{k: v for k, v in storage_options.items() if k not in OPTION_NAMES})
        self.options = MountOptions(**options)
        self.options.check()
        self._readers: dict[str, KitReader] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)  # finish cache writes before the interpreter goes

    @classmethod
    def _strip_protocol(cls, path: str | list[str]) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return path.removeprefix(f"{PROTOCOL}://").rstrip("/")

    def reader(self, reference: str) -> KitReader:
        with self._lock:
            if reference not in self._readers:
                self._readers[reference] = KitReader(reference, self.options)
            return self._readers[reference]

    def _resolve(self, path: str) -> tuple[KitReader, str, str]:
        reference, inner = split_url(self._strip_protocol(path))
        return self.reader(reference), reference, inner

    def _entry(self, reference: str, entry: EntryInfo) -> dict[str, Any]:
        return {
            "name": f"{reference}/{entry.path}" if entry.path else reference,
            "size": entry.size,
            "type": "directory" if entry.is_dir else "file",
            "mode": entry.mode,
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        reader, reference, inner = self._resolve(path)
        info = reader.info(inner)
        entries = reader.listdir(inner) if info.is_dir else [info]
        listed = [self._entry(reference, entry) for entry in entries]
        return listed if detail else [entry["name"] for entry in listed]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        reader, reference, inner = self._resolve(path)
        return self._entry(reference, reader.info(inner))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"{PROTOCOL}:// is read-only: open {path} with mode 'rb'")
        reader, _, inner = self._resolve(path)
        return reader.open(inner)

    def close(self) -> None:
        """Close every kit opened (cache writes are finished)."""
        with self._lock:
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()
