"""History into pandas through a real kappa-trainer: the rows, offsets and drop counts a training
job with the same spec reports in its lineage."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from confluent_kafka import Consumer, Producer

from kappa import KappaError, Trainer, training_spec
from kappa.fleet.v1 import fleet_pb2
from kappa.trainer.v1 import trainer_pb2

from conftest import BOOTSTRAP, kappa


def test_read_range_returns_what_a_training_job_reads(start_registry, start_trainer) -> None:
    registry = start_registry()
    trainer_url = start_trainer(registry.url)
    topic = f"test.py-fleet-{uuid.uuid4().hex[:12]}"
    kappa(
        "fleet",
        "--kafka-bootstrap",
        BOOTSTRAP,
        "--topic",
        topic,
        "--cars",
        "5",
        "--events",
        "1500",
        "--rate",
        "0",
        "--backdate-seconds",
        "3000",
    )
    # Records no job can use, each for its reason.
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(7):
        producer.produce(topic, key=f"junk-{i}", value=b"{not json")
    producer.produce(topic, key="empty", value=b"{}")
    producer.flush(30)
    spec = training_spec(topic, from_ms=0, to_ms=2**62)
    with Trainer(trainer_url) as trainer:
        read = trainer.read_range(spec)
        with pytest.raises(KappaError) as refused:
            trainer.read_range(training_spec(f"test.no-such-{uuid.uuid4().hex[:8]}", last_minutes=5))
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
    frame = read.frame
    assert read.read == 1508 and read.usable == len(frame) and not read.sampled
    assert read.skipped.get("malformed") == 7, read.skipped
    assert list(frame.columns[:2]) == ["partition", "offset"] and frame.columns[-1] == "label"
    assert not frame.duplicated(["partition", "offset"]).any()
    assert frame.drop(columns="label").notna().all().all()

    # A job with the same spec reads the same partitions, offsets and drops.
    job_spec = trainer_pb2.TrainingSpec()
    job_spec.CopyFrom(spec)
    job_spec.model_name = f"py-{uuid.uuid4().hex[:8]}"
    job_spec.epochs = 1
    with Trainer(trainer_url) as trainer:
        job = trainer.train(job_spec)
        assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
        assert [j.job_id for j in trainer.jobs()] == [job.job_id]
    lineage = job.lineage
    assert {p.partition: (p.start_offset, p.end_offset) for p in lineage.partitions} == read.offsets
    for reason, count in read.skipped.items():
        assert lineage.samples.skipped[reason] == count, (reason, dict(lineage.samples.skipped))
    # What the job adds on top is its own screening of the rows it was given.
    extra = set(lineage.samples.skipped) - set(read.skipped)
    assert all(r.startswith(("outlier:", "anomal")) for r in extra), extra
    used = lineage.samples.train + lineage.samples.validation + lineage.samples.holdout
    assert used + sum(lineage.samples.skipped[r] for r in extra) == read.usable


def test_inspect_returns_what_kappa_data_inspect_prints_as_data(start_registry, start_trainer) -> None:
    trainer_url = start_trainer(start_registry().url)
    topic = f"test.py-turbines-{uuid.uuid4().hex[:12]}"
    fleet = ["--profile=turbine", "--cars=20", "--events=1000", "--rate=0", "--failing-share=0.5"]
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, *fleet)
    schema = ["--label=status.state", "--positive=failed", "--time-field=ts", "--sample=5000"]
    printed = json.loads(
        kappa("data", "inspect", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, *schema, "--output=json")
    )
    with Trainer(trainer_url) as trainer:
        found = trainer.inspect(
            topic=topic, label="status.state", positive_labels=["failed"], time_field="ts", sample=5000
        )
        with pytest.raises(KappaError) as refused:
            trainer.inspect(topic=topic, sample=10**9)
        assert (
            refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "--max-rows" in refused.value.message
        )

    # Counted independently from the raw events.
    events = [json.loads(v) for v in raw_values(topic)]
    failed = sum(1 for e in events if e["status"]["state"] == "failed")
    assert (found.records_in_range, found.sampled, found.malformed) == (1000, 1000, 0)
    assert found.label == {"field": "status.state", "positive": failed, "normal": 1000 - failed, "missing": 0}
    rpm = found.fields.set_index("path").loc["rotor.rpm"]
    assert rpm["type"] == "number" and rpm["present"] == 1000
    assert rpm["min"] == min(e["rotor"]["rpm"] for e in events)
    assert rpm["max"] == max(e["rotor"]["rpm"] for e in events)

    # The same as the CLI prints, field by field, and the same spec.
    assert found.fields["path"].tolist() == [f["path"] for f in printed["fields"]]

    def stats(f: dict) -> tuple:
        # pandas holds a missing statistic as NaN where the CLI's JSON has null.
        return (
            f["type"],
            f["present"],
            *(None if f[k] is None or f[k] != f[k] else f[k] for k in ("min", "median", "max")),
        )

    assert [stats(f) for f in found.fields.to_dict("records")] == [stats(f) for f in printed["fields"]]
    assert [f.path for f in found.spec.features] == [f["path"] for f in printed["spec"]["features"]]
    assert found.notes == printed["notes"]


def raw_values(topic: str) -> list[bytes]:
    """Every record value of ``topic``, read with a plain consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"py-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    idle = 0
    try:
        while idle < 5:
            batch = consumer.consume(1000, timeout=1.0)
            idle = 0 if batch else idle + 1
            values.extend(m.value() for m in batch if m.error() is None)
    finally:
        consumer.close()
    return values


def test_backtest_reports_what_kappa_backtest_prints_as_data(start_registry, start_trainer) -> None:
    registry = start_registry()
    trainer_url = start_trainer(registry.url)
    topic = f"test.py-backtest-{uuid.uuid4().hex[:12]}"
    fleet = [
        "--cars=24",
        "--events=6000",
        "--rate=0",
        "--failing-share=0.3",
        "--seed=8",
        "--backdate-seconds=7200",
    ]
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, *fleet)
    model = f"py-{uuid.uuid4().hex[:8]}"
    with Trainer(trainer_url) as trainer:
        times = trainer.read_range(topic=topic).frame["event_time_ms"]
        first, end = int(times.min()), int(times.max()) + 1
        split = first + (end - first) // 2
        for epochs, features in ((6, ()), (1, ("speed", "throttle_pos"))):
            spec = training_spec(
                topic, from_ms=first, to_ms=split, features=features, label="failure_occurred"
            )
            spec.model_name, spec.epochs = model, epochs
            job = trainer.train(spec)
            assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
        found = trainer.backtest(model, [1, 2], from_ms=split, to_ms=end)
        with pytest.raises(KappaError) as refused:
            trainer.backtest(model, [9], from_ms=split, to_ms=end)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND, refused.value
        with pytest.raises(KappaError) as refused:
            trainer.backtest(model, [1], from_ms=end, to_ms=split)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, refused.value

    window = ["--model", model, "--version=1", "--against=2", f"--from-ms={split}", f"--to-ms={end}"]
    printed = json.loads(
        kappa(
            "backtest", "--registry", registry.url, "--kafka-bootstrap", BOOTSTRAP, *window, "--output=json"
        )
    )
    assert (found.topic, found.read, found.events, found.labelled, found.positives) == (
        topic,
        printed["read"],
        printed["events"],
        printed["labelled"],
        printed["positives"],
    )
    assert 0 < found.positives < found.labelled
    assert found.offsets == {o["partition"]: (o["start_offset"], o["end_offset"]) for o in printed["offsets"]}
    versions = found.versions.to_dict("records")
    assert [v["version"] for v in versions] == [1, 2]
    for mine, theirs in zip(versions, printed["versions"], strict=True):
        for name in ("anomalies", "precision", "recall", "f1", "roc_auc"):
            assert mine[name] == pytest.approx(theirs[name]), name
    assert versions[1]["agreement"] == pytest.approx(printed["versions"][1]["agreement"]["rate"])


def test_protobuf_events_read_as_their_json_twins(start_registry, start_trainer) -> None:
    trainer_url = start_trainer(start_registry().url)
    topic = f"test.py-protobuf-{uuid.uuid4().hex[:12]}"
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    readings = [
        fleet_pb2.SensorReading(
            car=f"car{i % 3}", time_ms=1_700_000_000_000 + i, coolant_temp=80 + i, speed=i / 2
        )
        for i in range(1, 41)
    ]
    for reading in readings:
        producer.produce(
            topic,
            key=reading.car,
            value=reading.SerializeToString(),
            headers=[("content-type", b"application/x-protobuf")],
            partition=0,
        )
        twin = {"car": reading.car, "time_ms": reading.time_ms, "coolant_temp": reading.coolant_temp}
        producer.produce(
            topic, key=reading.car, value=json.dumps({**twin, "speed": reading.speed}), partition=0
        )
    assert producer.flush(30) == 0
    with Trainer(trainer_url) as trainer:
        read = trainer.read_range(topic=topic, features=["coolant_temp", "speed"], time_field="time_ms")
    assert (read.read, read.usable) == (80, 80), read.skipped
    frame = read.frame.sort_values("offset")
    protobuf, json_twins = frame.iloc[0::2], frame.iloc[1::2]
    for column in ("coolant_temp", "speed", "event_time_ms"):
        assert protobuf[column].tolist() == json_twins[column].tolist(), column
    assert protobuf["event_time_ms"].tolist() == [r.time_ms for r in readings]
