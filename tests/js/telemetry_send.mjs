// The browser library's Telemetry against a live edgekit serve (run by tests/test_telemetry_vectors.py):
// node tests/js/telemetry_send.mjs SERVER OFFLINE_SERVER ENROLMENT_TOKEN DEVICE_ID RUNS.json
// A session records RUNS.json's runs into its histogram as EdgekitSession.run does; the batch is queued,
// tried offline (it must wait), then sent. Prints { offline, sent, queuedAfter, batch } as JSON.
import { readFileSync } from "node:fs";
import { LatencyHistogram, MemoryStorage, Telemetry, enrol } from "../../web/src/telemetry.js";

const [server, offlineServer, enrolmentToken, deviceId, runsFile] = process.argv.slice(2);
const runs = JSON.parse(readFileSync(runsFile, "utf8"));
const storage = new MemoryStorage();
const telemetry = new Telemetry({ deviceId, resource: runs.resource, storage });
const sessions = runs.points.map((p) => {
  const session = { histogram: new LatencyHistogram(), errorKinds: {}, artifact: { target: p.artifact }, loadMs: p.load_seconds * 1000,
    attempts: [...p.passed_over.split(",").filter(Boolean).map((provider) => ({ provider, ok: false })), { provider: p.provider, ok: true }] };
  telemetry.track(session, { model: p.model, channel: p.channel, release: p.release });
  return [session, p];
});
for (const [session, p] of sessions) {
  for (const ns of p.durations_ns) session.histogram.add(ns);
  Object.assign(session.errorKinds, p.errors);
}
const batch = telemetry.queue();
const offline = await telemetry.flush(offlineServer, "no-token");
const token = await enrol(server, deviceId, enrolmentToken);
const sent = await telemetry.flush(server, token);
const again = telemetry.queue(); // nothing new since: no batch
// Offline long: at most maxQueued batches wait, the oldest dropped first.
const bounded = new Telemetry({ deviceId, resource: runs.resource, storage: new MemoryStorage(), maxQueued: 2 });
const [first] = sessions[0];
bounded.track(first, { model: "digits", channel: "stable", release: 1 });
const ends = [];
for (let i = 0; i < 4; i += 1) {
  first.histogram.add(1000000 + i);
  ends.push(bounded.queue().resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0].timeUnixNano);
}
const kept = bounded.queued().map((b) => b.resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0].timeUnixNano);
console.log(JSON.stringify({ offline, sent, queuedAfter: telemetry.queued().length, again, batch, ends, kept }));
