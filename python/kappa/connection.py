"""How the package reaches a Kappa service: plaintext or TLS (a CA, and a client certificate for
mutual TLS), a bearer token on every call, refused over plaintext to another machine unless
allowed, as Kappa's own clients do."""

from __future__ import annotations

import ipaddress
import pathlib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from kappa.errors import ConfigurationError, KappaError, explain

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


class _Bearer(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor
):
    """Adds ``authorization: Bearer …`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)  # type: ignore[attr-defined]

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)


def channel(url: str, security: Security | None = None) -> grpc.Channel:
    """A channel to the service at ``url`` (``http://host:port`` or ``https://host:port``)."""
    security = security or Security()
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ConfigurationError(f"{url!r} is not a service URL like http://127.0.0.1:50051")
    target = f"{parsed.hostname}:{parsed.port}"
    options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
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
    if token:
        made = grpc.intercept_channel(made, _Bearer(token))
    return made


class Client:
    """What every client of a Kappa service shares: its channel, its timeout, and failures as
    :class:`kappa.errors.KappaError` (a TLS failure explained with what to check)."""

    def __init__(self, url: str, security: Security | None = None, timeout: float | None = None) -> None:
        self._channel = channel(url, security)
        self._security = security
        self.timeout = timeout

    def close(self) -> None:
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
