// Ripple's own JS SDK (client_sdk/js/ripple.js) against real `ripple serve` processes running
// tests/apps/jssdk. Run by tests/test_js_sdk.py, which sets RIPPLE_URL (a server it started),
// RIPPLE_ADMIN_KEY (that server's admin key), and RIPPLE_SERVER_ARGV (the command, without
// --port, that starts another server on the same database: the restart test stops and starts
// it itself). Node 20 has no global WebSocket: the `ws` package's is passed in.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import WebSocket from "ws";
import { ConvexError, RippleClient } from "../../client_sdk/js/ripple.js";
import { AuthManager, refreshDelayMs } from "../../client_sdk/js/auth.js";
import { ProtocolViolation, SyncProtocol } from "../../client_sdk/js/protocol.js";
import { encodeTs } from "../../client_sdk/js/values.js";

const url = process.env.RIPPLE_URL;
const adminKey = process.env.RIPPLE_ADMIN_KEY;
assert.ok(url && adminKey, "RIPPLE_URL and RIPPLE_ADMIN_KEY must be set (tests/test_js_sdk.py)");

const quiet = { log() {}, info() {}, warn() {}, debug() {}, error() {} };
const fast = { initialMs: 20, maxMs: 200 };

function connect(target = url, options = {}) {
  return new RippleClient(target, { webSocketConstructor: WebSocket, reconnectDelay: fast, logger: quiet, ...options });
}

const unique = (prefix) => `${prefix}-${Math.random().toString(36).slice(2)}`;

/** Resolves with the first of `values` (an array that callbacks push to) matching `predicate`. */
function until(values, predicate, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const hit = values.find(predicate);
      if (hit !== undefined) return resolve(hit);
      if (Date.now() - started > timeoutMs) return reject(new Error(`nothing matched in ${show(values)}`));
      setTimeout(poll, 5);
    };
    poll();
  });
}

/** Resolves once `predicate()` holds (polled). */
async function eventually(predicate, what, timeoutMs = 10_000) {
  for (const started = Date.now(); !predicate(); ) {
    if (Date.now() - started > timeoutMs) throw new Error(`not reached in time: ${what()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const show = (v) => JSON.stringify(v, (_, x) => (typeof x === "bigint" ? `${x}n` : x));

/** A function's result over the HTTP API, straight from `base` (not through the SDK). */
async function http(base, path, args) {
  const response = await fetch(`${base}/api/query`, { method: "POST", body: JSON.stringify({ path, args }) });
  const body = await response.json();
  assert.equal(body.status, "success", show(body));
  return body.value;
}

// -- live queries ---------------------------------------------------------------------------------

test("a subscription updates on writes from another client; read-your-writes is strict", async () => {
  const room = unique("room");
  const watcher = connect();
  const writer = connect();
  try {
    const seen = [];
    watcher.onUpdate("messages:list", { room }, (messages) => seen.push(messages.map((m) => m.body)));
    await until(seen, (v) => v.length === 0);
    await writer.mutation("messages:send", { room, n: 1, body: "from the writer" });
    await until(seen, (v) => v.includes("from the writer"));

    // The writer's own subscription shows each write by the time the mutation's promise
    // resolves, checked synchronously after the await: no polling, no waiting.
    const own = [];
    writer.onUpdate("messages:list", { room }, (messages) => own.push(messages.map((m) => m.n)));
    await until(own, (v) => v.length === 1);
    for (let n = 2; n <= 6; n++) {
      const id = await writer.mutation("messages:send", { room, n, body: `m${n}` });
      assert.equal(typeof id, "string");
      assert.deepEqual(own.at(-1), [...Array(n).keys()].map((i) => i + 1), `after mutation ${n}: ${show(own)}`);
    }
  } finally {
    await watcher.close();
    await writer.close();
  }
});

test("identical subscriptions share one server query", async () => {
  const name = unique("shared");
  const sent = [];
  class RecordingWebSocket extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  const client = connect(url, { webSocketConstructor: RecordingWebSocket });
  try {
    const a = [];
    const b = [];
    const stopA = client.onUpdate("counters:get", { name }, (v) => a.push(v));
    const stopB = client.onUpdate("counters.js:get", { name }, (v) => b.push(v)); // the same function
    await until(a, (v) => v === 0);
    await until(b, (v) => v === 0);
    const adds = () => sent.filter((m) => m.type === "ModifyQuerySet").flatMap((m) => m.modifications);
    assert.equal(adds().filter((m) => m.type === "Add").length, 1, show(sent));
    // One unsubscribes: the other stays live and nothing is removed on the server.
    stopA();
    await client.mutation("counters:inc", { name });
    assert.equal(b.at(-1), 1);
    assert.equal(a.at(-1), 0);
    assert.equal(adds().filter((m) => m.type === "Remove").length, 0);
    stopB();
    assert.equal(adds().filter((m) => m.type === "Remove").length, 1);
  } finally {
    await client.close();
  }
});

test("a failing query reaches onError with its data, and the subscription recovers", async () => {
  const name = unique("even");
  const client = connect();
  try {
    const values = [];
    const errors = [];
    client.onUpdate("counters:even", { name }, (v) => values.push(v), (e) => errors.push(e));
    await until(values, (v) => v === 0);
    await client.mutation("counters:inc", { name });
    const error = await until(errors, () => true);
    assert.ok(error instanceof ConvexError, String(error));
    assert.deepEqual(error.data, { odd: 1 });
    await client.mutation("counters:inc", { name });
    await until(values, (v) => v === 2);
    // The one-shot query rejects the same way, and an unknown function names itself.
    await client.mutation("counters:inc", { name });
    await assert.rejects(client.query("counters:even", { name }), (e) => e instanceof ConvexError && e.data.odd === 3);
    await assert.rejects(client.query("counters:nope", {}), /counters:nope/);
    // A mutation's application error is a ConvexError too; a bad argument a plain Error.
    await assert.rejects(client.mutation("counters:refuse", { code: "NOPE" }), (e) => e instanceof ConvexError && e.data.code === "NOPE");
    await assert.rejects(client.mutation("counters:inc", {}), (e) => !(e instanceof ConvexError) && /name/.test(e.message));
  } finally {
    await client.close();
  }
});

test("int64, bytes and special floats round trip both ways", async () => {
  const client = connect();
  try {
    const made = await client.query("values:made", {});
    assert.equal(made.big, 2n ** 62n + 1n);
    assert.equal(made.negative, -(2n ** 63n));
    assert.ok(made.bytes instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(made.bytes)], [0, 1, 254, 255]);
    assert.ok(Number.isNaN(made.nan));
    assert.equal(made.inf, -Infinity);
    assert.ok(Object.is(made.negzero, -0));
    assert.equal(made.float, 2.5);

    const value = { big: 2n ** 63n - 1n, small: -5n, bytes: new Uint8Array([9, 8, 7]), nan: NaN, inf: Infinity, negzero: -0, n: 3, text: "é" };
    // What the server received, by Python type: bigint -> Int64, Uint8Array -> bytes, number -> float/int.
    assert.deepEqual(await client.query("values:kinds", { value }), {
      big: "Int64", bytes: "bytes", inf: "float", n: "int", nan: "float", negzero: "float", small: "Int64", text: "str",
    });
    // Stored in a document and read back through a subscription.
    const id = await client.mutation("values:store", { value });
    const back = await client.query("values:stored", { id });
    assert.equal(back.big, 2n ** 63n - 1n);
    assert.equal(back.small, -5n);
    assert.deepEqual([...new Uint8Array(back.bytes)], [9, 8, 7]);
    assert.ok(Number.isNaN(back.nan) && back.inf === Infinity && Object.is(back.negzero, -0));
    assert.equal(back.text, "é");
    // Values that are not Convex values are refused before anything is sent, naming where.
    await assert.rejects(client.mutation("values:store", { value: { when: new Date() } }), /args\.value\.when: Date is not a Convex value/);
    await assert.rejects(client.mutation("values:store", { value: [1, undefined] }), /args\.value\[1\]: undefined/);
    await assert.rejects(client.mutation("values:store", { value: 2n ** 63n }), /64-bit/);
    assert.throws(() => client.onUpdate("values:echo", { value: { $bad: 1 } }, () => {}), /\$bad/);
    // So are calls the server would answer by closing the connection (and a reconnect resend).
    assert.throws(() => client.onUpdate("values:echo", [1], () => {}), /must be an object of named arguments/);
    await assert.rejects(client.mutation("", {}), /a function path is "module:function"/);
    assert.equal(await client.query("values:echo", { value: 1 }), 1, "the connection is still fine");
  } finally {
    await client.close();
  }
});

test("actions run and return; their application errors are ConvexErrors", async () => {
  const name = unique("action");
  const client = connect();
  try {
    const values = [];
    client.onUpdate("counters:get", { name }, (v) => values.push(v));
    assert.equal(await client.action("counters:inc_twice", { name }), 2);
    // An action's response is not ordered with the Transitions carrying its mutations' writes
    // (as on Convex): they arrive, but not necessarily before the action's promise resolves.
    await until(values, (v) => v === 2);
    assert.equal(await client.action("counters:slow", { seconds: 0.01 }), "finished");
    await assert.rejects(client.action("counters:refuse_in_action", { code: "IN_ACTION" }),
      (e) => e instanceof ConvexError && e.data.code === "IN_ACTION");
  } finally {
    await client.close();
  }
});

// -- pagination -------------------------------------------------------------------------------------

test("a paginated subscription: first page, loadMore, a live insert into a loaded page, Exhausted", async () => {
  const room = unique("pages");
  const client = connect();
  try {
    for (const n of [10, 20, 30, 40, 50]) await client.mutation("messages:send", { room, n, body: `m${n}` });
    const updates = [];
    const handle = client.onPaginatedUpdate("messages:page", { room }, { initialNumItems: 2 }, (r) => updates.push(r));
    assert.equal(handle.status, "LoadingFirstPage");
    const ns = (r) => r.results.map((m) => m.n);
    let latest = await until(updates, (r) => r.status === "CanLoadMore");
    assert.deepEqual(ns(latest), [10, 20]);

    assert.equal(latest.loadMore(2), true);
    assert.equal(handle.status, "LoadingMore");
    assert.equal(handle.loadMore(2), false, "no second load while one is loading");
    latest = await until(updates, (r) => r.status === "CanLoadMore" && r.results.length === 4);
    assert.deepEqual(ns(latest), [10, 20, 30, 40]);

    // Into the middle of the first page: it grows, the second page does not shift.
    await client.mutation("messages:send", { room, n: 15, body: "m15" });
    assert.deepEqual(handle.results.map((m) => m.n), [10, 15, 20, 30, 40], "read-your-writes for pages too");
    assert.equal(handle.status, "CanLoadMore");

    handle.loadMore(10);
    latest = await until(updates, (r) => r.status === "Exhausted");
    assert.deepEqual(ns(latest), [10, 15, 20, 30, 40, 50]);
    assert.equal(handle.loadMore(1), false);
    // The last page runs to the end of the range: a new last message joins it.
    await client.mutation("messages:send", { room, n: 60, body: "m60" });
    assert.deepEqual(handle.results.map((m) => m.n), [10, 15, 20, 30, 40, 50, 60]);
    const ids = handle.results.map((m) => m._id);
    assert.equal(new Set(ids).size, ids.length, "no document twice");

    handle.unsubscribe();
    const count = updates.length;
    await client.mutation("messages:send", { room, n: 70, body: "m70" });
    assert.equal(updates.length, count, "no update after unsubscribe");
  } finally {
    await client.close();
  }
});

test("pages the server asks to split are replaced by their two halves, each document once", async () => {
  const room = unique("split");
  const client = connect();
  try {
    for (let n = 1; n <= 12; n++) await client.mutation("messages:send", { room, n, body: `m${n}` });
    const updates = [];
    // Each page stops after reading 4 documents (SplitRequired, with a splitCursor after the 2nd).
    const handle = client.onPaginatedUpdate("messages:capped", { room, rows: 4 }, { initialNumItems: 10 }, (r) => updates.push(r));
    // Two halves, the split page dropped.
    await eventually(() => client.protocol.queries.size === 2 && handle.status === "CanLoadMore", () => show(handle.results));
    assert.deepEqual(handle.results.map((m) => m.n), [1, 2, 3, 4]);
    await eventually(() => {
      handle.loadMore(10); // false while the last page loads
      return handle.status === "Exhausted";
    }, () => `${handle.status}: ${show(handle.results)}`);
    const ns = handle.results.map((m) => m.n);
    assert.deepEqual(ns, [...Array(12).keys()].map((i) => i + 1));
    await client.mutation("messages:send", { room, n: 0, body: "first" });
    assert.deepEqual(handle.results.map((m) => m.n), [0, ...ns], "a split page stays live");
  } finally {
    await client.close();
  }
});

test("cursors the server no longer accepts (InvalidCursor) start the list again from the first page", async () => {
  const room = unique("flip");
  const client = connect();
  try {
    for (const n of [10, 20, 30, 40, 50]) await client.mutation("messages:send", { room, n, body: `m${n}` });
    const errors = [];
    const handle = client.onPaginatedUpdate("messages:flippable", { room }, { initialNumItems: 2 }, () => {}, (e) => errors.push(e));
    await eventually(() => handle.status === "CanLoadMore", () => handle.status);
    handle.loadMore(2);
    await eventually(() => handle.results.length === 4 && handle.status === "CanLoadMore", () => show(handle.results));
    assert.deepEqual(handle.results.map((m) => m.n), [10, 20, 30, 40]);
    // The function now reads the other way: the pages' cursors and journals are refused.
    await client.mutation("counters:inc", { name: `${room}-order` });
    await eventually(() => show(handle.results.map((m) => m.n)) === show([50, 40]) && handle.status === "CanLoadMore",
      () => `${handle.status} ${show(handle.results)}`);
    assert.deepEqual(errors, [], "a reset is not an error");
    assert.equal(client.protocol.queries.size, 1, "the old pages were dropped");
    handle.loadMore(10);
    await eventually(() => handle.status === "Exhausted", () => handle.status);
    assert.deepEqual(handle.results.map((m) => m.n), [50, 40, 30, 20, 10]);
  } finally {
    await client.close();
  }
});

// -- auth -------------------------------------------------------------------------------------------

test("Admin auth with the deployment's admin key reaches internal functions", async () => {
  const name = unique("secret");
  const admin = connect();
  const anonymous = connect();
  try {
    await admin.mutation("counters:inc", { name });
    admin.setAdminAuth(adminKey);
    assert.equal(await admin.query("counters:secret", { name }), 1);
    await assert.rejects(anonymous.query("counters:secret", { name }), /counters:secret/);
  } finally {
    await admin.close();
    await anonymous.close();
  }
});

test("a User token the server refuses: one forced refetch, then onChange(false) and anonymous", async () => {
  const client = connect();
  try {
    const asked = [];
    const changes = [];
    // Well-formed JWTs (unsigned: the server refuses every User token until auth providers exist).
    const jwt = (sub) => [{ alg: "none" }, { sub, iat: 1, exp: 4_000_000_000 }, {}]
      .map((part) => Buffer.from(JSON.stringify(part)).toString("base64url")).join(".");
    const auth = client.setAuth(async ({ forceRefreshToken }) => {
      asked.push(forceRefreshToken);
      return jwt(`user-${asked.length}`);
    }, (isAuthenticated) => changes.push(isAuthenticated));
    // Made while the token is being fetched: held, then run once auth is settled.
    const name = unique("after-auth");
    const result = client.mutation("counters:inc", { name });
    await auth;
    await until(changes, () => true);
    assert.deepEqual(changes, [false]);
    assert.deepEqual(asked, [false, true]);
    assert.equal(await result, 1);
    assert.equal(client.protocol.auth, null);
    assert.equal(await client.query("counters:get", { name }), 1);
  } finally {
    await client.close();
  }
});

test("auth tokens are refreshed before they expire (the manager's policy, driven directly)", async () => {
  // The server cannot confirm a User token yet (no auth providers); this drives AuthManager as
  // the client does, confirming each token as a Transition would.
  const used = [];
  let holds = 0;
  const host = { hold: () => holds++, release: () => holds--, use: (token) => used.push(token) };
  const manager = new AuthManager(host, { leewaySeconds: 10, logger: quiet });
  const now = Math.floor(Date.now() / 1000);
  const jwt = (n) => ["{}", JSON.stringify({ n, iat: now, exp: now + 10.05 }), ""].map((p) => Buffer.from(p).toString("base64url")).join(".");
  const asked = [];
  const changes = [];
  await manager.setConfig(async ({ forceRefreshToken }) => {
    asked.push(forceRefreshToken);
    return jwt(asked.length);
  }, (ok) => changes.push(ok));
  assert.equal(holds, 0);
  assert.deepEqual(used, [jwt(1)]);
  manager.onConfirmed(); // 10.05 s lifetime, 10 s leeway: refreshed after 50 ms
  assert.deepEqual(changes, [true]);
  await until(used, (t) => t === jwt(2), 2000);
  assert.deepEqual(asked, [false, true]);
  manager.onConfirmed();
  await until(used, (t) => t === jwt(3), 2000);
  assert.deepEqual(changes, [true], "onChange fires once per sign-in, not per refresh");
  manager.clear();
  assert.equal(refreshDelayMs({ iat: 0, exp: 3600 }, 10), 3_590_000);
  assert.equal(refreshDelayMs({ sub: "no exp" }, 10), null);
});

// -- reconnects ---------------------------------------------------------------------------------------

/** A server process of our own on `port` (same database and schema as RIPPLE_URL's). */
async function startServer(port) {
  const argv = JSON.parse(process.env.RIPPLE_SERVER_ARGV);
  const child = spawn(argv[0], [...argv.slice(1), "--port", String(port)], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const base = `http://127.0.0.1:${port}`;
  for (const started = Date.now(); Date.now() - started < 30_000; ) {
    if (child.exitCode !== null) throw new Error(`server exited: ${stderr}`);
    try {
      if ((await fetch(`${base}/_ripple/health`)).ok) return { child, base };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`server not healthy: ${stderr}`);
}

function kill(server) {
  return new Promise((resolve) => {
    if (server.child.exitCode !== null) return resolve();
    server.child.once("exit", resolve);
    server.child.kill("SIGKILL"); // a crash, not a goodbye
  });
}

function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

test("server restart: resubscribes, a mutation queued while down runs exactly once, state is reported", async () => {
  const port = await freePort();
  let server = await startServer(port);
  const client = connect(server.base);
  const name = unique("restart");
  try {
    const states = [];
    client.onConnectionChange((s) => states.push(s));
    const values = [];
    client.onUpdate("counters:get", { name }, (v) => values.push(v));
    await until(values, (v) => v === 0);
    assert.equal(client.connectionState().state, "connected");
    const action = client.action("counters:slow", { seconds: 30 }).then(() => "finished", (e) => e); // handled now: it fails early
    await until(states, (s) => s.inflightActions === 1);

    await kill(server);
    await until(states, (s) => s.state === "reconnecting");
    assert.match(String(await action), /Connection lost while action was in flight/);
    const queued = client.mutation("counters:inc", { name });
    assert.equal(client.connectionState().inflightMutations, 1);
    assert.equal(client.connectionState().isWebSocketConnected, false);

    server = await startServer(port);
    assert.equal(await queued, 1);
    assert.equal(values.at(-1), 1, "the resubscribed query shows the queued write");
    assert.equal(await http(server.base, "counters:get", { name }), 1, "the queued mutation ran exactly once");
    assert.equal(await client.mutation("counters:inc", { name }), 2);
    assert.equal(values.at(-1), 2);

    const kinds = states.map((s) => s.state).filter((s, i, all) => s !== all[i - 1]);
    assert.deepEqual(kinds, ["connected", "reconnecting", "connected"], show(states));
    assert.equal(states.at(-1).inflightMutations, 0);
    assert.ok(client.connectionState().connectionCount >= 2);
  } finally {
    await client.close();
    await kill(server);
  }
  assert.equal(client.connectionState().state, "closed");
});

test("a mutation whose response was lost is resent after reconnect and still runs once", async () => {
  // A TCP proxy between client and server that can swallow the server's bytes and cut sockets.
  const target = new URL(url);
  let swallow = false;
  const sockets = new Set();
  const proxy = net.createServer((downstream) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [downstream, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    }
    downstream.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => swallow || downstream.write(d));
    downstream.on("close", () => upstream.destroy());
    upstream.on("close", () => downstream.destroy());
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  const client = connect(`http://127.0.0.1:${proxy.address().port}`);
  const name = unique("lost");
  try {
    const values = [];
    client.onUpdate("counters:get", { name }, (v) => values.push(v));
    await until(values, (v) => v === 0);
    swallow = true;
    const result = client.mutation("counters:inc", { name });
    for (let tries = 0; (await http(url, "counters:get", { name })) !== 1; tries++) {
      assert.ok(tries < 500, "the mutation never committed");
      await new Promise((r) => setTimeout(r, 10));
    }
    for (const s of sockets) s.destroy(); // the response never reached the client
    swallow = false;
    assert.equal(await result, 1, "the resend is answered with the stored result");
    assert.equal(values.at(-1), 1);
    assert.equal(await http(url, "counters:get", { name }), 1, "and it did not run again");
    assert.equal(await client.mutation("counters:inc", { name }), 2);
  } finally {
    await client.close();
    proxy.close();
    for (const s of sockets) s.destroy();
  }
});

test("a server silent for inactivityTimeoutMs is given up on and reconnected to", async () => {
  // The server pings after 15 s of silence; a 300 ms limit makes an idle connection look dead.
  const client = connect(url, { inactivityTimeoutMs: 300 });
  const name = unique("silent");
  try {
    const states = [];
    client.onConnectionChange((s) => states.push(s.state));
    const values = [];
    client.onUpdate("counters:get", { name }, (v) => values.push(v));
    await until(values, (v) => v === 0);
    await until(states, (s) => s === "reconnecting", 3000);
    await eventually(() => client.connectionState().state === "connected", () => show(states), 3000);
    await eventually(() => values.length >= 2, () => show(values)); // resubscribed: delivered again
    assert.equal(await client.mutation("counters:inc", { name }), 1);
    assert.equal(values.at(-1), 1);
  } finally {
    await client.close();
  }
});

// -- the protocol state machine -------------------------------------------------------------------

test("protocol.js message in / message out: reconnect order, settling on the Transition, versions", () => {
  const p = new SyncProtocol("session-1");
  const version = (querySet, identity, ts) => ({ querySet, identity, ts: encodeTs(ts) });
  // Before the socket opens, everything waits for connect().
  assert.equal(p.subscribe("counters:get", { name: "a" }).message, null);
  assert.equal(p.request("Mutation", "counters:inc", { name: "a" }).message, null);
  assert.equal(p.setAuth({ tokenType: "Admin", value: "k" }), null);
  assert.deepEqual(p.connect("InitialConnect").map((m) => m.type), ["Connect", "Authenticate", "ModifyQuerySet", "Mutation"]);
  // The response alone does not settle a mutation; the next Transition reaching its ts does.
  assert.deepEqual(p.receive({ type: "MutationResponse", requestId: 0, success: true, result: 1, ts: encodeTs(10n), logLines: [] }), []);
  const early = p.receive({ type: "Transition", startVersion: version(0, 0, 0n), endVersion: version(1, 1, 9n), modifications: [] });
  assert.deepEqual(early.map((e) => e.type), ["authConfirmed"]);
  const events = p.receive({
    type: "Transition", startVersion: version(1, 1, 9n), endVersion: version(1, 1, 10n),
    modifications: [{ type: "QueryUpdated", queryId: 0, value: { $integer: encodeTs(1n) }, logLines: [], journal: "j1" }],
  });
  assert.deepEqual(events.map((e) => e.type), ["queries", "settled"]);
  assert.equal(p.results.get(0).value, 1n);
  // A Transition that does not start where the last one ended is refused.
  assert.throws(() => p.receive({ type: "Transition", startVersion: version(1, 1, 9n), endVersion: version(1, 1, 11n), modifications: [] }),
    ProtocolViolation);
  // On the next socket the journal goes back with the query; an action in flight fails, one not sent yet waits.
  p.request("Action", "counters:slow", { seconds: 1 });
  const failed = p.disconnect();
  assert.deepEqual(failed.map((e) => e.response.result), ["Connection lost while action was in flight"]);
  p.hold();
  p.request("Action", "counters:slow", { seconds: 1 });
  assert.deepEqual(p.release(), []);
  const again = p.connect("ServerClosed");
  assert.equal(again[0].connectionCount, 1);
  assert.equal(again[0].maxObservedTimestamp, encodeTs(10n));
  assert.equal(again[2].modifications[0].journal, "j1");
  assert.deepEqual(again.slice(3).map((m) => [m.type, m.requestId]), [["Action", 2]]);
});

// -- the module itself ------------------------------------------------------------------------------

test("the SDK uses no Node-only API (it loads as a browser <script type=module>)", () => {
  for (const file of ["ripple.js", "protocol.js", "auth.js", "pagination.js", "values.js"]) {
    const source = readFileSync(new URL(`../../client_sdk/js/${file}`, import.meta.url), "utf8");
    for (const nodeOnly of [/from\s+["']node:/, /\brequire\(/, /\bprocess\./, /\bBuffer\b/, /\bglobal\./]) {
      assert.doesNotMatch(source, nodeOnly, `${file} uses ${nodeOnly}`);
    }
    for (const [, target] of source.matchAll(/from\s+["']([^"']+)["']/g)) {
      assert.match(target, /^\.\/[a-z_]+\.js$/, `${file} imports ${target}: only relative .js files load without a build step`);
    }
  }
  if (globalThis.WebSocket === undefined) {
    assert.throws(() => new RippleClient(url, { logger: quiet }), /webSocketConstructor/); // Node 20
  }
  assert.throws(() => new RippleClient("127.0.0.1:3210", { webSocketConstructor: WebSocket }), /deployment URL/);
});
