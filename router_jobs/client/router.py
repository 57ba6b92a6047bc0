"""The producer side: :class:`Router` submits jobs and awaits their results.

``submit`` validates the job (a malformed job is refused with a typed error naming the field,
and nothing is enqueued), then writes the record and enqueues it in one atomic step.
``await_result`` subscribes to the job's channel before it looks at the record, so it wakes
within milliseconds of completion and can never miss it; ``as_completed`` does the same for
thousands of jobs over one connection.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.connection import OUTAGE_BUDGET, connect, redis_call, resolve_redis_url
from router_jobs.backend.ops import Steps, drive
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import KeysFile, load_keys
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.scheduler import Position, Scheduler
from router_jobs.client import rules, seedcalls
from router_jobs.client.waiting import JobWaiter
from router_jobs.conversations.store import ConversationStore
from router_jobs.errors import JobValidationError
from router_jobs.jobs.records import JobStore, raise_for_result
from router_jobs.models import JobHandle, JobResult, JobSpec
from router_jobs.providers.capabilities import check_spec
from router_jobs.settings import Settings
from router_jobs.streaming.events import StreamEvent
from router_jobs.streaming.log import EventLog
from router_jobs.streaming.read import iter_events
from router_jobs.tokens import warm_up_in_background

JobRef = JobHandle | str


def job_id_of(job: JobRef) -> str:
    """The job id of a handle or of an id string."""
    return job.job_id if isinstance(job, JobHandle) else str(job)


def check_delay(delay: Any, settings: Settings) -> float:
    """``delay`` as seconds, or :class:`JobValidationError`: it must be a finite number from 0 up
    to the job record's lifetime (a job held back longer would expire before it could run)."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise JobValidationError("delay", f"must be a number of seconds, not {type(delay).__name__}")
    if not math.isfinite(delay) or delay < 0:
        raise JobValidationError("delay", "must be a finite number of seconds, at least 0")
    if delay > settings.job_ttl_seconds:
        raise JobValidationError(
            "delay", f"is over the job record lifetime of {settings.job_ttl_seconds}s (ROUTER_JOB_TTL_SECONDS)"
        )
    return float(delay)


_PART_TAGS = {"text", "image", "provider"}
_TYPE_NAMES = {"str", "int", "float", "bool", "none"}
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_FIELD_HINT = re.compile(r"^([a-z_][a-z0-9_.]*): (.+)$", re.S)


def _error_field(exc: ValidationError) -> tuple[str, str]:
    """The field path (``messages[1].content[0].url``) and reason of a pydantic error.

    Of a union's errors (content is text or parts) the deepest is the telling one.
    """
    err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    loc = ""
    parts = list(err.get("loc", ()))
    for i, p in enumerate(parts):
        if isinstance(p, int):
            loc += f"[{p}]"
        elif i > 0 and isinstance(parts[i - 1], int) and p in _PART_TAGS:
            continue  # the discriminator's tag of a content part, not a field
        elif _FIELD.fullmatch(p) and p not in _TYPE_NAMES:  # else a union branch's type name
            loc += ("." if loc else "") + p
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    hint = _FIELD_HINT.match(msg)
    if hint is not None:  # a model-level check names its field first: "tool_choice: needs tools"
        loc = f"{loc}.{hint.group(1)}" if loc else hint.group(1)
        msg = hint.group(2)
    return loc or "job", msg


def validate_spec(fields: dict[str, Any], settings: Settings,
                  served: set[str] | Mapping[str, Iterable[str]] | None) -> JobSpec:
    """Build and check a JobSpec; raise :class:`JobValidationError` naming the field.

    ``served`` is the set of models the pool serves, or (better) a mapping from each served
    model to its providers (``Router.served_providers()``): then every feature the job asks
    for is checked against every provider that could run it
    (:mod:`router_jobs.providers.capabilities`).
    """
    try:
        spec = JobSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        loc, msg = _error_field(exc)
        raise JobValidationError(loc, msg) from None
    if served is not None:
        for field_name, model in [("model", spec.model)] + [("fallback_models", m) for m in spec.fallback_models]:
            if model not in served:
                known = ", ".join(sorted(served)) or "none"
                raise JobValidationError(field_name, f"no active key serves model {model!r} (served: {known})")
        if isinstance(served, Mapping):
            check_spec(spec, served)
    try:
        size = len(spec.model_dump_json())
    except PydanticSerializationError:  # text no field check caught (a tool's description ...)
        raise JobValidationError("job", "holds text that is not valid Unicode (a lone surrogate)") from None
    if size > settings.max_payload_bytes:
        raise JobValidationError(
            "prompt" if spec.messages is None else "messages",
            f"job is {size} bytes, over the {settings.max_payload_bytes}-byte limit",
        )
    if spec.deadline is not None and spec.deadline <= time.time():
        raise JobValidationError("deadline", "is already in the past")
    return spec


class Router:
    """Submit LLM jobs and collect their results. Build it explicitly or with ``from_env()``.

    Parameters:
      settings: the configuration.
      client: a redis-py client; by default one is made for ``settings`` (embedded Redis when
        ``REDIS_URL`` is unset).
      keys: a key configuration to write into the pool's registry in Redis (replacing it).
        By default a Router never writes the registry: workers seed an empty one from their
        keys file, and operators change it (``routerctl keys apply``). Until some worker has
        seeded it, jobs are checked against the models of ``settings.keys_file``.
      redis_budget: seconds the constructor and ``await_result`` keep retrying while Redis is
        unreachable (a restart, a failover) before they raise :class:`BrokerError`; 0 fails
        at the first error.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        keys: KeysFile | None = None,
        redis_budget: float = OUTAGE_BUDGET,
    ) -> None:
        self.settings = settings
        self.redis_budget = redis_budget
        self.url = resolve_redis_url(settings) if client is None else None
        self.client = client if client is not None else connect(self.url or "")
        self.schema = RedisSchema(settings.namespace)
        self.jobs = JobStore(self.client, self.schema, settings.job_ttl_seconds)
        self.conversations = ConversationStore.from_settings(self.client, settings)
        self.limiter = UserLimiter(self.client, self.schema, settings)
        self.budgets = Budgets(self.client, self.schema)
        self.events = EventLog(self.client, self.schema, ttl_seconds=settings.stream_ttl_seconds,
                               maxlen=settings.stream_maxlen)
        self.pool = RedisKeyPool(self.client, self.schema, margin_ms=settings.pool_margin_ms,
                                 late_ms=settings.pool_late_ms)
        if keys is not None:
            redis_call("loading the key pool", lambda: self.pool.load(keys), budget=redis_budget)
        else:  # read, never write: and a Redis that stays down is reported here, not at submit
            redis_call("reading the key registry", lambda: self.pool.registry.current(force=True),
                       budget=redis_budget)
        self._file_models: tuple[float, dict[str, set[str]]] | None = None
        self.scheduler = Scheduler.from_settings(self.pool, settings)
        warm_up_in_background()  # every submit estimates the job's tokens

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
        """Models some active key of the pool serves: from the registry in Redis, or, while
        it was never written (no worker started yet), from the keys file (read only)."""
        return drive(self.client, self.served_models_steps())

    def served_models_steps(self) -> Steps[set[str]]:
        """:meth:`served_models` as a rule (for the asyncio client too)."""
        models = yield from self.pool.models_steps()
        if models or self.pool.registry.version > 0:
            return models
        return self._keys_file_models()

    def _keys_file_providers(self) -> dict[str, set[str]]:
        """Model -> providers of the active keys of ``settings.keys_file`` (read, never applied)."""
        path = self.settings.keys_file
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if self._file_models is None or self._file_models[0] != mtime:
            out: dict[str, set[str]] = {}
            for k in load_keys(path).active_keys():
                for m in k.served_models():
                    out.setdefault(m, set()).add(k.provider)
            self._file_models = (mtime, out)
        return self._file_models[1]

    def _keys_file_models(self) -> set[str]:
        return set(self._keys_file_providers())

    def served_providers(self) -> dict[str, set[str]]:
        """Each served model with the providers of the active keys that serve it (from the
        keys file while the registry was never written, as :meth:`served_models`)."""
        return drive(self.client, self.served_providers_steps())

    def served_providers_steps(self) -> Steps[dict[str, set[str]]]:
        """:meth:`served_providers` as a rule (for the asyncio client too)."""
        providers = yield from self.pool.providers_steps()
        if providers or self.pool.registry.version > 0:
            return providers
        return self._keys_file_providers()

    def submit(self, prompt: str | None = None, *, model: str, delay: float = 0.0,
               on_rate_limit: str = "raise", **fields: Any) -> JobHandle:
        """Validate and enqueue one job; returns its handle at once.

        ``fields`` are those of :class:`~router_jobs.models.JobSpec` (messages, system_prompt,
        max_output_tokens, temperature, priority, deadline, idempotency_key, conversation_id,
        user_id, metadata, stream, …). ``delay`` holds the job back that many seconds.
        With ``stream=True`` the worker streams the answer: read it with :meth:`stream`.

        A job with a ``user_id`` passes that user's token bucket and the global one, and the
        user's daily budget: over a limit, ``on_rate_limit="raise"`` raises SubmitRateLimited
        (with ``retry_after``), ``"delay"`` enqueues it to run once the buckets allow.
        Raises JobValidationError (nothing enqueued) for a malformed job, BudgetExceeded when
        a cap is reached.
        """
        steps = rules.submit_steps(self, {"prompt": prompt, "model": model, **fields}, delay=delay,
                                   on_rate_limit=on_rate_limit)
        return drive(self.client, steps)

    def submit_spec(self, spec: JobSpec, *, delay: float = 0.0, job_id: str | None = None) -> JobHandle:
        """Enqueue an already validated spec (same idempotency rules as ``submit``).

        A conversation turn draws its turn number here: turns run in submission order.
        """
        return drive(self.client, rules.submit_spec_steps(self, spec, delay=delay, job_id=job_id))

    # -- streaming ---------------------------------------------------------------------------
    def stream(self, job: JobRef, *, offset: str | None = None, timeout: float | None = None,
               poll: float = 1.0) -> Iterator[StreamEvent]:
        """Yield the job's events (see :mod:`router_jobs.streaming.events`) until ``done``/``error``.

        ``offset`` is the ``id`` of the last event already seen: reading resumes after it (a
        consumer that dropped reconnects without loss or repeats); None reads from the start.
        A job that ended without its last event (cancelled, submitted without ``stream=True``)
        still ends the reading, from its result. Raises JobExpired for an unknown job,
        JobTimeout after ``timeout`` seconds, StreamTruncated if events were lost.
        """
        return iter_events(self.client, self.schema, self.jobs.get, job_id_of(job), offset=offset,
                           timeout=timeout, poll=poll, clock=time.monotonic)

    # -- looking up --------------------------------------------------------------------------
    def status(self, job: JobRef) -> JobResult | None:
        """The job's current state (its result once it ended); None if unknown or expired."""
        return self.jobs.get(job_id_of(job))

    def position(self, job: JobRef) -> Position | None:
        """A waiting job's place in its model's line (0: next) and estimated start time (epoch
        seconds); None when it is not waiting in line (admitted, running, ended, unknown)."""
        return self.scheduler.position(job_id_of(job))

    def announce_interactive(self, ttl: float = 30.0) -> None:
        """Say that this client serves interactive work for the next ``ttl`` seconds (renew it
        while serving; 0 withdraws): under ``ROUTER_INTERACTIVE_RESERVE=auto`` the least
        interactive share is held before the first interactive job arrives (the gateway does
        this by itself)."""
        self.scheduler.announce_interactive(ttl)

    def cancel(self, job: JobRef) -> bool:
        """Cancel a job that has not started (or is waiting for room). True if cancelled."""
        return drive(self.client, rules.cancel_steps(self, job_id_of(job)))

    # -- the seed system's calls (dict results, never raise) ---------------------------------
    def send_one_shot(self, prompt: str, model_preference: str | None = None, system_prompt: str | None = None,
                      expected_completion_tokens: int = 512, max_output_tokens: int = 2048,
                      temperature: float = 0.7, **fields: Any) -> dict[str, Any]:
        """One prompt, one answer, as the seed's dict; waits for room instead of failing.

        ``expected_completion_tokens`` is accepted for compatibility: the reservation uses
        ``max_output_tokens`` and is settled to the real usage afterwards.
        """
        return seedcalls.send(self, prompt=prompt, model=model_preference or seedcalls.default_model(self),
                              system_prompt=system_prompt, max_output_tokens=max_output_tokens,
                              temperature=temperature, **fields)

    def send_chat(self, conv_id: str, prompt: str, user_id: str | None = None,
                  model_preference: str | None = None, expected_completion_tokens: int = 512,
                  max_output_tokens: int = 2048, temperature: float = 0.7, system_prompt: str | None = None,
                  metadata: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """One turn of a conversation, as the seed's dict: the history is sent along and the
        turn is appended (only when it succeeds), whichever key or provider serves it."""
        return seedcalls.send(self, prompt=prompt, model=model_preference or seedcalls.default_model(self),
                              conversation_id=conv_id, user_id=user_id, system_prompt=system_prompt,
                              max_output_tokens=max_output_tokens, temperature=temperature,
                              metadata=metadata or {}, **fields)

    def health_check(self) -> dict[str, Any]:
        """The seed's health shape: ``healthy`` plus redis, keys, conversations and workers."""
        return seedcalls.health_check(self)

    def truncate_conversation(self, conv_id: str, keep_last_n: int = 20) -> int:
        """Keep only the last ``keep_last_n`` messages of a conversation."""
        return self.conversations.truncate(conv_id, keep_last_n)

    # -- awaiting ----------------------------------------------------------------------------
    def await_result(self, job: JobRef, timeout: float | None = 60.0, *, raise_on_error: bool = True) -> JobResult:
        """Block until the job ends; return its result.

        Raises JobFailed, JobCancelled or JobExpired (also for an unknown job) for those
        endings, unless ``raise_on_error`` is False: then the result is returned as it is.
        Raises JobTimeout when ``timeout`` seconds pass first, and BrokerError when Redis stays
        unreachable longer than ``redis_budget`` seconds (shorter outages are ridden out).
        """
        with JobWaiter(self.client, self.schema, redis_budget=self.redis_budget) as waiter:
            for result in waiter.results([job_id_of(job)], timeout):
                return raise_for_result(result) if raise_on_error else result
        raise AssertionError("unreachable: results() yields the job's ending or raises")

    def result(self, job: JobRef) -> JobResult | None:
        """The result if the job ended, else None (never blocks)."""
        current = self.jobs.get(job_id_of(job))
        return current if current is not None and current.status.terminal else None

    def as_completed(self, jobs: Iterable[JobRef], timeout: float | None = None) -> Iterator[JobResult]:
        """Yield each job's result as it ends (any ending; check ``result.status``).

        One pub/sub connection serves any number of jobs. Raises JobTimeout (naming one of
        the unfinished jobs) when ``timeout`` seconds pass before all ended; an unknown or
        expired job is yielded as an ``expired`` result. Redis outages: as for ``await_result``.
        """
        with JobWaiter(self.client, self.schema, redis_budget=self.redis_budget) as waiter:
            yield from waiter.results([job_id_of(j) for j in jobs], timeout)
