"""An in-process fake provider for demos and tests: no network, no SDK.

It echoes the last user message (``"echo: <text>"``) and reports usage from a simple token
estimate. Directives inside the prompt steer it, so tests can drive every worker reaction:

* ``[[sleep:1.5]]`` answer after 1.5 s;
* ``[[fail:<error_type>]]`` raise that error class (``rate_limited``, ``key_invalid``,
  ``quota_exhausted``, ``bad_request``, ``request_too_large``, ``transient``, ``overloaded``,
  ``content_blocked``);
* ``[[crash]]`` end the whole worker process at once (for dead-letter tests);
* ``[[raise]]`` raise an unexpected (unclassified) exception, as a buggy adapter would.

With tools it plays a deterministic agent (:func:`fake_turn`, shared with the fake HTTP
servers of :mod:`fakeproviders`): after a user message it calls the tools (the named one,
else every tool, or only the first when parallel calls are off), with arguments made from the
tool's schema and the user's text; after tool results it answers ``"echo: <results>"``. With
a JSON schema for the answer it answers an instance of the schema.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from router_jobs import errors
from router_jobs.models import Usage
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials
from router_jobs.request import NamedToolChoice, ToolCall

_DIRECTIVE = re.compile(r"\[\[(sleep|fail|crash|raise)(?::([^\]]+))?\]\]")

_ERRORS: dict[str, type[errors.ProviderError]] = {
    cls.error_type: cls
    for cls in (
        errors.ProviderRateLimited, errors.KeyInvalid, errors.QuotaExhausted, errors.BadRequest,
        errors.RequestTooLarge, errors.TransientProviderError, errors.ProviderOverloaded,
        errors.ContentBlocked,
    )
}


def _estimate(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def schema_instance(schema: dict[str, Any], text: str) -> Any:
    """A value matching the JSON ``schema``: strings are ``text``, numbers 1, booleans true."""
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: schema_instance(sub, text) for name, sub in props.items()}
    if kind == "array":
        return [schema_instance(schema.get("items") or {"type": "string"}, text)]
    if kind == "string":
        return text
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return None


@dataclass(frozen=True)
class FakeTurn:
    """What the fake model says: text, or tool calls as ``(name, arguments)``."""

    text: str
    calls: list[tuple[str, dict[str, Any]]]


def fake_turn(*, user_text: str, tool_results: list[str], tools: list[tuple[str, dict[str, Any]]],
              choice: str, parallel: bool, schema: dict[str, Any] | None) -> FakeTurn:
    """The deterministic fake model (see the module docstring).

    ``choice`` is ``auto``, ``none``, ``required`` or a tool's name; ``tool_results`` are the
    texts of the tool results that end the conversation (empty after a user message).
    """
    if tools and not tool_results and choice != "none":
        chosen = [t for t in tools if t[0] == choice] if choice not in ("auto", "required") else tools
        if not parallel:
            chosen = chosen[:1]
        return FakeTurn("", [(name, schema_instance(params, user_text)) for name, params in chosen])
    text = "echo: " + (" | ".join(tool_results) if tool_results else user_text)
    if schema is not None:
        text = json.dumps(schema_instance(schema, text))
    return FakeTurn(text, [])


class FakeAdapter:
    """The ``fake`` provider. Thread-safe; holds no state."""

    name = "fake"

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        for kind, arg in _DIRECTIVE.findall(last):
            if kind == "sleep":
                time.sleep(float(arg or 0))
            elif kind == "crash":
                os._exit(17)
            elif kind == "raise":
                raise RuntimeError("fake provider hit an unexpected bug")
            elif kind == "fail":
                cls = _ERRORS.get(arg or "", errors.TransientProviderError)
                retry_after = 1.0 if cls is errors.ProviderRateLimited else None
                raise cls(f"fake provider refused the call ({arg})", provider="fake", retry_after=retry_after)
        results: list[str] = []
        for m in reversed(request.messages):
            if m.role != "tool":
                break
            results.insert(0, m.text)
        choice = request.tool_choice
        fmt = request.output_format()
        turn = fake_turn(
            user_text=last, tool_results=results,
            tools=[(t.name, t.parameters) for t in request.tools or []],
            choice=choice.name if isinstance(choice, NamedToolChoice) else (choice or "auto"),
            parallel=request.parallel_tool_calls is not False,
            schema=fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None,
        )
        calls = [ToolCall(id=f"call_{uuid.uuid4().hex[:16]}", name=n, arguments=json.dumps(a)) for n, a in turn.calls]
        prompt_tokens = sum(_estimate(m.text) for m in request.messages)
        out_tokens = min(request.max_output_tokens, _estimate(turn.text + "".join(c.arguments for c in calls)))
        return ChatResponse(
            content=turn.text,
            usage=Usage(input_tokens=prompt_tokens, output_tokens=out_tokens),
            model=request.model,
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls,
        )
