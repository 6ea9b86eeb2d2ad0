// The official npm `convex` clients call an action that runs a filtered vector search
// (ctx.vector_search); the expected result is the brute-force reference the Python side computed
// (tests/test_vector_search.py passes it in RIPPLE_VECTOR_CASE, and RIPPLE_URL: a `ripple dev` of
// tests/apps/search).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");
assert.ok(process.env.RIPPLE_VECTOR_CASE, "RIPPLE_VECTOR_CASE must be set");
const { args, expected, tolerance } = JSON.parse(process.env.RIPPLE_VECTOR_CASE);

function check(results) {
  assert.ok(Array.isArray(results), `not an array: ${JSON.stringify(results)}`);
  assert.equal(results.length, expected.length);
  results.forEach((result, i) => {
    assert.deepEqual(Object.keys(result).sort(), ["_id", "_score"]);
    assert.equal(result._id, expected[i]._id, `result ${i}`);
    assert.ok(Math.abs(result._score - expected[i]._score) <= tolerance,
      `result ${i}: score ${result._score}, expected ${expected[i]._score}`);
  });
}

test("ConvexHttpClient.action: a filtered vector search", async () => {
  check(await new ConvexHttpClient(url).action(anyApi.vectors.search, args));
});

test("ConvexClient.action (websocket): the same search", async () => {
  const client = new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
  try {
    check(await client.action(anyApi.vectors.search, args));
  } finally {
    await client.close();
  }
});
