"""OpenAI adapter (``openai`` SDK); also serves ``openai-compatible`` endpoints.

With a key's ``base_url`` the same adapter talks to any server that speaks OpenAI's chat
completions protocol: Azure OpenAI's v1 endpoint, vLLM, OpenRouter, Groq and the like. The
SDK's own retries are off (``max_retries=0``): the broker decides every retry.

Newer OpenAI models take ``max_completion_tokens`` and refuse ``max_tokens``; many
OpenAI-compatible servers only know ``max_tokens``, so the parameter name follows the provider.

The neutral request maps almost one to one: image parts become ``image_url`` parts (base64
as a ``data:`` URL), tool calls and ``tool`` messages keep their ids, a failed tool result
(``is_error``) is sent with an ``[tool error]`` prefix (the API has no flag for it), and
``cache_control`` hints need nothing: OpenAI caches long prompt prefixes by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai

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
from router_jobs.request import FinishReason, ImagePart, NamedToolChoice, ProviderPart, TextPart, ToolCall

#: the tool-result prefix that stands in for Anthropic's ``is_error`` flag
TOOL_ERROR_PREFIX = "[tool error] "

_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _build_client(creds: KeyCredentials) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=creds.api_key, base_url=creds.base_url, timeout=creds.timeout, max_retries=0,
        http_client=openai.DefaultHttpxClient(transport=sentclock.transport()),
    )


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    ptd = getattr(raw, "prompt_tokens_details", None)
    ctd = getattr(raw, "completion_tokens_details", None)
    return Usage(
        input_tokens=int(getattr(raw, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(raw, "completion_tokens", 0) or 0),
        cached_tokens=int(getattr(ptd, "cached_tokens", 0) or 0) if ptd else 0,
        reasoning_tokens=int(getattr(ctd, "reasoning_tokens", 0) or 0) if ctd else 0,
    )


def classify_sdk_error(exc: openai.OpenAIError, provider: str, creds: KeyCredentials) -> ProviderError:
    """The library's error for anything the SDK raised, before or during a stream."""
    secrets = (creds.api_key,)
    if isinstance(exc, openai.APIStatusError):
        return em.classify_openai(exc.status_code, em.lower_headers(exc.response.headers), exc.body,
                                  provider=provider, secrets=secrets, fallback_message=exc.message)
    if isinstance(exc, openai.APITimeoutError):
        return em.transient(f"request timed out after {creds.timeout}s", provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        return em.transient(f"connection error: {exc.message}", provider=provider, secrets=secrets)
    if isinstance(exc, openai.APIError) and isinstance(exc.body, dict):
        # an error chunk mid-stream (HTTP status was 200): its type says what happened
        return em.classify_openai(stream_error_status(exc.body), {}, {"error": exc.body}, provider=provider,
                                  secrets=secrets, fallback_message=exc.message)
    return em.transient(f"unexpected response: {type(exc).__name__}", provider=provider)


def stream_error_status(err: dict[str, Any]) -> int:
    """The HTTP status an error chunk's ``type``/``code`` stands for (it arrives after a 200)."""
    kind = f"{err.get('type') or ''} {err.get('code') or ''}"
    if "insufficient_quota" in kind or "rate_limit" in kind or err.get("type") in ("tokens", "requests"):
        return 429
    if "invalid_request" in kind or "context_length" in kind:
        return 400
    return 500


def _part(part: TextPart | ImagePart | ProviderPart, where: str) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ProviderPart):
        return dict(part.data) if part.provider == "openai" else None
    if part.url is not None and part.url.startswith("gs://"):
        raise BadRequest(f"{where}: openai cannot read gs:// URLs", provider="openai")
    url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
    image: dict[str, Any] = {"url": url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _content(msg: ChatMessage, where: str) -> str | list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return msg.content
    parts = [p for i, part in enumerate(msg.content) if (p := _part(part, f"{where}.content[{i}]")) is not None]
    return parts


def openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat-completions messages for neutral ones."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role == "tool":
            text = m.text
            if any(isinstance(p, ImagePart) for p in (m.content if not isinstance(m.content, str) else [])):
                raise BadRequest(f"{where}: openai takes text only in tool results", provider="openai")
            out.append({"role": "tool", "tool_call_id": m.tool_call_id,
                        "content": (TOOL_ERROR_PREFIX + text) if m.is_error else text})
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
            elif msg["content"] is None:
                msg["content"] = ""
            out.append(msg)
        else:
            out.append({"role": m.role, "content": _content(m, where)})
    return out


def _tool_calls(message: Any) -> list[ToolCall]:
    calls = []
    for c in getattr(message, "tool_calls", None) or []:
        fn = getattr(c, "function", None)
        if fn is not None:
            calls.append(ToolCall(id=str(c.id), name=str(fn.name), arguments=str(fn.arguments or "{}")))
    return calls


class OpenAIAdapter:
    """Chat completions through the official ``openai`` SDK."""

    def __init__(self, name: str = "openai") -> None:
        self.name = name
        self._clients: ClientCache[openai.OpenAI] = ClientCache(_build_client)

    def prepare(self, creds: KeyCredentials) -> None:
        """Build (and cache) the key's SDK client now, so its first call costs what any
        call costs: a first call late against its reservation eats the pool's margin."""
        client = self._clients.get(creds)
        _ = client.chat.completions  # openai loads its resources lazily

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": openai_messages(request.messages),
        }
        if self.name == "openai":
            params["max_completion_tokens"] = request.max_output_tokens
        else:
            params["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        if request.seed is not None:
            params["seed"] = request.seed
        fmt = request.output_format()
        if fmt is not None and fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema}
            if fmt.strict:
                schema["strict"] = True
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None:
            params["response_format"] = {"type": fmt.type}
        if request.tools:
            params["tools"] = [
                {"type": "function", "function": {
                    "name": t.name, "parameters": t.parameters,
                    **({"description": t.description} if t.description else {}),
                    **({"strict": True} if t.strict else {}),
                }} for t in request.tools
            ]
        if isinstance(request.tool_choice, NamedToolChoice):
            params["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
        elif request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
        if request.reasoning is not None:
            if request.reasoning.budget_tokens is not None:
                raise BadRequest("reasoning.budget_tokens: openai takes an effort, not a budget", provider=self.name)
            params["reasoning_effort"] = request.reasoning.effort
        return params

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        """One chat completion; raises a classified, redacted ProviderError on failure."""
        client = self._clients.get(creds)
        params = self._params(request)
        failure: ProviderError | None = None
        try:
            raw = client.chat.completions.with_raw_response.create(**params)
            headers = em.lower_headers(raw.headers)
            completion = raw.parse()
        except openai.OpenAIError as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        if not completion.choices:
            raise ContentBlocked(f"{self.name}: response had no choices", provider=self.name, status=200)
        choice = completion.choices[0]
        calls = _tool_calls(choice.message)
        refusal = getattr(choice.message, "refusal", None) or None
        if choice.finish_reason == "content_filter" and not (choice.message.content or "") and not calls:
            raise ContentBlocked(f"{self.name}: answer withheld by the content filter", provider=self.name, status=200)
        details = {"id": str(completion.id), "finish_reason": str(choice.finish_reason)}
        if headers.get("x-request-id"):
            details["request_id"] = headers["x-request-id"]
        finish = "refusal" if refusal else _FINISH.get(str(choice.finish_reason), "other")
        return ChatResponse(
            content=choice.message.content or "",
            usage=_usage(completion.usage),
            model=str(completion.model or request.model),
            finish_reason=finish,
            rate_limit=em.openai_rate_limit(headers),
            details=details,
            tool_calls=calls,
            refusal=refusal,
        )

    def open_stream(self, request: ChatRequest, creds: KeyCredentials) -> ChatStream:
        """Start a streamed chat completion (usage included in its last chunk)."""
        client = self._clients.get(creds)
        params = {**self._params(request), "stream": True, "stream_options": {"include_usage": True}}
        failure: ProviderError | None = None
        try:
            raw = client.chat.completions.with_raw_response.create(**params)
            headers = em.lower_headers(raw.headers)
            stream = raw.parse()
        except openai.OpenAIError as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure
        return OpenAIStream(stream, request.model, em.openai_rate_limit(headers), self.name, creds)


class OpenAIStream:
    """Chunks of a streamed chat completion, as provider-neutral :class:`StreamChunk` s."""

    def __init__(self, stream: Any, model: str, rate_limit: Any, provider: str, creds: KeyCredentials) -> None:
        self._stream = stream
        self.model = model
        self.rate_limit = rate_limit
        self._provider = provider
        self._creds = creds

    def __iter__(self) -> Iterator[StreamChunk]:
        finished = False
        failure: ProviderError | None = None
        try:
            for chunk in self._stream:
                if chunk.model:
                    self.model = str(chunk.model)
                if chunk.usage is not None:
                    yield StreamChunk(usage=_usage(chunk.usage))
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        yield StreamChunk(text=delta.content)
                    if delta is not None and getattr(delta, "refusal", None):
                        yield StreamChunk(refusal=delta.refusal)
                    for tc in (delta.tool_calls or []) if delta is not None else []:
                        fn = tc.function
                        yield StreamChunk(tool_call=ToolCallFragment(
                            index=tc.index, id=tc.id, name=fn.name if fn else None,
                            arguments=(fn.arguments or "") if fn else ""))
                    if choice.finish_reason:
                        finished = True
                        yield StreamChunk(finish_reason=choice.finish_reason)
        except openai.OpenAIError as exc:
            failure = classify_sdk_error(exc, self._provider, self._creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        if not finished:
            raise em.transient(f"{self._provider}: the stream ended before the answer did", provider=self._provider)

    def close(self) -> None:
        """Drop the connection."""
        self._stream.close()
