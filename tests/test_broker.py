"""The Streams broker against a real Redis, with Dramatiq's own Worker in-process.

The cases follow what Dramatiq's broker tests check (enqueue, consume, ack, nack, delay,
requeue on shutdown, join, flush) plus our own: visibility timeout, heartbeat, reclaim,
dead letters by delivery count, interactive-before-batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware import Retries

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP, StreamsBroker


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def broker(r: redis.Redis, namespace: str) -> Iterator[StreamsBroker]:
    b = StreamsBroker(r, schema=RedisSchema(namespace), visibility_timeout=600, max_deliveries=3)
    dramatiq.set_broker(b)
    yield b
    b.close()


def start_worker(broker: StreamsBroker, threads: int = 2) -> Worker:
    w = Worker(broker, worker_threads=threads, worker_timeout=100)
    w.start()
    return w


def test_enqueue_consume_ack(broker: StreamsBroker, r: redis.Redis) -> None:
    seen: list[int] = []

    @dramatiq.actor(queue_name="interactive")
    def add(x: int) -> None:
        seen.append(x)

    for i in range(50):
        add.send(i)
    assert r.xlen(broker.schema.stream("interactive")) == 50
    w = start_worker(broker)
    try:
        broker.join("interactive", timeout=10_000)
        w.join()
    finally:
        w.stop()
    assert sorted(seen) == list(range(50))
    # acked entries are deleted, nothing is left pending
    assert r.xlen(broker.schema.stream("interactive")) == 0
    assert r.xpending(broker.schema.stream("interactive"), GROUP)["pending"] == 0


def test_failing_message_is_dead_lettered_with_reason(broker: StreamsBroker, r: redis.Redis) -> None:
    @dramatiq.actor(queue_name="interactive", max_retries=0)
    def boom() -> None:
        raise ValueError("this message can never work")

    boom.send()
    w = start_worker(broker)
    try:
        wait_for(lambda: r.xlen(broker.schema.dead("interactive")) == 1)
    finally:
        w.stop()
    [dead] = broker.dead_letters("interactive")
    assert dead["actor"] == "boom"
    assert "ValueError: this message can never work" in dead["reason"]
    assert r.xlen(broker.schema.stream("interactive")) == 0


def test_dead_letter_reason_is_redacted_before_it_is_stored(broker: StreamsBroker, r: redis.Redis) -> None:
    from router_jobs.secrets.redaction import Redactor

    canary = "sk-canary-0123456789abcdefghij"
    broker.redact = Redactor([canary]).redact  # what a worker process installs

    @dramatiq.actor(queue_name="interactive", max_retries=0)
    def leaky() -> None:
        raise RuntimeError(f"provider said: invalid key {canary}")

    leaky.send()
    w = start_worker(broker)
    try:
        wait_for(lambda: r.xlen(broker.schema.dead("interactive")) == 1)
    finally:
        w.stop()
    [dead] = broker.dead_letters("interactive")
    assert "provider said: invalid key" in dead["reason"]
    assert canary not in dead["reason"] and canary[-12:] not in dead["reason"]
    raw = r.xrange(broker.schema.dead("interactive"))
    assert canary.encode() not in b"".join(v for _, fields in raw for v in fields.values())


def test_delayed_message_waits_in_redis_then_runs(broker: StreamsBroker, r: redis.Redis) -> None:
    ran = threading.Event()

    @dramatiq.actor(queue_name="interactive")
    def later() -> None:
        ran.set()

    w = start_worker(broker)
    try:
        later.send_with_options(delay=400)
        # it sits in the delay set (not in any worker's memory) until due
        assert r.zcard(broker.schema.delayed("interactive")) == 1
        assert not ran.is_set()
        assert ran.wait(10)
    finally:
        w.stop()
    assert r.zcard(broker.schema.delayed("interactive")) == 0


def test_delay_uses_server_clock_and_promotion_moves_each_message_once(
    broker: StreamsBroker, r: redis.Redis
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(queue_name="interactive")
    def item(i: int) -> None:
        with lock:
            seen.append(i)

    for i in range(300):
        item.send_with_options(args=(i,), delay=50)
    # several workers promoting concurrently must not duplicate anything
    workers = [start_worker(broker, threads=2) for _ in range(3)]
    try:
        wait_for(lambda: len(seen) >= 300)
        broker.join("interactive", timeout=10_000)  # a duplicate would run before the queue drains
    finally:
        for w in workers:
            w.stop()
    assert sorted(seen) == list(range(300))


def test_requeue_on_shutdown_hands_prefetched_messages_back(broker: StreamsBroker, r: redis.Redis) -> None:
    started = threading.Event()

    @dramatiq.actor(queue_name="interactive")
    def slow(i: int) -> None:
        started.set()
        time.sleep(0.3)

    for i in range(10):
        slow.send(i)
    w = start_worker(broker, threads=1)
    assert started.wait(10)
    w.stop()
    stream = broker.schema.stream("interactive")
    # the unprocessed messages are back in the stream, owned by nobody
    assert r.xpending(stream, GROUP)["pending"] == 0
    remaining = r.xlen(stream)
    assert 1 <= remaining <= 9


def test_join_and_flush(broker: StreamsBroker, r: redis.Redis) -> None:
    @dramatiq.actor(queue_name="batch")
    def nothing() -> None:
        return None

    for _ in range(5):
        nothing.send()
    nothing.send_with_options(delay=60_000)
    assert broker.queue_size("batch") == 6
    with pytest.raises(dramatiq.errors.QueueJoinTimeout):
        broker.join("batch", timeout=100)
    broker.flush("batch")
    assert broker.queue_size("batch") == 0
    broker.join("batch", timeout=100)
    nothing.send()
    broker.flush_all()
    assert broker.queue_size("batch") == 0


def test_orphaned_entries_are_reclaimed_after_visibility_timeout(broker: StreamsBroker, r: redis.Redis) -> None:
    seen: list[int] = []

    @dramatiq.actor(queue_name="interactive")
    def job(i: int) -> None:
        seen.append(i)

    broker.declare_queue("interactive")
    for i in range(5):
        job.send(i)
    stream = broker.schema.stream("interactive")
    # a consumer that reads and then dies without acking
    r.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=5)
    assert r.xpending(stream, GROUP)["pending"] == 5
    w = start_worker(broker)
    try:
        wait_for(lambda: len(seen) == 5)
    finally:
        w.stop()
    assert sorted(seen) == list(range(5))
    assert r.xpending(stream, GROUP)["pending"] == 0


def test_entry_started_too_often_goes_to_dead_letters(broker: StreamsBroker, r: redis.Redis) -> None:
    @dramatiq.actor(queue_name="interactive")
    def victim() -> None:
        raise AssertionError("must never run: it was dead-lettered")

    broker.declare_queue("interactive")
    victim.send()
    stream = broker.schema.stream("interactive")
    [[_, [(entry_id, _)]]] = r.xreadgroup(GROUP, "crasher-0", {stream: ">"}, count=1)  # started, died
    for i in range(1, 3):  # taken over and started twice more, dying each time: 3 starts in all
        time.sleep(0.65)
        r.xautoclaim(stream, GROUP, f"crasher-{i}", 600, "0-0")
        r.hincrby(broker.schema.starts("interactive"), entry_id, 1)  # what StartTracker records
    time.sleep(0.65)
    w = start_worker(broker)
    try:
        wait_for(lambda: r.xlen(broker.schema.dead("interactive")) == 1)
    finally:
        w.stop()
    [dead] = broker.dead_letters("interactive")
    assert dead["starts"] == 3 and dead["deliveries"] == 4
    assert "started 3 times without an ack" in dead["reason"]
    assert r.xlen(stream) == 0
    assert not r.exists(broker.schema.starts("interactive"))


def test_prefetched_entries_of_crashed_consumers_are_not_blamed(broker: StreamsBroker, r: redis.Redis) -> None:
    seen: list[int] = []

    @dramatiq.actor(queue_name="interactive")
    def innocent(i: int) -> None:
        seen.append(i)

    broker.declare_queue("interactive")
    for i in range(3):
        innocent.send(i)
    stream = broker.schema.stream("interactive")
    r.xreadgroup(GROUP, "crasher-0", {stream: ">"}, count=3)  # prefetched, never started
    for i in range(1, 5):  # four more consumers prefetch them and die before starting them
        time.sleep(0.65)
        r.xautoclaim(stream, GROUP, f"crasher-{i}", 600, "0-0")
    time.sleep(0.65)
    w = start_worker(broker)
    try:
        wait_for(lambda: len(seen) == 3)
    finally:
        w.stop()
    assert sorted(seen) == [0, 1, 2]
    assert r.xlen(broker.schema.dead("interactive")) == 0


def test_heartbeat_keeps_a_long_job_from_a_second_worker(broker: StreamsBroker, redis_url: str,
                                                        namespace: str) -> None:
    runs: list[float] = []

    @dramatiq.actor(queue_name="interactive", time_limit=60_000)
    def long_call() -> None:
        runs.append(time.monotonic())
        time.sleep(2.5)  # four times the visibility timeout

    w1 = start_worker(broker)
    long_call.send()
    wait_for(lambda: len(runs) == 1)
    # a second worker process (own broker, own consumer name) watches for orphans meanwhile
    other = StreamsBroker(redis.Redis.from_url(redis_url), schema=RedisSchema(namespace), visibility_timeout=600)
    other.actors = broker.actors
    w2 = Worker(other, worker_threads=1, worker_timeout=100)
    w2.start()
    try:
        time.sleep(3.0)
        broker.join("interactive", timeout=10_000)
    finally:
        w2.stop()
        w1.stop()
    assert len(runs) == 1


def test_interactive_jobs_are_taken_before_queued_batch_jobs(broker: StreamsBroker, r: redis.Redis) -> None:
    order: list[str] = []
    gate = threading.Event()

    running: list[int] = []

    @dramatiq.actor(queue_name="batch", priority=100)
    def batch_job(i: int) -> None:
        running.append(i)
        gate.wait(10)
        order.append(f"b{i}")

    @dramatiq.actor(queue_name="interactive", priority=0)
    def interactive_job() -> None:
        order.append("i")

    for i in range(30):
        batch_job.send(i)
    w = start_worker(broker, threads=2)
    try:
        wait_for(lambda: len(running) == 2)  # the two threads are busy with batch jobs
        interactive_job.send()
        stream = broker.schema.stream("interactive")
        wait_for(lambda: r.xpending(stream, GROUP)["pending"] == 1)  # the worker holds it, waiting
        gate.set()
        broker.join("interactive", timeout=10_000)
        broker.join("batch", timeout=20_000)
        w.join()
    finally:
        w.stop()
    # the interactive job ran as soon as a thread was free: right after the 2 running ones
    assert order.index("i") <= 2
    # batch prefetch is capped: most batch jobs stayed in Redis, not in worker memory
    assert len(order) == 31


def test_retries_middleware_still_works(broker: StreamsBroker, r: redis.Redis) -> None:
    attempts: list[int] = []

    @dramatiq.actor(queue_name="interactive", max_retries=2, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    assert any(isinstance(m, Retries) for m in broker.middleware)
    flaky.send()
    w = start_worker(broker)
    try:
        wait_for(lambda: len(attempts) == 3)
        broker.join("interactive", timeout=5000)
    finally:
        w.stop()
    assert r.xlen(broker.schema.dead("interactive")) == 0
