# %% [markdown]
# # From the fleet's log to production, in one notebook
#
# A data scientist's session against a running Kappa mesh, with the `kappa` package only (no
# Kafka client of your own, no CLI): read two hours of the fleet's topic exactly as Kappa's
# trainer reads them, look at the data, train an IsolationForest (scikit-learn) and an
# autoencoder (PyTorch), compare them with a version Kappa's own trainer makes on a later
# window of the same log, promote the best, watch the predictors swap, and read the drift
# windows they report.
#
# Kept as a script with cell markers (`# %%`): VS Code and Jupyter (with jupytext) open it as
# a notebook, and the package's tests run it end to end against real services
# (`python/tests/test_notebook.py`). Settings come from the environment:
#
# | variable | meaning | default |
# |---|---|---|
# | `KAPPA_REGISTRY`, `KAPPA_TRAINER` | service URLs | `http://127.0.0.1:50051`, `:50053` |
# | `KAPPA_PREDICTORS` | predictors following `production`, comma-separated | `http://127.0.0.1:50052` |
# | `KAPPA_TOPIC` | the fleet's events | `sensor-data` |
# | `KAPPA_MODEL` | the model to publish versions of | `fleet-notebook` |
# | `KAPPA_MONITORING_TOPIC` | the predictors' `--monitoring-topic` | `model-monitoring` |
# | `KAPPA_HISTORY_END_MS` | end of the three hours looked at | now |
# | `KAPPA_OUT` | where the exported graphs go | `./notebook-out` |

# %%
from __future__ import annotations

import itertools
import os
import pathlib
import threading
import time

import numpy as np
import torch
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from torch import nn

import kappa
from kappa.trainer.v1 import trainer_pb2

REGISTRY = os.environ.get("KAPPA_REGISTRY", "http://127.0.0.1:50051")
TRAINER = os.environ.get("KAPPA_TRAINER", "http://127.0.0.1:50053")
PREDICTORS = os.environ.get("KAPPA_PREDICTORS", "http://127.0.0.1:50052").split(",")
TOPIC = os.environ.get("KAPPA_TOPIC", "sensor-data")
MODEL = os.environ.get("KAPPA_MODEL", "fleet-notebook")
MONITORING_TOPIC = os.environ.get("KAPPA_MONITORING_TOPIC", "model-monitoring")
OUT = pathlib.Path(os.environ.get("KAPPA_OUT", "notebook-out"))
OUT.mkdir(parents=True, exist_ok=True)
LABEL = "failure_occurred"  # the fleet's label; yours is whatever your events carry

HOUR = 3_600_000
end = int(os.environ.get("KAPPA_HISTORY_END_MS") or time.time() * 1000)
# Two hours to learn from, and the hour after them to judge on.
train_from, train_to, judge_to = end - 3 * HOUR, end - HOUR, end

trainer = kappa.Trainer(TRAINER, timeout=600)
registry = kappa.Registry(REGISTRY)

# %% [markdown]
# ## 1. What the topic holds
# `inspect` samples the range and profiles every field, and proposes the features a job would
# train on (every numeric leaf, label and time left out).

# %%
look = trainer.inspect(topic=TOPIC, from_ms=train_from, to_ms=train_to, label=LABEL)
print(f"{look.records_in_range} records in the two hours, {look.sampled} sampled, {look.malformed} malformed")
print(look.fields[["path", "type", "presence", "min", "median", "max"]].to_string(index=False))
print("label balance:", look.label)
features = [f.path for f in look.spec.features]

# %% [markdown]
# ## 2. Two hours into pandas, as the trainer reads them
# The same range, decoding and drop reasons as a training job: each row with its partition,
# offset and event time.

# %%
history = trainer.read_range(topic=TOPIC, from_ms=train_from, to_ms=train_to, features=features, label=LABEL)
frame = history.frame
print(f"read {history.read}, usable {history.usable}, skipped {history.skipped}")
print(frame[features].describe().T[["mean", "std", "min", "max"]].to_string())
x = frame[features].to_numpy(dtype=np.float32)
failing = frame["label"].to_numpy(dtype=bool, na_value=False)
normal = x[~failing]
print(f"{len(x)} rows, {failing.sum()} labelled failing")

# %% [markdown]
# ## 3. An IsolationForest and a PyTorch autoencoder, exported to ONNX

# %%
forest = IsolationForest(n_estimators=100, random_state=0).fit(normal)
# skl2onnx 1.20 is told the opsets it knows (the onnx beside PyTorch's exporter is newer).
forest_graph = to_onnx(forest, normal[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
print(f"IsolationForest: ROC AUC {roc_auc_score(failing, -forest.decision_function(x)):.4f} on the two hours")

torch.manual_seed(0)
mean, std = torch.tensor(normal.mean(axis=0)), torch.tensor(normal.std(axis=0) + 1e-6)


class Autoencoder(nn.Module):
    """Scaling is inside the graph, so it takes raw sensor values as Kappa sends them."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(
            nn.Linear(width, 8),
            nn.ReLU(),
            nn.Linear(8, 4),
            nn.ReLU(),
            nn.Linear(4, 8),
            nn.ReLU(),
            nn.Linear(8, width),
        )

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        scaled = (raw - self.mean) / self.std
        # The reconstruction error, one score a row.
        return ((self.net(scaled) - scaled) ** 2).mean(dim=1, keepdim=True)


autoencoder = Autoencoder(len(features))
optimiser = torch.optim.Adam(autoencoder.parameters(), lr=0.01)
data = torch.tensor(normal)
for _ in range(40):
    for batch in data.split(256):
        optimiser.zero_grad()
        autoencoder(batch).mean().backward()
        optimiser.step()
autoencoder.eval()
with torch.no_grad():
    ae_threshold = float(np.percentile(autoencoder(data).numpy(), 99))
    ae_scores = autoencoder(torch.tensor(x)).numpy().ravel()
print(f"autoencoder: ROC AUC {roc_auc_score(failing, ae_scores):.4f} on the two hours")
ae_path = OUT / "autoencoder.onnx"
torch.onnx.export(
    autoencoder,
    (data[:2],),
    str(ae_path),
    input_names=["sensors"],
    output_names=["score"],
    dynamic_shapes={"raw": {0: torch.export.Dim("batch")}},
    external_data=False,
)

# %% [markdown]
# ## 4. Kappa's own version, trained by the mesh on the same two hours

# %%
spec = kappa.training_spec(TOPIC, from_ms=train_from, to_ms=train_to, features=features, label=LABEL)
spec.model_name, spec.epochs = MODEL, 8
job = trainer.train(spec)
assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
quality = job.lineage.metrics
print(f"Kappa's trainer published {MODEL} v{job.published_version}: hold-out ROC AUC {quality.roc_auc:.4f}")
lineage_rows = {p.partition: (p.start_offset, p.end_offset) for p in job.lineage.partitions}
assert lineage_rows == history.offsets, "the job read other offsets than the notebook"

# %% [markdown]
# ## 5. The two exports join the model as versions, and all three are judged on the next hour
# A backtest replays the hour after the training range through every version, on the same
# events, with the label.

# %%
forest_v = registry.publish(
    kappa.onnx_manifest(
        MODEL, features, score_output="scores", lower_is_anomalous=True, threshold=0.0, label=LABEL
    ),
    forest_graph,
).version
ae_v = registry.publish(
    kappa.onnx_manifest(
        MODEL, features, input_name="sensors", score_output="score", threshold=ae_threshold, label=LABEL
    ),
    ae_path.read_bytes(),
).version
judged = trainer.backtest(
    MODEL, [job.published_version, forest_v, ae_v], from_ms=train_to, to_ms=judge_to, label=LABEL
)
table = judged.versions.assign(kind=["kappa", "isolation forest", "autoencoder"])
print(f"{judged.events} events of the next hour ({judged.positives} failing):")
print(table[["version", "kind", "roc_auc", "f1", "anomaly_rate", "agreement"]].to_string(index=False))
best = int(table.sort_values(["roc_auc", "f1"], ascending=False).iloc[0]["version"])
print(f"best: v{best}")

# %% [markdown]
# ## 6. `production` moves to the best; every predictor follows
# The registry's watch shows the move as it happens; each predictor answers with the new
# version once it has swapped (without failing a call).

# %%
moves: list[str] = []
watch = kappa.Registry(REGISTRY)


def follow_moves() -> None:
    for event in watch.watch(name=MODEL):
        if event.WhichOneof("event") == "alias_set" and event.alias_set.alias == "production":
            moves.append(f"production -> v{event.alias_set.version}")
            return


def answer_of(predictor: kappa.Predictor, row: dict[str, float]) -> kappa.Prediction | None:
    try:
        return predictor.predict_one(row)
    except kappa.KappaError:
        return None  # nothing served yet: the alias did not exist when it started


threading.Thread(target=follow_moves, daemon=True).start()
time.sleep(0.5)
registry.set_alias(MODEL, "production", best)
row = frame[features].iloc[0].to_dict()
for url in PREDICTORS:
    with kappa.Predictor(url) as predictor:
        deadline = time.monotonic() + 60
        while (answer := answer_of(predictor, row)) is None or answer.model_version != best:
            assert time.monotonic() < deadline, f"{url} never served v{best}"
            time.sleep(0.2)
        print(f"{url} serves v{answer.model_version}")
deadline = time.monotonic() + 10
while not moves and time.monotonic() < deadline:
    time.sleep(0.1)
print("the watch saw:", moves)
watch.close()

# %% [markdown]
# ## 7. The next hour through a predictor, and the drift windows it reports

# %%
later = trainer.read_range(topic=TOPIC, from_ms=train_to, to_ms=judge_to, features=features, label=LABEL)
with kappa.Predictor(PREDICTORS[0]) as predictor:
    scores = predictor.predict(later.frame[features], protocol="oip", features=features, batch_size=512)
print(f"scored {len(scores)} events: {scores.is_anomaly.mean():.1%} flagged")
# The windows of the last minute, then each as it closes: the first that holds enough of those
# rows to measure drift (the predictors' --monitor-min-rows, 100 by default).
for window in itertools.islice(trainer.monitor(MODEL, topic=MONITORING_TOPIC, last_seconds=60), 30):
    if window.model_version == best and window.events >= 100:
        # An exported graph carries no training profile to measure drift against.
        drift = (
            ", ".join(window.drifted) or "none" if window.features else "not measured (no reference profile)"
        )
        rates = f"anomaly rate {window.anomaly_rate:.1%} (training {window.reference_anomaly_rate:.1%})"
        print(f"window of v{window.model_version}: {window.events} rows, {rates}, drifted features: {drift}")
        break
else:
    raise AssertionError("no monitoring window of the served version came")
trainer.close()
registry.close()
