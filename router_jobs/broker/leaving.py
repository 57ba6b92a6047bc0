"""How messages leave the broker for good, or go back for a retry, without being lost.

* :class:`DeadLetterHook` is what a middleware implements to hear of a message *before* it
  moves to the dead-letter stream (Dramatiq's retries exhausted, an unexpected failure, a
  message that kept killing its workers). The worker uses it to end the message's job as
  failed with the reason. The hook runs first: if it fails, the entry stays pending and comes
  back, so a dead-lettered message never leaves its job unended.
* :class:`StreamRetries` replaces Dramatiq's ``Retries`` middleware on a
  :class:`~router_jobs.broker.streams.StreamsBroker`. Same options and backoff, but the retry is
  parked with ``defer.lua`` (ack + park in one step, retried a few times on connection
  errors) instead of a separate enqueue whose failure Dramatiq can only log. When Redis still
  refuses, the delivered entry is left pending, not acknowledged: the visibility timeout
  brings it back; it is never lost.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import redis
from dramatiq.common import compute_backoff
from dramatiq.errors import Retry
from dramatiq.middleware import Retries

from router_jobs.errors import BrokerError

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from router_jobs.broker.streams import StreamsBroker

log = logging.getLogger("router_jobs.broker")

#: Attempts at parking a retry before the entry is left pending for the visibility timeout.
DEFER_ATTEMPTS = 4


@runtime_checkable
class DeadLetterHook(Protocol):
    """A middleware that wants to hear of messages about to be dead-lettered.

    ``kind`` is ``"failed"`` (the worker rejected the message: retries exhausted or an
    unexpected error) or ``"crashed"`` (it was started too often without an ack: its workers
    died or timed out each time). Raising :class:`redis.RedisError` or
    :class:`~router_jobs.errors.RouterJobsError` keeps the entry pending (it comes back later).
    Returning True says the message's work had already ended (a worker finished it but died
    before its ack left): the entry is then acknowledged instead of dead-lettered.
    """

    def before_dead_letter(self, broker: Any, message: Any, *, kind: str, reason: str) -> bool | None: ...


def keep_pending(message: MessageProxy) -> None:
    """Make the coming ack of ``message`` a local forget only: its entry stays pending in Redis
    and is delivered again once idle past the visibility timeout."""
    message._keep_pending = True  # type: ignore[attr-defined]


def is_kept_pending(message: MessageProxy) -> bool:
    """Whether :func:`keep_pending` was called for ``message``."""
    return bool(getattr(message, "_keep_pending", False))


class StreamRetries(Retries):
    """Dramatiq's ``Retries`` with the retry parked atomically (see the module docstring)."""

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            message.fail()
            return
        retries = message.options.setdefault("retries", 0)
        message.options["retries"] += 1
        message.options["traceback"] = traceback.format_exc(limit=30)
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        max_retries = message.options.get("max_retries", actor.options.get("max_retries", self.max_retries))
        retry_when = actor.options.get("retry_when", self.retry_when)
        if retry_when is not None:
            exhausted = not retry_when(retries, exception)
        else:
            exhausted = max_retries is not None and retries >= max_retries
        if exhausted:
            log.warning("retries exceeded for message %s", message.message_id)
            message.fail()
            target = message.options.get("on_retry_exhausted") or actor.options.get("on_retry_exhausted")
            if target:
                broker.get_actor(target).send(message.asdict(), {"retries": retries, "max_retries": max_retries})
            return
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = int(exception.delay)
        else:
            min_backoff = message.options.get("min_backoff", actor.options.get("min_backoff", self.min_backoff))
            max_backoff = message.options.get("max_backoff", actor.options.get("max_backoff", self.max_backoff))
            _, delay = compute_backoff(retries, factor=min_backoff, max_backoff=max_backoff)
        self._park(broker, message, int(delay))

    def _park(self, broker: StreamsBroker, message: MessageProxy, delay: int) -> None:
        pause = 0.1
        for attempt in range(1, DEFER_ATTEMPTS + 1):
            try:
                broker.defer(message, delay)
                log.info("retrying message %s in %d ms", message.message_id, delay)
                return
            except BrokerError as exc:
                cause = exc.__cause__
                if attempt == DEFER_ATTEMPTS or not isinstance(cause, redis.ConnectionError | redis.TimeoutError):
                    log.error("cannot park the retry of message %s (%s); it stays pending and comes "
                              "back after the visibility timeout", message.message_id, exc)
                    keep_pending(message)
                    return
                time.sleep(pause)
                pause *= 2


def use_stream_retries(broker: StreamsBroker) -> None:
    """Swap any stock ``Retries`` middleware of ``broker`` for :class:`StreamRetries`."""
    for i, middleware in enumerate(broker.middleware):
        if type(middleware) is Retries:
            broker.middleware[i] = StreamRetries(
                max_retries=middleware.max_retries, min_backoff=middleware.min_backoff,
                max_backoff=middleware.max_backoff, retry_when=middleware.retry_when,
            )
