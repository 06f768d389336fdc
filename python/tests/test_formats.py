"""Signed models of both formats from Python, served by a predictor that trusts only signed
versions: an ONNX graph exported from scikit-learn, then Kappa's safetensors MLP, swapped by an
alias move, every step seen by a watch."""

from __future__ import annotations

import pathlib
import shutil
import threading
import time

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import IsolationForest

from kappa import Predictor, Registry, SigningKey, load_manifest, onnx_manifest

from conftest import kappa


def test_onnx_and_safetensors_published_signed_from_python_are_served_by_a_verifying_predictor(
    start_registry, start_predictor, example_model, tmp_path: pathlib.Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    signer = SigningKey.generate()
    (trusted / "python.pem").write_bytes(signer.public_pem())
    kappa("keys", "new", "--out", str(tmp_path / "registry-key"))
    shutil.copy(tmp_path / "registry-key" / "kappa-signing.pub.pem", trusted / "registry.pem")
    registry = start_registry(
        f"--trusted-keys={trusted}", f"--signing-key={tmp_path / 'registry-key' / 'kappa-signing.key'}"
    )
    manifest_path, weights_path = example_model
    mlp = load_manifest(manifest_path)
    features = [f.name for f in mlp.features]

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, len(features))).astype(np.float32)
    forest = IsolationForest(n_estimators=20, random_state=3).fit(x)
    graph = convert_sklearn(
        forest,
        initial_types=[("X", FloatTensorType([None, len(features)]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    ).SerializeToString()
    onnx = onnx_manifest(mlp.name, features, score_output="scores", lower_is_anomalous=True, threshold=0.0)

    events: list[str] = []
    with Registry(registry.url) as client, Registry(registry.url) as watcher:
        stream = watcher.watch(name=mlp.name)

        def follow() -> None:
            for event in stream:
                events.append(event.WhichOneof("event"))
                if len(events) == 4:
                    return

        threading.Thread(target=follow, daemon=True).start()
        assert client.publish(onnx, graph, signing_key=signer).version == 1
        client.set_alias(mlp.name, "production", 1)
        url = start_predictor(registry.topic, mlp.name, f"--trusted-keys={trusted}", follow="production")
        rows = [dict(zip(features, row, strict=True)) for row in x[:50].tolist()]
        with Predictor(url) as predictor:
            answers = predictor.predict(rows)
            assert {a.model_version for a in answers} == {1}
            # The graph's scores are decision_function's; lower_is_anomalous serves them negated,
            # so that higher is more anomalous as for every other model.
            expected = -forest.decision_function(x[:50])
            assert np.allclose([a.score for a in answers], expected, atol=1e-4)

            assert client.publish(mlp, weights_path.read_bytes(), signing_key=signer).version == 2
            client.set_alias(mlp.name, "production", 2)
            deadline = time.monotonic() + 30
            while predictor.predict_one(rows[0]).model_version != 2:
                assert time.monotonic() < deadline, "the predictor never swapped to the safetensors version"
                time.sleep(0.2)
    deadline = time.monotonic() + 10
    while len(events) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert events == ["published", "alias_set", "published", "alias_set"]
