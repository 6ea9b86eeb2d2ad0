// The official npm client's optimistic updates against a running Ripple server: a counter with an
// optimistic +1 must never be seen going backwards. The client drops a mutation's optimistic
// update only on a Transition at or past the mutation's ts that arrives after its
// MutationResponse; were a Transition carrying the write to come first, the +1 would count twice
// until the next Transition, and the value would then drop by one.
// RIPPLE_URL is set by tests/test_node_clients.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

const SEQUENTIAL = 100; // awaited one by one
const CONCURRENT = 100; // sent BATCH at a time without waiting
const BATCH = 20;

function makeClient() {
  return new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
}

function waitFor(predicate, what, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 5);
    };
    poll();
  });
}

test("an optimistic +1 never makes the counter go backwards", async () => {
  const client = makeClient();
  const writer = makeClient(); // writes the same counter meanwhile, without optimistic updates
  const name = `node-order-${Date.now()}`;
  const args = { name };
  const seen = [];
  const unsubscribe = client.onUpdate(anyApi.counters.get, args, (v) => seen.push(v));
  await waitFor(() => seen.length > 0, "the first value");

  const plusOne = {
    optimisticUpdate: (store, mutationArgs) => {
      const current = store.getQuery(anyApi.counters.get, { name: mutationArgs.name });
      if (current !== undefined) store.setQuery(anyApi.counters.get, { name: mutationArgs.name }, current + 1);
    },
  };
  let stop = false;
  let written = 0;
  const writing = (async () => {
    while (!stop) {
      await writer.mutation(anyApi.counters.inc, args);
      written++;
    }
  })();

  for (let i = 0; i < SEQUENTIAL; i++) {
    const result = await client.mutation(anyApi.counters.inc, args, plusOne);
    // Resolved: the subscription reflects it (and no optimistic update is left).
    assert.ok(seen.at(-1) >= result, `mutation returned ${result}, the subscription shows ${seen.at(-1)}`);
  }
  for (let sent = 0; sent < CONCURRENT; sent += BATCH) {
    const batch = [];
    for (let i = 0; i < BATCH; i++) batch.push(client.mutation(anyApi.counters.inc, args, plusOne));
    await Promise.all(batch);
  }
  stop = true;
  await writing;
  const total = SEQUENTIAL + CONCURRENT + written;
  await waitFor(() => seen.at(-1) === total, `the value ${total}`);

  const drops = [];
  for (let i = 1; i < seen.length; i++) {
    if (seen[i] < seen[i - 1]) drops.push(`${seen[i - 1]} -> ${seen[i]} (update ${i})`);
  }
  assert.deepEqual(drops, [], `the counter went backwards ${drops.length} times over ${seen.length} updates`);
  assert.ok(written > 0, "the other writer ran alongside");
  unsubscribe();
  await client.close();
  await writer.close();
});
