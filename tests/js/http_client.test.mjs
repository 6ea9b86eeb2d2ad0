// Drives the official npm `convex` package's ConvexHttpClient against a running Ripple server.
//
//   RIPPLE_URL=http://127.0.0.1:PORT node --test tests/js/http_client.test.mjs
//
// Normally run by tests/test_node_http_client.py, which starts `ripple dev` with the test app
// tests/apps/basic (so function log lines are returned to the client).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";

const url = process.env.RIPPLE_URL;
if (!url) {
  throw new Error("set RIPPLE_URL to the base URL of a running `ripple dev` server");
}

const api = anyApi;

/** A logger (the ConvexHttpClient `logger` option) that records what the client logs. */
function recordingLogger() {
  const lines = [];
  const record = (level) => (...args) => lines.push({ level, args });
  return {
    lines,
    log: record("info"),
    warn: record("warn"),
    error: record("error"),
    logVerbose: record("debug"),
  };
}

let logger;
let client;

before(() => {
  logger = recordingLogger();
  client = new ConvexHttpClient(url, { logger });
});

after(() => {
  // Nothing the client logged should be its "could not parse" complaint about a log line.
  const unparsed = logger.lines.filter((l) => String(l.args[0]).includes("Could not parse"));
  assert.deepEqual(unparsed, []);
});

function uniqueName(prefix) {
  return `${prefix}-${randomUUID()}`;
}

describe("ConvexHttpClient against Ripple", () => {
  test("the client accepts the server URL", () => {
    assert.equal(client.url, url);
  });

  test("mutation increments, query reads it back", async () => {
    const name = uniqueName("inc");
    assert.equal(await client.query(api.counters.get, { name }), 0);
    assert.equal(await client.mutation(api.counters.inc, { name }), 1);
    assert.equal(await client.mutation(api.counters.inc, { name }), 2);
    assert.equal(await client.query(api.counters.get, { name }), 2);
    // JS numbers are float64 on the wire; a whole number comes back as a JS number.
    assert.equal(await client.mutation(api.counters.inc, { name, by: 3 }), 5);
    assert.equal(typeof (await client.query(api.counters.get, { name })), "number");
  });

  test("string function names work too", async () => {
    const name = uniqueName("str");
    assert.equal(await client.mutation("counters:inc", { name }), 1);
    assert.equal(await client.query("counters:get", { name }), 1);
  });

  test("queued mutations run in order", async () => {
    const name = uniqueName("queue");
    const results = await Promise.all(
      [1, 2, 3, 4, 5].map(() => client.mutation(api.counters.inc, { name })),
    );
    assert.deepEqual(results, [1, 2, 3, 4, 5]);
  });

  test("action runs two mutations", async () => {
    const name = uniqueName("twice");
    assert.equal(await client.action(api.counters.twice, { name }), 2);
    assert.equal(await client.query(api.counters.get, { name }), 2);
    assert.equal(await client.action(api.counters.twice, { name }), 4);
  });

  test("ConvexError from a mutation carries its data", async () => {
    await assert.rejects(client.mutation(api.counters.fail, { code: "NOPE" }), (err) => {
      assert.ok(err instanceof ConvexError, `expected a ConvexError, got ${err}`);
      assert.deepEqual(err.data, { code: "NOPE" });
      return true;
    });
  });

  test("ConvexError raised by a mutation an action runs reaches the client", async () => {
    await assert.rejects(client.action(api.counters.action_fail, {}), (err) => {
      assert.ok(err instanceof ConvexError, `expected a ConvexError, got ${err}`);
      assert.deepEqual(err.data, { code: "FROM_ACTION" });
      return true;
    });
  });

  test("ConvexError rolls back the mutation's writes", async () => {
    const name = uniqueName("rollback");
    await assert.rejects(client.mutation(api.counters.inc_then_fail, { name }), (err) => {
      assert.ok(err instanceof ConvexError);
      assert.equal(err.data, "rolled back");
      return true;
    });
    assert.equal(await client.query(api.counters.get, { name }), 0);
  });

  test("a plain server error is an Error, not a ConvexError", async () => {
    await assert.rejects(client.mutation(api.counters.boom, {}), (err) => {
      assert.ok(err instanceof Error);
      assert.ok(!(err instanceof ConvexError), `did not expect a ConvexError: ${err}`);
      assert.equal(err.data, undefined);
      assert.match(err.message, /ValueError/);
      return true;
    });
  });

  test("an unknown function is rejected with a message naming it", async () => {
    await assert.rejects(client.query(api.nope.missing, {}), (err) => {
      assert.ok(err instanceof Error);
      assert.ok(!(err instanceof ConvexError));
      assert.match(err.message, /nope:missing/);
      return true;
    });
    await assert.rejects(client.mutation("counters:no_such_fn", {}), /counters:no_such_fn/);
    await assert.rejects(client.action(api.nope.missing, {}), /nope:missing/);
  });

  test("calling a function as the wrong kind is rejected", async () => {
    await assert.rejects(client.query(api.counters.inc, { name: uniqueName("kind") }), (err) => {
      assert.ok(err instanceof Error);
      assert.ok(!(err instanceof ConvexError));
      assert.match(err.message, /counters:inc/);
      return true;
    });
  });

  test("BigInt round trip (int64)", async () => {
    const result = await client.query(api.values.add_one, { x: 41n });
    assert.equal(typeof result, "bigint");
    assert.equal(result, 42n);
    assert.equal(await client.query(api.values.add_one, { x: -1n }), 0n);
    assert.equal(
      await client.query(api.values.add_one, { x: 9223372036854775806n }),
      9223372036854775807n,
    );
  });

  test("bytes round trip (ArrayBuffer)", async () => {
    const input = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
    const result = await client.query(api.values.echo, { value: input.buffer });
    assert.ok(result instanceof ArrayBuffer, `expected an ArrayBuffer, got ${result}`);
    assert.deepEqual([...new Uint8Array(result)], [...input]);
    const empty = await client.query(api.values.echo, { value: new ArrayBuffer(0) });
    assert.ok(empty instanceof ArrayBuffer);
    assert.equal(empty.byteLength, 0);
  });

  test("other values round trip through echo", async () => {
    const value = {
      str: "héllo ✓",
      num: 1.5,
      negZero: -0,
      nan: NaN,
      inf: Infinity,
      bool: false,
      nil: null,
      big: -5n,
      list: [1, "two", [3n], { four: 4 }],
      nested: { a: { b: { c: "d" } } },
    };
    const result = await client.query(api.values.echo, { value });
    assert.deepEqual(result, value);
    assert.ok(Object.is(result.negZero, -0), "-0 should survive the round trip");
    assert.ok(Number.isNaN(result.nan));
  });

  test("nested module default export and named export", async () => {
    assert.equal(await client.query(api.nested.deep.mod.default, {}), "default export");
    assert.equal(await client.query("nested/deep/mod", {}), "default export");
    assert.equal(await client.query(api.nested.deep.mod.hello, { who: "node" }), "hello node");
    assert.equal(await client.query(api.nested.deep.mod.hello), "hello world");
  });

  test("function log lines reach the client logger (dev mode)", async () => {
    const chattyLogger = recordingLogger();
    const chattyClient = new ConvexHttpClient(url, { logger: chattyLogger });
    assert.equal(await chattyClient.query(api.counters.chatty, { n: 2 }), "done");
    const messages = chattyLogger.lines.map((l) => [l.level, ...l.args.filter((a) => !String(a).startsWith("color:"))].join(" "));
    assert.deepEqual(messages, [
      "info %c[CONVEX Q(counters:chatty)] [LOG] line 0",
      "info %c[CONVEX Q(counters:chatty)] [LOG] line 1",
      "info %c[CONVEX Q(counters:chatty)] [LOG] no newline at end",
    ]);
  });

  test("consistentQuery reads at one timestamp", { skip: typeof ConvexHttpClient.prototype.consistentQuery !== "function" }, async () => {
    const name = uniqueName("consistent");
    assert.equal(await client.mutation(api.counters.inc, { name }), 1);

    // A client with a recording fetch: it asks /api/query_ts once, on first use, then sends
    // every consistentQuery to /api/query_at_ts with that timestamp.
    const calls = [];
    const recordingFetch = (input, init) => {
      calls.push({ path: new URL(String(input)).pathname, body: init?.body ? JSON.parse(init.body) : undefined });
      return fetch(input, init);
    };
    const snapshot = new ConvexHttpClient(url, { logger: false, fetch: recordingFetch });
    assert.equal(await snapshot.consistentQuery(api.counters.get, { name }), 1);
    assert.equal(await snapshot.consistentQuery(api.nested.deep.mod.default), "default export");

    // A write elsewhere does not disturb the snapshot.
    assert.equal(await client.mutation(api.counters.inc, { name: uniqueName("elsewhere") }), 1);
    assert.equal(await snapshot.consistentQuery(api.counters.get, { name }), 1);

    assert.deepEqual(calls.map((c) => c.path), ["/api/query_ts", "/api/query_at_ts", "/api/query_at_ts", "/api/query_at_ts"]);
    const timestamps = new Set(calls.slice(1).map((c) => c.body.ts));
    assert.equal(timestamps.size, 1, "every consistentQuery uses the same timestamp");
    assert.equal(typeof [...timestamps][0], "string");

    // A write to what the query reads: the snapshot must not show the new value. Convex
    // answers from its history (1); Ripple keeps no history and refuses the old timestamp.
    assert.equal(await client.mutation(api.counters.inc, { name }), 2);
    let afterWrite;
    try {
      afterWrite = await snapshot.consistentQuery(api.counters.get, { name });
    } catch (err) {
      assert.ok(!(err instanceof ConvexError), `did not expect a ConvexError: ${err}`);
      assert.match(err.message, /too old/);
    }
    if (afterWrite !== undefined) {
      assert.equal(afterWrite, 1, "a consistent query must not see writes after its timestamp");
    }

    // A plain query, and a new client's consistentQuery, see the latest value.
    assert.equal(await snapshot.query(api.counters.get, { name }), 2);
    const fresh = new ConvexHttpClient(url, { logger: false });
    assert.equal(await fresh.consistentQuery(api.counters.get, { name }), 2);
  });
});
