"""Exceptions: every failed call is a :class:`KappaError` carrying the gRPC status code and the
server's message, which says what to do."""

from __future__ import annotations

import grpc


class KappaError(Exception):
    """A call a Kappa service refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.metadata = metadata or {}

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> KappaError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        metadata = {k: v for k, v in (trailing or ()) if isinstance(v, str)}
        for subclass in (PermissionDenied, Unauthenticated, NotFound):
            if code == subclass.CODE:
                return subclass(code, details or "", metadata)
        return cls(code, details or "", metadata)


def explain(error: KappaError, security: object) -> KappaError:
    """``error`` with what to do when the cause is a TLS one the caller can act on."""
    text = error.message.lower()
    if error.code == grpc.StatusCode.UNAVAILABLE and ("certificate" in text or "handshake" in text):
        ca = getattr(security, "ca", None)
        trusted = f"the CA in {ca}" if ca else "the system's CAs"
        return type(error)(
            error.code,
            f"the TLS handshake failed: the server's certificate is not signed by {trusted}, or does "
            f"not name the host; check the CA (and the URL's host). gRPC said: {error.message}",
            error.metadata,
        )
    return error


class PermissionDenied(KappaError):
    """The token is known but lacks the role the call needs."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(KappaError):
    """No token, or one the server does not know."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


class NotFound(KappaError):
    """No such model, version or alias."""

    CODE = grpc.StatusCode.NOT_FOUND


class ConfigurationError(ValueError):
    """Settings that cannot work (a token over plaintext to another machine, a bad URL)."""
