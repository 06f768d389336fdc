"""kappa-trainer from Python: history into pandas (the rows a training job with the same spec
would read: the range by event time, per partition from the broker's time index; the schema's
field paths into nested JSON or protobuf; the same drop reasons, decoded by the trainer itself,
so a notebook and a job never disagree about the data), and training jobs started, followed and
cancelled, with their lineage as data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from kappa.connection import Client, Security
from kappa.errors import ConfigurationError, KappaError
from kappa.trainer.v1 import trainer_pb2, trainer_pb2_grpc


@dataclass
class Range:
    """What a range read found: the rows and the report."""

    #: One row per usable event, in the order read (by partition, then offset): ``partition``,
    #: ``offset``, ``event_time_ms``, the features by path (float32, as the trainer holds
    #: them), and ``label`` (True, False, or missing without a label).
    frame: Any
    #: The feature paths, in the spec's order: ``frame[features]`` is what a model reads.
    features: list[str]
    read: int
    usable: int
    #: Records not used, by reason (``malformed``, ``missing:<path>``, …), as a job's lineage.
    skipped: dict[str, int]
    #: Per partition, the offsets read: ``{partition: (start, end)}``.
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: True when more events were usable than the trainer's --max-rows: a uniform sample.
    sampled: bool = False

    def arrow(self) -> Any:
        """The rows as an Apache Arrow table (needs ``pyarrow``: ``pip install kappa-mesh[arrow]``)."""
        try:
            import pyarrow as pa
        except ImportError:
            raise ConfigurationError("Range.arrow() needs pyarrow: pip install 'kappa-mesh[arrow]'") from None
        return pa.Table.from_pandas(self.frame, preserve_index=False)


@dataclass
class Inspection:
    """What a sample of a range holds, as ``kappa data inspect`` prints it."""

    topic: str
    from_ms: int
    to_ms: int
    #: Records in the range on every partition, and how many were sampled.
    records_in_range: int
    sampled: int
    #: Sampled records that were not JSON objects or protobuf events.
    malformed: int
    #: One row per field path: ``path``, ``type``, ``present``, ``presence`` (share of the
    #: sampled events), ``numeric``, ``min``, ``median``, ``max``, ``values`` (distinct values
    #: with counts, for fields with few).
    fields: Any
    #: ``{"field", "positive", "normal", "missing"}`` when the spec names a label.
    label: dict[str, Any] | None
    #: Fields inference left out, and why.
    notes: list[str]
    #: Partitions whose retention removed the range's start: ``{partition: (log_start, oldest_ms)}``.
    truncated: dict[int, tuple[int, int]]
    #: The spec a job would use: its features named, or inferred from the sample.
    spec: trainer_pb2.TrainingSpec


@dataclass
class Backtest:
    """A window replayed through versions, as ``kappa backtest`` reports it."""

    topic: str
    from_ms: int
    to_ms: int
    #: One row per version, the first the one under test: ``version``, ``threshold``,
    #: ``anomalies``, ``anomaly_rate``, the score summary (``score_mean``, ``score_p50``,
    #: ``score_p90``, ``score_p99``, ``score_max``), ``precision``, ``recall``, ``f1`` and
    #: ``roc_auc`` (NaN unless both classes are labelled), and against the first version
    #: ``agreement``, ``only_first``, ``only_this``, ``mean_score_delta``.
    versions: Any
    #: Records read, events every version scored, and of those the labelled and the anomalous.
    read: int
    events: int
    labelled: int
    positives: int
    #: Records not scored, by reason.
    skipped: dict[str, int]
    #: Per partition, the offsets read: ``{partition: (start, end)}``.
    offsets: dict[int, tuple[int, int]]


def training_spec(
    topic: str,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    last_minutes: int | None = None,
    features: Sequence[str] = (),
    label: str = "",
    positive_labels: Sequence[str] = (),
    time_field: str = "",
    lateness_ms: int = 0,
    exclude: Sequence[str] = (),
) -> trainer_pb2.TrainingSpec:
    """A spec naming what to read (the rest of it only matters for training): the topic, the
    range by event time (``[from_ms, to_ms)`` or the last minutes; the whole topic without
    either), the feature paths (empty: inferred, leaving out ``exclude``), the label's path and
    the values meaning anomalous, and the event-time field (empty: the Kafka timestamp) with how
    late an event may arrive."""
    spec = trainer_pb2.TrainingSpec(
        source_topic=topic,
        features=[trainer_pb2.FeatureSpec(path=p) for p in features],
        exclude=list(exclude),
        label_field=label,
        positive_labels=list(positive_labels),
    )
    if time_field or lateness_ms:
        spec.time.field = time_field
        spec.time.lateness_ms = lateness_ms
    if last_minutes is not None:
        spec.last_minutes = last_minutes
    else:
        spec.time_range.from_ms = from_ms if from_ms is not None else 0
        spec.time_range.to_ms = to_ms if to_ms is not None else 2**62
    return spec


class Trainer(Client):
    """A client of kappa-trainer at ``url``; failures raise :class:`kappa.errors.KappaError`."""

    def __init__(
        self, url: str, security: Security | None = None, timeout: float | None = None, attempts: int = 3
    ) -> None:
        super().__init__(url, security, timeout, attempts)
        self._stub = trainer_pb2_grpc.TrainerStub(self._channel)

    def start(self, spec: trainer_pb2.TrainingSpec) -> trainer_pb2.Job:
        """Starts a training job; a bad spec is refused here, before any job exists."""
        return self._call(self._stub.StartTraining, trainer_pb2.StartTrainingRequest(spec=spec))

    def job(self, job_id: str) -> trainer_pb2.Job:
        """The job now: phase, progress, and once done its lineage and published version."""
        return self._call(self._stub.GetJob, trainer_pb2.GetJobRequest(job_id=job_id))

    def jobs(self) -> list[trainer_pb2.Job]:
        """Every job the trainer knows, running and past (kept in its jobs topic)."""
        return list(self._call(self._stub.ListJobs, trainer_pb2.ListJobsRequest()).jobs)

    def cancel(self, job_id: str) -> trainer_pb2.Job:
        """Cancels a running job (another principal's needs the ``admin`` role)."""
        return self._call(self._stub.CancelJob, trainer_pb2.GetJobRequest(job_id=job_id))

    def follow(self, job_id: str) -> Iterator[trainer_pb2.JobProgress]:
        """Every change of the job's progress (phase, epoch, losses), ending with its last."""
        return self._follow(self._stub.WatchJob(trainer_pb2.GetJobRequest(job_id=job_id)))

    def train(self, spec: trainer_pb2.TrainingSpec) -> trainer_pb2.Job:
        """Starts a job and waits for its end; returns the finished job (check its phase)."""
        started = self.start(spec)
        for _ in self.follow(started.job_id):
            pass
        return self.job(started.job_id)

    def inspect(
        self, spec: trainer_pb2.TrainingSpec | None = None, /, sample: int = 0, **what: Any
    ) -> Inspection:
        """Profiles a sample (``sample`` events, 0 for the trainer's default of 2000) of the range
        ``spec`` (or :func:`training_spec` of ``what``) names, with the features a job would infer
        when it names none."""
        import pandas as pd

        spec = spec if spec is not None else training_spec(**what)
        found = self._call(self._stub.Inspect, trainer_pb2.InspectRequest(spec=spec, sample=sample))
        events = max(found.events, 1)

        def optional(field: Any, name: str) -> float | None:
            return getattr(field, name) if field.HasField(name) else None

        fields = pd.DataFrame(
            [
                {
                    "path": f.path,
                    "type": f.type,
                    "present": f.present,
                    "presence": f.present / events,
                    "numeric": f.numeric,
                    "min": optional(f, "min"),
                    "median": optional(f, "median"),
                    "max": optional(f, "max"),
                    "values": dict(f.values),
                }
                for f in found.fields
            ],
            columns=["path", "type", "present", "presence", "numeric", "min", "median", "max", "values"],
        )
        label = found.label if found.HasField("label") else None
        return Inspection(
            topic=found.topic,
            from_ms=found.from_ms,
            to_ms=found.to_ms,
            records_in_range=found.records_in_range,
            sampled=found.sampled,
            malformed=found.malformed,
            fields=fields,
            label=None
            if label is None
            else {
                "field": label.field,
                "positive": label.positive,
                "normal": label.normal,
                "missing": label.missing,
            },
            notes=list(found.notes),
            truncated={t.partition: (t.log_start, t.oldest_ms) for t in found.truncated},
            spec=found.spec,
        )

    def backtest(
        self,
        model: str,
        versions: Sequence[int | str],
        *,
        from_ms: int,
        to_ms: int,
        topic: str = "",
        label: str = "",
        positive_labels: Sequence[str] = (),
    ) -> Backtest:
        """Replays ``[from_ms, to_ms)`` of ``topic`` (default: the topic the first version was
        trained on) through ``versions`` of ``model`` (numbers or aliases, the first under test),
        judged by the first version's label or ``label``."""
        import pandas as pd

        request = trainer_pb2.BacktestRequest(
            model=model,
            versions=[str(v) for v in versions],
            topic=topic,
            window=trainer_pb2.TimeRange(from_ms=from_ms, to_ms=to_ms),
            label_field=label,
            positive_labels=list(positive_labels),
        )
        report = self._call(self._stub.Backtest, request)

        def metric(v: Any, name: str) -> float:
            return getattr(v, name) if v.HasField(name) else float("nan")

        rows = []
        for v in report.versions:
            agreement = v.agreement if v.HasField("agreement") else None
            rows.append(
                {
                    "version": v.version,
                    "threshold": v.threshold,
                    "anomalies": v.anomalies,
                    "anomaly_rate": v.anomaly_rate,
                    "score_mean": v.scores.mean,
                    "score_p50": v.scores.p50,
                    "score_p90": v.scores.p90,
                    "score_p99": v.scores.p99,
                    "score_max": v.scores.max,
                    **{name: metric(v, name) for name in ("precision", "recall", "f1", "roc_auc")},
                    "agreement": agreement.rate if agreement else float("nan"),
                    "only_first": agreement.only_first if agreement else 0,
                    "only_this": agreement.only_this if agreement else 0,
                    "mean_score_delta": agreement.mean_score_delta if agreement else float("nan"),
                }
            )
        return Backtest(
            topic=report.topic,
            from_ms=report.from_ms,
            to_ms=report.to_ms,
            versions=pd.DataFrame(rows),
            read=report.read,
            events=report.events,
            labelled=report.labelled,
            positives=report.positives,
            skipped=dict(report.skipped),
            offsets={p.partition: (p.start_offset, p.end_offset) for p in report.partitions},
        )

    def monitor(self, model: str, *, topic: str = "", last_seconds: int = 300) -> Iterator[Any]:
        """The predictors' monitoring windows of ``model`` (``kappa.events.v1.MonitoringWindow``:
        rows scored, anomaly rate against the training reference's, PSI per feature and the
        drifted ones) that closed in the last ``last_seconds``, then each as it closes, until
        the caller stops iterating. ``topic`` is the predictors' --monitoring-topic."""
        request = trainer_pb2.WatchMonitoringRequest(model=model, topic=topic, last_seconds=last_seconds)
        return self._follow(self._stub.WatchMonitoring(request))

    def compare(
        self, model: str, *, topic: str = "", last_seconds: int = 300, window_seconds: int = 60
    ) -> Any:
        """How a shadow version's answers compared with the live version's over the last
        ``last_seconds`` (``topic``: the predictors' --shadow-topic), as ``kappa compare`` prints
        it: a DataFrame with a row per window and pair of versions: ``window_start_ms``,
        ``live_version``, ``shadow_version``, ``answers``, ``agreement`` (share of flags that
        agree), ``live_only`` and ``shadow_only`` (flagged by one only), ``mean_delta`` and
        ``mean_abs_delta`` (shadow minus live score)."""
        import pandas as pd

        request = trainer_pb2.CompareShadowRequest(
            model=model, topic=topic, last_seconds=last_seconds, window_seconds=window_seconds
        )
        found = self._call(self._stub.CompareShadow, request)
        columns = [
            "window_start_ms",
            "live_version",
            "shadow_version",
            "answers",
            "agreement",
            "live_only",
            "shadow_only",
            "mean_delta",
            "mean_abs_delta",
        ]
        return pd.DataFrame([{c: getattr(w, c) for c in columns} for w in found.windows], columns=columns)

    def read_range(self, spec: trainer_pb2.TrainingSpec | None = None, /, **what: Any) -> Range:
        """The rows a job with ``spec`` (or :func:`training_spec` of ``what``) would read, as a
        pandas DataFrame with the report beside it."""
        import numpy as np
        import pandas as pd

        spec = spec if spec is not None else training_spec(**what)
        columns: list[str] = []
        batches: list[trainer_pb2.RowBatch] = []
        report = None
        try:
            for part in self._stub.ReadRange(trainer_pb2.ReadRangeRequest(spec=spec), timeout=self.timeout):
                kind = part.WhichOneof("part")
                if kind == "columns":
                    columns = list(part.columns.features)
                elif kind == "rows":
                    batches.append(part.rows)
                elif kind == "report":
                    report = part.report
        except grpc.RpcError as error:
            raise self._failed(error) from None
        if report is None:
            raise KappaError(grpc.StatusCode.DATA_LOSS, "the trainer's answer ended before its report")

        def joined(field: str, dtype: Any) -> Any:
            # One copy per batch out of protobuf's containers, then one concatenation.
            parts = [np.fromiter(getattr(b, field), dtype=dtype) for b in batches]
            return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

        values = joined("values", np.float32).reshape(-1, len(columns)) if columns else None
        labels = joined("labels", np.int8)
        data: dict[str, Any] = {
            "partition": joined("partitions", np.int32),
            "offset": joined("offsets", np.int64),
            "event_time_ms": joined("event_times_ms", np.int64),
        }
        for i, name in enumerate(columns):
            data[name] = values[:, i] if values is not None else []
        data["label"] = pd.arrays.BooleanArray(labels == 1, labels < 0)
        return Range(
            frame=pd.DataFrame(data),
            features=columns,
            read=report.read,
            usable=report.usable,
            skipped=dict(report.skipped),
            offsets={p.partition: (p.start_offset, p.end_offset) for p in report.partitions},
            sampled=report.sampled,
        )
