"""HTTP statuses as typed errors: what the retry policy retries is decided here, by type, and
each message says what to do; object storage is worded as such, without login hints."""

from __future__ import annotations

import pytest

from modelkitfs.errors import (
    AuthenticationError,
    NotFound,
    ObjectStorageError,
    RegistryError,
    TransientError,
)
from modelkitfs.registry.status import Expired, at_storage, registry_error, storage_error

BLOB = "blob sha256:ab of reg.test/team/kit"
URL = "https://bucket.storage.test/blob?sig=1"


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (404, NotFound, "check the repository and tag"),
        (401, AuthenticationError, "kit login reg.test"),
        (403, AuthenticationError, "kit login reg.test"),
        (503, TransientError, "overloaded or failing"),
        (429, TransientError, "HTTP 429"),
        (418, RegistryError, "answered HTTP 418"),
    ],
)
def test_registry_statuses(code: int, kind: type[RegistryError], says: str) -> None:
    error = registry_error("reg.test", code, BLOB)
    assert type(error) is kind and says in str(error) and BLOB in str(error)


def test_retry_after_is_carried_by_transient_errors() -> None:
    error = registry_error("reg.test", 503, BLOB, "7")
    assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert storage_error(URL, 500, BLOB, "3").retry_after == 3.0


def test_object_storage_refusing_a_url_has_expired_it_without_a_login_hint() -> None:
    refused = storage_error(URL, 403, BLOB)
    assert isinstance(refused, Expired) and "kit login" not in str(refused)
    assert "bucket.storage.test" in str(refused) and "may have expired" in str(refused)
    blip = storage_error(URL, 503, BLOB)
    assert type(blip) is ObjectStorageError


def test_a_transport_failure_at_object_storage_is_worded_as_such() -> None:
    try:
        try:
            raise ConnectionResetError("connection reset by peer")
        except ConnectionResetError as cause:
            raise TransientError("cannot reach registry bucket.storage.test: check…") from cause
    except TransientError as failure:
        error = at_storage(failure, URL)
    assert isinstance(error, ObjectStorageError)
    assert str(error) == "object storage bucket.storage.test failed: connection reset by peer"
