"""Redaction of secret values from any text, and a logging filter that applies it.

A :class:`Redactor` holds the secret values seen so far (secret stores add every value they
read) and replaces each, and any piece of one a provider echoes back, with ``[REDACTED]``. :class:`RedactingFilter` scrubs log records:
the formatted message (args included) and the formatted exception text. Workers install it
with :func:`install_log_redaction`, which puts it on the root logger *and on its handlers*:
a logger's own filters do not see records propagated from child loggers, handlers' do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from router_jobs.providers.errors_map import REDACTED
from router_jobs.providers.errors_map import redact as _redact_patterns
from router_jobs.secrets.fragments import FragmentIndex

#: values shorter than this are not treated as secrets (they would blank out ordinary words)
MIN_SECRET_LENGTH = 6


class Redactor:
    """Known secret values, replaced by ``[REDACTED]`` in any text given to :meth:`redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self._fragments = FragmentIndex(())
        for s in secrets:
            self.add(s)

    def add(self, secret: str) -> None:
        """Remember a secret value (longest values are replaced first)."""
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if secret not in self._values:
                self._values = tuple(sorted({*self._values, secret}, key=len, reverse=True))
                self._fragments = FragmentIndex(self._values)

    @property
    def values(self) -> tuple[str, ...]:
        """The known values (for exact-match leak scans); never log this."""
        return self._values

    def redact(self, text: str) -> str:
        """``text`` without any known secret or piece of one (a provider's masked echo, a
        prefix), ``?key=`` value or bearer token."""
        return _redact_patterns(text, self._values, self._fragments)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} secrets)"


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record's message, args and exception text; never drops a record."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep what we can, redacted
            message = f"{record.msg} {record.args}"
        clean = self.redactor.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


def install_log_redaction(redactor: Redactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Add a :class:`RedactingFilter` to ``logger`` (root by default) and each of its handlers.

    Handlers added later need ``handler.addFilter(returned_filter)`` too.
    """
    target = logger if logger is not None else logging.getLogger()
    filt = RedactingFilter(redactor)
    target.addFilter(filt)
    for handler in target.handlers:
        handler.addFilter(filt)
    return filt


__all__ = ["REDACTED", "Redactor", "RedactingFilter", "install_log_redaction"]
