// The Environment variables section, through the admin endpoints (docs/env.md):
// GET /api/list_environment_variables and POST /api/update_environment_variables
// {"changes": [{name, value}]} (a change without a value deletes). Values stay hidden until
// clicked, so a screen share or a glance over a shoulder shows names only.

import { adminFetch } from "./api.js";
import { confirmButton, fill, h, showError } from "./dom.js";

const HIDDEN = "••••••••";

export function mount(ctx, container) {
  const rows = h("tbody", { testid: "env-rows" });
  const error = h("p", { class: "error", testid: "env-error", role: "alert", hidden: true });
  const name = h("input", { testid: "env-name", placeholder: "NAME", "aria-label": "Name", autocapitalize: "characters",
                            spellcheck: "false", required: true });
  const value = h("input", { testid: "env-value", placeholder: "value", "aria-label": "Value", autocomplete: "off",
                             spellcheck: "false" });
  const form = h("form", { class: "env-form", testid: "env-form" }, name, value,
                 h("button", { type: "submit", testid: "env-add" }, "Add"));
  fill(container, h("h2", {}, "Environment variables"),
    h("p", { class: "hint" }, "Functions read them with ctx.env; a change reaches running functions at once."),
    form, error,
    h("div", { class: "scroll-x" }, h("table", { class: "docs" },
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Value"), h("th", {}, ""))), rows)));

  let alive = true;

  async function change(changes) {
    showError(error, null);
    try {
      await adminFetch("POST", "/api/update_environment_variables", { body: { changes } });
      await load();
      return true;
    } catch (e) {
      showError(error, e);
      return false;
    }
  }

  function valueCell(key, text) {
    const shown = h("button", { type: "button", class: "reveal", testid: "env-reveal", title: "Show the value" }, HIDDEN);
    shown.addEventListener("click", () => {
      const revealed = shown.dataset.revealed === "true";
      shown.dataset.revealed = String(!revealed);
      shown.textContent = revealed ? HIDDEN : text;
      shown.title = revealed ? "Show the value" : "Hide the value";
    });
    return h("td", {}, shown);
  }

  function editRow(tr, key, text) {
    const input = h("input", { value: text, testid: "env-edit-value", "aria-label": `New value of ${key}`,
                               autocomplete: "off", spellcheck: "false" });
    const save = h("button", { type: "button", testid: "env-save" }, "Save");
    save.addEventListener("click", async () => {
      save.disabled = true;
      if (!(await change([{ name: key, value: input.value }]))) save.disabled = false;
    });
    fill(tr, h("td", {}, h("code", {}, key)), h("td", {}, input),
      h("td", { class: "actions" }, save, h("button", { type: "button", class: "secondary", onclick: () => void load() }, "Cancel")));
    input.focus();
  }

  async function load() {
    let answer;
    try {
      answer = await adminFetch("GET", "/api/list_environment_variables");
    } catch (e) {
      showError(error, e);
      return;
    }
    if (!alive) return;
    const entries = Object.entries(answer.environmentVariables ?? {}).sort(([a], [b]) => a.localeCompare(b));
    fill(rows, entries.map(([key, text]) => {
      const tr = h("tr", { testid: "env-row", dataset: { name: key } });
      return fill(tr, h("td", {}, h("code", {}, key)), valueCell(key, text),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "secondary", testid: "env-edit", onclick: () => editRow(tr, key, text) }, "Edit"),
          confirmButton("Delete", "Really delete?", () => void change([{ name: key }]), { testid: "env-delete" })));
    }));
    if (entries.length === 0) fill(rows, h("tr", {}, h("td", { colspan: 3, class: "hint" }, "No environment variables set.")));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await change([{ name: name.value.trim(), value: value.value }])) name.value = value.value = "";
  });
  void load();
  return () => { alive = false; };
}
