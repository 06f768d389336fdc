"""Every call carries the caller's OpenTelemetry context: a training job started inside a span
belongs to the caller's trace (its lineage records the trace it ran in)."""

from __future__ import annotations

import uuid

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from kappa import Trainer, training_spec
from kappa.trainer.v1 import trainer_pb2

from conftest import BOOTSTRAP, kappa


def test_a_job_started_inside_a_span_runs_in_the_callers_trace(start_registry, start_trainer) -> None:
    trainer_url = start_trainer(start_registry().url)
    topic = f"test.py-traced-{uuid.uuid4().hex[:12]}"
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, "--cars=5", "--events=600", "--rate=0")
    spec = training_spec(topic)
    spec.model_name, spec.epochs = f"py-{uuid.uuid4().hex[:8]}", 1
    tracer = TracerProvider().get_tracer("kappa-test")
    with Trainer(trainer_url) as trainer:
        with tracer.start_as_current_span("notebook cell") as span:
            caller = format(span.get_span_context().trace_id, "032x")
            job = trainer.train(spec)
        untraced = trainer.train(spec)
    assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
    traceparent = job.lineage.trace_context["traceparent"]
    assert traceparent.split("-")[1] == caller, (traceparent, caller)
    # Without a span of the caller's, the job's trace is its own.
    assert untraced.lineage.trace_context["traceparent"].split("-")[1] != caller
    assert trace.get_current_span().get_span_context().is_valid is False
