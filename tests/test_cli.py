"""The CLI contract: the quick start's bundle, inspect, targets, and exit code 2 for user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WEB_TARGETS, run_cli


def test_quick_start_bundle_meets_the_size_and_agreement_bar(digits_bundle: Path) -> None:
    result = run_cli("inspect", digits_bundle, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    arts = {(a["target"], a["format"]): a for a in manifest["artifacts"]}
    fp32, int8 = arts[("onnx-web", "onnx")], arts[("onnx-web-int8", "onnx")]
    assert int8["size_bytes"] <= 0.30 * fp32["size_bytes"]
    assert int8["size_ratio"] == pytest.approx(int8["size_bytes"] / fp32["size_bytes"], abs=1e-3)
    assert int8["parity"]["top1_agreement"] >= 0.99
    assert int8["parity"]["n_samples"] == 360
    assert int8["accuracy"]["source_top1"] > 0.95
    assert "static QDQ" in int8["conversion"]["method"]
    assert {t for t, _ in arts} == set(WEB_TARGETS)


def test_web_artifacts_load_in_onnxruntime_web_ir_range(digits_bundle: Path) -> None:
    import onnx

    for path in digits_bundle.glob("*.onnx"):
        model = onnx.load(str(path))
        assert model.ir_version <= 13, path.name
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_inspect_prints_a_table(digits_bundle: Path) -> None:
    result = run_cli("inspect", digits_bundle)
    assert result.exit_code == 0
    assert "all artifacts verified" in result.stdout and "onnx-web-int8" in result.stdout


def test_targets_lists_ids_and_extras() -> None:
    result = run_cli("targets")
    assert result.exit_code == 0
    for t in WEB_TARGETS:
        assert t in result.stdout
    assert "yes" in result.stdout
    tflite_row = next(line for line in result.stdout.splitlines() if line.startswith("tflite-int8 "))
    assert tflite_row.split()[2] == "tflite"  # the one extra to install, not the ones it brings


def _convert(tmp_path: Path, model: Path, *extra: str):
    out = tmp_path / "out"
    result = run_cli("convert", model, "--target", "onnx-web-int8", "--out", out, *extra)
    return result, out


def _assert_user_error(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out")] == []


def test_missing_model_file(tmp_path: Path) -> None:
    result, out = _convert(tmp_path, tmp_path / "nope.onnx")
    _assert_user_error(result, out, "does not exist")


def test_truncated_onnx(tmp_path: Path, digits_onnx: Path) -> None:
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(digits_onnx.read_bytes()[:5000])
    result, out = _convert(tmp_path, bad)
    _assert_user_error(result, out, "not a valid ONNX model", "re-export")


def test_text_file_named_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 20)
    result, out = _convert(tmp_path, bad)
    _assert_user_error(result, out, "not a valid ONNX model")


def test_unsupported_file_kind(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 10)
    result, out = _convert(tmp_path, bad)
    _assert_user_error(result, out, "cannot read", ".onnx")


def test_calibration_missing_an_input(tmp_path: Path, digits_onnx: Path) -> None:
    npz = tmp_path / "cal.npz"
    np.savez(npz, images=np.zeros((4, 1, 8, 8), np.float32))
    result, out = _convert(tmp_path, digits_onnx, "--calibration", npz)
    _assert_user_error(result, out, "no array for the model input 'x'", "images")


def test_calibration_with_a_wrong_shape(tmp_path: Path, digits_onnx: Path) -> None:
    npz = tmp_path / "cal.npz"
    np.savez(npz, x=np.zeros((4, 1, 9, 9), np.float32))
    result, out = _convert(tmp_path, digits_onnx, "--calibration", npz)
    _assert_user_error(result, out, "size 8 on axis 2")


def test_unknown_route(tmp_path: Path, digits_onnx: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", digits_onnx, "--target", "tflite", "--via", "tflite-direct", "--out", out)
    _assert_user_error(result, out, "unknown route 'tflite-direct'", "litert-torch")


def test_unknown_target(tmp_path: Path, digits_onnx: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", digits_onnx, "--target", "tflite-int3", "--out", out)
    _assert_user_error(result, out, "unknown target 'tflite-int3'", "onnx-web-int8")


def test_tampered_bundle_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "onnx-web-fp16.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    result = run_cli("inspect", bundle_copy, "--json")
    assert result.exit_code == 2
    assert "sha256" in result.stderr and "convert the bundle again" in result.stderr
    assert result.stdout == ""


def test_existing_output_needs_overwrite(tmp_path: Path, digits_onnx: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("convert", digits_onnx, "--target", "onnx-web", "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_no_calibration_uses_dynamic_int8_and_generated_inputs(tmp_path: Path, digits_onnx: Path) -> None:
    result, out = _convert(tmp_path, digits_onnx)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "bundle.json").read_text())
    art = manifest["artifacts"][0]
    assert "dynamic" in art["conversion"]["method"]
    assert art["parity"]["n_samples"] == 8 and "accuracy" not in art
    assert "calibration" not in manifest


def test_bad_flag_is_exit_code_2(tmp_path: Path, digits_onnx: Path) -> None:
    result = run_cli("convert", digits_onnx, "--frobnicate")
    assert result.exit_code == 2


def test_run_prints_outputs_and_the_provider(tmp_path: Path, digits_bundle: Path, digits_npz: Path) -> None:
    data = np.load(digits_npz)
    np.save(tmp_path / "x.npy", data["x"][:4].astype(np.float64))  # float64 is cast to the model's float32
    result = run_cli("run", digits_bundle, "--input", tmp_path / "x.npy", "--target", "onnx-web")
    assert result.exit_code == 0, result.output
    assert "provider: CPUExecutionProvider" in result.stdout and "logits: shape [4, 10]" in result.stdout
    as_json = run_cli("run", digits_bundle, "--input", digits_npz, "--json", "--providers", "nosuch,cpu")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    logits = np.array(report["outputs"]["logits"]["values"])
    assert (logits.argmax(1) == data["y"]).mean() > 0.95
    assert report["attempts"][0] == {"provider": "nosuch", "ok": False,
                                     "reason": report["attempts"][0]["reason"]} and report["provider"] == "CPUExecutionProvider"
    bad = run_cli("run", digits_bundle, "--input", tmp_path / "missing.npy")
    assert bad.exit_code == 2 and "does not exist" in bad.stderr
    np.save(tmp_path / "wrong.npy", np.zeros((2, 8, 8), np.float32))
    wrong = run_cli("run", digits_bundle, "--input", tmp_path / "wrong.npy", "--target", "onnx-web")
    assert wrong.exit_code == 2 and "refused the inputs" in wrong.stderr and "Traceback" not in wrong.output


def test_bench_measures_every_artifact(digits_bundle: Path) -> None:
    result = run_cli("bench", digits_bundle, "--runs", "20", "--warmup", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {(r["target"], r["format"]) for r in rows} >= {("onnx-web", "onnx"), ("onnx-web-int8", "onnx")}
    for r in rows:
        assert r["error"] == "" and r["runs"] == 20 and r["provider"] == "CPUExecutionProvider"
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["load_ms"] > 0
    table = run_cli("bench", digits_bundle, "--runs", "5", "--target", "onnx-web-int8")
    assert table.exit_code == 0 and "p99 ms" in table.stdout and "onnx-web-int8" in table.stdout


def test_every_help_renders() -> None:
    """`--help` on every command and sub-command exits 0 (a rich markup error once crashed two of them)."""
    import typer.main

    from edgekit.cli import app

    group = typer.main.get_command(app)
    paths: list[list[str]] = [[]]
    stack: list[tuple[list[str], object]] = [([], group)]
    while stack:
        path, command = stack.pop()
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*path, name])
            stack.append(([*path, name], sub))
    assert len(paths) > 15
    for path in paths:
        result = run_cli(*path, "--help")
        assert result.exit_code == 0, (path, result.output[-500:])
        assert "Usage" in result.output


def test_version_and_global_verbosity_flags() -> None:
    from edgekit import __version__

    for args in (["--version"], ["-q", "--version"]):
        result = run_cli(*args)
        assert result.exit_code == 0 and result.stdout.strip() == f"edgekit {__version__}", result.output
    quiet = run_cli("-q", "targets")
    assert quiet.exit_code == 0 and "onnx-web-int8" in quiet.stdout


def _digits_calibration(tmp_path: Path, digits_npz: Path, **change: np.ndarray) -> Path:
    with np.load(digits_npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(change)
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)
    return path


def test_calibration_given_as_npy_is_named(tmp_path: Path, digits_onnx: Path) -> None:
    npy = tmp_path / "cal.npy"
    np.save(npy, np.zeros((16, 1, 8, 8), np.float32))
    result, out = _convert(tmp_path, digits_onnx, "--calibration", npy)
    _assert_user_error(result, out, ".npy", "numpy.savez")


def test_calibration_with_nan_is_refused(tmp_path: Path, digits_onnx: Path, digits_npz: Path) -> None:
    x = np.load(digits_npz)["x"].copy()
    x[3, 0, 2, 2] = np.nan
    x[5, 0, 1, 1] = np.inf
    result, out = _convert(tmp_path, digits_onnx, "--calibration", _digits_calibration(tmp_path, digits_npz, x=x))
    _assert_user_error(result, out, "2 NaN or infinite values", "'x'")
    all_nan = np.full((16, 1, 8, 8), np.nan, np.float32)
    result, out = _convert(tmp_path, digits_onnx, "--calibration", _digits_calibration(tmp_path, digits_npz, x=all_nan,
                                                                                         y=np.zeros(16, np.int64)))
    _assert_user_error(result, out, "NaN or infinite")


def test_one_sample_calibration_is_refused(tmp_path: Path, digits_onnx: Path, digits_npz: Path) -> None:
    with np.load(digits_npz) as data:
        x, y = data["x"][:1], data["y"][:1]
    result, out = _convert(tmp_path, digits_onnx, "--calibration", _digits_calibration(tmp_path, digits_npz, x=x, y=y))
    _assert_user_error(result, out, "holds 1 sample", "at least 2")


@pytest.mark.parametrize(("flags", "words"), [
    (["--max-accuracy-drop", "-5"], ["--max-accuracy-drop -5 is out of range"]),
    (["--min-agreement", "1.5"], ["--min-agreement 1.5 is out of range"]),
    (["--max-error", "0"], ["--max-error 0 is out of range"]),
    (["--optimize", "fast"], ["--optimize must be balanced or size"]),
])
def test_budgets_out_of_range(tmp_path: Path, digits_onnx: Path, flags: list[str], words: list[str]) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", digits_onnx, "-t", "onnx-web-auto", "--out", out, *flags)
    _assert_user_error(result, out, *words)


def test_budget_flags_need_what_they_measure(tmp_path: Path, digits_onnx: Path, digits_npz: Path) -> None:
    out = tmp_path / "out"
    no_auto = run_cli("convert", digits_onnx, "-t", "onnx-web-int8", "--out", out, "--min-agreement", "0.9")
    _assert_user_error(no_auto, out, "-auto targets", "onnx-web-auto")
    with np.load(digits_npz) as data:
        unlabelled = tmp_path / "x.npz"
        np.savez(unlabelled, x=data["x"][:32])
    no_labels = run_cli("convert", digits_onnx, "-t", "onnx-web-auto", "--out", out, "--calibration", unlabelled,
                        "--max-accuracy-drop", "1")
    _assert_user_error(no_labels, out, "labels", "--min-agreement")


def test_unknown_targets_are_refused_with_a_suggestion(tmp_path: Path, digits_onnx: Path,
                                                       digits_bundle: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", digits_onnx, "-t", "onnx-web-int9", "--out", out)
    _assert_user_error(result, out, "did you mean 'onnx-web-int8'?")
    bench = run_cli("bench", digits_bundle, "-t", "onnx-web-fp61", "--runs", "1")
    assert bench.exit_code == 2 and "did you mean 'onnx-web-fp16'?" in bench.stderr, bench.output
    assert "onnx-web-int8" in bench.stderr and bench.stdout == ""
    check = run_cli("check", digits_onnx, "-t", "no-such-target")
    assert check.exit_code == 2 and "unknown target 'no-such-target'" in check.stderr, check.output


def test_out_that_is_a_file_is_never_replaced(tmp_path: Path, digits_onnx: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    result = run_cli("convert", digits_onnx, "-t", "onnx-web", "--out", out, "--overwrite")
    assert result.exit_code == 2 and "is a file" in result.stderr, result.output
    assert out.read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_third_party_log_lines_follow_edgekits_level(capsys: pytest.CaptureFixture[str]) -> None:
    """onnxruntime's quantizer warns on the root logger ("Please consider pre-processing"): shown with -v only."""
    import logging

    from edgekit.cli import _app as cli

    try:
        everything = {"edgekit warning", "root warning", "onnx2tf warning", "edgekit info"}
        for level, shown in (("", {"edgekit warning"}), ("verbose", everything), ("quiet", set())):
            cli.VERBOSITY["level"] = level
            cli._setup_logging(False)
            logging.getLogger().warning("root warning")
            logging.getLogger("onnx2tf").warning("onnx2tf warning")
            logging.getLogger("edgekit.converters").warning("edgekit warning")
            logging.getLogger("edgekit.converters").info("edgekit info")
            err = capsys.readouterr().err
            printed = {t for t in ("root warning", "onnx2tf warning", "edgekit warning", "edgekit info") if t in err}
            assert printed == shown, (level, err)
    finally:
        cli.VERBOSITY["level"] = ""
        cli._setup_logging(False)


def test_live_progress_draws_stages_on_a_terminal_and_logs_them_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging
    import time

    from edgekit._progress import LiveProgress

    screen = io.StringIO()
    with caplog.at_level(logging.INFO, logger="edgekit.progress"), LiveProgress(live=True, stream=screen) as say:
        say("loading the source model")
        time.sleep(0.6)  # the live line redraws with the elapsed time meanwhile
        say("onnx-web: validating the onnx artifact on 360 samples")
    text = screen.getvalue()
    finished = [line.split("\x1b[2K")[-1] for line in text.split("\n") if line.strip()]
    assert finished[0].startswith("  - loading the source model  (") and finished[0].endswith("s)")
    assert float(finished[0].rsplit("(", 1)[1].rstrip("s)")) >= 0.5
    assert "  - onnx-web: validating the onnx artifact on 360 samples  (" in finished[1]
    assert "(total " in text  # the live line
    assert [r.getMessage() for r in caplog.records] == ["loading the source model",
                                                       "onnx-web: validating the onnx artifact on 360 samples"]
    quiet = io.StringIO()
    with LiveProgress(live=False, stream=quiet) as say:  # not a terminal: nothing drawn
        say("loading the source model")
    assert quiet.getvalue() == ""
    download = io.StringIO()
    with LiveProgress(live=True, stream=download) as live:  # a known amount of work: a bar
        live.bar("downloading onnx-web.onnx", 500_000, 2_000_000)
        assert "[######..................]  25% 0.5/2.0 MB" in download.getvalue()
        live.bar("downloading onnx-web.onnx", 2_000_000, 2_000_000)
    lines = [line.split("\x1b[2K")[-1] for line in download.getvalue().split("\n") if line.strip()]
    assert lines[0].startswith("  - downloading onnx-web.onnx  (") and lines[0].endswith(", 2.0/2.0 MB)"), lines
    counted = io.StringIO()  # the message protocol validation uses: "STAGE [done/total]", one stage, a bar
    with caplog.at_level(logging.INFO, logger="edgekit.progress"), LiveProgress(live=True, stream=counted) as say:
        caplog.clear()
        say("onnx-web: validating the onnx artifact on 360 samples")
        say("onnx-web: validating the onnx artifact on 360 samples [64/360]")
        assert "[####....................]  18% 64/360" in counted.getvalue()
        say("onnx-web: validating the onnx artifact on 360 samples [360/360]")
        say("writing the bundle")
    lines = [line.split("\x1b[2K")[-1] for line in counted.getvalue().split("\n") if line.strip()]
    assert lines[0].endswith(", 360/360)") and "validating" in lines[0] and "writing the bundle" in lines[1], lines
    assert [r.getMessage() for r in caplog.records] == ["onnx-web: validating the onnx artifact on 360 samples",
                                                       "writing the bundle"]  # counts are drawn, not logged


def test_convert_json_and_targets_json(tmp_path: Path, digits_onnx: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", digits_onnx, "-t", "onnx-web", "--out", out, "--json", "--no-report")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((out / "bundle.json").read_text())
    assert "  - " not in result.stderr  # not a terminal: no progress lines
    listed = json.loads(run_cli("targets", "--json").stdout)
    ids = [t["target"] for t in listed["targets"]]
    assert set(WEB_TARGETS) <= set(ids) and "onnx-web-int8" in listed["automatic"]["onnx-web-auto"]


def test_help_at_80_columns_shows_every_flag_in_full() -> None:
    import typer.main
    from typer.testing import CliRunner

    from edgekit.cli import app

    command = typer.main.get_command(app).commands["convert"]  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["convert", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    for param in command.params:
        for flag in param.opts:
            if flag.startswith("--"):
                assert flag in result.stdout, flag
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_the_bundle_is_written_with_the_process_umask(tmp_path: Path, digits_onnx: Path) -> None:
    """Under umask 022 another user (a web server) can read every file edgekit convert writes."""
    import os
    import stat

    from edgekit._files import write_atomic

    old = os.umask(0o022)
    try:
        result = run_cli("convert", digits_onnx, "--target", "onnx-web", "--out", tmp_path / "out")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {"bundle.json", "onnx-web.onnx", "report.html"} <= set(modes) and set(modes.values()) == {0o644}, modes
    old = os.umask(0o077)  # and a private umask keeps them private: the umask decides, not edgekit
    try:
        write_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
