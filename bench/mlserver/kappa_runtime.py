"""An MLServer custom runtime that serves a Kappa model: the same safetensors weights and manifest
(proto3 JSON of kappa.model.v1.ModelManifest) kappa-predictor serves, and the same forward pass
(scale by the manifest's offsets and scales, dense layers with their activations, then the mean
squared reconstruction error, or the raw output), in NumPy. `make bench` drives it and
kappa-predictor with the same third-party load client (ghz) over the Open Inference Protocol.

Model settings: parameters.uri is a folder holding manifest.json and weights.safetensors (what
`kappa models example --out` writes).
"""

import json
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from safetensors.numpy import load_file

ACTIVATIONS = {
    "ACTIVATION_RELU": lambda x: np.maximum(x, 0.0),
    "ACTIVATION_TANH": np.tanh,
    "ACTIVATION_SIGMOID": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "ACTIVATION_LINEAR": lambda x: x,
    "ACTIVATION_UNSPECIFIED": lambda x: x,
}


class KappaAutoencoder(MLModel):
    async def load(self) -> bool:
        folder = Path(self.settings.parameters.uri)
        manifest = json.loads((folder / "manifest.json").read_text())
        tensors = load_file(str(folder / "weights.safetensors"))
        features = manifest["features"]
        self.offsets = np.array([f.get("offset", 0.0) for f in features], dtype=np.float32)
        self.scales = np.array([f.get("scale", 1.0) for f in features], dtype=np.float32)
        self.layers = [
            (
                tensors[f"layers.{i}.weight"].astype(np.float32).T.copy(),
                tensors[f"layers.{i}.bias"].astype(np.float32),
                ACTIVATIONS[layer.get("activation", "ACTIVATION_UNSPECIFIED")],
            )
            for i, layer in enumerate(manifest["layers"])
        ]
        self.reconstruction = manifest.get("output") == "OUTPUT_KIND_RECONSTRUCTION_ERROR"
        self.threshold = float(manifest.get("anomalyThreshold", 0.0))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        rows = rows.reshape(-1, self.offsets.shape[0])
        x = (rows - self.offsets) / self.scales
        h = x
        for weight, bias, activate in self.layers:
            h = activate(h @ weight + bias)
        scores = np.mean((h - x) ** 2, axis=1) if self.reconstruction else h[:, 0]
        scores = scores.astype(np.float32)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="score", shape=[len(scores)], datatype="FP32", data=scores.tolist()),
                ResponseOutput(
                    name="is_anomaly", shape=[len(scores)], datatype="BOOL", data=(scores > self.threshold).tolist()
                ),
            ],
        )
