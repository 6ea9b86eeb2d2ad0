// The Functions section: the app's functions grouped by module, and a runner. The runner calls
// POST /api/function with the admin key, as the admin or acting as a user (`Convex <key>:<base64
// identity>`), and shows the result or error with the call's log lines. Dev mode returns the
// log lines with the answer; otherwise the matching entry of the log stream is looked up.
// Routes: #/functions, #/functions/<path>.

import { convexToJson, jsonToConvex } from "/_ripple/sdk/ripple.js";
import { adminFetch, runFunction } from "./api.js";
import { errorText, fill, h, parseEditText, showError, toEditText } from "./dom.js";
import { sampleOf } from "./jsonschema.js";

const KIND_LETTER = { query: "Q", mutation: "M", action: "A", httpAction: "H" };
const DEFAULT_IDENTITY = '{\n  "subject": "user1",\n  "name": "User One"\n}';

let active = null;

export function update(params) {
  if (active === null) return false;
  active(params);
  return true;
}

function moduleOf(fn) {
  return fn.kind === "httpAction" ? "HTTP routes" : fn.path.slice(0, fn.path.lastIndexOf(":"));
}

/** The log stream's entry for a call of `path` that started at `since` (ms), read from `cursor`
 * on (the stream's position before the call) for up to 3 s: other executions (live queries the
 * call's writes re-ran) may come first. Null when none shows up. */
async function streamEntry(path, since, cursor) {
  const deadline = Date.now() + 3000;
  let at = cursor;
  while (Date.now() < deadline) {
    const wait = Math.max(0, (deadline - Date.now()) / 1000).toFixed(1);
    const answer = await adminFetch("GET", `/_ripple/logs?cursor=${at}&timeout=${wait}`);
    const entry = answer.entries.find((e) => e.function === path && e.timestamp >= since);
    if (entry !== undefined) return entry;
    at = answer.cursor;
  }
  return null;
}

export function mount({ client }, container, params) {
  const list = h("div", { class: "fn-list", testid: "function-list" });
  const listError = h("p", { class: "error", role: "alert", hidden: true });
  const runner = h("div", { class: "runner", testid: "runner" });
  fill(container, h("div", { class: "split" },
    h("aside", { class: "side" }, h("h2", {}, "Functions"), list, listError),
    h("div", { class: "main" }, runner)));

  let functions = [];
  let selected = params.join("/") || null;

  function renderList() {
    const groups = new Map();
    for (const fn of functions) {
      const name = moduleOf(fn);
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(fn);
    }
    fill(list, [...groups].map(([name, fns]) => h("section", { class: "fn-group" },
      h("h3", {}, name),
      h("ul", { class: "list" }, fns.map((fn) => h("li", {},
        h("a", { href: `#/functions/${encodeURIComponent(fn.path)}`, testid: "function-link", dataset: { path: fn.path },
                 "aria-current": fn.path === selected ? "page" : null },
          h("span", { class: `kind kind-${fn.kind}`, title: fn.kind }, KIND_LETTER[fn.kind] ?? "?"),
          fn.kind === "httpAction" ? fn.path : fn.path.slice(fn.path.lastIndexOf(":") + 1),
          fn.visibility === "internal" ? h("span", { class: "tag" }, "internal") : null)))))));
    if (functions.length === 0) fill(list, h("p", { class: "hint" }, "No functions: functions/ defines none."));
  }

  function renderRunner() {
    const fn = functions.find((f) => f.path === selected);
    if (!fn) {
      fill(runner, h("p", { class: "hint" }, selected ? `No function ${selected} (any more).` : "Pick a function to run."));
      return;
    }
    if (fn.kind === "httpAction") {
      const [method, route] = fn.path.split(" ");
      fill(runner, h("h2", {}, fn.path), h("p", { class: "hint" },
        "An HTTP action runs when a request reaches its route, e.g.:"),
        h("pre", { class: "json" }, `curl -X ${method} ${location.origin}${route}`));
      return;
    }
    const args = h("textarea", { class: "editor", testid: "run-args", rows: 8, spellcheck: "false", "aria-label": "Arguments" });
    args.value = toEditText(sampleOf(fn.args) ?? {});
    const runAs = h("select", { testid: "run-as", "aria-label": "Run as" },
      h("option", { value: "admin" }, "Admin (no user)"), h("option", { value: "user" }, "A user (identity JSON)"));
    const identity = h("textarea", { class: "editor", testid: "run-identity", rows: 4, spellcheck: "false", hidden: true,
                                     "aria-label": "Identity" });
    identity.value = DEFAULT_IDENTITY;
    runAs.addEventListener("change", () => { identity.hidden = runAs.value !== "user"; });
    const run = h("button", { type: "submit", testid: "run-submit" }, `Run ${fn.kind}`);
    const error = h("p", { class: "error", testid: "run-error", role: "alert", hidden: true });
    const outcome = h("div", { class: "outcome", testid: "run-outcome", hidden: true });
    const form = h("form", { class: "run-form" },
      h("label", {}, "Arguments"), args,
      h("label", {}, "Run as"), runAs, identity,
      h("div", { class: "actions" }, run));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void execute(fn, args.value, runAs.value === "user" ? identity.value : null, run, error, outcome);
    });
    fill(runner,
      h("h2", {}, h("span", { class: `kind kind-${fn.kind}` }, KIND_LETTER[fn.kind]), fn.path,
        fn.visibility === "internal" ? h("span", { class: "tag" }, "internal") : null),
      fn.args ? h("details", {}, h("summary", {}, "Argument schema"), h("pre", { class: "json" }, JSON.stringify(fn.args, null, 2)))
        : null,
      form, error, outcome);
  }

  async function execute(fn, argsText, identityText, button, error, outcome) {
    showError(error, null);
    let wireArgs;
    let identity = null;
    try {
      wireArgs = convexToJson(parseEditText(argsText), "args");
    } catch (e) {
      showError(error, `The arguments are not valid JSON: ${e.message}`);
      return;
    }
    if (identityText !== null) {
      try {
        identity = JSON.parse(identityText);
      } catch (e) {
        showError(error, `The identity is not valid JSON: ${e.message}`);
        return;
      }
    }
    button.disabled = true;
    const started = Date.now();
    let cursor = null; // where the log stream is before the call (no cursor: from now on)
    try {
      cursor = (await adminFetch("GET", "/_ripple/logs?timeout=0")).cursor;
    } catch (e) {
      cursor = e; // no log stream: the answer's log lines are all there is
    }
    let answer;
    try {
      answer = await runFunction(fn.path, wireArgs, identity);
    } catch (e) {
      showError(error, e);
      return;
    } finally {
      button.disabled = false;
    }
    const ok = answer.status === "success";
    const took = Date.now() - started;
    const lines = h("ul", { class: "log-lines", testid: "run-logs" },
      (answer.logLines ?? []).map((line) => h("li", {}, line)));
    fill(outcome,
      h("p", { class: ok ? "ok" : "error", testid: "run-status", dataset: { status: answer.status } },
        ok ? `Success in ${took} ms` : `Error: ${answer.errorMessage}`),
      ok ? h("pre", { class: "json", testid: "run-result" }, toEditText(jsonToConvex(answer.value ?? null)))
        : answer.errorData !== undefined ? h("pre", { class: "json", testid: "run-error-data" },
          toEditText(jsonToConvex(answer.errorData))) : null,
      h("h3", {}, "Log lines"), lines);
    outcome.hidden = false;
    if ((answer.logLines ?? []).length === 0) {
      fill(lines, h("li", { class: "hint" }, "Looking in the log stream…"));
      try {
        if (cursor instanceof Error) throw cursor;
        const entry = await streamEntry(fn.path, started - 1000, cursor);
        const found = entry?.lines ?? [];
        fill(lines, found.length ? found.map((l) => h("li", {}, `[${l.level}] ${l.message}`))
          : h("li", { class: "hint" }, "No log lines."));
      } catch (e) {
        fill(lines, h("li", { class: "hint" }, `No log lines in the answer; the log stream: ${errorText(e)}`));
      }
    }
  }

  const stop = client.onUpdate("_system/dashboard:functions", {}, (value) => {
    showError(listError, null);
    const before = JSON.stringify(functions);
    functions = value;
    renderList();
    if (JSON.stringify(functions) !== before) renderRunner(); // a reload of the app changed them
  }, (e) => showError(listError, e));

  active = (next) => {
    selected = next.join("/") || null;
    renderList();
    renderRunner();
  };
  renderRunner();
  return () => {
    active = null;
    stop();
  };
}
