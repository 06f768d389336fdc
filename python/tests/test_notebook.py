"""The worked notebook (examples/notebook/fleet_notebook.py) end to end, in its own venv with
PyTorch (scripts/tools.sh), against a registry, a trainer and two predictors following
`production` that have nothing to serve until the notebook promotes a version."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import uuid

import pytest

from conftest import BOOTSTRAP, ROOT, kappa

NOTEBOOK = ROOT / "examples" / "notebook" / "fleet_notebook.py"
PYTHON = pathlib.Path(
    os.environ.get("KAPPA_NOTEBOOK_PYTHON", pathlib.Path.home() / ".cache/kappa/notebook-venv/bin/python")
)


def test_the_worked_notebook_runs_end_to_end(
    start_registry, start_trainer, start_predictor, tmp_path: pathlib.Path
) -> None:
    if not PYTHON.exists():
        pytest.fail(
            f"{PYTHON} is missing: scripts/tools.sh installs the notebook's venv (make python-test runs it)"
        )
    registry = start_registry()
    trainer_url = start_trainer(registry.url)
    topic, monitoring = (f"test.py-{what}-{uuid.uuid4().hex[:12]}" for what in ("fleet", "monitoring"))
    # Three hours of a small fleet, one sample per car every 10 s: two to train on, one to judge.
    fleet = ["--cars=10", "--events=10800", "--rate=0", "--failing-share=0.3", "--sample-interval-ms=10000"]
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", topic, *fleet, "--backdate-seconds=10800")
    model = f"py-notebook-{uuid.uuid4().hex[:8]}"
    predictors = [
        start_predictor(
            registry.topic,
            model,
            f"--monitoring-topic={monitoring}",
            "--monitor-window-seconds=2",
            follow="production",
            serving=False,
        )
        for _ in range(2)
    ]
    env = {
        **os.environ,
        "KAPPA_REGISTRY": registry.url,
        "KAPPA_TRAINER": trainer_url,
        "KAPPA_PREDICTORS": ",".join(predictors),
        "KAPPA_TOPIC": topic,
        "KAPPA_MODEL": model,
        "KAPPA_MONITORING_TOPIC": monitoring,
        "KAPPA_OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        [str(PYTHON), str(NOTEBOOK)], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    best = re.search(r"^best: v(\d+)$", out, re.MULTILINE)
    assert best, out
    for url in predictors:
        assert f"{url} serves v{best[1]}" in out, out
    assert f"the watch saw: ['production -> v{best[1]}']" in out, out
    assert re.search(rf"^window of v{best[1]}: \d+ rows", out, re.MULTILINE), out
    # Three versions judged on the same events, each with a ROC AUC (both classes labelled).
    table = out[out.index("events of the next hour") : out.index("best:")]
    assert (
        len(re.findall(r"^\s+[123]\s+(kappa|isolation forest|autoencoder)\s+[01]\.\d+", table, re.MULTILINE))
        == 3
    ), table
