// The official npm ConvexClient (websocket sync protocol) against a running Ripple server.
// RIPPLE_URL is set by tests/test_node_live_client.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

function makeClient() {
  return new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
}

function nextValue(values, predicate, timeoutMs = 10000) {
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

test("onUpdate follows mutations; a mutation resolves after its effect is visible", async () => {
  const client = makeClient();
  const name = `node-live-${Date.now()}`;
  const values = [];
  const unsubscribe = client.onUpdate(anyApi.counters.get, { name }, (v) => values.push(v));
  await nextValue(values, (v) => v === 0);
  for (let expected = 1; expected <= 5; expected++) {
    const result = await client.mutation(anyApi.counters.inc, { name });
    assert.equal(result, expected);
    // Convex semantics: the promise resolves only once the subscribed query reflects it.
    assert.equal(values.at(-1), expected, `after mutation ${expected}, onUpdate saw ${JSON.stringify(values)}`);
  }
  assert.deepEqual(values, [0, 1, 2, 3, 4, 5]);
  unsubscribe();
  await client.close();
});

test("writes from another client reach the subscriber", async () => {
  const reader = makeClient();
  const writer = makeClient();
  const name = `node-x-${Date.now()}`;
  const values = [];
  reader.onUpdate(anyApi.counters.get, { name }, (v) => values.push(v));
  await nextValue(values, (v) => v === 0);
  await writer.mutation(anyApi.counters.inc, { name, by: 3 });
  await nextValue(values, (v) => v === 3);
  await reader.close();
  await writer.close();
});

test("queries, actions and errors over the websocket", async () => {
  const client = makeClient();
  const name = `node-q-${Date.now()}`;
  assert.equal(await client.query(anyApi.counters.get, { name }), 0);
  assert.equal(await client.action(anyApi.counters.twice, { name }), 2);
  await assert.rejects(client.mutation(anyApi.counters.fail, { code: "WS" }), (err) => {
    assert.ok(err instanceof ConvexError, `expected ConvexError, got ${err}`);
    assert.deepEqual(err.data, { code: "WS" });
    return true;
  });
  await assert.rejects(client.mutation(anyApi.counters.boom, {}), (err) => !(err instanceof ConvexError));
  assert.equal(await client.query(anyApi.values.add_one, { x: 41n }), 42n);
  await client.close();
});

test("a failing query reports its error to onUpdate's error callback", async () => {
  const client = makeClient();
  const errors = [];
  client.onUpdate(anyApi.counters.get, { name: 5 }, () => {}, (e) => errors.push(e));
  await nextValue(errors, (e) => /name/.test(String(e.message)));
  await client.close();
});

test("paginated subscriptions (onPaginatedUpdate_experimental) stay gap-free", async () => {
  const client = makeClient();
  const ids = await client.mutation(anyApi.items.insert_many, { docs: [...Array(10).keys()].map((n) => ({ n })) });
  const updates = [];
  client.onPaginatedUpdate_experimental(anyApi.items.page, {}, { initialNumItems: 3 }, (r) => updates.push(r));
  const ns = (r) => r.results.map((d) => d.n);
  let latest = await nextValue(updates, (r) => r.status === "CanLoadMore");
  assert.deepEqual(ns(latest), [0, 1, 2]);
  latest.loadMore(3);
  latest = await nextValue(updates, (r) => ns(r).length === 6);
  assert.deepEqual(ns(latest), [0, 1, 2, 3, 4, 5]);
  // Writes around the page boundary: nothing lost, nothing twice.
  await client.mutation(anyApi.items.insert_many, { docs: [{ n: 2 }, { n: -1 }] });
  await client.mutation(anyApi.items.clear_ids, { ids: [ids[2]] });
  latest = await nextValue(updates, (r) => JSON.stringify(ns(r)) === JSON.stringify([-1, 0, 1, 2, 3, 4, 5]));
  const seen = latest.results.map((d) => d._id);
  assert.equal(new Set(seen).size, seen.length);
  latest.loadMore(100);
  latest = await nextValue(updates, (r) => r.status === "Exhausted");
  assert.deepEqual(ns(latest), [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  await client.close();
});
