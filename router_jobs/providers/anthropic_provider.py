"""Anthropic adapter (``anthropic`` SDK, Messages API).

System messages go to the ``system`` parameter; the SDK's retries are off (``max_retries=0``),
since by default it retries 429/5xx twice and obeys any retry-after length. ``json_output``
asks for structured output with the schema ``{"type": "object"}``. The SDK no longer types
``temperature``/``top_p``; they are sent as extra body fields when given.

``input_tokens`` in Anthropic's usage excludes cache reads and writes; the neutral
:class:`~router_jobs.models.Usage` counts every input token, with cache reads as ``cached``
and cache writes as ``cache_write_tokens``.

Tool calls are ``tool_use`` blocks of the assistant and ``tool_result`` blocks of the next
user message (consecutive neutral ``tool`` messages share one user message). A response's
``thinking`` blocks are kept as Anthropic :class:`~router_jobs.request.ProviderPart` s of the
assistant message, so a tool loop that thinks can send them back as the API requires; other
providers leave them out. Reasoning ``budget_tokens`` turns on extended thinking, ``effort``
goes to ``output_config.effort``; ``cache_control`` hints go on the blocks they mark.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic

from router_jobs.errors import BadRequest, ContentBlocked, ProviderError
from router_jobs.models import ChatMessage, Usage
from router_jobs.providers import errors_map as em
from router_jobs.providers import sentclock
from router_jobs.providers._clients import ClientCache
from router_jobs.providers.base import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    KeyCredentials,
    StreamChunk,
    ToolCallFragment,
)
from router_jobs.request import (
    CacheControl,
    FinishReason,
    ImagePart,
    NamedToolChoice,
    ProviderPart,
    TextPart,
    ToolCall,
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "refusal": "refusal", "model_context_window_exceeded": "length",
}


def _build_client(creds: KeyCredentials) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=creds.api_key, base_url=creds.base_url, timeout=creds.timeout, max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=sentclock.transport()),
    )


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    cache_read = int(getattr(raw, "cache_read_input_tokens", 0) or 0)
    cache_write = int(getattr(raw, "cache_creation_input_tokens", 0) or 0)
    return Usage(
        input_tokens=int(getattr(raw, "input_tokens", 0) or 0) + cache_read + cache_write,
        output_tokens=int(getattr(raw, "output_tokens", 0) or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _cache(block: dict[str, Any], cc: CacheControl | None) -> dict[str, Any]:
    if cc is not None:
        block["cache_control"] = cc.model_dump(exclude_none=True)
    return block


def _block(part: TextPart | ImagePart | ProviderPart, where: str) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return _cache({"type": "text", "text": part.text}, part.cache_control)
    if isinstance(part, ProviderPart):
        return dict(part.data) if part.provider == "anthropic" else None
    if part.detail not in (None, "auto"):
        raise BadRequest(f"{where}.detail: anthropic has no image detail setting", provider="anthropic")
    if part.url is not None:
        if part.url.startswith("gs://"):
            raise BadRequest(f"{where}.url: anthropic cannot read gs:// URLs", provider="anthropic")
        source: dict[str, Any] = {"type": "url", "url": part.url}
    else:
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    return _cache({"type": "image", "source": source}, part.cache_control)


def _blocks(msg: ChatMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"type": "text", "text": msg.content}] if msg.content else []
    return [b for i, p in enumerate(msg.content) if (b := _block(p, f"{where}.content[{i}]")) is not None]


def _assistant_blocks(msg: ChatMessage, where: str) -> list[dict[str, Any]]:
    # thinking blocks (provider parts) first, as the API returned them; then text, then calls
    parts = [] if isinstance(msg.content, str) else msg.content
    blocks = [dict(p.data) for p in parts if isinstance(p, ProviderPart) and p.provider == "anthropic"]
    if msg.text:
        blocks.append({"type": "text", "text": msg.text})
    for j, call in enumerate(msg.tool_calls):
        try:
            args = call.args()
        except ValueError:
            raise BadRequest(f"{where}.tool_calls[{j}].arguments: not a JSON object, anthropic needs one",
                             provider="anthropic") from None
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return blocks


def anthropic_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages API turns for neutral non-system messages; same-role neighbours are merged."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role == "system":
            continue
        if m.role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id,
                                      "content": _blocks(m, where)}
            if m.is_error:
                result["is_error"] = True
            role, content = "user", [result]
        elif m.role == "assistant":
            role, content = "assistant", _assistant_blocks(m, where)
        elif isinstance(m.content, str):
            role, content = "user", m.content  # type: ignore[assignment]
        else:
            role, content = "user", _blocks(m, where)
        if out and out[-1]["role"] == role:
            prev = out[-1]["content"]
            as_list = (lambda c: [{"type": "text", "text": c}] if isinstance(c, str) else c)  # noqa: E731
            # tool results must come first in a user turn
            merged = as_list(prev) + as_list(content)
            merged.sort(key=lambda b: 0 if b.get("type") == "tool_result" else 1)
            out[-1]["content"] = merged
        else:
            out.append({"role": role, "content": content})
    return out


def _system(request: ChatRequest) -> str | list[dict[str, Any]] | None:
    systems = [m for m in request.messages if m.role == "system"]
    if not systems:
        return None
    if not any(m.has_parts for m in systems):
        return "\n\n".join(m.text for m in systems) or None
    return [b for i, m in enumerate(request.messages) if m.role == "system" for b in _blocks(m, f"messages[{i}]")]


def _tools(request: ChatRequest, params: dict[str, Any]) -> None:
    if request.tools:
        params["tools"] = [
            _cache({"name": t.name, "input_schema": t.parameters,
                    **({"description": t.description} if t.description else {}),
                    **({"strict": True} if t.strict else {})}, t.cache_control)
            for t in request.tools
        ]
    choice: dict[str, Any] | None = None
    if isinstance(request.tool_choice, NamedToolChoice):
        choice = {"type": "tool", "name": request.tool_choice.name}
    elif request.tool_choice is not None:
        choice = {"type": {"auto": "auto", "none": "none", "required": "any"}[request.tool_choice]}
    if request.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        params["tool_choice"] = choice


def anthropic_params(request: ChatRequest) -> dict[str, Any]:
    """The Messages API arguments for a neutral request (system split out)."""
    system = _system(request)
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": anthropic_messages(request.messages),
    }
    if system:
        params["system"] = system
    if request.seed is not None:
        raise BadRequest("seed: anthropic does not take a seed", provider="anthropic")
    sampling: dict[str, float] = {}
    if request.temperature is not None:
        sampling["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None:
        sampling["top_p"] = request.top_p
    if sampling:  # no longer typed arguments of the SDK; older models still take them
        params["extra_body"] = sampling
    if request.stop:
        params["stop_sequences"] = list(request.stop)
    output: dict[str, Any] = {}
    fmt = request.output_format()
    if fmt is not None and fmt.type != "text":
        output["format"] = {"type": "json_schema", "schema": fmt.json_schema or {"type": "object"}}
    reasoning = request.reasoning
    if reasoning is not None and reasoning.effort is not None:
        if reasoning.effort == "minimal":
            raise BadRequest("reasoning.effort: anthropic has no 'minimal' effort", provider="anthropic")
        output["effort"] = reasoning.effort
    if reasoning is not None and reasoning.budget_tokens is not None:
        params["thinking"] = {"type": "enabled", "budget_tokens": reasoning.budget_tokens}
    if output:
        params["output_config"] = output
    _tools(request, params)
    return params


def classify_sdk_error(exc: anthropic.AnthropicError, provider: str, creds: KeyCredentials,
                       *, streaming: bool = False) -> ProviderError:
    """The library's error for anything the SDK raised. An ``error`` event mid-stream comes
    as a status error carrying the HTTP 200 of the stream: it is classified by its type."""
    secrets = (creds.api_key,)
    if isinstance(exc, anthropic.APIStatusError):
        status = None if streaming and exc.status_code < 400 else exc.status_code
        return em.classify_anthropic(status, em.lower_headers(exc.response.headers), exc.body,
                                     provider=provider, secrets=secrets, fallback_message=exc.message)
    if isinstance(exc, anthropic.APITimeoutError):
        return em.transient(f"request timed out after {creds.timeout}s", provider=provider)
    if isinstance(exc, anthropic.APIConnectionError):
        return em.transient(f"connection error: {exc.message}", provider=provider, secrets=secrets)
    return em.transient(f"unexpected response: {type(exc).__name__}", provider=provider)


def _response_parts(message: Any) -> tuple[str, list[ToolCall], list[ProviderPart]]:
    text, calls, kept = [], [], []
    for b in message.content:
        kind = getattr(b, "type", "")
        if kind == "text":
            text.append(b.text)
        elif kind == "tool_use":
            calls.append(ToolCall(id=str(b.id), name=str(b.name), arguments=json.dumps(b.input or {})))
        elif kind in ("thinking", "redacted_thinking"):
            kept.append(ProviderPart(provider="anthropic", data=b.model_dump(mode="json", exclude_none=True)))
    return "".join(text), calls, kept


class AnthropicAdapter:
    """Messages through the official ``anthropic`` SDK."""

    name = "anthropic"

    def __init__(self) -> None:
        self._clients: ClientCache[anthropic.Anthropic] = ClientCache(_build_client)

    def prepare(self, creds: KeyCredentials) -> None:
        """Build (and cache) the key's SDK client now, so its first call costs what any
        call costs: a first call late against its reservation eats the pool's margin."""
        client = self._clients.get(creds)
        _ = client.messages  # the SDK loads its resources lazily

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        """One message; raises a classified, redacted ProviderError on failure."""
        client = self._clients.get(creds)
        params = anthropic_params(request)
        failure: ProviderError | None = None
        try:
            raw = client.messages.with_raw_response.create(**params)
            headers = em.lower_headers(raw.headers)
            message = raw.parse()
        except anthropic.AnthropicError as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        text, calls, kept = _response_parts(message)
        if message.stop_reason == "refusal" and not text:
            raise ContentBlocked(f"{self.name}: the model refused to answer", provider=self.name, status=200)
        refusal = text if message.stop_reason == "refusal" else None
        details = {"id": str(message.id), "finish_reason": str(message.stop_reason)}
        if headers.get("request-id"):
            details["request_id"] = headers["request-id"]
        return ChatResponse(
            content="" if refusal else text,
            usage=_usage(message.usage),
            model=str(message.model or request.model),
            finish_reason=_FINISH.get(str(message.stop_reason), "other"),
            rate_limit=em.anthropic_rate_limit(headers),
            details=details,
            tool_calls=calls,
            refusal=refusal,
            parts=kept,
        )

    def open_stream(self, request: ChatRequest, creds: KeyCredentials) -> ChatStream:
        """Start a streamed message (``stream=True``: the raw server-sent events)."""
        client = self._clients.get(creds)
        failure: ProviderError | None = None
        try:
            raw = client.messages.with_raw_response.create(**anthropic_params(request), stream=True)
            headers = em.lower_headers(raw.headers)
            stream = raw.parse()
        except anthropic.AnthropicError as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure
        return AnthropicStream(stream, request.model, em.anthropic_rate_limit(headers), self.name, creds)


class AnthropicStream:
    """Events of a streamed message as provider-neutral :class:`StreamChunk` s.

    Input usage arrives in ``message_start``, output usage in ``message_delta``; tool calls
    are ``tool_use`` blocks whose input streams as ``input_json_delta`` fragments.
    """

    def __init__(self, stream: Any, model: str, rate_limit: Any, provider: str, creds: KeyCredentials) -> None:
        self._stream = stream
        self.model = model
        self.rate_limit = rate_limit
        self._provider = provider
        self._creds = creds
        self._stopped = False

    def __iter__(self) -> Iterator[StreamChunk]:
        failure: ProviderError | None = None
        stopped = False
        try:
            yield from self._chunks()
            stopped = True
        except anthropic.AnthropicError as exc:
            failure = classify_sdk_error(exc, self._provider, self._creds, streaming=True)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        if stopped and not self._stopped:
            raise em.transient(f"{self._provider}: the stream ended before the answer did", provider=self._provider)

    def _chunks(self) -> Iterator[StreamChunk]:
        self._stopped = False
        start_usage: Any = None
        tools: dict[int, int] = {}  # content block index -> tool call index
        for event in self._stream:
            kind = getattr(event, "type", "")
            if kind == "message_start":
                self.model = str(event.message.model or self.model)
                start_usage = event.message.usage
            elif kind == "content_block_start" and getattr(event.content_block, "type", "") == "tool_use":
                tools[event.index] = len(tools)
                block = event.content_block
                yield StreamChunk(tool_call=ToolCallFragment(index=tools[event.index], id=block.id, name=block.name))
            elif kind == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta" and delta.text:
                    yield StreamChunk(text=delta.text)
                elif delta.type == "input_json_delta" and event.index in tools:
                    yield StreamChunk(tool_call=ToolCallFragment(index=tools[event.index],
                                                                 arguments=delta.partial_json))
            elif kind == "message_delta":
                usage = _usage(start_usage)
                out = int(getattr(event.usage, "output_tokens", 0) or 0)
                yield StreamChunk(usage=usage.model_copy(update={"output_tokens": out}),
                                  finish_reason=event.delta.stop_reason)
            elif kind == "message_stop":
                self._stopped = True

    def close(self) -> None:
        """Drop the connection."""
        self._stream.close()
