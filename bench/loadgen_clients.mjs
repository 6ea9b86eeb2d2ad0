// Load generator for bench/loadgen.py: Convex-shaped scenarios spoken over the Convex sync
// protocol from raw websocket clients (the `ws` package pinned in bench/package.json), one
// scenario per process:
//
//   node bench/loadgen_clients.mjs '<JSON config>'
//
// Output: JSON lines on stdout. {"mark": "start" | "end", "window": name} brackets a measured
// window (the orchestrator samples CPU and RSS there); the last line is {"result": {...}}; a
// failure is {"error": message} and exit code 1.
//
// Each client does what the convex-js client does on the wire: Connect, then ModifyQuerySet
// (Add / Remove, query set versions counted up by one), Mutation with a request id. A query call
// (convex-js `client.query`) is an Add, the Transition carrying its value, then a Remove. A
// mutation completes (convex-js resolves it) on the first Transition after its MutationResponse
// whose endVersion.ts reaches the response's ts; the response time is recorded too. Every
// Transition's startVersion must equal the previous endVersion (counted otherwise).
//
// Scenarios (config.scenario):
//   runfn    config.op 'query' | 'insert': `clients` closed-loop clients for warmupMs + durationMs;
//            query: points:get({key, cacheBreaker}); insert: points:insert({key, value}).
//   observe  one client, `iterations` times, one at a time: 'held' sends messages:insert into a
//            channel its already-subscribed messages:page query reads; 'fresh' (Convex's exact
//            shape) adds a new messages:page query and sends the insert at once, then removes it.
//   fanout   `clients` x `subsPerClient` held messages:page subscriptions (channel and rand of
//            subscription i from config.subChannel / config.subRand), plus one more client that
//            writes. 'closed': one write at a time, the next `gapMs` after every expected
//            subscription received it; 'rate': every `intervalMs`, `perInterval` writes one
//            after another, for `durationMs`, after a `holdMs` window without writes.

import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { summary } from './stats.mjs';

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const counters = { versionViolations: 0, queryFailed: 0, mutationFailed: 0, fatalErrors: 0, socketErrors: 0,
  unexpectedCloses: 0, firstError: null };
let closing = false;

function noteError(kind, detail) {
  counters[kind] += 1;
  if (!counters.firstError) counters.firstError = `${kind}: ${String(detail).slice(0, 300)}`;
}

function tsOf(b64) {
  return Buffer.from(b64, 'base64').readBigUInt64LE(0);
}

class Client {
  constructor(index) {
    this.index = index;
    this.qs = 0; this.qsSent = 0; this.id = 0; this.ts = 'AAAAAAAAAAA='; this.tsNum = 0n;
    this.nextQuery = 0; this.nextRequest = 0;
    this.onUpdate = new Map(); // queryId -> callback(value, t1)
    this.mutations = new Map(); // requestId -> {resolve, t0, tResp, ts}
    this.settling = []; // mutations answered, waiting for a Transition reaching their ts
  }

  open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      this.ws = ws;
      ws.on('open', () => {
        this.send({ type: 'Connect', sessionId: randomUUID(), connectionCount: 0, lastCloseReason: 'InitialConnect',
          clientTs: Date.now() });
        resolve();
      });
      ws.on('message', (data) => this.receive(data));
      ws.on('error', (err) => { noteError('socketErrors', `client ${this.index}: ${err.message}`); reject(err); });
      ws.on('close', (code) => { if (!closing) noteError('unexpectedCloses', `client ${this.index}: ${code}`); });
    });
  }

  send(msg) { this.ws.send(JSON.stringify(msg)); }

  modify(modifications) {
    this.send({ type: 'ModifyQuerySet', baseVersion: this.qsSent, newVersion: this.qsSent + 1, modifications });
    this.qsSent += 1;
  }

  add(udfPath, args, onUpdate) {
    const queryId = this.nextQuery++;
    this.onUpdate.set(queryId, onUpdate);
    this.modify([{ type: 'Add', queryId, udfPath, args: [args] }]);
    return queryId;
  }

  remove(queryId) {
    this.onUpdate.delete(queryId);
    this.modify([{ type: 'Remove', queryId }]);
  }

  // Resolves {response: ms, completed: ms} from t0 (completed: as convex-js resolves it).
  mutate(udfPath, args) {
    const requestId = this.nextRequest++;
    return new Promise((resolve) => {
      this.mutations.set(requestId, { resolve, t0: now(), tResp: 0, ts: 0n });
      this.send({ type: 'Mutation', requestId, udfPath, args: [args] });
    });
  }

  receive(data) {
    const t1 = now();
    const msg = JSON.parse(data);
    if (msg.type === 'Transition') this.transition(msg, t1);
    else if (msg.type === 'MutationResponse') {
      const m = this.mutations.get(msg.requestId);
      this.mutations.delete(msg.requestId);
      if (!msg.success) {
        noteError('mutationFailed', msg.result);
        m.resolve(null);
        return;
      }
      m.tResp = t1;
      m.ts = tsOf(msg.ts);
      this.settling.push(m);
    } else if (msg.type === 'FatalError') noteError('fatalErrors', msg.error);
  }

  transition(msg, t1) {
    const sv = msg.startVersion;
    const ev = msg.endVersion;
    if (sv.querySet !== this.qs || sv.identity !== this.id || sv.ts !== this.ts) {
      noteError('versionViolations', `client ${this.index}: start ${JSON.stringify(sv)} after ${this.qs}/${this.ts}`);
    }
    this.qs = ev.querySet; this.id = ev.identity; this.ts = ev.ts; this.tsNum = tsOf(ev.ts);
    for (const m of msg.modifications) {
      if (m.type === 'QueryUpdated') {
        const cb = this.onUpdate.get(m.queryId);
        if (cb) cb(m.value, t1);
      } else if (m.type === 'QueryFailed') noteError('queryFailed', m.errorMessage);
    }
    if (this.settling.length) {
      const still = [];
      for (const m of this.settling) {
        if (m.ts <= this.tsNum) m.resolve({ response: m.tResp - m.t0, completed: t1 - m.t0 });
        else still.push(m);
      }
      this.settling = still;
    }
  }
}


async function openClients(n, firstIndex = 0) {
  const out = [];
  for (let i = 0; i < n; i += 64) {
    const batch = [];
    for (let k = i; k < Math.min(n, i + 64); k++) {
      const cl = new Client(firstIndex + k);
      out.push(cl);
      batch.push(cl.open(cfg.wsUrl));
    }
    await Promise.all(batch);
  }
  return out;
}

const pad6 = (i) => String(i).padStart(6, '0');
const randInt = () => Math.floor(Math.random() * 1e9);

// -- RunFunction -------------------------------------------------------------------------------

async function runfn() {
  const clients = await openClients(cfg.clients);
  const latencies = []; const responses = [];
  let errors = 0;
  const tStart = now();
  const measureStart = tStart + cfg.warmupMs;
  const measureEnd = measureStart + cfg.durationMs;
  const marks = (async () => {
    await sleep(cfg.warmupMs); emit({ mark: 'start', window: 'run' });
    await sleep(measureEnd - now()); emit({ mark: 'end', window: 'run' });
  })();
  const elu0 = performance.eventLoopUtilization();
  let eluStart = null;
  const finished = [];
  async function loop(cl) {
    for (let j = 0; ; j++) {
      const t0 = now();
      if (t0 >= measureEnd) break;
      if (t0 >= measureStart && eluStart === null) eluStart = performance.eventLoopUtilization();
      let ok;
      if (cfg.op === 'query') {
        const key = `k${pad6((cl.index * 7919 + j * 104729) % cfg.seed)}`;
        const value = await new Promise((resolve) => {
          const q = cl.add('points:get', { key, cacheBreaker: randInt() }, (v) => { cl.remove(q); resolve(v); });
        });
        ok = value !== null && value.key === key;
        if (ok && t0 >= measureStart) latencies.push(now() - t0);
      } else {
        const r = await cl.mutate('points:insert', { key: `ws-${cfg.runId}-${cl.index}-${j}`, value: j });
        ok = r !== null;
        if (ok && t0 >= measureStart) { latencies.push(r.completed); responses.push(r.response); }
      }
      if (!ok) errors += 1;
    }
    finished.push(now());
  }
  await Promise.all(clients.map(loop));
  await marks;
  const elapsed = (Math.max(...finished) - measureStart) / 1000;
  const elu = performance.eventLoopUtilization(eluStart || elu0);
  return { op: cfg.op, clients: cfg.clients, ops: latencies.length, elapsed_s: elapsed,
    ops_per_s: latencies.length / elapsed, latency_ms: summary(latencies),
    ...(cfg.op === 'insert' ? { response_ms: summary(responses) } : {}), errors,
    node_event_loop_utilization: elu.utilization, allClients: clients };
}

// -- ObserveInsert -----------------------------------------------------------------------------

function containsRand(value, rand) {
  return Array.isArray(value) && value.some((doc) => doc && doc.rand === rand);
}

async function observe() {
  const [cl] = await openClients(1);
  const channel = cfg.channel;
  let rand = 1e9; // decreasing: a new message sorts before every earlier one, inside the read range
  const observed = []; const completed = []; const responses = [];
  let timeouts = 0;
  let waiter = null; // {rand, resolve}
  const onUpdate = (value, t1) => { if (waiter && containsRand(value, waiter.rand)) waiter.resolve(t1); };
  if (cfg.variant === 'held') {
    await new Promise((resolve) => cl.add('messages:page', { channel, rand: 0, limit: 10 }, resolve));
    cl.onUpdate.set(0, onUpdate);
  }
  emit({ mark: 'start', window: 'run' });
  for (let i = 0; i < cfg.warmup + cfg.iterations; i++) {
    rand -= 1;
    const seen = new Promise((resolve) => { waiter = { rand, resolve }; });
    const t0 = now();
    let q = null;
    if (cfg.variant === 'fresh') q = cl.add('messages:page', { channel, rand, limit: 10 }, onUpdate);
    const mut = cl.mutate('messages:insert', { channel, rand, n: 1 });
    let timer;
    const t1 = await Promise.race([seen, new Promise((r) => { timer = setTimeout(() => r(null), cfg.timeoutMs); })]);
    clearTimeout(timer);
    const r = await mut;
    if (q !== null) cl.remove(q);
    if (i < cfg.warmup) continue;
    if (t1 === null) timeouts += 1; else observed.push(t1 - t0);
    if (r) { completed.push(r.completed); responses.push(r.response); }
  }
  emit({ mark: 'end', window: 'run' });
  return { variant: cfg.variant, iterations: cfg.iterations, observed_ms: summary(observed),
    mutation_completed_ms: summary(completed), mutation_response_ms: summary(responses), timeouts, allClients: [cl] };
}

// -- ManyIntersections / HoldSubscriptions ------------------------------------------------------

async function fanout() {
  const clients = await openClients(cfg.clients);
  const [writer] = await openClients(1, cfg.clients);
  const inflight = new Map(); // rand -> write in flight
  const byChannel = new Map(); // channel -> number of subscriptions reading it
  let ready = 0;
  let total = 0;
  let allReady;
  const readyP = new Promise((r) => { allReady = r; });
  let unexpected = 0;

  function subscribe(cl, queryId, channel, rand) {
    byChannel.set(channel, (byChannel.get(channel) || 0) + 1);
    total += 1;
    let first = true;
    const seenWrites = new Set();
    cl.onUpdate.set(queryId, (value, t1) => {
      if (first) { first = false; if (++ready === total) allReady(); return; }
      let hit = false;
      for (const doc of value) {
        const w = inflight.get(doc.rand);
        if (!w || seenWrites.has(doc.rand)) continue;
        seenWrites.add(doc.rand);
        hit = true;
        if (w.received === 0) w.first = t1;
        w.deliveries.push(t1 - w.t0);
        if (++w.received === w.expected) { w.last = t1; w.resolve(); }
      }
      if (!hit) unexpected += 1;
    });
    return { type: 'Add', queryId, udfPath: 'messages:page', args: [{ channel, rand, limit: 10 }] };
  }

  const tOpen = now();
  for (const cl of clients) {
    const mods = [];
    for (let k = 0; k < cfg.subsPerClient; k++) {
      const i = cl.index * cfg.subsPerClient + k;
      mods.push(subscribe(cl, k, cfg.subChannel.replace('{i}', String(i)), cfg.subRand === 'index' ? i : 0));
    }
    cl.nextQuery = cfg.subsPerClient;
    cl.modify(mods);
  }
  const held = total;
  if (cfg.observerChannel) { // Convex's shape: the writing client also watches the written channel
    writer.nextQuery = 1;
    writer.modify([subscribe(writer, 0, cfg.observerChannel, 0)]);
  }
  if (total > 0) await Promise.race([readyP, sleep(cfg.readyTimeoutMs)]);
  if (ready < total) throw new Error(`only ${ready}/${total} subscriptions got their first result`);
  const readyMs = now() - tOpen;
  await sleep(1000);

  let rand = 1e9; // decreasing: a new message sorts before every earlier one, inside the read ranges
  const deliveries = []; const complete = []; const firsts = []; const completed = []; const responses = [];
  let timedOut = 0; let missing = 0; let writes = 0;
  // Sends one write; resolves once it is answered, with a promise for its deliveries.
  async function write(channel, counted) {
    rand -= 1;
    const w = { rand, expected: byChannel.get(channel) || 0, received: 0, deliveries: [], t0: now(), last: 0,
      resolve: null };
    const done = new Promise((r) => { w.resolve = r; });
    inflight.set(rand, w);
    const r = await writer.mutate('messages:insert', { channel, rand, n: cfg.docsPerWrite });
    const delivered = (async () => {
      let timer;
      const ok = w.received === w.expected
        || (await Promise.race([done, new Promise((res) => { timer = setTimeout(() => res('timeout'), cfg.timeoutMs); })])) !== 'timeout';
      clearTimeout(timer);
      inflight.delete(w.rand);
      if (!counted) return;
      writes += 1;
      if (r) { completed.push(r.completed); responses.push(r.response); }
      deliveries.push(...w.deliveries);
      if (w.received > 0) firsts.push(w.first - w.t0);
      if (ok) complete.push(w.last - w.t0); else { timedOut += 1; missing += w.expected - w.received; }
    })();
    return delivered;
  }
  const elu0 = performance.eventLoopUtilization();
  if (cfg.mode === 'closed') {
    emit({ mark: 'start', window: 'writes' });
    for (let i = 0; i < cfg.warmup + cfg.writes; i++) {
      await (await write(cfg.writeChannel, i >= cfg.warmup));
      await sleep(cfg.gapMs);
    }
    emit({ mark: 'end', window: 'writes' });
  } else {
    emit({ mark: 'start', window: 'hold' });
    await sleep(cfg.holdMs);
    emit({ mark: 'end', window: 'hold' });
    emit({ mark: 'start', window: 'writes' });
    const t0 = now();
    const pending = [];
    for (let tick = 1; tick * cfg.intervalMs <= cfg.durationMs; tick++) {
      await sleep(Math.max(0, t0 + tick * cfg.intervalMs - now()));
      pending.push((async () => { // as Convex: the interval's writes one after another
        for (let j = 0; j < cfg.perInterval; j++) {
          const i = Math.floor(Math.random() * held);
          pending.push(await write(cfg.subChannel.replace('{i}', String(i)), true));
        }
      })());
    }
    for (let k = 0; k < pending.length; k++) await pending[k];
    emit({ mark: 'end', window: 'writes' });
  }
  const elu = performance.eventLoopUtilization(elu0);
  return { subscriptions: total, clients: cfg.clients, ready_s: readyMs / 1000, writes,
    write_complete_ms: summary(complete), first_delivery_ms: summary(firsts), delivery_ms: summary(deliveries),
    mutation_completed_ms: summary(completed), mutation_response_ms: summary(responses),
    deliveries_per_write: writes ? deliveries.length / writes : 0, timed_out_writes: timedOut,
    missing_deliveries: missing, unexpected_updates: unexpected,
    node_event_loop_utilization: elu.utilization, allClients: [...clients, writer] };
}

async function main() {
  const run = { runfn, observe, fanout }[cfg.scenario];
  const result = await run();
  const all = result.allClients;
  delete result.allClients;
  closing = true;
  for (const cl of all) cl.ws.close(1000);
  await sleep(200);
  for (const cl of all) if (cl.ws.readyState !== WebSocket.CLOSED) cl.ws.terminate();
  emit({ result: { ...result, errors_detail: { ...counters } } });
  process.exit(0);
}

main().catch((err) => { emit({ error: err && err.stack ? err.stack : String(err) }); process.exit(1); });
