"""The model registry from Python: list, get, publish (signed or not), aliases, deletions, and a
watch of every publish and alias move as it happens."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterator

import grpc
from google.protobuf import json_format

from kappa.connection import Client, Security
from kappa.errors import KappaError
from kappa.model.v1 import model_pb2
from kappa.registry.v1 import registry_pb2, registry_pb2_grpc
from kappa.signing import SigningKey

#: Size of the chunks a publish streams, far below gRPC's message limit.
UPLOAD_CHUNK_BYTES = 1024 * 1024
#: Publishes a signed publish may lose to others (each takes the version it signed for).
PUBLISH_RACES = 5
NEXT_VERSION_METADATA = "kappa-next-version"


def load_manifest(source: str | pathlib.Path | dict) -> model_pb2.ModelManifest:
    """A manifest from the JSON ``kappa models example`` writes (a path or a parsed dict)."""
    data = source if isinstance(source, dict) else json.loads(pathlib.Path(source).read_text())
    return json_format.ParseDict(data, model_pb2.ModelManifest())


def onnx_manifest(
    name: str,
    features: list[str],
    *,
    input_name: str = "X",
    score_output: str,
    score_column: int = 0,
    lower_is_anomalous: bool = False,
    threshold: float,
    label: str = "",
    positive_labels: list[str] | tuple[str, ...] = (),
    time_field: str = "",
) -> model_pb2.ModelManifest:
    """A manifest for an ONNX graph (as skl2onnx or torch.onnx export it): rows of ``features``
    (paths into the events, in the graph input's column order) go to ``input_name``; the score is
    column ``score_column`` of ``score_output``; an event is anomalous above ``threshold`` (below,
    with ``lower_is_anomalous``, as IsolationForest's scores are). The event schema says where the
    events' ``label`` is (and which values mean anomalous) and their event time (``time_field``;
    the Kafka timestamp when empty), so backtests of the version judge and window by them."""
    schema = model_pb2.EventSchema(label_field=label, positive_labels=list(positive_labels))
    if time_field:
        schema.time.field = time_field
    return model_pb2.ModelManifest(
        name=name,
        format=model_pb2.MODEL_FORMAT_ONNX,
        features=[model_pb2.Feature(name=f, offset=0.0, scale=1.0) for f in features],
        anomaly_threshold=threshold,
        schema=schema,
        onnx=model_pb2.OnnxModel(
            features_input=input_name,
            scoring=model_pb2.OnnxScoring(
                score_output=score_output,
                score_column=score_column,
                lower_is_anomalous=lower_is_anomalous,
            ),
        ),
    )


class Registry(Client):
    """A client of kappa-registry at ``url``; every call fails with :class:`kappa.errors.KappaError`."""

    def __init__(
        self, url: str, security: Security | None = None, timeout: float | None = 60.0, attempts: int = 3
    ) -> None:
        super().__init__(url, security, timeout, attempts)
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)

    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]:
        """Every version of ``name`` with its manifest and aliases, oldest first."""
        return list(self._call(self._stub.ListVersions, registry_pb2.ListVersionsRequest(name=name)).versions)

    def next_version(self, name: str) -> int:
        """The number the next publish of ``name`` takes."""
        try:
            reply = self._call(self._stub.ListVersions, registry_pb2.ListVersionsRequest(name=name))
        except KappaError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return 1
            raise
        return max(reply.next_version, 1)

    def publish(
        self,
        manifest: model_pb2.ModelManifest,
        weights: bytes,
        *,
        idempotency_key: str = "",
        signing_key: SigningKey | None = None,
    ) -> registry_pb2.ModelVersion:
        """Publishes ``weights`` (safetensors or an ONNX graph, as the manifest's format says)
        under ``manifest``; signed with ``signing_key`` for the version it takes. Returns the
        version stored (the earlier one, for a retry with the same idempotency key)."""
        sent = model_pb2.ModelManifest()
        sent.CopyFrom(manifest)
        sent.weights_size = len(weights)
        sent.weights_sha256 = hashlib.sha256(weights).hexdigest()
        if signing_key is None:
            sent.version = 0
            return self._upload(sent, weights, idempotency_key, b"", "").version
        version = self.next_version(sent.name)
        for _ in range(PUBLISH_RACES):
            sent.version = version
            try:
                return self._upload(
                    sent, weights, idempotency_key, signing_key.sign(sent), signing_key.key_id
                ).version
            except KappaError as error:
                next_version = error.metadata.get(NEXT_VERSION_METADATA)
                if error.code != grpc.StatusCode.ABORTED or next_version is None:
                    raise
                version = int(next_version)
        raise KappaError(
            grpc.StatusCode.ABORTED, f"{PUBLISH_RACES} other publishes took the next version first"
        )

    def _upload(
        self, manifest: model_pb2.ModelManifest, weights: bytes, key: str, signature: bytes, key_id: str
    ) -> registry_pb2.PublishResponse:
        def messages() -> Iterator[registry_pb2.PublishRequest]:
            header = registry_pb2.PublishHeader(
                manifest=manifest, idempotency_key=key, signature=signature, signing_key_id=key_id
            )
            yield registry_pb2.PublishRequest(header=header)
            for start in range(0, len(weights), UPLOAD_CHUNK_BYTES):
                yield registry_pb2.PublishRequest(chunk=weights[start : start + UPLOAD_CHUNK_BYTES])

        return self._call(self._stub.Publish, messages())

    def get(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> tuple[registry_pb2.ModelVersion, bytes]:
        """A version (the latest unless ``version`` or ``alias`` says) and its weights, checked
        against the manifest's SHA-256."""
        request = registry_pb2.GetModelRequest(name=name)
        if version is not None:
            request.version = version
        elif alias is not None:
            request.alias = alias
        header, chunks = None, []
        try:
            for part in self._stub.GetModel(request, timeout=self.timeout):
                if part.HasField("header"):
                    header = part.header
                else:
                    chunks.append(part.chunk)
        except grpc.RpcError as error:
            raise self._failed(error) from None
        if header is None:
            raise KappaError(grpc.StatusCode.DATA_LOSS, "the registry answered without a header")
        weights = b"".join(chunks)
        if hashlib.sha256(weights).hexdigest() != header.weights_sha256.lower():
            raise KappaError(grpc.StatusCode.DATA_LOSS, "the downloaded weights do not match their SHA-256")
        return header, weights

    def set_alias(self, name: str, alias: str, version: int, effective_from_ms: int = 0) -> int:
        """Points ``alias`` at ``version``; returns the version it pointed at (0: new)."""
        request = registry_pb2.SetAliasRequest(
            name=name, alias=alias, version=version, effective_from_ms=effective_from_ms
        )
        return self._call(self._stub.SetAlias, request).previous_version

    def delete_version(self, name: str, version: int, *, force: bool = False) -> list[str]:
        """Deletes a version (``write`` role). One an alias points at only with ``force``, which
        deletes those aliases too; the newest version, or with ``force``, needs ``admin``.
        Returns the aliases the deletion removed."""
        request = registry_pb2.DeleteVersionRequest(name=name, version=version, force=force)
        return list(self._call(self._stub.DeleteVersion, request).removed_aliases)

    def watch(self, name: str = "", from_position: int = 0) -> Iterator[registry_pb2.WatchModelsResponse]:
        """Publishes, deletions and alias moves in log order, as they happen (cancel by closing
        the iterator or the registry)."""
        stream = self._stub.WatchModels(
            registry_pb2.WatchModelsRequest(from_position=from_position, name=name)
        )
        return self._follow(stream)
