"""Real services for the package's tests: kappa-registry binaries from KAPPA_BIN_DIR against the
local Kafka (KAPPA_KAFKA_BOOTSTRAP, default 127.0.0.1:9092), which `make test` starts."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

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


@dataclass
class RunningRegistry:
    url: str
    topic: str
    log: pathlib.Path
    process: subprocess.Popen = field(repr=False)


@pytest.fixture
def start_registry(tmp_path: pathlib.Path) -> Iterator:
    """Starts kappa-registry processes with extra flags; each is stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(*flags: str, tls_ca: pathlib.Path | None = None) -> RunningRegistry:
        port, metrics = free_port(), free_port()
        topic = f"test.py-models-{uuid.uuid4().hex[:12]}"
        log = tmp_path / f"registry-{port}.log"
        process = subprocess.Popen(
            [
                str(BIN / "kappa-registry"),
                f"--listen=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{metrics}",
                f"--kafka-bootstrap={BOOTSTRAP}",
                f"--models-topic={topic}",
                f"--transactional-id=py-{topic}",
                *flags,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        # A TLS registry is asked over TLS, trusting its CA.
        probe = [f"https://127.0.0.1:{port}", f"--tls-ca={tls_ca}"] if tls_ca else [url]
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [str(BIN / "kappa"), "health", *probe, "--service=kappa.registry.v1.Registry"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return RunningRegistry(url, topic, log, process)
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def start_predictor(tmp_path: pathlib.Path) -> Iterator:
    """Starts kappa-predictor processes serving a model of a registry's topic; each is stopped
    after the test. Returns once the model is loaded (health SERVING)."""
    started: list[subprocess.Popen] = []

    def start(topic: str, model: str, *flags: str, follow: str = "latest") -> str:
        port, metrics = free_port(), free_port()
        log = tmp_path / f"predictor-{port}.log"
        process = subprocess.Popen(
            [
                str(BIN / "kappa-predictor"),
                f"--listen=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{metrics}",
                f"--kafka-bootstrap={BOOTSTRAP}",
                f"--models-topic={topic}",
                f"--model={model}",
                f"--follow={follow}",
                *flags,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [str(BIN / "kappa"), "health", url, "--service=kappa.predictor.v1.Predictor"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return url
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def start_trainer(tmp_path: pathlib.Path) -> Iterator:
    """Starts a kappa-trainer publishing to a registry; stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(registry_url: str) -> str:
        port, metrics = free_port(), free_port()
        log = tmp_path / f"trainer-{port}.log"
        process = subprocess.Popen(
            [
                str(BIN / "kappa-trainer"),
                f"--listen=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{metrics}",
                f"--kafka-bootstrap={BOOTSTRAP}",
                f"--registry={registry_url}",
                f"--jobs-topic=test.py-jobs-{uuid.uuid4().hex[:12]}",
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [str(BIN / "kappa"), "health", url, "--service=kappa.trainer.v1.Trainer"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return url
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def example_model(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """An untrained example autoencoder from `kappa models example`: (manifest, weights)."""
    out = tmp_path / "example"
    kappa("models", "example", "--out", str(out), "--name", f"py-{uuid.uuid4().hex[:8]}")
    return out / "manifest.json", out / "weights.safetensors"
