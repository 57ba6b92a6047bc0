"""The executor alone: one delivery of a job against an in-memory key pool, secret source and
provider adapter (the protocols it is written against), with job records in a real Redis.

No worker process, no broker: ``defer`` is a list that records the delays asked for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
import redis

from router_jobs import errors
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.pool import Grant, ReserveRequest, Wait
from router_jobs.jobs.records import JobStore, new_job_id
from router_jobs.models import ChatMessage, JobSpec, JobStatus, Usage
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials, RateLimitInfo
from router_jobs.worker.executor import Executor


@dataclass
class MemoryPool:
    """A KeyPool that grants on the keys it is given, per model, unless told to wait."""

    keys: dict[str, list[str]]  # model -> key ids
    waits: dict[str, Wait] = field(default_factory=dict)  # model -> the Wait it answers
    requests: list[ReserveRequest] = field(default_factory=list)
    settled: list[tuple[str, Usage | None]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    successes: list[str] = field(default_factory=list)

    def models(self) -> set[str]:
        return set(self.keys)

    def reserve(self, request: ReserveRequest) -> Grant | Wait:
        self.requests.append(request)
        for model in request.models:
            if model in self.waits:
                continue
            for key_id in self.keys.get(model, []):
                if key_id not in request.exclude_keys:
                    return Grant(key_id=key_id, provider="memory", model=model,
                                 reservation_id=request.reservation_id, input_tokens=request.input_tokens,
                                 output_tokens=request.max_output_tokens)
        return next((self.waits[m] for m in request.models if m in self.waits),
                    Wait(0, "every key excluded", retryable=False))

    def sent(self, grant: Grant) -> None:
        pass

    def settle(self, grant: Grant, usage: Usage | None, *, sent_ago_ms: int | None = None) -> None:
        self.settled.append((grant.reservation_id, usage))

    def report_success(self, grant: Grant, *, latency: float, rate_limit: RateLimitInfo | None) -> None:
        self.successes.append(grant.key_id)

    def report_error(self, grant: Grant, error: errors.ProviderError, *,
                     secret_fingerprint: str | None = None) -> None:
        self.errors.append((grant.key_id, error.error_type))

    def release(self, reservation_id: str) -> bool:
        self.released.append(reservation_id)
        return True

    def revalidate(self, fingerprints: Mapping[str, str]) -> list[str]:
        return []

    def key_ids(self) -> list[str]:
        return sorted({k for ks in self.keys.values() for k in ks})


@dataclass
class MemorySecrets:
    values: dict[str, str]

    def get(self, key_id: str) -> str:
        if key_id not in self.values:
            raise errors.SecretStoreError(f"no secret for {key_id}")
        return self.values[key_id]

    def fingerprint(self, key_id: str) -> str:
        return str(hash(self.get(key_id)))


@dataclass
class ScriptedAdapter:
    """Answers each call with the next scripted outcome (an exception or a reply text)."""

    outcomes: list[Exception | str]
    name: str = "memory"
    calls: list[tuple[ChatRequest, str]] = field(default_factory=list)

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        self.calls.append((request, creds.key_id))
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        return ChatResponse(content=outcome, usage=Usage(input_tokens=7, output_tokens=3), model=request.model)


@pytest.fixture
def store(r: redis.Redis, namespace: str) -> JobStore:
    return JobStore(r, RedisSchema(namespace))


def make(store: JobStore, pool: MemoryPool, adapter: ScriptedAdapter, *, secrets: dict[str, str] | None = None,
         max_attempts: int = 3) -> Executor:
    return Executor(jobs=store, pool=pool, secrets=MemorySecrets(secrets or {"k1": "s1", "k2": "s2"}),
                    adapter_for=lambda provider: adapter, estimate_tokens=lambda messages, model: 11,
                    max_attempts=max_attempts)


def submitted(store: JobStore, **fields: object) -> str:
    spec = JobSpec.model_validate({"prompt": "hello", "model": "m1", "max_output_tokens": 20, **fields})
    job_id, _ = store.submit(spec, job_id=new_job_id())
    return job_id


def test_success_settles_real_usage_and_writes_the_result_once(store: JobStore) -> None:
    pool, adapter = MemoryPool({"m1": ["k1"]}), ScriptedAdapter(["the answer"])
    ex, deferred = make(store, pool, adapter), []
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", deferred.append) == "succeeded"
    result = store.get(job_id)
    assert result is not None and result.status == JobStatus.succeeded and result.content == "the answer"
    assert (result.key_id, result.attempts, deferred) == ("k1", 1, [])
    [request] = pool.requests
    assert (request.input_tokens, request.max_output_tokens, request.reservation_id) == (11, 20, f"{job_id}:0")
    assert pool.settled == [(f"{job_id}:0", Usage(input_tokens=7, output_tokens=3))]
    assert pool.successes == ["k1"]
    [(call, key_id)] = adapter.calls
    assert key_id == "k1" and call.messages == [ChatMessage(role="user", content="hello")]
    # a duplicate delivery of an ended job does nothing
    assert ex.run(job_id, "interactive", deferred.append) == "skipped"
    assert len(adapter.calls) == 1


def test_request_error_fails_at_once_with_the_reason(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"]})
    adapter = ScriptedAdapter([errors.RequestTooLarge("context length exceeded", provider="memory")])
    job_id = submitted(store)
    assert make(store, pool, adapter).run(job_id, "interactive", lambda ms: None) == "failed"
    result = store.get(job_id)
    assert result is not None and result.error_type == "request_too_large"
    assert "context length exceeded" in (result.error_message or "")
    assert pool.settled == [(f"{job_id}:0", None)]  # the estimate is refunded


def test_transient_errors_back_off_then_fail_after_max_attempts(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"]})
    adapter = ScriptedAdapter([errors.TransientProviderError("502 bad gateway", status=502)] * 3)
    ex, deferred = make(store, pool, adapter, max_attempts=3), []
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert ex.run(job_id, "interactive", deferred.append) == "failed"
    assert 400 <= deferred[0] <= 600 and 800 <= deferred[1] <= 1200  # jittered 0.5 s, 1 s
    # every attempt reserved under a fresh id: a settled reservation is never reused
    assert [r.reservation_id for r in pool.requests] == [f"{job_id}:{n}" for n in range(3)]
    result = store.get(job_id)
    assert result is not None and result.attempts == 3 and "gave up after 3 attempts" in (result.error_message or "")


def test_invalid_key_is_excluded_and_the_job_moves_to_another_key(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1", "k2"]})
    adapter = ScriptedAdapter([errors.KeyInvalid("401 invalid api key", status=401), "from k2"])
    ex, deferred = make(store, pool, adapter), []
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert deferred == [0]  # a key fault goes back at once: the pool steers elsewhere
    assert ex.run(job_id, "interactive", deferred.append) == "succeeded"
    assert pool.errors == [("k1", "key_invalid")]
    assert pool.requests[1].exclude_keys == frozenset({"k1"})
    result = store.get(job_id)
    assert result is not None and result.key_id == "k2"


def test_missing_secret_counts_as_an_attempt_on_another_key(store: JobStore) -> None:
    pool, adapter = MemoryPool({"m1": ["k1", "k2"]}), ScriptedAdapter(["ok"])
    ex, deferred = make(store, pool, adapter, secrets={"k2": "s2"}), []
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert ex.run(job_id, "interactive", deferred.append) == "succeeded"
    assert [key for _, key in adapter.calls] == ["k2"]


def test_provider_that_cannot_load_fails_the_job_with_the_reason(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"]})

    def no_sdk(provider: str) -> ScriptedAdapter:
        raise errors.ConfigError("the openai SDK is not installed")

    ex = Executor(jobs=store, pool=pool, secrets=MemorySecrets({"k1": "s1"}), adapter_for=no_sdk,
                  estimate_tokens=lambda messages, model: 1)
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", lambda ms: None) == "failed"
    result = store.get(job_id)
    assert result is not None and result.error_type == "provider_unavailable"
    assert pool.settled == [(f"{job_id}:0", None)]


def test_past_deadline_expires_without_a_call(store: JobStore) -> None:
    pool, adapter = MemoryPool({"m1": ["k1"]}), ScriptedAdapter([])
    spec = JobSpec.model_validate({"prompt": "late", "model": "m1", "deadline": time.time() + 3600})
    job_id, _ = store.submit(spec.model_copy(update={"deadline": time.time() - 1}), job_id=new_job_id())
    assert make(store, pool, adapter).run(job_id, "interactive", lambda ms: None) == "expired"
    assert adapter.calls == [] and pool.requests == []


def test_full_pool_sends_the_job_back_with_the_pools_delay(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"]}, waits={"m1": Wait(1234, "k1 full")})
    ex, deferred = make(store, pool, ScriptedAdapter([])), []
    job_id = submitted(store)
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert deferred == [1234]
    current = store.get(job_id)
    assert current is not None and current.status == JobStatus.queued  # parked: cancellable while it waits


def test_pool_that_can_never_serve_fails_the_job(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"]}, waits={"m1": Wait(0, "request larger than any key's limit",
                                                        retryable=False)})
    job_id = submitted(store)
    assert make(store, pool, ScriptedAdapter([])).run(job_id, "interactive", lambda ms: None) == "failed"
    result = store.get(job_id)
    assert result is not None and result.error_type == "no_capacity"
    assert "larger than any key" in (result.error_message or "")


def test_max_wait_moves_to_fallback_models_when_the_preferred_has_no_room_in_time(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"], "m2": ["k2"]}, waits={"m1": Wait(60_000, "k1 full")})
    ex, deferred = make(store, pool, ScriptedAdapter(["from the fallback"])), []
    job_id = submitted(store, fallback_models=["m2"], max_wait=5)
    assert ex.run(job_id, "interactive", deferred.append) == "succeeded"
    assert [list(r.models) for r in pool.requests] == [["m1"], ["m1", "m2"]]
    assert pool.released == [f"{job_id}:0"]  # the first plan's booked slot is given back
    result = store.get(job_id)
    assert result is not None and (result.model, result.key_id) == ("m2", "k2")


def test_max_wait_keeps_waiting_for_the_preferred_model_when_room_comes_in_time(store: JobStore) -> None:
    pool = MemoryPool({"m1": ["k1"], "m2": ["k2"]}, waits={"m1": Wait(2_000, "k1 full")})
    ex, deferred = make(store, pool, ScriptedAdapter([])), []
    job_id = submitted(store, fallback_models=["m2"], max_wait=5)
    assert ex.run(job_id, "interactive", deferred.append) == "deferred"
    assert deferred == [2000] and [list(r.models) for r in pool.requests] == [["m1"]]


def test_has_ended_does_not_count_an_ending_a_burial_made(store: JobStore) -> None:
    """A crashing message is acknowledged rather than dead-lettered only when its job ended on
    its own; an ending written by an earlier burial (whose dead-letter write then failed) must
    still let the message reach the dead-letter stream."""
    ex = make(store, MemoryPool({"m1": ["k1"]}), ScriptedAdapter(["the answer"]))
    done, buried = submitted(store), submitted(store)
    assert ex.run(done, "interactive", lambda ms: None) == "succeeded"
    assert ex.abandon(buried, "interactive", "crashed", "started 3 times without an ack")
    assert ex.has_ended(done) and not ex.has_ended(buried)
