"""Reading a job's events from any offset, sync and async.

Both readers block on ``XREAD`` (woken by the worker's next append), and between appends look
at the job record at most every ``poll`` seconds: a job that ended without its last event
(cancelled while queued, a worker that died between ending the job and writing ``done``, a
job submitted without ``stream=True``, a stream that expired) still ends the reading, with
``done``/``error`` built from its result. The logic lives in :class:`StreamCursor`; the two
loops only do the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import redis
import redis.asyncio

from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import JobExpired, JobTimeout, StreamTruncated
from router_jobs.models import JobResult, JobStatus
from router_jobs.streaming.events import StreamAssembler, StreamEvent
from router_jobs.streaming.log import decode_entry

START = "0-0"
_READ_COUNT = 1000


class StreamCursor:
    """Where a reader is in one job's stream, and what it has assembled since the start."""

    def __init__(self, job_id: str, offset: str | None = None) -> None:
        self.job_id = job_id
        self.last_id = START if offset in (None, "", "0", START) else str(offset)
        self.from_start = self.last_id == START
        self.expected: int | None = 0 if self.from_start else None
        self.assembler = StreamAssembler()
        self.ended = False

    def take(self, got: Any) -> list[StreamEvent]:
        """The events of an XREAD answer (read after ``last_id``), up to and including a terminal one."""
        out: list[StreamEvent] = []
        for entry_id, fields in got[0][1]:
            event = decode_entry(entry_id, fields)
            assert event.seq is not None and event.id is not None
            if self.expected is not None and event.seq != self.expected:
                raise StreamTruncated(self.job_id, self.expected, event.seq)
            self.expected = event.seq + 1
            self.last_id = event.id
            self.assembler.feed(event)
            out.append(event)
            if event.terminal:
                self.ended = True
                break
        return out

    def closing(self, result: JobResult) -> list[StreamEvent]:
        """The events that end a stream whose job ended without writing its last event."""
        self.ended = True
        if result.status != JobStatus.succeeded:
            return [StreamEvent(type="error", attempt=result.attempts or None,
                                error_type=result.error_type or result.status.value,
                                message=result.error_message or f"job {result.status.value}")]
        out: list[StreamEvent] = []
        content = result.content or ""
        attempt = result.attempts or None
        acc = self.assembler
        if self.from_start and acc.text != content:
            if acc.text or acc.tool_calls:  # never splice: void what was read
                out.append(StreamEvent(type="attempt_restarted", attempt=acc.current, reason="resynced",
                                       message="the stream disagreed with the result; the result's text follows"))
            out.append(StreamEvent(type="delta", attempt=attempt, text=content))
        out.append(StreamEvent(type="done", attempt=attempt, model=result.model, provider=result.provider,
                               key_id=result.key_id, usage=result.usage, finish_reason=result.finish_reason,
                               refusal=result.refusal))
        for ev in out:
            self.assembler.feed(ev)
        return out


def _block_ms(poll: float, deadline: float | None, now: float) -> int:
    wait = poll if deadline is None else min(poll, deadline - now)
    return max(1, int(wait * 1000))


def iter_events(client: redis.Redis, schema: RedisSchema, get: Callable[[str], JobResult | None], job_id: str,
                *, offset: str | None = None, timeout: float | None = None, poll: float = 1.0,
                clock: Callable[[], float]) -> Iterator[StreamEvent]:
    """Yield the job's events after ``offset`` until ``done``/``error`` (see module docstring).

    Raises JobExpired for an unknown job, JobTimeout when ``timeout`` passes first,
    StreamTruncated when events are missing.
    """
    cursor = StreamCursor(job_id, offset)
    key = schema.job_events(job_id)
    deadline = None if timeout is None else clock() + timeout
    got: Any = client.xread({key: cursor.last_id}, count=_READ_COUNT)  # events already there: no lookup
    if got:
        yield from cursor.take(got)
    elif get(job_id) is None:
        raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
    while not cursor.ended:
        got = client.xread({key: cursor.last_id}, count=_READ_COUNT, block=_block_ms(poll, deadline, clock()))
        if got:
            yield from cursor.take(got)
            continue
        result = get(job_id)
        if result is None:
            raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
        if result.status.terminal:
            got = client.xread({key: cursor.last_id}, count=_READ_COUNT)
            yield from (cursor.take(got) if got else cursor.closing(result))
            continue
        if deadline is not None and clock() >= deadline:
            raise JobTimeout(job_id, timeout or 0.0)


async def aiter_events(client: redis.asyncio.Redis, schema: RedisSchema,
                       get: Callable[[str], Awaitable[JobResult | None]], job_id: str, *,
                       offset: str | None = None, timeout: float | None = None, poll: float = 1.0,
                       clock: Callable[[], float]) -> AsyncIterator[StreamEvent]:
    """The async twin of :func:`iter_events`."""
    cursor = StreamCursor(job_id, offset)
    key = schema.job_events(job_id)
    deadline = None if timeout is None else clock() + timeout
    got: Any = await client.xread({key: cursor.last_id}, count=_READ_COUNT)  # events already there: no lookup
    if got:
        for event in cursor.take(got):
            yield event
    elif await get(job_id) is None:
        raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
    while not cursor.ended:
        got = await client.xread({key: cursor.last_id}, count=_READ_COUNT, block=_block_ms(poll, deadline, clock()))
        if got:
            for event in cursor.take(got):
                yield event
            continue
        result = await get(job_id)
        if result is None:
            raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
        if result.status.terminal:
            got = await client.xread({key: cursor.last_id}, count=_READ_COUNT)
            for event in (cursor.take(got) if got else cursor.closing(result)):
                yield event
            continue
        if deadline is not None and clock() >= deadline:
            raise JobTimeout(job_id, timeout or 0.0)
