// Load generator for bench/fanout.py: many raw Convex sync-protocol websocket clients in one Node
// process (the `ws` package, pinned in bench/package.json), plus the writer, so that the time a
// write is sent (t0) and the times the clients receive its Transition (t1) are read from one clock
// (performance.now()) in one process.
//
//   node bench/fanout_clients.mjs '<JSON config>'
//
// Control: JSON lines on stdout ({"event": "ready" | "writing" | "done" | "closed" | "error"});
// commands on stdin, one per line: "go" (run the writes), "close" (close every socket and exit).
// When stdin closes (the orchestrator died) the process exits at once.
//
// Protocol per client: Connect, then ModifyQuerySet 0 -> 1 with one Add per query, then only
// reads: every Transition's startVersion must equal the previous endVersion (counted as a
// violation otherwise); QueryUpdated values are matched against the write in flight.
//
// Subscriptions: client c's k-th query (queryId k, k < subsPerClient) is
//   udfPath(name = prefix + ((c * subsPerClient + k) % distinct))
// so every one of the `distinct` queries has exactly clients * subsPerClient / distinct
// subscribers, and one client's queries are distinct.
//
// Writes: one at a time (closed loop). Write i sets counter prefix + target(i) to a value never
// used before (valueBase + i + 1) with POST writeUrl {path: writePath, args: {name, value}},
// then waits until every subscription of that query has received the new value (or
// writeTimeoutMs), then sleeps gapMs. The first warmupWrites writes are not counted.
//
// With `shared` set (case (d)), every query's args are {name, shared} (each reads the counter
// `shared` too), every write sets counter `shared`, and every subscription must receive it.

import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import readline from 'node:readline';
import WebSocket from 'ws';
import { postJson, summary } from './stats.mjs';

const cfg = JSON.parse(process.argv[2]);
const {
  wsUrl, writeUrl, udfPath, writePath, clients: nClients, subsPerClient, distinct, prefix,
  writes, warmupWrites = 0, gapMs = 20, writeTimeoutMs = 30000, maxWriteSeconds = 1e9,
  valueBase = 0, connectConcurrency = 64, readyTimeoutMs = 300000, shared = null,
} = cfg;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  emit({ event: 'error', message });
  process.exit(1);
}

const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// -- subscriptions ------------------------------------------------------------------------------

const subscribers = new Array(distinct).fill(0); // query index -> number of subscriptions
const clients = [];
const counters = {
  versionViolations: 0, unexpectedUpdates: 0, queryFailed: 0, fatalErrors: 0, socketErrors: 0,
  unexpectedCloses: 0, otherMessages: 0, transitions: 0, firstError: null,
};
let readyCount = 0;
let onAllReady = null;
let current = null; // the write in flight
let closing = false;

function noteError(kind, detail) {
  counters[kind] += 1;
  if (!counters.firstError) counters.firstError = `${kind}: ${detail}`;
}

function handleMessage(cl, data) {
  const t1 = now();
  const msg = JSON.parse(data);
  if (msg.type !== 'Transition') {
    if (msg.type === 'FatalError') noteError('fatalErrors', msg.error);
    else if (msg.type !== 'Ping') counters.otherMessages += 1;
    return;
  }
  counters.transitions += 1;
  const sv = msg.startVersion;
  const ev = msg.endVersion;
  if (sv.querySet !== cl.qs || sv.identity !== cl.id || sv.ts !== cl.ts) {
    noteError('versionViolations', `client ${cl.index}: start ${JSON.stringify(sv)} after end ${cl.qs}/${cl.id}/${cl.ts}`);
  }
  cl.qs = ev.querySet;
  cl.id = ev.identity;
  cl.ts = ev.ts;
  for (const m of msg.modifications) {
    if (m.type !== 'QueryUpdated') {
      if (m.type === 'QueryFailed') noteError('queryFailed', m.errorMessage);
      continue;
    }
    if (!cl.ready) {
      if (!cl.seen[m.queryId]) {
        cl.seen[m.queryId] = true;
        cl.missing -= 1;
        if (cl.missing === 0) {
          cl.ready = true;
          readyCount += 1;
          if (readyCount === nClients && onAllReady) onAllReady();
        }
      }
      continue;
    }
    const w = current;
    if (w !== null && m.value === w.value && (shared !== null || cl.names[m.queryId] === w.name)) {
      w.deliveries.push(t1 - w.t0);
      // endVersion.ts: the commit timestamp (ns since the epoch, taken by PostgreSQL's
      // clock_timestamp() in the writing transaction), against this process's wall clock.
      const tsNs = Buffer.from(ev.ts, 'base64').readBigUInt64LE(0);
      w.commitLags.push(performance.timeOrigin + t1 - Number(tsNs) / 1e6);
      if (w.received === 0) w.first = t1;
      w.received += 1;
      w.last = t1;
      if (w.received === w.expected) w.resolve();
    } else {
      counters.unexpectedUpdates += 1;
    }
  }
}

function openClient(index) {
  return new Promise((resolve) => {
    const names = [];
    for (let k = 0; k < subsPerClient; k++) {
      const q = (index * subsPerClient + k) % distinct;
      names.push(prefix + q);
    }
    const cl = {
      index, names, seen: new Array(subsPerClient).fill(false), missing: subsPerClient, ready: false,
      qs: 0, id: 0, ts: 'AAAAAAAAAAA=', ws: null,
    };
    const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    cl.ws = ws;
    clients.push(cl);
    let settled = false;
    ws.on('open', () => {
      ws.send(JSON.stringify({
        type: 'Connect', sessionId: randomUUID(), connectionCount: 0, lastCloseReason: 'InitialConnect',
        clientTs: Date.now(),
      }));
      ws.send(JSON.stringify({
        type: 'ModifyQuerySet', baseVersion: 0, newVersion: 1,
        modifications: names.map((name, k) => ({
          type: 'Add', queryId: k, udfPath, args: [shared === null ? { name } : { name, shared }],
        })),
      }));
      settled = true;
      resolve();
    });
    ws.on('message', (data) => handleMessage(cl, data));
    ws.on('error', (err) => {
      noteError('socketErrors', `client ${index}: ${err.message}`);
      if (!settled) {
        settled = true;
        resolve();
      }
    });
    ws.on('close', (code) => {
      if (!closing) noteError('unexpectedCloses', `client ${index}: close code ${code}`);
    });
  });
}

async function connectAll() {
  for (let c = 0; c < nClients; c++) {
    for (let k = 0; k < subsPerClient; k++) subscribers[(c * subsPerClient + k) % distinct] += 1;
  }
  const t = now();
  const allReady = new Promise((r) => { onAllReady = r; });
  let next = 0;
  async function worker() {
    while (next < nClients) {
      const i = next++;
      await openClient(i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(connectConcurrency, nClients) }, worker));
  const opened = now() - t;
  const timer = sleep(readyTimeoutMs).then(() => 'timeout');
  if (readyCount < nClients && (await Promise.race([allReady, timer])) === 'timeout') {
    fail(`only ${readyCount}/${nClients} clients received their initial query results within ${readyTimeoutMs} ms`
      + (counters.firstError ? `; first error: ${counters.firstError}` : ''));
  }
  return { opened_ms: opened, ready_ms: now() - t };
}

// -- writes -------------------------------------------------------------------------------------

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const writeTarget = new URL(writeUrl);
const post = (body) => postJson(agent, writeTarget, body);




// A fixed pseudo-random order over the queries (7919 is prime): writes spread over all of them.
function target(i) {
  return distinct === 1 ? 0 : (i * 7919 + 13) % distinct;
}

async function runWrites() {
  const deliveries = [];
  const commitLags = [];
  const commitToLast = []; // per write: the last affected subscription's commit->receive
  const completion = []; // per write: t(last affected subscription received) - t0
  const firstDelivery = [];
  const writeRtt = [];
  let timedOut = 0;
  let missingDeliveries = 0;
  let failedWrites = 0;
  let firstWriteError = null;
  let counted = 0;
  const unexpectedBefore = counters.unexpectedUpdates;
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
  const tStart = now();
  let i = 0;
  for (; i < writes + warmupWrites; i++) {
    if (i >= warmupWrites && now() - tStart > maxWriteSeconds * 1000) break;
    const q = target(i);
    const w = {
      name: shared === null ? prefix + q : shared, value: valueBase + i + 1,
      expected: shared === null ? subscribers[q] : nClients * subsPerClient, received: 0, t0: 0, first: 0, last: 0,
      deliveries: [], commitLags: [], resolve: null,
    };
    const done = new Promise((r) => { w.resolve = r; });
    current = w;
    w.t0 = now();
    let res;
    try {
      res = await post({ path: writePath, args: { name: w.name, value: w.value }, format: 'json' });
    } catch (err) {
      res = { status: 0, body: String(err) };
    }
    const rtt = now() - w.t0;
    if (res.status !== 200 || !res.body.startsWith('{"status":"success"')) {
      failedWrites += 1;
      firstWriteError = firstWriteError || `${res.status} ${res.body.slice(0, 300)}`;
      current = null;
      await sleep(gapMs);
      continue;
    }
    let complete = w.received === w.expected;
    if (!complete) {
      let timer;
      const t = new Promise((r) => { timer = setTimeout(() => r('timeout'), writeTimeoutMs); });
      complete = (await Promise.race([done, t])) !== 'timeout';
      clearTimeout(timer);
    }
    current = null;
    if (i >= warmupWrites) {
      counted += 1;
      writeRtt.push(rtt);
      for (const d of w.deliveries) deliveries.push(d);
      for (const d of w.commitLags) commitLags.push(d);
      if (w.received > 0) firstDelivery.push(w.first - w.t0);
      if (complete) {
        completion.push(w.last - w.t0);
        commitToLast.push(Math.max(...w.commitLags));
      }
      else {
        timedOut += 1;
        missingDeliveries += w.expected - w.received;
      }
    }
    await sleep(gapMs);
  }
  const elapsed = (now() - tStart) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0);
  await sleep(300); // late or stray updates after the last write are counted too
  return {
    writes: counted, warmup_writes: Math.min(i, warmupWrites), elapsed_s: elapsed,
    deliveries_per_write: counted ? deliveries.length / counted : 0,
    send_to_receive_ms: summary(deliveries),
    commit_to_receive_ms: summary(commitLags),
    commit_to_last_ms: summary(commitToLast),
    write_complete_ms: summary(completion),
    first_delivery_ms: summary(firstDelivery),
    write_rtt_ms: summary(writeRtt),
    write_complete_series_ms: completion.map((x) => Math.round(x * 100) / 100),
    timed_out_writes: timedOut, missing_deliveries: missingDeliveries, failed_writes: failedWrites,
    first_write_error: firstWriteError,
    unexpected_updates: counters.unexpectedUpdates - unexpectedBefore,
    node_cpu_pct: (100 * (cpu.user + cpu.system) / 1e6) / elapsed,
    node_event_loop_utilization: elu.utilization,
  };
}

// -- control ------------------------------------------------------------------------------------

async function closeAll() {
  closing = true;
  const closed = clients.map((cl) => new Promise((r) => {
    if (cl.ws.readyState === WebSocket.CLOSED) return r();
    cl.ws.once('close', r);
    cl.ws.close(1000);
  }));
  await Promise.race([Promise.all(closed), sleep(10000)]);
  for (const cl of clients) if (cl.ws.readyState !== WebSocket.CLOSED) cl.ws.terminate();
  agent.destroy();
}

async function main() {
  const ramp = await connectAll();
  emit({ event: 'ready', clients: nClients, subscriptions: nClients * subsPerClient, distinct, ...ramp,
         errors: { ...counters } });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('close', () => { if (!closing) process.exit(2); });
  for await (const line of rl) {
    const cmd = line.trim();
    if (cmd === 'go') {
      emit({ event: 'writing' });
      const result = await runWrites();
      emit({ event: 'done', ...result, errors: { ...counters } });
    } else if (cmd === 'close') {
      await closeAll();
      emit({ event: 'closed' });
      process.exit(0);
    }
  }
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
