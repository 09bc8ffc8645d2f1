// The fleet dashboard of `edgekit serve`: one channel's canary release against its baseline, read
// from GET /v1/models/<model>/channels/<channel>/fleet with an operator token. Plain SVG, no library
// and no request to any other origin (the page is served with a Content-Security-Policy that says so).

const SVG = "http://www.w3.org/2000/svg";
const W = 520, H = 190, PAD = { left: 56, right: 12, top: 14, bottom: 30 };
const REFRESH_MS = 15000;

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function settings() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {  // a link with #token=...: keep it for this tab, take it out of the address bar
    sessionStorage.setItem("edgekit.token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return { model: query.get("model") || "", channel: query.get("channel") || "",
           token: sessionStorage.getItem("edgekit.token") || "" };
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "-" : Number(x).toPrecision(digits));
const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(2)}%`);
const clock = (t) => new Date(t * 1000).toISOString().slice(11, 16);

function role(release, comparison) {
  return Number(release) === comparison.canary ? "canary" : "baseline";
}

// One chart: a line per release over time, a circle per point (data-* carry what is plotted).
function chart(id, title, byRelease, key, comparison, asPercent) {
  const figure = el("figure");
  figure.append(el("figcaption", {}, title));
  const svg = el("svg:svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-chart": id, role: "img",
                             "aria-label": title });
  const points = Object.entries(byRelease).flatMap(([r, series]) => series.map((p) => ({ r, t: p.time, v: p[key] })));
  const times = points.map((p) => p.t), values = points.map((p) => p.v);
  const t0 = Math.min(...times, Infinity), t1 = Math.max(...times, -Infinity);
  const top = Math.max(Math.max(...values, 0) * 1.15, asPercent ? 0.02 : 0) || 1;
  const x = (t) => PAD.left + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  svg.append(el("svg:line", { class: "axis", x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }),
             el("svg:line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }),
             el("svg:text", { x: PAD.left - 6, y: PAD.top + 4, "text-anchor": "end" }, asPercent ? pct(top) : fmt(top)),
             el("svg:text", { x: PAD.left - 6, y: H - PAD.bottom, "text-anchor": "end" }, "0"));
  if (points.length) {
    svg.append(el("svg:text", { x: PAD.left, y: H - 10 }, clock(t0)),
               el("svg:text", { x: W - PAD.right, y: H - 10, "text-anchor": "end" }, `${clock(t1)} UTC`));
  }
  let legend = PAD.left + 8;
  for (const [r, series] of Object.entries(byRelease)) {
    const cls = role(r, comparison);
    if (series.length > 1) {
      svg.append(el("svg:polyline", { class: `line ${cls}`,
                                      points: series.map((p) => `${x(p.time)},${y(p[key])}`).join(" ") }));
    }
    for (const p of series) {
      const dot = el("svg:circle", { class: cls, cx: x(p.time), cy: y(p[key]), r: cls === "baseline" ? 5.5 : 3.5, "data-release": r,
                                     "data-time": p.time, "data-value": p[key] });
      dot.append(el("svg:title", {}, `release ${r} at ${clock(p.time)}: ${asPercent ? pct(p[key]) : fmt(p[key])}`));
      svg.append(dot);
    }
    svg.append(el("svg:text", { x: legend, y: PAD.top + 4, class: cls }, `release ${r} (${cls})`));
    legend += 130;
  }
  figure.append(svg);
  return figure;
}

function triple(a) {
  return a ? `${fmt(a.p50_ms)} / ${fmt(a.p95_ms)} / ${fmt(a.p99_ms)}` : "-";
}

function providers(k) {
  const ran = Object.entries(k.canary_providers || {}).map(([name, runs]) => `${name} (${runs} runs)`);
  const over = k.canary && k.canary.passed_over.length ? `; passed over: ${k.canary.passed_over.join(", ")}` : "";
  return (ran.join(", ") || "-") + over;
}

function render(data) {
  const c = data.comparison;
  $("#halted").hidden = !data.halted;
  $("#halted").textContent = data.halted ? `Rollout halted: ${data.halted_reason}` : "";
  const guard = c.guard ? `guard: halt when the P95 is over ${c.guard.p95_ratio ?? "-"}x the baseline's or the error `
    + `rate over ${pct(c.guard.error_rate)}, on classes with at least ${c.guard.min_devices} devices` : "no guard";
  $("#summary").replaceChildren(el("p", {}, c.baseline === null
    ? `${data.model} on ${data.channel}: release ${c.canary} on every device; ${guard}.`
    : `${data.model} on ${data.channel}: release ${c.canary} (canary) against release ${c.baseline} (baseline); ${guard}.`));
  $("#classes tbody").replaceChildren(...c.classes.map((k) => {
    const row = el("tr", { "data-class": k.device_class });
    const bad = k.verdict.includes("over the guard");
    row.append(el("td", {}, k.device_class), el("td", { class: bad ? "verdict-bad" : "verdict-ok" }, k.verdict),
               el("td", {}, k.p95_ratio === null ? "-" : `${k.p95_ratio.toFixed(2)}x`),
               el("td", {}, triple(k.canary)), el("td", {}, triple(k.baseline)),
               el("td", {}, k.canary ? pct(k.canary.error_rate) : "-"),
               el("td", {}, k.baseline ? pct(k.baseline.error_rate) : "-"),
               el("td", {}, `${k.canary ? k.canary.devices : 0} / ${k.baseline ? k.baseline.devices : 0}`),
               el("td", {}, providers(k)));
    return row;
  }));
  const plots = [chart("all-p95_ms", "P95 latency (ms), all devices", data.series, "p95_ms", c),
                 chart("all-error_rate", "Error rate, all devices", data.series, "error_rate", c, true)];
  for (const [cls, byRelease] of Object.entries(data.series_by_class || {})) {
    plots.push(chart(`class-p95_ms-${cls}`, `P95 latency (ms) on ${cls}`, byRelease, "p95_ms", c));
  }
  $("#plots").replaceChildren(...plots);
}

async function load() {
  const s = settings();
  const form = $("#pick");
  form.model.value = s.model;
  form.channel.value = s.channel;
  if (!s.model || !s.channel || !s.token) {
    document.body.dataset.state = "empty";
    return;
  }
  try {
    const path = `/v1/models/${encodeURIComponent(s.model)}/channels/${encodeURIComponent(s.channel)}/fleet`;
    const answer = await fetch(path, { headers: { authorization: `Bearer ${s.token}` }, cache: "no-store" });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || `HTTP ${answer.status}`);
    $("#error").hidden = true;
    render(body);
    document.body.dataset.state = "ready";
  } catch (error) {
    $("#error").hidden = false;
    $("#error").textContent = `Could not read the fleet: ${error.message}`;
    document.body.dataset.state = "error";
  }
}

$("#pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  if (form.token.value) sessionStorage.setItem("edgekit.token", form.token.value);
  form.token.value = "";
  history.replaceState(null, "", `?${new URLSearchParams({ model: form.model.value, channel: form.channel.value })}`);
  load();
});

load();
setInterval(load, REFRESH_MS);
