"""Ed25519 signatures over a model as Kappa verifies them: the manifest with its name, version and
weights digest (not the publish time the registry stamps, nor an ONNX graph's description),
protobuf-encoded deterministically after a domain string. Keys are the PEM files ``kappa keys
new`` writes (PKCS#8 private, SPKI public)."""

from __future__ import annotations

import hashlib
import pathlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kappa.model.v1 import model_pb2

DOMAIN = b"kappa.model.v1.signature.versioned\n"


def signed_bytes(manifest: model_pb2.ModelManifest) -> bytes:
    """What a model's signature covers."""
    content = model_pb2.ModelManifest()
    content.CopyFrom(manifest)
    content.created_at_ms = 0
    if content.HasField("onnx"):
        content.onnx.ClearField("graph")
    return DOMAIN + content.SerializeToString(deterministic=True)


class SigningKey:
    """A private key that signs models."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        #: The first 16 hex digits of the SHA-256 of the raw public key, as Kappa names keys.
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def read(cls, path: str | pathlib.Path) -> SigningKey:
        key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key (make one with `kappa keys new`)")
        return cls(key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def public_pem(self) -> bytes:
        """The public key as PEM, for the registry's and predictors' --trusted-keys."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, manifest: model_pb2.ModelManifest) -> bytes:
        """The signature of ``manifest``, whose version, digest and size must be set."""
        return self._key.sign(signed_bytes(manifest))
