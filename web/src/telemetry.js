// Fleet telemetry from the browser, in the format the Python device and the Kotlin client send
// (edgekit.ota.telemetry: an OTLP/HTTP JSON metrics request; tests/data/telemetry-vectors.json
// holds the answers all three must give).
//
//   import { Telemetry } from "./telemetry.js";
//   const telemetry = new Telemetry({ deviceId, resource: browserDeviceClass("high") });
//   telemetry.track(session, { model: "digits", channel: "stable", release: 3 });
//   ...                                       // session.run() records each run's latency
//   telemetry.queue();                        // what the sessions did since the last batch
//   const token = await enrol(serverUrl, deviceId, enrolmentToken);  // once; keep the token
//   await telemetry.flush(serverUrl, token);  // POST /v1/telemetry; kept when offline
//
// Never inputs or outputs. Batches are bounded (64 data points), queued in localStorage (or the
// storage given) so they survive a reload, and dropped oldest-first past `maxQueued`.

const SUB_BITS = 3;
const SUB = 1 << SUB_BITS;
const OCTAVES = 40;
const LAST = OCTAVES * SUB - 1;
const NEVER = 2 ** 62;
const MAX_POINTS = 64;
const WORD = /[^A-Za-z0-9._:/+-]/g;

function bitLength(n) {
  // Exact for integers below 2**53 (JavaScript's shifts are 32-bit).
  return n < 2 ** 31 ? 32 - Math.clz32(n) : 32 + bitLength(Math.floor(n / 2 ** 32));
}

/** Run durations (ns) in log-linear buckets: edgekit.histogram's layout, bucket for bucket. */
export class LatencyHistogram {
  constructor() {
    this.counts = new Array(OCTAVES * SUB).fill(0);
    this.count = 0;
    this.totalNs = 0;
    this.minNs = NEVER;
    this.maxNs = 0;
  }

  static bucket(ns) {
    if (ns < SUB) return ns > 0 ? ns : 0;
    const octave = bitLength(ns) - SUB_BITS;
    return Math.min(octave * SUB + (Math.floor(ns / 2 ** (octave - 1)) % SUB), LAST);
  }

  static upper(index) {
    if (index < SUB) return index;
    const octave = Math.floor(index / SUB);
    const sub = index % SUB;
    return ((SUB | sub) + 1) * 2 ** (octave - 1) - 1;
  }

  /** Record one run of `ns` nanoseconds (an integer). */
  add(ns) {
    ns = Math.max(0, Math.round(ns));
    this.counts[LatencyHistogram.bucket(ns)] += 1;
    this.count += 1;
    this.totalNs += ns;
    if (ns > this.maxNs) this.maxNs = ns;
    if (ns < this.minNs) this.minNs = ns;
  }

  copy() {
    const out = new LatencyHistogram();
    out.counts = this.counts.slice();
    Object.assign(out, { count: this.count, totalNs: this.totalNs, minNs: this.minNs, maxNs: this.maxNs });
    return out;
  }

  /** The runs recorded after `earlier` (an older copy of this histogram). */
  since(earlier) {
    const out = new LatencyHistogram();
    out.counts = this.counts.map((n, i) => n - earlier.counts[i]);
    out.count = this.count - earlier.count;
    out.totalNs = this.totalNs - earlier.totalNs;
    if (out.count) {
      const lo = out.counts.findIndex((n) => n);
      let hi = out.counts.length - 1;
      while (!out.counts[hi]) hi -= 1;
      out.minNs = Math.max(this.minNs, lo ? LatencyHistogram.upper(lo - 1) + 1 : 0);
      out.maxNs = Math.min(this.maxNs, LatencyHistogram.upper(hi));
    }
    return out;
  }

  /** OpenTelemetry's explicit-bucket form (seconds), trimmed to the buckets that hold runs. */
  toExplicit() {
    const lo = this.counts.findIndex((n) => n);
    if (lo < 0) return { count: 0, sum: 0, bucketCounts: [0], explicitBounds: [] };
    let hi = this.counts.length - 1;
    while (!this.counts[hi]) hi -= 1;
    const bounds = [];
    for (let i = lo; i < hi; i += 1) bounds.push(LatencyHistogram.upper(i) / 1e9);
    return { count: this.count, sum: this.totalNs / 1e9, min: this.minNs / 1e9, max: this.maxNs / 1e9,
      bucketCounts: this.counts.slice(lo, hi + 1), explicitBounds: bounds };
  }

  /** The q-th percentile (0-100) in ms: the upper edge of its bucket, capped at the max. */
  percentile(q) {
    if (!this.count) return null;
    const rank = Math.max(1, Math.floor(q / 100 * this.count + 0.999999));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i += 1) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(LatencyHistogram.upper(i), this.maxNs) / 1e6;
    }
    return this.maxNs / 1e6;
  }
}

function attrs(values) {
  return Object.entries(values).map(([key, v]) => ({
    key, value: typeof v === "bigint" || Number.isInteger(v) ? { intValue: String(v) } : { stringValue: String(v) },
  }));
}

/** Nanoseconds since the epoch as a decimal string (past 2**53, so through BigInt). */
export function nowNs() {
  const ms = performance.timeOrigin + performance.now();
  return String(BigInt(Math.floor(ms)) * 1000000n + BigInt(Math.round((ms % 1) * 1e6)));
}

/**
 * The OTLP JSON request for `points`: [{ model, channel, release, artifact, provider, passedOver,
 * latency: LatencyHistogram, errors: { kind: count }, loadSeconds }]. startNs/endNs: decimal strings.
 */
export function makeBatch(deviceId, resource, points, { startNs, endNs, scopeVersion = "" }) {
  const durations = [];
  const errors = [];
  const loads = [];
  for (const p of points) {
    const base = { "edgekit.model": p.model, "edgekit.channel": p.channel, "edgekit.release": p.release,
      "edgekit.artifact": p.artifact, "edgekit.provider": p.provider };
    if (p.passedOver) base["edgekit.providers.passed_over"] = p.passedOver;
    const times = { startTimeUnixNano: String(startNs), timeUnixNano: String(endNs) };
    const h = p.latency.toExplicit();
    durations.push({ attributes: attrs(base), ...times, count: String(h.count), sum: h.sum,
      ...(h.count ? { min: h.min, max: h.max } : {}), bucketCounts: h.bucketCounts.map(String), explicitBounds: h.explicitBounds });
    for (const kind of Object.keys(p.errors || {}).sort()) {
      if (p.errors[kind]) errors.push({ attributes: attrs({ ...base, "error.type": kind }), ...times, asInt: String(p.errors[kind]) });
    }
    if (p.loadSeconds !== null && p.loadSeconds !== undefined) {
      loads.push({ attributes: attrs(base), timeUnixNano: String(endNs), asDouble: p.loadSeconds });
    }
  }
  const metrics = [{ name: "edgekit.inference.duration", unit: "s", description: "model inference duration",
    histogram: { aggregationTemporality: 1, dataPoints: durations } }];
  if (errors.length) {
    metrics.push({ name: "edgekit.inference.errors", unit: "{error}", description: "failed inferences",
      sum: { aggregationTemporality: 1, isMonotonic: true, dataPoints: errors } });
  }
  if (loads.length) {
    metrics.push({ name: "edgekit.model.load.duration", unit: "s", description: "model load duration", gauge: { dataPoints: loads } });
  }
  return { resourceMetrics: [{ resource: { attributes: attrs({ "device.id": deviceId, ...resource }) },
    scopeMetrics: [{ scope: { name: "edgekit", version: scopeVersion }, metrics }] }] };
}

/** The browser's device class: OS, CPU architecture (where the browser says), accelerator family, the app's tier. */
export function browserDeviceClass(tier = "") {
  const nav = typeof navigator === "undefined" ? {} : navigator;
  const platform = ((nav.userAgentData && nav.userAgentData.platform) || nav.platform || "unknown").toLowerCase();
  const os = /android/.test(platform) ? "android" : /linux/.test(platform) ? "linux" : /win/.test(platform) ? "windows"
    : /mac|iphone|ipad/.test(platform) ? "darwin" : "unknown";
  return { "os.type": os, "host.arch": "unknown", "edgekit.accelerator": nav.gpu ? "webgpu" : "none", "edgekit.device.tier": tier };
}

/** Enrol this device with an operator's enrolment token (`edgekit ota enrolment`); answers the device's
 *  own token, which `flush` sends. The service must be this page's origin or allow it (CORS). */
export async function enrol(serverUrl, deviceId, enrolmentToken) {
  const resp = await fetch(`${String(serverUrl).replace(/\/$/, "")}/v1/devices/enrol`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ device_id: deviceId, enrolment_token: enrolmentToken }),
  });
  if (resp.status !== 201) throw new Error(`the service refused to enrol ${deviceId} (${resp.status}): ${(await resp.text()).slice(0, 300)}`);
  return (await resp.json()).device_token;
}

export class MemoryStorage {
  constructor() { this.items = new Map(); }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
}

/** The sessions of one browser (or app) whose runs go to the service. */
export class Telemetry {
  constructor({ deviceId, resource = browserDeviceClass(), storage = null, key = "edgekit.telemetry.outbox",
    maxQueued = 100, everyMs = 300000 } = {}) {
    if (!deviceId) throw new Error("Telemetry needs the device id this browser enrolled with");
    this.deviceId = deviceId;
    this.resource = resource;
    this.storage = storage || (typeof localStorage !== "undefined" ? localStorage : new MemoryStorage());
    this.key = key;
    this.maxQueued = maxQueued;
    this.everyMs = everyMs;
    this.tracked = [];
    this.lastNs = nowNs();
    this.lastSent = -Infinity;
  }

  /** Report `session`'s runs from now on as release `release` of `model` on `channel`. */
  track(session, { model, channel, release }) {
    this.tracked.push({ session, model, channel, release, sent: session.histogram.copy(),
      sentErrors: { ...session.errorKinds }, loadSent: false });
  }

  due() { return performance.now() - this.lastSent >= this.everyMs; }

  /** The OTLP request for what the tracked sessions did since the last batch, or null. */
  batch() {
    const points = [];
    for (const t of this.tracked.slice(0, MAX_POINTS)) {
      const s = t.session;
      const now = s.histogram.copy();
      const delta = now.since(t.sent);
      const errors = {};
      for (const [kind, n] of Object.entries(s.errorKinds)) if (n > (t.sentErrors[kind] || 0)) errors[kind] = n - (t.sentErrors[kind] || 0);
      if (!delta.count && !Object.keys(errors).length && t.loadSent) continue;
      const ran = (s.attempts || []).filter((a) => a.ok).map((a) => a.provider).pop() || "unknown";
      const passed = (s.attempts || []).filter((a) => !a.ok).map((a) => a.provider).join(",");
      points.push({ model: t.model, channel: t.channel, release: t.release, artifact: s.artifact.target.replace(WORD, "_"),
        provider: ran.replace(WORD, "_"), passedOver: passed, latency: delta, errors,
        loadSeconds: t.loadSent ? null : s.loadMs / 1000 });
      t.sent = now;
      t.sentErrors = { ...s.errorKinds };
      t.loadSent = true;
    }
    const end = nowNs();
    const start = this.lastNs;
    this.lastNs = end;
    this.lastSent = performance.now();
    return points.length ? makeBatch(this.deviceId, this.resource, points, { startNs: start, endNs: end }) : null;
  }

  queued() {
    try { return JSON.parse(this.storage.getItem(this.key) || "[]"); } catch { return []; }
  }

  _save(list) { this.storage.setItem(this.key, JSON.stringify(list.slice(-this.maxQueued))); }

  /** Queue the batch of what happened since the last one (nothing when nothing happened). */
  queue() {
    const b = this.batch();
    if (b) this._save([...this.queued(), b]);
    return b;
  }

  /** POST queued batches to `serverUrl`/v1/telemetry with this device's token. Keeps those the
   *  server cannot take now (offline, 429, 5xx); drops those it refuses for good. Returns { sent, kept, refused }. */
  async flush(serverUrl, deviceToken) {
    const pending = this.queued();
    const left = [];
    const refused = [];
    let sent = 0;
    for (let i = 0; i < pending.length; i += 1) {
      let resp;
      try {
        resp = await fetch(`${String(serverUrl).replace(/\/$/, "")}/v1/telemetry`, {
          method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${deviceToken}` },
          body: JSON.stringify(pending[i]),
        });
      } catch {
        left.push(...pending.slice(i)); // offline: all of them wait
        break;
      }
      if (resp.status === 401 || resp.status === 429 || resp.status >= 500) {
        left.push(...pending.slice(i)); // not now (or a token to renew): they wait, in order
        break;
      }
      if (resp.ok) sent += 1;
      else refused.push(`${resp.status}: ${(await resp.text()).slice(0, 300)}`); // refused for good: dropped
    }
    this._save(left);
    return { sent, kept: left.length, refused };
  }
}
