// The browser library against tests/data/telemetry-vectors.json (run by tests/test_telemetry_vectors.py):
// node tests/js/telemetry_vectors.mjs VECTORS.json -> prints one JSON line of what it computed.
import { readFileSync } from "node:fs";
import { LatencyHistogram, makeBatch } from "../../web/src/telemetry.js";

const vectors = JSON.parse(readFileSync(process.argv[2], "utf8"));
const hist = (durations) => {
  const h = new LatencyHistogram();
  for (const ns of durations) h.add(ns);
  return h;
};
const v = vectors.histogram;
const whole = hist(v.durations_ns);
const earlier = hist(v.durations_ns.slice(0, v.since_first));
const uppers = {};
for (const i of Object.keys(v.uppers)) uppers[i] = LatencyHistogram.upper(Number(i));
const percentiles = {};
for (const q of Object.keys(v.percentiles_ms)) percentiles[q] = whole.percentile(Number(q));
const batches = vectors.batches.map(({ input }) => makeBatch(input.device_id, input.resource, input.points.map((p) => ({
  model: p.model, channel: p.channel, release: p.release, artifact: p.artifact, provider: p.provider,
  passedOver: p.passed_over, latency: hist(p.durations_ns), errors: p.errors, loadSeconds: p.load_seconds,
})), { startNs: input.start_ns, endNs: input.end_ns }));
console.log(JSON.stringify({
  buckets: v.durations_ns.map((ns) => LatencyHistogram.bucket(ns)), uppers, explicit: whole.toExplicit(),
  since: whole.since(earlier).toExplicit(), empty: new LatencyHistogram().toExplicit(), percentiles_ms: percentiles, batches,
}));
