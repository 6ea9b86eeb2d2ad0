// The dashboard's HTTP calls with the admin key (`Authorization: Convex <key>`): the admin
// endpoints that have no websocket form (environment variables, health, metrics, the log stream)
// and the function runner, which needs the HTTP API to act as a user and to get log lines back.
// Live data goes through the websocket (RippleClient with setAdminAuth) instead.

const KEY_STORAGE = "ripple.dashboard.adminKey";

/** The admin key of this tab (sessionStorage: gone when the tab closes, never sent elsewhere). */
export const session = {
  get key() {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  set key(value) {
    if (value === null) sessionStorage.removeItem(KEY_STORAGE);
    else sessionStorage.setItem(KEY_STORAGE, value);
  },
};

/** An error answer of the server: `status` is the HTTP status, `code` Ripple's error code. */
export class HttpFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "HttpFailure";
    this.status = status;
    this.code = code;
  }
}

async function failureOf(response, what) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string") return new HttpFailure(response.status, body.code ?? "", body.message);
  } catch {
    // not JSON: the text itself
  }
  return new HttpFailure(response.status, "", `${what} answered ${response.status}${text ? `: ${text.slice(0, 300)}` : ""}`);
}

/** `method path` with the admin key; the JSON answer, or an HttpFailure saying what the server
 * said. `signal` aborts it. */
export async function adminFetch(method, path, { body, key = session.key, signal, identity } = {}) {
  const headers = { Authorization: `Convex ${key}${identity ? `:${encodeIdentity(identity)}` : ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new HttpFailure(0, "NetworkError", `cannot reach the server for ${method} ${path}: ${error.message}`);
  }
  if (!response.ok) throw await failureOf(response, `${method} ${path}`);
  const type = response.headers.get("content-type") ?? "";
  return type.includes("application/json") ? response.json() : response.text();
}

/** Base64 of the identity's JSON (UTF-8), as `Convex <key>:<identity>` carries it. */
function encodeIdentity(identity) {
  const bytes = new TextEncoder().encode(JSON.stringify(identity));
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Is `key` this deployment's admin key? Resolves true, or throws an HttpFailure whose message
 * says why not (wrong key, none configured, server unreachable). */
export async function verifyKey(key) {
  await adminFetch("GET", "/_ripple/data", { key });
  return true;
}

/** Run a function through POST /api/function as the admin or, with `identity`, as that user.
 * `wireArgs` are in the wire encoding (convexToJson), so Int64 and bytes arguments arrive as
 * such; so do the value and errorData of the answer, the server's envelope:
 * {status: "success", value, logLines} or {status: "error", errorMessage, errorData?, logLines}. */
export function runFunction(path, wireArgs, identity) {
  return adminFetch("POST", "/api/function", { body: { path, args: wireArgs, format: "convex_encoded_json" }, identity });
}
