// Ripple's JS SDK (client_sdk/js) signing in against a real auth provider: tokens minted by the
// test OIDC issuer (tests/oidc_issuer.py, GET /token) for tests/apps/auth. RIPPLE_URL and
// ISSUER_URL are set by tests/test_auth_npm.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RippleClient } from "../../client_sdk/js/ripple.js";

const url = process.env.RIPPLE_URL;
const issuer = process.env.ISSUER_URL;
assert.ok(url && issuer, "RIPPLE_URL and ISSUER_URL must be set");
const quiet = { log() {}, info() {}, warn() {}, debug() {}, error() {} };

async function mint(params) {
  const response = await fetch(`${issuer}/token?${new URLSearchParams(params)}`);
  assert.equal(response.status, 200);
  return await response.text();
}

/** Resolves with the first value pushed to `values` that matches `predicate`. */
function until(values, predicate, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const hit = values.find(predicate);
      if (hit !== undefined) return resolve(hit);
      if (Date.now() - started > timeoutMs) return reject(new Error(`nothing matched in ${JSON.stringify(values)}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

test("the SDK signs in, its live query runs as the user, and short-lived tokens are refreshed", async () => {
  const client = new RippleClient(url, { webSocketConstructor: WebSocket, logger: quiet });
  try {
    let fetches = 0;
    const changes = [];
    const seen = [];
    // 12 s tokens: refreshed before they expire; each carries its fetch number as a claim.
    await client.setAuth(async () => mint({ sub: "dora", ttl: "12", n: String(++fetches) }), (ok) => changes.push(ok));
    const stop = client.onUpdate("me:whoami", {}, (identity) => seen.push(identity));
    const first = await until(seen, (v) => v?.n !== undefined);
    assert.equal(first.tokenIdentifier, `${issuer}|dora`);
    assert.equal(await client.mutation("me:add_note", { text: "from the sdk" }), `${issuer}|dora`);
    assert.deepEqual(await client.query("me:my_notes", {}), ["from the sdk"]);
    await until(seen, (v) => Number(v?.n) >= Number(first.n) + 1);  // a refreshed token, in use
    assert.ok(changes.length >= 1 && changes.every((ok) => ok === true), JSON.stringify(changes));
    stop();
  } finally {
    await client.close();
  }
});

test("a token that expires while connected: the server's AuthError makes the SDK fetch a fresh one", async () => {
  const client = new RippleClient(url, { webSocketConstructor: WebSocket, logger: quiet });
  try {
    let fetches = 0;
    const seen = [];
    // Issued an hour ago and valid 3 s more: no refresh is due from its lifetime, so only the
    // server's AuthError at expiry makes the client fetch again.
    await client.setAuth(async () => {
      const now = Math.floor(Date.now() / 1000);
      return mint({ sub: "erin", iat: String(now - 3600), ttl: "3", n: String(++fetches) });
    });
    client.onUpdate("me:whoami", {}, (identity) => seen.push(identity));
    await until(seen, (v) => v?.n !== undefined);
    const later = await until(seen, (v) => Number(v?.n) >= 2);
    assert.equal(later.subject, "erin");
  } finally {
    await client.close();
  }
});
