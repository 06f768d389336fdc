"""Drift windows through a real kappa-trainer: a predictor serving a trained version is fed the
history it was trained on, then the same rows with one sensor shifted; the windows the package
yields say the first drifted nowhere and the second drifted on exactly that sensor."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kappa import KappaError, Predictor, Trainer, training_spec
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
