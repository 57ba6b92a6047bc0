"""The client's rules, written once for :class:`~router_jobs.client.router.Router` and
:class:`~router_jobs.client.async_router.AsyncRouter`.

Each rule is a generator of Redis round trips (:mod:`router_jobs.backend.ops`): the sync
router drives it on its client, the async router on its asyncio client, so both refuse,
limit, budget, number conversation turns and cancel exactly alike, and the async one never
blocks its event loop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from router_jobs.backend.ops import Op, Steps
from router_jobs.capacity.joining import line_demand
from router_jobs.conversations.store import check_conv_id
from router_jobs.errors import JobValidationError, SubmitRateLimited
from router_jobs.jobs.records import new_job_id
from router_jobs.models import JobHandle, JobResult, JobSpec, JobStatus
from router_jobs.observability.metrics import record_submitted
from router_jobs.streaming.live import ending_event, waiting_event

if TYPE_CHECKING:
    from router_jobs.client.router import Router

ON_RATE_LIMIT = ("raise", "delay")
log = logging.getLogger(__name__)


def submit_steps(router: Router, fields: dict[str, Any], *, delay: float, on_rate_limit: str) -> Steps[JobHandle]:
    """Validate, apply the user's limits and budget, then enqueue (see ``Router.submit``)."""
    from router_jobs.client.router import check_delay, validate_spec

    if on_rate_limit not in ON_RATE_LIMIT:
        raise JobValidationError("on_rate_limit", "must be 'raise' or 'delay'")
    served = yield from router.served_providers_steps()  # model -> providers: capabilities checked too
    try:
        delay = check_delay(delay, router.settings)
        spec = validate_spec(fields, router.settings, served)
    except JobValidationError:
        record_submitted(str(fields.get("priority", "interactive")), "refused", "rejected")
        raise
    if spec.conversation_id is not None:
        check_conv_id(spec.conversation_id)
    if spec.user_id is not None:
        yield from router.budgets.check_steps(spec.user_id)
        decision = yield router.limiter.decide_op(spec.user_id)
        wait = 0.0 if decision.admitted else decision.retry_after
        if wait > 0:
            if on_rate_limit == "raise" or wait == float("inf"):
                record_submitted(spec.priority.value, spec.model, "rate_limited")
                raise SubmitRateLimited(decision.scope or "user", wait)
            delay = max(delay, wait)
    handle = yield from submit_spec_steps(router, spec, delay=delay)
    return handle


def submit_spec_steps(router: Router, spec: JobSpec, *, delay: float = 0.0,
                      job_id: str | None = None) -> Steps[JobHandle]:
    """Enqueue an already valid spec; a conversation turn draws its turn number here.

    The turn number lives in the conversation's Redis slot and the queue in another, so drawing
    and enqueueing cannot be one script: when the enqueue fails, the drawn turn is released
    (see :func:`release_unused_turn_steps`) so that later turns do not wait for it.
    """
    from router_jobs.client.router import check_delay

    delay = check_delay(delay, router.settings)
    convs = router.conversations
    drawn = False
    if spec.conversation_id is not None and spec.turn_seq is None:
        exists = yield convs.exists_op(spec.conversation_id)
        if not exists:
            yield from convs.create_steps(spec.conversation_id, system_prompt=spec.system_prompt)
        seq = yield convs.next_turn_seq_op(spec.conversation_id)
        spec = spec.model_copy(update={"turn_seq": seq})
        drawn = True
    job_id = job_id or new_job_id()
    # a job that needs nothing but room goes straight into the key pool's line (admitted at
    # once when a key has room): it is delivered once, when it can run. Conversation turns
    # and delayed jobs go through a worker first (turn order, history size, the delay).
    # A model the registry does not know yet (no worker has seeded it from the keys file)
    # also goes through a worker: the worker seeds the registry, then puts the job in line.
    registry = yield from router.pool.registry.refresh_steps()
    has_line = any(spec.model in k.served_models() for k in registry.keys.values())
    in_line = spec.conversation_id is None and delay <= 0 and has_line
    try:
        if spec.stream:  # the first event, written before any worker can see the job
            queue = router.schema.stream(spec.priority.value)
            ahead = yield Op(lambda c: c.xlen(queue), int)
            first = (waiting_event("held back by submit", int(delay * 1000), ahead) if delay > 0
                     else waiting_event("submitted", None, ahead))
            yield router.events.append_op(job_id, [first])
        got_id, existed = yield router.jobs.submit_op(spec, job_id=job_id, delay_ms=int(delay * 1000),
                                                      hold=in_line, joining=router.scheduler.joining_key())
    except BaseException:
        if drawn:
            yield from release_unused_turn_steps(router, spec, job_id)
        raise
    if spec.stream and got_id != job_id:  # deduplicated: the earlier job's stream is the one
        orphan = router.schema.job_events(job_id)
        yield Op(lambda c: c.delete(orphan))
    to_line = in_line and not existed
    if in_line and existed:
        # submitted before (an idempotency key): if that submit never reached the line (its
        # producer died between the two steps), the job is queued and was never delivered;
        # putting it in line again is harmless otherwise (a waiting or admitted job is kept)
        status, deliveries = yield Op(lambda c: c.hmget(router.schema.job(got_id), "status", "deliveries"))
        to_line = (status.decode() if isinstance(status, bytes) else status) == "queued" and not int(deliveries or 0)
    if to_line:
        demand = line_demand(got_id, spec, router.scheduler.fairness_weights)
        yield from router.scheduler.enqueue_steps([demand])
    record_submitted(spec.priority.value, spec.model, "deduplicated" if existed else "accepted")
    if existed and spec.conversation_id is not None and spec.turn_seq is not None:
        yield convs.finish_turn_op(spec.conversation_id, spec.turn_seq)  # the drawn turn is unused
    return JobHandle(job_id=got_id, queue=spec.priority, deduplicated=existed)


def release_unused_turn_steps(router: Router, spec: JobSpec, job_id: str) -> Steps[None]:
    """A turn number was drawn but its job may not be queued: unless the job record is there
    (the enqueue did happen, only its answer was lost), mark the turn finished. Should Redis be
    unreachable even for this, the gate skips the turn after its stall timeout
    (``ChatTurns.stall_seconds``)."""
    assert spec.conversation_id is not None and spec.turn_seq is not None
    try:
        current = yield router.jobs.get_op(job_id)
        if current is None:
            yield router.conversations.finish_turn_op(spec.conversation_id, spec.turn_seq)
    except redis.RedisError:
        log.warning("conversation %s: turn %d could not be released; the stall timeout will skip it",
                    spec.conversation_id, spec.turn_seq)


def cancel_steps(router: Router, job_id: str) -> Steps[bool]:
    """Cancel a job that has not started (or is waiting for room); True if cancelled."""
    current = yield router.jobs.get_op(job_id)
    if current is None or current.status != JobStatus.queued:
        return False
    spec = yield router.jobs.spec_op(job_id)
    queue = spec.priority.value if spec else "interactive"
    result = JobResult(job_id=job_id, status=JobStatus.cancelled, queued_at=current.queued_at,
                       finished_at=time.time(), error_type="cancelled", error_message="cancelled by request",
                       attempts=current.attempts, conversation_id=spec.conversation_id if spec else None)
    ended = yield router.jobs.finish_op(result, queue=queue, only_if_queued=True)
    if ended != 1:
        return False
    if spec is not None and spec.stream:  # the reader of its stream ends with the cancellation
        yield router.events.append_op(job_id, [ending_event(result)])
    # out of the pool's line; an admission not yet claimed gives its room back
    yield from router.scheduler.remove_steps([job_id])
    if spec is not None and spec.conversation_id is not None and spec.turn_seq is not None:
        yield router.conversations.finish_turn_op(spec.conversation_id, spec.turn_seq)
    return True
