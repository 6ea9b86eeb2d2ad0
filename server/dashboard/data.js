// The Data section: the tables, a table's documents (live, paginated, filtered, newest first by
// default), and a document's panel (document.js). Routes: #/data, #/data/<table>,
// #/data/<table>/<id>. Changing between them keeps the table list's subscription; changing the
// table, order or filters starts the documents' subscription again.

import { documentPanel, newDocumentPanel } from "./document.js";
import { compact, fill, formatTime, h, parseLoose, showError } from "./dom.js";

const PAGE_SIZE = 25;
const CELL_CHARS = 80;
const OPS = [["eq", "="], ["neq", "≠"], ["lt", "<"], ["lte", "≤"], ["gt", ">"], ["gte", "≥"]];

let active = null; // the mounted section's `show(params)`

export function update(params) {
  if (active === null) return false;
  active(params);
  return true;
}

/** The columns of the documents shown: _id, then fields in the order they first appear,
 * _creationTime last. */
function columnsOf(docs) {
  const seen = new Set();
  for (const doc of docs) for (const key of Object.keys(doc)) seen.add(key);
  seen.delete("_id");
  seen.delete("_creationTime");
  return ["_id", ...seen, "_creationTime"];
}

function cell(value, column) {
  if (column === "_creationTime") return h("td", { title: String(value) }, formatTime(value));
  const text = compact(value);
  const shown = text.length > CELL_CHARS ? `${text.slice(0, CELL_CHARS - 1)}…` : text;
  return h("td", { title: text.length > CELL_CHARS ? text : null, class: value === undefined ? "absent" : null }, shown);
}

export function mount({ client }, container, params) {
  const tableList = h("ul", { class: "list", testid: "table-list" });
  const systemList = h("ul", { class: "list", testid: "system-table-list" });
  const tablesError = h("p", { class: "error", role: "alert", hidden: true });
  const heading = h("h2", { testid: "table-name" });
  const panelSlot = h("div", { class: "panel-slot" });
  const docsError = h("p", { class: "error", testid: "docs-error", role: "alert", hidden: true });
  const head = h("thead");
  const body = h("tbody", { testid: "doc-rows" });
  const status = h("span", { class: "muted", testid: "docs-status" });
  const more = h("button", { type: "button", class: "secondary", testid: "load-more", hidden: true }, "Load more");
  const chips = h("div", { class: "chips", testid: "filters" });
  const fieldInput = h("input", { testid: "filter-field", placeholder: "field", list: "filter-fields", "aria-label": "Field",
                                  autocapitalize: "off", spellcheck: "false" });
  const fieldList = h("datalist", { id: "filter-fields" });
  const opSelect = h("select", { testid: "filter-op", "aria-label": "Comparison" },
                     OPS.map(([op, label]) => h("option", { value: op }, label)));
  const valueInput = h("input", { testid: "filter-value", placeholder: "value (JSON or text)", "aria-label": "Value",
                                  autocapitalize: "off", spellcheck: "false" });
  const order = h("select", { testid: "order", "aria-label": "Order" },
                  h("option", { value: "desc" }, "Newest first"), h("option", { value: "asc" }, "Oldest first"));
  const addButton = h("button", { type: "button", testid: "add-doc" }, "Add document");
  const tableView = h("div", { class: "table-view", hidden: true },
    h("div", { class: "toolbar" }, heading, order, addButton),
    h("form", { class: "filter-form", testid: "filter-form" }, fieldInput, fieldList, opSelect, valueInput,
      h("button", { type: "submit", class: "secondary" }, "Filter")),
    chips, panelSlot, docsError,
    h("div", { class: "scroll-x" }, h("table", { class: "docs", testid: "docs-table" }, head, body)),
    h("div", { class: "more" }, status, more));
  const empty = h("p", { class: "hint", testid: "no-table" }, "Pick a table.");
  fill(container, h("div", { class: "split" },
    h("aside", { class: "side" }, h("h2", {}, "Tables"), tableList, h("h3", { class: "muted" }, "System tables"), systemList,
      tablesError),
    h("div", { class: "main" }, empty, tableView)));

  let table = null;
  let filters = [];
  let docs = null; // the paginated subscription
  let panel = null; // {stop?} of the open panel
  let schemas = new Map(); // table -> the JSON schema of its documents (null: any object)

  const stopTables = client.onUpdate("_system/dashboard:tables", {}, (tables) => {
    showError(tablesError, null);
    schemas = new Map(tables.map((t) => [t.name, t.schema ?? null]));
    const link = (t) => h("li", {}, h("a", { href: `#/data/${encodeURIComponent(t.name)}`, testid: "table-link",
                                             dataset: { table: t.name }, "aria-current": t.name === table ? "page" : null },
                                      t.name));
    const user = tables.filter((t) => !t.system);
    fill(tableList, user.length ? user.map(link) : h("li", { class: "hint" }, "No tables: schema.py declares none."));
    fill(systemList, tables.filter((t) => t.system).map(link));
    if (table === null && user.length) location.replace(`#/data/${encodeURIComponent(user[0].name)}`); // as Convex: the first table
  }, (e) => showError(tablesError, e));

  function renderRows({ results, status: state }) {
    showError(docsError, null);
    const columns = columnsOf(results);
    fill(head, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c))));
    fill(fieldList, columns.map((c) => h("option", { value: c })));
    fill(body, results.map((doc) => h("tr", {
      testid: "doc-row", dataset: { id: doc._id }, tabindex: "0",
      onclick: () => openDoc(doc._id),
      onkeydown: (e) => e.key === "Enter" && openDoc(doc._id),
    }, columns.map((c) => cell(doc[c], c)))));
    if (results.length === 0) fill(body, h("tr", {}, h("td", { class: "hint", colspan: columns.length },
      state === "LoadingFirstPage" ? "Loading…" : filters.length ? "No documents match the filters." : "No documents.")));
    status.textContent = state === "LoadingFirstPage" ? "Loading…"
      : `${results.length} document${results.length === 1 ? "" : "s"}${state === "Exhausted" ? "" : " loaded"}`;
    more.hidden = state === "Exhausted";
    more.disabled = state !== "CanLoadMore";
  }

  function subscribeDocs() {
    docs?.unsubscribe();
    fill(head);
    fill(body);
    showError(docsError, null);
    const args = { table, order: order.value, filters };
    docs = client.onPaginatedUpdate("_system/dashboard:page", args, { initialNumItems: PAGE_SIZE }, renderRows,
                                    (e) => showError(docsError, e));
  }

  function renderChips() {
    fill(chips, filters.map((f, i) => h("span", { class: "chip", testid: "filter-chip" },
      `${f.field} ${OPS.find(([op]) => op === f.op)[1]} ${compact(f.value, false)}`,
      h("button", { type: "button", class: "chip-remove", "aria-label": "Remove filter", onclick: () => {
        filters = filters.filter((_, j) => j !== i);
        renderChips();
        subscribeDocs();
      } }, "×"))));
  }

  function closePanel() {
    panel?.stop?.();
    panel = null;
    fill(panelSlot);
  }

  function openDoc(id) {
    location.hash = `#/data/${encodeURIComponent(table)}/${encodeURIComponent(id)}`;
  }

  function show([name, id]) {
    if (name !== table) {
      table = name ?? null;
      filters = [];
      renderChips();
      for (const link of container.querySelectorAll(".side a")) {
        if (link.dataset.table === table) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      }
      empty.hidden = table !== null;
      tableView.hidden = table === null;
      heading.textContent = table ?? "";
      closePanel();
      if (table === null) {
        docs?.unsubscribe();
        docs = null;
      } else {
        subscribeDocs();
      }
    }
    closePanel();
    if (table !== null && id !== undefined) {
      panel = documentPanel(client, table, id, () => { location.hash = `#/data/${encodeURIComponent(table)}`; });
      fill(panelSlot, panel.element);
      panel.element.scrollIntoView({ block: "nearest" }); // a row far down a phone's page: show its panel
    }
  }

  container.querySelector(".filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = fieldInput.value.trim();
    if (!field) {
      showError(docsError, "Name the field to filter on (e.g. author, or author.name for a nested field).");
      return;
    }
    filters = [...filters, { field, op: opSelect.value, value: parseLoose(valueInput.value.trim()) }];
    fieldInput.value = valueInput.value = "";
    renderChips();
    subscribeDocs();
  });
  order.addEventListener("change", subscribeDocs);
  more.addEventListener("click", () => docs?.loadMore(PAGE_SIZE));
  addButton.addEventListener("click", () => {
    closePanel();
    const editor = newDocumentPanel(client, table, schemas.get(table) ?? null, (id) => {
      closePanel();
      if (id !== null) openDoc(id);
    });
    panel = {};
    fill(panelSlot, editor.element);
    editor.element.scrollIntoView({ block: "nearest" });
    editor.element.querySelector("textarea").focus();
  });

  active = show;
  show(params);
  return () => {
    active = null;
    stopTables();
    closePanel();
    docs?.unsubscribe();
  };
}
