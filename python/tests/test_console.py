"""kappa-console in the distribution's headless Chromium, against a real mesh: a registry and a
trainer with tokens, two predictors (one scoring a Kafka stream), and the console itself. The
pages show what the mesh holds (units and their anomalies with the sensor that drove them, the
served version, the lineage's offsets, the drifting feature) and the one action, moving an
alias, is a writer's only. A screenshot of every page goes to ``KAPPA_SCREENSHOTS`` (default
``target/console-screenshots``)."""

from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from kappa import Registry, Security, Trainer, training_spec
from kappa.trainer.v1 import trainer_pb2

from conftest import BOOTSTRAP, ROOT, kappa, stream_predictions

CHROMIUM = os.environ.get("KAPPA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = pathlib.Path(os.environ.get("KAPPA_SCREENSHOTS", ROOT / "target" / "console-screenshots"))
CARS = 10
# The points the console keeps a unit (its --unit-points default).
UNIT_POINTS = 32


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM, "the console's tests drive Chromium: `apt install chromium`, or set KAPPA_CHROMIUM"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")


def sign_in(page: Page, token_file: pathlib.Path) -> None:
    expect(page.locator("#sign-in")).to_be_visible()
    page.fill("#token", token_file.read_text().strip())
    page.click("#sign-in-form button")
    expect(page.locator("#sign-in")).to_be_hidden()


def alias_move(page: Page, model: str, version: int, csrf: bool = True) -> int:
    """POSTs an alias move from the page's own origin, as its button would; the HTTP status."""
    return page.evaluate(
        """async ([model, version, csrf]) => {
            const session = await (await fetch('/api/session')).json();
            const headers = { 'content-type': 'application/json' };
            if (csrf) headers['x-kappa-csrf'] = session.csrf;
            const answer = await fetch(`/api/models/${model}/aliases/production`,
                { method: 'POST', headers, body: JSON.stringify({ version }) });
            return answer.status;
        }""",
        [model, version, csrf],
    )


def production(registry: Registry, model: str) -> int:
    return next(v.version for v in registry.list_versions(model) if "production" in v.aliases)


def test_the_console_shows_the_mesh_and_only_a_writer_moves_an_alias(
    tmp_path, browser, start_registry, start_trainer, start_predictor, start_console
) -> None:
    tokens = tmp_path / "tokens"
    roles = {"reader": "read", "operator": "read,write,train", "trainer": "read,write"}
    tokens.write_text(
        "".join(kappa("token", "new", n, "--roles", r, "--out", str(tmp_path / n)) for n, r in roles.items())
    )
    registry = start_registry(f"--auth-tokens={tokens}")
    trainer_url = start_trainer(registry.url, f"--registry-token-file={tmp_path / 'trainer'}")
    history, live, predictions, windows = (
        f"test.py-console-{what}-{uuid.uuid4().hex[:10]}"
        for what in ("history", "live", "predictions", "windows")
    )
    healthy = ("--failing-share=0", "--rate=0", f"--cars={CARS}")
    kappa("fleet", "--kafka-bootstrap", BOOTSTRAP, "--topic", history, "--events=3000", *healthy)
    model = f"py-console-{uuid.uuid4().hex[:8]}"
    spec = training_spec(history)
    spec.model_name, spec.epochs = model, 2
    with Trainer(trainer_url) as trainer:
        job = trainer.train(spec)
        assert job.phase == trainer_pb2.JOB_PHASE_SUCCEEDED, job.message
    operator = Security(token_file=tmp_path / "operator")
    with Registry(registry.url, operator) as client:
        client.set_alias(model, "production", 1)
        (v1,) = client.list_versions(model)
    monitoring = [f"--monitoring-topic={windows}", "--monitor-window-seconds=2", "--monitor-min-rows=100"]
    streaming = start_predictor(
        registry.topic,
        model,
        "--stream",
        f"--sensor-topic={live}",
        f"--predictions-topic={predictions}",
        f"--consumer-group=py-console-{uuid.uuid4().hex[:8]}",
        *monitoring,
        follow="production",
    )
    answering = start_predictor(registry.topic, model, *monitoring, follow="production")
    # The streaming replica is found through a name, as a headless Service's pods are.
    console = start_console(
        registry.url,
        [answering],
        f"--predictor-replicas={streaming.replace('127.0.0.1', 'localhost')}",
        f"--predictions-topic={predictions}",
        f"--monitoring-topic={windows}",
        f"--auth-tokens={tokens}",
        f"--mesh-token-file={tmp_path / 'reader'}",
        f"--trainer={trainer_url}",
    )
    # The history's first 2000 events again (the same seed), but every coolant reads 40 degrees
    # hotter; stamped in the last hour, so a backtest of the last minutes finds them all.
    kappa(
        "fleet",
        "--kafka-bootstrap",
        BOOTSTRAP,
        "--topic",
        live,
        "--events=2000",
        "--backdate-seconds=3600",
        *healthy,
        "--shift",
        "coolant_temp=40",
    )

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The refusals this test provokes are logged by the browser as failed loads; anything else
    # the page logs as an error is a fault.
    page.on(
        "console",
        lambda m: errors.append(m.text)
        if m.type == "error" and not m.text.startswith("Failed to load resource")
        else None,
    )

    # A page without a session shows nothing but the sign-in form; the API answers 401.
    page.goto(console)
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.request.get(f"{console}/api/fleet").status == 401
    sign_in(page, tmp_path / "reader")

    # Fleet: every car, the ones with anomalies ranked, each naming the sensor the shift drove.
    expect(page.locator("#fleet-summary")).to_have_attribute("data-events", "2000", timeout=60_000)
    expect(page.locator("#fleet-units-count")).to_have_text(str(CARS))
    streamed_anomalies = page.locator("#fleet-summary").get_attribute("data-anomalies")
    units = page.locator("#fleet-units .unit")
    expect(units.first).to_be_visible()
    ranked = units.evaluate_all(
        "els => els.map(e => [e.dataset.key, e.querySelector('[data-feature]')?.dataset.feature])"
    )
    # What the page must rank, from the predictions topic itself: every car with an anomaly among
    # its latest points (the console keeps 32 a unit), named by its latest anomaly's top sensor.
    latest: dict[str, list[dict]] = {}
    for _, answer in sorted(stream_predictions(predictions, 2000).items()):
        latest.setdefault(answer["key"], []).append(answer)
    expected = {
        key: [a for a in answers[-UNIT_POINTS:] if a["isAnomaly"]][-1]["topFeatures"][0]["feature"]
        for key, answers in latest.items()
        if any(a["isAnomaly"] for a in answers[-UNIT_POINTS:])
    }
    assert expected, "the shifted coolant flagged nothing: the test's premise fails"
    assert dict(ranked) == expected, ranked
    coolant_first = sum(feature == "coolant_temp" for _, feature in ranked)
    assert coolant_first >= 0.9 * len(ranked), ranked
    screenshot(page, "fleet")

    # A unit's page: its latest scores plotted against the version's threshold.
    key = ranked[0][0]
    page.click(f'#fleet-units .unit[data-key="{key}"] a')
    expect(page.locator("#unit-key")).to_have_text(key)
    threshold = float(page.locator("#unit-plot line.threshold").get_attribute("data-y"))
    assert threshold == pytest.approx(v1.manifest.anomaly_threshold, rel=1e-9)
    expect(page.locator("#unit-plot circle")).to_have_count(UNIT_POINTS)
    expect(page.locator("#unit-features tr[data-feature]").first).to_have_attribute(
        "data-feature", "coolant_temp"
    )
    screenshot(page, "unit")

    # Serving: both replicas, the version each serves, ready; the one found through its name says so.
    page.goto(f"{console}/#/serving")
    for url in (streaming, answering):
        replica = page.locator(f'.replica[data-url="{url}"]')
        expect(replica.locator(".serving-version")).to_have_text("v1", timeout=30_000)
        expect(replica.locator(".ready")).to_have_text("ready")
    expect(page.locator(".replica")).to_have_count(2)
    expect(page.locator(f'.replica[data-url="{streaming}"] .discovered')).to_contain_text("localhost")
    screenshot(page, "serving")

    # Models: the alias, the lineage's offsets as the registry has them, the loss curve.
    page.goto(f"{console}/#/model/{model}")
    expect(page.locator('.alias[data-alias="production"]')).to_have_attribute("data-version", "1")
    version = page.locator('.version[data-version="1"]')
    for p in v1.manifest.lineage.partitions:
        row = version.locator(f'.partition-range[data-partition="{p.partition}"] td').nth(1)
        expect(row).to_have_text(f"{p.start_offset} – {p.end_offset}")
    expect(version.locator("svg.loss-curve path.series").first).to_be_visible()
    expect(version.locator('[data-signature="unsigned"]')).to_be_visible()
    screenshot(page, "model")

    # Monitoring: the windows say the coolant drifts, and only it.
    deadline = time.monotonic() + 60
    while True:
        page.goto(f"{console}/#/monitoring")
        page.reload()
        drifted = page.locator(f'.drift[data-model="{model}"][data-version="1"] .drifted')
        if drifted.count() and drifted.first.inner_text() == "coolant_temp":
            break
        assert time.monotonic() < deadline, page.locator("main").inner_text()
        time.sleep(1)
    # The score distribution now vs training: the training bars are the version's validation
    # scores, the others the latest measured window's, as the predictor wrote it to the topic.
    scores = page.locator(f'.drift[data-model="{model}"][data-version="1"] .score-distribution')
    end_ms = int(scores.get_attribute("data-end-ms"))
    bars = {
        series: [
            float(v)
            for v in scores.locator(f'rect[data-series="{series}"]').evaluate_all(
                "rs => rs.map(r => r.dataset.value)"
            )
        ]
        for series in ("training", "now")
    }
    reference = v1.manifest.lineage.reference.validation_scores
    assert bars["training"] == pytest.approx(list(reference.shares), abs=1e-12), bars
    with Trainer(trainer_url) as trainer:
        written = next(
            w
            for w in itertools.islice(trainer.monitor(model, topic=windows, last_seconds=600), 400)
            if w.window_end_ms == end_ms and w.HasField("score_distribution")
        )
    assert list(written.score_distribution.edges) == pytest.approx(list(reference.edges), abs=1e-12)
    assert bars["now"] == pytest.approx(list(written.score_distribution.shares), abs=1e-12), bars
    assert sum(bars["now"]) == pytest.approx(1.0)
    screenshot(page, "monitoring")

    # v2: the reader sees the button disabled, and the API refuses the move.
    with Trainer(trainer_url) as trainer:
        spec.epochs = 1
        assert trainer.train(spec).phase == trainer_pb2.JOB_PHASE_SUCCEEDED
    page.goto(f"{console}/#/model/{model}")
    expect(page.locator('.version[data-version="2"] .promote')).to_be_disabled()
    page.goto(f"{console}/#/monitoring")
    expect(page.locator("#backtest-run")).to_be_disabled()
    page.goto(f"{console}/#/model/{model}")
    assert alias_move(page, model, 2) == 403
    # The operator: without the page's CSRF secret the move is refused too; with it, it happens.
    page.click("#sign-out")  # the page reloads, signed out
    sign_in(page, tmp_path / "operator")
    assert alias_move(page, model, 2, csrf=False) == 403
    with Registry(registry.url, operator) as client:
        assert production(client, model) == 1
    page.goto(f"{console}/#/model/{model}")
    page.click('.version[data-version="2"] .promote')
    page.click(".confirm-move")
    # The page follows the registry's log: the alias moves on it without a reload.
    expect(page.locator('.alias[data-alias="production"]')).to_have_attribute(
        "data-version", "2", timeout=15_000
    )
    expect(page.locator("#alias-history .change.alias_set td").nth(2)).to_have_text("operator")
    with Registry(registry.url, operator) as client:
        assert production(client, model) == 2
    page.goto(f"{console}/#/serving")
    for url in (streaming, answering):
        expect(page.locator(f'.replica[data-url="{url}"] .serving-version')).to_have_text(
            "v2", timeout=30_000
        )
    screenshot(page, "serving-after-move")

    # A backtest from the Monitoring page: the live window replayed through v1 and v2 on the
    # trainer flags, for v1, exactly the events the stream predictor flagged with v1.
    page.goto(f"{console}/#/monitoring")
    page.select_option("#backtest-model", model)
    page.fill("#backtest-versions", "1,2")
    page.fill("#backtest-topic", live)
    page.fill("#backtest-minutes", "10080")
    page.click("#backtest-run")
    expect(page.locator("#backtest-report .backtest")).to_have_attribute(
        "data-events", "2000", timeout=60_000
    )
    expect(page.locator('.backtest-version[data-version="1"]')).to_have_attribute(
        "data-anomalies", streamed_anomalies
    )
    expect(page.locator(".backtest-version")).to_have_count(2)
    screenshot(page, "backtest")
    assert not errors, errors
