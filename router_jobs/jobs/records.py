"""Job records in Redis: ``rj:job:{id}`` hashes written and ended by atomic scripts.

The record holds the job's spec (JSON), status, timestamps (server clock), attempt and
delivery counts and, once it ended, its result (JSON). Records expire after the job TTL.
``finish_job.lua`` ends a job exactly once and publishes on the job's channel, which is what
``await_result`` listens to.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from router_jobs.backend.ops import Op, run
from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.broker.wire import job_message
from router_jobs.errors import BrokerError, JobCancelled, JobExpired, JobFailed
from router_jobs.models import JobResult, JobSpec, JobStatus


class JobScripts(ScriptSet):
    """The Lua scripts in ``jobs/lua/``."""

    submit = lua("submit")
    start_job = lua("start_job")
    finish_job = lua("finish_job")
    park_job = lua("park_job")
    reopen_job = lua("reopen_job")



def new_job_id() -> str:
    """A fresh job id (32 hex chars)."""
    return uuid.uuid4().hex


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_result(job_id: str, fields: dict[Any, Any]) -> JobResult | None:
    """The JobResult of a record's fields: its stored result once ended, else its progress."""
    if not fields:
        return None
    f = {_s(k): _s(v) for k, v in fields.items()}
    if f.get("result"):
        return JobResult.model_validate_json(f["result"])
    spec = json.loads(f["spec"]) if f.get("spec") else {}
    return JobResult(
        job_id=job_id,
        status=JobStatus(f.get("status", "queued")),
        attempts=int(f.get("attempts", 0) or 0),
        queued_at=float(f["queued_at"]) if f.get("queued_at") else None,
        started_at=float(f["started_at"]) if f.get("started_at") else None,
        conversation_id=spec.get("conversation_id"),
        metadata=spec.get("metadata") or {},
    )


def raise_for_result(result: JobResult) -> JobResult:
    """Return a succeeded result; raise the typed error of any other ending."""
    if result.status == JobStatus.succeeded:
        return result
    if result.status == JobStatus.cancelled:
        raise JobCancelled(result.job_id)
    if result.status == JobStatus.expired:
        raise JobExpired(result.job_id, result.error_message)
    raise JobFailed(result.job_id, result.error_type or "error", result.error_message or "", result)


@dataclass(frozen=True)
class StartedJob:
    """What a worker learns when it takes a job up."""

    job_id: str
    status_before: JobStatus
    spec: JobSpec
    queued_at: float
    started_at: float
    now: float
    attempts: int
    excluded: frozenset[str]


class JobStore:
    """Job records on one Redis client (the broker's)."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, ttl_seconds: int = 86400) -> None:
        self.client = client
        self.schema = schema
        self.ttl = ttl_seconds
        self.scripts = JobScripts(client)

    def submit_op(self, spec: JobSpec, *, job_id: str, delay_ms: int = 0,
                  hold: bool = False, joining: str | None = None) -> Op[tuple[str, bool]]:
        """Write the record and enqueue the job atomically; (job id, deduplicated).

        ``hold``: write the record only; the caller puts the job in the key pool's wait line.
        ``joining``: the pool's set of held jobs not yet in line, where the held job is noted
        until it joins (so that a worker can put it in line if its producer dies first)."""
        ks = self.schema
        queue = spec.priority.value
        idem = spec.idempotency_key
        keys = [ks.job(job_id), ks.stream(queue), ks.delayed(queue), ks.idempotency(idem or "-")]
        if hold and joining is not None:
            keys.append(joining)
        args = [job_id, spec.model_dump_json(exclude_none=True), queue, job_message(job_id, queue),
                self.ttl, -1 if hold else max(0, int(delay_ms)), "1" if idem else "0"]

        def parse(reply: Any) -> tuple[str, bool]:
            got_id, existed = reply
            return _s(got_id), bool(int(existed))

        return Op(lambda c: JobScripts.on(c).submit(keys=keys, args=args), parse)

    def submit(self, spec: JobSpec, *, job_id: str, delay_ms: int = 0, hold: bool = False,
               joining: str | None = None) -> tuple[str, bool]:
        """Write the record and enqueue the job atomically; returns (job id, deduplicated).
        ``hold``: the record only (the key pool's wait line admits the job); see ``submit_op``."""
        try:
            return run(self.client, self.submit_op(spec, job_id=job_id, delay_ms=delay_ms, hold=hold,
                                                   joining=joining))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot submit job: {exc}") from exc

    def start(self, job_id: str) -> StartedJob | None:
        """Mark the job running (counting the delivery). None if the record is gone."""
        row = self.scripts.start_job(keys=[self.schema.job(job_id)], args=[])
        if not row:
            return None
        status, spec, queued_at, attempts, now, started_at, excluded = (_s(v) for v in row)
        return StartedJob(
            job_id=job_id,
            status_before=JobStatus(status),
            spec=JobSpec.model_validate_json(spec),
            queued_at=float(queued_at),
            started_at=float(started_at),
            now=float(now),
            attempts=int(attempts or 0),
            excluded=frozenset(x for x in excluded.split(",") if x),
        )

    def park(self, job_id: str, *, attempts: int, excluded: frozenset[str]) -> bool:
        """Put a running job back to queued (it waits in the delay set)."""
        return bool(self.scripts.park_job(
            keys=[self.schema.job(job_id)], args=[",".join(sorted(excluded)), attempts]
        ))

    def reopen(self, job_id: str) -> int:
        """Reopen a job that ended because its message was dead-lettered (for a replay).

        Returns 1 when it is open now, 0 when it ended some other way (left alone), -1 when
        its record is gone.
        """
        return int(self.scripts.reopen_job(keys=[self.schema.job(job_id)], args=[]))

    def begin_attempt(self, job_id: str, attempts: int) -> None:
        """Record that call number ``attempts`` is about to start.

        A delivery that dies during or after the call is taken up again with a new
        reservation id, never the one already used (which the pool may have settled).
        """
        self.client.hset(self.schema.job(job_id), "attempts", attempts)

    def finish_op(self, result: JobResult, *, queue: str, only_if_queued: bool = False) -> Op[int]:
        """End the job with ``result`` exactly once (1), or not (0 ended already, -1 gone)."""
        ks = self.schema
        minute = int(time.time() // 60)
        keys = [ks.job(result.job_id), f"{ks.completions(queue)}:{minute}"]
        args = [result.status.value, result.model_dump_json(), self.ttl, ks.job_channel(result.job_id),
                "1" if only_if_queued else "0"]
        return Op(lambda c: JobScripts.on(c).finish_job(keys=keys, args=args), int)

    def finish(self, result: JobResult, *, queue: str, only_if_queued: bool = False) -> int:
        """End the job with ``result`` exactly once (1), or not (0 ended already, -1 gone)."""
        return run(self.client, self.finish_op(result, queue=queue, only_if_queued=only_if_queued))

    def get_op(self, job_id: str) -> Op[JobResult | None]:
        """The job's result if it ended, its progress if not, None if unknown or expired."""
        return Op(lambda c: c.hgetall(self.schema.job(job_id)), lambda fields: parse_result(job_id, fields))

    def get(self, job_id: str) -> JobResult | None:
        """The job's result if it ended, its progress if not, None if unknown or expired."""
        return run(self.client, self.get_op(job_id))

    def spec_op(self, job_id: str) -> Op[JobSpec | None]:
        """The job's spec, None if unknown or expired."""
        return Op(lambda c: c.hget(self.schema.job(job_id), "spec"),
                  lambda raw: JobSpec.model_validate_json(raw) if raw else None)

    def spec(self, job_id: str) -> JobSpec | None:
        """The job's spec, None if unknown or expired."""
        return run(self.client, self.spec_op(job_id))
