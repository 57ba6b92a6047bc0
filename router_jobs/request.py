"""The provider-neutral request surface: content parts, tools, tool calls, output formats.

These types ride inside :class:`~router_jobs.models.JobSpec` and
:class:`~router_jobs.models.ChatMessage` (so also in conversations) and come back in
:class:`~router_jobs.models.JobResult`. Each provider adapter maps them to its SDK; what a
provider cannot do is refused at submit (see :mod:`router_jobs.providers.capabilities`).

Shapes, in short::

    message content   str | list[TextPart | ImagePart | ProviderPart]
    assistant turn    ChatMessage(role="assistant", content=..., tool_calls=[ToolCall(id, name, arguments)])
    tool result       ChatMessage(role="tool", tool_call_id=..., content=..., is_error=False)
    tools             [Tool(name, description, parameters=<JSON schema>, strict)]
    tool_choice       "auto" | "none" | "required" | NamedToolChoice(name)
    response_format   ResponseFormat(type="text" | "json_object" | "json_schema", name, json_schema, strict)
    reasoning         Reasoning(effort="minimal".."high", budget_tokens=N)
    prompt caching    cache_control=CacheControl() on a text/image part or a tool (Anthropic
                      breakpoints; OpenAI and Gemini cache prompt prefixes by themselves)

``ToolCall.arguments`` is the JSON text of the arguments, as the model produced it (OpenAI
sends text that may even be invalid JSON; streamed tool calls arrive as fragments of it);
:meth:`ToolCall.args` parses it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: a tool's name, as every provider accepts it
TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
#: image media types all three providers accept inline
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "refusal", "other"]
ReasoningEffort = Literal["minimal", "low", "medium", "high"]


class CacheControl(BaseModel):
    """A prompt-caching breakpoint: the prompt up to and including this item may be cached."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["ephemeral"] = "ephemeral"
    ttl: Literal["5m", "1h"] | None = None


class TextPart(BaseModel):
    """Text inside a message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text"] = "text"
    text: str
    cache_control: CacheControl | None = None


class ImagePart(BaseModel):
    """An image, by URL or as base64 ``data`` with its ``media_type``.

    ``detail`` is OpenAI's resolution hint (others choose the resolution themselves).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["image"] = "image"
    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: Literal["auto", "low", "high"] | None = None
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of url or data")
        if self.data is not None:
            if self.media_type not in IMAGE_MEDIA_TYPES:
                raise ValueError(f"base64 data needs media_type, one of {', '.join(IMAGE_MEDIA_TYPES)}")
            if not self.data or self.data.startswith("data:"):
                raise ValueError("data is the bare base64 text (no 'data:' URL prefix)")
        if self.url is not None and not self.url.startswith(("http://", "https://", "gs://")):
            raise ValueError("url must be http(s) or gs:// (inline images go in data)")
        return self


class ProviderPart(BaseModel):
    """A provider-specific content part, passed through as-is to that provider only.

    ``data`` is the part exactly as the provider's API takes it (e.g. an Anthropic
    ``document`` block). A job holding one can run only on ``provider``; a conversation that
    moves to another provider leaves it out of that provider's requests.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["provider"] = "provider"
    provider: Literal["openai", "anthropic", "gemini"]
    data: dict[str, Any]


ContentPart = Annotated[TextPart | ImagePart | ProviderPart, Field(discriminator="type")]
Content = str | list[ContentPart]


class ToolCall(BaseModel):
    """A call the model asked for. ``arguments`` is JSON text (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = "{}"

    def args(self) -> dict[str, Any]:
        """The arguments parsed; raises ValueError when the model produced invalid JSON."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool call arguments are not a JSON object")
        return value


class Tool(BaseModel):
    """A function the model may call; ``parameters`` is a JSON schema of its arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False
    cache_control: CacheControl | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError("must start with a letter or _, then letters, digits, _ . - (64 at most)")
        return v

    @field_validator("parameters")
    @classmethod
    def _schema_is_object(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type", "object") != "object":
            raise ValueError("must be a JSON schema of type object")
        return v


class NamedToolChoice(BaseModel):
    """Force a call of the tool ``name``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class ResponseFormat(BaseModel):
    """The answer's format: free text, any JSON object, or JSON matching ``json_schema``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"] = "json_object"
    name: str = "response"
    json_schema: dict[str, Any] | None = None
    strict: bool = False

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("json_schema: required when type is json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("json_schema: only with type json_schema")
        if not re.match(r"^[A-Za-z0-9_\-]{1,64}$", self.name):
            raise ValueError("name: letters, digits, _ and - only (64 at most)")
        return self


class Reasoning(BaseModel):
    """How hard a reasoning model thinks: an ``effort`` level or a thinking ``budget_tokens``.

    Adapters map one to the other where the provider takes only one of them (the table is in
    :mod:`router_jobs.providers.capabilities`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    effort: ReasoningEffort | None = None
    budget_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_given(self) -> Reasoning:
        if self.effort is None and self.budget_tokens is None:
            raise ValueError("give effort or budget_tokens")
        return self


def content_text(content: Content) -> str:
    """The text of a message's content (parts other than text are left out)."""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


def content_images(content: Content) -> list[ImagePart]:
    """The images of a message's content."""
    if isinstance(content, str):
        return []
    return [p for p in content if isinstance(p, ImagePart)]
