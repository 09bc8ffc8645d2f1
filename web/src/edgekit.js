// edgekit for the browser: load an edgekit bundle's web artifact on onnxruntime-web.
//
//   import { open } from "./edgekit.js";
//   const session = await open("bundle/bundle.json", { ortBase: "/ort/" });
//   const { logits } = await session.run({ x: { data: Float32Array, dims: [1, 1, 8, 8] } });
//   session.provider   // "wasm" or "webgpu": what actually runs, never guessed
//   session.attempts   // every provider tried, and why it was passed over
//
// The artifact is chosen from the manifest for this browser, downloaded with progress, checked
// against the manifest's sha256 (Web Crypto) before onnxruntime sees a byte, and cached by hash in
// Cache Storage, so a reload does not download it again and a new release (a new hash) does.
// Every failure is an EdgekitWebError whose message says what happened and what to do.

import { LatencyHistogram } from "./telemetry.js";

export { LatencyHistogram, Telemetry, browserDeviceClass, enrol, makeBatch } from "./telemetry.js";
export const VERSION = "0.1.0";
const SCHEMA = "edgekit.bundle/1";
const CACHE_NAME = "edgekit-artifacts-v1";
const TYPED = {
  float32: Float32Array, float16: Uint16Array, int8: Int8Array, uint8: Uint8Array,
  int32: Int32Array, int64: BigInt64Array, bool: Uint8Array,
};

export class EdgekitWebError extends Error {
  /** @param {string} code a stable, short reason ("integrity", "input", "manifest", ...) */
  constructor(code, message) {
    super(message);
    this.name = "EdgekitWebError";
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------
// The manifest

/** Fetch and check a bundle.json; returns { manifest, base } (base: the URL artifacts are relative to). */
export async function loadManifest(url) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (err) {
    throw new EdgekitWebError("network", `could not fetch the bundle manifest ${url}: ${err.message}; check the URL and that the server runs`);
  }
  if (!response.ok) {
    throw new EdgekitWebError("network", `the bundle manifest ${url} answered HTTP ${response.status}; check the URL (it should end in bundle.json)`);
  }
  let manifest;
  try {
    manifest = await response.json();
  } catch (err) {
    throw new EdgekitWebError("manifest", `${url} is not JSON (${err.message}); point at an edgekit bundle's bundle.json`);
  }
  checkManifest(manifest, url);
  return { manifest, base: new URL(".", new URL(url, location.href)).href };
}

/** Refuse what is not an edgekit bundle manifest this library understands. */
export function checkManifest(manifest, where = "the manifest") {
  if (!manifest || typeof manifest !== "object" || !Array.isArray(manifest.artifacts)) {
    throw new EdgekitWebError("manifest", `${where} is not an edgekit bundle manifest (no "artifacts" list); convert a model with edgekit convert`);
  }
  const schema = String(manifest.schema || "");
  if (schema && schema.split("/")[0] !== SCHEMA.split("/")[0]) {
    throw new EdgekitWebError("manifest", `${where} has schema "${schema}", not ${SCHEMA}`);
  }
  if (schema && Number(schema.split("/")[1]) > Number(SCHEMA.split("/")[1])) {
    throw new EdgekitWebError("manifest", `${where} uses ${schema}, newer than this library (${SCHEMA}); update @edgekit/web`);
  }
}

function failed(parity) {
  return Boolean(parity && parity.passed === false && !parity.accepted);
}

// The artifact's check on onnxruntime-web's wasm backend (bundles from edgekit 0.2 on), or null.
export function wasmCheck(a) {
  return (a.runtime_checks || []).find((c) => String(c.runtime).startsWith("onnxruntime-web") && c.parity) || null;
}

function isWebArtifact(a) {
  const wasm = wasmCheck(a);
  return a.format === "onnx" && String(a.target).startsWith("onnx-web") && !failed(a.parity) && !(wasm && failed(wasm.parity));
}

// Latencies closer than this count as equal (the converter's onnx-web-auto uses the same margin).
const SLOWER_RATIO = 1.1;
const SLOWER_MS = 0.02;
const PRECISION_RANK = { fp32: 0, fp16: 1 };

// prefer "speed" on wasm: the fastest artifact by the bundle's onnxruntime-web (wasm) figures; among
// artifacts within timing noise of it, the highest precision. null when the bundle has no figures.
function fastestOnWasm(web) {
  const timed = web.filter((a) => wasmCheck(a) && typeof wasmCheck(a).latency_p50_ms === "number");
  if (timed.length === 0) return null;
  const ms = (a) => wasmCheck(a).latency_p50_ms;
  const best = Math.min(...timed.map(ms));
  const ties = timed.filter((a) => !(ms(a) > best * SLOWER_RATIO && ms(a) - best > SLOWER_MS));
  ties.sort((a, b) => (PRECISION_RANK[a.precision] ?? 2) - (PRECISION_RANK[b.precision] ?? 2) || a.size_bytes - b.size_bytes);
  return ties[0];
}

/**
 * Choose the web artifact for this browser.
 *   wasm:   prefer "size" (default): the target the bundle's onnx-web-auto selection chose (judged
 *           on onnxruntime-web's wasm figures), else the smallest integer artifact, else fp32.
 *           prefer "speed": the fastest by the bundle's wasm latency figures (the highest precision
 *           among those within timing noise), else fp32. fp16 only when nothing else exists (wasm
 *           has no fp16 arithmetic: it converts every fp16 tensor). An artifact that failed parity,
 *           natively or on wasm, is never chosen.
 *   webgpu: fp16 when the adapter has shader-f16, else fp32 (int8 QDQ graphs mostly fall back to
 *           the CPU on WebGPU).
 * Returns { artifact, reason }.
 */
export function chooseArtifact(manifest, { backend = "wasm", shaderF16 = false, target = null, prefer = "size" } = {}) {
  const web = manifest.artifacts.filter(isWebArtifact);
  if (target) {
    const wanted = web.find((a) => a.target === target);
    if (!wanted) {
      const have = web.map((a) => a.target).join(", ") || "none";
      throw new EdgekitWebError("target", `the bundle has no usable web artifact "${target}" (it has: ${have})`);
    }
    return { artifact: wanted, reason: `asked for ${target}` };
  }
  if (web.length === 0) {
    throw new EdgekitWebError("target", "the bundle has no onnx-web artifact; convert with --target onnx-web (or onnx-web-int8, onnx-web-auto)");
  }
  const by = (p) => web.filter((a) => a.precision === p).sort((a, b) => a.size_bytes - b.size_bytes)[0];
  if (backend === "webgpu") {
    if (shaderF16 && by("fp16")) return { artifact: by("fp16"), reason: "WebGPU with shader-f16: fp16 halves the download and runs natively" };
    if (by("fp32")) return { artifact: by("fp32"), reason: shaderF16 ? "WebGPU: no fp16 artifact in the bundle" : "WebGPU without shader-f16: fp32" };
  }
  if (prefer === "speed") {
    const fastest = fastestOnWasm(web);
    if (fastest) {
      return { artifact: fastest, reason: `wasm, prefer speed: the fastest on onnxruntime-web (wasm) in the bundle's figures (${fastest.target}, ${wasmCheck(fastest).latency_p50_ms} ms p50)` };
    }
    if (by("fp32")) return { artifact: by("fp32"), reason: "wasm, prefer speed: fp32 (the bundle has no wasm latency figures)" };
  }
  const chosen = (manifest.selections || []).find((s) => s.family === "onnx-web" && s.chosen);
  const picked = chosen && web.find((a) => a.target === chosen.chosen);
  if (picked && picked.precision !== "fp16") {
    return { artifact: picked, reason: `the bundle's accuracy-gated choice for onnx-web (${picked.target})` };
  }
  const integer = web.filter((a) => a.precision !== "fp32" && a.precision !== "fp16").sort((a, b) => a.size_bytes - b.size_bytes)[0];
  if (integer) return { artifact: integer, reason: `wasm: the smallest integer artifact that passed parity (${integer.target})` };
  if (by("fp32")) return { artifact: by("fp32"), reason: "wasm: fp32" };
  return { artifact: by("fp16"), reason: "wasm: only an fp16 artifact exists (slower than fp32 on wasm)" };
}

// ---------------------------------------------------------------------------------------------
// Verified, cached bytes

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function cacheKey(sha256) {
  return new Request(new URL(`/.edgekit-cache/sha256/${sha256}`, location.href).href);
}

async function openCache() {
  try {
    return typeof caches === "undefined" ? null : await caches.open(CACHE_NAME);
  } catch {
    return null; // an opaque origin or a browser without Cache Storage: no cache, same behaviour otherwise
  }
}

async function download(url, expectedSize, onProgress) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    throw new EdgekitWebError("network", `could not download ${url}: ${err.message}`);
  }
  if (!response.ok) throw new EdgekitWebError("network", `${url} answered HTTP ${response.status}; is the bundle complete on the server?`);
  const total = Number(response.headers.get("Content-Length")) || expectedSize || 0;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    if (onProgress) onProgress({ loaded, total });
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const part of parts) { bytes.set(part, at); at += part.length; }
  return bytes;
}

/**
 * The artifact's bytes, checked against its manifest entry. From Cache Storage when a copy with the
 * same sha256 is there (checked again: a damaged cache entry is dropped and downloaded anew).
 * Returns { bytes, fromCache, downloadMs }.
 */
export async function fetchVerified(url, artifact, { onProgress = null, cache = true } = {}) {
  const store = cache ? await openCache() : null;
  const key = cacheKey(artifact.sha256);
  if (store) {
    const hit = await store.match(key);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length === artifact.size_bytes && (await sha256Hex(bytes)) === artifact.sha256) {
        if (onProgress) onProgress({ loaded: bytes.length, total: bytes.length, cached: true });
        return { bytes, fromCache: true, downloadMs: 0 };
      }
      await store.delete(key);
    }
  }
  const t0 = performance.now();
  const bytes = await download(url, artifact.size_bytes, onProgress);
  const downloadMs = performance.now() - t0;
  await verify(bytes, artifact, url);
  if (store) {
    try {
      await store.put(key, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
    } catch { /* a full quota only costs the next load a download */ }
  }
  return { bytes, fromCache: false, downloadMs };
}

async function verify(bytes, artifact, where) {
  if (bytes.length !== artifact.size_bytes) {
    throw new EdgekitWebError("integrity", `${where} is ${bytes.length} bytes, the manifest says ${artifact.size_bytes}: the file is truncated or replaced; refusing to load it. Re-publish the bundle`);
  }
  const got = await sha256Hex(bytes);
  if (got !== artifact.sha256) {
    throw new EdgekitWebError("integrity", `${where} has sha256 ${got.slice(0, 16)}..., the manifest says ${String(artifact.sha256).slice(0, 16)}...: the file was changed after the bundle was made; refusing to load it. Re-publish the bundle`);
  }
}

// ---------------------------------------------------------------------------------------------
// Backends and the session

/** What this browser offers: { webgpu, shaderF16, reason, crossOriginIsolated, cores }. */
export async function detectBackends() {
  const out = { webgpu: false, shaderF16: false, reason: "", crossOriginIsolated: self.crossOriginIsolated === true, cores: navigator.hardwareConcurrency || 1 };
  if (!("gpu" in navigator) || !navigator.gpu) {
    out.reason = "this browser has no WebGPU (navigator.gpu is missing)";
    return out;
  }
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) {
      out.reason = "no WebGPU adapter (navigator.gpu.requestAdapter() gave null: GPU disabled or blocklisted)";
      return out;
    }
    out.webgpu = true;
    out.shaderF16 = adapter.features.has("shader-f16");
  } catch (err) {
    out.reason = `WebGPU adapter request failed: ${err.message}`;
  }
  return out;
}

async function importOrt(ortBase, backend) {
  const file = backend === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs";
  const ort = await import(new URL(file, new URL(ortBase, location.href)).href);
  ort.env.wasm.wasmPaths = new URL(ortBase, location.href).href;
  return ort;
}

// ORT-web says it placed nodes elsewhere only on the console: listen while a session is created.
async function capturingConsole(fn) {
  const seen = [];
  const saved = { warn: console.warn, log: console.log, error: console.error };
  for (const level of Object.keys(saved)) {
    console[level] = (...args) => {
      seen.push({ level, text: args.map(String).join(" ") });
      saved[level].apply(console, args);
    };
  }
  try {
    return { value: await fn(), seen };
  } finally {
    Object.assign(console, saved);
  }
}

const FALLBACK_HINTS = [/not assigned to the preferred execution provider/i, /fall(ing)? ?back/i, /will be (run|executed) on (the )?CPU/i];

function specOf(manifest, artifact) {
  return { inputs: artifact.inputs || manifest.inputs || [], outputs: artifact.outputs || manifest.outputs || [] };
}

function zerosFor(spec) {
  const dims = spec.shape.map((d) => (typeof d === "number" && d > 0 ? d : 1));
  const Typed = TYPED[spec.dtype] || Float32Array;
  const size = dims.reduce((a, b) => a * b, 1);
  return { data: new Typed(size), dims };
}

export class EdgekitSession {
  constructor(fields) {
    Object.assign(this, fields);
    this.histogram = new LatencyHistogram(); // every run's latency in fixed memory (edgekit.histogram's layout)
    this.errorKinds = {}; // failed runs by kind, as the Python runtime names them
  }

  /** Check feeds against the manifest's input spec; throws EdgekitWebError("input") with the fix. */
  checkInputs(feeds) {
    const expected = this.inputs.map((s) => s.name);
    const given = Object.keys(feeds || {});
    const missing = expected.filter((n) => !given.includes(n));
    const extra = given.filter((n) => !expected.includes(n));
    if (missing.length || extra.length) {
      throw new EdgekitWebError("input", `the model takes input(s) ${expected.join(", ")}; got ${given.join(", ") || "none"}` +
        (missing.length ? ` (missing ${missing.join(", ")})` : "") + (extra.length ? ` (unknown ${extra.join(", ")})` : ""));
    }
    for (const spec of this.inputs) {
      const feed = feeds[spec.name];
      const dims = feed && (feed.dims || feed.shape);
      const Typed = TYPED[spec.dtype];
      const shape = `[${spec.shape.join(", ")}] ${spec.dtype}`;
      if (!feed || !dims || !feed.data) {
        throw new EdgekitWebError("input", `input "${spec.name}" must be { data: TypedArray, dims: [...] } matching ${shape}`);
      }
      if (Typed && !(feed.data instanceof Typed)) {
        throw new EdgekitWebError("input", `input "${spec.name}" is a ${feed.data.constructor.name}, the model expects ${spec.dtype} (${Typed.name})`);
      }
      const fits = dims.length === spec.shape.length &&
        spec.shape.every((d, i) => typeof d !== "number" || d < 0 || d === dims[i]) && dims.every((d) => Number.isInteger(d) && d > 0);
      if (!fits) {
        throw new EdgekitWebError("input", `input "${spec.name}" has shape [${dims.join(", ")}], the model expects ${shape} (names are free dimensions)`);
      }
      const size = dims.reduce((a, b) => a * b, 1);
      if (feed.data.length !== size) {
        throw new EdgekitWebError("input", `input "${spec.name}" has ${feed.data.length} values, its shape [${dims.join(", ")}] needs ${size}`);
      }
    }
  }

  /** Run the model. feeds: { name: { data, dims } }. Returns { name: { data, dims } }. */
  async run(feeds) {
    try {
      this.checkInputs(feeds);
    } catch (err) {
      this._failed("InvalidInputError");
      throw err;
    }
    const tensors = {};
    for (const spec of this.inputs) {
      const feed = feeds[spec.name];
      // A fresh tensor for every run: in proxy mode ORT transfers (detaches) the buffer.
      tensors[spec.name] = new this.ort.Tensor(spec.dtype, feed.data.slice(), Array.from(feed.dims || feed.shape));
    }
    const t0 = performance.now();
    let result;
    try {
      result = await this.ortSession.run(tensors);
    } catch (err) {
      this._failed("InferenceError");
      throw new EdgekitWebError("inference", `inference failed on ${this.provider}: ${err.message}`);
    }
    const ms = performance.now() - t0;
    this.histogram.add(Math.round(ms * 1e6));
    this.lastMs = ms;
    const out = {};
    for (const [name, t] of Object.entries(result)) out[name] = { data: t.data, dims: Array.from(t.dims) };
    return out;
  }

  _failed(kind) {
    this.errors = (this.errors || 0) + 1;
    this.errorKinds[kind] = (this.errorKinds[kind] || 0) + 1;
  }

  /** Latency so far: { count, errors, p50, p95, p99, mean, last } in ms (percentiles to within 12.5%:
   *  the upper edge of the histogram bucket, as the Python runtime reports them), plus loadMs. */
  stats() {
    const h = this.histogram;
    return { count: h.count, errors: this.errors || 0, p50: h.percentile(50), p95: h.percentile(95), p99: h.percentile(99),
      mean: h.count ? h.totalNs / h.count / 1e6 : null, last: this.lastMs ?? null, loadMs: this.loadMs };
  }

  /** What a page shows about this session (plain values). */
  describe() {
    const a = this.artifact;
    return {
      name: this.manifest.name, version: this.manifest.version, target: a.target, precision: a.precision,
      sizeBytes: a.size_bytes, provider: this.provider, attempts: this.attempts, warnings: this.warnings,
      reason: this.reason, fromCache: this.fromCache, loadMs: this.loadMs, downloadMs: this.downloadMs,
      threads: this.threads, crossOriginIsolated: this.crossOriginIsolated,
    };
  }

  async release() {
    if (this.ortSession) await this.ortSession.release();
  }
}

/**
 * Open a bundle: a URL of its bundle.json, or { manifest, files } from a file picker (files: File
 * objects named as in the manifest). Options:
 *   ortBase     where onnxruntime-web's dist files are served ("/ort/")
 *   providers   "auto" (webgpu where an adapter exists, then wasm) or a list, e.g. ["wasm"]
 *   target      a target id to use instead of the automatic choice
 *   prefer      "size" (default: the smallest verified artifact) or "speed" (fp32 on wasm)
 *   onProgress  ({ phase, loaded, total }) during the download
 *   cache       keep verified artifacts in Cache Storage (default true)
 *   threads     wasm threads (default: the cores, when the page is cross-origin isolated, else 1)
 */
export async function open(source, options = {}) {
  const t0 = performance.now();
  const { ortBase = "/ort/", providers = "auto", target = null, prefer = "size", onProgress = null, cache = true } = options;
  if (prefer !== "size" && prefer !== "speed") throw new EdgekitWebError("usage", `prefer is "size" or "speed", not "${prefer}"`);
  let manifest;
  let base = null;
  let files = null;
  if (typeof source === "string" || source instanceof URL) {
    ({ manifest, base } = await loadManifest(String(source)));
  } else if (source && source.manifest) {
    manifest = source.manifest;
    files = source.files || [];
    checkManifest(manifest, "the chosen bundle.json");
  } else {
    throw new EdgekitWebError("usage", "open() takes the URL of a bundle.json or { manifest, files }");
  }
  const env = await detectBackends();
  const wanted = providers === "auto" ? ["webgpu", "wasm"] : Array.from(providers);
  for (const p of wanted) {
    if (p !== "webgpu" && p !== "wasm") {
      throw new EdgekitWebError("usage", `unknown provider "${p}": use "webgpu" or "wasm"`);
    }
  }
  const attempts = [];
  const threads = options.threads || (env.crossOriginIsolated ? Math.min(4, env.cores) : 1);
  let lastError = null;
  for (const provider of wanted) {
    if (provider === "webgpu" && !env.webgpu) {
      attempts.push({ provider, ok: false, reason: env.reason });
      continue;
    }
    const { artifact, reason } = chooseArtifact(manifest, { backend: provider, shaderF16: env.shaderF16, target, prefer });
    let got;
    if (files) {
      const file = Array.from(files).find((f) => f.name === artifact.file);
      if (!file) throw new EdgekitWebError("usage", `pick ${artifact.file} together with bundle.json (the chosen artifact, ${artifact.target})`);
      const bytes = new Uint8Array(await file.arrayBuffer());
      await verify(bytes, artifact, file.name);
      got = { bytes, fromCache: false, downloadMs: 0 };
    } else {
      got = await fetchVerified(new URL(artifact.file, base).href, artifact,
        { cache, onProgress: onProgress && ((p) => onProgress({ phase: "download", ...p })) });
    }
    const ort = await importOrt(ortBase, provider);
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = "warning";
    const spec = specOf(manifest, artifact);
    try {
      const { value: ortSession, seen } = await capturingConsole(async () => {
        const s = await ort.InferenceSession.create(got.bytes, { executionProviders: [provider], graphOptimizationLevel: "all" });
        // A probe run: WebGPU kernels fail at run time, not when the session is created.
        const probe = {};
        for (const input of spec.inputs) {
          const z = zerosFor(input);
          probe[input.name] = new ort.Tensor(input.dtype, z.data, z.dims);
        }
        await s.run(probe);
        return s;
      });
      const warnings = seen.filter((m) => m.level !== "log" || FALLBACK_HINTS.some((h) => h.test(m.text))).map((m) => m.text);
      const partial = warnings.some((w) => FALLBACK_HINTS.some((h) => h.test(w)));
      attempts.push({ provider, ok: true, reason: partial ? "some nodes run on the CPU (see warnings)" : "" });
      return new EdgekitSession({
        ort, ortSession, manifest, artifact, reason, base, inputs: spec.inputs, outputs: spec.outputs,
        provider: partial ? `${provider} (partial: some nodes on wasm)` : provider, attempts, warnings,
        fromCache: got.fromCache, downloadMs: got.downloadMs, loadMs: performance.now() - t0, threads,
        crossOriginIsolated: env.crossOriginIsolated,
      });
    } catch (err) {
      lastError = err;
      attempts.push({ provider, ok: false, reason: err.message });
    }
  }
  const tried = attempts.map((a) => `${a.provider}: ${a.reason}`).join("; ");
  throw new EdgekitWebError("provider", `no provider could run the model (${tried})` + (lastError ? "" : "; allow \"wasm\" in providers"));
}
