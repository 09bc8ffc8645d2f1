"""A crash in one target's conversion is that target's failure; nothing is left behind anywhere."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from edgekit.converters import convert
from edgekit.converters.isolation import build_all, describe_exit
from edgekit.errors import ConversionError
from tests.conftest import DIGITS

TARGETS = ["onnx-web", "onnx-web-fp16", "onnx-web-int8"]


@pytest.fixture(autouse=True)
def _onnxruntime_imported() -> None:
    """Importing onnxruntime 1.32 writes a session file (.ses) into the temp dir once: not ours to count."""
    import onnxruntime  # noqa: F401


def _leftovers(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_killed_worker_fails_its_target_only_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  sig: signal.Signals) -> None:
    import psutil

    tmp, cwd, parent = tmp_path / "tmp", tmp_path / "cwd", tmp_path / "out"
    for folder in (tmp, cwd, parent):
        folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.chdir(cwd)
    killed: list[int] = []

    def progress(message: str) -> None:  # a real signal, sent from outside, while fp16 is being converted
        if message.startswith("onnx-web-fp16: onnx-fp16") and not killed:
            worker = psutil.Process().children()[0]
            os.kill(worker.pid, sig)
            killed.append(worker.pid)

    result = convert(DIGITS / "digits.onnx", TARGETS, out=parent / "bundle", calibration=DIGITS / "digits.npz",
                     keep_partial=True, progress=progress, report=False)
    assert killed
    (failure,) = result.failures
    assert failure.target == "onnx-web-fp16" and failure.kind == "WorkerCrash"
    assert f"killed by {sig.name}" in failure.error and "onnx-fp16" in failure.error
    manifest = result.bundle.manifest
    assert {a.target for a in manifest.artifacts} == {"onnx-web", "onnx-web-int8"}  # the others survive
    assert manifest.failures == result.failures
    assert all(a.parity is not None and a.parity.passed for a in manifest.artifacts)
    listed = {a.file for a in manifest.artifacts} | {"bundle.json", "reference.npz"}
    assert {p.name for p in (parent / "bundle").iterdir()} == listed  # no file of the failed target
    # nothing in the temp dir, beside --out or in the current directory
    assert _leftovers(tmp, cwd) == []
    assert _leftovers(parent) == [str(parent / "bundle")]


def test_a_step_that_hangs_is_stopped_and_fails_its_target_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    for folder in (tmp, cwd):
        folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EDGEKIT_STEP_TIMEOUT", "3")
    frozen: list[int] = []

    def progress(message: str) -> None:  # the worker stops dead (SIGSTOP) in the fp16 step: a real hang
        if message.startswith("onnx-web-fp16: onnx-fp16") and not frozen:
            worker = psutil.Process().children()[0]
            os.kill(worker.pid, signal.SIGSTOP)
            frozen.append(worker.pid)

    result = convert(DIGITS / "digits.onnx", TARGETS, out=tmp_path / "bundle", calibration=DIGITS / "digits.npz",
                     keep_partial=True, progress=progress, report=False)
    (failure,) = result.failures
    assert failure.target == "onnx-web-fp16" and failure.kind == "WorkerCrash"
    assert "was stopped after 3 s" in failure.error and "EDGEKIT_STEP_TIMEOUT" in failure.error
    assert {a.target for a in result.bundle.manifest.artifacts} == {"onnx-web", "onnx-web-int8"}
    assert not psutil.pid_exists(frozen[0]) or psutil.Process(frozen[0]).status() == psutil.STATUS_ZOMBIE
    assert _leftovers(tmp, cwd) == []


def test_only_failures_means_nothing_is_written_and_nothing_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(cwd)

    def progress(message: str) -> None:
        if message.startswith("onnx-web-int8: onnx-int8"):
            os.kill(psutil.Process().children()[0].pid, signal.SIGABRT)

    with pytest.raises(ConversionError, match="killed by SIGABRT"):
        convert(DIGITS / "digits.onnx", ["onnx-web-int8"], out=tmp_path / "bundle", calibration=DIGITS / "digits.npz",
                progress=progress, report=False)
    assert not (tmp_path / "bundle").exists()
    assert _leftovers(tmp, cwd) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "tmp"]


def test_an_unexpected_exception_is_the_targets_failure() -> None:
    outcomes = []

    def build(target: str) -> list:
        if target == "b":
            raise IndexError("tuple index out of range")
        return []

    build_all(["a", "b", "c"], build=build, record=outcomes.append)
    assert [o.target for o in outcomes] == ["a", "b", "c"]
    assert outcomes[1].kind == "IndexError" and "tuple index out of range" in (outcomes[1].error or "")
    assert outcomes[0].error is None and outcomes[2].error is None


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGSEGV).startswith("killed by SIGSEGV")
    assert "out-of-memory" in describe_exit(-signal.SIGKILL)
    assert describe_exit(1) == "exited with status 1"


@pytest.mark.torch
def test_a_library_remembering_the_private_temp_dir_does_not_recreate_it_later() -> None:
    """torch's inductor stores its cache folder, made under the temp dir, in TORCHINDUCTOR_CACHE_DIR and makes
    it again on the next call: after the private temp dir is gone, the variable must not point into it."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from edgekit.converters.isolation import private_tempdir

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    try:
        with private_tempdir() as tmp:
            made = Path(cache_dir())
            assert made.is_relative_to(tmp) and made.is_dir()
        assert not tmp.exists()
        assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and os.environ.get("TMPDIR") != str(tmp)
        assert not Path(default_cache_dir()).is_relative_to(tmp)  # where a later call would make it
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
