// Full-text search through the official npm ConvexClient: a live search subscription follows
// matching writes in relevance order. RIPPLE_URL is set by tests/test_search.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

function waitFor(values, predicate, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const hit = values.find(predicate);
      if (hit !== undefined) return resolve(hit);
      if (Date.now() - started > timeoutMs) return reject(new Error(`no matching value in ${JSON.stringify(values)}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

test("a live search follows inserts, edits and deletes, best match first", async () => {
  const client = new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
  const channel = `npm-${Date.now()}`;
  const values = [];
  const bodies = (v) => v.map((d) => d.body);
  const unsubscribe = client.onUpdate(anyApi.messages.search, { text: "walrus", channel }, (v) => values.push(v));
  try {
    await waitFor(values, (v) => v.length === 0);
    const once = await client.mutation(anyApi.messages.send, { body: "one walrus on a long rock by the sea", channel });
    await waitFor(values, (v) => v.length === 1 && v[0]._id === once);
    const twice = await client.mutation(anyApi.messages.send, { body: "walrus walrus", channel });
    // more occurrences in a shorter text rank first
    await waitFor(values, (v) => JSON.stringify(bodies(v)) === JSON.stringify(["walrus walrus", "one walrus on a long rock by the sea"]));
    await client.mutation(anyApi.messages.edit, { id: twice, body: "seal" });
    await waitFor(values, (v) => v.length === 1 && v[0]._id === once);
    await client.mutation(anyApi.messages.remove, { id: once });
    await waitFor(values, (v, i) => i > 0 && v.length === 0 && values.indexOf(v) === values.length - 1);
  } finally {
    unsubscribe();
    await client.close();
  }
});

test("search by prefix and filter over HTTP", async () => {
  const http = new ConvexHttpClient(url);
  const channel = `npm-http-${Date.now()}`;
  await http.mutation(anyApi.messages.send, { body: "Narwhals are whales", channel });
  await http.mutation(anyApi.messages.send, { body: "narwhal", channel: `${channel}-other` });
  const found = await http.query(anyApi.messages.search, { text: "narwh", channel });
  assert.deepEqual(found.map((d) => d.body), ["Narwhals are whales"]);
  const page = await http.query(anyApi.messages.search_page, { text: "narwhal", paginationOpts: { numItems: 1, cursor: null } });
  assert.equal(page.page.length, 1);
});
