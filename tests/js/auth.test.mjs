// Authentication (issue 12) as the official npm `convex` clients see Ripple: ConvexClient.setAuth
// with a token fetcher (confirmed, refreshed, refused), per-identity results, setAdminAuth acting
// as a user, and ConvexHttpClient.setAuth. Tokens come from the test OIDC issuer
// (tests/oidc_issuer.py, GET /token). RIPPLE_URL, ISSUER_URL and ADMIN_KEY are set by
// tests/test_auth_npm.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
const issuer = process.env.ISSUER_URL;
assert.ok(url && issuer, "RIPPLE_URL and ISSUER_URL must be set");

async function mint(params) {
  const response = await fetch(`${issuer}/token?${new URLSearchParams(params)}`);
  assert.equal(response.status, 200);
  return await response.text();
}

function client(options = {}) {
  return new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false, ...options });
}

// Resolves with the first value of `query` for which `predicate` holds; every value is kept in `seen`.
function waitFor(live, query, predicate, seen = [], timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out; saw ${JSON.stringify(seen)}`)), timeoutMs);
    const unsubscribe = live.onUpdate(query, {}, (value) => {
      seen.push(value);
      if (predicate(value)) {
        clearTimeout(timer);
        unsubscribe();
        resolve(value);
      }
    });
  });
}

test("an authenticated query sees the identity; onChange(true)", async () => {
  const live = client();
  try {
    const changes = [];
    live.setAuth(() => mint({ sub: "alice", name: "Alice", email: "alice@example.com" }), (ok) => changes.push(ok));
    const identity = await waitFor(live, anyApi.me.whoami, (v) => v !== null);
    assert.deepEqual(identity, {
      email: "alice@example.com", issuer, name: "Alice", subject: "alice", tokenIdentifier: `${issuer}|alice`,
    });
    assert.deepEqual(changes, [true]);
    assert.equal(await live.mutation(anyApi.me.add_note, { text: "from node" }), `${issuer}|alice`);
  } finally {
    await live.close();
  }
});

test("a short-lived token is refreshed before it expires and the refreshed one is used", async () => {
  const live = client();
  try {
    let fetches = 0;
    const forced = [];
    // 12 s tokens: the client refetches 10 s (its default leeway) before expiry.
    live.setAuth(async ({ forceRefreshToken }) => {
      forced.push(forceRefreshToken);
      return mint({ sub: "bob", ttl: "12", n: String(++fetches) });
    });
    // The first result may already come from a refetched token on a loaded machine.
    const first = Number((await waitFor(live, anyApi.me.whoami, (v) => v?.n !== undefined)).n);
    const refreshed = await waitFor(live, anyApi.me.whoami, (v) => Number(v?.n) >= first + 2);
    assert.equal(refreshed.subject, "bob");
    assert.equal(forced[0], false);
    assert.ok(forced.slice(1).every((f) => f === true), JSON.stringify(forced));
  } finally {
    await live.close();
  }
});

test("a token that expires while connected gets AuthError; the client fetches a fresh one", async () => {
  const live = client();
  try {
    let fetches = 0;
    const changes = [];
    // Issued an hour ago, valid 3 s more: the client schedules no refresh from its lifetime,
    // so it is the server's AuthError at expiry that makes it fetch a new token.
    live.setAuth(async () => {
      const now = Math.floor(Date.now() / 1000);
      fetches += 1;
      return mint({ sub: "carol", iat: String(now - 3600), ttl: "3", n: String(fetches) });
    }, (ok) => changes.push(ok));
    await waitFor(live, anyApi.me.whoami, (v) => v?.n !== undefined);
    const after = await waitFor(live, anyApi.me.whoami, (v) => Number(v?.n) > 2);
    assert.equal(after.subject, "carol");
    assert.ok(!changes.includes(false), JSON.stringify(changes));
  } finally {
    await live.close();
  }
});

test("a bad token fires onChange(false) and the client goes on unauthenticated", async () => {
  const live = client();
  try {
    const changed = new Promise((resolve) => {
      live.setAuth(() => mint({ sub: "mallory", bad: "1" }), (ok) => { if (!ok) resolve(ok); });
    });
    assert.equal(await changed, false);
    assert.equal(await live.query(anyApi.me.whoami, {}), null);
  } finally {
    await live.close();
  }
});

test("two clients with different identities on one query get their own results", async () => {
  const [a, b] = [client(), client()];
  try {
    a.setAuth(() => mint({ sub: "dana" }));
    b.setAuth(() => mint({ sub: "eve" }));
    const seenA = [];
    const seenB = [];
    await Promise.all([waitFor(a, anyApi.me.whoami, (v) => v?.subject === "dana"),
                       waitFor(b, anyApi.me.whoami, (v) => v?.subject === "eve")]);
    const doneA = waitFor(a, anyApi.me.my_notes, (v) => v.length === 2, seenA);
    const doneB = waitFor(b, anyApi.me.my_notes, (v) => v.length === 1, seenB);
    await a.mutation(anyApi.me.add_note, { text: "dana 1" });
    await b.mutation(anyApi.me.add_note, { text: "eve 1" });
    await a.mutation(anyApi.me.add_note, { text: "dana 2" });
    assert.deepEqual(await doneA, ["dana 1", "dana 2"]);
    assert.deepEqual(await doneB, ["eve 1"]);
    assert.ok(seenA.flat().every((t) => t.startsWith("dana")), JSON.stringify(seenA));
    assert.ok(seenB.flat().every((t) => t.startsWith("eve")), JSON.stringify(seenB));
  } finally {
    await a.close();
    await b.close();
  }
});

test("setAdminAuth acting as a user", async () => {
  const live = client();
  try {
    live.setAdminAuth(process.env.ADMIN_KEY, { subject: "u1", issuer: "https://dash.example", tokenIdentifier: "https://dash.example|u1" });
    const identity = await waitFor(live, anyApi.me.whoami, (v) => v !== null);
    assert.equal(identity.tokenIdentifier, "https://dash.example|u1");
  } finally {
    await live.close();
  }
});

test("ConvexHttpClient.setAuth", async () => {
  const http = new ConvexHttpClient(url);
  http.setAuth(await mint({ sub: "frank", role: "editor" }));
  const identity = await http.query(anyApi.me.whoami, {});
  assert.equal(identity.subject, "frank");
  assert.equal(identity.role, "editor");
  http.setAuth(await mint({ sub: "frank", aud: "other" }));
  await assert.rejects(http.query(anyApi.me.whoami, {}), /audience/);
  http.clearAuth();
  assert.equal(await http.query(anyApi.me.whoami, {}), null);
});
