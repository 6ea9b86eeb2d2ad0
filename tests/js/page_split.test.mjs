// The official npm ConvexClient's paginated queries against pages Ripple splits as Convex does:
// a page stopped by maximumRowsRead comes back SplitRequired with a splitCursor, and the client
// replaces it by two pages (cursor..splitCursor, splitCursor..continueCursor).
// RIPPLE_URL is set by tests/test_pagination_limits.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";

const url = process.env.RIPPLE_URL;
assert.ok(url, "RIPPLE_URL must be set");

function until(predicate, what, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

async function subscriptions() {
  const text = await (await fetch(`${url}/_ripple/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("ripple_subscriptions "));
  return Number(line.split(" ")[1]);
}

test("every SplitRequired page is split in two and each document shows once", async () => {
  const client = new ConvexClient(url, { webSocketConstructor: WebSocket, unsavedChangesWarning: false });
  await client.mutation(anyApi.items.insert_many, { docs: Array.from({ length: 30 }, (_, n) => ({ n })) });
  let latest;
  client.onPaginatedUpdate_experimental(anyApi.pages.rare, { every: 3, rows: 8 }, { initialNumItems: 4 },
    (r) => { latest = r; });
  let pages = 1;
  for (;;) {
    await until(() => latest && (latest.status === "CanLoadMore" || latest.status === "Exhausted"), "a loaded page");
    if (latest.status === "Exhausted") break;
    assert.ok(latest.loadMore(4));
    pages += 1;
    await until(() => latest.status !== "CanLoadMore", "loadMore to start");
  }
  assert.deepEqual(latest.results.map((d) => d.n), Array.from({ length: 10 }, (_, i) => i * 3));
  // 8 rows a page: pages of rows 0-7, 8-15 and 16-23 stop early and are split; 24-29 is the end.
  assert.equal(pages, 4);
  // Each split page became two subscriptions (the server counts them; a split completes, and its
  // page is unsubscribed, once both halves have arrived).
  let count;
  const started = Date.now();
  while ((count = await subscriptions()) !== 3 * 2 + 1 && Date.now() - started < 30000) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.equal(count, 3 * 2 + 1);
  await client.close();
});
