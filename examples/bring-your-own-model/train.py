"""Bring your own model: train on a time range of the fleet's topic, export ONNX, publish to Kappa.

The data scientist's path, as a script (each step is a notebook cell):

1. read ``[from, to)`` of the sensor topic into pandas with confluent-kafka, the way Kappa's
   trainer reads it (``offsets_for_times`` per partition, then up to the range's end);
2. train a scikit-learn IsolationForest on the normal rows, and, where PyTorch is installed, a
   small autoencoder with its scaling inside the model;
3. export both to ONNX and print the ``kappa models publish --onnx`` command for each.

It writes ``iforest.onnx`` (and ``autoencoder.onnx``) and ``summary.json`` (features, rows read,
each model's ROC AUC on the range's labelled events as scikit-learn scores it) into ``--out``.

Usage::

    python train.py --bootstrap 127.0.0.1:9092 --topic sensor-data --last-minutes 60 --out models/
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, TopicPartition
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

# The car fleet's sensors (`kappa fleet`); any numeric fields of your events work the same way.
FEATURES = [
    "coolant_temp", "intake_air_temp", "intake_air_flow_speed", "battery_percentage",
    "battery_voltage", "current_draw", "speed", "engine_vibration_amplitude", "throttle_pos",
    "tire_pressure_1_1", "tire_pressure_1_2", "tire_pressure_2_1", "tire_pressure_2_2",
    "accelerometer_1_1_value", "accelerometer_1_2_value", "accelerometer_2_1_value",
    "accelerometer_2_2_value", "control_unit_firmware",
]
LABEL = "failure_occurred"


def read_range(bootstrap: str, topic: str, from_ms: int, to_ms: int) -> pd.DataFrame:
    """Every event of `topic` with a Kafka timestamp in [from_ms, to_ms), one row each."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"notebook-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        starts = consumer.offsets_for_times([TopicPartition(topic, p, from_ms) for p in partitions], timeout=10)
        ends = consumer.offsets_for_times([TopicPartition(topic, p, to_ms) for p in partitions], timeout=10)
        todo: dict[int, int] = {}
        assign = []
        for start, end in zip(starts, ends):
            high = consumer.get_watermark_offsets(TopicPartition(topic, start.partition), timeout=10)[1]
            stop = end.offset if end.offset >= 0 else high
            begin = start.offset if start.offset >= 0 else high
            if begin < stop:
                todo[start.partition] = stop
                assign.append(TopicPartition(topic, start.partition, begin))
        consumer.assign(assign)
        rows = []
        while todo:
            message = consumer.poll(5.0)
            if message is None:
                raise TimeoutError(f"no events for 5 s; still waiting on partitions {sorted(todo)}")
            if message.error():
                raise RuntimeError(message.error())
            p, offset = message.partition(), message.offset()
            if p not in todo or offset >= todo[p]:
                continue
            event = json.loads(message.value())
            event.update(_partition=p, _offset=offset, _timestamp=message.timestamp()[1])
            rows.append(event)
            if offset + 1 >= todo[p]:
                del todo[p]
        return pd.DataFrame(rows)
    finally:
        consumer.close()


def train_isolation_forest(normal: np.ndarray, out: Path) -> tuple[IsolationForest, Path]:
    model = IsolationForest(n_estimators=100, random_state=0).fit(normal)
    # skl2onnx 1.20 needs these opsets named for IsolationForest (its error message says so).
    graph = to_onnx(model, normal[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    path = out / "iforest.onnx"
    path.write_bytes(graph.SerializeToString())
    return model, path


def train_autoencoder(normal: np.ndarray, x: np.ndarray, out: Path) -> tuple[np.ndarray, float, Path]:
    """A PyTorch autoencoder whose scaling is its first layer, so it takes raw sensor values."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mean = torch.tensor(normal.mean(axis=0))
    std = torch.tensor(normal.std(axis=0) + 1e-6)

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            width = normal.shape[1]
            self.net = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, width))

        def forward(self, raw: torch.Tensor) -> torch.Tensor:
            scaled = (raw - self.mean) / self.std
            # The reconstruction error in scaled space, one score a row.
            return ((self.net(scaled) - scaled) ** 2).mean(dim=1, keepdim=True)

    model = Autoencoder()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    data = torch.tensor(normal)
    for _ in range(60):
        for batch in data.split(256):
            optimiser.zero_grad()
            loss = model(batch).mean()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        threshold = float(np.percentile(model(data).numpy(), 99))
        scores = model(torch.tensor(x)).numpy().ravel()
    path = out / "autoencoder.onnx"
    torch.onnx.export(
        model, (data[:2],), str(path), input_names=["sensors"], output_names=["score"],
        dynamic_shapes={"raw": {0: torch.export.Dim("batch")}}, external_data=False,
    )
    return scores, threshold, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="sensor-data")
    parser.add_argument("--from-ms", type=int)
    parser.add_argument("--to-ms", type=int)
    parser.add_argument("--last-minutes", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--no-torch", action="store_true", help="train only the IsolationForest")
    args = parser.parse_args()
    now = int(time.time() * 1000)
    to_ms = args.to_ms if args.to_ms is not None else now
    from_ms = args.from_ms if args.from_ms is not None else to_ms - args.last_minutes * 60_000
    args.out.mkdir(parents=True, exist_ok=True)

    events = read_range(args.bootstrap, args.topic, from_ms, to_ms)
    x = events[FEATURES].to_numpy(dtype=np.float32)
    failing = events[LABEL].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    normal = x[~failing]
    print(f"read {len(events)} events of {args.topic} ({failing.sum()} labelled failing)")

    forest, forest_path = train_isolation_forest(normal, args.out)
    # decision_function: lower is more anomalous, which Kappa is told with --lower-is-anomalous.
    forest_auc = roc_auc_score(failing, -forest.decision_function(x))
    summary = {"features": FEATURES, "rows": len(events), "failing": int(failing.sum()),
               "iforest": {"path": str(forest_path), "roc_auc": forest_auc}}
    features = ",".join(FEATURES)
    print(f"IsolationForest: ROC AUC {forest_auc:.4f} on the range; publish it with\n"
          f"  kappa models publish --name fleet-iforest --onnx {forest_path} --features {features} \\\n"
          f"    --score-output scores --lower-is-anomalous --threshold 0 --label {LABEL}")

    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    if args.no_torch or torch is None:
        print("autoencoder: skipped (" + ("--no-torch" if args.no_torch else "PyTorch is not installed: pip install torch") + ")")
    else:
        scores, threshold, ae_path = train_autoencoder(normal, x, args.out)
        ae_auc = roc_auc_score(failing, scores)
        summary["autoencoder"] = {"path": str(ae_path), "roc_auc": ae_auc, "threshold": threshold}
        print(f"autoencoder: ROC AUC {ae_auc:.4f} on the range; publish it with\n"
              f"  kappa models publish --name fleet-autoencoder --onnx {ae_path} --features {features} \\\n"
              f"    --score-output score --threshold {threshold:.6g} --label {LABEL}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
