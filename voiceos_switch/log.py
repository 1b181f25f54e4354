"""Structured logging: one event per line, the call id on every line of a call."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = call_id_var.get()
        return True


def kv(**fields: Any) -> str:
    """Render fields as ``key=value`` pairs, quoting values with spaces."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "='):
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_CallIdFilter())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s call=%(call_id)s %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    root = logging.getLogger("voiceos_switch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _CallIdFilter) for f in logger.filters):
        logger.addFilter(_CallIdFilter())
    return logger
