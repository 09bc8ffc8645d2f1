"""Keep converter libraries' console output (C++ logs included) out of the user's terminal."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Send everything written to stdout and stderr meanwhile, by Python or by C++ code, to a buffer.

    TensorFlow's converter and onnx2tf print pages of MLIR locations and progress; the errors edgekit
    raises say what matters. The buffer holds the text once the block ends.
    """
    log = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            log.write(sink.read().decode("utf-8", "replace"))
