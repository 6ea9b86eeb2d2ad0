// Idle clients for bench/memory.py: many raw Convex sync-protocol websocket clients in one Node
// process (the `ws` package, pinned in bench/package.json) that connect, subscribe, and then do
// nothing but answer the server's pings (ws does that by itself) until told to close.
//
//   node bench/memory_clients.mjs '<JSON config>'
//
// Config: wsUrl, clients, subsPerClient, distinct, udfPath, prefix, connectConcurrency,
// readyTimeoutMs. Every client opens its socket and sends Connect ("connected" once all have).
// On the command "subscribe", client c sends one ModifyQuerySet 0 -> 1 adding queries
// k < subsPerClient, query k being udfPath({name: prefix + ((c * subsPerClient + k) % distinct)});
// "subscribed" once a Transition has brought every client a first result for each of its queries.
//
// Control: JSON lines on stdout ({"event": "connected" | "subscribed" | "closed" | "error"});
// commands on stdin, one per line: "subscribe", "close" (close every socket and exit). When stdin
// closes, the process exits.

import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import readline from 'node:readline';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2]);
const {
  wsUrl, clients: nClients, subsPerClient = 0, distinct = 1, udfPath = 'counters:get', prefix = 'q',
  connectConcurrency = 64, readyTimeoutMs = 600000,
} = cfg;

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const sockets = [];
const pending = []; // per client: the queryIds without a first result yet
let ready = 0;
let subscribed = 0;
let onAllSubscribed = null;
let errors = 0;
let firstError = null;
let closing = false;
let onAllReady = null;

function noteError(detail) {
  errors += 1;
  if (firstError === null) firstError = detail;
}

function becameReady() {
  ready += 1;
  if (ready === nClients && onAllReady) onAllReady();
}

function openClient(index) {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    sockets.push(ws);
    const missing = new Set();
    pending[index] = missing;
    let settled = false;
    const settle = () => {
      if (!settled) {
        settled = true;
        resolve();
      }
    };
    ws.on('open', () => {
      ws.send(JSON.stringify({
        type: 'Connect', sessionId: randomUUID(), connectionCount: 0, lastCloseReason: 'InitialConnect',
        clientTs: Date.now(),
      }));
      becameReady();
      settle();
    });
    ws.on('message', (data) => {
      if (missing.size === 0) return;
      const msg = JSON.parse(data);
      if (msg.type === 'FatalError') noteError(`client ${index}: FatalError ${msg.error}`);
      if (msg.type !== 'Transition') return;
      for (const m of msg.modifications) {
        if (m.type === 'QueryFailed') noteError(`client ${index}: QueryFailed ${m.errorMessage}`);
        missing.delete(m.queryId);
      }
      if (missing.size === 0) {
        subscribed += 1;
        if (subscribed === nClients && onAllSubscribed) onAllSubscribed();
      }
    });
    ws.on('error', (err) => {
      noteError(`client ${index}: ${err.message}`);
      settle();
    });
    ws.on('close', (code) => {
      if (!closing) noteError(`client ${index}: closed with ${code}`);
      settle();
    });
  });
}

async function connectAll() {
  const t = performance.now();
  const allReady = new Promise((r) => { onAllReady = r; });
  let next = 0;
  async function worker() {
    while (next < nClients) await openClient(next++);
  }
  await Promise.all(Array.from({ length: Math.min(connectConcurrency, nClients) }, worker));
  const opened = performance.now() - t;
  let timer;
  const timeout = new Promise((r) => { timer = setTimeout(() => r('timeout'), readyTimeoutMs); });
  if (ready < nClients && (await Promise.race([allReady, timeout])) === 'timeout') {
    emit({ event: 'error', message: `only ${ready}/${nClients} clients ready within ${readyTimeoutMs} ms`
      + (firstError ? `; first error: ${firstError}` : '') });
    process.exit(1);
  }
  clearTimeout(timer);
  emit({ event: 'connected', opened_ms: opened, ready_ms: performance.now() - t, errors, first_error: firstError });
}

async function subscribeAll() {
  const t = performance.now();
  const allSubscribed = new Promise((r) => { onAllSubscribed = r; });
  for (let c = 0; c < sockets.length; c++) {
    const modifications = [];
    for (let k = 0; k < subsPerClient; k++) {
      pending[c].add(k);
      const name = prefix + ((c * subsPerClient + k) % distinct);
      modifications.push({ type: 'Add', queryId: k, udfPath, args: [{ name }] });
    }
    sockets[c].send(JSON.stringify({ type: 'ModifyQuerySet', baseVersion: 0, newVersion: 1, modifications }));
  }
  let timer;
  const timeout = new Promise((r) => { timer = setTimeout(() => r('timeout'), readyTimeoutMs); });
  if (subsPerClient > 0 && (await Promise.race([allSubscribed, timeout])) === 'timeout') {
    emit({ event: 'error', message: `only ${subscribed}/${nClients} clients got their first results within `
      + `${readyTimeoutMs} ms` + (firstError ? `; first error: ${firstError}` : '') });
    process.exit(1);
  }
  clearTimeout(timer);
  emit({ event: 'subscribed', subscribe_ms: performance.now() - t, errors, first_error: firstError });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (line.trim() === 'subscribe') {
    subscribeAll().catch((err) => {
      emit({ event: 'error', message: String(err && err.stack ? err.stack : err) });
      process.exit(1);
    });
    return;
  }
  if (line.trim() !== 'close') return;
  closing = true;
  for (const ws of sockets) ws.terminate();
  emit({ event: 'closed', errors, first_error: firstError });
  process.exit(0);
});
rl.on('close', () => process.exit(0));

connectAll().catch((err) => {
  emit({ event: 'error', message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
