"""Durable streaming end to end: real worker processes, each provider's official SDK against
the fake servers speaking its streaming wire format, and a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakeproviders import FakeProviderServer
from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router
from router_jobs.models import JobStatus
from router_jobs.settings import Settings
from router_jobs.streaming import StreamAssembler, StreamEvent
from tests.workerpool import WorkerPool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-opus-4-6", "gemini": "gemini-2.5-flash"}
PROVIDERS = tuple(MODELS)
PROMPT = "tell me a story about seven small ducks crossing the river at dawn"


class System:
    """One fake server per provider, one key each, a router, and (optionally) a worker pool."""

    def __init__(self, redis_url: str, folder: Path, namespace: str) -> None:
        self.servers = {p: FakeProviderServer(p, keys={f"{p}-1": f"sk-{p}-secret-0123456789"}) for p in PROVIDERS}
        keys = []
        self.env = {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace, "SECRET_STORE_TYPE": "env",
                    "ROUTER_KEYS_FILE": str(folder / "keys.json"), "ROUTER_MAX_ATTEMPTS": "3",
                    "ROUTER_VISIBILITY_TIMEOUT_MS": "1500", "PROMETHEUS_MULTIPROC_DIR": str(folder / "prom")}
        for p, server in self.servers.items():
            keys.append({"key_id": f"{p}-1", "model_name": MODELS[p], "provider": p, "base_url": server.start(),
                         "rpm": 10_000, "active": True})
            self.env[f"API_KEY_{p.upper()}_1"] = f"sk-{p}-secret-0123456789"
        (folder / "keys.json").write_text(json.dumps({"keys": keys}))
        self.router = Router(Settings.from_env(self.env))

    def close(self) -> None:
        self.router.close()
        for s in self.servers.values():
            s.stop()


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    s = System(redis_url, tmp_path_factory.mktemp("stream"), "strm")
    pool = WorkerPool(s.env, processes=1, threads=4)
    pool.wait_consuming(redis_url, "strm")
    yield s
    pool.stop()
    s.close()


def collect(router: Router, job: object, **kw: object) -> list[StreamEvent]:
    return list(router.stream(job, timeout=60, **kw))  # type: ignore[arg-type]


def assembled(events: list[StreamEvent]) -> StreamAssembler:
    acc = StreamAssembler()
    for ev in events:
        acc.feed(ev)
    return acc


@pytest.mark.parametrize("provider", PROVIDERS)
def test_deltas_arrive_in_order_and_assemble_to_the_result(system: System, provider: str) -> None:
    system.servers[provider].script("*", ["ok?chunk_delay=0.01"])  # paced: each word its own event
    job = system.router.submit(PROMPT, model=MODELS[provider], stream=True)
    events = collect(system.router, job)
    kinds = [e.type for e in events]
    assert kinds[0] == "state" and events[0].status == "queued" and events[0].position is not None
    assert kinds[1] == "started" and events[1].provider == provider and events[1].key_id == f"{provider}-1"
    assert events[1].model and events[1].attempt == 1
    assert kinds[-1] == "done"
    words = [e.text for e in events if e.type == "delta"]
    assert len(words) >= 5 and "".join(w or "" for w in words) == f"echo: {PROMPT}"  # in order
    assert [e.seq for e in events] == list(range(len(events)))
    result = system.router.await_result(job, timeout=10)
    acc = assembled(events)
    assert acc.text == result.content == f"echo: {PROMPT}"
    assert acc.usage is not None and acc.usage.output_tokens == result.usage.output_tokens > 0
    assert events[-1].finish_reason == result.finish_reason == "stop"  # neutral, whatever the provider said
    # nothing secret in the stream
    raw = b"".join(v for _, f in system.router.client.xrange(system.router.schema.job_events(job.job_id))
                   for v in f.values())
    assert b"secret" not in raw


def test_a_fast_provider_is_written_in_batches(system: System) -> None:
    prompt = " ".join(f"w{i}" for i in range(200))
    job = system.router.submit(prompt, model=MODELS["openai"], stream=True)
    events = collect(system.router, job)
    deltas = [e for e in events if e.type == "delta"]
    assert len(deltas) < 201  # the provider sent 201 text events: several share a round trip
    assert assembled(events).text == f"echo: {prompt}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_dropped_consumer_resumes_from_its_offset(system: System, provider: str) -> None:
    system.servers[provider].script("*", ["ok?chunk_delay=0.02"])
    job = system.router.submit(PROMPT, model=MODELS[provider], stream=True)
    first: list[StreamEvent] = []
    for ev in system.router.stream(job, timeout=60):
        first.append(ev)
        if ev.type == "delta":
            break  # the consumer drops mid-stream
    rest = collect(system.router, job, offset=first[-1].id)
    everything = collect(system.router, job)
    assert [e.id for e in first + rest] == [e.id for e in everything]
    assert assembled(first + rest).text == system.router.await_result(job, timeout=10).content


@pytest.mark.parametrize("provider", PROVIDERS)
def test_async_stream_matches_the_sync_one(system: System, provider: str) -> None:
    async def run() -> tuple[list[StreamEvent], list[StreamEvent]]:
        arouter = AsyncRouter(system.router)
        try:
            job = await arouter.submit(PROMPT, model=MODELS[provider], stream=True)
            got = [ev async for ev in arouter.stream(job, timeout=60)]
            return got, collect(system.router, job)
        finally:
            await arouter.client.aclose()

    got, sync = asyncio.run(run())
    assert [e.model_dump() for e in got] == [e.model_dump() for e in sync]
    assert got[-1].type == "done" and assembled(got).text == f"echo: {PROMPT}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_deltas_assemble_to_the_call(system: System, provider: str) -> None:
    system.servers[provider].script("*", ["tool_call"])
    job = system.router.submit(PROMPT, model=MODELS[provider], stream=True)
    events = collect(system.router, job)
    frags = [e.tool_call for e in events if e.type == "tool_call_delta"]
    assert frags and frags[0] is not None and frags[0].name == "lookup"
    [call] = assembled(events).tool_calls
    assert call.name == "lookup" and json.loads(call.arguments) == {"query": PROMPT}
    assert events[-1].type == "done" and events[-1].finish_reason == "tool_calls"
    result = system.router.await_result(job, timeout=10)
    assert result.tool_calls == [call.to_tool_call()] and result.finish_reason == "tool_calls"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_error_mid_stream_ends_with_the_typed_error(system: System, provider: str) -> None:
    system.servers[provider].script("*", ["stream_error?kind=bad_request&after=3"])
    job = system.router.submit(PROMPT, model=MODELS[provider], stream=True)
    events = collect(system.router, job)
    assert [e.type for e in events].count("delta") >= 1  # the error came after the answer began
    last = events[-1]
    assert last.type == "error" and last.error_type == "bad_request" and last.message
    result = system.router.await_result(job, timeout=10, raise_on_error=False)
    assert result.status == JobStatus.failed and result.error_type == "bad_request"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_retried_mid_stream_error_is_marked_never_spliced(system: System, provider: str) -> None:
    kind = "server_error" if provider == "openai" else "overloaded"
    system.servers[provider].script("*", [f"stream_error?kind={kind}&after=3", "ok"])
    job = system.router.submit(PROMPT, model=MODELS[provider], stream=True)
    events = collect(system.router, job)
    kinds = [e.type for e in events]
    restart = kinds.index("attempt_restarted")
    assert "delta" in kinds[:restart] and events[restart].attempt == 1
    assert events[restart].reason == ("transient" if provider == "openai" else "overloaded")
    assert "started" in kinds[restart:] and events[kinds.index("started", restart)].attempt == 2
    naive = "".join(e.text or "" for e in events if e.type == "delta")
    result = system.router.await_result(job, timeout=10)
    assert naive != result.content  # joining every delta would splice two attempts
    assert assembled(events).text == result.content and result.attempts == 2


WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_tool_loop_assembles_each_call_and_answer(system: System, provider: str) -> None:
    question = [{"role": "user", "content": "weather in Paris?"}]
    ask = system.router.submit(model=MODELS[provider], messages=question, tools=[WEATHER], stream=True)
    events = collect(system.router, ask)
    first = system.router.await_result(ask, timeout=10)
    calls = [c.to_tool_call() for c in assembled(events).tool_calls]
    assert first.finish_reason == "tool_calls" and [c.name for c in first.tool_calls] == ["get_weather"]
    assert [(c.name, c.args()) for c in calls] == [(c.name, c.args()) for c in first.tool_calls]
    answers = [{"role": "tool", "tool_call_id": c.id, "content": "sunny, 21 C"} for c in first.tool_calls]
    follow = [*question, {"role": "assistant", "tool_calls": [c.model_dump() for c in first.tool_calls]}, *answers]
    reply = system.router.submit(model=MODELS[provider], messages=follow, tools=[WEATHER], stream=True)
    events = collect(system.router, reply)
    final = system.router.await_result(reply, timeout=10)
    assert assembled(events).text == final.content and "sunny, 21 C" in (final.content or "")
    assert events[-1].finish_reason == final.finish_reason == "stop"


@pytest.mark.parametrize("scenario", ["refusal", "blocked"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_refusals_and_blocks_end_as_the_unstreamed_call_would(system: System, provider: str, scenario: str) -> None:
    def ending(stream: bool) -> tuple[object, ...]:
        system.servers[provider].script("*", [scenario])
        job = system.router.submit(PROMPT, model=MODELS[provider], stream=stream)
        events = collect(system.router, job)
        r = system.router.await_result(job, timeout=30, raise_on_error=False)
        acc = assembled(events)
        if r.status == JobStatus.succeeded:  # what the reader assembled is what the result holds
            assert (acc.text, acc.refusal, acc.finish_reason) == (r.content, r.refusal, r.finish_reason)
        else:
            assert events[-1].type == "error" and events[-1].error_type == r.error_type
        return r.status, r.content, r.refusal, r.finish_reason, r.error_type

    streamed, unstreamed = ending(True), ending(False)
    assert streamed == unstreamed
    if scenario == "blocked" or provider == "gemini":  # Gemini withholds a refused answer
        assert streamed[0] == JobStatus.failed and streamed[4] == "content_blocked"
    else:
        assert streamed[:4] == (JobStatus.succeeded, "", "I can't help with that.", "refusal")


def test_a_job_not_streamed_still_streams_its_result(system: System) -> None:
    job = system.router.submit(PROMPT, model=MODELS["openai"])
    system.router.await_result(job, timeout=30)
    events = collect(system.router, job)
    assert [e.type for e in events] == ["delta", "done"]
    assert events[0].text == f"echo: {PROMPT}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_worker_sigkilled_mid_stream_leaves_a_marked_restart(redis_url: str, tmp_path: Path, provider: str) -> None:
    ns = f"strmkill-{provider}"
    s = System(redis_url, tmp_path, ns)
    try:
        server = s.servers[provider]
        server.script("*", ["ok?chunk_delay=0.1", "ok"])
        long_prompt = " ".join(f"word{i}" for i in range(80))
        with WorkerPool(s.env, processes=1, threads=2) as victim:
            victim.wait_consuming(redis_url, ns)
            [pid] = victim.worker_pids(1)
            job = s.router.submit(long_prompt, model=MODELS[provider], stream=True)
            seen: list[StreamEvent] = []
            for ev in s.router.stream(job, timeout=60):
                seen.append(ev)
                if sum(e.type == "delta" for e in seen) >= 5:
                    break
            os.kill(pid, signal.SIGKILL)
            with WorkerPool(s.env, processes=1, threads=2) as survivor:
                survivor.wait_consuming(redis_url, ns, processes=1)
                rest = collect(s.router, job, offset=seen[-1].id)
        events = seen + rest
        kinds = [e.type for e in events]
        restart = kinds.index("attempt_restarted")
        assert events[restart].reason == "worker_lost" and events[restart].attempt == 1
        assert kinds.count("started") == 2 and kinds.index("started", restart) > restart
        assert all(k != "delta" for k in kinds[restart:kinds.index("started", restart)])
        result = s.router.await_result(job, timeout=10)
        assert result.attempts == 2
        assert assembled(events).text == result.content == f"echo: {long_prompt}"
        assert [e.seq for e in events] == list(range(len(events)))
    finally:
        s.close()


def test_a_streamed_conversation_turn_joins_the_history(system: System) -> None:
    conv = "stream-conv"
    first = system.router.submit("first question", model=MODELS["openai"], conversation_id=conv, stream=True)
    assert assembled(collect(system.router, first)).text == "echo: first question"
    second = system.router.submit("second question", model=MODELS["anthropic"], conversation_id=conv, stream=True)
    events = collect(system.router, second)
    assert events[-1].type == "done" and assembled(events).text == "echo: second question"
    history = system.router.conversations.history(conv)
    assert [m.text for m in history] == ["first question", "echo: first question",
                                         "second question", "echo: second question"]
    # the second turn went to its provider with the first turn as history
    rec = [r for r in system.servers["anthropic"].received() if r.prompt == "second question"][-1]
    assert "echo: first question" in rec.text


def test_reading_an_unknown_job_is_a_typed_error(system: System) -> None:
    from router_jobs.errors import JobExpired

    with pytest.raises(JobExpired):
        next(iter(system.router.stream("0" * 32, timeout=1)))


def test_cancelled_stream_ends_with_an_error_event(system: System) -> None:
    job = system.router.submit(PROMPT, model=MODELS["openai"], stream=True, delay=30)
    assert system.router.cancel(job)
    events = collect(system.router, job)
    assert [e.type for e in events] == ["state", "error"]
    assert events[0].eta_ms == 30_000 and events[-1].error_type == "cancelled"
    time.sleep(0)  # nothing else to wait for: the reader returned on the error event
