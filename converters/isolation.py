"""Targets converted in worker processes, so a converter's crash is one target's failure.

Native converters and runtimes (onnx2tf, TFLiteConverter, coremltools, onnxruntime, LiteRT) can
segfault, abort or be killed for memory. ``convert`` runs each target family of a model file in a
worker process (``python -m edgekit.converters.isolation JOB_DIR``) that loads the source again,
builds its targets one after another, sharing intermediate results (onnx2tf runs once per family),
and appends one result line per target to ``JOB_DIR/results.jsonl``. When a worker dies, the
target it was working on fails with the signal or exit status and the last step it reported; a
new worker takes the family's remaining targets. The worker runs in a scratch directory of its own
(libraries that write into the current directory write there), inside the conversion's temporary
directory, which the parent removes whatever happened.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from edgekit.bundle import Artifact

RESULTS = "results.jsonl"
PROGRESS_PREFIX = "edgekit-progress: "
STDERR_TAIL = 1500
VERBOSE_ENV = "EDGEKIT_WORKER_VERBOSE"
STEP_TIMEOUT_ENV = "EDGEKIT_STEP_TIMEOUT"  # seconds one conversion step may run before its worker is stopped
STEP_TIMEOUT_S = 900.0
STOPPED = -1000  # the return code _spawn reports for a worker it stopped
P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def private_tempdir(prefix: str = "edgekit-") -> Iterator[Path]:
    """Point this process's temporary files (and its children's, through TMPDIR) at a new directory,
    removed on the way out whatever happened, Ctrl-C included.

    Libraries leave things in the temp dir as a side effect: importing coremltools creates
    ``torchinductor_<user>``, onnxruntime's quantizer writes its shape-inference model there. Some
    also remember where in the environment (torch sets ``TORCHINDUCTOR_CACHE_DIR``) and would create
    the folder there again later: every variable set to a path inside the directory gets its old value
    back on the way out, as ``TMPDIR`` does.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    saved_environ, saved_default = dict(os.environ), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved_default
        inside = str(path)
        for key, value in list(os.environ.items()):
            if value.startswith(inside) and saved_environ.get(key) != value:
                if key in saved_environ:
                    os.environ[key] = saved_environ[key]
                else:
                    del os.environ[key]
        shutil.rmtree(path, ignore_errors=True)


def contains_tempfiles(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` inside :func:`private_tempdir`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with private_tempdir():
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Outcome:
    """What became of one target: its artifacts, or the error that stopped it."""

    target: str
    artifacts: tuple[Artifact, ...] = ()
    error: str | None = None
    kind: str | None = None  # the exception class (an edgekit error, another exception, or WorkerCrash)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "artifacts": [a.to_dict() for a in self.artifacts],
                           "error": self.error, "kind": self.kind})

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        data = json.loads(line)
        return cls(data["target"], tuple(Artifact.from_dict(a) for a in data["artifacts"]), data["error"], data["kind"])


@dataclass(frozen=True)
class Job:
    """What a worker needs besides the arrays: plain data, written as ``job.json``."""

    model: str
    targets: list[str]
    options: dict[str, Any]  # ConvertOptions.to_dict()
    accept_parity_failure: list[str]  # targets whose parity failure is recorded instead of raised
    measure_latency: list[str]  # auto candidates: time them where they will run (inside the worker)
    staging: str
    has_calibration: bool
    single: bool
    stacked: bool = False
    output_kinds: dict[str, str] = field(default_factory=dict)  # how parity judges each output, by name


def step_timeout() -> float:
    try:
        return float(os.environ.get(STEP_TIMEOUT_ENV, STEP_TIMEOUT_S))
    except ValueError:
        return STEP_TIMEOUT_S


def describe_exit(returncode: int) -> str:
    """``killed by SIGSEGV (segmentation fault)`` or ``exited with status 1``."""
    if returncode == STOPPED:
        return (f"was stopped after {step_timeout():.0f} s in one step (a converter that hangs or runs away; "
                f"set {STEP_TIMEOUT_ENV} to allow longer)")
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
            detail = signal.strsignal(sig) or ""
            text = f"killed by {sig.name}"
            if sig == signal.SIGKILL:
                return text + " (often the out-of-memory killer)"
            return text + (f" ({detail.lower()})" if detail else "")
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def run_family(job: Job, job_dir: Path, samples: dict[str, np.ndarray], labels: np.ndarray | None,
               reference: dict[str, np.ndarray], say: Callable[[str], None]) -> list[Outcome]:
    """Build ``job.targets`` in worker processes; one outcome per target, in order, whatever happens.

    A worker that dies fails the target it was on (named with its signal or exit status and the last
    step it reported) and a new worker takes the remaining targets.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"in.{k}": v for k, v in samples.items()}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(job_dir / "samples.npz", **arrays)  # type: ignore[arg-type]
    np.savez(job_dir / "reference.npz", **reference)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    pending = list(job.targets)
    attempt = 0
    while pending:
        attempt += 1
        run_dir = job_dir / f"run{attempt}"
        (run_dir / "scratch").mkdir(parents=True)
        spec = Job(**{**asdict(job), "targets": pending})
        (run_dir / "job.json").write_text(json.dumps(asdict(spec)), encoding="utf-8")
        returncode, last_step, stderr_tail = _spawn(run_dir, job_dir, say)
        results = _read_results(run_dir / RESULTS)
        outcomes.extend(results)
        done = {o.target for o in results}
        remaining = [t for t in pending if t not in done]
        if not remaining:
            break
        crashed = remaining[0]
        why = describe_exit(returncode)
        step = f" during {last_step.removeprefix(crashed + ': ')}" if last_step.startswith(crashed + ":") else ""
        tail = f"; its last output: {stderr_tail}" if stderr_tail and returncode > 0 else ""
        say(f"{crashed}: failed (the worker process {why})")
        outcomes.append(Outcome(crashed, error=(
            f"the conversion process {why}{step}; the crash was contained and the other targets went on"
            f"{tail}. Run with -v to see the converter's own output, or try another route or target"),
            kind="WorkerCrash"))
        pending = remaining[1:]
    return outcomes


def _spawn(run_dir: Path, job_dir: Path, say: Callable[[str], None]) -> tuple[int, str, str]:
    """Run one worker; relay its progress; its exit status, last progress line and a stderr tail."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # the worker's temporary files live in the conversion's temporary directory, which the parent
    # removes even when the worker was killed before it could clean up
    (run_dir / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(run_dir / "tmp")
    stderr_path = run_dir / "stderr.txt"
    verbose = logging.getLogger("edgekit").isEnabledFor(logging.INFO)
    if verbose:  # -v: the worker logs as the parent does, and the converters' own output reaches the terminal
        env[VERBOSE_ENV] = "1"
    last = ""
    limit = step_timeout()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgekit.converters.isolation", str(run_dir), str(job_dir)],
                                stdout=subprocess.PIPE, stderr=None if verbose else err, cwd=run_dir / "scratch",
                                env=env, text=True, bufsize=1)
        progress_at = [time.monotonic()]
        stopped = threading.Event()

        def watchdog() -> None:  # a step that runs past the limit stops the worker: its target fails
            while proc.poll() is None:
                if time.monotonic() - progress_at[0] > limit:
                    stopped.set()
                    proc.kill()
                    return
                time.sleep(1.0)

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    progress_at[0] = time.monotonic()
                    last = line[len(PROGRESS_PREFIX):].rstrip("\n")
                    say(last)
            returncode = STOPPED if stopped.is_set() else proc.wait()
        finally:  # an interrupt in the parent takes the worker down with it
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = stderr_path.read_text(encoding="utf-8", errors="replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("I0000", "W0000", "WARNING: All log"))]
    return returncode, last, " | ".join(lines[-4:])[-STDERR_TAIL:]


def _read_results(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(Outcome.from_json(line))
        except (ValueError, KeyError):  # a line cut by the crash
            continue
    return out


def build_all(targets: Sequence[str], *, build: Callable[[str], list[Artifact]],
              record: Callable[[Outcome], None]) -> None:
    """Build each target with ``build``, turning any exception into that target's outcome."""
    from edgekit.errors import EdgekitError

    for tid in targets:
        try:
            outcome = Outcome(tid, tuple(build(tid)))
        except EdgekitError as exc:
            outcome = Outcome(tid, error=str(exc), kind=type(exc).__name__)
        except Exception as exc:  # a converter's unexpected exception is this target's failure, not a crash
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcome = Outcome(tid, error=(f"{type(exc).__name__}: {exc} (raised in {Path(where.filename).name}:"
                                          f"{where.lineno}); this looks like a converter bug on this model: try "
                                          "another route or target, and report it with EDGEKIT_DEBUG=1"),
                              kind=type(exc).__name__)
        record(outcome)


def _worker(run_dir: Path, job_dir: Path) -> None:
    """The worker's side: load the source, build the targets, append one result line per target."""
    from edgekit._console import captured_output
    from edgekit.converters import artifacts, validation
    from edgekit.converters.calibration import Samples
    from edgekit.converters.options import ConvertOptions
    from edgekit.converters.passes import PassContext
    from edgekit.converters.planner import ordered_routes, plan, resolve_targets, usable_passes
    from edgekit.converters.sources import load_source, with_computed_outputs, with_output_kinds

    job = Job(**json.loads((run_dir / "job.json").read_text(encoding="utf-8")))
    with np.load(job_dir / "samples.npz") as data:
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in.")}
        labels = data["labels"] if "labels" in data.files else None
    with np.load(job_dir / "reference.npz") as data:
        reference = {k: data[k] for k in data.files}
    samples = Samples(inputs, labels, None, single=job.single, stacked=job.stacked)

    # Progress goes to the parent through the original stdout; anything the libraries print goes to
    # the stderr file, so a converter's own prints cannot be mistaken for progress or lost.
    progress = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)

    def say(message: str) -> None:
        progress.write(PROGRESS_PREFIX + message.replace("\n", " ") + "\n")
        progress.flush()

    with captured_output():
        source = load_source(job.model, None)
    source = with_computed_outputs(source, reference, single=job.single, stacked=job.stacked)
    source = with_output_kinds(source, reference, job.output_kinds)
    options = ConvertOptions.from_dict(job.options)
    passes = usable_passes(options.via)
    infos = {t.id: t for t in resolve_targets(job.targets)}
    ctx = PassContext(run_dir / "scratch", source.inputs, source.outputs, samples.inputs,
                      has_calibration=job.has_calibration, example_inputs=source.example_inputs,
                      options=options,
                      quantized_source=bool(source.info.extra.get("quantized")), reference=reference)
    cache = artifacts.RouteCache(source)
    results = run_dir / RESULTS
    staging = Path(job.staging)

    def build(tid: str) -> list[Artifact]:
        target = infos[tid]
        route = plan(source.kind, target, passes)
        made = artifacts.build_target(target, ordered_routes(source.kind, target, route), cache, ctx,
                                     staging, source, samples, reference, tid in job.accept_parity_failure, say)
        if tid in job.measure_latency:
            made = validation.with_latency(made, staging)
        return made

    def record(outcome: Outcome) -> None:
        with open(results, "a", encoding="utf-8") as fh:
            fh.write(outcome.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    build_all(job.targets, build=build, record=record)


if __name__ == "__main__":
    if os.environ.get(VERBOSE_ENV):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
