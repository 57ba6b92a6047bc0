"""The events of a streamed job, and how a reader puts the answer back together.

A job submitted with ``stream=True`` gets an event stream in Redis. Its events, in order:

* ``state`` — the job waits: ``status`` (``queued``), ``position`` (jobs ahead in its queue at
  submit, approximate), ``eta_ms`` (when a worker sent it back to wait for room), ``reason``;
* ``started`` — an attempt is calling the provider: ``attempt``, ``model``, ``provider``, ``key_id``;
* ``delta`` — the next piece of text (``text``), or of the model's refusal (``refusal``);
* ``tool_call_delta`` — the next piece of a tool call (``tool_call``: index, id, name and a
  fragment of the arguments' JSON text);
* ``usage`` — token usage as the provider reported it;
* ``attempt_restarted`` — the attempt named by ``attempt`` was abandoned (``reason``: the
  error type, or ``worker_lost`` when its worker died): what it streamed is void, and a new
  attempt follows with its own ``started``;
* ``done`` — the job succeeded (``finish_reason``, ``usage``, ``model``, ``attempt``, and
  ``refusal`` when the model declined: text it streamed before saying so was the refusal);
* ``error`` — the job ended without an answer (``error_type``, ``message``).

``done`` and ``error`` are the last event. Every event carries ``id``, the position to
resume reading after. :class:`StreamAssembler` turns events into the answer (text and tool
calls), dropping what an abandoned attempt streamed, so that its text equals the result's
``content``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from router_jobs.models import Usage
from router_jobs.request import ToolCall

EventType = Literal[
    "state", "started", "delta", "tool_call_delta", "usage", "attempt_restarted", "done", "error"
]

#: Event types that end a stream.
TERMINAL_EVENTS = frozenset({"done", "error"})
#: Event types written while an attempt is under way (a stream ending on one was cut short;
#: ``append_events.lua`` holds the same list).
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
    refusal: str | None = None
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


class StreamAssembler:
    """Folds events into the answer so far, keeping each attempt's output apart.

    ``attempt_restarted`` voids what its attempt streamed; a late event of an attempt other
    than the latest one never mixes into it; at ``done`` the answer is that of the attempt
    that won (``done.attempt``), which is the one the job's result holds.
    """

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}
        self._calls: dict[int, list[AssembledToolCall]] = {}
        self._usage: dict[int, Usage] = {}
        self.current: int | None = None  # the attempt being assembled
        self.refusal: str | None = None  # the model's refusal, once it declined
        self.restarts = 0
        self.finish_reason: str | None = None
        self.ended: StreamEvent | None = None

    @property
    def text(self) -> str:
        """The chosen attempt's text."""
        return self._texts.get(self._chosen(), "")

    @property
    def tool_calls(self) -> list[AssembledToolCall]:
        """The chosen attempt's tool calls, in index order."""
        return sorted(self._calls.get(self._chosen(), []), key=lambda c: c.index)

    @property
    def usage(self) -> Usage | None:
        """Usage of the chosen attempt (the job's, once ended)."""
        return self._usage.get(self._chosen())

    def _chosen(self) -> int:
        if self.ended is not None and self.ended.attempt is not None:
            return self.ended.attempt
        return self.current or 0

    def feed(self, event: StreamEvent) -> None:
        """Take the next event into account."""
        attempt = event.attempt or self.current or 0
        if event.type == "started":
            self.current = attempt
            self._texts[attempt], self._calls[attempt] = "", []
            self._usage.pop(attempt, None)
        elif event.type == "delta" and event.text:
            self.current = self.current or attempt
            self._texts[attempt] = self._texts.get(attempt, "") + event.text
        elif event.type == "delta" and event.refusal:
            self.refusal = (self.refusal or "") + event.refusal
        elif event.type == "tool_call_delta" and event.tool_call is not None:
            self._tool(attempt, event.tool_call)
        elif event.type == "usage" and event.usage is not None:
            self._usage[attempt] = event.usage
        elif event.type == "attempt_restarted":
            self._texts.pop(attempt, None)
            self._calls.pop(attempt, None)
            self._usage.pop(attempt, None)
            self.refusal = None
            self.restarts += 1
        elif event.terminal:
            self.ended = event
            if event.usage is not None:
                self._usage[attempt] = event.usage
            self.finish_reason = event.finish_reason
            if event.refusal is not None:  # what streamed as text was the model declining
                self.refusal = event.refusal
                self._texts[attempt] = ""

    def _tool(self, attempt: int, frag: ToolCallDelta) -> None:
        calls = self._calls.setdefault(attempt, [])
        call = next((c for c in calls if c.index == frag.index), None)
        if call is None:
            call = AssembledToolCall(index=frag.index)
            calls.append(call)
        call.id = call.id or frag.id
        call.name = call.name or frag.name
        call.arguments += frag.arguments
