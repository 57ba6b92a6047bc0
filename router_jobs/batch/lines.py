"""Batch input lines: the three JSONL forms ``routerctl batch run`` reads, as job fields.

* **OpenAI Batch API**: ``{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
  "body": {"model": ..., "messages": [...], "max_tokens": ...}}``;
* **OpenAI cookbook parallel processor**: one request body per line, ``{"model": ...,
  "messages": [...], "max_tokens": ..., "temperature": ..., "metadata": {...}}``;
* **plain**: ``{"prompt": "...", "system": "...", "model": ..., "custom_id": ...}``.

A body's ``messages`` may carry a system (or ``developer``) message and content as a string
or a list of text parts; ``max_tokens``/``max_completion_tokens`` become the job's output
limit; ``response_format`` of type ``json_object``/``json_schema`` asks for JSON output;
``metadata`` is passed through to the job and to the output line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from router_jobs.models import check_json_value

SUPPORTED_URLS = ("/v1/chat/completions", "/chat/completions", "/v1/messages")
#: How deeply a line may nest; a request body needs a handful of levels.
MAX_LINE_DEPTH = 64


def _printable(text: str) -> str:
    """``text`` with anything that cannot be written as UTF-8 replaced (it is echoed back)."""
    return text.encode("utf-8", "replace").decode("utf-8")


class LineError(ValueError):
    """A line that cannot become a job; ``kind`` and ``message`` go to the output line."""

    def __init__(self, kind: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.custom_id = custom_id


@dataclass
class BatchRequest:
    """One input line as job fields (for ``validate_spec``) plus what the output echoes."""

    line: int
    custom_id: str | None
    fields: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and p.get("type", "text") in ("text", "input_text"):
                parts.append(str(p.get("text", "")))
            else:
                raise LineError("unsupported", f"content part of type {p.get('type') if isinstance(p, dict) else p!r}"
                                " is not supported (text only)")
        return "".join(parts)
    raise LineError("invalid_request", "message content must be a string or a list of text parts")


def _messages(raw: Any) -> tuple[str | None, list[dict[str, str]]]:
    if not isinstance(raw, list) or not raw:
        raise LineError("invalid_request", "messages must be a non-empty list")
    system: list[str] = []
    out: list[dict[str, str]] = []
    for m in raw:
        if not isinstance(m, dict):
            raise LineError("invalid_request", "each message must be an object")
        role = m.get("role")
        text = _content_text(m.get("content", ""))
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            out.append({"role": role, "content": text})
        else:
            raise LineError("unsupported", f"message role {role!r} is not supported")
    return ("\n\n".join(system) if system else None), out


def body_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Job fields of a chat-completions style request body (model may be missing)."""
    fields: dict[str, Any] = {"model": body.get("model")}
    if "messages" in body:
        system, messages = _messages(body["messages"])
        if isinstance(body.get("system"), str):  # Anthropic-style top-level system prompt
            system = body["system"] + ("\n\n" + system if system else "")
        fields["system_prompt"] = system
        if messages:
            fields["messages"] = messages
        elif system:
            raise LineError("invalid_request", "messages hold only a system prompt")
    elif "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise LineError("invalid_request", "prompt must be a string")
        fields["prompt"] = body["prompt"]
        fields["system_prompt"] = body.get("system") or body.get("system_prompt")
    else:
        raise LineError("invalid_request", "a line needs messages (request body) or prompt")
    for name in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            fields["max_output_tokens"] = body[name]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            fields[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        fields["stop"] = [stop] if isinstance(stop, str) else stop
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        fields["json_output"] = True
    if body.get("fallback_models"):
        fields["fallback_models"] = list(body["fallback_models"])
    return fields


def parse_line(line_no: int, text: str) -> BatchRequest:
    """One input line (any of the three forms); raises LineError for what cannot be a job."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError("invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise LineError("invalid_json", f"nests deeper than {MAX_LINE_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise LineError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_json", "a line must be a JSON object")
    raw_id = obj.get("custom_id")
    custom_id = None if raw_id is None else _printable(str(raw_id))
    try:
        check_json_value(obj, MAX_LINE_DEPTH)
    except ValueError as exc:  # a lone surrogate (\\ud800), NaN, absurd nesting: this line only
        raise LineError("invalid_request", f"the line {exc}", custom_id) from None
    try:
        return _request(line_no, obj, custom_id)
    except LineError as exc:
        exc.custom_id = custom_id
        raise


def _request(line_no: int, obj: dict[str, Any], custom_id: str | None) -> BatchRequest:
    if isinstance(obj.get("body"), dict):  # Batch API form
        url = obj.get("url")
        if url is not None and url not in SUPPORTED_URLS:
            raise LineError("unsupported", f"url {url!r} is not supported (chat completions only)")
        body = obj["body"]
    else:
        body = obj
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    if body.get("metadata") is not None and not isinstance(body.get("metadata"), dict):
        raise LineError("invalid_request", "metadata must be an object")
    return BatchRequest(line=line_no, custom_id=custom_id, fields=body_fields(body), metadata=dict(metadata))
