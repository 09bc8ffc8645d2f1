"""The service's logs: JSON lines on stderr, one event per line with its fields."""

from __future__ import annotations

import json
import logging


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's fields."""

    RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        return json.dumps(out, default=str)


def configure_logging() -> None:
    """edgekit.ota logs JSON lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("edgekit.ota")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
