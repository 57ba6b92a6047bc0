"""The producer side: validation at submit, idempotency, status, cancel, await, as_completed.

Jobs are ended here by the job store directly (as a worker would), so these tests need no
worker process; the end-to-end tests run real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from router_jobs.backend.ops import Op
from router_jobs.capacity.config import parse_keys
from router_jobs.client.router import Router
from router_jobs.errors import (
    JobCancelled,
    JobExpired,
    JobFailed,
    JobTimeout,
    JobValidationError,
)
from router_jobs.models import JobResult, JobStatus
from router_jobs.settings import Settings

KEYS = parse_keys({"keys": [
    {"key_id": "k1", "model_name": "fake-model", "provider": "fake", "rpm": 10, "active": True},
    {"key_id": "k2", "model_name": "off-model", "provider": "fake", "rpm": 10, "active": False},
]})


@pytest.fixture
def router(r: redis.Redis, redis_url: str, namespace: str) -> Iterator[Router]:
    settings = Settings(redis_url=redis_url, namespace=namespace, max_payload_bytes=10_000)
    router = Router(settings, client=redis.Redis.from_url(redis_url), keys=KEYS)
    yield router
    router.close()


def stream_len(router: Router, queue: str = "interactive") -> int:
    return int(router.client.xlen(router.schema.stream(queue)))


def finish(router: Router, job_id: str, status: JobStatus = JobStatus.succeeded, **fields: object) -> None:
    result = JobResult(job_id=job_id, status=status, **fields)  # type: ignore[arg-type]
    assert router.jobs.finish(result, queue="interactive") == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "hi", "model": "no-such-model"}, "model"),
        ({"prompt": "hi", "model": "off-model"}, "model"),
        ({"prompt": "hi", "max_output_tokens": -5}, "max_output_tokens"),
        ({"prompt": "hi", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"prompt": "x" * 20_000}, "prompt"),
        ({"prompt": "hi", "priority": "urgent"}, "priority"),
        ({"prompt": "hi", "temperature": 7}, "temperature"),
        ({"prompt": "hi", "fallback_models": ["nope"]}, "fallback_models"),
        ({"prompt": "hi", "deadline": time.time() - 10}, "deadline"),
        ({"prompt": "hi", "colour": "blue"}, "colour"),
    ],
)
def test_bad_jobs_are_refused_naming_the_field_and_nothing_is_enqueued(
    router: Router, fields: dict[str, object], field: str
) -> None:
    args = {"model": "fake-model", **fields}
    with pytest.raises(JobValidationError) as info:
        router.submit(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert stream_len(router) == 0
    assert not list(router.client.scan_iter(f"{router.schema.ns}:job:*"))


def test_submit_writes_record_and_message(router: Router) -> None:
    job = router.submit("hello", model="fake-model", metadata={"n": 1})
    assert stream_len(router) == 1
    status = router.status(job)
    assert status is not None and status.status == JobStatus.queued
    assert status.metadata == {"n": 1}
    assert router.client.ttl(router.schema.job(job.job_id)) > 0


def test_batch_priority_goes_to_batch_queue(router: Router) -> None:
    router.submit("hello", model="fake-model", priority="batch")
    assert stream_len(router, "batch") == 1
    assert stream_len(router, "interactive") == 0


def test_same_idempotency_key_returns_same_job_and_enqueues_nothing(router: Router) -> None:
    a = router.submit("hello", model="fake-model", idempotency_key="line-7")
    b = router.submit("hello again", model="fake-model", idempotency_key="line-7")
    assert a.job_id == b.job_id
    assert b.deduplicated and not a.deduplicated
    assert stream_len(router) == 1


def test_delayed_submit_waits_in_delay_set(router: Router) -> None:
    router.submit("later", model="fake-model", delay=30)
    assert stream_len(router) == 0
    assert router.client.zcard(router.schema.delayed("interactive")) == 1


def test_await_result_wakes_on_completion(router: Router) -> None:
    job = router.submit("hello", model="fake-model")
    threading.Timer(0.2, finish, args=(router, job.job_id), kwargs={"content": "hi!"}).start()
    result = router.await_result(job, timeout=10)
    assert result.content == "hi!"
    assert result.ok


def test_await_result_typed_errors(router: Router) -> None:
    failed = router.submit("a", model="fake-model")
    finish(router, failed.job_id, JobStatus.failed, error_type="bad_request", error_message="nope")
    with pytest.raises(JobFailed) as info:
        router.await_result(failed, timeout=5)
    assert info.value.error_type == "bad_request"
    assert router.await_result(failed, timeout=5, raise_on_error=False).status == JobStatus.failed

    expired = router.submit("b", model="fake-model")
    finish(router, expired.job_id, JobStatus.expired, error_message="deadline passed")
    with pytest.raises(JobExpired):
        router.await_result(expired, timeout=5)

    with pytest.raises(JobExpired):
        router.await_result("no-such-job", timeout=1)

    pending = router.submit("c", model="fake-model")
    with pytest.raises(JobTimeout):
        router.await_result(pending, timeout=0.2)


def test_cancel_queued_job(router: Router) -> None:
    job = router.submit("hello", model="fake-model")
    assert router.cancel(job)
    assert not router.cancel(job)  # already ended
    with pytest.raises(JobCancelled):
        router.await_result(job, timeout=5)
    # a job that ended cannot be cancelled, and its result is not overwritten
    done = router.submit("x", model="fake-model")
    finish(router, done.job_id, content="ok")
    assert not router.cancel(done)
    assert router.await_result(done).content == "ok"


def test_result_is_written_once(router: Router) -> None:
    job = router.submit("hello", model="fake-model")
    finish(router, job.job_id, content="first")
    second = JobResult(job_id=job.job_id, status=JobStatus.succeeded, content="second")
    assert router.jobs.finish(second, queue="interactive") == 0
    assert router.await_result(job).content == "first"


def test_as_completed_many_jobs_over_one_connection(router: Router) -> None:
    jobs = [router.submit(f"p{i}", model="fake-model", priority="batch") for i in range(1500)]

    def finish_all() -> None:
        for j in reversed(jobs):
            finish(router, j.job_id, content=j.job_id)

    threading.Timer(0.2, finish_all).start()
    got = [res.job_id for res in router.as_completed(jobs, timeout=60)]
    assert sorted(got) == sorted(j.job_id for j in jobs)
    assert len(set(got)) == len(got)


def test_as_completed_timeout_and_unknown_jobs(router: Router) -> None:
    job = router.submit("hello", model="fake-model")
    results = router.as_completed(["unknown-job"], timeout=5)
    [only] = list(results)
    assert only.status == JobStatus.expired
    with pytest.raises(JobTimeout):
        list(router.as_completed([job], timeout=0.2))


def test_a_turn_whose_enqueue_failed_does_not_stall_its_conversation(router: Router,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = router.jobs.submit_op

    def broken(*args: Any, **kwargs: Any) -> Op[tuple[str, bool]]:
        def send(client: Any) -> Any:
            raise redis.ConnectionError("connection reset")
        return Op(send, real(*args, **kwargs).parse)

    first = router.submit("turn 1", model="fake-model", conversation_id="c-stall")
    spec1 = router.jobs.spec(first.job_id)
    assert spec1 is not None and spec1.turn_seq == 1
    with monkeypatch.context() as m:
        m.setattr(router.jobs, "submit_op", broken)
        with pytest.raises(redis.ConnectionError):
            router.submit("turn 2", model="fake-model", conversation_id="c-stall")
    third = router.submit("turn 3", model="fake-model", conversation_id="c-stall")
    spec3 = router.jobs.spec(third.job_id)
    assert spec3 is not None and spec3.turn_seq == 3
    assert router.conversations.turn_gate("c-stall", 1)
    router.conversations.finish_turn("c-stall", 1)
    assert router.conversations.turn_gate("c-stall", 3)  # turn 2 never was: nothing to wait for


def test_a_turn_whose_enqueue_answer_was_lost_keeps_its_place(router: Router,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = router.jobs.submit_op

    def lost_reply(*args: Any, **kwargs: Any) -> Op[tuple[str, bool]]:
        op = real(*args, **kwargs)

        def send(client: Any) -> Any:
            op.send(client)  # the job is queued ...
            raise redis.ConnectionError("connection reset")  # ... and the answer is lost
        return Op(send, op.parse)

    with monkeypatch.context() as m:
        m.setattr(router.jobs, "submit_op", lost_reply)
        with pytest.raises(redis.ConnectionError):
            router.submit("turn 1", model="fake-model", conversation_id="c-lost")
    second = router.submit("turn 2", model="fake-model", conversation_id="c-lost")
    assert router.conversations.turn_gate("c-lost", 1)  # the queued turn 1 still runs first
    assert not router.conversations.turn_gate("c-lost", 2)
    assert stream_len(router) == 2 and second.job_id


def test_the_async_router_releases_a_failed_turn_too(router: Router, redis_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from router_jobs.client.async_router import AsyncRouter

    real = router.jobs.submit_op

    def broken(*args: Any, **kwargs: Any) -> Op[tuple[str, bool]]:
        def send(client: Any) -> Any:
            raise redis.ConnectionError("connection reset")
        return Op(send, real(*args, **kwargs).parse)

    async def scenario() -> None:
        arouter = AsyncRouter(router)
        try:
            await arouter.submit("turn 1", model="fake-model", conversation_id="c-async")
            monkeypatch.setattr(router.jobs, "submit_op", broken)
            with pytest.raises(redis.ConnectionError):
                await arouter.submit("turn 2", model="fake-model", conversation_id="c-async")
            monkeypatch.setattr(router.jobs, "submit_op", real)
            await arouter.submit("turn 3", model="fake-model", conversation_id="c-async")
        finally:
            await arouter.client.aclose()

    asyncio.run(scenario())
    router.conversations.finish_turn("c-async", 1)
    assert router.conversations.turn_gate("c-async", 3)


def test_a_submit_that_never_reached_the_line_is_completed_by_its_retry(router: Router) -> None:
    # a producer died after writing the held record and before putting the job in line
    from router_jobs.client.router import validate_spec

    held = validate_spec({"prompt": "hi", "model": "fake-model", "idempotency_key": "once"}, router.settings, None)
    job_id, existed = router.jobs.submit(held, job_id="held-job", hold=True)
    assert not existed and stream_len(router) == 0
    # the producer retries with the same idempotency key: same job, now in line (and admitted)
    again = router.submit("hi", model="fake-model", idempotency_key="once")
    assert again.job_id == "held-job" and again.deduplicated
    assert stream_len(router) == 1
    # a third submit changes nothing: the job was admitted, not queued twice
    router.submit("hi", model="fake-model", idempotency_key="once")
    assert stream_len(router) == 1
