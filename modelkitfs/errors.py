"""Errors a user can act on.

Every failure that reaches a user is one of these: its message is a single line that names what
went wrong and what to do about it. Anything else escaping to the CLI is a bug.
"""

from __future__ import annotations


class ModelKitFSError(Exception):
    """Base class: ``str(error)`` is the one-line message shown to the user."""


class InvalidReference(ModelKitFSError):
    """The reference string cannot be parsed."""


class RegistryError(ModelKitFSError):
    """The registry could not be reached or answered something unusable."""


class NotFound(RegistryError):
    """The repository, tag, manifest or blob does not exist."""


class AuthenticationError(RegistryError):
    """The registry refused our credentials or token."""


class NotAllowed(AuthenticationError):
    """The trust model refuses the source: a local one the operator did not list, or one a
    kit's own content named (README, Security). Answered as a refused login is: EACCES in a
    mount, PERMISSION_DENIED to the CSI plugin."""


class SignatureRefused(NotAllowed):
    """No signature the signature policy trusts (README, Signed kits): EACCES in a mount,
    PERMISSION_DENIED to the CSI plugin, exit 1 from ``verify``; the message says why."""


class DigestMismatch(RegistryError):
    """Content did not hash to the digest that names it."""


class NotAModelKit(ModelKitFSError):
    """The artifact is valid OCI but not a ModelKit."""


class ArchiveError(ModelKitFSError):
    """A layer's archive is malformed or unsafe."""


class MountError(ModelKitFSError):
    """The mountpoint is unusable or the kernel refused the mount."""


class InvalidFilter(ModelKitFSError):
    """A ``--filter`` or ``--label`` argument is malformed."""


class SelectionError(ModelKitFSError):
    """What to mount is ambiguous or missing: index labels matching no entry or several, or
    ``model.path`` references that cycle or chain too deep."""


class RangeIgnored(RegistryError):
    """The server answered a range request with the whole blob (200), and the answer is kept
    open at the blob's start: read the blob in order from its start (the next request of it
    carries on that answer) rather than ask for ranges that each cost the blob up to them."""


class TransientError(RegistryError):
    """A failure that another attempt may cure: a transport error, HTTP 5xx or 429, an answer
    that breaks the protocol, object storage or the token service failing. ``retry_after``:
    seconds the server asked us to wait, if it did. The retry policy retries these and nothing
    else; once it gives up it raises :class:`GaveUp`."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """No connection could be made (refused, timed out, name resolution failing for now)."""


class ObjectStorageError(TransientError):
    """The object store or CDN a blob was redirected to failed; after a retry on the same URL,
    the redirect is resolved again through the registry."""


class TokenServiceError(TransientError):
    """The registry's token service could not be reached or answered an error."""


class GaveUp(RegistryError):
    """Transient failures went on until the retry budget ran out; ``last`` is the last one."""

    def __init__(self, message: str, last: TransientError) -> None:
        super().__init__(message)
        self.last = last
