"""Scoring rows through a kappa-predictor, by either of its protocols:

- the typed API (default): one bidirectional stream, rows by feature path, so a DataFrame whose
  columns are named after the model's features is enough; gRPC's flow control holds the sender
  back while the predictor is busy;
- the Open Inference Protocol (``protocol="oip"``, what KServe and Triton clients speak): rows
  in batches of ``batch_size`` as one ``[N, F]`` tensor each, at most ``max_in_flight`` batches
  outstanding, the columns in the model's feature order.

Either way the answers come back in the rows' order, with the version that scored each row (an
alias moving mid-call shows as two versions)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import numpy as np

from kappa.connection import Client, Security
from kappa.errors import ConfigurationError, KappaError
from kappa.predictor.v1 import predictor_pb2, predictor_pb2_grpc

#: The Open Inference Protocol's method; its messages are generated as ``kappa.oip.v2``.
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Prediction(NamedTuple):
    """One row's answer: its score (higher is more anomalous), the flag, and who scored it."""

    score: float
    is_anomaly: bool
    model_name: str
    model_version: int


class Contribution(NamedTuple):
    """One feature's part in a score: its share (0 to 1; every feature's shares sum to 1), the
    row's value, and the feature's usual range in training (its 10th and 90th percentiles; None
    when the version carries no reference profile)."""

    feature: str
    share: float
    value: float
    typical_low: float | None
    typical_high: float | None


@dataclass(frozen=True)
class Scores:
    """The answers to :meth:`Predictor.predict`, one per row in the rows' order, as arrays."""

    score: np.ndarray
    is_anomaly: np.ndarray
    #: The version that scored each row.
    model_version: np.ndarray
    model_name: str

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, index: int) -> Prediction:
        return Prediction(
            float(self.score[index]),
            bool(self.is_anomaly[index]),
            self.model_name,
            int(self.model_version[index]),
        )

    def __iter__(self) -> Iterator[Prediction]:
        return (self[i] for i in range(len(self)))

    def frame(self) -> Any:
        """A pandas DataFrame: ``score``, ``is_anomaly``, ``model_version``."""
        import pandas as pd

        return pd.DataFrame(
            {"score": self.score, "is_anomaly": self.is_anomaly, "model_version": self.model_version}
        )


def _records(rows: Iterable[Mapping[str, float]] | Any) -> Iterable[Mapping[str, float]]:
    # A pandas DataFrame (or anything with to_dict("records")) is taken row by row.
    to_dict: Callable[[str], list[Mapping[str, float]]] | None = getattr(rows, "to_dict", None)
    return to_dict("records") if callable(to_dict) else rows


def _matrix(rows: Any, features: Sequence[str] | None) -> np.ndarray:
    """Rows as a float32 ``[N, F]`` matrix with the columns in the model's order."""
    if isinstance(rows, np.ndarray):
        matrix = rows
    elif hasattr(rows, "columns"):
        if not features:
            raise ConfigurationError(
                "the Open Inference Protocol carries no feature names: give features=[...] in the "
                "model's order (its manifest's features), or a numpy array already in that order"
            )
        matrix = rows[list(features)].to_numpy()
    else:
        if not features:
            raise ConfigurationError("give features=[...] in the model's order to send mappings over OIP")
        matrix = np.array([[row[name] for name in features] for row in rows])
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ConfigurationError(f"rows must be two-dimensional ([N, F]), not of shape {matrix.shape}")
    return matrix


class Predictor(Client):
    """A client of kappa-predictor at ``url``; failures raise :class:`kappa.errors.KappaError`."""

    def __init__(
        self, url: str, security: Security | None = None, timeout: float | None = None, attempts: int = 3
    ) -> None:
        super().__init__(url, security, timeout, attempts)
        self._stub = predictor_pb2_grpc.PredictorStub(self._channel)
        self._infer: Callable[..., Any] | None = None

    def predict_one(self, features: Mapping[str, float], model: str = "") -> Prediction:
        """Scores one row (feature path to value) with a unary call."""
        request = predictor_pb2.PredictRequest(model=model, features=dict(features))
        return _prediction(self._call(self._stub.Predict, request))

    def explain(self, features: Mapping[str, float], model: str = "") -> list[Contribution]:
        """What made one row's score: every feature, largest share first, for versions that
        explain their scores (Kappa's autoencoders, computed in the scoring pass) and for a
        flagged row of a version with a reference profile (an ONNX graph: by median replacement,
        within the predictor's budget); an empty list otherwise, or when the predictor runs with
        ``--explain-top 0``."""
        request = predictor_pb2.PredictRequest(model=model, features=dict(features))
        response = self._call(self._stub.Predict, request)
        return [
            Contribution(
                c.feature,
                c.share,
                c.value,
                c.typical_low if c.HasField("typical_low") else None,
                c.typical_high if c.HasField("typical_high") else None,
            )
            for c in response.explanation
        ]

    def predict(
        self,
        rows: Iterable[Mapping[str, float]] | Any,
        model: str = "",
        *,
        version: int | None = None,
        protocol: str = "typed",
        features: Sequence[str] | None = None,
        batch_size: int = 1024,
        max_in_flight: int = 4,
    ) -> Scores:
        """Scores ``rows``: mappings of feature path to value, or a DataFrame whose columns are
        the feature paths (other columns are ignored), or over OIP a numpy ``[N, F]`` array.

        ``model`` is the served model's name (empty: whichever the predictor serves);
        ``version`` asks for one version (over OIP the predictor scores with it while it is
        loaded or warm; over the typed API an answer from another version is an error).
        A row the version cannot read fails the call with the predictor's reason and the row's
        index."""
        if protocol == "oip":
            return self._predict_oip(rows, model, version, features, batch_size, max_in_flight)
        if protocol != "typed":
            raise ConfigurationError(f"protocol must be 'typed' or 'oip', not {protocol!r}")
        answers = list(self.stream(rows, model))
        if version is not None and any(a.model_version != version for a in answers):
            served = sorted({a.model_version for a in answers})
            raise KappaError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version {version} was asked for but version(s) {served} answered: the typed API "
                "scores with the version the predictor serves; use protocol='oip' to pick one",
            )
        return Scores(
            score=np.fromiter((a.score for a in answers), dtype=np.float64, count=len(answers)),
            is_anomaly=np.fromiter((a.is_anomaly for a in answers), dtype=bool, count=len(answers)),
            model_version=np.fromiter(
                (a.model_version for a in answers), dtype=np.uint64, count=len(answers)
            ),
            model_name=answers[0].model_name if answers else model,
        )

    def stream(self, rows: Iterable[Mapping[str, float]] | Any, model: str = "") -> Iterator[Prediction]:
        """Scores over the typed API, yielding each answer as it arrives."""

        def requests() -> Iterator[predictor_pb2.PredictRequest]:
            for index, row in enumerate(_records(rows)):
                features = {
                    str(k): float(v) for k, v in row.items() if isinstance(v, (int, float, np.number))
                }
                yield predictor_pb2.PredictRequest(model=model, features=features, request_id=str(index))

        answered = 0
        try:
            for response in self._stub.PredictStream(requests(), timeout=self.timeout):
                answered += 1
                yield _prediction(response)
        except grpc.RpcError as error:
            failed = self._failed(error)
            raise type(failed)(failed.code, f"row {answered}: {failed.message}", failed.metadata) from None

    def _predict_oip(
        self,
        rows: Any,
        model: str,
        version: int | None,
        features: Sequence[str] | None,
        batch_size: int,
        max_in_flight: int,
    ) -> Scores:
        from kappa.oip.v2 import oip_pb2

        if batch_size < 1 or max_in_flight < 1:
            raise ConfigurationError("batch_size and max_in_flight must be at least 1")
        if self._infer is None:
            self._infer = self._channel.unary_unary(
                _MODEL_INFER,
                request_serializer=oip_pb2.ModelInferRequest.SerializeToString,
                response_deserializer=oip_pb2.ModelInferResponse.FromString,
            )
        matrix = _matrix(rows, features)
        n, width = matrix.shape
        scores = np.empty(n, dtype=np.float64)
        flags = np.empty(n, dtype=bool)
        versions = np.empty(n, dtype=np.uint64)
        name = model
        pending: deque[tuple[int, int, Any]] = deque()

        def settle() -> None:
            nonlocal name
            start, end, future = pending.popleft()
            try:
                response = future.result()
            except grpc.RpcError as error:
                for _, _, later in pending:
                    later.cancel()
                failed = self._failed(error)
                raise type(failed)(
                    failed.code, f"rows {start}..{end}: {failed.message}", failed.metadata
                ) from None
            outputs = {o.name: i for i, o in enumerate(response.outputs)}
            raw = response.raw_output_contents
            scores[start:end] = np.frombuffer(raw[outputs["score"]], dtype=np.float32)
            flags[start:end] = np.frombuffer(raw[outputs["is_anomaly"]], dtype=np.uint8) != 0
            versions[start:end] = int(response.model_version)
            name = response.model_name

        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            request = oip_pb2.ModelInferRequest(
                model_name=model,
                model_version="" if version is None else str(version),
                inputs=[
                    oip_pb2.ModelInferRequest.InferInputTensor(
                        name="input", datatype="FP32", shape=[end - start, width]
                    )
                ],
                outputs=[
                    oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name="score"),
                    oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name="is_anomaly"),
                ],
                raw_input_contents=[matrix[start:end].tobytes()],
            )
            if len(pending) == max_in_flight:
                settle()
            pending.append((start, end, self._infer.future(request, timeout=self.timeout, metadata=None)))
        while pending:
            settle()
        return Scores(score=scores, is_anomaly=flags, model_version=versions, model_name=name)


def _prediction(response: predictor_pb2.PredictResponse) -> Prediction:
    return Prediction(response.score, response.is_anomaly, response.model_name, response.model_version)
