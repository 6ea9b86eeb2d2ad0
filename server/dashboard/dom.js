// What every section of the dashboard shares: building elements (text only: no innerHTML, so no
// document content is ever parsed as markup), showing Convex values readably, and the JSON the
// editors read and write.
//
// Editor JSON is plain JSON plus two Convex types JSON lacks: an Int64 is written as a number
// with an `n` suffix (`42n`, as in JavaScript), bytes as `{"$bytes": "<base64>"}` (the wire
// encoding). A plain number is a float64, as in Convex.

import { convexToJson, jsonToConvex } from "/_ripple/sdk/ripple.js";

/** An element: `h("button", {class: "x", testid: "run", onclick: fn}, "Run")`. Children are
 * nodes or strings (as text); null/false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "testid") el.dataset.testid = value;
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "hidden") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A message element that shows an error (or hides when given null). */
export function showError(el, error) {
  if (error === null || error === undefined) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.hidden = false;
  el.textContent = errorText(error);
}

/** What an error says, with a ConvexError's data when it has some. */
export function errorText(error) {
  if (error === null || error === undefined) return "";
  if (typeof error === "string") return error;
  const data = error.data;
  const message = error.message || String(error);
  if (data === undefined) return message;
  if (typeof data === "string") return data; // ConvexError("...") : the message as its author wrote it
  const shown = compact(data);
  return message.includes(shown) ? message : `${message} (data: ${shown})`;
}

function isBytes(value) {
  return value instanceof ArrayBuffer;
}

function base64(buffer) {
  return convexToJson(buffer).$bytes;
}

/** A value as editor JSON (see the top of this file), indented. */
export function toEditText(value, indent = "  ", depth = 0) {
  const pad = indent.repeat(depth + 1);
  const end = indent.repeat(depth);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "number") return Number.isFinite(value) && !Object.is(value, -0) ? JSON.stringify(value) : JSON.stringify(convexToJson(value));
  if (isBytes(value)) return JSON.stringify({ $bytes: base64(value) });
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => pad + toEditText(v, indent, depth + 1)).join(",\n")}\n${end}]`;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 0) return "{}";
    return `{\n${keys.map((k) => `${pad}${JSON.stringify(k)}: ${toEditText(value[k], indent, depth + 1)}`).join(",\n")}\n${end}}`;
  }
  return JSON.stringify(value);
}

/** A value on one line, for table cells and summaries: strings unquoted at the top level. */
export function compact(value, top = true) {
  if (typeof value === "string") return top ? value : JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (isBytes(value)) return `bytes(${value.byteLength})`;
  if (value === undefined) return "";
  if (Array.isArray(value)) return `[${value.map((v) => compact(v, false)).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${k}: ${compact(v, false)}`).join(", ")}}`;
  }
  return String(value);
}

/** Editor JSON -> a Convex value (bigint, ArrayBuffer, ...). Throws a SyntaxError that says
 * where the text is wrong. */
export function parseEditText(text) {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') { // copy a string as it is, escapes included
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const number = /^-?\d+n/.exec(text.slice(i, i + 40));
    if (number !== null && !/[\w.]/.test(text[i - 1] ?? "")) {
      out += JSON.stringify(convexToJson(BigInt(number[0].slice(0, -1))));
      i += number[0].length;
      continue;
    }
    out += c;
    i++;
  }
  return jsonToConvex(JSON.parse(out));
}

/** A filter's value as typed: editor JSON when it parses (5, true, "x", 5n), else the text. */
export function parseLoose(text) {
  try {
    return parseEditText(text);
  } catch {
    return text;
  }
}

export function formatTime(ms) {
  if (ms === null || ms === undefined) return "";
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return String(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `
    + `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** Only the time of day (HH:MM:SS.mmm), for the log tail: the date is in its title. */
export function formatClock(ms) {
  return formatTime(ms).slice(11);
}

export function formatBytes(size) {
  const n = Number(size);
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A button that asks again before doing something destructive: the first click turns it into
 * "Really …?" for a few seconds; the second runs `action`. No window.confirm: it blocks the
 * page and is awkward on phones. */
export function confirmButton(label, confirmLabel, action, attrs = {}) {
  let armed = null;
  const button = h("button", { type: "button", class: "danger", ...attrs }, label);
  button.addEventListener("click", () => {
    if (armed === null) {
      button.textContent = confirmLabel;
      button.dataset.armed = "true";
      armed = setTimeout(() => {
        armed = null;
        button.textContent = label;
        delete button.dataset.armed;
      }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    delete button.dataset.armed;
    action();
  });
  return button;
}
