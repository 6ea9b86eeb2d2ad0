// Convex compatibility (issue 10) as the official npm clients see Ripple: ConvexHttpClient and
// the websocket ConvexClient, against `ripple dev` serving tests/apps/compat. RIPPLE_URL is set by
// tests/test_compat_npm.py. Expected values are Convex's documented behaviour.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

// Runs `body` with both clients; the websocket one is closed whatever happens (an open one
// would keep node from exiting).
async function withClients(body) {
  const live = new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
  try {
    await body([new ConvexHttpClient(url), live], live);
  } finally {
    await live.close();
  }
}

// -- 1. numbers --------------------------------------------------------------------------------

test("1: Python ints are float64 numbers, Int64 a bigint, for both clients", async () => {
  await withClients(async (all) => {
    for (const client of all) {
      assert.equal(await client.query(anyApi.compat.count, { xs: [1, 2, 3] }), 3);
      const n = await client.query(anyApi.compat.numbers, {});
      assert.deepEqual(n, { float: 2.5, int: 3, int64: 2n ** 60n, negative: -7, safe: 2 ** 53, zero: 0 });
      // A JavaScript number arrives as a Python float or int (integral): both are float64.
      const kinds = await client.query(anyApi.compat.kinds, { value: { i: 1, f: 1.5, big: 7n } });
      assert.deepEqual(kinds, { big: "Int64", f: "float", i: "int" });
    }
  });
});

// -- 2. ConvexError -------------------------------------------------------------------------------

test("2: a ConvexError from a mutation carries its data to both clients", async () => {
  await withClients(async (all) => {
    for (const client of all) {
      await assert.rejects(client.mutation(anyApi.compat.refuse, { code: "NOPE" }), (error) => {
        assert.ok(error instanceof ConvexError, String(error));
        assert.deepEqual(error.data, { code: "NOPE", retry: 2 });
        return true;
      });
    }
  });
});

// -- 5. field order ---------------------------------------------------------------------------------

test("5: documents and objects come back with fields sorted, system fields included", async () => {
  await withClients(async (all) => {
    for (const client of all) {
      const doc = await client.mutation(anyApi.compat.insert_unordered, {});
      assert.deepEqual(Object.keys(doc), ["Alpha", "_creationTime", "_id", "mid", "zeta"]);
      assert.deepEqual(Object.keys(doc.mid), ["a", "bb", "ccc"]);
      const built = await client.query(anyApi.compat.built, {});
      assert.deepEqual(Object.keys(built), ["Beta", "alpha", "zeta"]);
      assert.deepEqual(await client.query(anyApi.compat.field_names, { value: { b: 1, a: 2, C: 3 } }), ["C", "a", "b"]);
    }
  });
});

// -- 9. scheduler units -----------------------------------------------------------------------------

test("9: run_at with a millisecond timestamp is refused, naming the unit", async () => {
  await withClients(async (all) => {
    for (const client of all) {
      await assert.rejects(client.mutation(anyApi.compat.schedule_at, { when: Date.now() }), /milliseconds/);
    }
  });
});
