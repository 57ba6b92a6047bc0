"""Each provider's wire format: how a request names its key and model, and the bodies and
headers of successes and of every failure the adapters classify.

A *scenario* names what the server should answer, the same names for every protocol:
``ok``, ``rate_limit_requests``, ``rate_limit_tokens``, ``quota``, ``invalid_key``,
``forbidden``, ``context_length``, ``too_large``, ``server_error``, ``unavailable``,
``overloaded``, ``blocked``, ``blocked_answer``, ``bad_request``, ``slow``. Options ride
after a ``?`` as a query string, e.g. ``rate_limit_requests?retry_after_ms=1500`` or
``slow?seconds=2``. ``invalid_key`` echoes the presented key in its message on purpose (real
providers echo part of it), so tests can prove the adapters redact it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Scenario:
    """A parsed scenario name with its options."""

    name: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scenario:
        name, _, query = text.strip().partition("?")
        return cls(name or "ok", dict(parse_qsl(query)))

    def num(self, option: str, default: float) -> float:
        return float(self.options.get(option, default))


@dataclass
class Reply:
    """What the handler writes back."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None  # a streamed answer: server-sent events (see :mod:`.sse`)
    chunk_delay: float = 0.0  # seconds between events
    output_tokens: int = 0  # of a streamed answer


def go_duration(seconds: float) -> str:
    """Format seconds the way OpenAI's reset headers do: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{s}s" if minutes else f"{s}s"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_headers(sc: Scenario, default: float | None = None) -> dict[str, str]:
    """``retry-after`` family headers as the scenario asks (or ``default`` seconds)."""
    h: dict[str, str] = {}
    if "retry_after_ms" in sc.options:
        h["retry-after-ms"] = sc.options["retry_after_ms"]
    if "retry_after" in sc.options:
        h["retry-after"] = sc.options["retry_after"]
    if "retry_after_date" in sc.options:
        h["retry-after"] = formatdate(time.time() + float(sc.options["retry_after_date"]), usegmt=True)
    if not h and default is not None:
        h["retry-after"] = str(int(default) if float(default).is_integer() else default)
    return h


# ---------------------------------------------------------------- OpenAI


def openai_error(sc: Scenario, key: str, model: str, wait: float) -> Reply:
    def err(status: int, message: str, etype: str, code: str | None, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, {"error": {"message": message, "type": etype, "param": None, "code": code}}, headers or {})

    n = sc.name
    if n in ("rate_limit_requests", "rate_limit_tokens"):
        kind = "requests" if n.endswith("requests") else "tokens"
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        hint = sc.options.get("hint", "message")
        msg = f"Rate limit reached for {model} in organization org-fake on {unit}: Limit 3, Used 3, Requested 1."
        if hint == "message":
            msg += f" Please try again in {go_duration(wait)}."
        headers = retry_headers(sc)
        headers[f"x-ratelimit-remaining-{kind}"] = "0"
        if hint in ("message", "reset"):
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(wait)
        return err(429, msg, kind, "rate_limit_exceeded", headers)
    if n == "quota":
        return err(429, "You exceeded your current quota, please check your plan and billing details.",
                   "insufficient_quota", "insufficient_quota")
    if n == "too_large":
        return err(429, f"Request too large for {model} in organization org-fake on tokens per min (TPM): "
                   "Limit 30000, Requested 250000. The input or output tokens must be reduced in order "
                   "to run successfully.", "tokens", "rate_limit_exceeded")
    if n == "invalid_key":
        return err(401, f"Incorrect API key provided: {key}. You can find your API key in your account settings.",
                   "invalid_request_error", "invalid_api_key")
    if n == "forbidden":
        return err(403, "You are not allowed to access this model.", "invalid_request_error", "model_not_allowed")
    if n == "context_length":
        return err(400, "This model's maximum context length is 128000 tokens. However, your messages resulted "
                   "in 130000 tokens. Please reduce the length of the messages.",
                   "invalid_request_error", "context_length_exceeded")
    if n == "server_error":
        return err(500, "The server had an error while processing your request. Sorry about that!", "server_error", None)
    if n in ("unavailable", "overloaded"):
        return err(503, "The engine is currently overloaded, please try again later", "server_error", None)
    return err(400, "Invalid value for 'temperature': must be between 0 and 2.", "invalid_request_error", "invalid_value")


#: what the fake model says when a scenario makes it refuse
REFUSAL = "I can't help with that."

#: a fake model's tool calls: (tool name, arguments)
Calls = list[tuple[str, dict[str, Any]]]


def openai_success(model: str, text: str, usage: dict[str, int], finish: str = "stop",
                   calls: Calls | None = None, refusal: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not (calls or refusal) else None,
                               "refusal": refusal}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}} for name, args in calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": usage["input"], "completion_tokens": usage["output"],
            "total_tokens": usage["input"] + usage["output"],
            "prompt_tokens_details": {"cached_tokens": usage["cached"], "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": usage["reasoning"], "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "system_fingerprint": "fp_fake",
    }


# ---------------------------------------------------------------- Anthropic


def anthropic_error(sc: Scenario, key: str, model: str, wait: float) -> Reply:
    def err(status: int, etype: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": f"req_{uuid.uuid4().hex[:20]}"}
        return Reply(status, body, headers or {})

    n = sc.name
    if n in ("rate_limit_requests", "rate_limit_tokens"):
        kind = "requests" if n.endswith("requests") else "input-tokens"
        reset = rfc3339(time.time() + wait)
        headers = retry_headers(sc, default=max(1, round(wait)))
        if sc.options.get("hint") == "reset":
            headers = {}
        headers.update({f"anthropic-ratelimit-{kind}-remaining": "0", f"anthropic-ratelimit-{kind}-reset": reset})
        if kind == "input-tokens":
            headers.update({"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": reset})
        what = "requests" if kind == "requests" else "50,000 input tokens"
        return err(429, "rate_limit_error", f"This request would exceed the rate limit for your organization of {what} per minute.", headers)
    if n == "quota":
        return err(400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API. "
                   "Please go to Plans & Billing to upgrade or purchase credits.")
    if n == "invalid_key":
        return err(401, "authentication_error", f"invalid x-api-key: {key}")
    if n == "forbidden":
        return err(403, "permission_error", "Your API key does not have permission to use the specified resource.")
    if n == "context_length":
        return err(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    if n == "too_large":
        return err(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")
    if n == "server_error":
        return err(500, "api_error", "Internal server error")
    if n == "unavailable":
        return err(503, "api_error", "Service unavailable")
    if n == "overloaded":
        return err(529, "overloaded_error", "Overloaded")
    return err(400, "invalid_request_error", "max_tokens: Field required")


def anthropic_success(model: str, text: str, usage: dict[str, int], stop: str = "end_turn",
                      calls: Calls | None = None, thinking: bool = False) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": "Let me think this through.",
                        "signature": f"sig-{uuid.uuid4().hex[:16]}"})
    if text:
        content.append({"type": "text", "text": text})
    content += [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": args}
                for name, args in calls or []]
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["input"] - usage["cached"] - usage.get("cache_write", 0),
            "cache_read_input_tokens": usage["cached"],
            "cache_creation_input_tokens": usage.get("cache_write", 0),
            "output_tokens": usage["output"],
        },
    }


# ---------------------------------------------------------------- Gemini

_G = "type.googleapis.com/google.rpc."


def gemini_error(sc: Scenario, key: str, model: str, wait: float) -> Reply:
    def err(status: int, gstatus: str, message: str, details: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None) -> Reply:
        e: dict[str, Any] = {"code": status, "message": message, "status": gstatus}
        if details:
            e["details"] = details
        return Reply(status, {"error": e}, headers or {})

    n = sc.name
    if n in ("rate_limit_requests", "rate_limit_tokens", "quota"):
        if n == "quota":
            qid, metric = "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "generate_content_free_tier_requests"
        elif n == "rate_limit_tokens":
            qid, metric = "GenerateContentInputTokensPerModelPerMinute-FreeTier", "generate_content_free_tier_input_token_count"
        else:
            qid, metric = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "generate_content_free_tier_requests"
        secs = f"{wait:.0f}s" if float(wait).is_integer() else f"{wait:.3f}s"
        details: list[dict[str, Any]] = [
            {"@type": _G + "QuotaFailure", "violations": [{
                "quotaMetric": f"generativelanguage.googleapis.com/{metric}", "quotaId": qid,
                "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "10"}]},
            {"@type": _G + "Help", "links": [{"description": "Learn more about Gemini API quotas",
                                              "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": _G + "RetryInfo", "retryDelay": secs},
        ]
        return err(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing "
                   f"details. Please retry in {wait:.3f}s.", details, retry_headers(sc))
    if n == "invalid_key":
        return err(400, "INVALID_ARGUMENT", f"API key not valid. Please pass a valid API key. (?key={key})", [
            {"@type": _G + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}}])
    if n == "forbidden":
        return err(403, "PERMISSION_DENIED", "Permission denied: Consumer has been suspended.")
    if n in ("context_length", "too_large"):
        return err(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")
    if n == "server_error":
        return err(500, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting")
    if n in ("unavailable", "overloaded"):
        return err(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    return err(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"")


def gemini_success(model: str, text: str, usage: dict[str, int], finish: str = "STOP",
                   block_reason: str | None = None, calls: Calls | None = None) -> dict[str, Any]:
    meta = {
        "promptTokenCount": usage["input"],
        "candidatesTokenCount": usage["output"] - usage["reasoning"],
        "totalTokenCount": usage["input"] + usage["output"],
        "cachedContentTokenCount": usage["cached"],
        "thoughtsTokenCount": usage["reasoning"],
    }
    if block_reason:
        return {"promptFeedback": {"blockReason": block_reason}, "usageMetadata": meta, "modelVersion": model}
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    signed = model.startswith("gemini-3")  # Gemini 3 signs its function calls
    parts += [{"functionCall": {"name": name, "args": args},
               **({"thoughtSignature": base64.b64encode(uuid.uuid4().bytes).decode()} if signed else {})}
              for name, args in calls or []]
    content: dict[str, Any] = {"role": "model", "parts": parts}
    return {
        "candidates": [{"content": content, "finishReason": finish, "index": 0}],
        "usageMetadata": meta,
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:20],
    }


ERRORS = {"openai": openai_error, "anthropic": anthropic_error, "gemini": gemini_error}
