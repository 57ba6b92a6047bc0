"""Writing a job's events to its Redis stream.

Every append goes through ``append_events.lua``, which numbers the entries (``seq``) without
gaps whoever writes them (the producer's ``state``, each attempt's worker), caps the stream at
``MAXLEN ~ maxlen`` and renews its TTL, in one round trip.

:class:`EventWriter` is what a worker streams deltas through: a flusher thread sends
everything emitted since its last round trip as one script call (group commit), so the first
delta leaves at once and a fast provider costs one round trip per batch, not per token.
Consecutive text deltas (and fragments of the same tool call) in a batch merge into one entry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from router_jobs.backend.ops import Op, run
from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.errors import BrokerError
from router_jobs.streaming.events import StreamEvent, ToolCallDelta

#: Default life of a job's event stream after its last event, in seconds.
DEFAULT_TTL_SECONDS = 3600
#: Default cap on the entries of one event stream (approximate trimming).
DEFAULT_MAXLEN = 20_000


class StreamScripts(ScriptSet):
    """The Lua scripts in ``streaming/lua/``."""

    append_events = lua("append_events")


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_entry(entry_id: Any, fields: Any) -> StreamEvent:
    """The event of one stream entry, with its ``id`` and ``seq`` set."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    event = StreamEvent.model_validate_json(f["e"])
    return event.model_copy(update={"id": _s(entry_id), "seq": int(f["s"])})


def coalesce(events: Sequence[StreamEvent]) -> list[StreamEvent]:
    """Merge runs of text deltas, and runs of fragments of one tool call, into single events."""
    out: list[StreamEvent] = []
    for ev in events:
        prev = out[-1] if out else None
        if prev is not None and prev.attempt == ev.attempt:
            if ev.type == "delta" and prev.type == "delta":
                out[-1] = prev.model_copy(update={"text": (prev.text or "") + (ev.text or "")})
                continue
            if (ev.type == "tool_call_delta" and prev.type == "tool_call_delta" and prev.tool_call
                    and ev.tool_call and ev.tool_call.index == prev.tool_call.index
                    and ev.tool_call.id is None and ev.tool_call.name is None):
                merged = ToolCallDelta(index=prev.tool_call.index, id=prev.tool_call.id, name=prev.tool_call.name,
                                       arguments=prev.tool_call.arguments + ev.tool_call.arguments)
                out[-1] = prev.model_copy(update={"tool_call": merged})
                continue
        out.append(ev)
    return out


class EventLog:
    """Job event streams on one Redis client: append, look at the last event, open a writer."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, *, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 maxlen: int = DEFAULT_MAXLEN) -> None:
        self.client = client
        self.schema = schema
        self.ttl_ms = ttl_seconds * 1000
        self.maxlen = maxlen

    def append_op(self, job_id: str, events: Sequence[StreamEvent], *, opening: int = 0) -> Op[str]:
        """:meth:`append` as a round trip for either client (see :mod:`router_jobs.backend.ops`)."""
        keys = [self.schema.job_events(job_id)]
        args = [self.ttl_ms, self.maxlen, opening, *(e.encode() for e in events)]
        return Op(lambda c: StreamScripts.on(c).append_events(keys=keys, args=args), _s)

    def append(self, job_id: str, events: Sequence[StreamEvent], *, opening: int = 0) -> str | None:
        """Append ``events`` (in one round trip); returns the last entry's id.

        ``opening``: the attempt these events open. If the stream's last event is of an
        earlier attempt still under way, its worker died mid-stream, and the script writes
        ``attempt_restarted`` (reason ``worker_lost``) before them, atomically.
        """
        if not events:
            return None
        try:
            return run(self.client, self.append_op(job_id, events, opening=opening))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot append to the event stream of job {job_id}: {exc}") from exc

    def last(self, job_id: str) -> StreamEvent | None:
        """The stream's last event, or None when it has none."""
        rows: Any = self.client.xrevrange(self.schema.job_events(job_id), count=1)
        return decode_entry(*rows[0]) if rows else None

    def read_all(self, job_id: str) -> list[StreamEvent]:
        """Every event still in the stream, oldest first (for tests and tooling)."""
        rows: Any = self.client.xrange(self.schema.job_events(job_id))
        return [decode_entry(i, f) for i, f in rows]

    def writer(self, job_id: str, *, opening: int = 0) -> EventWriter:
        """A batching writer for one attempt's events (close it when the attempt ends); its
        first append opens attempt ``opening`` (see :meth:`append`)."""
        return EventWriter(self, job_id, opening=opening)


class EventWriter:
    """Group-committing writer of one job's events (thread-safe; see the module docstring).

    ``emit`` never blocks on Redis; ``drain`` waits until everything emitted is written and
    raises :class:`~router_jobs.errors.BrokerError` if a write failed; ``close`` drains and
    stops the flusher thread.
    """

    def __init__(self, log: EventLog, job_id: str, *, opening: int = 0) -> None:
        self.log = log
        self.job_id = job_id
        self._opening = opening
        self._cond = threading.Condition()
        self._buffer: list[StreamEvent] = []
        self._writing = False
        self._closed = False
        self._error: BrokerError | None = None
        self._thread: threading.Thread | None = None
        self.batches = 0  # round trips made (the benchmark and tests read it)

    def emit(self, event: StreamEvent) -> None:
        """Queue ``event`` for the next round trip."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise BrokerError(f"event writer of job {self.job_id} is closed")
            self._buffer.append(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"events-{self.job_id[:8]}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every emitted event is in Redis."""
        with self._cond:
            while (self._buffer or self._writing) and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Drain, then stop the flusher thread."""
        try:
            self.drain()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()

    def abort(self) -> None:
        """Stop without writing what is still buffered (the attempt failed in a way that is
        not the provider's: its events no longer matter, its thread must not linger)."""
        with self._cond:
            self._buffer.clear()
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if not self._buffer:
                    return
                batch, self._buffer = self._buffer, []
                self._writing = True
            error: BrokerError | None = None
            try:
                self.log.append(self.job_id, coalesce(batch), opening=self._opening)
                self._opening = 0
            except BrokerError as exc:
                error = exc  # handed to the attempt: the next emit or drain raises it
            with self._cond:
                self._writing = False
                self.batches += 1
                if error is not None:
                    self._error = error
                    self._buffer.clear()
                self._cond.notify_all()
                if error is not None:
                    return
