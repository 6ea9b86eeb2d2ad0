// The Logs section: a live tail of function executions from the log stream
// (GET /_ripple/logs?cursor=&timeout=, a long poll with the admin key), starting with what the
// server still holds. Each entry is a row: time, kind letter, function, status, duration,
// request id, its log lines; failures in red. A text filter hides rows that do not contain it
// (the dashboard's own `_system/` calls are not in the stream: docs/logs.md). "Pause" holds new
// entries back (counted) until "Resume". The poll keeps its cursor, so nothing is missed while
// paused; entries the server's buffer dropped before they were read are reported as such.

import { adminFetch } from "./api.js";
import { errorText, fill, formatClock, formatTime, h, showError } from "./dom.js";

const KIND_LETTER = { query: "Q", mutation: "M", action: "A", httpAction: "H" };
const POLL_SECONDS = 20;
const MAX_ROWS = 1000;
const RETRY_MS = [1000, 2000, 5000, 10000];

function textOf(entry) {
  return [entry.function, entry.requestId, entry.error ?? "", entry.caller ?? "", ...entry.lines.map((l) => l.message)]
    .join("\n").toLowerCase();
}

function row(entry) {
  const failed = entry.status !== "success";
  return h("li", { class: `log-row${failed ? " failure" : ""}`, testid: "log-row",
                   dataset: { status: entry.status, function: entry.function, seq: String(entry.seq) } },
    h("div", { class: "log-head" },
      h("time", { class: "muted", title: formatTime(entry.timestamp) }, formatClock(entry.timestamp)),
      h("span", { class: `kind kind-${entry.kind}`, title: entry.kind }, KIND_LETTER[entry.kind] ?? "?"),
      h("strong", { class: "log-fn" }, entry.function),
      h("span", { class: "log-status" }, entry.status),
      h("span", { class: "muted" }, `${Math.round(entry.durationMs)} ms`),
      h("code", { class: "muted log-request", title: "request id" }, entry.requestId ?? ""),
      entry.caller ? h("span", { class: "muted" }, entry.caller) : null),
    entry.lines.length ? h("ul", { class: "log-lines" },
      entry.lines.map((l) => h("li", { class: `level-${String(l.level).toLowerCase()}` }, `[${l.level}] ${l.message}`)))
      : null,
    entry.error ? h("p", { class: "error log-error" }, entry.error) : null);
}

export function mount(ctx, container) {
  const rows = h("ol", { class: "log-rows", testid: "log-rows", reversed: true });
  const filter = h("input", { type: "search", testid: "log-filter", placeholder: "Filter: function, request id, text…",
                              "aria-label": "Filter", autocapitalize: "off", spellcheck: "false" });
  const pause = h("button", { type: "button", class: "secondary", testid: "log-pause" }, "Pause");
  const state = h("span", { class: "muted", testid: "log-state" }, "connecting…");
  const error = h("p", { class: "error", testid: "log-error", role: "alert", hidden: true });
  const clear = h("button", { type: "button", class: "secondary", testid: "log-clear" }, "Clear");
  fill(container, h("div", { class: "toolbar" }, h("h2", {}, "Logs"), filter, pause, clear, state), error,
    h("p", { class: "hint", testid: "log-empty" }, "Function calls appear here as they run."), rows);
  const emptyNote = container.querySelector('[data-testid="log-empty"]');

  const abort = new AbortController();
  let paused = false;
  let held = [];
  let cursor = 0; // 0: everything the server still holds, then what comes

  function matches(entry) {
    const wanted = filter.value.trim().toLowerCase();
    return wanted === "" || textOf(entry).includes(wanted);
  }

  function show(entries) {
    for (const entry of entries) {
      const el = row(entry);
      el.hidden = !matches(entry);
      el._entry = entry;
      rows.prepend(el);
    }
    while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
    emptyNote.hidden = rows.children.length > 0;
  }

  function setState() {
    state.textContent = paused ? `paused${held.length ? ` (${held.length} new)` : ""}` : "live";
    pause.textContent = paused ? "Resume" : "Pause";
    pause.dataset.paused = String(paused);
  }

  async function poll() {
    let failures = 0;
    let first = true; // answered at once, so the tail says "live" without waiting for a first call
    while (!abort.signal.aborted) {
      const query = `cursor=${cursor}&timeout=${first ? 0 : POLL_SECONDS}`;
      let answer;
      try {
        answer = await adminFetch("GET", `/_ripple/logs?${query}`, { signal: abort.signal });
      } catch (e) {
        if (abort.signal.aborted) return;
        const missing = e.status === 404;
        showError(error, missing
          ? "This server has no log stream (GET /_ripple/logs answered 404); function logs are in its terminal output."
          : `The log stream failed: ${errorText(e)}; retrying.`);
        state.textContent = "not connected";
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)]));
        continue;
      }
      failures = 0;
      first = false;
      showError(error, null);
      if (answer.dropped > 0) {
        show([{ seq: -1, timestamp: Date.now(), kind: "", function: `${answer.dropped} entries dropped`,
                status: "dropped", durationMs: 0, requestId: "", caller: "",
                lines: [{ level: "WARN", message: "The server's log buffer overflowed before they were read." }],
                error: null }]);
      }
      cursor = answer.cursor;
      if (paused) held.push(...answer.entries);
      else show(answer.entries);
      setState();
    }
  }

  const refilter = () => {
    for (const el of rows.children) el.hidden = !matches(el._entry);
  };
  filter.addEventListener("input", refilter);
  pause.addEventListener("click", () => {
    paused = !paused;
    if (!paused) {
      show(held);
      held = [];
    }
    setState();
  });
  clear.addEventListener("click", () => {
    fill(rows);
    emptyNote.hidden = false;
  });
  void poll();
  return () => abort.abort();
}
