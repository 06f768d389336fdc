"""Makes ONNX graphs the registry and predictors must refuse, each for one named reason.

Written into OUT_DIR, each a graph over 6 features taking ``x`` [N, 6] and giving ``score`` [N, 1]:

- ``unsupported_op.onnx``: an operator of a domain no predictor runs (``com.example:Frobnicate``);
- ``wrong_width.onnx``: an input of 5 columns where the manifest lists 6 features;
- ``external_data.onnx`` (+ ``external_data.bin``): a weight kept in a file beside the graph;
- ``nan_probe.onnx``: a graph that scores NaN for every row (the log of a negative number);
- ``huge.onnx`` with ``--huge``: a valid graph of over 300 MiB (one large weight).

Usage: ``python bad_models.py OUT_DIR [--huge]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 6


def model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], width: int = FEATURES, extra_opsets: list[onnx.OperatorSetIdProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17)] + (extra_opsets or [])
    return helper.make_model(graph, opset_imports=opsets, producer_name="kappa-bad-models")


def weights(width: int = FEATURES, rows: int = 1) -> onnx.TensorProto:
    return numpy_helper.from_array(np.full((width, rows), 0.5, dtype=np.float32), "w")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--huge", action="store_true")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    matmul = helper.make_node("MatMul", ["x", "w"], ["score"])
    frob = helper.make_node("Frobnicate", ["h"], ["score"], domain="com.example")
    unsupported = model([helper.make_node("MatMul", ["x", "w"], ["h"]), frob], [weights()], extra_opsets=[helper.make_opsetid("com.example", 1)])
    onnx.save(unsupported, out / "unsupported_op.onnx")

    onnx.save(model([matmul], [weights(5)], width=5), out / "wrong_width.onnx")

    external = model([matmul], [weights()])
    onnx.save(external, out / "external_data.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="external_data.bin", size_threshold=0)

    nan = model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Abs", ["h"], ["a"]),
            helper.make_node("Add", ["a", "one"], ["b"]),
            helper.make_node("Neg", ["b"], ["c"]),
            helper.make_node("Log", ["c"], ["score"]),
        ],
        [weights(), numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")],
    )
    onnx.save(nan, out / "nan_probe.onnx")

    if args.huge:
        # 6 x 13,107,200 floats = 300 MiB of weights; the graph itself is valid.
        big = numpy_helper.from_array(np.zeros((FEATURES, 13_107_200), dtype=np.float32), "w")
        graph = model([helper.make_node("MatMul", ["x", "w"], ["wide"]), helper.make_node("ReduceSum", ["wide"], ["score"], keepdims=1)], [big])
        (out / "huge.onnx").write_bytes(graph.SerializeToString())


if __name__ == "__main__":
    main()
