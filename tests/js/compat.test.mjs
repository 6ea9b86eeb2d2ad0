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

// -- 3. strict validation ------------------------------------------------------------------------------

test("3: arguments are validated without coercion, numbers are numbers", async () => {
  await withClients(async (all) => {
    const good = { n: 2, f: 2, flag: true, tags: [1, 2] };
    for (const client of all) {
      assert.deepEqual(await client.query(anyApi.compat.typed, good), { f: "float", flag: true, n: "int", tags: [1, 2] });
      for (const [bad, field] of [[{ n: "5" }, "`n`"], [{ tags: ["1"] }, "`tags[0]`"], [{ flag: 1 }, "`flag`"], [{ n: 2.5 }, "`n`"]]) {
        await assert.rejects(client.query(anyApi.compat.typed, { ...good, ...bad }), (error) => {
          assert.ok(String(error).includes(field) && String(error).includes("invalid arguments for compat:typed"), String(error));
          return true;
        });
      }
    }
  });
});

// -- 4. optional means absent ------------------------------------------------------------------------------

test("4: optional fields are absent, patch removes them, undefined sorts before null", async () => {
  await withClients(async (all) => {
    let n = 0;
    for (const client of all) {
      const prefix = `n4${n++}-`;
      assert.ok(!("note" in (await client.mutation(anyApi.compat.add_note, { title: prefix + "a" }))));
      assert.equal((await client.mutation(anyApi.compat.add_null_note, { title: prefix + "b" })).note, null);
      const noted = await client.mutation(anyApi.compat.add_note, { title: prefix + "c", note: "x" });
      assert.ok(!("note" in (await client.mutation(anyApi.compat.clear_note, { id: noted._id }))));
      assert.deepEqual(await client.query(anyApi.compat.notes_by_note, { prefix }), {
        absent: [prefix + "a", prefix + "c"], all: [prefix + "a", prefix + "c", prefix + "b"], null: [prefix + "b"],
      });
    }
  });
});

// -- 6. typed ids --------------------------------------------------------------------------------------------

test("6: an Id of another table is refused, naming the field", async () => {
  await withClients(async (all) => {
    const note = await all[0].mutation(anyApi.compat.add_note, { title: "n6" });
    const other = await all[0].mutation(anyApi.compat.loose_id, {});
    for (const client of all) {
      assert.equal(await client.query(anyApi.compat.note_title, { id: note._id }), "n6");
      await assert.rejects(client.query(anyApi.compat.note_title, { id: other }),
        /`id`: Found an id of table loose, which does not match table notes/);
    }
  });
});

// -- 7. nested calls --------------------------------------------------------------------------------------------

test("7: a caught nested mutation rolls back alone, a nested query sees uncommitted writes", async () => {
  await withClients(async (all) => {
    let n = 0;
    for (const client of all) {
      const prefix = `n7${n++}`;
      assert.deepEqual(await client.mutation(anyApi.compat.outer, { prefix }),
        { caught: { nested: prefix + "-inner" }, seen: [prefix + "-outer"] });
      assert.deepEqual(await client.query(anyApi.compat.names, { prefix }), [prefix + "-outer"]);
    }
  });
});

// -- 8. limits ------------------------------------------------------------------------------------------------------

test("8: a document over 1 MiB is refused before it is stored", async () => {
  await withClients(async (all) => {
    for (const client of all) {
      await assert.rejects(client.mutation(anyApi.compat.store_text, { n: 2_000_000 }), /at most 1\.00 MiB \(1048576 bytes\)/);
      assert.equal(typeof (await client.mutation(anyApi.compat.store_text, { n: 1000 })), "string");
    }
  });
});

// -- 10. log levels ------------------------------------------------------------------------------------------------

test("10: print and logging reach the clients as [LOG], [INFO], [WARN], [ERROR]", async () => {
  const printed = [];
  const original = console.log;
  console.log = (...args) => printed.push(args.map(String).join(" "));
  try {
    await withClients(async (all) => {
      for (const client of all) await client.query(anyApi.compat.chatty, {});
    });
  } finally {
    console.log = original;
  }
  const text = printed.join("\n");
  for (const [level, line] of [["LOG", "printed {'k': 1} 2.5"], ["INFO", "info line"], ["WARN", "careful"], ["ERROR", "broken"]]) {
    const count = printed.filter((p) => p.includes(`(compat:chatty)] [${level}]`) && p.endsWith(line)).length;
    assert.equal(count, 2, `[${level}] ${line} in:\n${text}`);
  }
});

// -- 11. split pages -------------------------------------------------------------------------------------------------

test("11: a page stops at maximumRowsRead with pageStatus SplitRequired and a splitCursor", async () => {
  await withClients(async (all) => {
    await all[0].mutation(anyApi.compat.fill, { prefix: "n11", n: 12 });
    for (const client of all) {
      const opts = { numItems: 10, cursor: null, maximumRowsRead: 3 };
      const page = await client.query(anyApi.compat.page, { paginationOpts: opts });
      assert.equal(page.page.length, 3);
      assert.equal(page.isDone, false);
      assert.equal(page.pageStatus, "SplitRequired");
      assert.equal(typeof page.splitCursor, "string");
    }
  });
});

// -- 12. a mutation's response before its writes ----------------------------------------------------------------------

test("12: an optimistic +1 never makes a counter go backwards (100 mutations, another writer alongside)", async () => {
  await withClients(async (_all, live) => {
    const writer = new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
    const name = `n12-${Date.now()}`;
    const seen = [];
    const unsubscribe = live.onUpdate(anyApi.compat.value, { name }, (v) => seen.push(v));
    const plusOne = {
      optimisticUpdate: (store, args) => {
        const current = store.getQuery(anyApi.compat.value, { name: args.name });
        if (current !== undefined) store.setQuery(anyApi.compat.value, { name: args.name }, current + 1);
      },
    };
    try {
      while (seen.length === 0) await new Promise((r) => setTimeout(r, 5));
      let stop = false;
      const writing = (async () => { while (!stop) await writer.mutation(anyApi.compat.bump, { name }); })();
      for (let i = 0; i < 50; i++) await live.mutation(anyApi.compat.bump, { name }, plusOne);
      for (let i = 0; i < 5; i++) {
        await Promise.all(Array.from({ length: 10 }, () => live.mutation(anyApi.compat.bump, { name }, plusOne)));
      }
      stop = true;
      await writing;
      const drops = seen.filter((v, i) => i > 0 && v < seen[i - 1]);
      assert.deepEqual(drops, [], `went backwards over ${seen.length} updates: ${JSON.stringify(seen)}`);
    } finally {
      unsubscribe();
      await writer.close();
    }
  });
});
