"""Faults injected into a real Redis, against the broker, the client and the replay tool,
in-process (the worker-process side is in test_faults.py).

Each Redis here is private to the test (they change its configuration: out of memory,
read-only replica, restart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware import Middleware

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP, StreamsBroker
from router_jobs.client.router import Router
from router_jobs.errors import BrokerError
from router_jobs.jobs.records import JobStore, job_message
from router_jobs.models import JobResult, JobStatus
from router_jobs.ops.deadletters import MAX_REPLAYS, dlq_replay
from router_jobs.settings import Settings
from tests.redis_server import RedisServer
from tests.workerpool import fake_key, write_keys


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    yield s
    s.stop()


@pytest.fixture
def rc(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def make_broker(client: redis.Redis, namespace: str = "t", **kw: Any) -> StreamsBroker:
    b = StreamsBroker(client, schema=RedisSchema(namespace), **kw)
    dramatiq.set_broker(b)
    return b


def out_of_memory(client: redis.Redis) -> None:
    """noeviction and a maxmemory below what is used: Redis refuses every growing write."""
    client.set("ballast", b"x" * 300_000)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 200_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", b"y")


def enough_memory(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)


# ------------------------------------------------------------------- item 1: the ack flusher
def test_acks_go_through_while_redis_is_out_of_memory(rc: redis.Redis) -> None:
    broker = make_broker(rc)
    broker.declare_queue("interactive")
    stream = broker.schema.stream("interactive")
    for i in range(5):
        rc.xadd(stream, {"m": job_message(f"j{i}", "interactive")})
    consumer = broker.consume("interactive", prefetch=5)
    got = [next(consumer) for _ in range(5)]
    assert all(m is not None for m in got)
    out_of_memory(rc)
    try:
        for m in got:
            consumer.ack(m)
        # XACK and XDEL free memory: Redis runs them when out of memory (it refuses MULTI)
        wait_for(lambda: rc.xpending(stream, GROUP)["pending"] == 0)
        assert rc.xlen(stream) == 0
    finally:
        enough_memory(rc)
        consumer.close()


def test_ack_flusher_and_consumer_survive_redis_refusing_writes(rc: redis.Redis) -> None:
    broker = make_broker(rc)
    broker.declare_queue("interactive")
    stream = broker.schema.stream("interactive")
    for i in range(3):
        rc.xadd(stream, {"m": job_message(f"j{i}", "interactive")})
    consumer = broker.consume("interactive", prefetch=3)
    got = [next(consumer) for _ in range(3)]
    rc.replicaof("127.0.0.1", "1")  # a replica of nothing: every write fails with READONLY
    try:
        consumer.ack(got[0])
        wait_for(lambda: consumer.errors.get("ack flusher", 0) >= 2)  # refused, reported, retried
        assert next(consumer) is None  # the consumer loop reports and goes on as well
        assert consumer.errors.get("consumer", 0) >= 1
    finally:
        rc.replicaof("NO", "ONE")
    consumer.ack(got[1])
    consumer.ack(got[2])
    wait_for(lambda: rc.xpending(stream, GROUP)["pending"] == 0)  # the same flusher thread
    assert consumer._flusher is not None and consumer._flusher.is_alive()
    consumer.close()


# --------------------------------------------------------- item 2: the dead-letter hook
class Heard(Middleware):
    """Records what the dead-letter hook hears, and whether the entry was still pending."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.heard: list[tuple[str, str, int]] = []

    def before_dead_letter(self, broker: Any, message: Any, *, kind: str, reason: str) -> None:
        pending = int(self.client.xpending(self.stream, GROUP)["pending"])
        self.heard.append((kind, reason, pending))


def test_dead_letter_hook_hears_failed_and_crashed_messages_before_they_move(rc: redis.Redis) -> None:
    broker = make_broker(rc, visibility_timeout=300, max_deliveries=1)
    stream = broker.schema.stream("interactive")
    heard = Heard(rc, stream)
    broker.add_middleware(heard)

    @dramatiq.actor(queue_name="interactive", max_retries=0)
    def boom() -> None:
        raise ValueError("never works")

    @dramatiq.actor(queue_name="interactive")
    def victim() -> None:
        raise AssertionError("must not run: it is poison")

    victim.send()
    rc.xreadgroup(GROUP, "crashed-consumer", {stream: ">"}, count=1)  # started, then died
    boom.send()
    w = Worker(broker, worker_threads=1, worker_timeout=100)
    w.start()
    try:
        wait_for(lambda: rc.xlen(broker.schema.dead("interactive")) == 2)
    finally:
        w.stop()
    heard_by_kind = {kind: (reason, pending) for kind, reason, pending in heard.heard}
    assert len(heard.heard) == 2 and set(heard_by_kind) == {"failed", "crashed"}
    assert "ValueError: never works" in heard_by_kind["failed"][0]
    assert "started 1 times without an ack" in heard_by_kind["crashed"][0]
    assert all(pending >= 1 for _, pending in heard_by_kind.values())  # heard before it moved
    assert rc.xpending(stream, GROUP)["pending"] == 0


class Refuses(Middleware):
    """A dead-letter hook that fails (as ending a job does when Redis refuses the write)."""

    def __init__(self) -> None:
        self.calls = 0

    def before_dead_letter(self, broker: Any, message: Any, *, kind: str, reason: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise redis.ConnectionError("injected: redis went away")


def _poison_entry(rc: redis.Redis, hook: Middleware) -> tuple[Any, str, Any]:
    """A broker with ``hook``, one entry already started by a consumer that died (the start
    limit is 1), and a consumer of its queue: (broker, stream, consumer)."""
    broker = make_broker(rc, visibility_timeout=300, max_deliveries=1)
    stream = broker.schema.stream("interactive")
    broker.add_middleware(hook)

    @dramatiq.actor(queue_name="interactive")
    def victim() -> None:
        raise AssertionError("must not run: it started too often")

    victim.send()
    rc.xreadgroup(GROUP, "crashed-consumer", {stream: ">"}, count=1)
    return broker, stream, broker.consume("interactive", prefetch=1)


def test_failing_hook_keeps_the_entry_until_the_hook_succeeds(rc: redis.Redis) -> None:
    hook = Refuses()
    broker, stream, consumer = _poison_entry(rc, hook)
    deadline = time.monotonic() + 15
    while rc.xlen(broker.schema.dead("interactive")) == 0 and time.monotonic() < deadline:
        assert next(consumer) is None
    assert hook.calls >= 2 and consumer.errors.get("reclaim") == 1
    assert rc.xlen(broker.schema.dead("interactive")) == 1 and rc.xlen(stream) == 0
    consumer.close()


class AlreadyDone(Middleware):
    """A dead-letter hook that says the message's work had already ended."""

    def __init__(self) -> None:
        self.calls = 0

    def before_dead_letter(self, broker: Any, message: Any, *, kind: str, reason: str) -> bool:
        self.calls += 1
        return True


def test_a_crashing_message_whose_work_had_ended_is_acknowledged_not_dead_lettered(rc: redis.Redis) -> None:
    # a worker finished the job and died before its batched ack left, more than once: the
    # entry reaches its start limit, but nothing is dead (the job had ended)
    hook = AlreadyDone()
    broker, stream, consumer = _poison_entry(rc, hook)
    deadline = time.monotonic() + 15
    while hook.calls == 0 and time.monotonic() < deadline:
        assert next(consumer) is None
    assert hook.calls == 1
    assert rc.xlen(broker.schema.dead("interactive")) == 0
    assert rc.xpending(stream, GROUP)["pending"] == 0 and rc.xlen(stream) == 0
    consumer.close()


# ------------------------------------------------------ item 8: retries parked atomically
def test_a_retry_redis_refuses_to_park_stays_pending_and_runs_later(rc: redis.Redis) -> None:
    broker = make_broker(rc, visibility_timeout=500)
    stream = broker.schema.stream("interactive")
    runs: list[int] = []

    @dramatiq.actor(queue_name="interactive", max_retries=5, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            out_of_memory(rc)  # the retry's ZADD will be refused
            raise RuntimeError("first run fails")

    flaky.send()
    w = Worker(broker, worker_threads=1, worker_timeout=100)
    w.start()
    try:
        wait_for(lambda: len(runs) == 1)
        time.sleep(0.3)  # Dramatiq parks (or fails to park) the retry meanwhile
        # nothing was lost: the entry is still pending, nothing sits in the delay set
        assert rc.xpending(stream, GROUP)["pending"] == 1
        assert rc.zcard(broker.schema.delayed("interactive")) == 0
        enough_memory(rc)
        wait_for(lambda: len(runs) == 2)  # redelivered after the visibility timeout
        wait_for(lambda: rc.xpending(stream, GROUP)["pending"] == 0)
    finally:
        enough_memory(rc)
        w.stop()


# --------------------------------------------------- item 11: promotion at the due time
def test_the_process_that_parks_a_message_promotes_it_when_due(rc: redis.Redis) -> None:
    broker = make_broker(rc)

    @dramatiq.actor(queue_name="interactive")
    def later() -> None:
        return None

    later.send_with_options(delay=50)
    # no consumer runs anywhere: the broker that parked it moves it at its due time
    wait_for(lambda: rc.xlen(broker.schema.stream("interactive")) == 1)
    assert rc.zcard(broker.schema.delayed("interactive")) == 0
    broker.close()


# --------------------------------------------------- item 2: replay reopens, and is capped
def test_replay_reopens_the_job_and_is_capped(rc: redis.Redis, tmp_path: Path) -> None:
    schema = RedisSchema("t")
    settings = Settings.from_env({"ROUTER_KEYS_FILE": str(write_keys([fake_key()])), "ROUTER_NAMESPACE": "t"})
    router = Router(settings, client=rc)
    job = router.submit("hello", model="fake-model")
    stream, dead = schema.stream("interactive"), schema.dead("interactive")
    jobs = JobStore(rc, schema)

    def dead_letter_it() -> None:  # what a worker does: end the job, move the message
        [(entry_id, fields)] = rc.xrange(stream)
        jobs.finish(JobResult(job_id=job.job_id, status=JobStatus.failed, error_type="crashed",
                              error_message="kept crashing"), queue="interactive")
        rc.xadd(dead, {"m": fields[b"m"], "reason": "kept crashing"})
        rc.xdel(stream, entry_id)

    for _ in range(MAX_REPLAYS):
        dead_letter_it()
        assert router.status(job).status == JobStatus.failed
        out = dlq_replay(rc, schema, "interactive")
        assert (out.replayed, out.refused) == (1, {})
        assert router.status(job).status == JobStatus.queued  # reopened: a worker runs it again
        assert rc.xlen(stream) == 1 and rc.xlen(dead) == 0
    dead_letter_it()
    out = dlq_replay(rc, schema, "interactive")
    assert out.replayed == 0 and list(out.refused.values()) == [f"replayed {MAX_REPLAYS} times already (cap 3)"]
    assert rc.xlen(dead) == 1 and router.status(job).status == JobStatus.failed
    # a job that ended another way is never reopened by a replay
    jobs.client.hset(schema.job(job.job_id), "result", JobResult(
        job_id=job.job_id, status=JobStatus.failed, error_type="bad_request").model_dump_json())
    assert jobs.reopen(job.job_id) == 0


# ------------------------------------------- item 8: the client rides out a Redis restart
def test_await_result_rides_out_a_redis_restart(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer("--appendfsync", "always", appendonly=True, data_dir=data)
    try:
        settings = Settings.from_env({"REDIS_URL": server.url, "ROUTER_NAMESPACE": "t",
                                      "ROUTER_KEYS_FILE": str(write_keys([fake_key()]))})
        router = Router(settings)
        job = router.submit("hello", model="fake-model")
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(router.await_result(job, timeout=60)))
        waiter.start()
        time.sleep(0.2)  # the waiter is subscribed and blocked
        server.stop()
        time.sleep(1.0)  # Redis is down for a while
        server = RedisServer("--appendfsync", "always", port=server.port, appendonly=True, data_dir=data)
        other = JobStore(redis.Redis.from_url(server.url), RedisSchema("t"))
        other.finish(JobResult(job_id=job.job_id, status=JobStatus.succeeded, content="done"), queue="interactive")
        waiter.join(30)
        assert [r.content for r in got] == ["done"]
    finally:
        server.stop()


def test_client_raises_broker_error_when_redis_stays_down() -> None:
    server = RedisServer()
    url = server.url
    server.stop()
    settings = Settings.from_env({"REDIS_URL": url, "ROUTER_KEYS_FILE": str(write_keys([fake_key()]))})
    with pytest.raises(BrokerError, match="reading the key registry: redis unreachable for 0.3s"):
        Router(settings, redis_budget=0.3)  # what Router.from_env() builds (budget 10 s)
