"""Logging set-up: ECS JSON lines (or plain text) on stderr."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from espm.system.timestamps import rfc3339

ECS_VERSION = "1.6.0"
# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class EcsFormatter(logging.Formatter):
    """One JSON object per line, with the Elastic Common Schema's field names."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "@timestamp": rfc3339(record.created),
            "log.level": record.levelname.lower(),
            "message": record.getMessage(),
            "ecs.version": ECS_VERSION,
            "log.logger": record.name,
            "process.pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and value is not None:
                doc[key] = value
        if record.exc_info:
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """A line for people: time, level, message, then the fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRS and value is not None
        )
        line = f"{rfc3339(record.created)} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += "  " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", fmt: str = "json") -> None:
    """Send the `espm` loggers to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EcsFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("espm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # A PID 1 whose stderr was closed must go on: no traceback per record, no crash.
    logging.raiseExceptions = False
