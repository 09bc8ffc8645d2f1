// Run an ONNX (or ORT-format) model on onnxruntime-web's wasm backend under Node.js.
//
// edgekit's converters call this to check every onnx-web artifact on the runtime browsers run
// (native onnxruntime and the wasm build can compute int8 differently), and to time it there.
//
//   node node-runner.mjs REQUEST.json
//
// REQUEST.json:
//   { "model": "a.onnx", "ort": "/path/to/node_modules/onnxruntime-web", "threads": 1,
//     "inputs": [{ "name": "x", "dtype": "float32", "shape": [360, 1, 8, 8], "file": "x.bin" }],
//     "chunk": 64,                      // samples per run (a fixed batch size when the model has one)
//     "whole": false,                   // true: the arrays are one feed, run once as they are
//     "out_dir": "dir",                 // outputs are written there as raw little-endian files
//     "bench": { "runs": 30, "warmup": 5, "batch": 1 } }   // optional: latency on the first `batch` samples
// It writes out_dir/result.json: { version, backend, threads, load_ms, outputs: [{name, dtype, shape,
// file}], latency_ms: [...], node }. Errors go to stderr with exit code 1.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array, float16: Uint16Array,
};
// onnxruntime-web's tensor type names where they differ from numpy's
const ORT_TYPE = { float32: "float32", float64: "float64", bool: "bool", float16: "float16" };

function typed(dtype, buffer) {
  const Cls = ARRAYS[dtype];
  if (!Cls) throw new Error(`unsupported dtype ${dtype}`);
  const copy = new Uint8Array(buffer.byteLength);
  copy.set(buffer);
  return new Cls(copy.buffer, 0, copy.byteLength / Cls.BYTES_PER_ELEMENT);
}

function slice(input, data, start, end) {
  if (input.shape.length === 0) return [data, []]; // a scalar input is shared by every sample
  const per = input.shape.slice(1).reduce((a, b) => a * b, 1);
  return [data.subarray(start * per, end * per), [end - start, ...input.shape.slice(1)]];
}

// One line the caller reads, instead of a stack trace through minified code.
function fail(error) {
  process.stderr.write(`edgekit-runner-error: ${String(error?.message ?? error).split("\n")[0]}\n`);
  process.exit(1);
}
process.on("uncaughtException", fail);
process.on("unhandledRejection", fail);

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ort = await import(pathToFileURL(join(request.ort, "dist", "ort.wasm.min.mjs")).href);
ort.env.wasm.numThreads = request.threads ?? 1;
ort.env.wasm.wasmPaths = pathToFileURL(join(request.ort, "dist") + "/").href;
ort.env.logLevel = "error";

const loadStart = performance.now();
const session = await ort.InferenceSession.create(readFileSync(request.model), { executionProviders: ["wasm"] });
const loadMs = performance.now() - loadStart;

const inputs = request.inputs.map((i) => ({ ...i, data: typed(i.dtype, readFileSync(i.file)) }));
const batched = inputs.filter((i) => i.shape.length > 0);
const count = request.whole || !batched.length ? 1 : batched[0].shape[0];
// stacked: each input's first axis lists whole feeds (models whose batch axis is not the first), run one by one
const stacked = Boolean(request.stacked) && !request.whole;
const chunk = stacked ? 1 : Math.max(1, request.chunk ?? count);

function feedsFor(start, end) {
  const feeds = {};
  if (request.whole) {
    for (const input of inputs) feeds[input.name] = new ort.Tensor(ORT_TYPE[input.dtype] ?? input.dtype, input.data.slice(), input.shape);
    return feeds;
  }
  for (const input of inputs) {
    const [data, cut] = slice(input, input.data, start, end);
    const shape = stacked && input.shape.length ? cut.slice(1) : cut;
    // a fresh copy per run: onnxruntime-web may transfer (detach) the buffer it was given
    feeds[input.name] = new ort.Tensor(ORT_TYPE[input.dtype] ?? input.dtype, data.slice(), shape);
  }
  return feeds;
}

const parts = {};
const meta = {};
for (let start = 0; start < count; start += chunk) {
  const end = Math.min(count, start + chunk);
  const results = await session.run(feedsFor(start, end));
  for (const name of session.outputNames) {
    const t = results[name];
    (parts[name] ??= []).push(t.data);
    const dtype = t.type === "float16" ? "float16" : t.type === "bool" ? "bool" : t.type;
    meta[name] = request.whole ? { dtype, dims: t.dims }
      : stacked ? { dtype, rest: t.dims, first: (meta[name]?.first ?? 0) + 1, scalar: false }
      : { dtype, rest: t.dims.slice(1), first: (meta[name]?.first ?? 0) + (t.dims[0] ?? 1), scalar: t.dims.length === 0 };
  }
}

const outputs = session.outputNames.map((name, i) => {
  const file = join(request.out_dir, `out${i}.bin`);
  const chunks = parts[name].map((d) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
  writeFileSync(file, Buffer.concat(chunks));
  const m = meta[name];
  return { name, dtype: m.dtype, shape: m.dims ?? (m.scalar ? [] : [m.first, ...m.rest]), file };
});

const latency = [];
if (request.bench) {
  const end = stacked ? 1 : Math.min(count, request.bench.batch ?? chunk);
  for (let i = 0; i < request.bench.warmup + request.bench.runs; i++) {
    const feeds = feedsFor(0, end);
    const t0 = performance.now();
    await session.run(feeds);
    if (i >= request.bench.warmup) latency.push(performance.now() - t0);
  }
}

writeFileSync(join(request.out_dir, "result.json"), JSON.stringify({
  version: ort.env.versions?.web ?? null, backend: "wasm", node: process.version, threads: ort.env.wasm.numThreads,
  load_ms: loadMs, outputs, latency_ms: latency,
}));
await session.release();
process.exit(0);
