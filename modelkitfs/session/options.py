"""Everything a mount (or a prefetch, a listing, a read) can be told, parsed once and checked
before anything starts.

:class:`MountOptions` is frozen and typed: sizes are bytes, filters are :class:`Filter` values,
labels are pairs, the proxy is a checked URL. It takes what a user writes (``"20G"``,
``["model,docs"]``, ``["key=value"]``) as well as the parsed values, so the Python API, fsspec's
storage options and the CLI share one parser, and a bad value is one line naming the option.
The CLI's choices come from the tuples here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from modelkitfs.cache import check_max_size
from modelkitfs.errors import InvalidFilter, ModelKitFSError
from modelkitfs.kit import Filter, parse_labels
from modelkitfs.kit.filters import FILTER_TYPES, parse_filter
from modelkitfs.registry.network import DEFAULT_TIMEOUT, NetworkOptions, ssl_context
from modelkitfs.session.config import configured_mirrors
from modelkitfs.signing import Policy, load_policy

VERIFY_MODES = ("complete", "full")
PREFETCH_MODES = ("none", "model", "all")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


@dataclass(frozen=True)
class MountOptions:
    plain_http: bool = False
    tls_verify: bool = True
    tls_cert: str | None = None  # extra CA bundle
    cert: str | None = None  # client certificate
    key: str | None = None
    proxy: str | None = field(default=None, repr=False)  # http(s):// or socks5://; secret
    mirrors: tuple[str, ...] = ()  # tried before the registry, in order
    cache_dir: str | None = None
    cache_max_size: int | None = None  # bytes (given as "20G"...); None: half the file system
    prefetch: str = "none"  # after mounting, fill the cache: none, model (and parts), all
    verify: str = "complete"  # "complete": each blob once all cached; "full": before serving
    log_level: str = "info"
    allow_other: bool = False
    filters: tuple[Filter, ...] = ()  # kit unpack --filter (given as "model,docs"...)
    labels: tuple[tuple[str, str], ...] = ()  # picks from a ModelKit index (given as "k=v")
    timeout: float = DEFAULT_TIMEOUT  # seconds before a read that cannot be served fails (EIO)
    metrics: str | None = None  # HOST:PORT to serve Prometheus metrics on
    # Local sources (OCI layouts, kit's storage) a session may read: None, any (a user's own
    # commands); else only those inside these folders (the node service and the CSI plugin).
    allow_local: tuple[str, ...] | None = None
    # Signers a kit must be signed by (README, Signed kits), named as cosign names them: PEM
    # public keys (files, or the PEM itself), a keyless identity (exact or a regexp) with its
    # OIDC issuer, sigstore's trusted_root.json, and a policy file. None of them: no check.
    verify_keys: tuple[str, ...] = ()
    certificate_identity: str | None = None
    certificate_identity_regexp: str | None = None
    certificate_oidc_issuer: str | None = None
    trusted_root: str | None = None
    insecure_ignore_tlog: bool = False
    policy: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("mirrors", tuple(str(m) for m in _sequence(self.mirrors)))
        put("filters", tuple(_filter(f) for f in _sequence(self.filters)))
        put("labels", _labels(self.labels))
        put("cache_max_size", _max_size(self.cache_max_size))
        put("prefetch", _choice("--prefetch", self.prefetch, PREFETCH_MODES))
        put("verify", _choice("--verify", self.verify, VERIFY_MODES))
        put("log_level", _choice("--log-level", str(self.log_level).lower(), LOG_LEVELS))
        put("timeout", _timeout(self.timeout))
        put("proxy", _proxy(self.proxy))
        if self.allow_local is not None:
            put("allow_local", tuple(_folder(f) for f in _sequence(self.allow_local)))
        if self.metrics is not None:
            metrics_address(self.metrics)
        put("verify_keys", tuple(_path(k) for k in _sequence(self.verify_keys)))
        put("trusted_root", _path(self.trusted_root) if self.trusted_root else None)
        put("policy", _path(self.policy) if self.policy else None)
        put("insecure_ignore_tlog", bool(self.insecure_ignore_tlog))
        self.signature_policy()  # a key, trusted root or policy that cannot be used: now

    def signature_policy(self) -> Policy | None:
        """The signature policy these options give (None: no check), read from its files."""
        return load_policy(
            self.verify_keys,
            self.certificate_identity,
            self.certificate_identity_regexp,
            self.certificate_oidc_issuer,
            self.trusted_root,
            self.insecure_ignore_tlog,
            self.policy,
        )

    def check(self) -> None:
        """Raise the error what these options name on disk would cause (CA bundles, client
        certificates that cannot be read), before any mounting."""
        ssl_context(self.network())

    def replace(self, **changes: Any) -> MountOptions:
        return dataclasses.replace(self, **changes)

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


OPTION_NAMES = frozenset(f.name for f in fields(MountOptions))


def _sequence(value: Any) -> Iterable[Any]:
    """One value or many: ``"model"`` and ``["model"]`` alike."""
    if value is None:
        return ()
    if isinstance(value, (str, Filter)):
        return (value,)
    return value


def _filter(value: Filter | str) -> Filter:
    if isinstance(value, Filter):
        return value
    text = str(value)
    for kind in text.split(":", 1)[0].split(","):
        if kind not in FILTER_TYPES:
            close = difflib.get_close_matches(kind, FILTER_TYPES, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InvalidFilter(
                f"--filter {text!r}: {kind!r} is not a type; {hint}types are "
                f"{', '.join(FILTER_TYPES)} (TYPES[:IDS], e.g. -f model,datasets:train)"
            )
    return parse_filter(text)


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    items = list(_sequence(value))
    if all(isinstance(item, tuple) and len(item) == 2 for item in items):
        return tuple((str(k), str(v)) for k, v in items)
    return tuple(parse_labels([str(item) for item in items]).items())


def _max_size(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ModelKitFSError(f"--cache-max-size {value!r} is not a size: give e.g. 20G")
    return check_max_size(str(value))


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ModelKitFSError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")
    return str(value)


def _timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ModelKitFSError(f"--timeout must be a positive number of seconds, not {value!r}")
    return seconds


def _path(value: Any) -> str:
    """A file named by a signature option, absolute (a daemon may run elsewhere); a PEM given
    as the value itself ($COSIGN_KEY) as it is."""
    text = str(value)
    return text if text.lstrip().startswith("-----BEGIN") else os.path.abspath(text)


SIGNING_FIELDS = (
    "verify_keys",
    "certificate_identity",
    "certificate_identity_regexp",
    "certificate_oidc_issuer",
    "trusted_root",
    "insecure_ignore_tlog",
    "policy",
)
FLAG_SIGNERS = SIGNING_FIELDS[:4]  # the signers cosign's flags name
SIGNERS = (*FLAG_SIGNERS, "policy")
SIGNING_ENVIRONMENT = {
    "COSIGN_KEY": "verify_keys",
    "COSIGN_CERT_IDENTITY": "certificate_identity",
    "COSIGN_CERT_OIDC_ISSUER": "certificate_oidc_issuer",
}


def signing_environment(given: Mapping[str, Any]) -> dict[str, Any]:
    """The signers kit's init container takes from $COSIGN_KEY, or $COSIGN_CERT_IDENTITY and
    $COSIGN_CERT_OIDC_ISSUER, for options ``given`` (field values) that name no signer."""
    if any(given.get(name) for name in SIGNERS):
        return {}
    return {
        field_name: os.environ[variable]
        for variable, field_name in SIGNING_ENVIRONMENT.items()
        if os.environ.get(variable)
    }


def _folder(value: Any) -> str:
    """``--allow-local DIR``: an existing folder, by its real path (a symlink in it cannot
    lead a reference out of it: references are resolved to real paths before the check)."""
    path = os.path.realpath(str(value))
    if not os.path.isdir(path):
        raise ModelKitFSError(
            f"--allow-local {value!r} is not a folder: give a folder of OCI layouts, or kit's "
            "storage folder"
        )
    return path


def _proxy(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None
    if url is None or url.scheme not in PROXY_SCHEMES or not url.host:
        shown = text if url is None or not url.password else "the URL given"
        raise ModelKitFSError(
            f"--proxy {shown!r} is not a proxy URL: give http://HOST:PORT (or https://, "
            "socks5://), with user:password@ before the host if it asks for them"
        )
    return text


def merged_options(options: MountOptions | None, overrides: dict[str, Any]) -> MountOptions:
    """``options`` with the fields named in ``overrides`` replaced (``plain_http=True``...);
    an unknown name is an error that lists the known ones."""
    if unknown := sorted(set(overrides) - OPTION_NAMES):
        raise ModelKitFSError(
            f"unknown option(s) {', '.join(unknown)}: use {', '.join(sorted(OPTION_NAMES))}"
        )
    base = options or MountOptions()
    given = {name: overrides.get(name, getattr(base, name)) for name in SIGNERS}
    merged = base.replace(**{**signing_environment(given), **overrides})
    merged.check()
    return merged


def metrics_address(text: str) -> tuple[str, int]:
    """``--metrics HOST:PORT`` (``:PORT`` for every address), or an error saying what to give."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ModelKitFSError(
            f"--metrics {text!r}: give HOST:PORT to serve metrics on, e.g. 127.0.0.1:9464"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def signing_arguments(parser: argparse.ArgumentParser, *, policy: bool = False) -> None:
    """Whose signature a kit needs, as cosign verify and kit's init container name it (README,
    Signed kits); none: no check."""
    sign = parser.add_argument_group("signatures (as cosign verify's flags; none given: no check)")
    sign.add_argument(
        "--verify-key",
        dest="verify_keys",
        action="append",
        default=[],
        metavar="FILE",
        help="serve only what this PEM public key signed (cosign.pub; repeatable: any one "
        "suffices; default $COSIGN_KEY)",
    )
    sign.add_argument(
        "--certificate-identity",
        metavar="IDENTITY",
        help="keyless: the signer's identity in its certificate (an email or URI; default "
        "$COSIGN_CERT_IDENTITY)",
    )
    sign.add_argument(
        "--certificate-identity-regexp",
        metavar="REGEXP",
        help="keyless: a regular expression the identity must match (found anywhere, as "
        "cosign's: anchor it with ^ and $)",
    )
    sign.add_argument(
        "--certificate-oidc-issuer",
        metavar="URL",
        help="keyless: the OIDC issuer of the signer's identity (default $COSIGN_CERT_OIDC_ISSUER)",
    )
    sign.add_argument(
        "--trusted-root",
        metavar="FILE",
        help="sigstore's trusted_root.json: the Fulcio CAs and Rekor keys signatures are "
        "checked against (nothing is fetched)",
    )
    sign.add_argument(
        "--insecure-ignore-tlog",
        action="store_true",
        help="accept key signatures without checking their transparency-log entry, as cosign",
    )
    if policy:
        sign.add_argument(
            "--policy",
            metavar="FILE",
            help="which signers each kit needs: a file of ClusterImagePolicy specs (images[].glob, "
            "authorities[].key|keyless, mode enforce|warn); a kit no glob covers is refused",
        )
