"""Log output: text or one JSON object a line, with the run id and sync of the line, secrets masked.

The handler is a root handler, so the engine's :class:`~engine.templating.RedactingFilter` (which an
:class:`~engine.runner.Engine` adds to every root handler while it is open) masks what it writes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from engine.templating import RedactingFilter

LEVELS = ("debug", "info", "warning", "error")
"""The levels ``--log-level`` accepts."""
FORMATS = ("text", "json")
"""The formats ``--log-format`` accepts."""
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""The text format (the one the debug log always had)."""

_context: ContextVar[dict[str, Any] | None] = ContextVar("syncengine_log_context", default=None)
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written out.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (run id, pipeline, sync) to every JSON log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """Writes each record as one JSON object a line: time, level, logger, message, then context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, every string masked by the handler's redacting filters."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        data.update(_context.get() or {})
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        # The filter masks the message; the extras (counts, errors, context) are masked here with its secrets.
        plain = json.loads(json.dumps(data, default=str))
        for found in self.filters:
            if isinstance(found, RedactingFilter):
                plain = found.redactor.data(plain)
        return json.dumps(plain, ensure_ascii=False)


class _TextHandler(logging.StreamHandler[TextIO]):
    """The text handler (a class of its own so that :func:`configure` can find and replace it)."""


def configure(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Install the one root handler logs go through (replacing the one installed before); returns it."""
    if level not in LEVELS:
        raise ValueError(f"log level '{level}' is not one of: {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format '{fmt}' is not one of: {', '.join(FORMATS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, JsonLinesHandler | _TextHandler):
            root.removeHandler(handler)
    target = stream or sys.stderr
    installed: logging.Handler
    if fmt == "json":
        installed = JsonLinesHandler(target)
    else:
        installed = _TextHandler(target)
        installed.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(installed)
    # The root level, so that the HTTP and SSH libraries' debug logs come through at debug too.
    root.setLevel(getattr(logging, level.upper()))
    return installed
