"""Live progress for long commands: on a terminal, each finished stage with its duration and a live line
for the current one (spinner, elapsed time, total); elsewhere nothing, since logs and pipes want results.

Every stage is also logged (logger ``edgekit.progress``, INFO), so Python callers and ``edgekit -v`` see
the same events; ``convert(progress=...)`` takes any callable for the messages themselves. A stage whose
amount of work is known repeats its message with ``[done/total]`` appended (validation samples), which a
terminal draws as a bar; downloads call :meth:`LiveProgress.bar` with their bytes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from types import TracebackType
from typing import TextIO

log = logging.getLogger("edgekit.progress")

SPINNER = "|/-\\"
# Set by the options before a command: "verbose" (`edgekit -v`), "quiet" (`edgekit -q`: no progress drawn,
# whatever the stream) or "". The CLI's logging reads it too.
VERBOSITY = {"level": ""}
REDRAW_SECONDS = 0.25
BAR_WIDTH = 24
COUNTED = re.compile(r"^(.*) \[(\d+)/(\d+)\]$")  # a progress message with a known amount: "STAGE [done/total]"


class LiveProgress:
    """A progress callback (``progress(message)``) that draws on the terminal's stderr.

    It writes to its own copy of file descriptor 2, taken when it is created, so converter output that
    edgekit captures meanwhile (``captured_output``) does not swallow it. ``live`` defaults to whether
    that stream is a terminal (and ``edgekit -q`` was not asked).
    """

    def __init__(self, live: bool | None = None, stream: TextIO | None = None):
        self.out: TextIO = stream or os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        self._own = stream is None
        self.live = (self.out.isatty() and VERBOSITY["level"] != "quiet") if live is None else live
        self.started = self.stage_started = time.monotonic()
        self.stage = ""
        self.stages: list[tuple[str, float]] = []  # finished stages and their seconds
        self._fraction: tuple[float, str] | None = None  # the current stage's share done and amounts, when known
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = 0
        self._thread: threading.Thread | None = None
        if self.live:
            self._thread = threading.Thread(target=self._redraw, daemon=True)
            self._thread.start()

    def __call__(self, message: str) -> None:
        counted = COUNTED.match(message)
        if counted:  # "STAGE [done/total]": the same stage, further along
            self.bar(counted[1], int(counted[2]), int(counted[3]), unit="")
            return
        log.info(message)
        with self._lock:
            self._finish_stage()
            self.stage, self.stage_started = message, time.monotonic()
            self._draw()

    def bar(self, label: str, done: float, total: float, unit: str = "MB") -> None:
        """A stage whose amount of work is known (a download's bytes): the live line gets a bar, a percentage
        and the amounts; ``done == total`` finishes it. A new ``label`` starts a new stage."""
        if label != self.stage:
            self(label)
        amounts = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if unit == "MB" else f"{done:g}/{total:g}{unit}"
        with self._lock:
            self._fraction = (done / total if total else 1.0, amounts)
            self._draw()
            if total and done >= total:
                self._finish_stage()
                self.stage = ""

    def close(self) -> None:
        """Print the last stage as finished and stop redrawing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            self._finish_stage()
            self.stage = ""
        if self._own:
            self.out.close()

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _finish_stage(self) -> None:
        if not self.stage:
            return
        seconds = time.monotonic() - self.stage_started
        self.stages.append((self.stage, seconds))
        amounts = f", {self._fraction[1]}" if self._fraction else ""
        self._fraction = None
        if self.live:
            self.out.write(f"\r\x1b[2K  - {self.stage}  ({_duration(seconds)}{amounts})\n")
            self.out.flush()

    def _draw(self) -> None:
        if not self.live or not self.stage:
            return
        now = time.monotonic()
        known = ""
        if self._fraction:
            share, amounts = self._fraction
            filled = round(min(max(share, 0.0), 1.0) * BAR_WIDTH)
            known = f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {amounts}"
        line = (f"  {SPINNER[self._tick % len(SPINNER)]} {self.stage}{known}  {_duration(now - self.stage_started)}"
                f"  (total {_duration(now - self.started)})")
        width = shutil.get_terminal_size((100, 20)).columns
        self.out.write("\r\x1b[2K" + (line if len(line) < width else line[:width - 2] + "…"))
        self.out.flush()

    def _redraw(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            with self._lock:
                self._tick += 1
                self._draw()


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
