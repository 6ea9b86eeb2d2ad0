// Convex values <-> their JSON wire encoding (docs/values.md, `convex_encoded_json`).
//
// JavaScript side        wire
//   bigint (int64)       {"$integer": base64 of 8 bytes, little-endian two's complement}
//   number               a JSON number; NaN, +-Infinity and -0 as {"$float": base64 of 8 LE bytes}
//   ArrayBuffer          {"$bytes": base64}   (any typed array or DataView is accepted on the way out)
//   string, boolean, null, arrays, plain objects as themselves
// An object field whose value is `undefined` is left out, as Convex does; `undefined` anywhere
// else, and anything that is not a Convex value, is refused with an error naming where it is.
// Only browser-and-Node globals are used here (atob, btoa, DataView), no Node modules.

const MIN_INT64 = -(2n ** 63n);
const MAX_INT64 = 2n ** 63n - 1n;

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The 8 little-endian bytes of a u64 timestamp (base64) as a bigint. */
export function decodeTs(text) {
  return new DataView(base64ToBytes(text).buffer).getBigUint64(0, true);
}

/** A u64 timestamp (bigint) as base64 of its 8 little-endian bytes. */
export function encodeTs(ts) {
  const view = new DataView(new ArrayBuffer(8));
  view.setBigUint64(0, ts, true);
  return bytesToBase64(new Uint8Array(view.buffer));
}

function isSpecialFloat(n) {
  return Number.isNaN(n) || !Number.isFinite(n) || Object.is(n, -0);
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function where(path) {
  return path === "" ? "the value" : path;
}

/** A Convex value as JSON for the wire; throws a TypeError naming the path of a bad value. */
export function convexToJson(value, path = "") {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") {
    if (!isSpecialFloat(value)) return value;
    const view = new DataView(new ArrayBuffer(8));
    view.setFloat64(0, value, true);
    return { $float: bytesToBase64(new Uint8Array(view.buffer)) };
  }
  if (typeof value === "bigint") {
    if (value < MIN_INT64 || value > MAX_INT64) {
      throw new TypeError(`${where(path)}: bigint ${value} does not fit in a 64-bit signed integer`);
    }
    const view = new DataView(new ArrayBuffer(8));
    view.setBigInt64(0, value, true);
    return { $integer: bytesToBase64(new Uint8Array(view.buffer)) };
  }
  if (value instanceof ArrayBuffer) return { $bytes: bytesToBase64(new Uint8Array(value)) };
  if (ArrayBuffer.isView(value)) {
    return { $bytes: bytesToBase64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  }
  if (Array.isArray(value)) {
    return value.map((item, i) => {
      if (item === undefined) {
        throw new TypeError(`${path}[${i}]: undefined is not a Convex value (only an object field may be undefined)`);
      }
      return convexToJson(item, `${path}[${i}]`);
    });
  }
  if (typeof value === "object" && isPlainObject(value)) {
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      const at = path === "" ? key : `${path}.${key}`;
      if (key.startsWith("$")) throw new TypeError(`${at}: field names may not start with "$"`);
      if (item !== undefined) out[key] = convexToJson(item, at);
    }
    return out;
  }
  const kind = value === undefined ? "undefined" : typeof value === "object" ? value.constructor?.name ?? "object" : typeof value;
  throw new TypeError(`${where(path)}: ${kind} is not a Convex value`);
}

/** A value from the wire as JavaScript: $integer -> bigint, $float -> number, $bytes -> ArrayBuffer. */
export function jsonToConvex(json) {
  if (json === null || typeof json !== "object") return json;
  if (Array.isArray(json)) return json.map(jsonToConvex);
  const keys = Object.keys(json);
  if (keys.length === 1) {
    const [key] = keys;
    if (key === "$integer") return new DataView(base64ToBytes(json.$integer).buffer).getBigInt64(0, true);
    if (key === "$float") return new DataView(base64ToBytes(json.$float).buffer).getFloat64(0, true);
    if (key === "$bytes") return base64ToBytes(json.$bytes).buffer;
  }
  const out = {};
  for (const key of keys) out[key] = jsonToConvex(json[key]);
  return out;
}

/** A stable text for a value's wire JSON (object keys sorted): equal values, equal texts. */
export function stableStringify(json) {
  if (json === null || typeof json !== "object") return JSON.stringify(json);
  if (Array.isArray(json)) return `[${json.map(stableStringify).join(",")}]`;
  const keys = Object.keys(json).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableStringify(json[k])}`).join(",")}}`;
}
