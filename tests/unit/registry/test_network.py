"""Connection failures classified by type, never by message: a host that does not exist, TLS
that cannot work and a certificate not trusted are final; no connection is Unreachable (a
mount with a wrong port says so at once); anything else is transient. Each says what to do."""

from __future__ import annotations

import socket
import ssl

import httpx

from modelkitfs.errors import RegistryError, TransientError, Unreachable
from modelkitfs.registry.network import endpoint_url, transport_failure


def wrapped(cause: BaseException) -> httpx.ConnectError:
    """``cause`` as httpx raises it: its own error, the cause chained."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as error:
        return error


def test_an_unknown_host_is_final_and_says_so() -> None:
    error = transport_failure(
        "nohost.test", wrapped(socket.gaierror(socket.EAI_NONAME, "x")), False
    )
    assert type(error) is RegistryError
    assert (
        str(error)
        == "cannot reach registry nohost.test: unknown host nohost.test; check the registry name"
    )


def test_a_name_that_does_not_resolve_for_now_is_unreachable() -> None:
    failure = wrapped(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    assert type(transport_failure("reg.test", failure, False)) is Unreachable


def test_a_refused_connection_is_unreachable_with_a_hint() -> None:
    error = transport_failure(
        "reg.test:5000", wrapped(ConnectionRefusedError(111, "refused")), False
    )
    assert type(error) is Unreachable and "check the address and port" in str(error)


def test_tls_failures_are_final() -> None:
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "self-signed certificate"
    error = transport_failure("reg.test", wrapped(untrusted), False)
    assert type(error) is RegistryError and "--tls-cert" in str(error)
    assert "self-signed certificate" in str(error)
    plain = transport_failure("reg.test", wrapped(ssl.SSLError(1, "wrong version number")), False)
    assert type(plain) is RegistryError and "--plain-http" in str(plain)


def test_a_reset_is_transient() -> None:
    failure = httpx.ReadError("reset")
    failure.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    error = transport_failure("reg.test", failure, False)
    assert type(error) is TransientError and "reg.test" in str(error)


def test_endpoints() -> None:
    assert endpoint_url("reg.test:5000", plain_http=True) == "http://reg.test:5000"
    assert endpoint_url("reg.test", plain_http=False) == "https://reg.test"
    assert endpoint_url("https://mirror.test/", plain_http=True) == "https://mirror.test"


def test_a_server_wanting_a_client_certificate_is_told_by_its_alert() -> None:
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # type: ignore[misc]
    error = transport_failure("reg.test", wrapped(alert), False)
    assert type(error) is RegistryError and "--cert and --key" in str(error)
