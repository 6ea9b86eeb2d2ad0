// The Health section: GET /_ripple/health (status, background loops down, load errors) and
// GET /_ripple/metrics (Prometheus text) every 2 s: background loops restarted after a failure
// (ripple_loop_restarts_total), and small live charts drawn as inline SVG:
// function calls per second (queries + mutations + actions, from the counters' increase) and
// websocket clients / subscriptions (gauges). The last few minutes are kept in memory only.

import { errorText, fill, h, showError } from "./dom.js";

const INTERVAL_MS = 2000;
const POINTS = 90; // 3 minutes at 2 s
const CALL_COUNTERS = ["ripple_query_executions_total", "ripple_mutations_total", "ripple_actions_total"];
const SVG = "http://www.w3.org/2000/svg";

/** Prometheus text -> {metric name: sum over its label sets}, and the labelled samples. */
export function parseMetrics(text) {
  const totals = {};
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (match === null) continue;
    const value = Number(match[3]);
    totals[match[1]] = (totals[match[1]] ?? 0) + value;
    samples.push({ name: match[1], labels: match[2] ?? "", value });
  }
  return { totals, samples };
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** A chart of series [{label, points: [number], color}] on one scale from 0. */
function chart(title, testid) {
  const box = h("figure", { class: "chart", testid });
  const plot = svg("svg", { viewBox: `0 0 ${POINTS - 1} 100`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  const legend = h("figcaption", {});
  box.append(plot, legend);
  return {
    element: box,
    draw(series) {
      const max = Math.max(1, ...series.flatMap((s) => s.points));
      plot.replaceChildren(svg("line", { x1: 0, y1: 100, x2: POINTS - 1, y2: 100, class: "axis" }));
      for (const s of series) {
        const offset = POINTS - s.points.length;
        const points = s.points.map((v, i) => `${offset + i},${(100 - (v / max) * 96).toFixed(2)}`).join(" ");
        plot.append(svg("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
      }
      fill(legend, h("strong", {}, title), ` (max ${max.toFixed(max < 10 ? 1 : 0)})`, series.map((s) =>
        h("span", { class: "legend", style: `--swatch: ${s.color}` }, `${s.label}: ${format(s.points.at(-1))}`)));
    },
  };
}

function format(value) {
  if (value === undefined) return "—";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

export function mount(ctx, container) {
  const status = h("p", { class: "health-status", testid: "health-status", dataset: { status: "unknown" } }, "Checking…");
  const details = h("pre", { class: "json", testid: "health-details" });
  const restarts = h("p", { class: "hint", testid: "loop-restarts" });
  const error = h("p", { class: "error", testid: "health-error", role: "alert", hidden: true });
  const calls = chart("Function calls / s", "chart-calls");
  const clients = chart("Live connections", "chart-clients");
  const table = h("tbody", { testid: "metric-rows" });
  fill(container, h("h2", {}, "Health"), status, details, restarts, error,
    h("div", { class: "charts" }, calls.element, clients.element),
    h("details", {}, h("summary", {}, "All metrics"),
      h("div", { class: "scroll-x" }, h("table", { class: "docs" }, table))));

  const history = { calls: [], errors: [], websockets: [], subscriptions: [] };
  let previous = null; // {at, calls, errors}
  let timer = null;
  let alive = true;
  const push = (list, value) => {
    list.push(value);
    if (list.length > POINTS) list.shift();
  };

  async function checkHealth() {
    const response = await fetch("/_ripple/health", { cache: "no-store" });
    const body = await response.json().catch(() => ({ status: `HTTP ${response.status}` }));
    status.dataset.status = body.status === "ok" ? "ok" : "down";
    status.textContent = body.status === "ok"
      ? `OK: ${body.functions} functions loaded; all background loops running`
      : `${body.status}${body.loops ? `: ${body.loops.join(", ")}` : ""}`;
    const extra = { ...body };
    delete extra.status;
    delete extra.functions;
    details.hidden = Object.keys(extra).length === 0;
    details.textContent = JSON.stringify(extra, null, 2);
  }

  async function checkMetrics() {
    const response = await fetch("/_ripple/metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`GET /_ripple/metrics answered ${response.status}`);
    const { totals, samples } = parseMetrics(await response.text());
    const now = performance.now();
    const callCount = CALL_COUNTERS.reduce((sum, name) => sum + (totals[name] ?? 0), 0);
    const errorCount = totals.ripple_function_errors_total ?? 0;
    if (previous !== null) {
      const seconds = (now - previous.at) / 1000;
      push(history.calls, Math.max(0, callCount - previous.calls) / seconds);
      push(history.errors, Math.max(0, errorCount - previous.errors) / seconds);
    }
    previous = { at: now, calls: callCount, errors: errorCount };
    push(history.websockets, totals.ripple_websocket_clients ?? 0);
    push(history.subscriptions, totals.ripple_subscriptions ?? 0);
    calls.draw([{ label: "calls", points: history.calls, color: "#2f5bea" },
                { label: "errors", points: history.errors, color: "#c62828" }]);
    clients.draw([{ label: "websocket clients", points: history.websockets, color: "#2e7d32" },
                  { label: "subscriptions", points: history.subscriptions, color: "#8e24aa" }]);
    const restarted = samples.filter((s) => s.name === "ripple_loop_restarts_total" && s.value > 0)
      .map((s) => `${/loop="([^"]*)"/.exec(s.labels)?.[1] ?? s.labels} ${s.value}×`);
    restarts.textContent = restarted.length ? `Background loops restarted after a failure: ${restarted.join(", ")}`
      : "No background loop has had to be restarted.";
    fill(table, samples.map((s) => h("tr", {}, h("td", { class: "mono" }, s.name + s.labels), h("td", {}, format(s.value)))));
  }

  async function tick() {
    const results = await Promise.allSettled([checkHealth(), checkMetrics()]);
    if (!alive) return;
    const failed = results.filter((r) => r.status === "rejected").map((r) => errorText(r.reason));
    showError(error, failed.length ? `Cannot read the server's state: ${failed.join("; ")}` : null);
    timer = setTimeout(tick, INTERVAL_MS);
  }

  void tick();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
