"""Scoring through a real kappa-predictor: a stream of rows answers in order, each score as the
unary call gives it, and a row the version cannot read fails with the reason and its index; a
range read into pandas and scored over either protocol gives the scores stream mode produced for
the same events."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from confluent_kafka import Producer

from kappa import KappaError, Predictor, Registry, Trainer, load_manifest, training_spec

from conftest import BOOTSTRAP, kappa, stream_predictions


def _serve_example(
    start_registry: Callable[..., Any], start_predictor: Callable[..., str], example_model: tuple[Path, Path]
) -> tuple[Any, str]:
    """The example autoencoder published to a new registry and served: (manifest, predictor url)."""
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest = load_manifest(manifest_path)
    with Registry(registry.url) as client:
        client.publish(manifest, weights_path.read_bytes())
    return manifest, start_predictor(registry.topic, manifest.name)


def test_a_stream_of_rows_scores_in_order_as_single_calls_do(
    start_registry, start_predictor, example_model
) -> None:
    manifest, url = _serve_example(start_registry, start_predictor, example_model)
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

        # Over OIP: batches, the version asked for, and a bad batch named by its rows.
        matrix = np.array([[row[name] for name in features] for row in rows], dtype=np.float32)
        oip = predictor.predict(matrix, protocol="oip", version=1, batch_size=300, max_in_flight=2)
        np.testing.assert_allclose(oip.score, [a.score for a in answers], rtol=1e-6)
        assert oip.frame().shape == (len(rows), 3)
        matrix[1500, 2] = np.nan
        with pytest.raises(KappaError) as refused:
            predictor.predict(matrix, protocol="oip", batch_size=300)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "rows 1500..1800" in refused.value.message and "row 0" in refused.value.message
        with pytest.raises(KappaError) as refused:
            predictor.predict(matrix[:10], protocol="oip", version=7)
        assert "7" in refused.value.message, refused.value


def test_predict_scores_100k_rows_as_the_predictors_stream_mode_scored_the_same_events(
    start_registry, start_predictor, start_trainer, example_model
) -> None:
    registry = start_registry()
    manifest_path, weights_path = example_model
    manifest = load_manifest(manifest_path)
    with Registry(registry.url) as client:
        client.publish(manifest, weights_path.read_bytes())
    topic, predictions = f"test.py-events-{uuid.uuid4().hex[:12]}", f"test.py-scored-{uuid.uuid4().hex[:12]}"
    events = 100_000
    kappa(
        "fleet",
        "--kafka-bootstrap",
        BOOTSTRAP,
        "--topic",
        topic,
        "--cars=50",
        f"--events={events}",
        "--rate=0",
    )
    junk = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(25):
        junk.produce(topic, key=f"junk-{i}", value=b"{not json" if i % 2 else b'{"speed": "fast"}')
    assert junk.flush(30) == 0
    url = start_predictor(
        registry.topic,
        manifest.name,
        "--stream",
        f"--sensor-topic={topic}",
        f"--predictions-topic={predictions}",
        f"--consumer-group=py-{uuid.uuid4().hex[:8]}",
    )
    features = [f.name for f in manifest.features]
    with Trainer(start_trainer(registry.url)) as trainer:
        history = trainer.read_range(training_spec(topic, features=features))
    assert history.read == events + 25 and history.usable > events * 0.9, (history.read, history.usable)

    streamed = stream_predictions(predictions, history.read)
    errors = sum(1 for answer in streamed.values() if answer["error"])
    assert errors == history.read - history.usable, (errors, history.skipped)
    keys = list(zip(history.frame["partition"], history.frame["offset"], strict=True))
    expected = np.array([streamed[key]["score"] for key in keys])
    assert all(not streamed[key]["error"] for key in keys)

    with Predictor(url) as predictor:
        typed = predictor.predict(history.frame)
        oip = predictor.predict(history.frame, protocol="oip", features=features, batch_size=2048)
    for answers in (typed, oip):
        assert len(answers) == len(keys) and set(answers.model_version) == {1}
        np.testing.assert_allclose(answers.score, expected, rtol=1e-6)
        assert (answers.is_anomaly == np.array([streamed[key]["isAnomaly"] for key in keys])).all()


def _safetensors(path) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The FP32 tensors of a safetensors file, read by its published layout (header length, JSON
    header, data), so the check below does not use Kappa's own reader."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    return {
        name: np.frombuffer(body[spec["data_offsets"][0] : spec["data_offsets"][1]], dtype="<f4").reshape(
            spec["shape"]
        )
        for name, spec in header.items()
        if name != "__metadata__"
    }


def test_explain_gives_each_features_share_of_the_reconstruction_error(
    start_registry, start_predictor, example_model
) -> None:
    manifest, url = _serve_example(start_registry, start_predictor, example_model)
    weights_path = example_model[1]
    names = [f.name for f in manifest.features]
    rng = random.Random(11)
    row = {name: rng.uniform(-3.0, 3.0) for name in names}

    # The autoencoder's forward pass in numpy: scaled input through the layers, then each
    # feature's squared error as its share of their sum.
    tensors = _safetensors(weights_path)
    x = np.array([row[n] for n in names], dtype=np.float64)
    offsets = np.array([f.offset for f in manifest.features])
    scaled = (x - offsets) / np.array([f.scale for f in manifest.features])
    h = scaled
    for i, layer in enumerate(manifest.layers):
        h = tensors[f"layers.{i}.weight"].astype(np.float64) @ h + tensors[f"layers.{i}.bias"]
        if layer.activation == 2:  # ACTIVATION_RELU
            h = np.maximum(h, 0.0)
    errors = (h - scaled) ** 2
    expected = dict(zip(names, errors / errors.sum(), strict=True))

    with Predictor(url) as predictor:
        explanation = predictor.explain(row)
        assert sorted(c.feature for c in explanation) == sorted(names)
        shares = [c.share for c in explanation]
        assert shares == sorted(shares, reverse=True), "largest share first"
        for c in explanation:
            assert c.share == pytest.approx(expected[c.feature], abs=1e-5), c
            assert c.value == pytest.approx(row[c.feature], rel=1e-6), c
            # The example model was not trained: it has no reference profile.
            assert c.typical_low is None and c.typical_high is None
        assert sum(c.share for c in explanation) == pytest.approx(1.0, abs=1e-5)
