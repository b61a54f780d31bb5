"""What an HTTP status means, as a typed error: the one place answers become failures.

The retry policy decides by type alone (:mod:`modelkitfs.registry.retry`), so every status a
registry or an object store answers is mapped here, once: 404 is :class:`NotFound`, 401 and 403
are :class:`AuthenticationError` with a login hint, 5xx/429/408 are transient (with the wait a
``Retry-After`` asks for). Object storage is worded as such: it holds no credentials of ours,
so a refusal there means the URL the registry gave went stale, not a login to fix.
"""

from __future__ import annotations

import httpx

from modelkitfs.errors import (
    AuthenticationError,
    NotFound,
    ObjectStorageError,
    RegistryError,
    TransientError,
)
from modelkitfs.registry.auth import login_hint
from modelkitfs.registry.network import describe
from modelkitfs.registry.retry import retry_after_seconds

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Expired(ObjectStorageError):
    """Object storage refused a URL (expired, revoked): drop it at once."""


def registry_error(registry: str, status: int, what: str, retry_after: str = "") -> RegistryError:
    """The error for registry ``registry`` answering ``status`` (not 2xx) about ``what``."""
    if status == 404:
        return NotFound(
            f"{what} not found (HTTP 404): check the repository and tag, e.g. with "
            "'kit list' or the registry's web page"
        )
    if status in (401, 403):
        return AuthenticationError(
            f"access to {what} denied (HTTP {status}): {login_hint(registry)}"
        )
    if status in RETRYABLE_STATUS:
        return TransientError(
            f"registry {registry} answered HTTP {status} for {what}: it may be "
            "overloaded or failing",
            retry_after_seconds(retry_after),
        )
    return RegistryError(f"registry {registry} answered HTTP {status} for {what}")


def storage_error(url: str, status: int, what: str, retry_after: str = "") -> ObjectStorageError:
    """The error for object storage at ``url`` answering ``status`` (not 2xx) about ``what``:
    retried on the same URL when the status is transient, else the URL is :class:`Expired`."""
    if status in RETRYABLE_STATUS:
        return ObjectStorageError(
            f"object storage {host(url)} answered HTTP {status} for {what}",
            retry_after_seconds(retry_after),
        )
    return Expired(
        f"object storage {host(url)} refused the URL the registry gave for {what} "
        f"(HTTP {status}); it may have expired"
    )


def at_storage(exc: TransientError, url: str) -> ObjectStorageError:
    """A transport failure at object storage, typed and worded as such (the registry's
    address hints do not apply to a URL the registry gave)."""
    if isinstance(exc, ObjectStorageError):
        return exc
    cause = describe(exc.__cause__) if exc.__cause__ is not None else str(exc)
    return ObjectStorageError(f"object storage {host(url)} failed: {cause}", exc.retry_after)


def host(url: str) -> str:
    """``host[:port]`` of ``url``, as messages name it."""
    return httpx.URL(url).netloc.decode("ascii")
