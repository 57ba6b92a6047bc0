"""Structured logs: JSON lines with job context, redaction hook, no stray secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from router_jobs.observability.logs import add_redaction, configure_logging, remove_redaction

SECRET = "sk-test-0123456789abcdef"


class _Scrub(logging.Filter):
    """Stands in for the secret store's redacting filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if SECRET in msg:
            record.msg, record.args = msg.replace(SECRET, "[REDACTED]"), None
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for h in saved_handlers:
        root.removeHandler(h)
    out = io.StringIO()
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved_handlers:
        root.addHandler(h)
    root.setLevel(saved_level)


def test_json_lines_carry_job_context(stream: io.StringIO) -> None:
    configure_logging(json=True, level="INFO", stream=stream)
    log = logging.getLogger("router_jobs.worker")
    log.info("job %s finished", "j-1", extra={"job_id": "j-1", "key_id": "gemini-01", "attempt": 2,
                                              "outcome": "succeeded", "api_key": SECRET})
    log.debug("not shown")
    [line] = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["msg"] == "job j-1 finished"
    assert doc["level"] == "INFO" and doc["logger"] == "router_jobs.worker"
    assert (doc["job_id"], doc["key_id"], doc["attempt"], doc["outcome"]) == ("j-1", "gemini-01", 2, "succeeded")
    assert "api_key" not in doc and SECRET not in line  # only known context fields are written


def test_text_format_appends_context(stream: io.StringIO) -> None:
    configure_logging(json=False, stream=stream)
    logging.getLogger("x").warning("deferred", extra={"job_id": "j-2", "delay_ms": 1500})
    line = stream.getvalue().strip()
    assert line.endswith("x: deferred job_id=j-2 delay_ms=1500")


def test_redaction_hook_scrubs_messages_and_exceptions(stream: io.StringIO) -> None:
    scrub = _Scrub()
    add_redaction(scrub)
    try:
        configure_logging(json=True, stream=stream)  # handlers set up later get the filter too
        log = logging.getLogger("router_jobs.providers.openai")
        log.error("call failed with key %s", SECRET, extra={"key_id": "openai-01"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("unexpected")
    finally:
        remove_redaction(scrub)
    text = stream.getvalue()
    assert SECRET not in text
    first, second = (json.loads(x) for x in text.splitlines())
    assert first["msg"] == "call failed with key [REDACTED]" and first["key_id"] == "openai-01"
    assert "RuntimeError: boom" in second["exc"]


def test_existing_handlers_are_reformatted_in_place(stream: io.StringIO) -> None:
    handler = logging.StreamHandler(stream)  # e.g. Dramatiq's pipe to the main process
    logging.getLogger().addHandler(handler)
    assert configure_logging(json=True) is None
    logging.getLogger("y").warning("hello", extra={"queue": "batch"})
    assert json.loads(stream.getvalue())["queue"] == "batch"
