"""Async twins of the client calls, on ``redis.asyncio``.

:class:`AsyncRouter` submits, awaits, streams results as they complete, cancels and looks
jobs up without blocking an event loop on the waits. It shares its validation and its view of
the key pool with a synchronous :class:`~router_jobs.client.router.Router` (those are sub-millisecond
reads of cached state), so both refuse exactly the same jobs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from router_jobs.backend.connection import connect_async
from router_jobs.client.router import JobRef, Router, job_id_of
from router_jobs.errors import JobExpired, JobTimeout
from router_jobs.jobs.records import JobScripts, job_message, new_job_id, parse_result, raise_for_result
from router_jobs.models import JobHandle, JobResult, JobSpec, JobStatus
from router_jobs.settings import Settings
from router_jobs.streaming.events import StreamEvent
from router_jobs.streaming.live import waiting_event
from router_jobs.streaming.log import StreamScripts
from router_jobs.streaming.read import aiter_events


class AsyncRouter:
    """The async face of :class:`~router_jobs.client.router.Router`.

    Build it with ``AsyncRouter.from_env()`` or from a Router; ``await router.aclose()`` at
    the end. Every concurrent wait (``await_result``, ``stream``) holds one Redis connection:
    ``max_connections`` bounds them (redis-py's default is 100).
    """

    def __init__(self, router: Router, *, max_connections: int | None = None) -> None:
        self.sync = router
        self.schema = router.schema
        extra = {"max_connections": max_connections} if max_connections else {}
        self.client = connect_async(router.url or _url_of(router), **extra)
        self.scripts = JobScripts(self.client)
        self.stream_scripts = StreamScripts(self.client)

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncRouter:
        return cls(Router(Settings.from_env(**overrides)))

    async def aclose(self) -> None:
        await self.client.aclose()
        self.sync.close()

    async def submit(self, prompt: str | None = None, *, model: str, delay: float = 0.0,
                     **fields: Any) -> JobHandle:
        """Validate (as ``Router.submit`` does) and enqueue; see ``Router.submit``."""
        from router_jobs.client.router import validate_spec

        spec = validate_spec({"prompt": prompt, "model": model, **fields}, self.sync.settings,
                             self.sync.served_models())
        if spec.user_id is not None or spec.conversation_id is not None:
            # limits, budgets and turn numbering live in the sync router's small Redis scripts
            return self.sync.submit_spec(_checked(self.sync, spec), delay=delay)
        return await self.submit_spec(spec, delay=delay)

    async def submit_spec(self, spec: JobSpec, *, delay: float = 0.0, job_id: str | None = None) -> JobHandle:
        ks = self.schema
        queue = spec.priority.value
        job_id = job_id or new_job_id()
        idem = spec.idempotency_key
        if spec.stream:  # the first event, written before any worker can see the job
            ahead = int(await self.client.xlen(ks.stream(queue)))
            first = waiting_event("held back by submit" if delay > 0 else "submitted",
                                  int(delay * 1000) if delay > 0 else None, ahead)
            await self.stream_scripts.append_events(
                keys=[ks.job_events(job_id)],
                args=[self.sync.events.ttl_ms, self.sync.events.maxlen, first.encode()])
        got, existed = await self.scripts.submit(
            keys=[ks.job(job_id), ks.stream(queue), ks.delayed(queue), ks.idempotency(idem or "-")],
            args=[job_id, spec.model_dump_json(exclude_none=True), queue, job_message(job_id, queue),
                  self.sync.settings.job_ttl_seconds, max(0, int(delay * 1000)), "1" if idem else "0"],
        )
        got_id = got.decode() if isinstance(got, bytes) else str(got)
        if spec.stream and got_id != job_id:  # deduplicated: the earlier job's stream is the one
            await self.client.delete(ks.job_events(job_id))
        return JobHandle(job_id=got_id, queue=spec.priority, deduplicated=bool(int(existed)))

    def stream(self, job: JobRef, *, offset: str | None = None, timeout: float | None = None,
               poll: float = 1.0) -> AsyncIterator[StreamEvent]:
        """``async for event in router.stream(job)``: the job's events until ``done``/``error``,
        resumable after any event's ``id`` (see ``Router.stream``)."""
        return aiter_events(self.client, self.schema, self.status, job_id_of(job), offset=offset,
                            timeout=timeout, poll=poll, clock=time.monotonic)

    async def status(self, job: JobRef) -> JobResult | None:
        job_id = job_id_of(job)
        return parse_result(job_id, await self.client.hgetall(self.schema.job(job_id)))

    async def cancel(self, job: JobRef) -> bool:
        """Cancel a job that has not started (see ``Router.cancel``)."""
        return self.sync.cancel(job)

    async def await_result(self, job: JobRef, timeout: float | None = 60.0, *,
                           raise_on_error: bool = True) -> JobResult:
        """Wait (without blocking the loop) until the job ends; typed errors as the sync twin."""
        job_id = job_id_of(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.schema.job_channel(job_id))
            while True:
                result = await self.status(job_id)
                if result is None:
                    raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
                if result.status.terminal:
                    return raise_for_result(result) if raise_on_error else result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(job_id, timeout or 0.0)
                await pubsub.get_message(timeout=min(remaining, 5.0) if remaining is not None else 5.0)
        finally:
            await pubsub.aclose()

    async def as_completed(self, jobs: Iterable[JobRef], timeout: float | None = None) -> AsyncIterator[JobResult]:
        """Yield each job's result as it ends, over one pub/sub connection."""
        pending = {job_id_of(j) for j in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        prefix = self.schema.job_channel("")
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            ids = sorted(pending)
            for i in range(0, len(ids), 500):
                await pubsub.subscribe(*[self.schema.job_channel(j) for j in ids[i:i + 500]])
            woke: list[str] = ids
            while pending:
                for result in await self._collect(woke, pending):
                    yield result
                if not pending:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(next(iter(pending)), timeout or 0.0)
                msg = await pubsub.get_message(timeout=min(remaining, 5.0) if remaining is not None else 5.0)
                woke = []
                while msg is not None:
                    channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                    woke.append(channel[len(prefix):])
                    msg = await pubsub.get_message(timeout=0)
                woke = woke or sorted(pending)
        finally:
            await pubsub.aclose()

    async def _collect(self, ids: list[str], pending: set[str]) -> list[JobResult]:
        ids = [j for j in ids if j in pending]
        out: list[JobResult] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            pipe = self.client.pipeline(transaction=False)
            for j in chunk:
                pipe.hgetall(self.schema.job(j))
            for j, fields in zip(chunk, await pipe.execute(), strict=True):
                result = parse_result(j, fields) or JobResult(
                    job_id=j, status=JobStatus.expired, error_type="expired",
                    error_message="job is unknown or its record expired")
                if result.status.terminal:
                    pending.discard(j)
                    out.append(result)
        return out


def _url_of(router: Router) -> str:
    kwargs = router.client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _checked(router: Router, spec: JobSpec) -> JobSpec:
    """Apply the sync router's user limits and budget checks to an already valid spec."""
    if spec.user_id is not None:
        from router_jobs.errors import SubmitRateLimited

        router.budgets.check(spec.user_id)
        wait = router.limiter.acquire(spec.user_id)
        if wait > 0:
            raise SubmitRateLimited("user", wait)
    return spec
