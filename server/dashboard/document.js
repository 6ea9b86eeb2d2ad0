// The Data section's document panels: one document, live (`_system/dashboard:document`), with
// its JSON, an editor that replaces it whole, and delete; and the editor for a new document.
// Writes go through the dashboard's system mutations, so the schema validates them as it does
// the app's own writes and its message (naming the field) is shown here.

import { confirmButton, errorText, fill, h, parseEditText, showError, toEditText } from "./dom.js";
import { sampleOf } from "./jsonschema.js";

const SYSTEM_FIELDS = new Set(["_id", "_creationTime"]);

function withoutSystemFields(doc) {
  return Object.fromEntries(Object.entries(doc).filter(([k]) => !SYSTEM_FIELDS.has(k)));
}

/** The document in an editor, or undefined (and `error` says why) when its JSON is not valid. */
function editedDocument(editor, error) {
  try {
    return parseEditText(editor.value);
  } catch (e) {
    showError(error, `The JSON is not valid: ${e.message}`);
    return undefined;
  }
}

/** A live panel of document `id` of `table`; `close()` goes back to the table. Returns
 * {element, stop}. */
export function documentPanel(client, table, id, close) {
  const json = h("pre", { class: "json", testid: "doc-json" }, "Loading…");
  const error = h("p", { class: "error", testid: "doc-error", role: "alert", hidden: true });
  const note = h("p", { class: "hint", testid: "doc-note", hidden: true });
  const editor = h("textarea", { class: "editor", testid: "doc-editor", rows: 14, spellcheck: "false", hidden: true,
                                 "aria-label": "Document JSON" });
  let doc;
  let editing = false;

  const save = h("button", { type: "button", testid: "doc-save", hidden: true, onclick: () => void saveEdit() }, "Save");
  const cancel = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => setEditing(false) },
                   "Cancel");
  const edit = h("button", { type: "button", testid: "doc-edit", onclick: () => setEditing(true) }, "Edit");
  const remove = confirmButton("Delete", "Really delete?", () => void deleteDoc(), { testid: "doc-delete" });

  function setEditing(on) {
    editing = on;
    note.hidden = true;
    if (on) editor.value = toEditText(withoutSystemFields(doc ?? {}));
    editor.hidden = !on;
    json.hidden = on;
    save.hidden = cancel.hidden = !on;
    edit.hidden = remove.hidden = on;
    showError(error, null);
    if (on) editor.focus();
  }

  async function saveEdit() {
    const document = editedDocument(editor, error);
    if (document === undefined) return;
    save.disabled = true;
    try {
      await client.mutation("_system/dashboard:replace", { id, document });
      setEditing(false);
    } catch (e) {
      showError(error, e);
    } finally {
      save.disabled = false;
    }
  }

  async function deleteDoc() {
    try {
      await client.mutation("_system/dashboard:delete", { ids: [id] });
      close();
    } catch (e) {
      showError(error, e);
    }
  }

  const stop = client.onUpdate("_system/dashboard:document", { id }, (value) => {
    doc = value;
    if (value === null) {
      fill(json, "This document does not exist (deleted, or never in this table).");
      edit.disabled = remove.disabled = true;
      return;
    }
    edit.disabled = remove.disabled = false;
    const { _id, _creationTime, ...fields } = value;
    fill(json, toEditText({ _id, _creationTime, ...fields })); // the system fields first, as Convex shows them
    if (editing) {
      note.hidden = false;
      note.textContent = "The document changed while you were editing it; saving replaces it with your text.";
    }
  }, (e) => showError(error, e));

  const element = h("section", { class: "panel", testid: "doc-panel", "aria-label": "Document" },
    h("div", { class: "panel-head" },
      h("h3", {}, h("span", { class: "muted" }, `${table} / `), h("code", { testid: "doc-id" }, id)),
      h("button", { type: "button", class: "secondary", testid: "doc-close", onclick: close }, "Close")),
    json, editor, note, error,
    h("div", { class: "actions" }, edit, save, cancel, remove));
  return { element, stop };
}

/** The editor of a new document of `table`, prefilled with the fields its `schema` requires
 * (a JSON schema; null: any object); `done(id)` after the insert. Returns {element}. */
export function newDocumentPanel(client, table, schema, done) {
  const editor = h("textarea", { class: "editor", testid: "new-doc-editor", rows: 10, spellcheck: "false",
                                 "aria-label": "New document JSON" });
  const start = schema ? sampleOf(schema) : null;
  editor.value = start && Object.keys(start).length ? toEditText(start) : "{\n  \n}";
  const error = h("p", { class: "error", testid: "new-doc-error", role: "alert", hidden: true });
  const insert = h("button", { type: "button", testid: "new-doc-insert" }, "Insert");
  insert.addEventListener("click", async () => {
    const document = editedDocument(editor, error);
    if (document === undefined) return;
    insert.disabled = true;
    try {
      done(await client.mutation("_system/dashboard:insert", { table, document }));
    } catch (e) {
      showError(error, errorText(e));
    } finally {
      insert.disabled = false;
    }
  });
  const element = h("section", { class: "panel", testid: "new-doc-panel", "aria-label": "New document" },
    h("div", { class: "panel-head" }, h("h3", {}, `New document in ${table}`),
      h("button", { type: "button", class: "secondary", onclick: () => done(null) }, "Cancel")),
    h("p", { class: "hint" }, "JSON; write an Int64 as 42n and bytes as {\"$bytes\": \"<base64>\"}."),
    editor, error, h("div", { class: "actions" }, insert));
  return { element };
}
