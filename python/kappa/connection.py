"""How the package reaches a Kappa service: plaintext or TLS (a CA, and a client certificate for
mutual TLS), a bearer token on every call, refused over plaintext to another machine unless
allowed, as Kappa's own clients do."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from kappa.errors import ConfigurationError, KappaError, explain

try:  # The caller's trace context goes along when OpenTelemetry is installed.
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - depends on the environment
    _propagate = None

#: Largest message accepted from a service (a chunk of a model, a page of versions).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Security:
    """What a client presents and trusts. Paths are read when a channel is made."""

    token: str | None = None
    token_file: str | pathlib.Path | None = None
    ca: str | pathlib.Path | None = None
    cert: str | pathlib.Path | None = None
    key: str | pathlib.Path | None = None
    #: Send the token over ``http://`` to a host that is not this machine.
    allow_plaintext_token: bool = False

    def bearer(self) -> str | None:
        """The token to send: ``token``, or the first non-empty line of ``token_file``."""
        if self.token_file is not None:
            for line in pathlib.Path(self.token_file).read_text().splitlines():
                if line.strip():
                    return line.strip()
            raise ConfigurationError(f"the token file {self.token_file} is empty")
        return self.token.strip() if self.token else None


def read(path: str | pathlib.Path | None) -> bytes | None:
    return pathlib.Path(path).read_bytes() if path is not None else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _CallMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds to every call, of every shape: ``authorization: Bearer …`` when there is a token,
    and the caller's OpenTelemetry context (``traceparent``, ``tracestate``) when one is set, so
    the services' spans join the caller's trace."""

    def __init__(self, token: str | None) -> None:
        self._fixed = [("authorization", f"Bearer {token}")] if token else []

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), *self._fixed]
        if _propagate is not None:
            carrier: dict[str, str] = {}
            _propagate.inject(carrier)
            metadata.extend((key.lower(), value) for key, value in carrier.items())
        return details._replace(metadata=metadata)  # type: ignore[attr-defined]

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)


def _service_config(attempts: int) -> str:
    """gRPC's own retries: a call refused with UNAVAILABLE before the service answered (it is
    starting, restarting or moving) is sent again, with backoff, up to ``attempts`` times."""
    if attempts <= 1:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    policy = {
        "maxAttempts": min(attempts, 5),
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})


def channel(url: str, security: Security | None = None, attempts: int = 3) -> grpc.Channel:
    """A channel to the service at ``url`` (``http://host:port`` or ``https://host:port``); a
    call refused with UNAVAILABLE is tried up to ``attempts`` times (gRPC allows at most 5)."""
    security = security or Security()
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ConfigurationError(f"{url!r} is not a service URL like http://127.0.0.1:50051")
    target = f"{parsed.hostname}:{parsed.port}"
    options = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.service_config", _service_config(attempts)),
        ("grpc.enable_retries", 1 if attempts > 1 else 0),
    ]
    token = security.bearer()
    if parsed.scheme == "https":
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(security.ca),
            private_key=read(security.key),
            certificate_chain=read(security.cert),
        )
        made = grpc.secure_channel(target, credentials, options=options)
    else:
        if security.ca or security.cert:
            raise ConfigurationError("TLS settings are given, so use an https:// URL")
        if token and not security.allow_plaintext_token and not _is_loopback(parsed.hostname):
            raise ConfigurationError(
                f"a token would travel in plaintext to {parsed.hostname}: use an https:// URL, or "
                "allow_plaintext_token=True if every hop of the network is yours"
            )
        made = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(made, _CallMetadata(token))


class Client:
    """What every client of a Kappa service shares: its channel, its timeout (seconds for each
    call; None waits as long as the call takes), ``attempts`` for a call refused as UNAVAILABLE,
    and failures as :class:`kappa.errors.KappaError` (a TLS failure explained with what to
    check)."""

    def __init__(
        self, url: str, security: Security | None = None, timeout: float | None = None, attempts: int = 3
    ) -> None:
        self._channel = channel(url, security, attempts)
        self._security = security
        self.timeout = timeout

    def close(self) -> None:
        """Closes the channel (``with`` does it on leaving the block)."""
        self._channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _failed(self, error: grpc.RpcError) -> KappaError:
        return explain(KappaError.from_rpc(error), self._security)

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._failed(error) from None

    def _follow(self, stream: Any) -> Iterator[Any]:
        """The messages of a server stream until it ends or the caller stops iterating."""
        try:
            yield from stream
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise self._failed(error) from None
        finally:
            stream.cancel()
