"""The browser runtime (web/src/edgekit.js) and demo page, in Debian's Chromium, against onnxruntime in Python."""

from __future__ import annotations

import http.client
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DIGITS, run_cli

pytestmark = pytest.mark.browser

SEVEN = [[(70, 60), (210, 60), (120, 230)]]  # a hand-drawn 7, in canvas pixels
ZERO = [[(140 + 60 * np.sin(t / 10 * np.pi), 140 - 95 * np.cos(t / 10 * np.pi)) for t in range(21)]]


@pytest.fixture(scope="module")
def server(digits_bundle: Path) -> Iterator[Any]:
    from edgekit.web.server import running

    with running(digits_bundle) as srv:
        yield srv


def _open_demo(browser: Any, url: str, context: Any = None, **context_options: Any) -> tuple[Any, dict[str, Any]]:
    """A fresh context (empty cache) unless one is given; waits until the demo has loaded its bundle."""
    ctx = context or browser.new_context(**context_options)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    described = page.evaluate("() => window.edgekitDemo.ready")
    assert not errors, errors
    return page, described


def _draw(page: Any, strokes: list[list[tuple[float, float]]]) -> None:
    box = page.locator("#pad").bounding_box()
    page.click("#clear")
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
        page.mouse.up()
    page.wait_for_function("() => document.getElementById('status').textContent === 'ready'")


def _python_outputs(artifact: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("target", [None, "onnx-web", "onnx-web-fp16"])
def test_browser_outputs_match_onnxruntime_on_the_same_artifact(browser: Any, server: Any, digits_bundle: Path,
                                                                target: str | None) -> None:
    query = f"?target={target}" if target else ""
    page, described = _open_demo(browser, f"{server.url}/demo/{query}")
    manifest = json.loads((digits_bundle / "bundle.json").read_text())
    if target is None:  # the automatic choice on wasm: the smallest integer artifact that passed parity
        assert described["target"] == "onnx-web-int8" and "smallest integer" in described["reason"]
    else:
        assert described["target"] == target
    artifact = next(a for a in manifest["artifacts"] if a["target"] == described["target"] and a["format"] == "onnx")
    x = np.load(DIGITS / "digits.npz")["x"][:32]
    out = page.evaluate("([v, d]) => window.edgekitDemo.run(v, d)", [x.ravel().tolist(), list(x.shape)])
    browser_logits = np.asarray(out["logits"]["data"], dtype=np.float32).reshape(out["logits"]["dims"])
    python_logits = _python_outputs(digits_bundle / artifact["file"], x)
    error = float(np.abs(browser_logits - python_logits).max())
    print(f"{described['target']}: max abs error browser vs onnxruntime (Python) {error:.2e}")
    scale = float(np.abs(python_logits).max())
    assert error <= 1e-5 * scale if artifact["precision"] == "fp32" else error <= 2e-2 * scale
    assert (browser_logits.argmax(1) == python_logits.argmax(1)).all()
    page.context.close()


def test_provider_report_names_what_ran_and_what_was_passed_over(browser: Any, server: Any) -> None:
    page, described = _open_demo(browser, f"{server.url}/demo/")
    assert described["provider"] == "wasm"
    webgpu, wasm = described["attempts"]
    assert webgpu["provider"] == "webgpu" and not webgpu["ok"] and "adapter" in webgpu["reason"]  # headless, no GPU
    assert wasm == {"provider": "wasm", "ok": True, "reason": ""}
    assert described["crossOriginIsolated"] is True  # COOP/COEP from the server: wasm threads allowed
    assert described["threads"] >= 1 and described["loadMs"] > 0
    assert page.inner_text("#provider") == "wasm"
    assert (page.locator("#attempts li").first.text_content() or "").startswith("webgpu: passed over (no WebGPU adapter")
    strict, _ = _open_demo(browser, f"{server.url}/demo/?providers=webgpu")
    error = strict.evaluate("() => window.edgekitDemo.error")
    assert error["code"] == "provider" and "webgpu: no WebGPU adapter" in error["message"]
    page.context.close()
    strict.context.close()


def test_a_sessions_runs_become_a_telemetry_batch_the_service_reads(browser: Any, server: Any) -> None:
    """EdgekitSession records each run (and each refused input) into its histogram; the library's
    Telemetry turns them into the batch format the service parses (edgekit.ota.telemetry)."""
    from edgekit.ota.telemetry import parse_batch

    page, described = _open_demo(browser, f"{server.url}/demo/")
    x = np.load(DIGITS / "digits.npz")["x"][:1]
    batch = page.evaluate("""async ([v, d]) => {
        const { Telemetry, MemoryStorage } = await import("/src/telemetry.js");
        const session = window.edgekitDemo.session;
        const telemetry = new Telemetry({ deviceId: "browser-1", storage: new MemoryStorage() });
        telemetry.track(session, { model: "digits", channel: "stable", release: 2 });
        const feeds = { x: { data: new Float32Array(v), dims: d } };
        for (let i = 0; i < 7; i += 1) await session.run(feeds);
        try { await session.run({ y: feeds.x }); } catch (e) { /* counted as InvalidInputError */ }
        return telemetry.queue();
    }""", [x.ravel().tolist(), list(x.shape)])
    [point] = parse_batch(batch).points
    assert (point.model, point.release, point.artifact) == ("digits", 2, described["target"])
    assert point.provider == "wasm" and point.passed_over == "webgpu"
    assert point.latency.count == 7 and point.errors == {"InvalidInputError": 1}
    assert point.load_seconds == pytest.approx(described["loadMs"] / 1e3)
    stats = page.evaluate("() => window.edgekitDemo.session.stats()")
    assert stats["count"] >= 7 and stats["errors"] == 1 and 0 < stats["p50"] <= stats["p99"]
    page.context.close()


def test_the_artifact_suits_the_backend(browser: Any, server: Any, digits_bundle: Path) -> None:
    page, _ = _open_demo(browser, f"{server.url}/demo/?prefer=speed")
    manifest = json.loads((digits_bundle / "bundle.json").read_text())
    wasm_ms = {a["target"]: next(c["latency_p50_ms"] for c in a["runtime_checks"] if c["runtime"].startswith("onnxruntime-web"))
               for a in manifest["artifacts"] if a["format"] == "onnx"}
    fastest = page.evaluate("() => window.edgekitDemo.session.artifact.target")
    assert wasm_ms[fastest] <= min(wasm_ms.values()) * 1.1 + 0.02  # the bundle's wasm figures decide
    choose = """async ([manifest, options]) => {
        const lib = await import('/src/edgekit.js');
        try { return lib.chooseArtifact(manifest, options).artifact.target; } catch (e) { return e.code + ': ' + e.message; }
    }"""
    cases = [({"backend": "webgpu", "shaderF16": True}, "onnx-web-fp16"),
             ({"backend": "webgpu", "shaderF16": False}, "onnx-web"),
             ({"backend": "wasm"}, "onnx-web-int8"),
             ({"backend": "wasm", "target": "onnx-web-int3"}, "target: the bundle has no usable web artifact")]
    for options, expected in cases:
        assert page.evaluate(choose, [manifest, options]).startswith(expected), options
    auto = dict(manifest, selections=[{"family": "onnx-web", "chosen": "onnx-web", "reason": "r"}])
    assert page.evaluate(choose, [auto, {"backend": "wasm"}]) == "onnx-web"  # the accuracy-gated choice wins
    failed = json.loads(json.dumps(manifest))
    for art in failed["artifacts"]:
        if art["target"] == "onnx-web-int8":
            art["parity"]["passed"] = False
    assert page.evaluate(choose, [failed, {"backend": "wasm"}]) == "onnx-web"  # never an artifact that failed parity
    only_fp16 = dict(manifest, artifacts=[a for a in manifest["artifacts"] if a["target"] == "onnx-web-fp16"])
    assert page.evaluate(choose, [only_fp16, {"backend": "wasm"}]) == "onnx-web-fp16"
    # an artifact that passed natively but failed on onnxruntime-web is never taken
    wasm_failed = json.loads(json.dumps(manifest))
    for art in wasm_failed["artifacts"]:
        if art["target"] == "onnx-web-int8":
            art["runtime_checks"][0]["parity"]["passed"] = False
    assert page.evaluate(choose, [wasm_failed, {"backend": "wasm"}]) == "onnx-web"

    def timed(ms: dict[str, float]) -> dict[str, Any]:
        doc = json.loads(json.dumps(manifest))
        for art in doc["artifacts"]:
            art["runtime_checks"][0]["latency_p50_ms"] = ms[art["target"]]
        return doc

    speed = {"backend": "wasm", "prefer": "speed"}
    assert page.evaluate(choose, [timed({"onnx-web": 5.0, "onnx-web-fp16": 9.0, "onnx-web-int8": 2.0}), speed]) == "onnx-web-int8"
    # within timing noise of the fastest: the higher precision
    assert page.evaluate(choose, [timed({"onnx-web": 2.1, "onnx-web-fp16": 9.0, "onnx-web-int8": 2.0}), speed]) == "onnx-web"
    old = json.loads(json.dumps(manifest))  # a bundle from edgekit 0.1: no wasm figures
    for art in old["artifacts"]:
        del art["runtime_checks"]
    assert page.evaluate(choose, [old, speed]) == "onnx-web"
    page.context.close()


def test_a_reload_reads_the_verified_copy_from_the_cache(browser: Any, server: Any) -> None:
    context = browser.new_context()
    artifact = "/bundle/onnx-web-int8.onnx"
    before = server.requests.get(artifact, 0)
    page, first = _open_demo(browser, f"{server.url}/demo/", context)
    assert not first["fromCache"] and server.requests.get(artifact, 0) == before + 1
    page.reload()
    second = page.evaluate("() => window.edgekitDemo.ready")
    assert second["fromCache"] and "from cache" in page.inner_text("#load")
    assert server.requests.get(artifact, 0) == before + 1  # no second download
    # A damaged cache entry is caught by the hash check on read, dropped and downloaded again.
    page.evaluate("""async () => {
        const cache = await caches.open('edgekit-artifacts-v1');
        const key = (await cache.keys())[0];
        await cache.put(key, new Response(new Uint8Array(157801)));
    }""")
    page.reload()
    third = page.evaluate("() => window.edgekitDemo.ready")
    assert not third["fromCache"] and server.requests.get(artifact, 0) == before + 2
    context.close()


def test_a_tampered_artifact_is_refused(browser: Any, bundle_copy: Path) -> None:
    from edgekit.web.server import running

    with running(bundle_copy) as srv:  # the server checks the bundle at start; the file changes after
        path = bundle_copy / "onnx-web-int8.onnx"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        page, described = _open_demo(browser, f"{srv.url}/demo/")
        assert described is None
        error = page.evaluate("() => window.edgekitDemo.error")
        assert error["code"] == "integrity" and "sha256" in error["message"] and "refusing to load it" in error["message"]
        assert "refusing" in page.inner_text("#status") and page.evaluate("() => window.edgekitDemo.session") is None
        cached = page.evaluate("async () => (await (await caches.open('edgekit-artifacts-v1')).keys()).length")
        assert cached == 0  # nothing unverified is cached
        page.context.close()


def test_mismatched_input_is_refused_with_the_expected_spec(browser: Any, server: Any) -> None:
    page, _ = _open_demo(browser, f"{server.url}/demo/")
    cases = {
        "{ x: { data: new Float32Array(64), dims: [1, 8, 8] } }":
            "has shape [1, 8, 8], the model expects [batch, 1, 8, 8] float32",
        "{ x: { data: new Float64Array(64), dims: [1, 1, 8, 8] } }": "is a Float64Array, the model expects float32",
        "{ y: { data: new Float32Array(64), dims: [1, 1, 8, 8] } }": "takes input(s) x; got y (missing x) (unknown y)",
        "{ x: { data: new Float32Array(60), dims: [1, 1, 8, 8] } }": "has 60 values, its shape [1, 1, 8, 8] needs 64",
    }
    for feeds, message in cases.items():
        got = page.evaluate(f"""async () => {{
            try {{ await window.edgekitDemo.runFeeds({feeds}); return null; }}
            catch (e) {{ return {{ name: e.name, code: e.code, message: e.message }}; }} }}""")
        assert got is not None and got["name"] == "EdgekitWebError" and got["code"] == "input", feeds
        assert message in got["message"], got
    page.context.close()


def test_drawing_classifies_and_the_page_renders(browser: Any, server: Any, tmp_path: Path) -> None:
    from PIL import Image

    page, _ = _open_demo(browser, f"{server.url}/demo/", viewport={"width": 1280, "height": 560})
    _draw(page, SEVEN)
    assert page.inner_text("#digit") == "7"
    assert page.locator("#bars li").count() == 10 and "ms" in page.inner_text("#latency")
    _draw(page, ZERO)
    assert page.inner_text("#digit") == "0"
    shot = Image.open(io.BytesIO(page.screenshot())).convert("L")
    pixels = np.asarray(shot, dtype=np.float32)
    assert pixels.std() > 20  # not blank: dark canvas, white ink, text on light cards
    box = page.locator("#pad").bounding_box()
    canvas = pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    assert (canvas > 200).mean() > 0.02 and (canvas < 30).mean() > 0.5  # the drawn zero is on screen
    page.context.close()


def test_touch_draws_too(browser: Any, server: Any) -> None:
    page, _ = _open_demo(browser, f"{server.url}/demo/", has_touch=True)
    box = page.locator("#pad").bounding_box()
    page.touchscreen.tap(box["x"] + 140, box["y"] + 140)
    page.wait_for_function("() => document.getElementById('digit').textContent !== '–'")
    ink = page.evaluate("""() => { const c = document.getElementById('pad');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 200; return n; }""")
    assert ink > 300  # a finger tap leaves a dot (pointer events cover touch)
    page.context.close()


def test_the_file_picker_loads_another_bundle(browser: Any, server: Any, tmp_path: Path) -> None:
    other = tmp_path / "other"
    result = run_cli("convert", DIGITS / "digits.onnx", "-t", "onnx-web", "--name", "digits-picked",
                     "--version", "2.0.0", "--no-report", "--out", other)
    assert result.exit_code == 0, result.output
    page, _ = _open_demo(browser, f"{server.url}/demo/")
    page.set_input_files("#picker", [str(other / "bundle.json")])
    page.wait_for_function("() => document.getElementById('status').className === 'error'")
    assert "pick onnx-web.onnx together with bundle.json" in page.inner_text("#status")
    page.set_input_files("#picker", [str(other / "bundle.json"), str(other / "onnx-web.onnx")])
    page.wait_for_function("() => document.getElementById('model').textContent === 'digits-picked 2.0.0'")
    assert page.inner_text("#artifact").startswith("onnx-web (fp32")
    _draw(page, SEVEN)
    assert page.inner_text("#digit") == "7"
    page.context.close()


# --- the server, without a browser --------------------------------------------------------------------


def _get(server: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def test_server_headers_ranges_etags_and_refusals(server: Any, digits_bundle: Path) -> None:
    status, headers, body = _get(server, "/bundle/onnx-web-int8.onnx")
    data = (digits_bundle / "onnx-web-int8.onnx").read_bytes()
    assert status == 200 and body == data
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert headers["accept-ranges"] == "bytes"
    status, part_headers, part = _get(server, "/bundle/onnx-web-int8.onnx", {"Range": "bytes=100-199"})
    assert status == 206 and part == data[100:200] and part_headers["content-range"] == f"bytes 100-199/{len(data)}"
    status, _, tail = _get(server, "/bundle/onnx-web-int8.onnx", {"Range": "bytes=-10"})
    assert status == 206 and tail == data[-10:]
    assert _get(server, "/bundle/onnx-web-int8.onnx", {"Range": f"bytes={len(data)}-"})[0] == 416
    assert _get(server, "/bundle/onnx-web-int8.onnx", {"If-None-Match": headers["etag"]})[0] == 304
    assert _get(server, "/ort/ort-wasm-simd-threaded.wasm")[1]["content-type"] == "application/wasm"
    for bad in ("/bundle/../pyproject.toml", "/bundle/%2e%2e/%2e%2e/pyproject.toml", "/src/../server.py",
                "/ort/ort.all.min.js", "/ort/../package.json", "/etc/passwd"):
        assert _get(server, bad)[0] == 404, bad
    status, redirect, _ = _get(server, "/?target=onnx-web")
    assert status == 302 and redirect["location"] == "/demo/?target=onnx-web"


def test_edgekit_web_refuses_what_it_cannot_serve(tmp_path: Path, digits_bundle: Path) -> None:
    not_bundle = run_cli("web", DIGITS)
    assert not_bundle.exit_code == 2 and "has no bundle.json" in not_bundle.stderr
    no_ort = run_cli("web", digits_bundle, "--ort-dir", tmp_path)
    assert no_ort.exit_code == 2 and "npm ci --prefix web" in no_ort.stderr
    web_less = tmp_path / "b"
    shutil.copytree(digits_bundle, web_less)
    manifest = json.loads((web_less / "bundle.json").read_text())
    for art in manifest["artifacts"]:
        art["target"] = art["target"].replace("onnx-web", "onnx-desktop")
    (web_less / "bundle.json").write_text(json.dumps(manifest))
    refused = run_cli("web", web_less)
    assert refused.exit_code == 2, refused.output
    assert "no onnx-web artifact" in refused.stderr or "onnx-desktop" in refused.stderr


def _nhwc_image_model(path: Path) -> Path:
    """A channels-last image classifier: mean colour per channel -> 4 class scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])],
        "nhwc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 24, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])], [weights, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _token_model(path: Path) -> Path:
    """A token-id model: embedding lookup, mean over the sequence, 3 outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "table")
    head = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "head")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
         helper.make_node("ReduceMean", ["vectors", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "head"], ["scores"])],
        "tokens", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])], [table, head, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _shown_outputs(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all("#outputs tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))")


def test_the_demo_takes_a_channels_last_image_bundle(browser: Any, tmp_path: Path) -> None:
    import onnxruntime as ort
    from PIL import Image

    from edgekit.web.server import running

    out = tmp_path / "nhwc"
    model = _nhwc_image_model(tmp_path / "nhwc.onnx")
    result = run_cli("convert", model, "-t", "onnx-web", "--no-report", "--out", out)
    assert result.exit_code == 0, result.output
    picture = tmp_path / "red.png"
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[..., 0] = 230  # mostly red, a blue band
    pixels[20:30, :, 2] = 200
    Image.fromarray(pixels).save(picture)
    with running(out) as srv:
        page, described = _open_demo(browser, f"{srv.url}/demo/")
        assert described is not None and "NHWC 24x32x3" in page.inner_text("#intro")
        assert page.is_visible("#pad") and not page.is_visible("#form-box")
        page.set_input_files("#image", str(picture))
        page.wait_for_function("() => window.edgekitDemo.lastFeeds !== null")
        page.wait_for_function("() => ['ready', 'error'].includes(document.getElementById('status').textContent) || "
                               "document.getElementById('status').className === 'error'")
        assert page.inner_text("#status") == "ready", page.inner_text("#status")
        feeds = page.evaluate("() => { const f = window.edgekitDemo.lastFeeds.image; "
                              "return {data: Array.from(f.data), dims: f.dims}; }")
        assert feeds["dims"] == [1, 24, 32, 3]
        x = np.asarray(feeds["data"], np.float32).reshape(feeds["dims"])
        assert abs(float(x[..., 0].mean()) - 230 / 255) < 0.02 and x[..., 1].max() < 0.02  # channels last, resized
        expected = ort.InferenceSession(str(out / "onnx-web.onnx")).run(None, {"image": x})[0]
        (row,) = _shown_outputs(page)
        assert row[0] == "probs" and row[1] == "[1, 4]" and row[3] == str(int(expected.argmax()))
        shown = np.array([float(v) for v in row[2].split(", ")])
        assert np.allclose(shown, expected[0], atol=1e-3), (shown, expected)
        assert page.inner_text("#digit") == str(int(expected.argmax()))
        page.context.close()


def test_the_demo_takes_a_token_input_bundle(browser: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    from edgekit.web.server import running

    out = tmp_path / "tokens"
    model = _token_model(tmp_path / "tokens.onnx")
    np.savez(tmp_path / "cal.npz", input_ids=np.random.default_rng(2).integers(0, 32, (16, 6)))
    result = run_cli("convert", model, "-t", "onnx-web", "--calibration", tmp_path / "cal.npz", "--no-report",
                     "--out", out)
    assert result.exit_code == 0, result.output
    with running(out) as srv:
        page, described = _open_demo(browser, f"{srv.url}/demo/")
        assert described is not None
        assert page.is_visible("#form-box") and not page.is_visible("#pad")
        assert "input_ids [batch, seq] int64" in page.inner_text("#tensor-form")
        page.fill("#tensor-form textarea[name=input_ids]", "1, 5, 7, 2, 31")
        page.evaluate("() => { window.edgekitDemo.lastFeeds = null; }")
        page.click("#run-form")
        page.wait_for_function("() => window.edgekitDemo.lastFeeds !== null")
        page.wait_for_function("() => document.getElementById('status').textContent === 'ready'")
        expected = ort.InferenceSession(str(out / "onnx-web.onnx")).run(
            None, {"input_ids": np.array([[1, 5, 7, 2, 31]], np.int64)})[0]
        (row,) = _shown_outputs(page)
        assert row[0] == "scores" and row[1] == "[1, 3]"
        assert np.allclose([float(v) for v in row[2].split(", ")], expected[0], atol=1e-3)
        page.fill("#tensor-form textarea[name=input_ids]", "1, x")
        page.click("#run-form")
        page.wait_for_function("() => document.getElementById('status').className === 'error'")
        assert "not a number" in page.inner_text("#status")
        page.context.close()
