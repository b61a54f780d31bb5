"""Build ModelKits byte for byte as ``kit pack`` writes them, and push them to a registry.

Tar layers follow kit's Go writer: USTAR headers (prefix field for long paths), PAX ``x`` records
when a name is not ASCII or does not fit, normalised headers (mtime 0, uid 1000, gid 0, no
user/group names), no trailing slash on directories, every ancestor directory of the entry's path,
nested entries of other layers left out, and two zero blocks at the end. ``style`` produces what
other writers do instead (GNU long names, ``./`` prefixes, trailing slashes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BLOCK = 512
CONFIG_TYPE = "application/vnd.kitops.modelkit.config.v1+json"
ARTIFACT_TYPE = "application/vnd.kitops.modelkit.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IGNORED_AT_ROOT = {"Kitfile", "kitfile", ".kitfile", ".kitignore"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Artifact:
    manifest: bytes
    config: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layer_bytes(self) -> int:
        return sum(len(b) for d, b in self.blobs.items() if d != sha256(self.config))


# --- Go archive/tar, as kit uses it -------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    digits = format(value, "o").encode()
    return digits.rjust(width - 1, b"0") + b"\0"


def _split_ustar(name: str) -> tuple[str, str] | None:
    """Go's splitUSTARPath: a prefix of at most 155 and a name of at most 100 bytes."""
    encoded = name.encode()
    if len(encoded) <= 100:
        return "", name
    for i in range(min(len(encoded) - 1, 155), 0, -1):
        if encoded[i : i + 1] == b"/" and len(encoded) - i - 1 <= 100 and len(encoded) - i - 1 > 0:
            return encoded[:i].decode(), encoded[i + 1 :].decode()
    return None


def _header(name: str, mode: int, size: int, typeflag: bytes, prefix: str = "") -> bytes:
    block = bytearray(BLOCK)
    block[0:100] = name.encode()[:100].ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(1000, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[345:500] = prefix.encode()[:155].ljust(155, b"\0")
    block[148:156] = b" " * 8
    block[148:155] = _octal(sum(block), 7)
    block[155] = 0x20
    return bytes(block)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def go_tar(members: list[tuple[str, Path]]) -> bytes:
    out = io.BytesIO()
    for name, source in members:
        info = source.stat()
        is_dir = source.is_dir()
        mode = info.st_mode & 0o7777
        size = 0 if is_dir else info.st_size
        typeflag = b"5" if is_dir else b"0"
        split = _split_ustar(name) if name.isascii() else None
        if split is None:
            records = pax_record("path", name)
            base = os.path.basename(name)
            pax_name = os.path.join(os.path.dirname(name), "PaxHeaders.0", base)
            pax_name = pax_name.encode("ascii", "replace").decode()[:100]
            out.write(_header(pax_name, 0, len(records), b"x"))
            out.write(records + _padding(len(records)))
            out.write(_header(name.encode("ascii", "replace").decode()[:100], mode, size, typeflag))
        else:
            prefix, short = split
            out.write(_header(short, mode, size, typeflag, prefix))
        if not is_dir:
            data = source.read_bytes()
            out.write(data + _padding(len(data)))
    out.write(bytes(2 * BLOCK))
    return out.getvalue()


def other_tar(members: list[tuple[str, Path]], style: str) -> bytes:
    """Archives from other writers: Python's tarfile in GNU or PAX format, ``./`` prefixes and
    trailing slashes on directories."""
    out = io.BytesIO()
    fmt = tarfile.GNU_FORMAT if style == "gnu" else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for name, source in members:
            info = archive.gettarinfo(str(source), arcname="./" + name)
            info.uid, info.gid, info.uname, info.gname, info.mtime = 0, 0, "", "", 0
            if info.isdir():
                info.name = "./" + name + "/"
                archive.addfile(info)
            else:
                with open(source, "rb") as f:
                    archive.addfile(info, f)
    return out.getvalue()


# --- kit pack -----------------------------------------------------------------------------------


def _clean(path: str) -> str:
    cleaned = os.path.normpath(path)
    return "" if cleaned == "." else cleaned


def _within(path: str, directory: str) -> bool:
    return directory == "" or path == directory or path.startswith(directory + "/")


def _walk(context: Path, relative: str = "") -> Iterator[str]:
    """filepath.Walk order: lexical within a directory, depth first, root not included."""
    for name in sorted(os.listdir(context / relative)):
        child = f"{relative}/{name}" if relative else name
        yield child
        if (context / child).is_dir() and not (context / child).is_symlink():
            yield from _walk(context, child)


def layer_members(context: Path, layer_path: str, all_paths: list[str]) -> list[tuple[str, Path]]:
    """The entries kit puts in the layer for ``layer_path``."""
    others = [p for p in all_paths if p != layer_path and not _within(layer_path, p)]
    members = []
    for name in _walk(context):
        if name in IGNORED_AT_ROOT or (context / name).is_symlink():
            continue
        if not (_within(name, layer_path) or _within(layer_path, name)):
            continue
        if any(_within(name, other) for other in others):
            continue
        members.append((name, context / name))
    return members


def kit_entries(kitfile: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(media base, kitfile section, entry) in manifest order."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    model = kitfile.get("model")
    if model and model.get("path"):
        out.append(("model", "model", model))
    for part in (model or {}).get("parts", []):
        out.append(("modelpart", "parts", part))
    out += [("code", "code", e) for e in kitfile.get("code", [])]
    out += [("dataset", "datasets", e) for e in kitfile.get("datasets", [])]
    out += [("docs", "docs", e) for e in kitfile.get("docs", [])]
    out += [("code", "prompts", e) for e in kitfile.get("prompts", [])]
    return out


def build_modelkit(
    context: Path, kitfile: dict[str, Any], *, style: str = "go", annotations: bool = True
) -> Artifact:
    """Pack ``context`` as kit would, with ``kitfile`` (a dict in Kitfile shape)."""
    config = json.loads(json.dumps(kitfile))
    entries = kit_entries(config)
    paths = [_clean(e["path"]) for _, _, e in entries]
    artifact = Artifact(b"", b"")
    layers = []
    for (base, section, entry), path in zip(entries, paths, strict=True):
        members = layer_members(context, path, paths)
        blob = go_tar(members) if style == "go" else other_tar(members, style)
        digest = sha256(blob)
        artifact.blobs[digest] = blob
        entry["digest"] = digest
        entry["diffId"] = digest
        descriptor: dict[str, Any] = {
            "mediaType": f"application/vnd.kitops.modelkit.{base}.v1.tar",
            "digest": digest,
            "size": len(blob),
        }
        layer_annotations = {}
        if annotations:
            layer_annotations["org.cncf.model.filepath"] = path or "."
        if section == "prompts":
            layer_annotations["ml.kitops.modelkit.layer-subtype"] = "prompt"
        if layer_annotations:
            descriptor["annotations"] = layer_annotations
        layers.append(descriptor)
    artifact.config = json.dumps(config, separators=(",", ":")).encode()
    artifact.blobs[sha256(artifact.config)] = artifact.config
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": sha256(artifact.config),
            "size": len(artifact.config),
        },
        "layers": layers,
        "annotations": {"ml.kitops.modelkit.cli-version": "1.10.0"},
    }
    artifact.manifest = json.dumps(manifest, separators=(",", ":")).encode()
    return artifact


def expected_tree(context: Path, kitfile: dict[str, Any]) -> set[str]:
    """Paths ``kit unpack`` writes (besides the Kitfile), stated directly: everything inside an
    entry's path, and the ancestors of each entry's path."""
    paths = [_clean(e["path"]) for _, _, e in kit_entries(kitfile)]
    found = set()
    for name in _walk(context):
        if name in IGNORED_AT_ROOT or (context / name).is_symlink():
            continue
        if any(_within(name, p) or _within(p, name) for p in paths):
            found.add(name)
    return found


def push(registry: str, repository: str, tag: str, artifact: Artifact) -> str:
    """Push blobs and manifest over the distribution API; return the manifest digest."""
    with httpx.Client(base_url=f"http://{registry}", timeout=300) as client:
        for digest, data in artifact.blobs.items():
            if client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
                continue
            started = client.post(f"/v2/{repository}/blobs/uploads/")
            started.raise_for_status()
            location = started.headers["Location"]
            location += ("&" if "?" in location else "?") + f"digest={digest}"
            done = client.put(
                location, content=data, headers={"Content-Type": "application/octet-stream"}
            )
            done.raise_for_status()
        response = client.put(
            f"/v2/{repository}/manifests/{tag}",
            content=artifact.manifest,
            headers={"Content-Type": artifact.media_type},
        )
        response.raise_for_status()
    return artifact.digest
