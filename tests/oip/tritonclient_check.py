"""Talks to a kappa-predictor with NVIDIA's tritonclient (gRPC), a standard Open Inference
Protocol client that Kappa did not write. Checks server and model metadata and that ModelInfer
returns PyTorch's scores for the autoencoder fixture.

usage: tritonclient_check.py HOST:PORT path/to/autoencoder.io.json
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main():
    url, io_path = sys.argv[1], sys.argv[2]
    fixture = json.load(open(io_path))
    inputs = np.asarray(fixture["inputs"], dtype=np.float32)
    expected = np.asarray(fixture["scores"], dtype=np.float32)

    client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready("autoencoder"), "model not ready"
    server = client.get_server_metadata()
    assert server.name == "kappa-predictor", server
    meta = client.get_model_metadata("autoencoder")
    assert list(meta.versions) == ["1"], meta.versions
    assert meta.inputs[0].datatype == "FP32" and list(meta.inputs[0].shape) == [-1, 18], meta.inputs
    assert {o.name for o in meta.outputs} == {"score", "is_anomaly", "explanation"}, meta.outputs

    tensor = grpcclient.InferInput("input", list(inputs.shape), "FP32")
    tensor.set_data_from_numpy(inputs)
    outputs = [grpcclient.InferRequestedOutput("score"), grpcclient.InferRequestedOutput("is_anomaly")]
    result = client.infer("autoencoder", [tensor], outputs=outputs)
    scores = result.as_numpy("score")
    flags = result.as_numpy("is_anomaly")
    assert scores.shape == (64,), scores.shape
    diff = float(np.max(np.abs(scores - expected)))
    assert diff <= 1e-5, f"max |delta| {diff}"
    assert flags.dtype == np.bool_ and flags.shape == (64,), (flags.dtype, flags.shape)
    assert result.get_response().model_version == "1"
    assert result.as_numpy("explanation") is None, "explanation sent unasked"

    asked = [grpcclient.InferRequestedOutput("explanation")]
    shares = client.infer("autoencoder", [tensor], outputs=asked).as_numpy("explanation")
    assert shares.dtype == np.float32 and shares.shape == (64, 18), (shares.dtype, shares.shape)
    assert float(np.max(np.abs(shares.sum(axis=1) - 1.0))) <= 1e-5, shares.sum(axis=1)
    print(f"64 scores match PyTorch (max |delta| {diff:.2e}); explanations sum to 1; metadata ok")


if __name__ == "__main__":
    main()
