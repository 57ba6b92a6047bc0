"""Shared helpers that turn a provider's HTTP failure into the library's error classes.

The adapters pull ``status``, ``headers`` and the decoded ``body`` out of whatever exception
their SDK raised and hand them to the ``classify_*`` functions here, which know each
provider's wire format (error bodies, rate-limit headers, retry hints). Keeping the mapping on
plain data means it is tested without any SDK, and the SDK exception (which may carry request
objects, headers or ``?key=`` URLs) never travels further than the adapter.

Every message built here goes through :func:`redact` with the key's value, so no error text
can carry a secret even when a provider echoes the key back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from router_jobs.errors import (
    BadRequest,
    ContentBlocked,
    KeyInvalid,
    ProviderError,
    ProviderOverloaded,
    ProviderRateLimited,
    QuotaExhausted,
    RequestTooLarge,
    TransientProviderError,
)
from router_jobs.providers.base import RateLimitInfo
from router_jobs.secrets.fragments import FragmentIndex

REDACTED = "[REDACTED]"
_MAX_MESSAGE = 500

_KEYISH = re.compile(r"(?i)(api[_ -]?key(?: provided)?[:=]\s*)(\S+)")
_QUERY_KEY = re.compile(r"(?i)([?&](?:key|api[_-]?key)=)[^&\s'\"]+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str, secrets: Iterable[str] = (), fragments: FragmentIndex | None = None) -> str:
    """Remove every known secret and any piece of one (see :mod:`router_jobs.secrets.fragments`;
    ``fragments`` is a prebuilt index of ``secrets``), ``?key=`` values, bearer tokens and
    "API key: X" echoes."""
    secrets = tuple(secrets)
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    text = (fragments if fragments is not None else FragmentIndex(secrets)).redact(text, REDACTED)
    text = _QUERY_KEY.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    return _KEYISH.sub(r"\1" + REDACTED, text)


# ---------------------------------------------------------------- durations and retry hints

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Parse OpenAI/Go style durations (``"6m0s"``, ``"20ms"``, ``"1.5s"``, ``"12s"``) to seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_TRY_AGAIN = re.compile(r"(?i)try again in\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")


def retry_hint_from_message(message: str) -> float | None:
    """The wait in a message like "Please try again in 1.5s" (or "in 6m0s", "in 20ms")."""
    m = _TRY_AGAIN.search(message or "")
    return parse_duration(m.group(1)) if m else None


def parse_rfc3339(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (``2025-01-01T00:00:30Z``), or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def openai_rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` (durations) as RateLimitInfo."""
    now = time.time() if now is None else now
    rr, rt = _int(headers.get("x-ratelimit-remaining-requests")), _int(headers.get("x-ratelimit-remaining-tokens"))
    dr, dt = parse_duration(headers.get("x-ratelimit-reset-requests")), parse_duration(headers.get("x-ratelimit-reset-tokens"))
    if rr is None and rt is None and dr is None and dt is None:
        return None
    return RateLimitInfo(
        remaining_requests=rr,
        remaining_tokens=rt,
        reset_requests_at=None if dr is None else now + dr,
        reset_tokens_at=None if dt is None else now + dt,
    )


def anthropic_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """``anthropic-ratelimit-{requests,tokens}-{remaining,reset}`` (RFC 3339) as RateLimitInfo."""
    p = "anthropic-ratelimit-"
    rr, rt = _int(headers.get(p + "requests-remaining")), _int(headers.get(p + "tokens-remaining"))
    if rt is None:
        ins, outs = _int(headers.get(p + "input-tokens-remaining")), _int(headers.get(p + "output-tokens-remaining"))
        rt = min((v for v in (ins, outs) if v is not None), default=None)
    ar, at = parse_rfc3339(headers.get(p + "requests-reset")), parse_rfc3339(headers.get(p + "tokens-reset"))
    if at is None:
        at = parse_rfc3339(headers.get(p + "input-tokens-reset"))
    if rr is None and rt is None and ar is None and at is None:
        return None
    return RateLimitInfo(remaining_requests=rr, remaining_tokens=rt, reset_requests_at=ar, reset_tokens_at=at)


def next_pacific_midnight(now: float | None = None) -> float:
    """Epoch seconds of the next midnight in US/Pacific, when Google resets per-day quotas."""
    now = time.time() if now is None else now
    try:
        tz = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no tz database here: standard time, off by 1 h at worst
        pst = timezone(timedelta(hours=-8))
        local = datetime.fromtimestamp(now, pst)
        return (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    local = datetime.fromtimestamp(now, tz)
    nxt = (local.replace(tzinfo=None) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return nxt.replace(tzinfo=tz).timestamp()


def _clip(message: str, secrets: Iterable[str]) -> str:
    msg = redact(" ".join(str(message).split()), secrets)
    return msg if len(msg) <= _MAX_MESSAGE else msg[:_MAX_MESSAGE] + "…"


def _error_obj(body: Any) -> dict[str, Any]:
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return err
    return {}


# ---------------------------------------------------------------- OpenAI


def classify_openai(
    status: int, headers: Mapping[str, str], body: Any, *, provider: str = "openai",
    secrets: Iterable[str] = (), fallback_message: str = "", now: float | None = None,
) -> ProviderError:
    """Map an OpenAI (or OpenAI-compatible) HTTP error to the library's error class."""
    secrets = tuple(secrets)
    err = _error_obj(body)
    code, etype = str(err.get("code") or ""), str(err.get("type") or "")
    raw_msg = str(err.get("message") or fallback_message or f"HTTP {status}")
    msg = f"{provider} {status}: {_clip(raw_msg, secrets)}"
    kw: dict[str, Any] = {"provider": provider, "status": status}
    low = raw_msg.lower()
    if status == 429:
        if code == "insufficient_quota" or etype == "insufficient_quota":
            return QuotaExhausted(msg, **kw)
        if "request too large" in low:
            return RequestTooLarge(msg, **kw)
        kind = "tokens" if (etype == "tokens" or " tokens per " in low or "(tpm)" in low) else "requests"
        wait = parse_retry_after(headers, now)
        if wait is None:
            wait = retry_hint_from_message(raw_msg)
        if wait is None:
            reset = headers.get("x-ratelimit-reset-tokens" if kind == "tokens" else "x-ratelimit-reset-requests")
            wait = parse_duration(reset)
        return ProviderRateLimited(msg, kind=kind, retry_after=wait, **kw)
    if status in (401, 403):
        return KeyInvalid(msg, **kw)
    if code == "context_length_exceeded" or "maximum context length" in low or status == 413:
        return RequestTooLarge(msg, **kw)
    if code == "content_filter" or code == "content_policy_violation":
        return ContentBlocked(msg, **kw)
    if status == 503 and ("overload" in low or "capacity" in low):
        return ProviderOverloaded(msg, retry_after=parse_retry_after(headers, now), **kw)
    if status == 408 or status >= 500:
        return TransientProviderError(msg, retry_after=parse_retry_after(headers, now), **kw)
    return BadRequest(msg, **kw)


# ---------------------------------------------------------------- Anthropic

_REGAIN = re.compile(r"regain access on (\d{4}-\d{2}-\d{2})(?: at (\d{2}:\d{2}))? ?UTC", re.I)
_QUOTA_WORDS = ("credit balance", "usage limit", "spend limit", "billing")


def classify_anthropic(
    status: int | None, headers: Mapping[str, str], body: Any, *, provider: str = "anthropic",
    secrets: Iterable[str] = (), fallback_message: str = "", now: float | None = None,
) -> ProviderError:
    """Map an Anthropic error (HTTP error, or an ``error`` event mid-stream) to an error class.

    ``status`` is None for an error event that arrived after HTTP 200.
    """
    secrets = tuple(secrets)
    err = _error_obj(body)
    etype = str(err.get("type") or "")
    raw_msg = str(err.get("message") or fallback_message or f"HTTP {status}")
    low = raw_msg.lower()
    msg = f"{provider} {status or 'stream'}: {_clip(raw_msg, secrets)}"
    kw: dict[str, Any] = {"provider": provider, "status": status}
    if etype == "overloaded_error" or status == 529:
        return ProviderOverloaded(msg, retry_after=parse_retry_after(headers, now), **kw)
    if etype == "billing_error" or status == 402 or any(w in low for w in _QUOTA_WORDS):
        reset_at = None
        m = _REGAIN.search(raw_msg)
        if m:
            reset_at = datetime.fromisoformat(f"{m.group(1)}T{m.group(2) or '00:00'}:00+00:00").timestamp()
        return QuotaExhausted(msg, reset_at=reset_at, **kw)
    if etype == "rate_limit_error" or status == 429:
        p = "anthropic-ratelimit-"
        tok_zero = any(headers.get(p + n + "-remaining") == "0" for n in ("tokens", "input-tokens", "output-tokens"))
        req_zero = headers.get(p + "requests-remaining") == "0"
        kind = "tokens" if tok_zero or (not req_zero and "token" in low) else "requests"
        wait = parse_retry_after(headers, now)
        if wait is None:
            reset = parse_rfc3339(headers.get(p + ("tokens-reset" if kind == "tokens" else "requests-reset")))
            if reset is not None:
                wait = max(0.0, reset - (time.time() if now is None else now))
        return ProviderRateLimited(msg, kind=kind, retry_after=wait, **kw)
    if etype in ("authentication_error", "permission_error") or status in (401, 403):
        return KeyInvalid(msg, **kw)
    if etype == "request_too_large" or status == 413 or "prompt is too long" in low:
        return RequestTooLarge(msg, **kw)
    if etype in ("api_error", "timeout_error") or (status is not None and (status >= 500 or status == 408)):
        return TransientProviderError(msg, retry_after=parse_retry_after(headers, now), **kw)
    return BadRequest(msg, **kw)


# ---------------------------------------------------------------- Gemini

_GTYPE = "type.googleapis.com/google.rpc."


def _details(err: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    out = []
    for d in err.get("details") or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc." + kind):
            out.append(d)
    return out


def classify_gemini(
    status: int, headers: Mapping[str, str], body: Any, *, provider: str = "gemini",
    secrets: Iterable[str] = (), fallback_message: str = "", now: float | None = None,
) -> ProviderError:
    """Map a Gemini API error (``google.rpc.Status`` JSON body) to the library's error class."""
    secrets = tuple(secrets)
    err = _error_obj(body)
    gstatus = str(err.get("status") or "")
    raw_msg = str(err.get("message") or fallback_message or f"HTTP {status}")
    low = raw_msg.lower()
    msg = f"{provider} {status} {gstatus}: {_clip(raw_msg, secrets)}".replace("  ", " ")
    kw: dict[str, Any] = {"provider": provider, "status": status}
    reasons = {str(d.get("reason", "")) for d in _details(err, "ErrorInfo")}
    if "API_KEY_INVALID" in reasons or status in (401, 403) or gstatus in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return KeyInvalid(msg, **kw)
    if status == 429 or gstatus == "RESOURCE_EXHAUSTED":
        wait = None
        for d in _details(err, "RetryInfo"):
            wait = parse_duration(str(d.get("retryDelay", "")))
        if wait is None:
            wait = parse_retry_after(headers, now)
        if wait is None:
            wait = retry_hint_from_message(raw_msg) or _gemini_retry_in(raw_msg)
        quota_ids = [
            str(v.get("quotaId", "")) + " " + str(v.get("quotaMetric", ""))
            for d in _details(err, "QuotaFailure") for v in d.get("violations") or []
        ]
        if any("perday" in q.lower() for q in quota_ids):
            return QuotaExhausted(msg, reset_at=next_pacific_midnight(now), retry_after=wait, **kw)
        kind = "tokens" if any("token" in q.lower() for q in quota_ids) or (not quota_ids and "token" in low) else "requests"
        return ProviderRateLimited(msg, kind=kind, retry_after=wait, **kw)
    if status == 400 and ("token" in low and ("exceed" in low or "limit" in low)):
        return RequestTooLarge(msg, **kw)
    if status == 413:
        return RequestTooLarge(msg, **kw)
    if status == 503 or gstatus == "UNAVAILABLE":
        return ProviderOverloaded(msg, retry_after=parse_retry_after(headers, now), **kw)
    if status >= 500 or status == 408 or gstatus == "DEADLINE_EXCEEDED":
        return TransientProviderError(msg, retry_after=parse_retry_after(headers, now), **kw)
    return BadRequest(msg, **kw)


_RETRY_IN = re.compile(r"(?i)retry in (\d+(?:\.\d+)?)\s*s")


def _gemini_retry_in(message: str) -> float | None:
    m = _RETRY_IN.search(message)
    return float(m.group(1)) if m else None


def transient(message: str, *, provider: str, secrets: Iterable[str] = ()) -> TransientProviderError:
    """A timeout or connection failure, with nothing of the request in the message."""
    return TransientProviderError(f"{provider}: {_clip(message, secrets)}", provider=provider)


def lower_headers(headers: Any) -> dict[str, str]:
    """Headers of any SDK's response as a plain dict with lower-case names."""
    if headers is None:
        return {}
    try:
        items = headers.items()
    except AttributeError:
        return {}
    return {str(k).lower(): str(v) for k, v in items}
