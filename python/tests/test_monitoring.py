"""What predictors report about live traffic, through a real kappa-trainer: drift windows (a
predictor serving a trained version is fed the history it was trained on, then the same rows
with one sensor shifted; the windows say the first drifted nowhere and the second drifted on
exactly that sensor), and a shadow version's comparison with the live one, as the CLI prints it."""

from __future__ import annotations

import itertools
import json
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from kappa import KappaError, Predictor, Registry, Trainer, load_manifest, training_spec
from kappa.trainer.v1 import trainer_pb2

from conftest import BOOTSTRAP, kappa


def test_monitor_yields_the_windows_that_show_a_shifted_sensor(
    start_registry, start_trainer, start_predictor
) -> None:
    registry = start_registry()
    trainer_url = start_trainer(registry.url)
    topic, windows = (f"test.py-{what}-{uuid.uuid4().hex[:12]}" for what in ("fleet", "monitoring"))
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, "--cars=10", "--events=3000", "--rate=0")
    model = f"py-{uuid.uuid4().hex[:8]}"
    with Trainer(trainer_url) as trainer:
        spec = training_spec(topic)
        spec.model_name, spec.epochs = model, 2
        job = trainer.train(spec)
        assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
        history = trainer.read_range(spec)
        with pytest.raises(KappaError) as refused:
            next(trainer.monitor(model, topic=f"test.no-such-{uuid.uuid4().hex[:8]}"))
        assert refused.value.code == grpc.StatusCode.NOT_FOUND

    predictor_url = start_predictor(
        registry.topic,
        model,
        f"--monitoring-topic={windows}",
        "--monitor-window-seconds=2",
        "--monitor-min-rows=100",
    )
    rows = history.frame[history.features]
    shifted = rows.assign(coolant_temp=rows["coolant_temp"] + 40.0)
    with Predictor(predictor_url) as predictor, Trainer(trainer_url) as trainer:
        predictor.predict(rows)
        calm = first_window(trainer.monitor(model, topic=windows, last_seconds=60), len(rows))
        predictor.predict(shifted)
        drifted = first_window(trainer.monitor(model, topic=windows, last_seconds=0), len(rows))
    assert calm.model_version == 1 and calm.features, calm
    assert list(calm.drifted) == [], calm
    assert list(drifted.drifted) == ["coolant_temp"], drifted
    psi = {f.feature: f.psi for f in drifted.features}
    assert (
        psi["coolant_temp"] >= drifted.psi_threshold > max(v for k, v in psi.items() if k != "coolant_temp")
    )


def first_window(windows: Iterator[Any], rows: int) -> Any:
    """The first window that scored all ``rows`` (each batch is sent well inside one window)."""
    for window in itertools.islice(windows, 30):
        if window.events >= rows:
            return window
    raise AssertionError(f"no window of {rows} rows among the first 30")


def test_compare_sums_up_a_shadow_version_as_kappa_compare_prints_it(
    start_registry, start_trainer, start_predictor, example_model, tmp_path: pathlib.Path
) -> None:
    registry = start_registry()
    trainer_url = start_trainer(registry.url)
    manifest_path, weights_path = example_model
    manifest = load_manifest(manifest_path)
    other = tmp_path / "other"
    kappa(
        "models", "example", "--out", str(other), "--name", manifest.name, "--seed", "9", "--threshold", "1"
    )
    shadows = f"test.py-shadow-{uuid.uuid4().hex[:12]}"
    with Registry(registry.url) as client:
        client.publish(manifest, weights_path.read_bytes())
        client.set_alias(manifest.name, "production", 1)
        client.publish(load_manifest(other / "manifest.json"), (other / "weights.safetensors").read_bytes())
    url = start_predictor(
        registry.topic, manifest.name, "--shadow=latest", f"--shadow-topic={shadows}", follow="production"
    )
    rng = np.random.default_rng(5)
    rows = pd.DataFrame(
        rng.normal(size=(500, len(manifest.features))), columns=[f.name for f in manifest.features]
    )
    with Predictor(url) as predictor:
        live = predictor.predict(rows)
    assert set(live.model_version) == {1}

    with Trainer(trainer_url) as trainer:
        deadline = time.monotonic() + 60
        while (found := trainer.compare(manifest.name, topic=shadows, window_seconds=3600))[
            "answers"
        ].sum() < 500:
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        with pytest.raises(KappaError) as refused:
            trainer.compare(manifest.name, topic=f"test.no-such-{uuid.uuid4().hex[:8]}")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
    printed = json.loads(
        kappa(
            "compare",
            "--kafka-bootstrap",
            BOOTSTRAP,
            "--model",
            manifest.name,
            "--topic",
            shadows,
            "--window-seconds=3600",
            "--output=json",
        )
    )
    assert found.to_dict("records") == pytest.approx(printed), (found, printed)
    assert list(found["live_version"]) == [1] * len(found) and set(found["shadow_version"]) == {2}
    # Counted independently: the same rows scored by another predictor serving v2.
    with Predictor(start_predictor(registry.topic, manifest.name, follow="latest")) as predictor:
        shadow = predictor.predict(rows)
    assert set(shadow.model_version) == {2} and found["answers"].sum() == 500
    assert found["shadow_only"].sum() == int((shadow.is_anomaly & ~live.is_anomaly).sum())
    assert found["live_only"].sum() == int((live.is_anomaly & ~shadow.is_anomaly).sum())
    weights = found["answers"] / 500
    assert (found["mean_delta"] * weights).sum() == pytest.approx(
        float((shadow.score - live.score).mean()), rel=1e-4
    )
