"""The event stream's parts against a real Redis: numbering, batching, resuming, gaps, markers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import BrokerError, StreamTruncated
from router_jobs.jobs.records import JobStore, new_job_id
from router_jobs.models import JobResult, JobSpec, JobStatus, Usage
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials
from router_jobs.streaming.events import StreamAssembler, StreamEvent, ToolCallDelta
from router_jobs.streaming.live import LiveAttempt, ending_event, neutral_finish
from router_jobs.streaming.log import EventLog, coalesce
from router_jobs.streaming.read import StreamCursor, iter_events


@pytest.fixture
def schema(namespace: str) -> RedisSchema:
    return RedisSchema(namespace)


@pytest.fixture
def log(r: redis.Redis, schema: RedisSchema) -> Iterator[EventLog]:
    yield EventLog(r, schema, ttl_seconds=60, maxlen=1000)


def delta(text: str, attempt: int = 1) -> StreamEvent:
    return StreamEvent(type="delta", attempt=attempt, text=text)


def test_appends_are_numbered_without_gaps_across_writers_and_expire(log: EventLog, r: redis.Redis) -> None:
    log.append("j1", [StreamEvent(type="state", status="queued")])
    w = log.writer("j1")
    w.emit(StreamEvent(type="started", attempt=1))
    w.close()
    log.append("j1", [delta("a"), delta("b", attempt=2)])
    events = log.read_all("j1")
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert [e.type for e in events] == ["state", "started", "delta", "delta"]
    assert 0 < r.pttl(log.schema.job_events("j1")) <= 60_000


def test_coalesce_merges_runs_of_one_attempt_only() -> None:
    frag = [StreamEvent(type="tool_call_delta", attempt=1, tool_call=ToolCallDelta(index=0, id="c1", name="f")),
            StreamEvent(type="tool_call_delta", attempt=1, tool_call=ToolCallDelta(index=0, arguments='{"a"')),
            StreamEvent(type="tool_call_delta", attempt=1, tool_call=ToolCallDelta(index=0, arguments=": 1}")),
            StreamEvent(type="tool_call_delta", attempt=1, tool_call=ToolCallDelta(index=1, id="c2", name="g"))]
    out = coalesce([delta("a"), delta("b"), delta("c", attempt=2), *frag])
    assert [(e.type, e.text) for e in out[:2]] == [("delta", "ab"), ("delta", "c")]
    calls = [e.tool_call for e in out[2:]]
    assert calls == [ToolCallDelta(index=0, id="c1", name="f", arguments='{"a": 1}'),
                     ToolCallDelta(index=1, id="c2", name="g")]


def test_the_writer_batches_a_burst_and_keeps_order(log: EventLog) -> None:
    w = log.writer("burst")
    words = [f"w{i} " for i in range(500)]
    for word in words:
        w.emit(delta(word))
    w.close()
    events = log.read_all("burst")
    assert "".join(e.text or "" for e in events) == "".join(words)
    assert w.batches == len(events) < len(words)  # one entry per round trip, not per token


def test_a_writer_whose_redis_is_gone_raises_a_broker_error(schema: RedisSchema) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    w = EventLog(dead, schema).writer("x")
    w.emit(delta("a"))
    with pytest.raises(BrokerError):
        w.drain()
    with pytest.raises(BrokerError):
        w.emit(delta("b"))


def test_the_assembler_voids_an_abandoned_attempt() -> None:
    acc = StreamAssembler()
    for ev in [delta("half an ans"), StreamEvent(type="attempt_restarted", attempt=1, reason="worker_lost"),
               delta("whole answer", attempt=2), StreamEvent(type="done", attempt=2, finish_reason="stop")]:
        acc.feed(ev)
    assert acc.text == "whole answer" and acc.restarts == 1 and acc.finish_reason == "stop"


def test_a_late_event_of_another_attempt_never_mixes_in() -> None:
    acc = StreamAssembler()
    for ev in [StreamEvent(type="started", attempt=1), delta("a"), StreamEvent(type="started", attempt=2),
               delta("late", attempt=1), delta("fresh", attempt=2)]:
        acc.feed(ev)
    assert acc.text == "fresh"
    acc.feed(StreamEvent(type="done", attempt=1))  # attempt 1 won after all: its answer is the result
    assert acc.text == "alate"


def _job(r: redis.Redis, schema: RedisSchema, status: JobStatus = JobStatus.queued,
         content: str | None = None) -> str:
    store = JobStore(r, schema)
    job_id, _ = store.submit(JobSpec(prompt="hi", model="m"), job_id=new_job_id())
    if status.terminal:
        store.finish(JobResult(job_id=job_id, status=status, content=content, attempts=1), queue="interactive")
    return job_id


def _read(r: redis.Redis, schema: RedisSchema, job_id: str, offset: str | None = None) -> list[StreamEvent]:
    return list(iter_events(r, schema, JobStore(r, schema).get, job_id, offset=offset, timeout=5, poll=0.05,
                            clock=time.monotonic))


def test_reading_resumes_after_an_offset(r: redis.Redis, schema: RedisSchema, log: EventLog) -> None:
    job_id = _job(r, schema)
    log.append(job_id, [StreamEvent(type="started", attempt=1), delta("a"), delta("b"),
                        StreamEvent(type="done", attempt=1)])
    events = _read(r, schema, job_id)
    assert [e.type for e in events] == ["started", "delta", "delta", "done"]
    rest = _read(r, schema, job_id, offset=events[1].id)
    assert [e.id for e in rest] == [e.id for e in events[2:]]


def test_a_trimmed_stream_is_reported_not_silently_short(r: redis.Redis, schema: RedisSchema, log: EventLog) -> None:
    job_id = _job(r, schema)
    log.append(job_id, [StreamEvent(type="started", attempt=1), delta("a"), delta("b"),
                        StreamEvent(type="done", attempt=1)])
    first = log.read_all(job_id)[0]
    r.xdel(schema.job_events(job_id), first.id or "")
    with pytest.raises(StreamTruncated) as info:
        _read(r, schema, job_id)
    assert (info.value.expected, info.value.got) == (0, 1)


def test_a_job_that_ended_without_events_ends_the_reading_from_its_result(r: redis.Redis,
                                                                          schema: RedisSchema) -> None:
    done = _job(r, schema, JobStatus.succeeded, content="the answer")
    events = _read(r, schema, done)
    assert [(e.type, e.text) for e in events] == [("delta", "the answer"), ("done", None)]
    failed = _job(r, schema, JobStatus.failed)
    assert [e.type for e in _read(r, schema, failed)] == ["error"]


def test_the_cursor_never_splices_a_stream_that_disagrees_with_the_result() -> None:
    cursor = StreamCursor("j")
    cursor.assembler.feed(delta("stale text"))
    out = cursor.closing(JobResult(job_id="j", status=JobStatus.succeeded, content="fresh", attempts=2))
    assert [e.type for e in out] == ["attempt_restarted", "delta", "done"]
    assert cursor.assembler.text == "fresh"


class _Whole:
    """An adapter without ``open_stream``: the answer comes whole."""

    name = "whole"

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        return ChatResponse(content="all at once", usage=Usage(input_tokens=3, output_tokens=4), model="m")


def test_a_new_attempt_marks_one_cut_short_by_a_dead_worker(log: EventLog) -> None:
    log.append("k", [StreamEvent(type="started", attempt=1), delta("half")])
    live = LiveAttempt.begin(log, "k", attempt=2)
    response = live.run(_Whole(), ChatRequest(model="m", messages=[]), KeyCredentials("key-1", "s"), "whole")
    live.close()
    events = log.read_all("k")
    assert [e.type for e in events] == ["started", "delta", "attempt_restarted", "started", "delta", "usage"]
    assert events[2].reason == "worker_lost" and events[2].attempt == 1 and events[3].attempt == 2
    assert response.content == "all at once"


def test_an_attempt_after_a_marked_failure_adds_no_second_marker(log: EventLog) -> None:
    log.append("m", [StreamEvent(type="started", attempt=1), delta("half"),
                     StreamEvent(type="attempt_restarted", attempt=1, reason="overloaded")])
    live = LiveAttempt.begin(log, "m", attempt=2)
    live.writer.emit(StreamEvent(type="started", attempt=2))
    live.close()
    assert [e.type for e in log.read_all("m")] == ["started", "delta", "attempt_restarted", "started"]


def test_endings_and_finish_reasons() -> None:
    ok = JobResult(job_id="j", status=JobStatus.succeeded, content="x", attempts=1, finish_reason="stop")
    assert ending_event(ok).type == "done" and ending_event(ok).finish_reason == "stop"
    bad = JobResult(job_id="j", status=JobStatus.failed, error_type="bad_request", error_message="no")
    assert (ending_event(bad).type, ending_event(bad).error_type) == ("error", "bad_request")
    assert neutral_finish("end_turn", 0) == "stop" and neutral_finish("STOP", 1) == "tool_calls"
    assert neutral_finish("MAX_TOKENS", 0) == "length" and neutral_finish("weird", 0) == "other"
    for neutral in ("stop", "length", "tool_calls", "content_filter", "refusal", "other"):
        assert neutral_finish(neutral, 0) == neutral  # a reason already neutral stays


class _Broken:
    """An adapter with a bug (not a provider error)."""

    name = "broken"

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        raise RuntimeError("a bug")


def test_a_failure_that_is_not_the_providers_stops_the_writer(log: EventLog) -> None:
    live = LiveAttempt.begin(log, "b", attempt=1)
    with pytest.raises(RuntimeError, match="a bug"):
        live.run(_Broken(), ChatRequest(model="m", messages=[]), KeyCredentials("key-1", "s"), "broken")
    thread = live.writer._thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()
