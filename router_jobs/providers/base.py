"""The one small interface every provider adapter implements.

An adapter turns provider-neutral messages into one call of the provider's official SDK
(with the SDK's own retries off) and returns content, usage and what the provider said about
its rate limits. Every failure is raised as a subclass of
:class:`~router_jobs.errors.ProviderError`, with secrets redacted from the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from router_jobs.models import ChatMessage, JobSpec, Usage
from router_jobs.request import (
    ContentPart,
    FinishReason,
    ProviderPart,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)


@dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat call."""

    model: str
    messages: list[ChatMessage]
    max_output_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    json_output: bool = False
    seed: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec, model: str, messages: list[ChatMessage]) -> ChatRequest:
        """The call a job makes on ``model`` with ``messages`` (history included)."""
        return cls(
            model=model, messages=messages, max_output_tokens=spec.max_output_tokens,
            temperature=spec.temperature, top_p=spec.top_p, stop=spec.stop, json_output=spec.json_output,
            seed=spec.seed, response_format=spec.response_format, tools=spec.tools, tool_choice=spec.tool_choice,
            parallel_tool_calls=spec.parallel_tool_calls, reasoning=spec.reasoning,
        )

    def output_format(self) -> ResponseFormat | None:
        """The answer format asked for (``json_output`` as a JSON-object format), or None."""
        if self.response_format is not None:
            return self.response_format
        return ResponseFormat(type="json_object") if self.json_output else None


@dataclass(frozen=True)
class RateLimitInfo:
    """What the provider's response headers said about room left on the key.

    ``None`` means the provider did not say. Reset times are epoch seconds.
    """

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_at: float | None = None
    reset_tokens_at: float | None = None


@dataclass(frozen=True)
class ChatResponse:
    """A successful call's content, tool calls and usage.

    ``finish_reason`` is the neutral reason; the provider's own word for it is in
    ``details["finish_reason"]``. ``refusal`` is the model's refusal message, when it
    declined (OpenAI's ``message.refusal``, Anthropic's ``refusal`` stop with text).
    """

    content: str
    usage: Usage
    model: str
    finish_reason: FinishReason | None = None
    rate_limit: RateLimitInfo | None = None
    details: dict[str, str] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    refusal: str | None = None
    parts: list[ProviderPart] = field(default_factory=list)  # opaque state to keep in the conversation

    def message(self) -> ChatMessage:
        """The assistant message this reply adds to a conversation, provider-neutral: its text
        (or refusal), its tool calls, and provider state to send back (``parts``)."""
        text = self.refusal or self.content
        content: str | list[ContentPart] = text
        if self.parts:
            content = [*self.parts, *([TextPart(text=text)] if text else [])]
        return ChatMessage(role="assistant", content=content, tool_calls=list(self.tool_calls))


@dataclass(frozen=True)
class KeyCredentials:
    """What an adapter needs to call with one key. ``repr`` never shows the secret."""

    key_id: str
    api_key: str = field(repr=False)
    base_url: str | None = None
    timeout: float = 120.0


class ProviderAdapter(Protocol):
    """A provider's adapter: one ``complete`` call, errors classified."""

    name: str

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        """Call the provider once; raise a ProviderError subclass on failure."""
        ...

    # Adapters that stream also offer ``open_stream(request, creds) -> ChatStream`` (see
    # :class:`StreamingAdapter`); the worker falls back to ``complete`` for those that do not.
    # Adapters with per-key clients also offer ``prepare(creds)``: build the key's client
    # ahead of its first call (worker warm-up). It is optional, so not part of the protocol.


@dataclass(frozen=True)
class ToolCallFragment:
    """A piece of one tool call as it streams in: ``index`` tells the calls apart; ``id`` and
    ``name`` come with the first piece, ``arguments`` is the next fragment of the JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class StreamChunk:
    """One provider-neutral piece of a streamed answer (any of its fields may be set)."""

    text: str = ""
    tool_call: ToolCallFragment | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    refusal: str = ""  # a piece of the model's refusal message (OpenAI streams it apart)


class ChatStream(Protocol):
    """An answer being streamed: the HTTP call already succeeded when this exists.

    Iterating yields :class:`StreamChunk` s; a failure mid-stream (an error event, a cut
    connection, an answer that stops without a finish reason) is raised as a classified
    :class:`~router_jobs.errors.ProviderError`, like a failed call.
    """

    model: str
    rate_limit: RateLimitInfo | None

    def __iter__(self) -> Iterator[StreamChunk]: ...

    def close(self) -> None:
        """Drop the connection (the consumer stopped early)."""
        ...


class StreamingAdapter(ProviderAdapter, Protocol):
    """An adapter that can also stream an answer through its SDK (SDK retries off)."""

    def open_stream(self, request: ChatRequest, creds: KeyCredentials) -> ChatStream:
        """Start a streamed call; raise a ProviderError subclass if the call is refused."""
        ...
