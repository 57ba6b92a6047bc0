"""Structured logs: text or JSON lines, with job context, and a hook for secret redaction.

Context travels in ``extra=``::

    log.info("job finished", extra={"job_id": job_id, "key_id": "gemini-01", "attempt": 2,
                                    "outcome": "succeeded"})

Only the fields named in :data:`CONTEXT_FIELDS` are written; anything else given in
``extra`` is left out, so a stray ``extra={"api_key": ...}`` cannot leak a secret. The
message itself goes through every redaction filter installed with :func:`add_redaction`
(the secret store's redactor, which knows the secret values) before any handler formats it.

``configure_logging(json=Settings.log_json)`` (``ROUTER_LOG_JSON=1``) sets the format. In a
Dramatiq worker process the root logger already has Dramatiq's handler (a pipe to the main
process); it is re-formatted in place rather than replaced.
"""

from __future__ import annotations

import datetime as dt
import json as _json
import logging
import sys
import threading
from typing import IO, Any

#: ``extra=`` fields written to the log, in this order.
CONTEXT_FIELDS = ("job_id", "queue", "key_id", "provider", "model", "attempt", "outcome",
                  "error_type", "delay_ms", "conversation_id")

_lock = threading.Lock()
_filters: list[logging.Filter] = []
_ours: list[logging.Handler] = []


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            out[name] = value if isinstance(value, int | float | bool) else str(value)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, context, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        return _json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …`` with the context fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _context(record)
        if ctx:
            first, nl, rest = line.partition("\n")
            line = first + " " + " ".join(f"{k}={v}" for k, v in ctx.items()) + nl + rest
        return line


def configure_logging(json: bool = False, level: int | str = logging.INFO, *,
                      stream: IO[str] | None = None) -> logging.Handler | None:
    """Format the root logger's records as JSON lines (``json=True``) or text.

    With ``stream``, or when the root logger has no handler yet, a handler writing to
    ``stream`` (default stderr) is installed, replacing one this function installed before;
    otherwise the existing root handlers keep their destination and get the formatter.
    Installed redaction filters are put on every handler. Returns the handler installed, if any.
    """
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else level.upper())
    formatter: logging.Formatter = JsonFormatter() if json else TextFormatter()
    installed: logging.Handler | None = None
    with _lock:
        for h in _ours:
            root.removeHandler(h)
        _ours.clear()
        if stream is not None or not root.handlers:
            installed = logging.StreamHandler(stream or sys.stderr)
            root.addHandler(installed)
            _ours.append(installed)
        for h in root.handlers:
            h.setFormatter(formatter)
            for f in _filters:
                if f not in h.filters:
                    h.addFilter(f)
    return installed


def add_redaction(filt: logging.Filter) -> None:
    """Install a redaction filter (e.g. the secret store's) on the root logger and its handlers.

    Handlers' filters see every record, including those propagated from child loggers;
    handlers set up later by :func:`configure_logging` get it too.
    """
    root = logging.getLogger()
    with _lock:
        if filt not in _filters:
            _filters.append(filt)
        if filt not in root.filters:
            root.addFilter(filt)
        for h in root.handlers:
            if filt not in h.filters:
                h.addFilter(filt)


def remove_redaction(filt: logging.Filter) -> None:
    """Undo :func:`add_redaction` (for tests)."""
    root = logging.getLogger()
    with _lock:
        if filt in _filters:
            _filters.remove(filt)
        root.removeFilter(filt)
        for h in root.handlers:
            h.removeFilter(filt)


__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "add_redaction", "configure_logging",
           "remove_redaction"]
