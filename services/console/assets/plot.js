// Small SVG plots drawn from the console's own code: no plotting library, nothing fetched.
// Every function returns an <svg> element; values never go through innerHTML.

const NS = "http://www.w3.org/2000/svg";
export const COLOURS = ["#2d6cdf", "#d23c3c", "#2f9e5b", "#d9941e", "#8b5cf6", "#0ea5a5", "#c026d3", "#64748b"];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function extent(values, fallback = [0, 1]) {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return fallback;
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  return [lo, hi];
}

function formatNumber(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  return v.toPrecision(2);
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// series: [{name, points: [[x, y, flag?]], colour?, dots?}]; lines: [{y, label, cls}]
export function linePlot({ series, lines = [], width = 560, height = 200, time = true, yMin, yMax, className = "" }) {
  const pad = { l: 44, r: 10, t: 8, b: 22 };
  const xs = series.flatMap(s => s.points.map(p => p[0]));
  const ys = series.flatMap(s => s.points.map(p => p[1])).concat(lines.map(l => l.y));
  let [x0, x1] = extent(xs);
  // One instant (a single window): a minute around it, not a tenth of the epoch either side.
  if (time && xs.length > 0 && x0 < x1 && xs.every(x => x === xs[0])) [x0, x1] = [xs[0] - 30_000, xs[0] + 30_000];
  let [y0, y1] = extent(ys);
  if (yMin !== undefined) y0 = yMin;
  if (yMax !== undefined) y1 = Math.max(yMax, y1);
  const sx = x => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const sy = y => height - pad.b - (y - y0) / (y1 - y0) * (height - pad.t - pad.b);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: `plot ${className}`, role: "img" });
  svg.append(el("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  svg.append(el("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    svg.append(el("text", { x: pad.l - 4, y: sy(y) + 3, "text-anchor": "end" }, formatNumber(y)));
  }
  if (xs.length > 0) {
    const label = x => time ? formatTime(x) : formatNumber(x);
    svg.append(el("text", { x: pad.l, y: height - 6 }, label(x0)));
    svg.append(el("text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, label(x1)));
  }
  for (const line of lines) {
    svg.append(el("line", { class: line.cls || "threshold", x1: pad.l, x2: width - pad.r, y1: sy(line.y), y2: sy(line.y), "data-y": line.y }));
    if (line.label) svg.append(el("text", { x: width - pad.r, y: sy(line.y) - 3, "text-anchor": "end" }, line.label));
  }
  series.forEach((s, i) => {
    const colour = s.colour || COLOURS[i % COLOURS.length];
    const finite = s.points.filter(p => Number.isFinite(p[1]));
    if (finite.length > 1) {
      const d = finite.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      svg.append(el("path", { class: "series", d, stroke: colour, "data-name": s.name }));
    }
    if (s.dots) {
      for (const p of finite) {
        const dot = el("circle", { class: p[2] ? "dot anomaly" : "dot", cx: sx(p[0]), cy: sy(p[1]), r: p[2] ? 3.2 : 2 });
        if (s.colour || i > 0) dot.style.fill = colour;
        svg.append(dot);
      }
    }
  });
  return svg;
}

// bars: [{label, value, bad?}] drawn as columns
export function columnPlot({ bars, width = 560, height = 120, className = "" }) {
  const pad = { l: 44, r: 10, t: 8, b: 22 };
  const [, hi] = extent(bars.map(b => b.value).concat([0]), [0, 1]);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: `plot ${className}`, role: "img" });
  const w = (width - pad.l - pad.r) / Math.max(bars.length, 1);
  svg.append(el("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  svg.append(el("text", { x: pad.l - 4, y: pad.t + 6, "text-anchor": "end" }, formatNumber(hi)));
  bars.forEach((b, i) => {
    const h = (b.value / hi) * (height - pad.t - pad.b);
    svg.append(el("rect", { class: b.bad ? "barv bad" : "barv", x: pad.l + i * w + 1, y: height - pad.b - h, width: Math.max(w - 2, 1), height: Math.max(h, 0), "data-label": b.label, "data-value": b.value }));
  });
  if (bars.length > 0) {
    svg.append(el("text", { x: pad.l, y: height - 6 }, bars[0].label));
    svg.append(el("text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, bars[bars.length - 1].label));
  }
  return svg;
}

// groups: [{label, values: [v per series]}], series: [{name, colour?}]: each group's values drawn
// side by side, so distributions in the same bins compare at a glance.
export function groupedColumnPlot({ groups, series, width = 560, height = 160, className = "" }) {
  const pad = { l: 44, r: 10, t: 8, b: 22 };
  const [, hi] = extent(groups.flatMap(g => g.values).concat([0]), [0, 1]);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: `plot ${className}`, role: "img" });
  const w = (width - pad.l - pad.r) / Math.max(groups.length, 1);
  const bar = (w - 4) / Math.max(series.length, 1);
  svg.append(el("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  svg.append(el("text", { x: pad.l - 4, y: pad.t + 6, "text-anchor": "end" }, formatNumber(hi)));
  groups.forEach((g, i) => {
    g.values.forEach((v, j) => {
      const h = Number.isFinite(v) ? (v / hi) * (height - pad.t - pad.b) : 0;
      const rect = el("rect", { class: "barv", x: pad.l + i * w + 2 + j * bar, y: height - pad.b - h, width: Math.max(bar - 1, 1), height: Math.max(h, 0),
        "data-series": series[j].name, "data-label": g.label, "data-value": v });
      rect.style.fill = series[j].colour || COLOURS[j % COLOURS.length];
      svg.append(rect);
    });
  });
  if (groups.length > 0) {
    svg.append(el("text", { x: pad.l, y: height - 6 }, groups[0].label));
    svg.append(el("text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, groups[groups.length - 1].label));
  }
  return svg;
}

export { formatNumber, formatTime };
