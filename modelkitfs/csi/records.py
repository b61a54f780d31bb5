"""What the plugin has published, one small JSON file per target path under the state folder.

A record holds what a repeated publish must match and how the volume was made (bound from the
node service, or a mount of its own), never credentials: that is all a restarted plugin needs
to answer a repeated publish and to unpublish. Files are written whole (a temporary file
renamed over) and readable by root alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHARED = "shared"  # bound from the node service
OWN = "own"  # a mount of its own


@dataclass
class Record:
    volume_id: str
    target_path: str
    spec: dict[str, Any]  # VolumeSpec.as_dict()
    how: str  # SHARED or OWN
    source: str = ""  # SHARED: the kit folder bound, pinned by digest
    pod: dict[str, str] = field(default_factory=dict)  # the pod's name, namespace, uid


class Records:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, target_path: str) -> Path:
        name = hashlib.sha256(os.fsencode(target_path)).hexdigest()[:32]
        return self.folder / f"{name}.json"

    def get(self, target_path: str) -> Record | None:
        try:
            document = json.loads(self._path(target_path).read_text())
            return Record(**document)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring the unreadable record of %s: %s", target_path, exc)
            return None

    def put(self, record: Record) -> None:
        path = self._path(record.target_path)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(record), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def delete(self, target_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(target_path).unlink()

    def all(self) -> list[Record]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(Record(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring the unreadable record %s: %s", path, exc)
        return found
