"""What a worker does with one delivery of a job, independent of Dramatiq.

1. take the job up (``start_job.lua``): skip it if it already ended (duplicate delivery) or was
   cancelled, expire it if its deadline passed;
2. claim the room the pool's scheduler admitted the job with (``scheduler.claim``: stamped
   again now); a job that was not admitted (a conversation turn, a retry) or whose room is
   gone waits in the pool's line and is delivered again when admitted — or fails when no key
   could ever serve it. Without a scheduler, ``pool.reserve`` and a delayed redelivery;
3. read the key's secret (it lives only in this process's memory), call the provider;
4. settle the reservation with real usage, report the outcome to the key's health;
5. end the job with its result, exactly once; or, for a retryable error, send it back:
   rate limits and key faults at once (the pool steers to another key), transient errors
   after a bounded, jittered backoff; after ``max_attempts`` calls the job fails. A provider
   429 is not the request's fault: it cools the key for its retry hint and puts the job back
   at the head of its line without counting an attempt.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import redis

from router_jobs import errors
from router_jobs.admission.budgets import Budgets
from router_jobs.capacity.config import Cost
from router_jobs.capacity.pool import Grant, KeyPool, ReserveRequest, Wait
from router_jobs.capacity.scheduler import Demand, Lost, Refused, Scheduler
from router_jobs.conversations.turns import ChatTurns
from router_jobs.jobs.records import JobStore, StartedJob, job_message
from router_jobs.models import ChatMessage, JobResult, JobSpec, JobStatus, Usage
from router_jobs.providers import sentclock
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials, ProviderAdapter
from router_jobs.secrets.stores import secret_fingerprint as _fingerprint
from router_jobs.streaming.live import LiveAttempt, ending_event, waiting_event
from router_jobs.streaming.log import EventLog
from router_jobs.tokens import estimate_extra_tokens
from router_jobs.worker.endings import ERROR_TYPES

#: error types of the endings a burial (dead-lettering) writes
BURIAL_ERROR_TYPES = frozenset(ERROR_TYPES.values())

log = logging.getLogger("router_jobs.worker")

#: Longest backoff between attempts after transient errors, in seconds.
MAX_BACKOFF = 30.0
#: How often a worker process checks whether invalid keys got a new secret, in seconds.
REVALIDATE_EVERY = 30.0


class SecretSource(Protocol):
    """Where API key values come from (see router_jobs.secrets.stores)."""

    def get(self, key_id: str) -> str: ...

    def fingerprint(self, key_id: str) -> str: ...


class Observer(Protocol):
    """Receives what happened to jobs (metrics hook). Every method must be cheap."""

    def job_finished(self, spec: JobSpec, result: JobResult) -> None: ...

    def job_deferred(self, spec: JobSpec, delay_ms: int, reason: str) -> None: ...

    def provider_call(self, grant: Grant, seconds: float, error: errors.ProviderError | None,
                      usage: Usage | None) -> None: ...


class NullObserver:
    """An observer that ignores everything."""

    def job_finished(self, spec: JobSpec, result: JobResult) -> None:
        return None

    def job_deferred(self, spec: JobSpec, delay_ms: int, reason: str) -> None:
        return None

    def provider_call(self, grant: Grant, seconds: float, error: errors.ProviderError | None,
                      usage: Usage | None) -> None:
        return None


def backoff_ms(attempts: int) -> int:
    """Jittered exponential backoff after ``attempts`` failed calls (0.5 s, 1 s, 2 s … 30 s)."""
    base = min(MAX_BACKOFF, 0.5 * 2 ** max(0, attempts - 1))
    return int(base * random.uniform(0.8, 1.2) * 1000)


def _sent_ago_ms() -> int | None:
    """How long ago this thread's last provider request left (None: not known)."""
    sent = sentclock.sent_at()
    return None if sent is None else max(0, int((time.monotonic() - sent) * 1000))


@dataclass
class Executor:
    """Runs job deliveries. One per worker process; thread-safe (holds no per-job state)."""

    jobs: JobStore
    pool: KeyPool
    secrets: SecretSource
    adapter_for: Callable[[str], ProviderAdapter]
    estimate_tokens: Callable[[list[ChatMessage], str], int]
    max_attempts: int = 6
    observer: Observer = field(default_factory=NullObserver)
    chat: ChatTurns | None = None
    budgets: Budgets | None = None
    key_cost: Callable[[str], Cost | None] | None = None
    scheduler: Scheduler | None = None
    events: EventLog | None = None  # where jobs submitted with stream=True stream their answer
    _next_revalidate: float = 0.0

    def revalidate_keys(self) -> list[str]:
        """Put back in rotation invalid keys whose secret has changed (at most every 30 s)."""
        now = time.monotonic()
        if now < self._next_revalidate:
            return []
        self._next_revalidate = now + REVALIDATE_EVERY
        prints: dict[str, str] = {}
        for key_id in self.pool.key_ids():
            try:
                prints[key_id] = self.secrets.fingerprint(key_id)
            except errors.SecretStoreError:
                continue  # no secret now: the key stays as it is
        restored = self.pool.revalidate(prints)
        for key_id in restored:
            log.info("key %s has a new secret: back in rotation", key_id)
        return restored

    def run(self, job_id: str, queue: str, defer: Callable[[int], None]) -> str:
        """Handle one delivery of ``job_id``. ``defer(ms)`` sends this delivery back for later.

        Returns what happened: ``skipped``, ``deferred``, or the job's final status.
        """
        self.revalidate_keys()
        job = self.jobs.start(job_id)
        if job is None:
            log.warning("job %s: record is gone (expired); dropping the message", job_id)
            return "skipped"
        if job.status_before.terminal:
            self._drop_admission(job_id)
            return "skipped"
        spec = job.spec
        if spec.deadline is not None and job.now > spec.deadline:
            self._drop_admission(job_id)
            return self._end(job, queue, JobStatus.expired, "expired", "deadline passed before the job could run")

        if self.chat is not None and spec.conversation_id is not None:
            ahead = self.chat.gate(spec)
            if ahead < 0:
                return self._end(job, queue, JobStatus.failed, "turn_skipped",
                                 "an earlier turn of the conversation stalled past the stall timeout")
            if ahead > 0:  # earlier turns still open: come back soon, holding no thread
                self.jobs.park(job.job_id, attempts=job.attempts, excluded=job.excluded)
                defer(min(1000, 25 * ahead))
                return "deferred"
            messages = self.chat.messages(spec)
        else:
            messages = spec.chat_messages()
        input_tokens = self.estimate_tokens(messages, spec.model) + estimate_extra_tokens(
            spec.tools, spec.output_format(), spec.model)
        if self.scheduler is not None:
            claimed = self.scheduler.claim(job_id)
            if isinstance(claimed, Grant):
                return self._call(job, queue, claimed, messages, defer,
                                  not_before=time.monotonic() + claimed.delay_s)
            if isinstance(claimed, Refused):
                return self._end(job, queue, JobStatus.failed, "no_capacity", claimed.reason)
            return self._wait_in_line(job, queue, input_tokens, job.attempts, job.excluded,
                                      head=isinstance(claimed, Lost),
                                      reason=claimed.reason if isinstance(claimed, Lost) else "no room: waiting in line")
        waited = job.now - job.queued_at
        use_fallbacks = spec.max_wait is None or waited >= spec.max_wait
        models = spec.models() if use_fallbacks else [spec.model]
        request = ReserveRequest(
            reservation_id=f"{job_id}:{job.attempts}",
            models=models,
            input_tokens=input_tokens,
            max_output_tokens=spec.max_output_tokens,
            objective=spec.objective,
            exclude_keys=job.excluded,
        )
        decision = self.pool.reserve(request)
        max_wait_left = (spec.max_wait or 0) - waited
        if (isinstance(decision, Wait) and not use_fallbacks and len(spec.models()) > 1
                and (not decision.retryable or decision.wait_ms > max_wait_left * 1000)):
            # the preferred model has no room within max_wait (or none ever): go to fallbacks
            self.pool.release(request.reservation_id)
            request = replace(request, models=spec.models())
            decision = self.pool.reserve(request)
        if isinstance(decision, Wait):
            return self._wait(job, queue, decision, defer, request.reservation_id, max_wait_left)
        return self._call(job, queue, decision, messages, defer)

    def has_ended(self, job_id: str) -> bool:
        """Whether ``job_id``'s record shows an ending (succeeded, failed, cancelled, expired)
        that :meth:`abandon` did not make: an ending of a burial whose dead-letter write then
        failed must not pass for work that was done (its message is still to be dead-lettered)."""
        current = self.jobs.get(job_id)
        return (current is not None and current.status.terminal
                and current.error_type not in BURIAL_ERROR_TYPES)

    def abandon(self, job_id: str, queue: str, error_type: str, reason: str) -> bool:
        """End a job whose message leaves the broker for good (dead-lettered) as ``failed``
        with ``reason``, exactly once, waking its awaiters; release its conversation turn.

        Returns True when this call ended the job (False: it had ended, or is gone).
        """
        current = self.jobs.get(job_id)
        if current is None or current.status.terminal:
            return False
        spec = self.jobs.spec(job_id)
        redactor = getattr(self.secrets, "redactor", None)
        if redactor is not None:
            reason = redactor.redact(reason)
        started_at = current.started_at
        result = JobResult(
            job_id=job_id, status=JobStatus.failed, attempts=current.attempts,
            queued_at=current.queued_at, started_at=started_at, finished_at=time.time(),
            queue_wait=(max(0.0, started_at - current.queued_at)
                        if started_at is not None and current.queued_at is not None else None),
            error_type=error_type, error_message=reason,
            conversation_id=current.conversation_id, metadata=current.metadata,
        )
        ended = self.jobs.finish(result, queue=queue) == 1
        if spec is not None:
            if ended:
                self.observer.job_finished(spec, result)
            if self.chat is not None:
                self.chat.finish(spec)
        log.warning("job %s ended %s: %s", job_id, error_type, reason)
        return ended

    # -- steps ------------------------------------------------------------------------------
    def _settled(self, job_id: str) -> None:
        """The job's reservation was settled: its grant is forgotten, freed room admits others."""
        if self.scheduler is not None:
            self.scheduler.settled([job_id])

    def _drop_admission(self, job_id: str) -> None:
        """A job that will not run gives back an admission it may hold."""
        if self.scheduler is not None:
            self.scheduler.remove([job_id])

    def _wait_in_line(self, job: StartedJob, queue: str, input_tokens: int, attempts: int,
                      excluded: frozenset[str], *, head: bool, reason: str = "no room: waiting in line") -> str:
        """Park the job and put it in the pool's line; it comes back once, when admitted."""
        assert self.scheduler is not None
        spec = job.spec
        if not self.jobs.park(job.job_id, attempts=attempts, excluded=excluded):
            return "skipped"  # ended meanwhile (cancelled)
        if input_tokens <= 0:
            input_tokens = self.estimate_tokens(spec.chat_messages(), spec.model) + estimate_extra_tokens(
                spec.tools, spec.output_format(), spec.model)
        self._state(job, reason, None)  # before the job can be admitted and taken up again
        self.scheduler.enqueue([demand_of(job, queue, input_tokens, excluded, self.scheduler.fairness_weights)],
                               head=head)
        self.observer.job_deferred(spec, 0, reason)
        return "deferred"

    def _wait(self, job: StartedJob, queue: str, wait: Wait, defer: Callable[[int], None],
              reservation_id: str, max_wait_left: float) -> str:
        spec = job.spec
        if not wait.retryable:
            return self._end(job, queue, JobStatus.failed, "no_capacity", wait.reason)
        delay = max(1, wait.wait_ms)
        if spec.deadline is not None and job.now + delay / 1000 > spec.deadline:
            self.pool.release(reservation_id)
            return self._end(job, queue, JobStatus.expired, "expired",
                             f"no key had room before the deadline ({wait.reason})")
        self.jobs.park(job.job_id, attempts=job.attempts, excluded=job.excluded)
        self._state(job, "waiting for capacity", delay)  # before the job can be taken up again
        defer(delay)
        self.observer.job_deferred(spec, delay, wait.reason)
        return "deferred"

    def _call(self, job: StartedJob, queue: str, grant: Grant, messages: list[ChatMessage],
              defer: Callable[[int], None], not_before: float = 0.0) -> str:
        spec = job.spec
        attempts = job.attempts + 1
        try:
            api_key = self.secrets.get(grant.key_id)
        except errors.SecretStoreError as exc:
            self.pool.settle(grant, None)
            self._settled(job.job_id)
            log.error("job %s: no secret for key %s: %s", job.job_id, grant.key_id, exc)
            # counts as an attempt: the settled reservation id must not be reused
            return self._retry(job, queue, attempts, job.excluded | {grant.key_id}, 0, defer,
                               "secret_unavailable", str(exc))
        creds = KeyCredentials(key_id=grant.key_id, api_key=api_key, base_url=grant.base_url, timeout=grant.timeout)
        call = ChatRequest.from_spec(spec, grant.model, messages)
        try:
            adapter = self.adapter_for(grant.provider)
        except errors.ConfigError as exc:  # e.g. the provider's SDK is not installed
            self.pool.settle(grant, None)
            self._settled(job.job_id)
            log.error("job %s: provider %s unavailable: %s", job.job_id, grant.provider, exc)
            return self._end(job, queue, JobStatus.failed, "provider_unavailable", str(exc),
                             attempts=job.attempts, grant=grant)
        self.jobs.begin_attempt(job.job_id, attempts)
        live = LiveAttempt.begin(self.events, job.job_id, attempts) if spec.stream and self.events else None
        early = not_before - time.monotonic()
        if early > 0:  # admitted ahead of its room: the reservation is stamped at not_before
            time.sleep(early)
        sentclock.begin(on_sent=lambda: self._sent(grant))
        started = time.monotonic()
        try:
            if live is not None:
                response = live.run(adapter, call, creds, grant.provider)
            else:
                response = adapter.complete(call, creds)
        except errors.ProviderError as exc:
            if live is not None:
                if exc.retryable and attempts < self.max_attempts:
                    live.abandon(exc)
                else:
                    live.close()
            seconds = time.monotonic() - started
            self.pool.settle(grant, None, sent_ago_ms=_sent_ago_ms())
            self._settled(job.job_id)
            self.pool.report_error(grant, exc, secret_fingerprint=_fingerprint(api_key))
            self.observer.provider_call(grant, seconds, exc, None)
            log.info("job %s: %s on key %s (attempt %d): %s", job.job_id, exc.error_type, grant.key_id,
                     attempts, exc)
            if self.scheduler is not None and isinstance(exc, errors.ProviderRateLimited):
                # the key is cooled for its hint; not the request's fault: no attempt counted
                return self._wait_in_line(job, queue, 0, job.attempts,
                                          job.excluded, head=True, reason=exc.error_type)
            if not exc.retryable:
                return self._end(job, queue, JobStatus.failed, exc.error_type, str(exc), attempts=attempts,
                                 grant=grant)
            excluded = job.excluded | {grant.key_id} if isinstance(exc, errors.KeyInvalid) else job.excluded
            delay = 0 if exc.key_fault else backoff_ms(attempts)
            return self._retry(job, queue, attempts, excluded, delay, defer, exc.error_type, str(exc), grant)
        except Exception:
            # an adapter bug: let Dramatiq's retries (and, once they are exhausted, the
            # dead-letter ending) take over. With the scheduler the reservation stays for the
            # retry, which claims the same one (a settled one would send the job back to the
            # line as a fresh message, and the retries would never run out)
            if self.scheduler is None:
                self.pool.settle(grant, None)
            raise
        seconds = time.monotonic() - started
        self.pool.settle(grant, response.usage, sent_ago_ms=_sent_ago_ms())
        if self.scheduler is not None:  # refunded tokens and the released lease may admit others
            self.scheduler.settled([job.job_id])
        self.pool.report_success(grant, latency=seconds, rate_limit=response.rate_limit)
        self.observer.provider_call(grant, seconds, None, response.usage)
        if self.chat is not None:
            self.chat.record(job.job_id, spec, response.message(), response.usage, grant)
        if self.budgets is not None and self.key_cost is not None:
            cost = self.key_cost(grant.key_id)
            if cost is not None:
                self.budgets.record_usage(cost, response.usage, key_id=grant.key_id, model=grant.model,
                                          user_id=spec.user_id)
        return self._end(
            job, queue, JobStatus.succeeded, None, None, attempts=attempts, grant=grant,
            content=response.content, usage=response.usage, provider_time=seconds, response=response,
        )

    def _sent(self, grant: Grant) -> None:
        """Runs on the call's thread the moment its request has left (see sentclock)."""
        try:
            self.pool.sent(grant)
        except redis.RedisError as exc:  # the call goes on; settling stamps the moment later
            log.warning("key %s: could not stamp the sent request: %s", grant.key_id, exc)

    def _retry(self, job: StartedJob, queue: str, attempts: int, excluded: frozenset[str], delay: int,
               defer: Callable[[int], None], error_type: str, message: str, grant: Grant | None = None) -> str:
        if attempts >= self.max_attempts:
            return self._end(job, queue, JobStatus.failed, error_type,
                             f"gave up after {attempts} attempts; last error: {message}",
                             attempts=attempts, grant=grant)
        if delay == 0 and self.scheduler is not None:
            return self._wait_in_line(job, queue, 0, attempts, excluded, head=True, reason=error_type)
        self.jobs.park(job.job_id, attempts=attempts, excluded=excluded)
        self._state(job, f"retrying after {error_type}", delay)  # before the job can be taken up again
        defer(delay)
        self.observer.job_deferred(job.spec, delay, error_type)
        return "deferred"

    def _state(self, job: StartedJob, reason: str, eta_ms: int | None) -> None:
        if job.spec.stream and self.events is not None:
            self.events.append(job.job_id, [waiting_event(reason, eta_ms)])

    def _end(self, job: StartedJob, queue: str, status: JobStatus, error_type: str | None,
             error_message: str | None, *, attempts: int | None = None, grant: Grant | None = None,
             content: str | None = None, usage: Usage | None = None, provider_time: float | None = None,
             response: ChatResponse | None = None) -> str:
        spec = job.spec
        finished = time.time()
        result = JobResult(
            job_id=job.job_id,
            status=status,
            content=content,
            tool_calls=response.tool_calls if response else [],
            finish_reason=response.finish_reason if response else None,
            refusal=response.refusal if response else None,
            usage=usage or Usage(),
            key_id=grant.key_id if grant else None,
            provider=grant.provider if grant else None,
            model=grant.model if grant else None,
            attempts=job.attempts if attempts is None else attempts,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=finished,
            queue_wait=max(0.0, job.started_at - job.queued_at),
            provider_time=provider_time,
            error_type=error_type,
            error_message=error_message,
            conversation_id=spec.conversation_id,
            metadata=spec.metadata,
        )
        if self.jobs.finish(result, queue=queue) == 1:
            if spec.stream and self.events is not None:  # after the record: readers fall back to it
                self.events.append(job.job_id, [ending_event(result)])
            self.observer.job_finished(spec, result)
        if self.chat is not None:
            self.chat.finish(spec)
        return status.value


def demand_of(job: StartedJob, queue: str, input_tokens: int, excluded: frozenset[str],
              weights: Mapping[str, float] | None = None) -> Demand:
    """What the pool's line needs to know about a job that waits for room."""
    return Demand.for_spec(job.job_id, queue, job.spec, input_tokens, job_message(job.job_id, queue),
                           excluded=excluded, arrival_ms=int(job.queued_at * 1000), weights=weights)
