"""Makes the PyTorch ONNX fixtures the tests serve, with ONNX Runtime's outputs as reference.

PyTorch is a multi-gigabyte install, so unlike the scikit-learn fixtures (made at test time by
sklearn_fixtures.py) these are made once by this script and committed beside it in ``torch/``:
``<name>.onnx`` and ``<name>.json`` (the 1,000 rows, ONNX Runtime's outputs, the scoring flags).
Run it again after changing a model; the tests read only what it wrote.

Every model takes a 2-D float input [batch, features], the shape Kappa feeds; the sequence
models (1-D CNN, LSTM, GRU) read the features as a window of ``STEPS`` steps of ``CHANNELS``
sensors and reshape inside the graph. The batch dimension is dynamic.

Pinned: torch 2.15.0, onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.31.1 (made on CPU).
Usage: ``python torch_fixtures.py [OUT_DIR]`` (default: ``torch/`` beside this file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

STEPS, CHANNELS = 4, 2
FEATURES = STEPS * CHANNELS
ROWS = 1000
SEED = 11


class Mlp(nn.Module):
    """A scorer: features -> one anomaly score."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Autoencoder(nn.Module):
    """Reconstructs its input; Kappa scores the reconstruction error."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(FEATURES, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid())
        self.decode = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, FEATURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class Cnn1d(nn.Module):
    """A window of sensor readings through 1-D convolutions to a score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(CHANNELS, 6, kernel_size=2), nn.ReLU(), nn.Conv1d(6, 4, kernel_size=2), nn.ReLU())
        self.head = nn.Linear(4 * (STEPS - 2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = x.reshape(-1, STEPS, CHANNELS).transpose(1, 2)
        return self.head(self.conv(window).flatten(1))


class Recurrent(nn.Module):
    """An LSTM or GRU over the window; the last hidden state scores."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(input_size=CHANNELS, hidden_size=5, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, STEPS, CHANNELS))
        return self.head(out[:, -1, :])


MODELS: dict[str, tuple[nn.Module, dict[str, object]]] = {
    "torch_mlp": (Mlp(), {"score_output": "score", "threshold": 0.0}),
    "torch_autoencoder": (Autoencoder(), {"score_output": "reconstruction", "score_kind": "reconstruction_error", "threshold": 0.5}),
    "torch_cnn1d": (Cnn1d(), {"score_output": "score", "threshold": 0.0}),
    "torch_lstm": (Recurrent(nn.LSTM), {"score_output": "score", "threshold": 0.0}),
    "torch_gru": (Recurrent(nn.GRU), {"score_output": "score", "threshold": 0.0}),
}


def export(model: nn.Module, output: str, path: Path) -> bytes:
    model.eval()
    example = torch.randn(3, FEATURES)
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["features"],
        output_names=[output],
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
    )
    return path.read_bytes()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("torch")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    rows = np.random.default_rng(SEED).normal(size=(ROWS, FEATURES)).astype(np.float32)
    for name, (model, scoring) in MODELS.items():
        output = str(scoring["score_output"])
        onnx_bytes = export(model, output, out / f"{name}.onnx")
        graph = onnx.load_from_string(onnx_bytes)
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        values = session.run(None, {"features": rows})
        outputs = {
            o.name: {"shape": list(v.shape), "datatype": str(v.dtype), "data": v.ravel().tolist()}
            for o, v in zip(session.get_outputs(), values)
        }
        fixture = {
            "features": [f"s{step}_c{channel}" for step in range(STEPS) for channel in range(CHANNELS)],
            "input": "features",
            "scoring": scoring,
            "producer": f"{graph.producer_name} {graph.producer_version}",
            "opsets": {o.domain or "ai.onnx": o.version for o in graph.opset_import},
            "rows": rows.ravel().tolist(),
            "outputs": outputs,
        }
        (out / f"{name}.json").write_text(json.dumps(fixture))
        print(name, sorted({n.op_type for n in graph.graph.node}), fixture["opsets"])


if __name__ == "__main__":
    main()
