"""Reading a request in each provider's real wire format, as strictly as the real API.

:func:`parse_request` checks a request body the way the provider does for the features the
broker maps (content parts and images, tools and tool choice, tool calls and their results,
JSON output formats, thinking) and answers a 400 in the provider's own error envelope when
the body is malformed, so a mapping mistake in an adapter fails a test instead of passing
by luck. What it reads is a :class:`RequestView`: the neutral facts the fake model needs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: tokens the fake servers count per image (real providers: 85 to ~1,600 by size)
IMAGE_TOKENS = 258


@dataclass
class RequestView:
    """The facts of one request that the fake model and the records need."""

    secret: str
    model: str
    prompt: str  # the last user message's text
    all_text: str  # every message's text, the system prompt and the tool schemas
    tool_results: list[str] = field(default_factory=list)  # results ending the conversation
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    choice: str = "auto"  # auto | none | required | a tool's name
    parallel: bool = True
    schema: dict[str, Any] | None = None
    images: int = 0
    thinking: bool = False
    cache_breakpoints: int = 0  # Anthropic blocks and tools marked with cache_control


class Invalid(ValueError):
    """The body breaks the provider's rules; the message is what the provider would say."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise Invalid(message)


def _b64(data: Any, where: str) -> None:
    _need(isinstance(data, str) and bool(data), f"{where}: base64 data required")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{where}: invalid base64 data") from None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


# ---------------------------------------------------------------- OpenAI


def _openai_parts(content: Any, where: str) -> int:
    if isinstance(content, str) or content is None:
        return 0
    _need(isinstance(content, list), f"{where}.content: must be a string or an array of parts")
    images = 0
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            _need(isinstance(p.get("text"), str), f"{where}.content[{j}].text: required")
        elif kind == "image_url":
            url = (p.get("image_url") or {}).get("url", "")
            ok = url.startswith(("http://", "https://")) or (url.startswith("data:image/") and ";base64," in url)
            _need(ok, f"{where}.content[{j}].image_url.url: must be an http(s) URL or a base64 data URL")
            if url.startswith("data:"):
                _b64(url.split(",", 1)[1], f"{where}.content[{j}].image_url.url")
            _need((p["image_url"].get("detail") or "auto") in ("auto", "low", "high"),
                  f"{where}.content[{j}].image_url.detail: invalid")
            images += 1
        else:
            raise Invalid(f"{where}.content[{j}].type: unsupported part type {kind!r}")
    return images


def openai_view(body: dict[str, Any], headers: Mapping[str, str]) -> RequestView:
    """Read (and check) a chat-completions body."""
    msgs = body.get("messages") or []
    view = RequestView(_bearer(headers), str(body.get("model", "")), "", "")
    texts: list[str] = []
    open_calls: set[str] = set()
    for i, m in enumerate(msgs):
        where, role = f"messages[{i}]", m.get("role")
        _need(role in ("system", "developer", "user", "assistant", "tool"), f"{where}.role: invalid {role!r}")
        view.images += _openai_parts(m.get("content"), where)
        text = _text_of(m.get("content"))
        texts.append(text)
        if role == "assistant":
            open_calls = set()
            for j, c in enumerate(m.get("tool_calls") or []):
                fn = c.get("function") or {}
                _need(c.get("type") == "function" and bool(c.get("id")) and bool(fn.get("name"))
                      and isinstance(fn.get("arguments"), str), f"{where}.tool_calls[{j}]: malformed")
                open_calls.add(c["id"])
                texts.append(fn["name"] + fn["arguments"])
            view.tool_results = []
        elif role == "tool":
            _need(m.get("tool_call_id") in open_calls, "Invalid parameter: messages with role 'tool' must be a "
                  "response to a preceeding message with 'tool_calls'.")
            view.tool_results.append(text)
        elif role == "user":
            view.prompt, view.tool_results = text, []
    for j, t in enumerate(body.get("tools") or []):
        fn = t.get("function") or {}
        _need(t.get("type") == "function" and bool(fn.get("name")), f"tools[{j}]: malformed")
        view.tools.append((fn["name"], fn.get("parameters") or {"type": "object"}))
        texts.append(json.dumps(t))
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        _need(choice.get("type") == "function" and bool((choice.get("function") or {}).get("name")),
              "tool_choice: malformed")
        view.choice = choice["function"]["name"]
    else:
        _need(choice in ("auto", "none", "required"), f"tool_choice: invalid {choice!r}")
        view.choice = choice
    view.parallel = body.get("parallel_tool_calls", True) is not False
    fmt = body.get("response_format")
    if fmt is not None:
        _need(fmt.get("type") in ("text", "json_object", "json_schema"), "response_format.type: invalid")
        if fmt["type"] == "json_schema":
            js = fmt.get("json_schema") or {}
            _need(bool(js.get("name")) and isinstance(js.get("schema"), dict),
                  "response_format.json_schema: needs name and schema")
            view.schema = js["schema"]
    effort = body.get("reasoning_effort")
    _need(effort in (None, "none", "minimal", "low", "medium", "high", "xhigh"), "reasoning_effort: invalid")
    view.thinking = effort not in (None, "none")
    view.all_text = " ".join(texts)
    return view


# ---------------------------------------------------------------- Anthropic


def _anthropic_blocks(content: Any, where: str, role: str, prev_calls: set[str], view: RequestView) -> list[str]:
    if isinstance(content, str):
        return [content]
    _need(isinstance(content, list), f"{where}.content: must be a string or a list of blocks")
    texts: list[str] = []
    for j, b in enumerate(content):
        kind, at = b.get("type"), f"{where}.content.{j}"
        if kind == "text":
            _need(isinstance(b.get("text"), str), f"{at}.text: Field required")
            texts.append(b["text"])
        elif kind == "image":
            src = b.get("source") or {}
            if src.get("type") == "base64":
                _need(src.get("media_type") in ("image/png", "image/jpeg", "image/gif", "image/webp"),
                      f"{at}.source.media_type: invalid")
                _b64(src.get("data"), f"{at}.source.data")
            else:
                _need(src.get("type") == "url" and str(src.get("url", "")).startswith(("http://", "https://")),
                      f"{at}.source: must be base64 or url")
            view.images += 1
        elif kind == "tool_use":
            _need(role == "assistant" and bool(b.get("id")) and bool(b.get("name"))
                  and isinstance(b.get("input"), dict), f"{at}: malformed tool_use")
            texts.append(b["name"] + json.dumps(b["input"]))
        elif kind == "tool_result":
            _need(role == "user" and b.get("tool_use_id") in prev_calls,
                  f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: {b.get('tool_use_id')}. "
                  "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
            texts.append(_text_of(b.get("content")))
        elif kind in ("thinking", "redacted_thinking"):
            _need(role == "assistant", f"{at}: thinking blocks belong to the assistant")
        elif kind != "document":
            raise Invalid(f"{at}.type: unknown block type {kind!r}")
    return texts


def anthropic_view(body: dict[str, Any], headers: Mapping[str, str]) -> RequestView:
    """Read (and check) a Messages API body."""
    view = RequestView(headers.get("x-api-key") or _bearer(headers), str(body.get("model", "")), "", "")
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens", 0)
        _need(1024 <= budget < int(body.get("max_tokens", 0)),
              "thinking.budget_tokens: must be >= 1024 and less than max_tokens")
        view.thinking = True
    system = body.get("system") or ""
    if isinstance(system, list):
        _anthropic_blocks(system, "system", "system", set(), view)
    texts = [_text_of(system)]
    prev_calls: set[str] = set()
    msgs = body.get("messages") or []
    for i, m in enumerate(msgs):
        role, where = m.get("role"), f"messages.{i}"
        _need(role in ("user", "assistant"), f"{where}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        texts += _anthropic_blocks(content, where, role, prev_calls, view)
        blocks = content if isinstance(content, list) else []
        if role == "assistant":
            prev_calls = {b["id"] for b in blocks if b.get("type") == "tool_use"}
            if view.thinking and prev_calls and i == len(msgs) - 2:
                _need(blocks[0].get("type") in ("thinking", "redacted_thinking"),
                      f"{where}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                      f"`{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` message "
                      "must start with a thinking block.")
            view.tool_results = []
        else:
            results = [_text_of(b.get("content")) for b in blocks if b.get("type") == "tool_result"]
            if results:
                view.tool_results = results
            else:
                view.prompt, view.tool_results = _text_of(content), []
            prev_calls = set()
    for j, t in enumerate(body.get("tools") or []):
        _need(bool(t.get("name")) and isinstance(t.get("input_schema"), dict), f"tools.{j}: malformed")
        view.tools.append((t["name"], t["input_schema"]))
        texts.append(json.dumps(t))
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    _need(kind in ("auto", "any", "tool", "none"), "tool_choice.type: invalid")
    _need(kind != "tool" or bool(choice.get("name")), "tool_choice.name: Field required")
    _need(not (view.thinking and kind in ("any", "tool")),
          "Thinking may not be enabled when tool_choice forces tool use.")
    view.choice = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind), str(choice.get("name", "")))
    view.parallel = not choice.get("disable_parallel_tool_use", False)
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is not None:
        _need(fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict), "output_config.format: invalid")
        view.schema = fmt["schema"] if fmt["schema"].get("properties") else None
    effort = (body.get("output_config") or {}).get("effort")
    _need(effort in (None, "low", "medium", "high", "xhigh", "max"), "output_config.effort: invalid")
    view.all_text = " ".join(texts)
    view.cache_breakpoints = json.dumps(body).count('"cache_control"')
    return view


# ---------------------------------------------------------------- Gemini

#: fields whose values are the caller's data (schemas, arguments), never renamed
_GEMINI_DATA = {"args", "response", "parametersJsonSchema", "parameters", "responseJsonSchema", "responseSchema"}


def camel_keys(obj: Any) -> Any:
    """A Gemini body with its field names in camelCase.

    The API reads proto3 JSON, which takes ``mime_type`` and ``mimeType`` alike; the SDK sends
    a mix of both. Values of data fields (schemas, call arguments, results) are left as sent.
    """
    if isinstance(obj, list):
        return [camel_keys(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        head, *rest = k.split("_")
        name = head + "".join(w[:1].upper() + w[1:] for w in rest)
        out[name] = v if name in _GEMINI_DATA else camel_keys(v)
    return out



def gemini_view(model: str, secret: str, body: dict[str, Any]) -> RequestView:
    """Read (and check) a generateContent body."""
    view = RequestView(secret, model, "", "")
    sys_parts = (body.get("systemInstruction") or body.get("system_instruction") or {}).get("parts")
    texts = [_text_of(sys_parts)]
    calls_before = 0
    unsigned_calls: list[str] = []  # function calls since the last user text, without a signature
    for i, c in enumerate(body.get("contents") or []):
        role, where = c.get("role", "user"), f"contents[{i}]"
        _need(role in ("user", "model"), f"{where}.role: Please use a valid role: user, model.")
        calls = responses = 0
        results: list[str] = []
        user_text: list[str] = []
        for j, p in enumerate(c.get("parts") or []):
            at = f"{where}.parts[{j}]"
            if "text" in p:
                texts.append(str(p["text"]))
                user_text.append(str(p["text"]))
            elif "inlineData" in p:
                _need(bool(p["inlineData"].get("mimeType")), f"{at}.inline_data.mime_type: required")
                _b64(p["inlineData"].get("data"), f"{at}.inline_data.data")
                view.images += 1
            elif "fileData" in p:
                _need(bool(p["fileData"].get("mimeType")) and bool(p["fileData"].get("fileUri")),
                      f"{at}.file_data: needs file_uri and mime_type")
                view.images += 1
            elif "functionCall" in p:
                _need(role == "model" and bool(p["functionCall"].get("name")), f"{at}.function_call: malformed")
                calls += 1
                texts.append(p["functionCall"]["name"] + json.dumps(p["functionCall"].get("args") or {}))
                if not p.get("thoughtSignature"):
                    unsigned_calls.append(f"{at}.function_call")
            elif "functionResponse" in p:
                fr = p["functionResponse"]
                _need(role == "user" and bool(fr.get("name")) and isinstance(fr.get("response"), dict),
                      f"{at}.function_response: needs name and response")
                responses += 1
                results.append(json.dumps(fr["response"]))
            elif "thought" not in p and "thoughtSignature" not in p:
                raise Invalid(f"{at}: unsupported part {sorted(p)}")
        if responses:
            _need(responses == calls_before, "Please ensure that the number of function response parts is equal to "
                  "the number of function call parts of the function call turn.")
        calls_before = calls
        if role == "user":
            view.tool_results = results
            if not results:
                view.prompt = "".join(user_text)
                unsigned_calls = []
        else:
            view.tool_results = []
    for t in body.get("tools") or []:
        for d in t.get("functionDeclarations") or []:
            _need(bool(d.get("name")), "tools.function_declarations.name: required")
            view.tools.append((d["name"], d.get("parametersJsonSchema") or d.get("parameters") or {"type": "object"}))
            texts.append(json.dumps(d))
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = fcc.get("mode", "AUTO")
    _need(mode in ("AUTO", "ANY", "NONE", "VALIDATED"), "tool_config.function_calling_config.mode: invalid")
    names = fcc.get("allowedFunctionNames") or []
    view.choice = names[0] if mode == "ANY" and len(names) == 1 else {"NONE": "none", "ANY": "required"}.get(mode, "auto")
    gen = body.get("generationConfig") or {}
    if gen.get("responseJsonSchema") is not None or gen.get("responseSchema") is not None:
        _need(gen.get("responseMimeType") == "application/json",
              "generation_config.response_mime_type: must be application/json with a response schema")
        view.schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
    thinking = gen.get("thinkingConfig") or {}
    _need(not ("thinkingBudget" in thinking and "thinkingLevel" in thinking),
          "thinking_budget and thinking_level are not supported together.")
    _need(not (model.startswith("gemini-2") and "thinkingLevel" in thinking),
          "Thinking level is not supported for this model.")
    view.thinking = bool(thinking)
    _need(not (model.startswith("gemini-3") and unsigned_calls),
          f"Function call is missing a thought_signature in functionCall parts ({', '.join(unsigned_calls)}). "
          "This is required for tools to work correctly.")
    view.all_text = " ".join(texts)
    return view
