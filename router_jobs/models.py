"""Job and result models shared by producers and workers.

A :class:`JobSpec` is what a producer asks for; it is validated at ``submit`` and stored as
JSON in the job record. A :class:`JobResult` is what a worker writes back. Neither ever holds
a secret: keys are referred to by ``key_id``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_jobs.request import (
    Content,
    FinishReason,
    NamedToolChoice,
    ProviderPart,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    content_text,
)

Role = Literal["system", "user", "assistant", "tool"]
Objective = Literal["fairness", "cost", "reliability", "latency"]

#: Hard ceilings that catch absurd values before they reach a queue.
MAX_OUTPUT_TOKENS_CEILING = 1_000_000


class Priority(StrEnum):
    """Which queue a job goes to. Interactive work is always taken first."""

    interactive = "interactive"
    batch = "batch"


class JobStatus(StrEnum):
    """Lifecycle of a job record."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.expired})


class ChatMessage(BaseModel):
    """One provider-neutral message.

    ``content`` is text or a list of parts (text, images, provider-specific parts). An
    assistant message may carry ``tool_calls``; a ``tool`` message answers the call
    ``tool_call_id`` (``name`` is the tool's, optional: adapters find it from the call;
    ``is_error`` says the tool failed).
    """

    model_config = ConfigDict(frozen=True)

    role: Role
    content: Content = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False

    @model_validator(mode="after")
    def _shape_fits_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only an assistant message carries tool calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id: a tool message must name the call it answers")
        if self.role != "tool" and (self.tool_call_id is not None or self.is_error):
            raise ValueError("tool_call_id: only a tool message answers a tool call")
        if self.role == "system" and not isinstance(self.content, str):
            if any(not isinstance(p, TextPart) for p in self.content):
                raise ValueError("content: a system message holds text parts only")
        return self

    @property
    def text(self) -> str:
        """The message's text (images and provider parts left out)."""
        return content_text(self.content)

    @property
    def has_parts(self) -> bool:
        """Whether the content is a list of parts rather than plain text."""
        return not isinstance(self.content, str)

    def provider_parts(self) -> list[ProviderPart]:
        """The provider-specific parts of the content."""
        return [] if isinstance(self.content, str) else [p for p in self.content if isinstance(p, ProviderPart)]


class Usage(BaseModel):
    """Token usage as the provider reported it (or as estimated when it did not)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache (in input_tokens)
    reasoning_tokens: int = 0  # thinking tokens (in output_tokens)
    cache_write_tokens: int = 0  # input tokens written to the prompt cache (in input_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class JobSpec(BaseModel):
    """What a producer asks for. Validation errors name the field (see ``Router.submit``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    system_prompt: str | None = None
    model: str
    fallback_models: list[str] = Field(default_factory=list)
    max_output_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    json_output: bool = False  # shorthand for response_format=ResponseFormat(type="json_object")
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    conversation_id: str | None = None
    turn_seq: int | None = None  # set by submit for conversation turns: their order
    user_id: str | None = None
    priority: Priority = Priority.interactive
    deadline: float | None = None  # epoch seconds; the job expires if not started by then
    max_wait: float | None = None  # seconds to wait for room before trying fallback models
    objective: Objective = "fairness"
    idempotency_key: str | None = None
    stream: bool = False  # the worker streams the answer into the job's event stream
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("max_output_tokens")
    @classmethod
    def _tokens_in_range(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive number of tokens")
        if v > MAX_OUTPUT_TOKENS_CEILING:
            raise ValueError(f"must be at most {MAX_OUTPUT_TOKENS_CEILING}")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature_in_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 2.0:
            raise ValueError("must be between 0 and 2")
        return v

    @field_validator("model")
    @classmethod
    def _model_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model")
        return v

    @model_validator(mode="after")
    def _has_content(self) -> JobSpec:
        if self.messages is None and (self.prompt is None or not self.prompt.strip()):
            raise ValueError("prompt: must not be empty (or give messages)")
        if self.messages is not None and not self.messages:
            raise ValueError("messages: must not be empty")
        names = [t.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: tool names must be unique")
        if self.tools is not None and not self.tools:
            raise ValueError("tools: must not be empty (leave it out instead)")
        if self.tool_choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice: needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice: names no tool of this job ({self.tool_choice.name!r})")
        if self.parallel_tool_calls is not None and not names:
            raise ValueError("parallel_tool_calls: needs tools")
        if self.json_output and self.response_format is not None and self.response_format.type == "text":
            raise ValueError("json_output: contradicts response_format of type text")
        return self

    def output_format(self) -> ResponseFormat | None:
        """The answer format asked for (``json_output`` as a JSON-object format), or None."""
        if self.response_format is not None:
            return self.response_format
        return ResponseFormat(type="json_object") if self.json_output else None

    def chat_messages(self, history: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """The messages to send: system prompt, then history, then this job's own turn."""
        out: list[ChatMessage] = []
        if self.system_prompt:
            out.append(ChatMessage(role="system", content=self.system_prompt))
        out.extend(history or [])
        out.extend(self.turn_messages())
        return out

    def turn_messages(self) -> list[ChatMessage]:
        """This job's own new messages (what a conversation appends before the reply)."""
        if self.messages is not None:
            return list(self.messages)
        assert self.prompt is not None
        return [ChatMessage(role="user", content=self.prompt)]

    def models(self) -> list[str]:
        """The preferred model, then fallbacks, without duplicates."""
        seen: list[str] = []
        for m in [self.model, *self.fallback_models]:
            if m not in seen:
                seen.append(m)
        return seen


class JobResult(BaseModel):
    """What a worker wrote back for a job. ``content`` is None unless it succeeded."""

    job_id: str
    status: JobStatus
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason | None = None
    refusal: str | None = None  # the model's own refusal message, when it declined to answer
    usage: Usage = Field(default_factory=Usage)
    key_id: str | None = None
    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait: float | None = None
    provider_time: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    conversation_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == JobStatus.succeeded


class JobHandle(BaseModel):
    """What ``submit`` returns: enough to await, cancel or look the job up."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    queue: Priority
    submitted_at: float = Field(default_factory=time.time)
    deduplicated: bool = False

    def __str__(self) -> str:
        return self.job_id
