"""Build ModelKits byte for byte as ``kit pack`` writes them, and push them to a registry.

Tar layers follow kit's Go writer: USTAR headers (prefix field for long paths), PAX ``x`` records
when a name is not ASCII or does not fit, normalised headers (mtime 0, uid 1000, gid 0, no
user/group names), no trailing slash on directories, every ancestor directory of the entry's path,
nested entries of other layers left out, and two zero blocks at the end. ``style`` produces what
other writers do instead (GNU long names, ``./`` prefixes, trailing slashes).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import ssl
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import zstandard

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

    def replace_layer(self, position: int, data: bytes) -> None:
        """Swap the bytes of the ``position``-th layer (uncompressed) for ``data``, in the
        manifest and in the config's digests, as if kit had packed them."""
        manifest = json.loads(self.manifest)
        descriptor = manifest["layers"][position]
        old = descriptor["digest"]
        self.blobs.pop(old, None)
        self.blobs[sha256(data)] = data
        descriptor.update(digest=sha256(data), size=len(data))
        self.manifest = json.dumps(manifest).encode()
        # Uncompressed: the layer's digest is also its diffId.
        self.replace_config(json.loads(self.config.replace(old.encode(), sha256(data).encode())))

    def replace_config(self, config: dict[str, Any] | bytes) -> None:
        """Swap in another config (a forged one, in tests of bad input): blob and manifest."""
        del self.blobs[sha256(self.config)]
        self.config = config if isinstance(config, bytes) else json.dumps(config).encode()
        self.blobs[sha256(self.config)] = self.config
        manifest = json.loads(self.manifest)
        manifest["config"].update(digest=sha256(self.config), size=len(self.config))
        self.manifest = json.dumps(manifest).encode()


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


def _header(
    name: str, mode: int, size: int, typeflag: bytes, prefix: str = "", uid: int = 1000
) -> bytes:
    block = bytearray(BLOCK)
    block[0:100] = name.encode()[:100].ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
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


@dataclass
class Member:
    """A tar member spelled out, hostile ones included."""

    name: str
    data: bytes = b""
    typeflag: bytes = b"0"
    mode: int = 0o644
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # what the header claims, when it lies


def raw_tar(members: list[Member], *, end: bool = True) -> bytes:
    """An archive with exactly these members (names outside the layer, links, devices, lying
    sizes...), in the Go writer's framing."""
    out = io.BytesIO()
    for member in members:
        if member.pax:
            records = b"".join(pax_record(k, v) for k, v in member.pax.items())
            out.write(_header("PaxHeaders.0/x", 0, len(records), b"x"))
            out.write(records + _padding(len(records)))
        size = len(member.data) if member.size is None else member.size
        block = bytearray(_header(member.name[:100], member.mode, size, member.typeflag))
        block[157:257] = member.linkname.encode()[:100].ljust(100, b"\0")
        block[148:156] = b" " * 8
        block[148:155] = _octal(sum(block), 7)
        out.write(bytes(block) + member.data + _padding(len(member.data)))
    if end:
        out.write(bytes(2 * BLOCK))
    return out.getvalue()


def empty_files_tar(names: Iterable[str]) -> bytes:
    """An archive of empty 0644 files, fast enough for a million of them."""
    template = bytearray(_header("", 0o644, 0, b"0"))
    template[148:156] = b" " * 8
    base = sum(template)
    blocks = []
    for name in names:
        encoded = name.encode()
        block = template.copy()
        block[: len(encoded)] = encoded
        block[148:156] = b"%06o\0 " % (base + sum(encoded))
        blocks.append(block)
    return b"".join(blocks) + bytes(2 * BLOCK)


def go_tar(members: list[tuple[str, Path]], uid: int = 1000) -> bytes:
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
            out.write(_header(pax_name, 0, len(records), b"x", uid=uid))
            out.write(records + _padding(len(records)))
            out.write(
                _header(
                    name.encode("ascii", "replace").decode()[:100], mode, size, typeflag, uid=uid
                )
            )
        else:
            prefix, short = split
            out.write(_header(short, mode, size, typeflag, prefix, uid))
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


MODELPACK_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
INDEX_ARTIFACT_TYPE = "application/vnd.kitops.modelkit.index.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_MODELPACK_BASES = {
    "model": "weight",
    "modelpart": "weight.config",
    "dataset": "dataset",
    "code": "code",
    "docs": "doc",
}


def compress(data: bytes, compression: str) -> bytes:
    """What kit's writers produce: gzip as several deflate members (pgzip writes blocks
    concurrently) and zstd as one frame without a content size, as a streaming encoder does."""
    if compression == "gzip":
        step = 1024 * 1024
        return b"".join(
            gzip.compress(data[i : i + step], 6, mtime=0) for i in range(0, max(len(data), 1), step)
        )
    if compression == "zstd":
        out = io.BytesIO()
        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            writer.write(data)
        return out.getvalue()
    return data


def legacy_members(context: Path, layer_path: str, all_paths: list[str]) -> list[tuple[str, Path]]:
    """A kit before v0.5: the entry's own tree, named relative to the parent of its path, with
    no ancestor directories."""
    parent = os.path.dirname(layer_path)
    return [
        (os.path.relpath(name, parent) if parent else name, source)
        for name, source in layer_members(context, layer_path, all_paths)
        if _within(name, layer_path)
    ]


def build_modelkit(
    context: Path,
    kitfile: dict[str, Any],
    *,
    style: str = "go",
    annotations: bool = True,
    compression: str = "",
    layer_format: str = "tar",
    artifact: str = "kit",
) -> Artifact:
    """Pack ``context`` as kit would, with ``kitfile`` (a dict in Kitfile shape).

    ``artifact`` is ``kit`` (v1.10 and later), ``kit-v1.7`` (no mediaType or artifactType in the
    manifest), ``legacy`` (before v0.5: no digests, members relative to the parent of the path),
    ``modelpack`` (``kit pack --use-model-pack``: the Kitfile as an annotation) or
    ``modelpack-bare`` (another ModelPack tool: no Kitfile at all).
    """
    config = json.loads(json.dumps(kitfile))
    entries = kit_entries(config)
    paths = [_clean(e["path"]) for _, _, e in entries]
    modelpack = artifact.startswith("modelpack")
    result = Artifact(b"", b"")
    layers = []
    diff_ids = []
    for (base, section, entry), path in zip(entries, paths, strict=True):
        if layer_format == "raw":
            uncompressed = (context / path).read_bytes()
        else:
            if artifact == "legacy":
                uncompressed = go_tar(legacy_members(context, path, paths), uid=0)
            else:
                members = layer_members(context, path, paths)
                uncompressed = go_tar(members) if style == "go" else other_tar(members, style)
        blob = compress(uncompressed, compression)
        digest = sha256(blob)
        result.blobs[digest] = blob
        diff_ids.append(sha256(uncompressed))
        if artifact != "legacy":
            entry["digest"] = digest
            entry["diffId"] = sha256(uncompressed)
        encoding = layer_format + (f"+{compression}" if compression else "")
        if modelpack:
            media_type = f"application/vnd.cncf.model.{_MODELPACK_BASES[base]}.v1.{encoding}"
        else:
            media_type = f"application/vnd.kitops.modelkit.{base}.v1.{encoding}"
        descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(blob)}
        layer_annotations = {}
        if annotations and artifact != "legacy":
            layer_annotations["org.cncf.model.filepath"] = path or "."
        if layer_format == "raw":
            info = (context / path).stat()
            layer_annotations["org.cncf.model.file.metadata+json"] = json.dumps(
                {
                    "name": os.path.basename(path),
                    "mode": info.st_mode & 0o777,
                    "uid": 0,
                    "gid": 0,
                    "size": info.st_size,
                    "mtime": "1970-01-01T00:00:00Z",
                    "typeflag": 48,
                }
            )
        if section == "prompts":
            layer_annotations["ml.kitops.modelkit.layer-subtype"] = "prompt"
        if layer_annotations:
            descriptor["annotations"] = layer_annotations
        layers.append(descriptor)
    manifest_annotations = {"ml.kitops.modelkit.cli-version": "1.10.0"}
    if modelpack:
        result.config = json.dumps(
            {
                "descriptor": {"name": (config.get("package") or {}).get("name", "")},
                "modelfs": {"type": "layers", "diffIds": diff_ids},
                "config": {},
            }
        ).encode()
        config_type, artifact_type = MODELPACK_CONFIG_TYPE, MODELPACK_ARTIFACT_TYPE
        if artifact == "modelpack":
            manifest_annotations["ml.kitops.modelkit.kitfile"] = json.dumps(config)
    else:
        result.config = json.dumps(config, separators=(",", ":")).encode()
        config_type, artifact_type = CONFIG_TYPE, ARTIFACT_TYPE
    result.blobs[sha256(result.config)] = result.config
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": config_type,
            "digest": sha256(result.config),
            "size": len(result.config),
        },
        "layers": layers,
        "annotations": manifest_annotations,
    }
    if artifact in ("kit-v1.7", "legacy"):
        del manifest["mediaType"], manifest["artifactType"]
        manifest["annotations"] = {"ml.kitops.modelkit.cli-version": "0.4.0"}
    result.manifest = json.dumps(manifest, separators=(",", ":")).encode()
    return result


def build_index(entries: list[tuple[Artifact, dict[str, Any], str | None]]) -> Artifact:
    """A ModelKit index (``kit index``) over ``(modelkit, labels, tag)`` entries of one
    repository; push the ModelKits first."""
    manifests = []
    for kit, labels, tag in entries:
        descriptor: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": kit.digest,
            "size": len(kit.manifest),
            "artifactType": json.loads(kit.manifest).get("artifactType", ARTIFACT_TYPE),
            "modelMetadata": labels,
        }
        if tag:
            descriptor["annotations"] = {"ml.kitops.modelkit.original-tag": tag}
        manifests.append(descriptor)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": INDEX_ARTIFACT_TYPE,
        "manifests": manifests,
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    return Artifact(raw, b"", {}, OCI_INDEX)


def selected_tree(context: Path, kitfile: dict[str, Any], selected: list[str]) -> set[str]:
    """Paths the layers of the entries at ``selected`` paths (as written) bring."""
    entries = kit_entries(kitfile)
    paths = [_clean(e["path"]) for _, _, e in entries]
    found = set()
    for (_, _, entry), path in zip(entries, paths, strict=True):
        if entry["path"] in selected:
            found |= {name for name, _ in layer_members(context, path, paths)}
    return found


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


class _Pieces:
    """A request body in pieces: httpx sends one ``bytes`` body by slicing what the socket has
    not taken yet, a copy per send (a 500 MB blob took 18 s to push on loopback; 4 s so). Not a
    generator, so that an authentication flow can send it again."""

    def __init__(self, data: bytes, size: int = 1024 * 1024) -> None:
        self.view, self.size = memoryview(data), size

    def __iter__(self) -> Iterator[memoryview]:
        return (self.view[i : i + self.size] for i in range(0, len(self.view), self.size))


def push(
    registry: str,
    repository: str,
    tag: str,
    artifact: Artifact,
    *,
    auth: httpx.Auth | None = None,
    tls: ssl.SSLContext | None = None,
) -> str:
    """Push blobs and manifest over the distribution API (HTTPS when ``tls`` is given);
    return the manifest digest."""
    base_url = f"{'https' if tls else 'http'}://{registry}"
    with httpx.Client(base_url=base_url, timeout=300, auth=auth, verify=tls or True) as client:
        for digest, data in artifact.blobs.items():
            if client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
                continue
            started = client.post(f"/v2/{repository}/blobs/uploads/")
            started.raise_for_status()
            location = started.headers["Location"]
            location += ("&" if "?" in location else "?") + f"digest={digest}"
            done = client.put(
                location,
                content=_Pieces(data),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data)),
                },
            )
            done.raise_for_status()
        response = client.put(
            f"/v2/{repository}/manifests/{tag}",
            content=artifact.manifest,
            headers={"Content-Type": artifact.media_type},
        )
        response.raise_for_status()
    return artifact.digest


def store_locally(home: Path, registry: str, repository: str, tag: str, kit: Artifact) -> Path:
    """Lay ``kit`` out in kit's local storage under ``home`` exactly as kit does: one shared
    OCI layout, plus per repository ``<base64url(registry/repo)>-index.json`` and ``-tags.json``."""
    storage = home / "storage"
    blobs = storage / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for digest, data in [*kit.blobs.items(), (kit.digest, kit.manifest)]:
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
    (storage / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptor = {"mediaType": kit.media_type, "digest": kit.digest, "size": len(kit.manifest)}
    shared = storage / "index.json"
    index = (
        json.loads(shared.read_text())
        if shared.exists()
        else {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }
    )
    index["manifests"].append(descriptor)
    shared.write_text(json.dumps(index))
    encoded = base64.urlsafe_b64encode(f"{registry}/{repository}".encode()).decode()
    repo_index = storage / f"{encoded}-index.json"
    manifests = json.loads(repo_index.read_text())["manifests"] if repo_index.exists() else []
    repo_index.write_text(json.dumps({"schemaVersion": 2, "manifests": [*manifests, descriptor]}))
    repo_tags = storage / f"{encoded}-tags.json"
    tags = json.loads(repo_tags.read_text()) if repo_tags.exists() else {}
    repo_tags.write_text(json.dumps({**tags, tag: descriptor}))
    return storage


def write_layout(root: Path, kit: Artifact, tag: str) -> None:
    """A plain OCI image layout holding ``kit`` tagged ``tag``."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for digest, data in [*kit.blobs.items(), (kit.digest, kit.manifest)]:
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptor = {
        "mediaType": kit.media_type,
        "digest": kit.digest,
        "size": len(kit.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
