"""Durable streaming: a streamed job's events in a Redis stream, resumable from any offset.

* :mod:`.events` — the event model (:class:`StreamEvent`) and :class:`StreamAssembler`;
* :mod:`.log` — appending (``append_events.lua``) and the group-committing :class:`EventWriter`;
* :mod:`.live` — the worker's side of one attempt;
* :mod:`.read` — the sync and async readers behind ``Router.stream`` / ``AsyncRouter.stream``.
"""

from router_jobs.streaming.events import (
    AssembledToolCall,
    StreamAssembler,
    StreamEvent,
    ToolCallDelta,
)
from router_jobs.streaming.log import EventLog, EventWriter

__all__ = ["AssembledToolCall", "EventLog", "EventWriter", "StreamAssembler", "StreamEvent", "ToolCallDelta"]
