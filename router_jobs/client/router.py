"""The producer side: :class:`Router` submits jobs and awaits their results.

``submit`` validates the job (a malformed job is refused with a typed error naming the field,
and nothing is enqueued), then writes the record and enqueues it in one atomic step.
``await_result`` subscribes to the job's channel before it looks at the record, so it wakes
within milliseconds of completion and can never miss it; ``as_completed`` does the same for
thousands of jobs over one connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from pydantic import ValidationError

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import KeysFile
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.scheduler import Demand, Position, Scheduler
from router_jobs.conversations.store import ConversationStore, check_conv_id
from router_jobs.errors import JobExpired, JobTimeout, JobValidationError, SubmitRateLimited
from router_jobs.jobs.records import JobStore, job_message, new_job_id, parse_result, raise_for_result
from router_jobs.models import JobHandle, JobResult, JobSpec, JobStatus
from router_jobs.observability.metrics import record_submitted
from router_jobs.seed import SeedCompat
from router_jobs.settings import Settings
from router_jobs.tokens import estimate_tokens

JobRef = JobHandle | str

#: channels subscribed per SUBSCRIBE command in as_completed
_SUBSCRIBE_CHUNK = 500


def job_id_of(job: JobRef) -> str:
    """The job id of a handle or of an id string."""
    return job.job_id if isinstance(job, JobHandle) else str(job)


def validate_spec(fields: dict[str, Any], settings: Settings, served: set[str] | None) -> JobSpec:
    """Build and check a JobSpec; raise :class:`JobValidationError` naming the field."""
    try:
        spec = JobSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "job"
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if ": " in msg and loc == "job":
            loc, msg = msg.split(": ", 1)
        raise JobValidationError(loc, msg) from None
    if served is not None:
        for field_name, model in [("model", spec.model)] + [("fallback_models", m) for m in spec.fallback_models]:
            if model not in served:
                known = ", ".join(sorted(served)) or "none"
                raise JobValidationError(field_name, f"no active key serves model {model!r} (served: {known})")
    size = len(spec.model_dump_json())
    if size > settings.max_payload_bytes:
        raise JobValidationError(
            "prompt", f"job is {size} bytes, over the {settings.max_payload_bytes}-byte limit"
        )
    if spec.deadline is not None and spec.deadline <= time.time():
        raise JobValidationError("deadline", "is already in the past")
    return spec


class Router(SeedCompat):
    """Submit LLM jobs and collect their results. Build it explicitly or with ``from_env()``.

    Parameters:
      settings: the configuration.
      client: a redis-py client; by default one is made for ``settings`` (embedded Redis when
        ``REDIS_URL`` is unset).
      keys: a key configuration to load into the pool's registry in Redis; by default the
        keys file (``settings.keys_file``) is applied when its content changed since it was
        last applied (see ``RedisKeyPool.sync_file``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        keys: KeysFile | None = None,
    ) -> None:
        self.settings = settings
        self.url = resolve_redis_url(settings) if client is None else None
        self.client = client if client is not None else connect(self.url or "")
        self.schema = RedisSchema(settings.namespace)
        self.jobs = JobStore(self.client, self.schema, settings.job_ttl_seconds)
        self.conversations = ConversationStore.from_settings(self.client, settings)
        self.limiter = UserLimiter(self.client, self.schema, settings)
        self.budgets = Budgets(self.client, self.schema)
        self.pool = RedisKeyPool(self.client, self.schema, margin_ms=settings.pool_margin_ms,
                                 late_ms=settings.pool_late_ms)
        if keys is not None:
            self.pool.load(keys)
        else:
            self.pool.sync_file(settings.keys_file)
        self.scheduler = Scheduler(self.pool, interactive_share=settings.interactive_share,
                                   interactive_hold_ms=int(settings.interactive_hold_s * 1000))

    @classmethod
    def from_env(cls, **overrides: Any) -> Router:
        """A Router configured from the environment (``REDIS_URL``, ``ROUTER_KEYS_FILE`` …)."""
        return cls(Settings.from_env(**overrides))

    def close(self) -> None:
        """Release the Redis connections."""
        self.client.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting --------------------------------------------------------------------------
    def served_models(self) -> set[str]:
        """Models some active key of the pool serves (from the registry in Redis)."""
        return self.pool.models()

    def submit(self, prompt: str | None = None, *, model: str, delay: float = 0.0,
               on_rate_limit: str = "raise", **fields: Any) -> JobHandle:
        """Validate and enqueue one job; returns its handle at once.

        ``fields`` are those of :class:`~router_jobs.models.JobSpec` (messages, system_prompt,
        max_output_tokens, temperature, priority, deadline, idempotency_key, conversation_id,
        user_id, metadata, …). ``delay`` holds the job back that many seconds.

        A job with a ``user_id`` passes that user's token bucket and the global one, and the
        user's daily budget: over a limit, ``on_rate_limit="raise"`` raises SubmitRateLimited
        (with ``retry_after``), ``"delay"`` enqueues it to run once the buckets allow.
        Raises JobValidationError (nothing enqueued) for a malformed job, BudgetExceeded when
        a cap is reached.
        """
        if on_rate_limit not in ("raise", "delay"):
            raise JobValidationError("on_rate_limit", "must be 'raise' or 'delay'")
        try:
            spec = validate_spec({"prompt": prompt, "model": model, **fields}, self.settings, self.served_models())
        except JobValidationError:
            record_submitted(str(fields.get("priority", "interactive")), "refused", "rejected")
            raise
        if spec.conversation_id is not None:
            check_conv_id(spec.conversation_id)
        if spec.user_id is not None:
            self.budgets.check(spec.user_id)
            wait = self.limiter.acquire(spec.user_id)
            if wait > 0:
                if on_rate_limit == "raise" or wait == float("inf"):
                    scope = self.limiter.decide(spec.user_id, take=False).scope or "user"
                    record_submitted(spec.priority.value, spec.model, "rate_limited")
                    raise SubmitRateLimited(scope, wait)
                delay = max(delay, wait)
        return self.submit_spec(spec, delay=delay)

    def submit_spec(self, spec: JobSpec, *, delay: float = 0.0, job_id: str | None = None) -> JobHandle:
        """Enqueue an already validated spec (same idempotency rules as ``submit``).

        A conversation turn draws its turn number here: turns run in submission order.
        """
        if spec.conversation_id is not None and spec.turn_seq is None:
            if not self.conversations.exists(spec.conversation_id):
                self.conversations.create(spec.conversation_id, system_prompt=spec.system_prompt)
            spec = spec.model_copy(update={"turn_seq": self.conversations.next_turn_seq(spec.conversation_id)})
        # a job that needs nothing but room goes straight into the pool's line (admitted now
        # if a key has room): it is delivered once, when it can run. Conversation turns and
        # delayed jobs go through a worker first (turn order, history size, the delay).
        in_line = spec.conversation_id is None and delay <= 0
        job_id, existed = self.jobs.submit(spec, job_id=job_id or new_job_id(), delay_ms=int(delay * 1000),
                                           hold=in_line)
        if in_line and not existed:
            queue = spec.priority.value
            tokens = estimate_tokens(spec.chat_messages(), spec.model)
            self.scheduler.enqueue([Demand.for_spec(job_id, queue, spec, tokens, job_message(job_id, queue))])
        record_submitted(spec.priority.value, spec.model, "deduplicated" if existed else "accepted")
        if existed and spec.conversation_id is not None and spec.turn_seq is not None:
            self.conversations.finish_turn(spec.conversation_id, spec.turn_seq)  # the drawn turn is unused
        return JobHandle(job_id=job_id, queue=spec.priority, deduplicated=existed)

    # -- looking up --------------------------------------------------------------------------
    def status(self, job: JobRef) -> JobResult | None:
        """The job's current state (its result once it ended); None if unknown or expired."""
        return self.jobs.get(job_id_of(job))

    def position(self, job: JobRef) -> Position | None:
        """A waiting job's place in its model's line (0: next) and estimated start time (epoch
        seconds); None when it is not waiting in line (admitted, running, ended, unknown)."""
        return self.scheduler.position(job_id_of(job))

    def cancel(self, job: JobRef) -> bool:
        """Cancel a job that has not started (or is waiting for room). True if cancelled."""
        job_id = job_id_of(job)
        current = self.jobs.get(job_id)
        if current is None or current.status != JobStatus.queued:
            return False
        spec = self.jobs.spec(job_id)
        queue = spec.priority.value if spec else "interactive"
        result = JobResult(job_id=job_id, status=JobStatus.cancelled, queued_at=current.queued_at,
                           finished_at=time.time(), error_type="cancelled", error_message="cancelled by request",
                           attempts=current.attempts, conversation_id=spec.conversation_id if spec else None)
        cancelled = self.jobs.finish(result, queue=queue, only_if_queued=True) == 1
        if cancelled:  # out of the pool's line; an admission not yet claimed gives its room back
            self.scheduler.remove([job_id])
        if cancelled and spec is not None and spec.conversation_id is not None and spec.turn_seq is not None:
            self.conversations.finish_turn(spec.conversation_id, spec.turn_seq)
        return cancelled

    # -- awaiting ----------------------------------------------------------------------------
    def await_result(self, job: JobRef, timeout: float | None = 60.0, *, raise_on_error: bool = True) -> JobResult:
        """Block until the job ends; return its result.

        Raises JobFailed, JobCancelled or JobExpired for those endings (unless
        ``raise_on_error`` is False: then the result is returned as it is), and JobTimeout
        when ``timeout`` seconds pass first.
        """
        job_id = job_id_of(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.schema.job_channel(job_id))
            while True:
                result = self.jobs.get(job_id)
                if result is None:
                    raise JobExpired(job_id, f"job {job_id} is unknown or its record expired")
                if result.status.terminal:
                    return raise_for_result(result) if raise_on_error else result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(job_id, timeout or 0.0)
                pubsub.get_message(timeout=min(remaining, 5.0) if remaining is not None else 5.0)
        finally:
            pubsub.close()

    def result(self, job: JobRef) -> JobResult | None:
        """The result if the job ended, else None (never blocks)."""
        current = self.jobs.get(job_id_of(job))
        return current if current is not None and current.status.terminal else None

    def as_completed(self, jobs: Iterable[JobRef], timeout: float | None = None) -> Iterator[JobResult]:
        """Yield each job's result as it ends (any ending; check ``result.status``).

        One pub/sub connection serves any number of jobs. Raises JobTimeout (naming one of
        the unfinished jobs) when ``timeout`` seconds pass before all ended; an unknown or
        expired job is yielded as an ``expired`` result.
        """
        pending = {job_id_of(j) for j in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        prefix = self.schema.job_channel("")
        try:
            ids = sorted(pending)
            for i in range(0, len(ids), _SUBSCRIBE_CHUNK):
                pubsub.subscribe(*[self.schema.job_channel(j) for j in ids[i:i + _SUBSCRIBE_CHUNK]])
            yield from self._collect(sorted(pending), pending)
            while pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(next(iter(pending)), timeout or 0.0)
                msg = pubsub.get_message(timeout=min(remaining, 5.0) if remaining is not None else 5.0)
                woke: list[str] = []
                while msg is not None:
                    channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                    woke.append(channel[len(prefix):])
                    msg = pubsub.get_message(timeout=0)
                # every few seconds without news, re-check all (a record may have expired)
                yield from self._collect(woke or sorted(pending), pending)
        finally:
            pubsub.close()

    def _collect(self, ids: list[str], pending: set[str]) -> Iterator[JobResult]:
        ids = [j for j in ids if j in pending]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            pipe = self.client.pipeline(transaction=False)
            for j in chunk:
                pipe.hgetall(self.schema.job(j))
            for j, fields in zip(chunk, pipe.execute(), strict=True):
                result = parse_result(j, fields)
                if result is None:
                    result = JobResult(job_id=j, status=JobStatus.expired, error_type="expired",
                                       error_message="job is unknown or its record expired")
                if result.status.terminal:
                    pending.discard(j)
                    yield result
