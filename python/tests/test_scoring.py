"""Scoring through a real kappa-predictor: a stream of rows answers in order, each score as the
unary call gives it, and a row the version cannot read fails with the reason and its index."""

from __future__ import annotations

import random

import grpc
import pytest

from kappa import KappaError, Predictor, Registry, load_manifest


def test_a_stream_of_rows_scores_in_order_as_single_calls_do(
    start_registry, start_predictor, example_model
) -> None:
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest = load_manifest(manifest_path)
    with Registry(registry.url) as client:
        client.publish(manifest, weights_path.read_bytes())
    url = start_predictor(registry.topic, manifest.name)
    features = [f.name for f in manifest.features]
    rng = random.Random(7)
    rows = [{name: rng.uniform(-3.0, 3.0) for name in features} for _ in range(2000)]
    with Predictor(url) as predictor:
        answers = predictor.predict(rows)
        assert len(answers) == len(rows)
        assert {(a.model_name, a.model_version) for a in answers} == {(manifest.name, 1)}
        for index in (0, 1, 999, 1999):
            single = predictor.predict_one(rows[index])
            assert single.score == pytest.approx(answers[index].score, rel=1e-6), index
        broken = [*rows[:10], {name: 1.0 for name in features[1:]}, *rows[10:20]]
        with pytest.raises(KappaError) as refused:
            predictor.predict(broken)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "row 10" in refused.value.message and features[0] in refused.value.message
