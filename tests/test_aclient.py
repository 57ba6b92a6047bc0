"""The async twins: same validation, same records, waits that do not block the loop."""

from __future__ import annotations

import asyncio

import pytest
import redis

from router_jobs.capacity.config import parse_keys
from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router
from router_jobs.errors import JobFailed, JobTimeout, JobValidationError
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
