"""The async twins: same validation, same records, waits that do not block the loop."""

from __future__ import annotations

import asyncio

import pytest
import redis

from router_jobs.capacity.config import parse_keys
from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router
from router_jobs.errors import JobFailed, JobTimeout, JobValidationError, SubmitRateLimited
from router_jobs.models import JobResult, JobStatus
from router_jobs.settings import Settings

KEYS = parse_keys({"keys": [{"key_id": "k1", "model_name": "fake-model", "provider": "fake"}]})


def make(redis_url: str, namespace: str) -> AsyncRouter:
    settings = Settings(redis_url=redis_url, namespace=namespace)
    return AsyncRouter(Router(settings, client=redis.Redis.from_url(redis_url), keys=KEYS))


def test_async_submit_await_and_as_completed(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        router = make(redis_url, namespace)
        try:
            with pytest.raises(JobValidationError):
                await router.submit("", model="fake-model")
            jobs = [await router.submit(f"p{i}", model="fake-model") for i in range(50)]
            again = await router.submit("p0 again", model="fake-model", idempotency_key="same")
            assert (await router.submit("x", model="fake-model", idempotency_key="same")).job_id == again.job_id

            async def finish_later() -> None:
                await asyncio.sleep(0.1)
                for j in jobs:
                    status = JobStatus.failed if j is jobs[0] else JobStatus.succeeded
                    router.sync.jobs.finish(JobResult(job_id=j.job_id, status=status, content=j.job_id,
                                                      error_type="bad_request" if j is jobs[0] else None),
                                            queue="interactive")

            task = asyncio.create_task(finish_later())
            got = await router.await_result(jobs[1], timeout=10)
            assert got.content == jobs[1].job_id
            seen = [r.job_id async for r in router.as_completed(jobs, timeout=10)]
            await task
            assert sorted(seen) == sorted(j.job_id for j in jobs)
            with pytest.raises(JobFailed):
                await router.await_result(jobs[0], timeout=5)
            with pytest.raises(JobTimeout):
                await router.await_result(again, timeout=0.2)
            assert (await router.status(again)).status == JobStatus.queued  # type: ignore[union-attr]
            assert await router.cancel(again)
        finally:
            await router.aclose()

    asyncio.run(scenario())


def test_async_router_makes_no_call_on_the_sync_client(redis_url: str, namespace: str) -> None:
    """Every async call runs on the asyncio client: the sync one refuses any connection."""
    async def scenario() -> None:
        router = make(redis_url, namespace)
        router.sync.limiter.set_user_limit("alice", rpm=60, burst=1)

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("a blocking Redis call from the async router")

        router.sync.client.connection_pool.get_connection = refuse  # type: ignore[method-assign]
        try:
            assert await router.served_models() == {"fake-model"}
            first = await router.submit("hi", model="fake-model", user_id="alice", conversation_id="c1")
            with pytest.raises(SubmitRateLimited) as refused:
                await router.submit("again", model="fake-model", user_id="alice")
            assert refused.value.retry_after > 0
            delayed = await router.submit("later", model="fake-model", user_id="alice", on_rate_limit="delay")
            second_turn = await router.submit("turn 2", model="fake-model", conversation_id="c1")
            assert (await router.status(first)).status == JobStatus.queued  # type: ignore[union-attr]
            assert await router.cancel(delayed)
            assert (await router.await_result(delayed, raise_on_error=False)).status == JobStatus.cancelled
            assert await router.cancel(first) and await router.cancel(second_turn)
        finally:
            await router.client.aclose()
    asyncio.run(scenario())
    # what the async router wrote is what the sync rules write: turns numbered 1, 2 in order
    check = Router(Settings(redis_url=redis_url, namespace=namespace), client=redis.Redis.from_url(redis_url),
                   keys=KEYS)
    assert check.conversations.turn_info("c1")["issued"] == 2
    assert check.conversations.turn_info("c1")["done"] == 2  # both turns were cancelled, so finished


def test_concurrent_first_reads_of_the_registry_all_see_its_keys(redis_url: str, namespace: str) -> None:
    """Coroutines that refresh a fresh registry cache at once each get the stored keys."""
    from router_jobs.backend.connection import connect_async
    from router_jobs.backend.ops import adrive
    from router_jobs.backend.schema import RedisSchema
    from router_jobs.capacity.registry import RegistryCache, RegistryStore

    Router(Settings(redis_url=redis_url, namespace=namespace), client=redis.Redis.from_url(redis_url), keys=KEYS)
    store = RegistryStore(redis.Redis.from_url(redis_url), RedisSchema(namespace), "default")

    async def scenario() -> list[set[str]]:
        client = connect_async(redis_url)
        cache = RegistryCache(store)
        async def models_seen() -> set[str]:
            return (await adrive(client, cache.refresh_steps())).served_models()  # at the moment it returns

        try:
            return list(await asyncio.gather(*[models_seen() for _ in range(5)]))
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [{"fake-model"}] * 5
