// The official npm ConvexClient receives a Transition far larger than one websocket message may
// be: its websocket here refuses messages over 6 MiB (as a client's single-message limit does),
// and Ripple sends the ~42 MB Transition as TransitionChunk parts of at most 5,000,000 bytes.
// RIPPLE_URL is set by tests/test_large_results.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

const MAX_MESSAGE = 6 * 1024 * 1024;
const PARTS = 6;
const SIZE = 7_000_000;
const FILL = "\u00e9\u{1f600}x".repeat(1999);

class LimitedWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { maxPayload: MAX_MESSAGE });
  }
}

function until(predicate, what, timeoutMs = 60000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

function check(value, tag, part) {
  assert.equal(value.length, Math.floor(SIZE / 14_000));
  value.forEach((s, i) => assert.equal(s, `${tag}:${part}:${i}:${FILL}`));
}

test("a result of ~42 MB arrives through a websocket that takes at most 6 MiB per message", async () => {
  const client = new ConvexClient(url, { webSocketConstructor: LimitedWebSocket, unsavedChangesWarning: false });
  const name = `large-${Date.now()}`;
  const latest = new Array(PARTS).fill(undefined);
  const errors = [];
  for (let part = 0; part < PARTS; part++) {
    client.onUpdate(anyApi.large.text, { name, size: SIZE, part }, (v) => { latest[part] = v; },
                    (e) => errors.push(e));
  }
  const tagged = (tag) => latest.every((v) => v !== undefined && v[0].startsWith(`${tag}:`));
  await until(() => tagged(0), "the first results");
  latest.forEach((v, part) => check(v, 0, part));
  // A mutation resolves once its effect is visible: after the next chunked Transition, which its
  // MutationResponse may not interrupt.
  assert.equal(await client.mutation(anyApi.counters.inc, { name }), 1);
  assert.ok(tagged(1), "the mutation resolved before its Transition arrived");
  latest.forEach((v, part) => check(v, 1, part));
  assert.deepEqual(errors, []);
  await client.close();
});
