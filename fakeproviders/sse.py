"""Each provider's streaming wire format: the server-sent events of a streamed answer.

* OpenAI chat completions with ``stream: true``: ``data: <chat.completion.chunk>`` lines, the
  finish reason in the last choice chunk, usage in a final chunk with no choices (when
  ``stream_options.include_usage``), then ``data: [DONE]``. Tool calls stream as
  ``delta.tool_calls[{index, id, function: {name, arguments}}]`` fragments. An error after the
  200 is a chunk ``data: {"error": {...}}``.
* Anthropic messages with ``stream: true``: named events ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` or
  ``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop reason, output
  usage), ``message_stop``; an error after the 200 is ``event: error``.
* Gemini ``:streamGenerateContent?alt=sse``: ``data: <GenerateContentResponse>`` chunks, the
  finish reason and final usage in the last; a function call comes whole in one part; an error
  after the 200 is a chunk ``data: {"error": {code, message, status}}``.

A stream answers the scenarios ``ok`` (the fake model's turn: its text a word per event, or
the tool calls it makes, their arguments in fragments), ``tool_call`` (a call even without
tools: of ``lookup``, with arguments ``{"query": <prompt>}``) and
``refusal`` / ``blocked`` (the model declines, or the answer is withheld, each provider in
its own way), ``stream_error`` (``after`` text events, then an error event of ``kind``: ``overloaded``,
``server_error``, ``rate_limit`` or ``bad_request``) and ``stream_cut`` (``after`` text
events, then the stream ends with no finish). ``chunk_delay`` (seconds) paces any of them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from fakeproviders.wire import REFUSAL, Scenario

_PIECE = re.compile(r"\S+\s*|\s+")

#: The tool calls a streamed answer makes: (name, arguments) each.
Calls = list[tuple[str, dict[str, Any]]]


def is_streamed(provider: str, path: str, body: dict[str, Any]) -> bool:
    """Whether a request asks for a streamed answer (Gemini: by its method; others: ``stream``)."""
    if provider == "gemini":
        return path.endswith(":streamGenerateContent")
    return bool(body.get("stream"))


def pieces(text: str) -> list[str]:
    """The text cut into the pieces a model would stream (a word and its trailing space each)."""
    return _PIECE.findall(text) or [text]


def _data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _event(name: str, obj: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def arg_fragments(args: str) -> list[str]:
    """Arguments' JSON text in small fragments, as models stream them."""
    return [args[i:i + 8] for i in range(0, len(args), 8)] or [""]


def tool_name(provider: str, body: dict[str, Any]) -> str:
    """The name of the request's first declared tool (``lookup`` when it declares none)."""
    tools = body.get("tools") or []
    for t in tools if isinstance(tools, list) else []:
        if not isinstance(t, dict):
            continue
        if provider == "openai" and isinstance(t.get("function"), dict):
            return str(t["function"].get("name") or "lookup")
        if provider == "anthropic" and t.get("name"):
            return str(t["name"])
        for decl in t.get("functionDeclarations") or t.get("function_declarations") or []:
            if isinstance(decl, dict) and decl.get("name"):
                return str(decl["name"])
    return "lookup"


# ---------------------------------------------------------------- OpenAI


def openai_stream(sc: Scenario, model: str, text: str, usage: dict[str, int], body: dict[str, Any],
                  calls: Calls) -> list[bytes]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                      "system_fingerprint": "fp_fake", "usage": None,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    finish = "stop"
    if sc.name in ("refusal", "blocked"):
        if sc.name == "refusal":
            out += [chunk({"refusal": p}) for p in pieces(REFUSAL)]
        finish = "stop" if sc.name == "refusal" else "content_filter"
    elif calls:
        for i, (name, args) in enumerate(calls):
            out.append(chunk({"tool_calls": [{"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]})
                    for f in arg_fragments(json.dumps(args))]
        finish = "tool_calls"
    else:
        parts = pieces(text)
        if sc.name in ("stream_error", "stream_cut"):
            parts = parts[:int(sc.num("after", 2))]
        out += [chunk({"content": p}) for p in parts]
        if sc.name == "stream_cut":
            return out
        if sc.name == "stream_error":
            kind = sc.options.get("kind", "server_error")
            etype, code = {"rate_limit": ("requests", "rate_limit_exceeded"),
                           "bad_request": ("invalid_request_error", "invalid_value")}.get(kind, ("server_error", None))
            return out + [_data({"error": {"message": f"The server had an error while streaming ({kind}).",
                                           "type": etype, "param": None, "code": code}})]
    out.append(chunk({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(_data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                          "system_fingerprint": "fp_fake", "choices": [], "usage": {
                              "prompt_tokens": usage["input"], "completion_tokens": usage["output"],
                              "total_tokens": usage["input"] + usage["output"],
                              "prompt_tokens_details": {"cached_tokens": usage["cached"]},
                              "completion_tokens_details": {"reasoning_tokens": usage["reasoning"]}}}))
    return out + [b"data: [DONE]\n\n"]


# ---------------------------------------------------------------- Anthropic


def anthropic_stream(sc: Scenario, model: str, text: str, usage: dict[str, int], body: dict[str, Any],
                     calls: Calls) -> list[bytes]:
    start_usage = {"input_tokens": usage["input"] - usage["cached"], "cache_read_input_tokens": usage["cached"],
                   "cache_creation_input_tokens": 0, "output_tokens": 1}
    out = [_event("message_start", {"type": "message_start", "message": {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
    stop = "end_turn"
    if sc.name in ("refusal", "blocked"):
        text = REFUSAL if sc.name == "refusal" else ""
        calls, stop = [], "refusal"
    if calls:
        for i, (name, args) in enumerate(calls):
            out.append(_event("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": {}}}))
            out += [_event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "input_json_delta", "partial_json": f}})
                    for f in arg_fragments(json.dumps(args))]
            if i < len(calls) - 1:
                out.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
        stop = "tool_use"
    else:
        out.append(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}))
        out.append(_event("ping", {"type": "ping"}))
        parts = pieces(text)
        if sc.name in ("stream_error", "stream_cut"):
            parts = parts[:int(sc.num("after", 2))]
        out += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": p}}) for p in parts]
        if sc.name == "stream_cut":
            return out
        if sc.name == "stream_error":
            kind = sc.options.get("kind", "overloaded")
            etype, msg = {"server_error": ("api_error", "Internal server error"),
                          "rate_limit": ("rate_limit_error", "Rate limited"),
                          "bad_request": ("invalid_request_error", "Invalid request")}.get(
                kind, ("overloaded_error", "Overloaded"))
            return out + [_event("error", {"type": "error", "error": {"type": etype, "message": msg}})]
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": max(0, len(calls) - 1)}))
    out.append(_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                        "usage": {"output_tokens": usage["output"]}}))
    return out + [_event("message_stop", {"type": "message_stop"})]


# ---------------------------------------------------------------- Gemini


def gemini_stream(sc: Scenario, model: str, text: str, usage: dict[str, int], body: dict[str, Any],
                  calls: Calls) -> list[bytes]:
    rid = uuid.uuid4().hex[:20]

    def chunk(parts: list[dict[str, Any]], finish: str | None = None, final: bool = False) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        meta: dict[str, Any] = {"promptTokenCount": usage["input"], "totalTokenCount": usage["input"]}
        if final:
            meta.update({"candidatesTokenCount": usage["output"] - usage["reasoning"],
                         "totalTokenCount": usage["input"] + usage["output"],
                         "cachedContentTokenCount": usage["cached"], "thoughtsTokenCount": usage["reasoning"]})
        return _data({"candidates": [cand], "usageMetadata": meta, "modelVersion": model, "responseId": rid})

    if sc.name in ("refusal", "blocked"):
        return [chunk([], "SAFETY", final=True)]
    if calls:
        return [chunk([{"functionCall": {"name": name, "args": args}} for name, args in calls], "STOP", final=True)]
    parts = pieces(text)
    if sc.name == "stream_cut":
        return [chunk([{"text": p}]) for p in parts[:int(sc.num("after", 2))]]
    if sc.name == "stream_error":
        kind = sc.options.get("kind", "overloaded")
        code, status, msg = {"server_error": (500, "INTERNAL", "An internal error has occurred."),
                             "rate_limit": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."),
                             "bad_request": (400, "INVALID_ARGUMENT", "Request contains an invalid argument.")}.get(
            kind, (503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
        return ([chunk([{"text": p}]) for p in parts[:int(sc.num("after", 2))]]
                + [_data({"error": {"code": code, "message": msg, "status": status}})])
    out = [chunk([{"text": p}]) for p in parts[:-1]]
    return out + [chunk([{"text": parts[-1]}], "STOP", final=True)]


STREAMS = {"openai": openai_stream, "anthropic": anthropic_stream, "gemini": gemini_stream}
