"""Anthropic adapter (``anthropic`` SDK, Messages API).

System messages go to the ``system`` parameter; the SDK's retries are off (``max_retries=0``),
since by default it retries 429/5xx twice and obeys any retry-after length. ``json_output``
asks for structured output with the schema ``{"type": "object"}``. The SDK no longer types
``temperature``/``top_p``; they are sent as extra body fields when given.

``input_tokens`` in Anthropic's usage excludes cache reads and writes; the neutral
:class:`~router_jobs.models.Usage` counts every input token, with cache reads as ``cached``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic

from router_jobs.errors import ContentBlocked, ProviderError
from router_jobs.models import Usage
from router_jobs.providers import errors_map as em
from router_jobs.providers._clients import ClientCache
from router_jobs.providers.base import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    KeyCredentials,
    StreamChunk,
    ToolCallFragment,
)


def _build_client(creds: KeyCredentials) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=creds.api_key, base_url=creds.base_url, timeout=creds.timeout, max_retries=0
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
    )


def anthropic_params(request: ChatRequest) -> dict[str, Any]:
    """The Messages API arguments for a neutral request (system split out)."""
    system = "\n\n".join(m.text for m in request.messages if m.role == "system")
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
    }
    if system:
        params["system"] = system
    sampling: dict[str, float] = {}
    if request.temperature is not None:
        sampling["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None:
        sampling["top_p"] = request.top_p
    if sampling:  # no longer typed arguments of the SDK; older models still take them
        params["extra_body"] = sampling
    if request.stop:
        params["stop_sequences"] = list(request.stop)
    if request.json_output:
        params["output_config"] = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
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
        failure: ProviderError | None = None
        try:
            raw = client.messages.with_raw_response.create(**anthropic_params(request))
            headers = em.lower_headers(raw.headers)
            message = raw.parse()
        except anthropic.AnthropicError as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        if message.stop_reason == "refusal":
            raise ContentBlocked(f"{self.name}: the model refused to answer", provider=self.name, status=200)
        text = "".join(getattr(b, "text", "") for b in message.content if getattr(b, "type", "") == "text")
        details = {"id": str(message.id)}
        if headers.get("request-id"):
            details["request_id"] = headers["request-id"]
        return ChatResponse(
            content=text,
            usage=_usage(message.usage),
            model=str(message.model or request.model),
            finish_reason=message.stop_reason,
            rate_limit=em.anthropic_rate_limit(headers),
            details=details,
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
