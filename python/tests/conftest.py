"""Real services for the package's tests: kappa-registry binaries from KAPPA_BIN_DIR against the
local Kafka (KAPPA_KAFKA_BOOTSTRAP, default 127.0.0.1:9092), which `make test` starts."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("KAPPA_BIN_DIR", pathlib.Path.home() / ".cache/kappa/target/debug"))
BOOTSTRAP = os.environ.get("KAPPA_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kappa(*args: str) -> str:
    """Runs the `kappa` CLI; its standard output."""
    done = subprocess.run([str(BIN / "kappa"), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stream_predictions(topic: str, expected: int) -> dict[tuple[int, int], dict]:
    """The stream-mode predictions on ``topic``, by the (partition, offset) of the event answered."""
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"py-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    answers: dict[tuple[int, int], dict] = {}
    deadline = time.monotonic() + 180
    try:
        while len(answers) < expected:
            assert time.monotonic() < deadline, f"{len(answers)} of {expected} predictions after 180 s"
            for message in consumer.consume(5000, timeout=1.0):
                if message.error() is None:
                    # Protobuf's JSON mapping: camelCase, and fields at their default left out.
                    answer = {"error": "", "score": 0.0, "isAnomaly": False, **json.loads(message.value())}
                    # (64-bit integers are JSON strings there.)
                    key = (int(answer.get("sourcePartition", 0)), int(answer.get("sourceOffset", 0)))
                    answers[key] = answer
    finally:
        consumer.close()
    return answers


@dataclass
class RunningRegistry:
    url: str
    topic: str
    log: pathlib.Path
    process: subprocess.Popen = field(repr=False)


class Services:
    """Launches Kappa binaries on free loopback ports and stops them when the test ends."""

    def __init__(self, logs: pathlib.Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def launch(
        self,
        binary: str,
        health: str,
        flags: list[str],
        tls_ca: pathlib.Path | None = None,
        serving: bool = True,
    ) -> tuple:
        """Starts ``binary`` with ``flags`` and waits until grpc.health.v1 says ``health`` is
        SERVING (over TLS, trusting ``tls_ca``, when given), or with ``serving=False`` only until
        it listens: (url, log, process)."""
        port, metrics = free_port(), free_port()
        log = self.logs / f"{binary}-{port}.log"
        process = subprocess.Popen(
            [
                str(BIN / binary),
                f"--listen=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{metrics}",
                f"--kafka-bootstrap={BOOTSTRAP}",
                *flags,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.started.append(process)
        url = f"http://127.0.0.1:{port}"
        probe = [f"https://127.0.0.1:{port}", f"--tls-ca={tls_ca}"] if tls_ca else [url]
        deadline = time.monotonic() + 60
        while not serving:
            with socket.socket() as probe_socket:
                if probe_socket.connect_ex(("127.0.0.1", port)) == 0:
                    return url, log, process
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        while True:
            done = subprocess.run(
                [str(BIN / "kappa"), "health", *probe, f"--service={health}"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return url, log, process
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def services(tmp_path: pathlib.Path) -> Iterator[Services]:
    running = Services(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def start_registry(services: Services) -> Callable[..., RunningRegistry]:
    """Starts kappa-registry processes with extra flags."""

    def start(*flags: str, tls_ca: pathlib.Path | None = None) -> RunningRegistry:
        topic = f"test.py-models-{uuid.uuid4().hex[:12]}"
        url, log, process = services.launch(
            "kappa-registry",
            "kappa.registry.v1.Registry",
            [f"--models-topic={topic}", f"--transactional-id=py-{topic}", *flags],
            tls_ca,
        )
        return RunningRegistry(url, topic, log, process)

    return start


@pytest.fixture
def start_predictor(services: Services) -> Callable[..., str]:
    """Starts kappa-predictor processes serving a model of a registry's topic; returns once the
    model is loaded (health SERVING), or with ``serving=False`` once it listens (the model may
    not exist yet)."""

    def start(topic: str, model: str, *flags: str, follow: str = "latest", serving: bool = True) -> str:
        flags = (f"--models-topic={topic}", f"--model={model}", f"--follow={follow}", *flags)
        return services.launch(
            "kappa-predictor", "kappa.predictor.v1.Predictor", list(flags), serving=serving
        )[0]

    return start


@pytest.fixture
def start_trainer(services: Services) -> Callable[..., str]:
    """Starts a kappa-trainer publishing to a registry, with extra flags."""

    def start(registry_url: str, *flags: str) -> str:
        own = [f"--registry={registry_url}", f"--jobs-topic=test.py-jobs-{uuid.uuid4().hex[:12]}", *flags]
        return services.launch("kappa-trainer", "kappa.trainer.v1.Trainer", own)[0]

    return start


@pytest.fixture
def start_console(services: Services) -> Callable[..., str]:
    """Starts a kappa-console reading a registry and predictors; returns its pages' URL."""

    def start(registry_url: str, predictors: list[str], *flags: str) -> str:
        http = free_port()
        own = [
            f"--http-listen=127.0.0.1:{http}",
            f"--registry={registry_url}",
            *(f"--predictor={url}" for url in predictors),
            *flags,
        ]
        services.launch("kappa-console", "", own)
        return f"http://127.0.0.1:{http}"

    return start


@pytest.fixture
def example_model(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """An untrained example autoencoder from `kappa models example`: (manifest, weights)."""
    out = tmp_path / "example"
    kappa("models", "example", "--out", str(out), "--name", f"py-{uuid.uuid4().hex[:8]}")
    return out / "manifest.json", out / "weights.safetensors"
