// The digits demo: draw on a canvas, classify with the bundle's web artifact, show what ran.
// Query parameters: bundle (URL of a bundle.json, default /bundle/bundle.json), ort (where
// onnxruntime-web's files are served, default /ort/), target (an artifact id to force),
// prefer (size or speed), providers (comma-separated, default auto), threads (wasm threads).
import { open, EdgekitWebError } from "../src/edgekit.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const demo = { session: null, firstResultMs: null, error: null };
window.edgekitDemo = demo;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function kb(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(2)} MB` : `${(bytes / 1024).toFixed(1)} KB`;
}

function showSession(session) {
  const d = session.describe();
  $("model").textContent = `${d.name} ${d.version}`;
  $("artifact").textContent = `${d.target} (${d.precision}, ${kb(d.sizeBytes)})`;
  $("artifact").title = d.reason;
  $("provider").textContent = d.provider;
  $("load").textContent = `${d.loadMs.toFixed(0)} ms${d.fromCache ? " (verified copy from cache)" : ", downloaded and verified"}`;
  $("threads").textContent = `${d.threads}${d.crossOriginIsolated ? " (cross-origin isolated)" : " (not isolated: one thread)"}`;
  $("attempts").replaceChildren(...d.attempts.map((a) => {
    const li = document.createElement("li");
    li.textContent = `${a.provider}: ${a.ok ? "runs" : "passed over"}${a.reason ? ` (${a.reason})` : ""}`;
    return li;
  }), ...d.warnings.map((w) => {
    const li = document.createElement("li");
    li.textContent = `onnxruntime-web: ${w}`;
    return li;
  }));
}

function imageInput(session) {
  const spec = session.inputs[0];
  const s = spec && spec.shape;
  if (!spec || session.inputs.length !== 1 || s.length !== 4 || ![1, 3].includes(s[1]) || typeof s[2] !== "number" || typeof s[3] !== "number") {
    return null;
  }
  return { name: spec.name, channels: s[1], height: s[2], width: s[3], dtype: spec.dtype };
}

// The drawing as the model's input: the ink's bounding box scaled to fit the frame (as the digits
// data was made: 32x32 bitmaps counted in 4x4 blocks), values 0..1, ink high.
function toTensor(shape) {
  const { width: W, height: H, channels: C } = shape;
  const pixels = ctx.getImageData(0, 0, pad.width, pad.height).data;
  let [x0, y0, x1, y1] = [pad.width, pad.height, -1, -1];
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (pixels[(y * pad.width + x) * 4] > 40) {
        x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const side = Math.max(x1 - x0, y1 - y0) + 1;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const big = new OffscreenCanvas(W * 4, H * 4);
  const bctx = big.getContext("2d");
  bctx.fillStyle = "#000";
  bctx.fillRect(0, 0, big.width, big.height);
  bctx.imageSmoothingQuality = "high";
  bctx.drawImage(pad, cx - side / 2, cy - side / 2, side, side, 0, 0, big.width, big.height);
  const src = bctx.getImageData(0, 0, big.width, big.height).data;
  const data = new Float32Array(C * H * W);
  const preview = new ImageData(W, H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let sum = 0;
      for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) sum += src[((y * 4 + dy) * big.width + x * 4 + dx) * 4];
      const v = sum / (16 * 255);
      for (let c = 0; c < C; c++) data[c * H * W + y * W + x] = v;
      const p = (y * W + x) * 4;
      preview.data[p] = preview.data[p + 1] = preview.data[p + 2] = Math.round(v * 255);
      preview.data[p + 3] = 255;
    }
  }
  const seen = $("seen");
  seen.width = W; seen.height = H;
  seen.getContext("2d").putImageData(preview, 0, 0);
  return { data, dims: [1, C, H, W] };
}

function probabilities(values) {
  const arr = Array.from(values, Number);
  const isProb = arr.every((v) => v >= 0 && v <= 1) && Math.abs(arr.reduce((a, b) => a + b, 0) - 1) < 1e-3;
  if (isProb) return arr;
  const m = Math.max(...arr);
  const e = arr.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function showResult(probs) {
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const top = order[0][1];
  $("digit").textContent = String(top);
  $("confidence").textContent = `${(probs[top] * 100).toFixed(1)}%`;
  const shown = probs.length <= 10 ? probs.map((p, i) => [p, i]) : order.slice(0, 10);
  $("bars").replaceChildren(...shown.map(([p, i]) => {
    const li = document.createElement("li");
    if (i === top) li.className = "top";
    li.innerHTML = `<span>${i}</span><span class="track"><span class="fill" style="width:${(p * 100).toFixed(1)}%;display:block"></span></span><span>${(p * 100).toFixed(1)}%</span>`;
    return li;
  }));
}

async function classify() {
  const session = demo.session;
  if (!session) return null;
  const shape = imageInput(session);
  if (!shape) {
    status(`this demo draws images; the bundle's input is ${JSON.stringify(session.inputs.map((i) => i.shape))}: use the library directly`, true);
    return null;
  }
  const input = toTensor(shape);
  if (!input) return null;
  try {
    const out = await session.run({ [shape.name]: input });
    const first = out[session.outputs[0]?.name] || Object.values(out)[0];
    const probs = probabilities(first.data);
    showResult(probs);
    const st = session.stats();
    $("latency").textContent = `${st.last.toFixed(2)} ms (p50 ${st.p50.toFixed(2)} ms over ${st.count} runs)`;
    if (demo.firstResultMs === null) demo.firstResultMs = performance.now();
    status("ready");
    return probs;
  } catch (err) {
    status(err.message, true);
    return null;
  }
}

// Drawing with pointer events: one code path for mouse, pen and touch.
let drawing = false;
let last = null;
let pending = false;
function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
}
function stroke(to) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = 22;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  if (last) {
    ctx.moveTo(...last);
    ctx.lineTo(...to);
    ctx.stroke();
  } else {
    ctx.arc(to[0], to[1], 11, 0, Math.PI * 2);
    ctx.fill();
  }
  last = to;
  if (!pending) {
    pending = true;
    requestAnimationFrame(async () => { pending = false; await classify(); });
  }
}
pad.addEventListener("pointerdown", (e) => { drawing = true; last = null; pad.setPointerCapture(e.pointerId); stroke(point(e)); });
pad.addEventListener("pointermove", (e) => { if (drawing) stroke(point(e)); });
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { drawing = false; last = null; classify(); });
function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  $("digit").textContent = "–";
  $("confidence").textContent = "";
  $("bars").replaceChildren();
}
$("clear").addEventListener("click", clearPad);
clearPad();

async function load(source, label) {
  status(`loading ${label}…`);
  $("bar").style.width = "0";
  demo.error = null;
  try {
    const options = {
      ortBase: params.get("ort") || "/ort/",
      target: params.get("target"),
      prefer: params.get("prefer") || "size",
      threads: Number(params.get("threads")) || undefined,
      providers: params.get("providers") ? params.get("providers").split(",") : "auto",
      onProgress: ({ loaded, total }) => { if (total) $("bar").style.width = `${(100 * loaded / total).toFixed(0)}%`; },
    };
    const session = await open(source, options);
    if (demo.session) await demo.session.release();
    demo.session = session;
    $("bar").style.width = "100%";
    showSession(session);
    status(imageInput(session) ? "ready: draw a digit" : "loaded; this bundle does not take an image");
    await classify();
    return session.describe();
  } catch (err) {
    demo.error = { code: err instanceof EdgekitWebError ? err.code : "error", message: err.message };
    status(err.message, true);
    return null;
  }
}

$("picker").addEventListener("change", async (e) => {
  const files = Array.from(e.target.files || []);
  const manifestFile = files.find((f) => f.name === "bundle.json");
  if (!manifestFile) {
    status("pick the bundle's bundle.json together with its .onnx file(s)", true);
    return;
  }
  let manifest;
  try {
    manifest = JSON.parse(await manifestFile.text());
  } catch (err) {
    status(`bundle.json is not JSON: ${err.message}`, true);
    return;
  }
  await load({ manifest, files }, "the picked bundle");
});

// For tests and benchmarks: run raw inputs ({ name: [flat values] } with dims) through the session.
demo.run = async (values, dims) => {
  const name = demo.session.inputs[0].name;
  const out = await demo.session.run({ [name]: { data: Float32Array.from(values), dims } });
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { data: Array.from(v.data, Number), dims: v.dims }]));
};
demo.runFeeds = (feeds) => demo.session.run(feeds);
demo.load = load;
demo.ready = load(params.get("bundle") || "/bundle/bundle.json", "the bundle");
