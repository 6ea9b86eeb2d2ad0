// Load generator for bench/workers.py: fan-out THROUGHPUT. Many raw Convex sync-protocol
// websocket clients and several writers in one Node process (the `ws` package, pinned in
// bench/package.json).
//
//   node bench/workers_clients.mjs '<JSON config>'
//
// Control: JSON lines on stdout ({"event": "ready" | "done" | "closed" | "error"}); commands on
// stdin, one per line: "go" (run the writers), "close" (close every socket and exit). When stdin
// closes (the orchestrator died) the process exits at once.
//
// Subscriptions: client c subscribes to one query, udfPath(name = prefix + (c % queries)), so
// each of the `queries` queries has clients / queries subscribers (spread over the server's
// workers by the kernel's accept queue, not by us).
//
// Writers: one per query, all at once, each closed loop with no pause: set counter q to a value
// never used before, wait until every subscriber of q has received it (or writeTimeoutMs), then
// the next write. For `seconds` seconds after `warmupSeconds`; counted: writes completed and
// deliveries (one subscriber receiving a written value) inside the window.

import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import readline from 'node:readline';
import WebSocket from 'ws';
import { postJson as post, summary } from './stats.mjs';

const cfg = JSON.parse(process.argv[2]);
const {
  wsUrl, writeUrl, udfPath, writePath, clients: nClients, queries, prefix, seconds, warmupSeconds = 2,
  writeTimeoutMs = 30000, valueBase = 0, connectConcurrency = 64, readyTimeoutMs = 300000,
} = cfg;

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(message) {
  emit({ event: 'error', message });
  process.exit(1);
}

const subscribers = new Array(queries).fill(0);
const current = new Array(queries).fill(null); // the write in flight per query
const sockets = [];
const counters = { versionViolations: 0, unexpectedUpdates: 0, socketErrors: 0, unexpectedCloses: 0, fatalErrors: 0,
                   firstError: null };
let readyCount = 0;
let onAllReady = null;
let closing = false;
let window = null; // {start, end}: deliveries inside it are counted
let deliveriesInWindow = 0;

function noteError(kind, detail) {
  counters[kind] += 1;
  if (!counters.firstError) counters.firstError = `${kind}: ${detail}`;
}

function handleMessage(cl, data) {
  const t1 = now();
  const msg = JSON.parse(data);
  if (msg.type !== 'Transition') {
    if (msg.type === 'FatalError') noteError('fatalErrors', msg.error);
    return;
  }
  const sv = msg.startVersion;
  if (sv.querySet !== cl.qs || sv.ts !== cl.ts) noteError('versionViolations', `client ${cl.index}`);
  cl.qs = msg.endVersion.querySet;
  cl.ts = msg.endVersion.ts;
  for (const m of msg.modifications) {
    if (m.type !== 'QueryUpdated') continue;
    if (!cl.ready) {
      cl.ready = true;
      readyCount += 1;
      if (readyCount === nClients && onAllReady) onAllReady();
      continue;
    }
    const w = current[cl.q];
    if (w !== null && m.value === w.value) {
      w.received += 1;
      if (window && t1 >= window.start && t1 < window.end) deliveriesInWindow += 1;
      if (w.received === w.expected) {
        w.last = t1;
        w.resolve();
      }
    } else {
      counters.unexpectedUpdates += 1;
    }
  }
}

function openClient(index) {
  return new Promise((resolve) => {
    const q = index % queries;
    const cl = { index, q, ready: false, qs: 0, ts: 'AAAAAAAAAAA=', ws: null };
    const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    cl.ws = ws;
    sockets.push(cl);
    let settled = false;
    const settle = () => { if (!settled) { settled = true; resolve(); } };
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'Connect', sessionId: randomUUID(), connectionCount: 0,
                               lastCloseReason: 'InitialConnect', clientTs: Date.now() }));
      ws.send(JSON.stringify({ type: 'ModifyQuerySet', baseVersion: 0, newVersion: 1,
                               modifications: [{ type: 'Add', queryId: 0, udfPath, args: [{ name: prefix + q }] }] }));
      settle();
    });
    ws.on('message', (data) => handleMessage(cl, data));
    ws.on('error', (err) => { noteError('socketErrors', err.message); settle(); });
    ws.on('close', (code) => { if (!closing) noteError('unexpectedCloses', `close code ${code}`); });
  });
}

async function connectAll() {
  for (let c = 0; c < nClients; c++) subscribers[c % queries] += 1;
  const t = now();
  const allReady = new Promise((r) => { onAllReady = r; });
  let next = 0;
  const worker = async () => { while (next < nClients) await openClient(next++); };
  await Promise.all(Array.from({ length: Math.min(connectConcurrency, nClients) }, worker));
  const timer = sleep(readyTimeoutMs).then(() => 'timeout');
  if (readyCount < nClients && (await Promise.race([allReady, timer])) === 'timeout') {
    fail(`only ${readyCount}/${nClients} clients got their first result` + (counters.firstError ? `; ${counters.firstError}` : ''));
  }
  return { ready_ms: now() - t };
}



async function writer(q, stopAt, out) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const target = new URL(writeUrl);
  let i = 0;
  while (now() < stopAt) {
    i += 1;
    const w = { value: valueBase + q * 1e9 + i, expected: subscribers[q], received: 0, t0: now(), last: 0, resolve: null };
    const done = new Promise((r) => { w.resolve = r; });
    current[q] = w;
    let res;
    try {
      res = await post(agent, target, { path: writePath, args: { name: prefix + q, value: w.value }, format: 'json' });
    } catch (err) {
      res = { status: 0, body: String(err) };
    }
    if (res.status !== 200 || !res.body.startsWith('{"status":"success"')) {
      out.failed += 1;
      out.firstError = out.firstError || `${res.status} ${res.body.slice(0, 300)}`;
      current[q] = null;
      await sleep(50);
      continue;
    }
    let timer;
    const t = new Promise((r) => { timer = setTimeout(() => r('timeout'), writeTimeoutMs); });
    const complete = w.received === w.expected || (await Promise.race([done, t])) !== 'timeout';
    clearTimeout(timer);
    current[q] = null;
    const inWindow = w.t0 >= window.start && w.t0 < window.end;
    if (!complete) out.timedOut += 1;
    else if (inWindow) {
      out.completed += 1;
      out.latencies.push(w.last - w.t0);
    }
  }
  agent.destroy();
}

async function run() {
  const start = now() + warmupSeconds * 1000;
  window = { start, end: start + seconds * 1000 };
  deliveriesInWindow = 0;
  const out = { completed: 0, failed: 0, timedOut: 0, firstError: null, latencies: [] };
  const unexpectedBefore = counters.unexpectedUpdates;
  const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: queries }, (_, q) => writer(q, window.end, out)));
  const cpu = process.cpuUsage(cpu0);
  const elapsed = (now() - window.start + warmupSeconds * 1000) / 1000;
  return {
    seconds, writes_per_s: out.completed / seconds, deliveries_per_s: deliveriesInWindow / seconds,
    write_complete_ms: summary(out.latencies), failed_writes: out.failed, timed_out_writes: out.timedOut,
    first_write_error: out.firstError, unexpected_updates: counters.unexpectedUpdates - unexpectedBefore,
    node_cpu_pct: (100 * (cpu.user + cpu.system) / 1e6) / elapsed,
  };
}

async function closeAll() {
  closing = true;
  const closed = sockets.map((cl) => new Promise((r) => {
    if (cl.ws.readyState === WebSocket.CLOSED) return r();
    cl.ws.once('close', r);
    cl.ws.close(1000);
  }));
  await Promise.race([Promise.all(closed), sleep(10000)]);
  for (const cl of sockets) if (cl.ws.readyState !== WebSocket.CLOSED) cl.ws.terminate();
}

async function main() {
  const ramp = await connectAll();
  emit({ event: 'ready', ...ramp });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('close', () => { if (!closing) process.exit(2); });
  for await (const line of rl) {
    const cmd = line.trim();
    if (cmd === 'go') emit({ event: 'done', ...(await run()), errors: { ...counters } });
    else if (cmd === 'close') {
      await closeAll();
      emit({ event: 'closed' });
      process.exit(0);
    }
  }
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
