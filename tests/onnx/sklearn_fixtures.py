"""Makes the scikit-learn ONNX fixtures the tests serve, with ONNX Runtime's outputs as reference.

Each family is trained on synthetic data, converted with skl2onnx's default options (the one
exception is said where it is made), and run through ONNX Runtime on the same 1,000 random rows
the tests send to Kappa. For every family the script writes, into the output folder:

- ``<name>.onnx``: the graph, as a data scientist would export it;
- ``<name>.json``: the rows, ONNX Runtime's outputs, and how Kappa should score with the graph
  (the flags ``kappa models publish --onnx`` takes).

Usage: ``python sklearn_fixtures.py OUT_DIR [--rows 1000] [--features 6] [--only NAME,...]``.
Versions are pinned by scripts/tools.sh (the venv the tests use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import OneClassSVM

SEED = 7


def training_data(features: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows around per-feature centres of different scales, a label from two of them."""
    rng = np.random.default_rng(SEED)
    centres = rng.uniform(-50, 50, size=features)
    scales = rng.uniform(0.5, 20, size=features)
    x = (rng.normal(size=(600, features)) * scales + centres).astype(np.float32)
    y = ((x[:, 0] - centres[0]) / scales[0] + (x[:, 1] - centres[1]) / scales[1] > 0.8).astype(np.int64)
    return x, y


def probe_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Random rows over a range wider than the training data, so trees see every branch."""
    rng = np.random.default_rng(SEED + 1)
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return rng.uniform(lo - 0.25 * span, hi + 0.25 * span, size=(rows, x.shape[1])).astype(np.float32)


Family = Callable[[np.ndarray, np.ndarray], tuple[Any, dict[str, Any], dict[str, Any]]]


def families() -> dict[str, Family]:
    """name -> (fitted model, skl2onnx options, Kappa scoring flags)."""

    def iforest(x: np.ndarray, y: np.ndarray):
        model = IsolationForest(n_estimators=40, random_state=SEED).fit(x)
        # skl2onnx 1.20 refuses IsolationForest under its default opsets ("specify
        # target_opset={'ai.onnx.ml': 3}"), and then needs the main opset named too.
        return model, {"target_opset": {"": 17, "ai.onnx.ml": 3}}, {"score_output": "scores", "lower_is_anomalous": True, "threshold": 0.0}

    def gbc(x: np.ndarray, y: np.ndarray):
        model = GradientBoostingClassifier(n_estimators=30, random_state=SEED).fit(x, y)
        # The default ZipMap output: Kappa serves its probabilities as a tensor.
        return model, {}, {"score_output": "output_probability", "score_column": 1, "threshold": 0.5}

    def gbr(x: np.ndarray, y: np.ndarray):
        model = GradientBoostingRegressor(n_estimators=30, random_state=SEED).fit(x, x[:, 2])
        return model, {}, {"score_output": "variable", "threshold": float(np.median(x[:, 2]))}

    def rfc(x: np.ndarray, y: np.ndarray):
        model = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=SEED).fit(x, y)
        return model, {"options": {id(model): {"zipmap": False}}}, {"score_output": "probabilities", "score_column": 1, "threshold": 0.5}

    def rfr(x: np.ndarray, y: np.ndarray):
        model = RandomForestRegressor(n_estimators=15, max_depth=8, random_state=SEED).fit(x, x[:, 3])
        return model, {}, {"score_output": "variable", "threshold": float(np.median(x[:, 3]))}

    def scaled_logistic(x: np.ndarray, y: np.ndarray):
        model = make_pipeline(StandardScaler(), MinMaxScaler(), LogisticRegression()).fit(x, y)
        return model, {}, {"label_output": "output_label", "positive_labels": ["1"], "threshold": 0.5}

    def ocsvm(x: np.ndarray, y: np.ndarray):
        model = make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(x[:300])
        return model, {}, {"score_output": "scores", "lower_is_anomalous": True, "threshold": 0.0}

    return {
        "iforest": iforest,
        "gradient_boosting_classifier": gbc,
        "gradient_boosting_regressor": gbr,
        "random_forest_classifier": rfc,
        "random_forest_regressor": rfr,
        "scaled_logistic_regression": scaled_logistic,
        "one_class_svm": ocsvm,
    }


def reference_outputs(onnx_bytes: bytes, rows: np.ndarray) -> dict[str, dict[str, Any]]:
    """ONNX Runtime's outputs; a ZipMap's list of dicts becomes the [N, classes] tensor it wraps."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: rows})
    out: dict[str, dict[str, Any]] = {}
    for name, value in zip(names, values):
        if isinstance(value, list):
            classes = sorted(value[0].keys())
            value = np.array([[row[c] for c in classes] for row in value], dtype=np.float32)
        value = np.asarray(value)
        out[name] = {"shape": list(value.shape), "datatype": str(value.dtype), "data": value.ravel().tolist()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--only", default="", help="comma-separated family names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x, y = training_data(args.features)
    rows = probe_rows(x, args.rows)
    wanted = {n for n in args.only.split(",") if n}
    for name, family in families().items():
        if wanted and name not in wanted:
            continue
        model, convert, scoring = family(x, y)
        onnx_model = to_onnx(model, x[:1], **convert)
        onnx_bytes = onnx_model.SerializeToString()
        (args.out / f"{name}.onnx").write_bytes(onnx_bytes)
        fixture = {
            "features": [f"f{i}" for i in range(args.features)],
            "input": onnx_model.graph.input[0].name,
            "scoring": scoring,
            "rows": rows.ravel().tolist(),
            "outputs": reference_outputs(onnx_bytes, rows),
        }
        (args.out / f"{name}.json").write_text(json.dumps(fixture))
        print(name, "ops:", sorted({n.op_type for n in onnx_model.graph.node}))


if __name__ == "__main__":
    main()
