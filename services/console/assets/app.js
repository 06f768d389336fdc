// The console's page: a hash router over four pages, reading the console's JSON API and one
// event stream. Text from the mesh goes into the DOM as text (textContent), never as markup.
import { linePlot, columnPlot, groupedColumnPlot, formatNumber, formatTime, COLOURS } from "/assets/plot.js";

const state = { session: null, live: null, summary: null, page: null };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const card = (title, ...body) => h("section", { class: "card" }, h("h2", {}, title), ...body);
const wide = (title, ...body) => h("section", { class: "card wide" }, h("h2", {}, title), ...body);
const pct = v => (v * 100).toFixed(1) + "%";
// Plot widths in SVG units: a wide card's plot and a half-width card's, so text keeps its size.
const WIDE = 1200, HALF = 580;
const when = ms => {
  const date = new Date(Number(ms));
  return Number(ms) > 0 && !Number.isNaN(date.getTime()) ? date.toLocaleString() : "—";
};

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options, headers: { ...(options.headers || {}) } };
  if (init.method && init.method !== "GET") {
    init.headers["content-type"] = "application/json";
    init.headers["x-kappa-csrf"] = state.session ? state.session.csrf : "";
  }
  const response = await fetch(path, init);
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.status === 401) { showSignIn(); }
  if (!response.ok) throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  return body;
}

function setStatus(text) { document.getElementById("status-line").textContent = text || ""; }

function showSignIn(message) {
  document.getElementById("sign-in").hidden = false;
  document.getElementById("page").replaceChildren();
  document.getElementById("sign-in-error").textContent = message || "";
}

async function loadSession() {
  state.session = await api("/api/session");
  const who = document.getElementById("who");
  if (state.session.authRequired && !state.session.signedIn) {
    who.replaceChildren();
    showSignIn();
    return false;
  }
  document.getElementById("sign-in").hidden = true;
  const name = state.session.name ? `${state.session.name} (${state.session.roles})` : "no tokens: open access";
  who.replaceChildren(name, " ");
  if (state.session.authRequired) {
    who.append(h("button", { id: "sign-out", onclick: async () => { await api("/api/session/sign-out", { method: "POST" }); location.reload(); } }, "Sign out"));
  }
  return true;
}

// --- live events: the fleet summary each second, nudges when models or predictors change ---
function connectLive() {
  if (state.live) return;
  const live = new EventSource("/api/live");
  state.live = live;
  live.addEventListener("fleet", e => {
    state.summary = JSON.parse(e.data);
    if (state.page === "fleet") renderFleet();
  });
  live.addEventListener("models", () => { if (state.page === "models" || state.page === "model") route(); });
  live.addEventListener("serving", () => { if (state.page === "serving") route(); });
  live.onerror = () => setStatus("live updates interrupted; reconnecting…");
  live.onopen = () => setStatus("");
}

// --- Fleet ---
function featureList(features) {
  if (!features || features.length === 0) return h("span", { class: "muted" }, "—");
  return h("span", { class: "features" }, features.map((f, i) =>
    h("span", { class: "pill bad", "data-feature": f.feature, title: typicalText(f) }, `${i ? "" : ""}${f.feature} ${pct(f.share)}`), " "));
}

function typicalText(f) {
  const range = f.typicalLow !== undefined ? ` (usual ${formatNumber(f.typicalLow)}–${formatNumber(f.typicalHigh)})` : "";
  return `value ${formatNumber(f.value)}${range}`;
}

function renderFleet() {
  const s = state.summary;
  const page = document.getElementById("page");
  if (!s || s.atMs === undefined) { page.replaceChildren(card("Fleet", h("p", { class: "muted" }, "waiting for the first summary…"))); return; }
  // The last second is still filling: plotted, it would always dip.
  const perSecond = values => values.slice(0, -1).map((v, i, all) => [s.atMs - (all.length - i) * 1000, v]);
  const rate = linePlot({
    series: [
      { name: "predictions/s", points: perSecond(s.eventsPerSecond) },
      { name: "anomalies/s", points: perSecond(s.anomaliesPerSecond), colour: COLOURS[1] },
    ], width: WIDE, height: 220, yMin: 0, className: "fleet-rate",
  });
  rate.id = "fleet-rate";
  const units = h("ul", { class: "plain", id: "fleet-units" }, s.topUnits.map(u =>
    h("li", { class: "unit", "data-key": u.key },
      h("a", { href: `#/unit/${encodeURIComponent(u.key)}` }, u.key),
      barOf(u.recentRate), h("span", { class: "rate" }, pct(u.recentRate)),
      featureList(u.topFeatures))));
  const latest = h("ul", { class: "plain", id: "latest-anomalies" }, s.latest.map(a =>
    h("li", { class: "anomaly", "data-key": a.key },
      h("a", { class: "key", href: `#/unit/${encodeURIComponent(a.key)}` }, a.key),
      h("span", { class: "muted" }, formatTime(a.atMs)), h("span", {}, `score ${formatNumber(a.score)}`), h("span", { class: "pill" }, `v${a.version}`),
      featureList(a.topFeatures))));
  const search = h("input", { id: "unit-search", placeholder: "find a unit by key prefix", oninput: findUnits });
  page.replaceChildren(
    wide("Fleet", h("p", { id: "fleet-summary", "data-events": s.events, "data-anomalies": s.anomalies },
      h("b", { id: "fleet-units-count" }, formatNumber(s.units)), " units · ",
      formatNumber(s.events), " predictions · ", formatNumber(s.anomalies), " anomalies",
      s.forgottenUnits ? ` · ${formatNumber(s.forgottenUnits)} units forgotten (--max-units)` : ""),
      h("div", { class: "legend" }, h("span", {}, "predictions/s"), h("span", { class: "error" }, "anomalies/s")), rate),
    card("Units with the most anomalies lately", s.topUnits.length ? units : h("p", { class: "muted", id: "fleet-units" }, "no anomalies lately")),
    card("Latest anomalies", s.latest.length ? latest : h("p", { class: "muted", id: "latest-anomalies" }, "none yet")),
    card("Find a unit", search, h("ul", { class: "plain", id: "unit-results" })),
  );
}

function barOf(share) {
  const bar = h("div", { class: "bar" });
  bar.style.width = `${Math.max(2, share * 100)}%`;
  return h("div", { class: "bar-track" }, bar);
}

async function findUnits(e) {
  const keys = await api(`/api/units?prefix=${encodeURIComponent(e.target.value)}`);
  document.getElementById("unit-results").replaceChildren(...keys.map(k =>
    h("li", {}, h("a", { class: "key", href: `#/unit/${encodeURIComponent(k)}` }, k))));
}

async function renderUnit(key) {
  const u = await api(`/api/units/${encodeURIComponent(key)}`);
  const lines = u.threshold !== null && u.threshold !== undefined ? [{ y: u.threshold, label: `threshold ${formatNumber(u.threshold)}` }] : [];
  const plot = linePlot({ series: [{ name: "score", points: u.points.map(p => [p.atMs, p.score, p.anomaly]), dots: true }], lines, width: WIDE, height: 280 });
  plot.id = "unit-plot";
  const features = h("table", { id: "unit-features" }, h("tr", {}, h("th", {}, "sensor"), h("th", {}, "share"), h("th", {}, "value"), h("th", {}, "usual range")),
    u.topFeatures.map(f => h("tr", { "data-feature": f.feature }, h("td", {}, f.feature), h("td", {}, pct(f.share)), h("td", {}, formatNumber(f.value)),
      h("td", {}, f.typicalLow !== undefined ? `${formatNumber(f.typicalLow)} – ${formatNumber(f.typicalHigh)}` : "—"))));
  document.getElementById("page").replaceChildren(
    wide(h("span", { id: "unit-key" }, u.key), h("p", { class: "muted" },
      `${u.model} v${u.version} · ${u.events} predictions, ${u.anomalies} anomalies · last ${when(u.lastSeenMs)}`), plot),
    card("What made its latest anomaly anomalous", u.topFeatures.length ? features : h("p", { class: "muted" }, "no explained anomaly")),
  );
}

// --- Models ---
async function renderModels() {
  const { models, problem } = await api("/api/models");
  setStatus(problem ? `registry: ${problem}` : "");
  document.getElementById("page").replaceChildren(wide("Models", h("ul", { class: "plain", id: "models" }, models.map(m =>
    h("li", { class: "model", "data-model": m.name }, h("a", { class: "key", href: `#/model/${encodeURIComponent(m.name)}` }, m.name),
      `${m.versions} versions, latest v${m.latestVersion}`,
      Object.entries(m.aliases).map(([a, v]) => h("span", { class: "pill" }, `${a} → v${v}`)))))));
}

async function renderModel(name) {
  const m = await api(`/api/models/${encodeURIComponent(name)}`);
  const page = document.getElementById("page");
  const aliases = h("ul", { class: "plain", id: "aliases" }, Object.entries(m.aliases).map(([a, v]) =>
    h("li", { class: "alias", "data-alias": a, "data-version": v }, h("b", {}, a), ` → v${v}`)));
  const history = h("table", { id: "alias-history" }, h("tr", {}, h("th", {}, "when"), h("th", {}, "what"), h("th", {}, "by")),
    m.history.map(c => h("tr", { class: `change ${c.kind}` }, h("td", {}, when(c.atMs)), h("td", {}, changeText(c)), h("td", {}, c.by || "—"))));
  const versions = h("div", { id: "versions" }, m.versions.map(v => versionCard(m, v)));
  page.replaceChildren(wide(`Model ${m.name}`, h("h3", {}, "Aliases"), aliases, h("h3", {}, "History (newest first)"), history), versions);
}

function changeText(c) {
  switch (c.kind) {
    case "published": return `published v${c.version}`;
    case "deleted": return `deleted v${c.version}`;
    case "alias_set": return `${c.alias} → v${c.version}${c.cutoverFromMs ? ` for events from ${when(c.cutoverFromMs)}` : ""}`;
    default: return `${c.alias} removed`;
  }
}

function versionCard(model, v) {
  const manifest = v.manifest || {};
  const lineage = manifest.lineage || {};
  const metrics = lineage.metrics || {};
  const aliasesHere = Object.entries(model.aliases).filter(([, n]) => n === Number(v.version)).map(([a]) => a);
  const body = [
    h("p", {}, `published ${when(Number(v.createdAtMs))}`, v.publishedBy ? ` by ${v.publishedBy}` : "", " · ",
      h("span", { class: v.signingKeyId ? "pill ok" : "pill", "data-signature": v.signingKeyId ? "signed" : "unsigned" },
        v.signingKeyId ? `signed by ${v.signingKeyId}` : "unsigned"),
      aliasesHere.map(a => [" ", h("span", { class: "pill" }, a)])),
  ];
  if (lineage.sourceTopic) {
    const from = Number(lineage.timeFromMs || 0), to = Number(lineage.timeToMs || 0);
    const range = from > 0 || (to > 0 && when(to) !== "—") ? `, events from ${from > 0 ? when(from) : "the start"} to ${when(to) !== "—" ? when(to) : "the end"}` : ", the whole topic";
    body.push(h("h3", {}, "Lineage"), h("p", { class: "source" }, `topic ${lineage.sourceTopic}${range}`),
      h("table", { class: "lineage" }, h("tr", {}, h("th", {}, "partition"), h("th", {}, "offsets"), h("th", {}, "from the remote tier")),
        (lineage.partitions || []).map(p => h("tr", { class: "partition-range", "data-partition": p.partition ?? 0 },
          h("td", {}, p.partition ?? 0), h("td", {}, `${p.startOffset ?? 0} – ${p.endOffset ?? 0}`),
          h("td", {}, remotePart(p))))));
    const samples = lineage.samples;
    if (samples) {
      const dropped = Object.entries(samples.skipped || {}).map(([why, n]) => `${why} ${n}`).join(", ");
      body.push(h("p", { class: "samples" }, `rows: ${samples.train || 0} train, ${samples.validation || 0} validation, ${samples.holdout || 0} hold-out`,
        ` · dropped: ${dropped || "none"}`, lineage.readDurationMs ? ` · read in ${lineage.readDurationMs} ms` : ""));
    }
    if (lineage.traceContext && lineage.traceContext.traceparent && state.session.jaegerUi) {
      const trace = lineage.traceContext.traceparent.split("-")[1];
      body.push(h("p", {}, h("a", { href: `${state.session.jaegerUi}/trace/${trace}`, target: "_blank", rel: "noreferrer", class: "trace" }, "its training in Jaeger")));
    }
  }
  if (manifest.features) body.push(h("p", { class: "muted" }, `features: ${manifest.features.map(f => f.name).join(", ")}`));
  const loss = metrics.lossCurve || [];
  if (loss.length > 1) {
    const vloss = metrics.validationLossCurve || [];
    body.push(h("h3", {}, "Training loss"), linePlot({ time: false, width: HALF, height: 160, className: "loss-curve", series: [
      { name: "train", points: loss.map((y, i) => [i + 1, y]) },
      { name: "validation", points: vloss.map((y, i) => [i + 1, y]), colour: COLOURS[3] }] }));
  }
  const scores = ["precision", "recall", "f1", "rocAuc"].filter(k => metrics[k] !== undefined);
  if (scores.length) body.push(h("p", {}, scores.map(k => `${k} ${Number(metrics[k]).toFixed(3)}`).join(" · ")));
  body.push(promoteControls(model, v));
  return h("section", { class: "card version", "data-version": v.version }, h("h2", {}, `v${v.version}`), ...body);
}

// The offsets a range read from the remote tier: those below the partition's earliest local one.
function remotePart(p) {
  const start = Number(p.startOffset || 0), end = Number(p.endOffset || 0);
  if (p.earliestLocalOffset === undefined) return "—";
  const local = Number(p.earliestLocalOffset);
  return local > start ? `${start} – ${Math.min(local, end)}` : "none";
}

function promoteControls(model, v) {
  const canWrite = state.session.canWrite;
  const alias = h("input", { class: "alias-name", value: Object.keys(model.aliases)[0] || "prod", size: 10 });
  const area = h("div", { class: "confirm-area" });
  const button = h("button", {
    class: "promote", "data-version": v.version, disabled: !canWrite,
    title: canWrite ? "" : "needs the write role",
    onclick: () => area.replaceChildren(h("div", { class: "confirm" },
      `Move ${alias.value} of ${model.name} to v${v.version}? Predictors following it swap at once.`, " ",
      h("button", { class: "primary confirm-move", onclick: async () => {
        try {
          await api(`/api/models/${encodeURIComponent(model.name)}/aliases/${encodeURIComponent(alias.value)}`,
            { method: "POST", body: JSON.stringify({ version: Number(v.version) }) });
          area.replaceChildren(h("span", { class: "pill ok" }, "moved"));
        } catch (e) { area.replaceChildren(h("span", { class: "error" }, e.message)); }
      } }, "Move"), " ",
      h("button", { onclick: () => area.replaceChildren() }, "Cancel"))),
  }, "Point alias here");
  return h("div", {}, alias, " ", button, area);
}

// --- Monitoring ---
async function renderMonitoring() {
  const m = await api("/api/monitoring");
  const cards = m.versions.map(s => {
    // Windows with no traffic measure nothing: the latest one that scored events speaks.
    const scored = s.windows.filter(w => w.events > 0);
    const last = scored[scored.length - 1];
    const psi = linePlot({ width: WIDE, height: 220, yMin: 0, className: "psi", series: s.features.map((f, i) => ({ name: f, points: scored.map(w => [w.endMs, w.psi[i]]), dots: true })),
      lines: last ? [{ y: last.psiThreshold, label: `PSI ${last.psiThreshold}` }] : [] });
    const rate = linePlot({ width: WIDE, height: 160, yMin: 0, className: "anomaly-rate", series: [
      { name: "anomaly rate", points: scored.map(w => [w.endMs, w.anomalyRate]), colour: COLOURS[1], dots: true },
      { name: "validation", points: scored.map(w => [w.endMs, w.referenceAnomalyRate]), colour: COLOURS[7] }] });
    const scorePsi = linePlot({ width: WIDE, height: 140, yMin: 0, className: "score-psi", series: [{ name: "score PSI", points: scored.map(w => [w.endMs, w.scorePsi]), dots: true }] });
    const scores = scoreDistribution(s.scoreDistribution);
    const legend = h("div", { class: "legend" }, s.features.map((f, i) => { const sw = h("i"); sw.style.background = COLOURS[i % COLOURS.length]; return h("span", {}, sw, f); }));
    return h("section", { class: "card wide drift", "data-model": s.model, "data-version": s.version },
      h("h2", {}, `${s.model} v${s.version}`),
      h("p", {}, "Drifting now: ", h("span", { class: "drifted" }, last && last.drifted.length ? last.drifted.join(", ") : "none"),
        last ? ` · ${last.events} events in the window ending ${formatTime(last.endMs)}` : " · no window has scored events yet"),
      h("h3", {}, "Drift per feature (PSI against training)"), psi, legend,
      h("h3", {}, "Anomaly rate vs validation"), rate,
      h("h3", {}, "Score distribution now vs training"), scores,
      h("h3", {}, "Score distribution drift (PSI)"), scorePsi);
  });
  const shadows = m.shadows.map(s => h("section", { class: "card wide shadow", "data-model": s.model },
    h("h2", {}, `${s.model}: v${s.liveVersion} served, v${s.shadowVersion} in shadow`),
    linePlot({ width: WIDE, height: 160, yMin: 0, yMax: 1, className: "agreement", series: [
      { name: "agreement", points: s.buckets.map(b => [b.startMs, b.agreed / Math.max(b.answers, 1)]), colour: COLOURS[2] }] }),
    columnPlot({ width: WIDE, height: 110, bars: s.buckets.slice(-60).map(b => ({ label: formatTime(b.startMs), value: b.shadowOnly + b.liveOnly, bad: true })) }),
    h("p", { class: "muted" }, "green: share of answers where both versions agree; red: flips per 10 s")));
  const none = wide("Monitoring", h("p", { class: "muted" }, "no monitoring windows yet: predictors write one a minute (--monitor-window-seconds)"));
  document.getElementById("page").replaceChildren(...(cards.length || shadows.length ? [...cards, ...shadows] : [none]), await backtestCard());
}

// The latest window's scores and the validation scores, in the validation scores' decile bins.
function scoreDistribution(d) {
  if (!d) return h("p", { class: "muted score-distribution" }, "no window has measured scores against a reference yet");
  const bin = i => i === 0 ? `< ${formatNumber(d.edges[0])}` : i === d.edges.length ? `≥ ${formatNumber(d.edges[i - 1])}` : `${formatNumber(d.edges[i - 1])}–${formatNumber(d.edges[i])}`;
  const series = [{ name: "training", colour: COLOURS[7] }, { name: "now", colour: COLOURS[0] }];
  const legend = h("div", { class: "legend" }, series.map(s => { const sw = h("i"); sw.style.background = s.colour; return h("span", {}, sw, s.name); }),
    h("span", { class: "muted" }, ` window ending ${formatTime(d.endMs)}; bins: the validation scores' tenths, lowest score first`));
  return h("div", { class: "score-distribution", "data-end-ms": d.endMs },
    groupedColumnPlot({ width: WIDE, height: 160, className: "score-shares", series,
      groups: d.shares.map((share, i) => ({ label: bin(i), values: [d.referenceShares[i], share] })) }), legend);
}

// A backtest from the page: the trainer replays a recent window through versions of a model.
async function backtestCard() {
  const { models } = await api("/api/models");
  const model = h("select", { id: "backtest-model" }, models.map(m => h("option", { value: m.name }, m.name)));
  const versions = h("input", { id: "backtest-versions", value: "production,latest", size: 18, title: "numbers or aliases, comma-separated; the first is under test" });
  const minutes = h("input", { id: "backtest-minutes", type: "number", value: 30, min: 1, max: 10080, size: 6 });
  const topic = h("input", { id: "backtest-topic", placeholder: "the first version's training topic", size: 30 });
  const report = h("div", { id: "backtest-report" });
  const allowed = state.session.canBacktest;
  const run = h("button", { id: "backtest-run", class: "primary", disabled: !allowed || models.length === 0,
    title: allowed ? "" : "needs the train role and a console started with --trainer",
    onclick: async () => {
      run.disabled = true;
      report.replaceChildren(h("p", { class: "muted" }, "replaying the window from Kafka…"));
      try {
        const body = JSON.stringify({ versions: versions.value.split(",").map(v => v.trim()).filter(Boolean), lastMinutes: Number(minutes.value), topic: topic.value.trim() });
        report.replaceChildren(backtestReport(await api(`/api/models/${encodeURIComponent(model.value)}/backtest`, { method: "POST", body })));
      } catch (e) { report.replaceChildren(h("p", { class: "error" }, e.message)); }
      run.disabled = false;
    } }, "Run backtest");
  return wide("Backtest: versions on a recent window, replayed from Kafka",
    h("p", {}, "model ", model, " versions ", versions, " topic ", topic, " last ", minutes, " minutes ", run), report);
}

function backtestReport(r) {
  const metric = v => v === undefined ? "—" : Number(v).toFixed(3);
  const rows = (r.versions || []).map(v => h("tr", { class: "backtest-version", "data-version": v.version, "data-anomalies": v.anomalies || 0 },
    h("td", {}, `v${v.version}`), h("td", {}, formatNumber(Number(v.threshold || 0))), h("td", {}, `${v.anomalies || 0} (${pct(v.anomalyRate || 0)})`),
    h("td", {}, metric(v.precision)), h("td", {}, metric(v.recall)), h("td", {}, metric(v.rocAuc)),
    h("td", {}, v.agreement ? pct(v.agreement.rate || 0) : "—"),
    h("td", {}, (v.topFeatures || []).slice(0, 3).map(f => f.feature).join(", ") || "—")));
  return h("div", { class: "backtest", "data-events": r.events || 0 },
    h("p", {}, `${r.events || 0} events of ${r.topic} scored by every version (${r.labelled || 0} labelled, ${r.positives || 0} anomalous by the label)`),
    columnPlot({ width: WIDE, height: 110, className: "backtest-rates", bars: (r.versions || []).map(v => ({ label: `v${v.version}`, value: v.anomalyRate || 0, bad: true })) }),
    h("table", {}, h("tr", {}, ["version", "threshold", "flagged", "precision", "recall", "ROC AUC", "agrees with the first", "top features"].map(t => h("th", {}, t))), rows));
}

// --- Serving ---
async function renderServing() {
  const { replicas } = await api("/api/serving");
  const cards = replicas.map(r => {
    const s = r.status;
    const found = r.discoveredFrom ? h("p", { class: "muted discovered" }, `${r.url}, found through ${r.discoveredFrom}`) : null;
    if (!s) return h("section", { class: "card replica", "data-url": r.url }, h("h2", {}, r.url), found, h("p", { class: "error" }, r.problem));
    const swaps = s.swaps || [];
    return h("section", { class: "card replica", "data-url": r.url, "data-ready": String(!!s.ready) },
      h("h2", {}, `${s.instance || r.url}`), found,
      h("p", {}, `${s.modelName} following ${s.follows}: serving `, h("b", { class: "serving-version" }, `v${s.servingVersion || 0}`), " ",
        h("span", { class: s.ready ? "pill ok ready" : "pill bad ready" }, s.ready ? "ready" : "not ready"),
        s.shadowVersion ? ` · shadow v${s.shadowVersion}` : ""),
      (s.problems || []).length ? h("ul", { class: "problems" }, s.problems.map(p => h("li", { class: "error" }, p))) : null,
      s.lastError ? h("p", { class: "error" }, `last load failed: ${s.lastError}`) : null,
      h("h3", {}, "Swaps (publish to serving, ms)"),
      swaps.length ? columnPlot({ width: HALF, height: 120, className: "swap-latency", bars: swaps.map(w => ({ label: `v${w.toVersion}`, value: w.publishToServingMs || 0 })) }) : h("p", { class: "muted" }, "none yet"),
      h("table", { class: "swaps" }, swaps.slice().reverse().slice(0, 8).map(w => h("tr", { class: "swap" },
        h("td", {}, when(Number(w.atMs))), h("td", {}, w.fromVersion ? `v${w.fromVersion} → v${w.toVersion}` : `first load: v${w.toVersion}`), h("td", {}, w.kind),
        h("td", {}, w.publishToServingMs ? `${Math.round(w.publishToServingMs)} ms` : "—")))));
  });
  document.getElementById("page").replaceChildren(...(cards.length ? cards : [wide("Serving", h("p", { class: "muted" }, "no predictors configured (--predictor)"))]));
}

// --- routing ---
async function route() {
  const [, page = "fleet", arg] = location.hash.split("/");
  state.page = page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page || (page === "unit" && a.dataset.page === "fleet") || (page === "model" && a.dataset.page === "models"));
  try {
    if (page === "fleet") renderFleet();
    else if (page === "unit") await renderUnit(decodeURIComponent(arg));
    else if (page === "models") await renderModels();
    else if (page === "model") await renderModel(decodeURIComponent(arg));
    else if (page === "monitoring") await renderMonitoring();
    else if (page === "serving") await renderServing();
  } catch (e) {
    document.getElementById("page").replaceChildren(wide("Error", h("p", { class: "error", id: "page-error" }, e.message)));
  }
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async e => {
    e.preventDefault();
    try {
      await api("/api/session/sign-in", { method: "POST", body: JSON.stringify({ token: document.getElementById("token").value }) });
      document.getElementById("token").value = "";
      await boot();
    } catch (err) { document.getElementById("sign-in-error").textContent = err.message; }
  });
  window.addEventListener("hashchange", route);
  await boot();
}

async function boot() {
  if (!(await loadSession())) return;
  connectLive();
  await route();
}

start();
