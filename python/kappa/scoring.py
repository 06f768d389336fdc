"""Scoring rows through a kappa-predictor's typed API: one bidirectional stream, so many rows are
in flight at once and gRPC's flow control holds the sender back when the predictor is busy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import grpc

from kappa.connection import Client, Security
from kappa.predictor.v1 import predictor_pb2, predictor_pb2_grpc


class Prediction(NamedTuple):
    score: float
    is_anomaly: bool
    model_name: str
    model_version: int


def _rows(rows: Iterable[Mapping[str, float]] | Any) -> Iterable[Mapping[str, float]]:
    # A pandas DataFrame (or anything with to_dict("records")) is taken row by row.
    to_dict: Callable[[str], list[Mapping[str, float]]] | None = getattr(rows, "to_dict", None)
    return to_dict("records") if callable(to_dict) else rows


class Predictor(Client):
    """A client of kappa-predictor at ``url``; failures raise :class:`kappa.errors.KappaError`."""

    def __init__(self, url: str, security: Security | None = None, timeout: float | None = None) -> None:
        super().__init__(url, security, timeout)
        self._stub = predictor_pb2_grpc.PredictorStub(self._channel)

    def predict_one(self, features: Mapping[str, float], model: str = "") -> Prediction:
        request = predictor_pb2.PredictRequest(model=model, features=dict(features))
        return _prediction(self._call(self._stub.Predict, request))

    def predict(self, rows: Iterable[Mapping[str, float]] | Any, model: str = "") -> list[Prediction]:
        """Scores ``rows`` (mappings of feature path to value, or a DataFrame whose columns are
        the feature paths), answers in the rows' order. A row the version cannot read fails the
        call with the predictor's reason and the row's index."""
        return list(self.stream(rows, model))

    def stream(self, rows: Iterable[Mapping[str, float]] | Any, model: str = "") -> Iterator[Prediction]:
        """Like :meth:`predict`, yielding each answer as it arrives."""

        def requests() -> Iterator[predictor_pb2.PredictRequest]:
            for index, row in enumerate(_rows(rows)):
                features = {str(k): float(v) for k, v in row.items()}
                yield predictor_pb2.PredictRequest(model=model, features=features, request_id=str(index))

        answered = 0
        try:
            for response in self._stub.PredictStream(requests(), timeout=self.timeout):
                answered += 1
                yield _prediction(response)
        except grpc.RpcError as error:
            failed = self._failed(error)
            raise type(failed)(failed.code, f"row {answered}: {failed.message}", failed.metadata) from None


def _prediction(response: predictor_pb2.PredictResponse) -> Prediction:
    return Prediction(response.score, response.is_anomaly, response.model_name, response.model_version)
