"""Waiting for jobs to end: one collector for the sync client, the async client and the batch
runner.

A waiter subscribes to each job's channel (``rj:done:{id}``, published by ``finish_job.lua``)
*before* it reads the job's record, so an ending can never fall between the read and the
subscription. A wake-up names jobs whose record is read again; every few seconds without
news, every pending record is read again (a record may expire without a publish).

:class:`WaitSet` is the logic and does no I/O; :class:`JobWaiter` and :class:`AsyncJobWaiter`
drive it over one redis-py pub/sub connection each, sync or asyncio, and do nothing else.
The sync waiter rides out a Redis outage of up to ``redis_budget`` seconds: it subscribes
again to every pending job, then reads every pending record, so no ending is missed; past
the budget it raises :class:`~router_jobs.errors.BrokerError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import redis
from redis.asyncio.client import PubSub as AsyncPubSub
from redis.client import PubSub

from router_jobs.backend.connection import OUTAGE_BUDGET
from router_jobs.backend.ops import Op, Steps, adrive, drive
from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import BrokerError, JobTimeout
from router_jobs.jobs.records import parse_result
from router_jobs.models import JobResult, JobStatus

#: channels per SUBSCRIBE / UNSUBSCRIBE command, and records per pipelined read
CHUNK = 500
#: seconds without a wake-up after which every pending record is read again
RECHECK_SECONDS = 5.0


def expired_result(job_id: str) -> JobResult:
    """What a job whose record is unknown or gone ended as."""
    return JobResult(job_id=job_id, status=JobStatus.expired, error_type="expired",
                     error_message="job is unknown or its record expired")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_records(keys: list[str]) -> Op[list[dict[Any, Any]]]:
    """HGETALL of each key, in one pipeline."""
    def send(client: Any) -> Any:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()

    return Op(send)


class WaitSet:
    """The jobs still awaited, and what channel traffic and records mean for them."""

    def __init__(self, schema: RedisSchema) -> None:
        self.schema = schema
        self.pending: set[str] = set()
        self._prefix = schema.job_channel("")

    def watch(self, job_ids: Iterable[str]) -> list[list[str]]:
        """Remember these jobs as pending; the channels to subscribe, CHUNK per command."""
        ids = [j for j in dict.fromkeys(job_ids) if j not in self.pending]
        self.pending.update(ids)
        return self.channel_chunks(ids)

    def woken(self, messages: Iterable[dict[str, Any]]) -> list[str]:
        """Pending job ids named by pub/sub messages."""
        ids = [_text(m["channel"])[len(self._prefix):] for m in messages]
        return [j for j in ids if j in self.pending]

    def collect_steps(self, job_ids: Iterable[str]) -> Steps[list[JobResult]]:
        """Read the pending ones among ``job_ids``, a pipeline per chunk; the ended results."""
        todo = [j for j in dict.fromkeys(job_ids) if j in self.pending]
        results: list[JobResult] = []
        for i in range(0, len(todo), CHUNK):
            chunk = todo[i:i + CHUNK]
            rows = yield _read_records([self.schema.job(j) for j in chunk])
            results += self.ended(zip(chunk, rows, strict=True))
        return results

    def channel_chunks(self, job_ids: Iterable[str]) -> list[list[str]]:
        """The channels of ``job_ids``, CHUNK per (UN)SUBSCRIBE command."""
        channels = [self.schema.job_channel(j) for j in job_ids]
        return [channels[i:i + CHUNK] for i in range(0, len(channels), CHUNK)]

    def ended(self, rows: Iterable[tuple[str, dict[Any, Any]]]) -> list[JobResult]:
        """Results of the jobs whose record (job id, HGETALL reply) shows an ending; those
        jobs stop being pending. A missing record ends the job as expired."""
        out = []
        for job_id, fields in rows:
            result = parse_result(job_id, fields) or expired_result(job_id)
            if result.status.terminal:
                self.pending.discard(job_id)
                out.append(result)
        return out


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None, pending: set[str], timeout: float | None) -> float:
    """Seconds to wait for the next wake-up; raises JobTimeout (naming a pending job) past the deadline."""
    if deadline is None:
        return RECHECK_SECONDS
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise JobTimeout(sorted(pending)[0], timeout or 0.0)
    return min(remaining, RECHECK_SECONDS)


class JobWaiter:
    """A :class:`WaitSet` over one synchronous pub/sub connection. Use as a context manager.

    ``redis_budget``: seconds of Redis outage ``results`` rides out before BrokerError.
    """

    def __init__(self, client: Any, schema: RedisSchema, *, redis_budget: float = OUTAGE_BUDGET) -> None:
        self.client = client
        self.set = WaitSet(schema)
        self.pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)
        self.redis_budget = redis_budget

    def __enter__(self) -> JobWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the pub/sub connection."""
        self.pubsub.close()

    @property
    def pending(self) -> set[str]:
        """Job ids still awaited."""
        return self.set.pending

    def watch(self, job_ids: Iterable[str]) -> None:
        """Subscribe to these jobs' endings; do it before submitting or reading them."""
        for channels in self.set.watch(job_ids):
            self.pubsub.subscribe(*channels)

    def poll(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for a wake-up; the pending job ids woken (may be [])."""
        messages = []
        msg = self.pubsub.get_message(timeout=timeout)
        while msg is not None:
            messages.append(msg)
            msg = self.pubsub.get_message(timeout=0)
        return self.set.woken(messages)

    def collect(self, job_ids: Iterable[str]) -> list[JobResult]:
        """Read these jobs' records; return (and stop watching) the ones that ended."""
        results = drive(self.client, self.set.collect_steps(job_ids))
        for channels in self.set.channel_chunks(r.job_id for r in results):
            self.pubsub.unsubscribe(*channels)
        return results

    def results(self, job_ids: Iterable[str], timeout: float | None) -> Iterator[JobResult]:
        """Yield each job's result as it ends (any ending); JobTimeout when ``timeout`` passes
        first; BrokerError when Redis is unreachable longer than ``redis_budget`` seconds."""
        ids = list(dict.fromkeys(job_ids))
        deadline = _deadline(timeout)
        self.set.watch(ids)
        woke: list[str] | None = None  # None: subscribe to every pending job, then read them all
        down_since: float | None = None
        pause = 0.05
        while True:
            try:
                if woke is None:
                    self._subscribe_pending(fresh=down_since is not None)
                    woke = sorted(self.pending)
                found = self.collect(woke)
                down_since, pause = None, 0.05
                yield from found
                if not self.pending:
                    return
                woke = self.poll(_remaining(deadline, self.pending, timeout)) or sorted(self.pending)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now + pause - down_since > self.redis_budget:
                    raise BrokerError(f"waiting for {len(self.pending)} job(s): redis unreachable "
                                      f"for {self.redis_budget:g}s ({type(exc).__name__}: {exc})") from exc
                time.sleep(pause)
                pause = min(1.0, pause * 2)
                woke = None
            except redis.RedisError as exc:
                raise BrokerError(f"waiting for jobs: redis error ({type(exc).__name__}: {exc})") from exc

    def _subscribe_pending(self, *, fresh: bool) -> None:
        """Subscribe to every pending job's channel (on a new connection after an outage)."""
        if fresh:
            self.pubsub.close()
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        for channels in self.set.channel_chunks(sorted(self.pending)):
            self.pubsub.subscribe(*channels)


class AsyncJobWaiter:
    """A :class:`WaitSet` over one asyncio pub/sub connection (the twin of :class:`JobWaiter`)."""

    def __init__(self, client: Any, schema: RedisSchema) -> None:
        self.client = client
        self.set = WaitSet(schema)
        self.pubsub: AsyncPubSub = client.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self) -> AsyncJobWaiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Drop the pub/sub connection."""
        await self.pubsub.aclose()

    @property
    def pending(self) -> set[str]:
        """Job ids still awaited."""
        return self.set.pending

    async def watch(self, job_ids: Iterable[str]) -> None:
        """Subscribe to these jobs' endings; do it before submitting or reading them."""
        for channels in self.set.watch(job_ids):
            await self.pubsub.subscribe(*channels)

    async def poll(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for a wake-up; the pending job ids woken (may be [])."""
        messages = []
        msg = await self.pubsub.get_message(timeout=timeout)
        while msg is not None:
            messages.append(msg)
            msg = await self.pubsub.get_message(timeout=0)
        return self.set.woken(messages)

    async def collect(self, job_ids: Iterable[str]) -> list[JobResult]:
        """Read these jobs' records; return (and stop watching) the ones that ended."""
        results = await adrive(self.client, self.set.collect_steps(job_ids))
        for channels in self.set.channel_chunks(r.job_id for r in results):
            await self.pubsub.unsubscribe(*channels)
        return results

    async def results(self, job_ids: Iterable[str], timeout: float | None) -> AsyncIterator[JobResult]:
        """Yield each job's result as it ends (any ending); JobTimeout when ``timeout`` passes first."""
        ids = list(dict.fromkeys(job_ids))
        deadline = _deadline(timeout)
        await self.watch(ids)
        woke = ids
        while True:
            for result in await self.collect(woke):
                yield result
            if not self.pending:
                return
            woke = await self.poll(_remaining(deadline, self.pending, timeout)) or sorted(self.pending)
