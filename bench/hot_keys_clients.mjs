// Load generator for bench/hot_keys.py: `clients` closed-loop HTTP clients over keep-alive
// connections (node:http Agent, one socket per client), each POSTing increments of a counter
// picked at random among `counters` names, for `warmup` s then `duration` s.
// Prints one JSON line: latencies (ms) of the requests that completed inside the window, successes
// per counter over the whole run (warm-up included: the script checks them against the final
// counts), errors, the window's length.
// Usage: node hot_keys_clients.mjs <port> <path> <clients> <prefix> <counters> <warmup s> <duration s> <function>
import http from "node:http";

const [port, path, clients, prefix, counters, warmup, duration, fn] = process.argv.slice(2);
const nClients = Number(clients), nCounters = Number(counters);
const agent = new http.Agent({ keepAlive: true, maxSockets: nClients, maxFreeSockets: nClients });
const names = Array.from({ length: nCounters }, (_, i) => `${prefix}${i}`);
const bodies = names.map((name) => Buffer.from(JSON.stringify({ path: fn, args: { name }, format: "json" })));

const successes = Object.fromEntries(names.map((n) => [n, 0]));
const latencies = [];
const errorSamples = [];
let errors = 0;
const t0 = performance.now();
const windowStart = t0 + Number(warmup) * 1000;
const windowEnd = windowStart + Number(duration) * 1000;

function post(i) {
  return new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port: Number(port), path, method: "POST", agent,
      headers: { "Content-Type": "application/json", "Content-Length": bodies[i].length } }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve([res.statusCode, Buffer.concat(chunks).toString()]));
    });
    req.on("error", (e) => resolve([0, String(e)]));
    req.end(bodies[i]);
  });
}

async function client() {
  while (performance.now() < windowEnd) {
    const i = Math.floor(Math.random() * nCounters);
    const start = performance.now();
    const [status, text] = await post(i);
    const end = performance.now();
    if (status === 200 && text.includes('"status":"success"')) {
      successes[names[i]] += 1;
      if (end >= windowStart && end <= windowEnd) latencies.push(end - start);
    } else {
      errors += 1;
      if (errorSamples.length < 5) errorSamples.push(`${status} ${text.slice(0, 300)}`);
    }
  }
}

await Promise.all(Array.from({ length: nClients }, client));
agent.destroy();
process.stdout.write(JSON.stringify({ latencies_ms: latencies, successes, errors, error_samples: errorSamples,
  window_s: Number(duration) }) + "\n");
