"""The Python package (kappa-mesh) against the plain clients a notebook would otherwise use, in
the same run, rounds alternating:

- ``read``: ``Trainer.read_range`` of a topic into a pandas DataFrame (decoded by the trainer,
  rows with partition, offset, event time, features and label) against a confluent-kafka
  consumer that only collects the raw values of the same records;
- ``predict``: ``Predictor.predict`` over the Open Inference Protocol against NVIDIA's
  ``tritonclient`` on the same predictor, the same rows, batch size and batches in flight.

Prints a markdown table row per measurement (rate = rows/s; the best of the rounds)."""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as triton
from confluent_kafka import Consumer, TopicPartition

import kappa


def best_rate(rows: int, rounds: int, *runs: Callable[[], int]) -> list[float]:
    """Each run ``rounds`` times, taking turns; the best rows/s of each (checking the rows)."""
    best = [0.0] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            got = run()
            elapsed = time.perf_counter() - started
            assert got == rows, f"run {i} gave {got} rows, not {rows}"
            best[i] = max(best[i], rows / elapsed)
    return best


def read_raw(bootstrap: str, topic: str) -> int:
    """Every record of ``topic``, from the start to the high watermark, values collected."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low])
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        values: list[bytes] = []
        while todo:
            for message in consumer.consume(10_000, timeout=5.0):
                if message.error() is not None:
                    raise RuntimeError(message.error())
                values.append(message.value())
                if message.offset() + 1 >= todo.get(message.partition(), 0):
                    todo.pop(message.partition(), None)
        return len(values)
    finally:
        consumer.close()


def infer_triton(url: str, matrix: np.ndarray, batch: int, in_flight: int) -> int:
    """The rows through tritonclient's gRPC client, ``in_flight`` batches outstanding."""
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    slots = threading.Semaphore(in_flight)
    done = threading.Event()
    failures: list[object] = []
    scored = [0]
    lock = threading.Lock()
    batches = range(0, len(matrix), batch)

    def finished(result: object, error: object) -> None:
        if error is not None:
            failures.append(error)
        else:
            with lock:
                scored[0] += len(result.as_numpy("score"))  # type: ignore[attr-defined]
        slots.release()
        if scored[0] + len(failures) * batch >= len(matrix):
            done.set()

    for start in batches:
        rows = matrix[start : start + batch]
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        slots.acquire()
        client.async_infer("", [tensor], finished, outputs=[triton.InferRequestedOutput("score")])
    done.wait(600)
    client.close()
    if failures:
        raise RuntimeError(failures[0])
    return scored[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["read", "predict"])
    parser.add_argument("--trainer", default="http://127.0.0.1:50053")
    parser.add_argument("--predictor", default="http://127.0.0.1:50052")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=18)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    if args.what == "read":
        with kappa.Trainer(args.trainer, timeout=900) as trainer:
            package, plain = best_rate(
                args.rows,
                args.rounds,
                lambda: len(trainer.read_range(topic=args.topic).frame),
                lambda: read_raw(args.bootstrap, args.topic),
            )
        label = f"read_range into pandas, {args.rows:,} fleet events"
        baseline = f"confluent-kafka, raw values only: {plain:,.0f} rows/s"
        print(f"| {label} | {package:,.0f} rows/s | {baseline} | {package / plain:.2f}x | >= 0.5x |")
    else:
        matrix = np.random.default_rng(7).normal(size=(args.rows, args.features)).astype(np.float32)
        with kappa.Predictor(args.predictor, timeout=600) as predictor:
            package, plain = best_rate(
                args.rows,
                args.rounds,
                lambda: len(
                    predictor.predict(matrix, protocol="oip", batch_size=args.batch, max_in_flight=args.in_flight)
                ),
                lambda: infer_triton(args.predictor, matrix, args.batch, args.in_flight),
            )
        label = f"predict over OIP, {args.rows:,} rows, batches of {args.batch}, {args.in_flight} in flight"
        print(f"| {label} | {package:,.0f} rows/s | tritonclient: {plain:,.0f} rows/s | {package / plain:.2f}x | >= 0.9x |")


if __name__ == "__main__":
    main()
