"""The asyncio twin of :class:`~router_jobs.client.router.Router`, on ``redis.asyncio``.

:class:`AsyncRouter` submits, awaits, streams results as they complete, cancels and looks
jobs up without ever blocking its event loop: every Redis round trip goes through the asyncio
client. It runs the very rules the sync router runs (:mod:`router_jobs.client.rules`:
validation, user limits, budgets, ``on_rate_limit="delay"``, conversation turn numbering,
cancellation) and waits with the same collector (:mod:`router_jobs.client.waiting`), so both
refuse, limit and deliver exactly alike.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from router_jobs.backend.connection import connect_async
from router_jobs.backend.ops import adrive
from router_jobs.client import rules
from router_jobs.client.router import JobRef, Router, job_id_of
from router_jobs.client.waiting import AsyncJobWaiter
from router_jobs.jobs.records import raise_for_result
from router_jobs.models import JobHandle, JobResult, JobSpec
from router_jobs.settings import Settings
from router_jobs.streaming.events import StreamEvent
from router_jobs.streaming.read import aiter_events


class AsyncRouter:
    """The async face of a :class:`~router_jobs.client.router.Router`.

    Build it with ``AsyncRouter.from_env()`` or around a Router (whose settings, key pool
    view and stores it shares); ``await router.aclose()`` at the end. Every concurrent wait
    (``await_result``, ``stream``) holds one Redis connection: ``max_connections`` bounds them
    (redis-py's default is 100).
    """

    def __init__(self, router: Router, *, max_connections: int | None = None) -> None:
        self.sync = router
        self.schema = router.schema
        extra = {"max_connections": max_connections} if max_connections else {}
        self.client = connect_async(router.url or _url_of(router), **extra)

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncRouter:
        """An AsyncRouter configured from the environment (see ``Router.from_env``)."""
        return cls(Router(Settings.from_env(**overrides)))

    async def aclose(self) -> None:
        """Release both Redis connections."""
        await self.client.aclose()
        self.sync.close()

    async def __aenter__(self) -> AsyncRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def served_models(self) -> set[str]:
        """Models some active key of the pool serves (from the registry in Redis)."""
        return await adrive(self.client, self.sync.pool.models_steps())

    async def submit(self, prompt: str | None = None, *, model: str, delay: float = 0.0,
                     on_rate_limit: str = "raise", **fields: Any) -> JobHandle:
        """Validate and enqueue one job, as ``Router.submit`` does (same refusals and limits)."""
        steps = rules.submit_steps(self.sync, {"prompt": prompt, "model": model, **fields}, delay=delay,
                                   on_rate_limit=on_rate_limit)
        return await adrive(self.client, steps)

    async def submit_spec(self, spec: JobSpec, *, delay: float = 0.0, job_id: str | None = None) -> JobHandle:
        """Enqueue an already validated spec (see ``Router.submit_spec``)."""
        return await adrive(self.client, rules.submit_spec_steps(self.sync, spec, delay=delay, job_id=job_id))

    def stream(self, job: JobRef, *, offset: str | None = None, timeout: float | None = None,
               poll: float = 1.0) -> AsyncIterator[StreamEvent]:
        """``async for event in router.stream(job)``: the job's events until ``done``/``error``,
        resumable after any event's ``id`` (see ``Router.stream``)."""
        return aiter_events(self.client, self.schema, self.status, job_id_of(job), offset=offset,
                            timeout=timeout, poll=poll, clock=time.monotonic)

    async def status(self, job: JobRef) -> JobResult | None:
        """The job's current state (its result once it ended); None if unknown or expired."""
        return await adrive(self.client, self.sync.jobs.get_op(job_id_of(job)).steps())

    async def cancel(self, job: JobRef) -> bool:
        """Cancel a job that has not started (see ``Router.cancel``)."""
        return await adrive(self.client, rules.cancel_steps(self.sync, job_id_of(job)))

    async def await_result(self, job: JobRef, timeout: float | None = 60.0, *,
                           raise_on_error: bool = True) -> JobResult:
        """Wait for the job to end; as ``Router.await_result``."""
        async with AsyncJobWaiter(self.client, self.schema) as waiter:
            async for result in waiter.results([job_id_of(job)], timeout):
                return raise_for_result(result) if raise_on_error else result
        raise AssertionError("unreachable: results() yields the job's ending or raises")

    async def as_completed(self, jobs: Iterable[JobRef], timeout: float | None = None) -> AsyncIterator[JobResult]:
        """Yield each job's result as it ends, over one pub/sub connection (as ``Router.as_completed``)."""
        async with AsyncJobWaiter(self.client, self.schema) as waiter:
            async for result in waiter.results([job_id_of(j) for j in jobs], timeout):
                yield result


def _url_of(router: Router) -> str:
    """The URL of a Router built around an existing client (no URL of its own)."""
    kwargs = router.client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


