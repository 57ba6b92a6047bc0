"""Leak scan, token estimates, and the provider-neutral error classification helpers."""

from __future__ import annotations

import time
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from router_jobs.errors import ProviderOverloaded, ProviderRateLimited, QuotaExhausted, TransientProviderError
from router_jobs.models import ChatMessage
from router_jobs.providers import errors_map as em
from router_jobs.secrets.scan import KNOWN_KIND, main, scan_paths
from router_jobs.tokens import estimate_text_tokens, estimate_tokens, heuristic_text_tokens

CANARY = "zz-canary-value-9f8e7d6c5b"


def test_scan_finds_planted_and_configured_values_and_prints_no_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.py").write_text(
        'x = 1\naws_access_key_id = "AKIAIOSFODNN7EXAMPLE"\n'
        'private = """-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"""\n'
    )
    (tmp_path / "notes.txt").write_text(f"hello\nthe key is {CANARY} ok\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_text(CANARY)
    findings = scan_paths([tmp_path], known_secrets=[CANARY])
    kinds = {(Path(f.file).name, f.line, f.kind) for f in findings}
    assert ("notes.txt", 2, KNOWN_KIND) in kinds
    assert ("config.py", 2, "AWS Access Key") in kinds
    assert any(k[0] == "config.py" and "Private Key" in k[2] for k in kinds)
    assert not any(".git" in f.file for f in findings)
    for f in findings:
        assert CANARY not in str(f) and "AKIAIOSFODNN7EXAMPLE" not in str(f)
    assert main([str(tmp_path), "--fail-on-found"]) == 1
    out = capsys.readouterr()
    assert "AKIAIOSFODNN7EXAMPLE" not in out.out + out.err and "config.py:2" in out.out


def test_scan_clean_tree(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print('hello world')\n")
    assert scan_paths([tmp_path], known_secrets=[CANARY]) == []
    assert main([str(tmp_path), "--fail-on-found"]) == 0


# reference counts: OpenAI's cl100k_base encoding of each text
REFERENCE = {
    "The quick brown fox jumps over the lazy dog. Meanwhile, the committee reconvened to discuss the "
    "unprecedented circumstances surrounding yesterday's announcement, which had surprised nearly "
    "everyone in attendance.": 35,
    'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers."""\n    out = [0, 1]\n'
    "    while len(out) < n:\n        out.append(out[-1] + out[-2])\n    return out[:n]\n\n"
    'if __name__ == "__main__":\n    print(fibonacci(10))\n': 70,
    '{"keys": [{"key_id": "gemini-flash-01", "model_name": "gemini-2.5-flash", "provider": "gemini", '
    '"rpm": 10, "tpm": 250000, "rpd": 1500, "active": true}]}': 62,
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。多くの観光客が毎年訪れます。": 49,
    "Invoice 2024-0001: 1234567 units at 89.99 each, total 111098765.33; due 2025-03-31.": 37,
}


@pytest.mark.parametrize("text,ref", list(REFERENCE.items()), ids=["prose", "code", "json", "cjk", "numbers"])
def test_heuristic_within_band_and_errs_high(text: str, ref: int) -> None:
    est = heuristic_text_tokens(text)
    assert ref * 0.98 <= est <= ref * 1.6


@pytest.mark.parametrize("text,ref", list(REFERENCE.items()), ids=["prose", "code", "json", "cjk", "numbers"])
def test_estimate_is_exact_or_heuristic(text: str, ref: int) -> None:
    est = estimate_text_tokens(text)
    assert ref * 0.98 <= est <= ref * 1.6


def test_estimate_tokens_messages_and_model_factor() -> None:
    msgs = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hello there")]
    base = estimate_tokens(msgs, "gpt-4o")
    assert base >= estimate_text_tokens("be brief") + estimate_text_tokens("hello there") + 8
    assert estimate_tokens(msgs, "claude-sonnet-4") > base
    assert estimate_tokens([], "x") == 0 and estimate_text_tokens("") == 0


# ---------------------------------------------------------------- classification helpers


def test_durations_and_retry_after() -> None:
    assert em.parse_duration("6m0s") == 360 and em.parse_duration("20ms") == 0.02
    assert em.parse_duration("1.5s") == 1.5 and em.parse_duration("1h2m3s") == 3723
    assert em.parse_duration("soon") is None
    now = time.time()
    assert em.parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert em.parse_retry_after({"retry-after": "9"}) == 9
    date = formatdate(now + 30, usegmt=True)
    wait = em.parse_retry_after({"retry-after": date}, now=now)
    assert wait is not None and 28 <= wait <= 31
    assert em.retry_hint_from_message("Please try again in 1.5s.") == 1.5
    assert em.retry_hint_from_message("Please try again in 6m0s.") == 360


def test_next_pacific_midnight() -> None:
    tz = ZoneInfo("America/Los_Angeles")
    now = datetime(2025, 3, 9, 1, 30, tzinfo=tz).timestamp()  # DST switch day
    reset = datetime.fromtimestamp(em.next_pacific_midnight(now), tz)
    assert (reset.year, reset.month, reset.day, reset.hour, reset.minute) == (2025, 3, 10, 0, 0)


def test_anthropic_mid_stream_error_event_and_spend_limit() -> None:
    event = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert isinstance(em.classify_anthropic(None, {}, event), ProviderOverloaded)
    api_err = {"type": "error", "error": {"type": "api_error", "message": "Internal"}}
    assert isinstance(em.classify_anthropic(None, {}, api_err), TransientProviderError)
    spend = {"type": "error", "error": {"type": "invalid_request_error", "message":
             "You have reached your specified API usage limits. You will regain access on 2030-01-01 at 00:00 UTC."}}
    q = em.classify_anthropic(400, {}, spend)
    assert isinstance(q, QuotaExhausted) and q.reset_at == datetime.fromisoformat("2030-01-01T00:00:00+00:00").timestamp()


def test_rate_limit_header_parsing() -> None:
    info = em.openai_rate_limit({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-tokens": "20ms"}, now=100.0)
    assert info is not None and info.remaining_requests == 5 and info.reset_tokens_at == pytest.approx(100.02)
    a = em.anthropic_rate_limit({"anthropic-ratelimit-requests-remaining": "0",
                                 "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:30Z"})
    assert a is not None and a.remaining_requests == 0 and a.reset_requests_at is not None
    assert em.openai_rate_limit({}) is None and em.anthropic_rate_limit({}) is None
    err = em.classify_openai(429, {"x-ratelimit-reset-requests": "2s"}, {"error": {"message": "Rate limit", "type": "requests"}})
    assert isinstance(err, ProviderRateLimited) and err.retry_after == 2.0


def test_redact_patterns() -> None:
    assert "s3cr3tvalue" not in em.redact("Authorization: Bearer s3cr3tvalue123")
    assert em.redact("url?key=AIzaXYZ&x=1").startswith("url?key=[REDACTED]")
    assert "canary" not in em.redact("my canary-key-value", ["canary-key-value"])
