"""ONNX Runtime's rows/s on a graph, one thread, for `onnx-bench` (bench/src/onnx_bench.rs).

Usage: ``python onnx_ort.py --graph G.onnx --rows FIXTURE.json --batch 64 --seconds 2``; prints
the rate alone. The rows are the fixture's, cycled in batches, as the Rust side runs them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    fixture = json.load(open(args.rows))
    features = len(fixture["features"])
    rows = np.array(fixture["rows"], dtype=np.float32).reshape(-1, features)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = [rows[i : i + args.batch] for i in range(0, len(rows) - args.batch + 1, args.batch)]
    for batch in batches[:8]:
        session.run(None, {name: batch})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for batch in batches:
            session.run(None, {name: batch})
            done += len(batch)
    print(done / (time.perf_counter() - start))


if __name__ == "__main__":
    main()
