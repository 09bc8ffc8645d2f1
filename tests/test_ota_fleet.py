"""Fleet monitoring on loopback: devices send what their sessions did (OTLP JSON batches through the
outbox), the service adds it up per release and device class, and a rollout guard halts a canary that
is slower on one class. Real installs, real sessions on onnxruntime, a real HTTP service."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.errors import TelemetryError
from edgekit.histogram import LatencyHistogram
from edgekit.ota import telemetry
from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from tests.conftest import DIGITS, ROOT, run_cli
from tests.ota_helpers import LiveServer

pytest.importorskip("tuf")
pytest.importorskip("fastapi")

FLEET = 200
BASE_MS, SLOW = 2.0, 1.5  # every device's runs take about 2 ms; the canary on the "low" class 1.5x that
MIN_DEVICES = 8
RUNS = 30


# -- the histogram and the batch format --------------------------------------------------------------


def test_histograms_merge_and_round_trip_through_the_otlp_form_exactly() -> None:
    rng = np.random.default_rng(0)
    a, b = LatencyHistogram(), LatencyHistogram()
    for ns in rng.lognormal(14, 1, 500).astype(int):
        a.add(int(ns))
    for ns in rng.lognormal(15, 0.5, 300).astype(int):
        b.add(int(ns))
    merged = a.copy().merge(b)
    assert merged.count == 800 and merged.counts == [x + y for x, y in zip(a.counts, b.counts, strict=True)]
    back = LatencyHistogram.from_explicit(*(merged.to_explicit()[k] for k in ("bucketCounts", "explicitBounds", "sum",
                                                                              "min", "max")))  # type: ignore[arg-type]
    assert back.counts == merged.counts and back.count == merged.count
    assert [back.percentile(q) for q in (50, 95, 99)] == [merged.percentile(q) for q in (50, 95, 99)]
    assert merged.since(a).counts == b.counts  # the delta a batch carries


def _batch(**change: Any) -> dict[str, Any]:
    h = LatencyHistogram()
    for ns in (1_000_000, 2_000_000, 2_100_000):
        h.add(ns)
    point = telemetry.Point("digits", "stable", 1, "onnx-web", "CPUExecutionProvider", "", h, {"InferenceError": 1}, 0.01)
    batch = telemetry.make_batch("device-1", {"os.type": "linux", "host.arch": "amd64", "edgekit.accelerator": "none",
                                              "edgekit.device.tier": "low"}, [point], start_ns=1, end_ns=2)
    dp = batch["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]["dataPoints"][0]
    dp.update(change)
    return batch


def test_a_batch_parses_to_what_the_device_recorded() -> None:
    parsed = telemetry.parse_batch(json.loads(json.dumps(_batch())))
    assert parsed.device_id == "device-1" and parsed.device_class == "linux/amd64/none/low"
    (p,) = parsed.points
    assert (p.model, p.release, p.provider, p.errors, p.load_seconds) == ("digits", 1, "CPUExecutionProvider",
                                                                           {"InferenceError": 1}, 0.01)
    assert p.latency.count == 3 and p.latency.percentile(50) == pytest.approx(2.0, rel=0.125)


@pytest.mark.parametrize(("change", "says"), [
    ({"count": "4"}, "not the sum of its bucket counts"),
    ({"bucketCounts": ["1", "-2"]}, "non-negative integer"),
    ({"explicitBounds": [0.002, 0.001]}, "len(bucketCounts) == len(explicitBounds) + 1"),
    ({"sum": float("nan")}, "finite"),
    ({"attributes": []}, "must name edgekit.model"),
])
def test_malformed_batches_are_refused_with_the_reason(change: dict[str, Any], says: str) -> None:
    with pytest.raises(TelemetryError, match="refused") as caught:
        telemetry.parse_batch(_batch(**change))
    assert says in str(caught.value)


# -- the fleet on loopback ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer]:
    from edgekit.ota.service.guards import Limits

    live = LiveServer(tmp_path / "server", ota_keys, limits=Limits(telemetry_per_device_per_min=600))
    yield live
    live.stop()


def _publish(server: LiveServer, bundle: Path, percent: float) -> dict[str, Any]:
    return call(server.url, "POST", f"/v1/models/digits/channels/stable/releases?basis_points={round(percent * 100)}",
                token=server.token("publish"), data=bundle_tar(bundle), content_type="application/x-tar")


def _slowed(session: Any, ms: float) -> Any:
    """The delay injected in the device's runtime: each run takes about ``ms`` more."""
    run = session._run

    def slow(feeds: Any) -> Any:
        time.sleep(ms / 1e3)
        return run(feeds)

    session._run = slow
    return session


def _post(url: str, body: bytes, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"content-type": "application/json",
                                                 **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, ota_keys: Path, ota_bundles: dict[str, Path]) -> Iterator[Any]:
    """200 devices on two classes: release 1 everywhere, release 2 to 20% with a guard, 1.5x slower on
    the "low" class; devices run and report (baseline first, then the canary's "high" devices, then its
    "low" ones until the rollout halts)."""
    from edgekit.ota.service.guards import Limits

    tmp = tmp_path_factory.mktemp("fleet")
    # one address enrols the whole fleet here: lift that limit, which is per address
    server = LiveServer(tmp / "server", ota_keys, limits=Limits(telemetry_per_device_per_min=600,
                                                                enrolments_per_address_per_min=60_000))
    root = server.service.repo.root_bytes()
    operator = server.token("rollout")
    call(server.url, "PUT", "/v1/models/digits/channels/stable/guard", token=operator,
         body={"p95_ratio": 1.2, "error_rate": 0.01, "min_devices": MIN_DEVICES})
    _publish(server, ota_bundles["v1"], 100)
    devices = [Updater(server.url, tmp / "d" / str(i), f"device-{i}", root, enrolment_token=server.enrolment(),
                       device_tier="low" if i % 2 else "high", device_class={"edgekit.accelerator": "none"})
               for i in range(FLEET)]
    assert {d.update("digits", "stable").status for d in devices} == {"installed"}
    _publish(server, ota_bundles["v2"], 20)
    statuses = [d.update("digits", "stable").status for d in devices]
    canary = [i for i, s in enumerate(statuses) if s == "installed"]
    assert 0.12 * FLEET < len(canary) < 0.28 * FLEET  # the 20% rollout
    x = np.load(DIGITS / "digits.npz")["x"][:1]

    def run(i: int) -> bool:
        """Device i runs its model and sends its batch; whether the rollout is halted after it."""
        d = devices[i]
        slow = SLOW if i in canary and i % 2 else 1.0
        session = _slowed(d.open("digits"), BASE_MS * slow)
        for _ in range(RUNS):
            session.run({"x": x})
        assert d.send_telemetry(force=True) == 1
        return bool(server.registry.latest("digits", "stable").halted)

    halted_early = any(run(i) for i in range(FLEET) if i not in canary)  # the baseline: release 1 elsewhere
    high, low = [i for i in canary if i % 2 == 0], [i for i in canary if i % 2]
    assert len(high) >= MIN_DEVICES and len(low) >= MIN_DEVICES + 2
    halted_early = halted_early or any(run(i) for i in high)  # the class the canary is not slower on
    slow_batches = 0
    for i in low:
        slow_batches += 1
        if run(i):
            break
    try:
        yield {"server": server, "operator": operator, "devices": devices, "high": high, "x": x,
               "halted_early": halted_early, "slow_batches": slow_batches}
    finally:
        server.stop()


@pytest.mark.slow
def test_a_guard_halts_a_canary_slower_on_one_device_class(fleet: dict[str, Any]) -> None:
    server, operator, high, x = fleet["server"], fleet["operator"], fleet["high"], fleet["x"]
    assert not fleet["halted_early"]  # neither the baseline nor the class the canary is not slower on halts it
    latest = server.registry.latest("digits", "stable")
    assert latest.halted and latest.release == 2
    assert latest.halted_reason.startswith("automatic: on linux/") and "/none/low release 2's P95" in latest.halted_reason
    assert fleet["slow_batches"] <= MIN_DEVICES + 2  # halted as soon as the guard had its devices

    status = call(server.url, "GET", "/v1/models/digits/channels/stable/fleet", token=operator)
    verdicts = {c["device_class"].rsplit("/", 1)[1]: c for c in status["comparison"]["classes"]}
    assert verdicts["low"]["verdict"] == "p95 over the guard" and verdicts["low"]["p95_ratio"] > 1.2
    assert verdicts["high"]["verdict"] == "ok" and verdicts["high"]["p95_ratio"] < 1.2
    assert verdicts["low"]["baseline"]["devices"] >= 70 and verdicts["low"]["baseline"]["inferences"] >= 70 * RUNS
    assert verdicts["high"]["canary_providers"] == {"CPUExecutionProvider": len(high) * RUNS}
    assert status["series"]["2"] and status["series"]["2"][-1]["p95_ms"] > 0
    # the other class runs on, unaffected: its canary devices keep release 2 and it loads
    devices = fleet["devices"]
    assert {devices[i].state("digits").active for i in high} == {2}
    assert devices[high[0]].open("digits").run({"x": x})["logits"].shape == (1, 10)

    shown = run_cli("ota", "status", "--server", server.url, "--model", "digits", "--channel", "stable",
                    "--token", operator)
    assert shown.exit_code == 0, shown.output
    assert "halted: automatic: on linux/" in shown.output and "p95 over the guard" in shown.output

    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/metrics",
                                                       headers={"authorization": f"Bearer {operator}"})) as r:
        text = r.read().decode()
    low = [line for line in text.splitlines()
           if line.startswith("edgekit_fleet_inference_duration_seconds_count") and 'release="2"' in line
           and "/low" in line]
    assert low and float(low[0].rsplit(" ", 1)[1]) >= MIN_DEVICES * RUNS
    assert 'edgekit_fleet_inference_latency_seconds{' in text


@pytest.mark.slow
def test_the_dashboard_plots_the_fleet_in_chromium_from_this_origin_only(fleet: dict[str, Any], browser: Any) -> None:
    server, operator = fleet["server"], fleet["operator"]
    status = call(server.url, "GET", "/v1/models/digits/channels/stable/fleet", token=operator)
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{server.url}/dashboard?model=digits&channel=stable#token={operator}")
    page.wait_for_selector("body[data-state=ready]", timeout=15_000)
    assert "#token" not in page.url  # the token left the address bar

    def plotted(chart: str) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for release, t, v in page.eval_on_selector_all(
                f'svg[data-chart="{chart}"] circle',
                "els => els.map(e => [e.dataset.release, Number(e.dataset.time), Number(e.dataset.value)])"):
            out.setdefault(release, []).append((t, v))
        return out

    def expected(series: dict[str, list[dict[str, Any]]], key: str) -> dict[str, list[tuple[int, float]]]:
        return {r: [(p["time"], p[key]) for p in points] for r, points in series.items() if points}

    assert plotted("all-p95_ms") == expected(status["series"], "p95_ms") and set(plotted("all-p95_ms")) == {"1", "2"}
    assert plotted("all-error_rate") == expected(status["series"], "error_rate")
    low = next(c for c in status["series_by_class"] if c.endswith("/low"))
    assert plotted(f"class-p95_ms-{low}") == expected(status["series_by_class"][low], "p95_ms")
    canary_p95 = max(v for _, v in plotted(f"class-p95_ms-{low}")["2"])
    assert canary_p95 > 1.2 * max(v for _, v in plotted(f"class-p95_ms-{low}")["1"])  # the slowdown, as plotted
    # every point lies inside its chart
    for cx, cy in page.eval_on_selector_all("svg circle", "els => els.map(e => [e.cx.baseVal.value, e.cy.baseVal.value])"):
        assert 0 < cx < 520 and 0 < cy < 190
    assert "Rollout halted: automatic: on linux/" in page.inner_text("#halted")
    assert page.inner_text(f'tr[data-class="{low}"] td:nth-child(2)') == "p95 over the guard"
    assert "CPUExecutionProvider" in page.inner_text(f'tr[data-class="{low}"]')
    assert requested and all(u.startswith(server.url + "/") for u in requested), requested
    page.close()

    with urllib.request.urlopen(f"{server.url}/dashboard") as r:
        policy = r.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy and b"operator token" in r.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}/dashboard/..%2Fapp.py")
    assert missing.value.code == 404


PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_fleet_figures(fleet: dict[str, Any], tmp_path: Path) -> None:
    """examples/prometheus/prometheus.yml as it is (token file, interval and target changed) in Debian's
    Prometheus: what it stores is what the service counted."""
    server, operator = fleet["server"], fleet["operator"]
    (tmp_path / "token").write_text(server.token("read") + "\n")
    config = (ROOT / "examples/prometheus/prometheus.yml").read_text()
    config = (config.replace("/etc/prometheus/edgekit-ota.token", str(tmp_path / "token"))
              .replace("scrape_interval: 15s", "scrape_interval: 1s")
              .replace('"127.0.0.1:8080"', f'"{server.url.removeprefix("http://")}"'))
    (tmp_path / "prometheus.yml").write_text(config)
    port = _free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def query(q: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    try:
        deadline = time.time() + 30
        while True:
            try:
                if query('edgekit_fleet_inferences_total{model="digits"}'):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"Prometheus held no fleet figures: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.25)
        (up,) = query('up{job="edgekit-ota"}')
        assert up["value"][1] == "1"
        status = call(server.url, "GET", "/v1/models/digits/channels/stable/fleet", token=operator)
        by_class = {c["device_class"]: c for c in status["comparison"]["classes"]}
        stored = {(r["metric"]["release"], r["metric"]["device_class"]): float(r["value"][1])
                  for r in query('sum by (release, device_class) (edgekit_fleet_inferences_total{model="digits"})')}
        for cls, c in by_class.items():
            assert stored[("2", cls)] == c["canary"]["inferences"] and stored[("1", cls)] == c["baseline"]["inferences"]
        counted = {(r["metric"]["release"], r["metric"]["device_class"]): float(r["value"][1]) for r in
                   query('sum by (release, device_class) (edgekit_fleet_inference_duration_seconds_count)')}
        assert counted == stored
        low = next(c for c in by_class if c.endswith("/low"))
        p95 = {r["metric"]["release"]: float(r["value"][1]) for r in query(
            f'histogram_quantile(0.95, sum by (le, release) '
            f'(edgekit_fleet_inference_duration_seconds_bucket{{device_class="{low}"}}))')}
        assert p95["2"] > 1.2 * p95["1"]  # the canary's slowdown, as Prometheus computes it from the buckets
        (ours,) = query(f'edgekit_fleet_inference_latency_seconds{{quantile="0.95", release="2", device_class="{low}"}}')
        assert float(ours["value"][1]) == pytest.approx(by_class[low]["canary"]["p95_ms"] / 1e3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_service_refuses_bad_and_implausible_batches(server: LiveServer, ota_bundles: dict[str, Path],
                                                         tmp_path: Path) -> None:
    _publish(server, ota_bundles["v1"], 100)
    root = server.service.repo.root_bytes()
    d = Updater(server.url, tmp_path / "d", "device-1", root, enrolment_token=server.enrolment())
    d.update("digits", "stable")
    token = d.outbox.device_token()
    url = f"{server.url}/v1/telemetry"
    good = json.dumps(_batch()).encode()
    assert _post(url, good, None)[0] == 401
    code, body = _post(url, good, token)
    assert code == 200, body
    assert _post(url, b"{not json", token)[0] == 400
    code, body = _post(url, json.dumps(_batch(count="9")).encode(), token)
    assert code == 422 and "not the sum of its bucket counts" in body
    assert _post(url, b" " * (telemetry.MAX_BYTES + 1), token)[0] == 413
    other = json.loads(good)
    other["resourceMetrics"][0]["resource"]["attributes"][0]["value"]["stringValue"] = "device-2"
    code, body = _post(url, json.dumps(other).encode(), token)
    assert code == 403 and "device-2" in body
    unknown = json.loads(good)
    attrs = unknown["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]["dataPoints"][0]["attributes"]
    next(a for a in attrs if a["key"] == "edgekit.release")["value"] = {"intValue": "7"}
    code, body = _post(url, json.dumps(unknown).encode(), token)
    assert code == 422 and "no release 7" in body
    _publish(server, ota_bundles["v2"], 0)  # release 2 offered to nobody
    next(a for a in attrs if a["key"] == "edgekit.release")["value"] = {"intValue": "2"}
    code, body = _post(url, json.dumps(unknown).encode(), token)
    assert code == 403 and "not offered" in body


def _failing(session: Any, every: int) -> Any:
    """Injected in the device's runtime: every ``every``-th run raises, as a broken kernel would."""
    run, calls = session._run, [0]

    def flaky(feeds: Any) -> Any:
        calls[0] += 1
        if calls[0] % every == 0:
            raise RuntimeError("injected kernel failure")
        return run(feeds)

    session._run = flaky
    return session


def test_a_guard_halts_a_canary_whose_runs_fail(server: LiveServer, ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    """The error-rate half of a guard: a canary failing 5% of its runs (the baseline none) halts at 1%."""
    operator = server.token("rollout")
    call(server.url, "PUT", "/v1/models/digits/channels/stable/guard", token=operator,
         body={"p95_ratio": None, "error_rate": 0.01, "min_devices": 4})
    _publish(server, ota_bundles["v1"], 100)
    root = server.service.repo.root_bytes()
    devices = [Updater(server.url, tmp_path / str(i), f"device-{i}", root, enrolment_token=server.enrolment())
               for i in range(24)]
    assert {d.update("digits", "stable").status for d in devices} == {"installed"}
    _publish(server, ota_bundles["v2"], 50)
    canary = [i for i, d in enumerate(devices) if d.update("digits", "stable").status == "installed"]
    assert len(canary) >= 5
    x = np.load(DIGITS / "digits.npz")["x"][:1]

    def run(i: int, fail_every: int | None) -> bool:
        session = devices[i].open("digits")
        if fail_every:
            session = _failing(session, fail_every)
        for _ in range(40):
            try:
                session.run({"x": x})
            except RuntimeError:
                pass
        assert devices[i].send_telemetry(force=True) == 1
        return bool(server.registry.latest("digits", "stable").halted)

    assert not any(run(i, None) for i in range(24) if i not in canary)  # the baseline runs clean
    batches = 0
    for i in canary:
        batches += 1
        if run(i, 20):
            break
    latest = server.registry.latest("digits", "stable")
    assert latest.halted and batches == 4  # halted by the batch that gave the guard its 4th device
    assert "failed" in latest.halted_reason and "guard: at most 1.00%" in latest.halted_reason
    [cls] = call(server.url, "GET", "/v1/models/digits/channels/stable/fleet", token=operator)["comparison"]["classes"]
    assert cls["verdict"] == "error rate over the guard"
    assert cls["canary"]["error_kinds"] == {"RuntimeError": 4 * 2} and cls["canary"]["error_rate"] == pytest.approx(0.05)
    assert cls["baseline"]["errors"] == 0
