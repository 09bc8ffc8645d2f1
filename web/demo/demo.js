// The demo for any bundle: an image model takes a drawing, an image file or a camera picture (any
// layout: NCHW or NHWC, resized to its input); any other model gets a form with one field per input.
// Outputs are shown as a table, class scores also as bars. The digits drawing is the default example.
// Query parameters: bundle (URL of a bundle.json, default /bundle/bundle.json), ort (where
// onnxruntime-web's files are served, default /ort/), target (an artifact id to force),
// prefer (size or speed), providers (comma-separated, default auto), threads (wasm threads).
import { open, EdgekitWebError } from "../src/edgekit.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const demo = { session: null, firstResultMs: null, error: null, lastFeeds: null, lastOutputs: null };
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

const DEFAULT_SIDE = 224; // an image input whose height and width are free gets this size

// An image input: one float input of rank 4 with 1 or 3 channels first (NCHW) or last (NHWC; the
// manifest's layout decides when both could be).
function imageInput(session) {
  const spec = session.inputs[0];
  const s = spec && spec.shape;
  if (!spec || session.inputs.length !== 1 || s.length !== 4 || !String(spec.dtype).startsWith("float")) return null;
  const first = [1, 3].includes(s[1]);
  const last = [1, 3].includes(s[3]);
  if (!first && !last) return null;
  const nhwc = last && (!first || spec.layout === "NHWC");
  const side = (d) => (typeof d === "number" && d > 0 ? d : DEFAULT_SIDE);
  const [h, w] = nhwc ? [s[1], s[2]] : [s[2], s[3]];
  return { name: spec.name, channels: nhwc ? s[3] : s[1], height: side(h), width: side(w), nhwc, dtype: spec.dtype };
}

// Values in 0..1 per pixel and channel (rgba: 4 bytes a pixel) into the model's layout and dims.
function layoutTensor(shape, rgba, gray = false) {
  const { width: W, height: H, channels: C, nhwc } = shape;
  const data = new Float32Array(C * H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const p = (y * W + x) * 4;
      const rgb = [rgba[p], rgba[p + 1], rgba[p + 2]].map((v) => v / 255);
      const luma = gray ? rgb[0] : 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
      for (let c = 0; c < C; c++) {
        const v = C === 1 ? luma : rgb[c];
        data[nhwc ? (y * W + x) * C + c : c * H * W + y * W + x] = v;
      }
    }
  }
  return { data, dims: nhwc ? [1, H, W, C] : [1, C, H, W] };
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
  const preview = new ImageData(W, H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let sum = 0;
      for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) sum += src[((y * 4 + dy) * big.width + x * 4 + dx) * 4];
      const p = (y * W + x) * 4;
      preview.data[p] = preview.data[p + 1] = preview.data[p + 2] = Math.round(sum / 16);
      preview.data[p + 3] = 255;
    }
  }
  showSeen(preview);
  return layoutTensor(shape, preview.data, true);
}

function showSeen(image) {
  const seen = $("seen");
  seen.width = image.width; seen.height = image.height;
  seen.getContext("2d").putImageData(image, 0, 0);
}

// A picture (an image file's bitmap or a camera frame) stretched to the input's size.
function pictureTensor(source, shape) {
  const canvas = new OffscreenCanvas(shape.width, shape.height);
  const c2d = canvas.getContext("2d");
  c2d.imageSmoothingQuality = "high";
  c2d.drawImage(source, 0, 0, shape.width, shape.height);
  const image = c2d.getImageData(0, 0, shape.width, shape.height);
  showSeen(image);
  return layoutTensor(shape, image.data);
}

// Every output as a row: name, dims, the first values, and the arg-max of the first row when it holds scores.
function showOutputs(out) {
  const rows = Object.entries(out).map(([name, t]) => {
    const values = Array.from(t.data.slice(0, 8), (v) => (typeof v === "bigint" ? v.toString() : Number(v).toPrecision(4)));
    const width = t.dims.length ? t.dims[t.dims.length - 1] : 1;
    let argmax = "";
    if (width >= 2) {
      const first = Array.from(t.data.slice(0, width), Number);
      argmax = String(first.indexOf(Math.max(...first)));
    }
    const tr = document.createElement("tr");
    for (const text of [name, `[${t.dims.join(", ")}]`, values.join(", ") + (t.data.length > 8 ? ", …" : ""), argmax]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  const head = document.createElement("tr");
  head.innerHTML = "<th>output</th><th>dims</th><th>values</th><th>arg-max</th>";
  $("outputs").replaceChildren(head, ...rows);
}

async function runFeeds(feeds) {
  const session = demo.session;
  demo.lastFeeds = feeds;
  const out = await session.run(feeds);
  demo.lastOutputs = Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { data: Array.from(v.data, Number), dims: v.dims }]));
  showOutputs(out);
  const st = session.stats();
  $("latency").textContent = `${st.last.toFixed(2)} ms (p50 ${st.p50.toFixed(2)} ms over ${st.count} runs)`;
  return out;
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
  if (!shape) return null;
  const input = demo.picture ? pictureTensor(demo.picture, shape) : toTensor(shape);
  if (!input) return null;
  try {
    const out = await runFeeds({ [shape.name]: input });
    const first = out[session.outputs[0]?.name] || Object.values(out)[0];
    const probs = first.dims.length === 2 && first.dims[1] >= 2 ? probabilities(first.data) : null;
    if (probs) showResult(probs);
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
pad.addEventListener("pointerdown", (e) => { drawing = true; last = null; demo.picture = null; pad.setPointerCapture(e.pointerId); stroke(point(e)); });
pad.addEventListener("pointermove", (e) => { if (drawing) stroke(point(e)); });
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { drawing = false; last = null; classify(); });
function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  $("digit").textContent = "–";
  $("confidence").textContent = "";
  $("bars").replaceChildren();
}
$("clear").addEventListener("click", () => { demo.picture = null; clearPad(); });
clearPad();

// An image file, resized to the model's input and fed in its layout.
$("image").addEventListener("change", async (e) => {
  const file = (e.target.files || [])[0];
  if (!file || !demo.session) return;
  try {
    demo.picture = await createImageBitmap(file);
  } catch (err) {
    status(`${file.name} is not an image the browser can decode: ${err.message}`, true);
    return;
  }
  await classify();
});

// The camera: a live preview, and a frame taken on request.
$("camera").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("video").srcObject = stream;
    $("video").hidden = false;
    $("snap").hidden = false;
    await $("video").play();
  } catch (err) {
    status(`no camera: ${err.message}`, true);
  }
});
$("snap").addEventListener("click", async () => {
  demo.picture = await createImageBitmap($("video"));
  await classify();
});

// The generic form: one field per input, values parsed into the input's dtype and shape.
const TYPED = { float32: Float32Array, float16: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array };

function defaultDims(spec) {
  return spec.shape.map((d, i) => (typeof d === "number" && d > 0 ? d : i === 0 ? 1 : 4));
}

function buildForm(session) {
  const fields = session.inputs.map((spec) => {
    const label = document.createElement("label");
    label.textContent = `${spec.name} [${spec.shape.join(", ")}] ${spec.dtype}`;
    const area = document.createElement("textarea");
    area.name = spec.name;
    const size = defaultDims(spec).reduce((a, b) => a * b, 1);
    area.value = Array.from({ length: Math.min(size, 4096) }, (_, i) => (String(spec.dtype).startsWith("float") ? "0" : String(i % 2))).join(", ");
    label.append(area);
    return label;
  });
  $("tensor-form").replaceChildren(...fields);
}

// The dims a field's values give: fixed sizes as declared, the first free one 1 when others are free,
// and the last free one from the count of values.
function dimsFor(spec, count) {
  const dims = spec.shape.map((d) => (typeof d === "number" && d > 0 ? d : null));
  const free = dims.map((d, i) => (d === null ? i : -1)).filter((i) => i >= 0);
  free.slice(0, -1).forEach((i) => { dims[i] = 1; });
  if (free.length) {
    const known = dims.reduce((a, d) => a * (d || 1), 1);
    dims[free[free.length - 1]] = count / known;
  }
  return dims;
}

async function runForm() {
  const session = demo.session;
  if (!session) return null;
  try {
    const feeds = {};
    for (const spec of session.inputs) {
      const text = $("tensor-form").querySelector(`textarea[name="${CSS.escape(spec.name)}"]`).value.trim();
      const values = text ? text.split(/[\s,]+/).filter(Boolean) : [];
      const Typed = TYPED[spec.dtype] || Float32Array;
      const bad = values.find((v) => !Number.isFinite(Number(v)));
      if (bad !== undefined) throw new Error(`input "${spec.name}": "${bad}" is not a number; give numbers separated by commas or spaces`);
      const data = Typed === BigInt64Array ? BigInt64Array.from(values, (v) => BigInt(Math.trunc(Number(v)))) : Typed.from(values, Number);
      feeds[spec.name] = { data, dims: dimsFor(spec, values.length) };
    }
    const out = await runFeeds(feeds);
    status("ready");
    return out;
  } catch (err) {
    status(err.message, true);
    return null;
  }
}
$("run-form").addEventListener("click", runForm);

function showMode(session) {
  const image = imageInput(session);
  $("image-box").hidden = !image;
  $("form-box").hidden = Boolean(image);
  $("prediction").hidden = !image;
  $("bars").hidden = !image;
  const shape = image ? `${image.nhwc ? "NHWC" : "NCHW"} ${image.height}x${image.width}x${image.channels}` : "";
  $("intro").textContent = image
    ? `Draw, pick an image or use the camera: it is resized to the model's ${shape} input and run here, on onnxruntime-web; nothing leaves the page.`
    : "Type the model's inputs and run them here, on onnxruntime-web; nothing leaves the page.";
  $("seen").title = image ? `what the model sees (${image.width}x${image.height})` : "";
  if (!image) buildForm(session);
}

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
    showMode(session);
    demo.picture = null;
    status(imageInput(session) ? "ready: draw, or pick an image" : "ready: type the inputs and run");
    if (imageInput(session)) await classify(); else await runForm();
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
demo.runForm = runForm;
demo.load = load;
demo.ready = load(params.get("bundle") || "/bundle/bundle.json", "the bundle");
