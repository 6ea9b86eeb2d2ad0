// What the Node load generators share (bench/fanout_clients.mjs, loadgen_clients.mjs,
// workers_clients.mjs): a JSON POST over a keep-alive agent, and the percentile summary every
// one of them reports (nearest-rank percentiles, as bench/common.py computes them).
import http from 'node:http';

// POST `body` as JSON to `target` (a URL) through `agent`; resolves with the status and the
// response text, rejects on a connection error.
export function postJson(agent, target, body) {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = http.request({
      host: target.hostname, port: target.port, path: target.pathname, method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

// n, min, p50, p90, p99 and max of `values` (nulls when there are none).
export function summary(values) {
  const s = Float64Array.from(values).sort();
  const pct = (p) => (s.length ? s[Math.max(1, Math.ceil((p / 100) * s.length)) - 1] : null);
  return {
    n: s.length, min: s.length ? s[0] : null, p50: pct(50), p90: pct(90), p99: pct(99),
    max: s.length ? s[s.length - 1] : null,
  };
}
