"""Batch input lines: the three JSONL forms ``routerctl batch run`` reads, as job fields.

* **OpenAI Batch API**: ``{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
  "body": {"model": ..., "messages": [...], "max_tokens": ...}}``;
* **OpenAI cookbook parallel processor**: one request body per line, ``{"model": ...,
  "messages": [...], "max_tokens": ..., "temperature": ..., "metadata": {...}}``;
* **plain**: ``{"prompt": "...", "system": "...", "model": ..., "custom_id": ...}``.

:func:`body_fields` is the one converter from an OpenAI chat-completions request body to
job fields (the HTTP gateway uses it too). A body's ``messages`` may carry a system (or
``developer``) message; content as a string or a list of parts (``text``, ``image_url`` with an
http(s) or base64 ``data:`` URL and ``detail``, Anthropic-style ``image`` blocks); assistant
``tool_calls`` and ``tool`` messages. ``tools`` (functions), ``tool_choice``,
``parallel_tool_calls``, ``response_format`` (``json_object``, or ``json_schema`` with its
name, schema and ``strict``), ``reasoning_effort`` and ``seed`` map to the job's fields;
``max_tokens``/``max_completion_tokens`` become the job's output limit; ``metadata`` is passed
through to the job and to the output line. What the broker cannot do (``n`` > 1, audio,
legacy ``functions``, non-function tools) is refused with kind ``unsupported``, never ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_URLS = ("/v1/chat/completions", "/chat/completions", "/v1/messages")


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


def _image(p: dict[str, Any]) -> dict[str, Any]:
    """A neutral image part from an ``image_url`` / ``input_image`` part or an ``image`` block."""
    if p.get("type") == "image":  # Anthropic-style block
        src: dict[str, Any] = p["source"] if isinstance(p.get("source"), dict) else {}
        if src.get("type") == "base64":
            return {"type": "image", "data": src.get("data"), "media_type": src.get("media_type")}
        return {"type": "image", "url": src.get("url")}
    ref = p.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    detail = (ref.get("detail") if isinstance(ref, dict) else None) or p.get("detail")
    if not isinstance(url, str):
        raise LineError("invalid_request", "an image part needs image_url.url")
    out: dict[str, Any] = {"type": "image"}
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64"):
            raise LineError("invalid_request", "an image data URL must be base64")
        out.update(data=data, media_type=head[5:-7])
    else:
        out["url"] = url
    if detail is not None:
        out["detail"] = detail
    return out


def _content(content: Any) -> str | list[dict[str, Any]]:
    """Neutral content: a string, or parts (plain text when every part is text)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise LineError("invalid_request", "message content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
        elif isinstance(p, dict) and p.get("type", "text") in ("text", "input_text"):
            parts.append({"type": "text", "text": str(p.get("text", ""))})
        elif isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image"):
            parts.append(_image(p))
        else:
            kind = p.get("type") if isinstance(p, dict) else p
            raise LineError("unsupported", f"content part of type {kind!r} is not supported (text and images only)")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise LineError("invalid_request", "tool_calls must be a list")
    calls = []
    for c in raw:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or c.get("type", "function") != "function":
            raise LineError("unsupported", "only function tool calls are supported")
        calls.append({"id": c.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments") or "{}"})
    return calls


def _message(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise LineError("invalid_request", "each message must be an object")
    role = m.get("role")
    if role == "user":
        return {"role": "user", "content": _content(m.get("content"))}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": _content(m.get("content"))}
        if m.get("tool_calls"):
            out["tool_calls"] = _tool_calls(m["tool_calls"])
        return out
    if role == "tool":
        if not m.get("tool_call_id"):
            raise LineError("invalid_request", "a tool message needs tool_call_id")
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": _content(m.get("content"))}
    raise LineError("unsupported", f"message role {role!r} is not supported")


def _messages(raw: Any) -> tuple[str | None, list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise LineError("invalid_request", "messages must be a non-empty list")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in raw:
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            text = _content(m.get("content", ""))
            if not isinstance(text, str):
                raise LineError("invalid_request", "a system message holds text only")
            system.append(text)
        else:
            out.append(_message(m))
    return ("\n\n".join(system) if system else None), out


def _tools(body: dict[str, Any], fields: dict[str, Any]) -> None:
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise LineError("unsupported", "legacy functions/function_call are not supported: use tools")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise LineError("invalid_request", "tools must be a list")
        out = []
        for t in tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or t.get("type") != "function":
                raise LineError("unsupported", "only function tools are supported")
            out.append({k: fn[k] for k in ("name", "description", "parameters", "strict") if fn.get(k) is not None})
        fields["tools"] = out or None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        named: dict[str, Any] = choice["function"] if isinstance(choice.get("function"), dict) else {}
        fields["tool_choice"] = {"name": named.get("name")}
    elif choice is not None:
        fields["tool_choice"] = choice
    if body.get("parallel_tool_calls") is not None:
        fields["parallel_tool_calls"] = body["parallel_tool_calls"]


def _output(body: dict[str, Any], fields: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        fields["json_output"] = True
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        js: dict[str, Any] = fmt["json_schema"] if isinstance(fmt.get("json_schema"), dict) else {}
        fields["response_format"] = {"type": "json_schema", "name": js.get("name", "response"),
                                     "json_schema": js.get("schema"), "strict": bool(js.get("strict"))}
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        fields["reasoning"] = {"effort": effort}
    if body.get("seed") is not None:
        fields["seed"] = body["seed"]
    if (body.get("n") or 1) != 1:
        raise LineError("unsupported", "n > 1 is not supported (submit one job per answer)")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise LineError("unsupported", "audio output is not supported")


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
    _tools(body, fields)
    _output(body, fields)
    if body.get("fallback_models"):
        fields["fallback_models"] = list(body["fallback_models"])
    return fields


def parse_line(line_no: int, text: str) -> BatchRequest:
    """One input line (any of the three forms); raises LineError for what cannot be a job."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError("invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_json", "a line must be a JSON object")
    custom_id = None if obj.get("custom_id") is None else str(obj["custom_id"])
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
