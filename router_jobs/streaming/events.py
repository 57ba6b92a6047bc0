"""The events of a streamed job, and how a reader puts the answer back together.

A job submitted with ``stream=True`` gets an event stream in Redis. Its events, in order:

* ``state`` — the job waits: ``status`` (``queued``), ``position`` (jobs ahead in its queue at
  submit, approximate), ``eta_ms`` (when a worker sent it back to wait for room), ``reason``;
* ``started`` — an attempt began streaming: ``attempt``, ``model``, ``provider``, ``key_id``;
* ``delta`` — the next piece of text (``text``);
* ``tool_call_delta`` — the next piece of a tool call (``tool_call``: index, id, name and a
  fragment of the arguments' JSON text);
* ``usage`` — token usage as the provider reported it;
* ``attempt_restarted`` — the attempt named by ``attempt`` was abandoned (``reason``: the
  error type, or ``worker_lost`` when its worker died): what it streamed is void, and a new
  attempt follows with its own ``started``;
* ``done`` — the job succeeded (``finish_reason``, ``usage``, ``model``, ``attempt``);
* ``error`` — the job ended without an answer (``error_type``, ``message``).

``done`` and ``error`` are the last event. Every event carries ``id``, the position to
resume reading after. :class:`StreamAssembler` turns events into the answer (text and tool
calls), dropping what an abandoned attempt streamed, so that its text equals the result's
``content``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from router_jobs.models import Usage
from router_jobs.request import ToolCall

EventType = Literal[
    "state", "started", "delta", "tool_call_delta", "usage", "attempt_restarted", "done", "error"
]

#: Event types that end a stream.
TERMINAL_EVENTS = frozenset({"done", "error"})
#: Event types written while an attempt is under way (a stream ending on one was cut short).
ATTEMPT_EVENTS = frozenset({"started", "delta", "tool_call_delta", "usage"})


class ToolCallDelta(BaseModel):
    """A fragment of one streamed tool call. ``id`` and ``name`` arrive with its first
    fragment; the ``arguments`` fragments, joined in order, are the call's JSON arguments."""

    model_config = ConfigDict(frozen=True)

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamEvent(BaseModel):
    """One event of a job's stream (see the module docstring for which fields each type sets).

    ``id`` is the Redis stream entry id (resume with ``stream(job, offset=event.id)``) and
    ``seq`` its number in the stream (0, 1, 2 …); both are set when the event is read.
    Never carries a secret: keys are named by ``key_id``.
    """

    model_config = ConfigDict(extra="ignore")

    type: EventType
    id: str | None = None
    seq: int | None = None
    attempt: int | None = None
    status: str | None = None
    position: int | None = None
    eta_ms: int | None = None
    reason: str | None = None
    model: str | None = None
    provider: str | None = None
    key_id: str | None = None
    text: str | None = None
    tool_call: ToolCallDelta | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    error_type: str | None = None
    message: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether this event ends the stream."""
        return self.type in TERMINAL_EVENTS

    def encode(self) -> str:
        """The JSON stored in the stream (without ``id`` and ``seq``, which Redis assigns)."""
        return self.model_dump_json(exclude_none=True, exclude={"id", "seq"})


class AssembledToolCall(BaseModel):
    """A tool call put together from its fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_tool_call(self) -> ToolCall:
        """The call as a result carries it (see :class:`~router_jobs.request.ToolCall`)."""
        return ToolCall(id=self.id or f"call_{self.index}", name=self.name or "unnamed", arguments=self.arguments or "{}")


class StreamAssembler(BaseModel):
    """Folds events into the answer so far. ``attempt_restarted`` voids what came before it."""

    text: str = ""
    tool_calls: list[AssembledToolCall] = Field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    restarts: int = 0
    ended: StreamEvent | None = None

    def feed(self, event: StreamEvent) -> None:
        """Take the next event into account."""
        if event.type == "delta" and event.text:
            self.text += event.text
        elif event.type == "tool_call_delta" and event.tool_call is not None:
            self._tool(event.tool_call)
        elif event.type == "usage" and event.usage is not None:
            self.usage = event.usage
        elif event.type == "attempt_restarted":
            self.text, self.tool_calls, self.usage = "", [], None
            self.restarts += 1
        elif event.terminal:
            self.ended = event
            if event.usage is not None:
                self.usage = event.usage
            self.finish_reason = event.finish_reason

    def _tool(self, frag: ToolCallDelta) -> None:
        call = next((c for c in self.tool_calls if c.index == frag.index), None)
        if call is None:
            call = AssembledToolCall(index=frag.index)
            self.tool_calls.append(call)
        call.id = call.id or frag.id
        call.name = call.name or frag.name
        call.arguments += frag.arguments
