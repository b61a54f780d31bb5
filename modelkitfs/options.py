"""Everything a mount (or a prefetch) can be told, checked before anything starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from modelkitfs.blobs.budget import check_max_size
from modelkitfs.config import configured_mirrors
from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import parse_filters, parse_labels
from modelkitfs.registry.transport import DEFAULT_TIMEOUT, NetworkOptions, ssl_context

VERIFY_MODES = ("complete", "full")
PREFETCH_MODES = ("none", "model", "all")


@dataclass
class MountOptions:
    plain_http: bool = False
    tls_verify: bool = True
    tls_cert: str | None = None  # extra CA bundle
    cert: str | None = None  # client certificate
    key: str | None = None
    proxy: str | None = None
    mirrors: list[str] = field(default_factory=list)  # tried before the registry, in order
    cache_dir: str | None = None
    cache_max_size: str | None = None  # e.g. "20G"; default half the cache's file system
    prefetch: str = "none"  # after mounting, fill the cache: none, model (and parts), all
    verify: str = "complete"  # "complete": each blob once all cached; "full": before serving
    log_level: str = "INFO"
    allow_other: bool = False
    filters: list[str] = field(default_factory=list)  # kit unpack --filter, e.g. "model,docs"
    labels: list[str] = field(default_factory=list)  # key=value, picks from a ModelKit index
    timeout: float = DEFAULT_TIMEOUT  # seconds before a read that cannot be served fails (EIO)

    def check(self) -> None:
        """Raise the error a malformed option would cause, before any mounting."""
        parse_filters(self.filters)
        parse_labels(self.labels)
        if self.cache_max_size is not None:
            check_max_size(self.cache_max_size)
        if self.prefetch not in PREFETCH_MODES:
            raise ModelKitFSError(
                f"unknown --prefetch {self.prefetch!r}: use one of {', '.join(PREFETCH_MODES)}"
            )
        if self.verify not in VERIFY_MODES:
            raise ModelKitFSError(
                f"unknown --verify {self.verify!r}: use one of {', '.join(VERIFY_MODES)}"
            )
        if not self.timeout > 0:
            raise ModelKitFSError(
                f"--timeout must be a positive number of seconds, not {self.timeout}"
            )
        ssl_context(self.network())

    def network(self, registry: str | None = None) -> NetworkOptions:
        """How to reach ``registry``: these options plus the mirrors configured for it."""
        mirrors = [*self.mirrors, *(configured_mirrors(registry) if registry else [])]
        return NetworkOptions(
            plain_http=self.plain_http,
            tls_verify=self.tls_verify,
            tls_cert=self.tls_cert,
            client_cert=self.cert,
            client_key=self.key,
            proxy=self.proxy,
            mirrors=tuple(dict.fromkeys(mirrors)),
            timeout=self.timeout,
        ).with_environment()


def merged_options(options: MountOptions | None, overrides: dict[str, Any]) -> MountOptions:
    """``options`` with the fields named in ``overrides`` replaced (``plain_http=True``...);
    an unknown name is an error that lists the known ones."""
    known = {f.name for f in fields(MountOptions)}
    if unknown := sorted(set(overrides) - known):
        raise ModelKitFSError(
            f"unknown option(s) {', '.join(unknown)}: use {', '.join(sorted(known))}"
        )
    merged = MountOptions(**{**asdict(options or MountOptions()), **overrides})
    merged.check()
    return merged
