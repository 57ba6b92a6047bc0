"""Jobs whose message leaves the broker for good end ``failed``, with the reason, at once.

A message is dead-lettered when Dramatiq's retries of an unexpected error are exhausted, or
when it was started too often without an ack (its workers died or timed out each time). Its
job would otherwise stay ``running`` forever and its awaiters would wait for their timeout.
:class:`JobEndings` hears of it before the entry moves (the broker's dead-letter hook) and
ends the job through the same exactly-once script as any other ending, which wakes the
awaiters. ``error_type`` is ``dead_lettered`` (rejected by the worker) or ``crashed`` (it
kept killing its workers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from router_jobs.broker.wire import ACTOR_FOR_QUEUE

#: ``kind`` of the broker's dead-letter hook -> the ended job's ``error_type``.
ERROR_TYPES = {"failed": "dead_lettered", "crashed": "crashed"}

#: abandon(job_id, queue, error_type, reason) -> whether this call ended the job
Abandon = Callable[[str, str, str, str], bool]


class JobEndings(Middleware):
    """Dramatiq middleware ending the job of every dead-lettered job message.

    ``abandon`` is :meth:`router_jobs.worker.executor.Executor.abandon` of the worker
    process, ``has_ended`` its :meth:`~router_jobs.worker.executor.Executor.has_ended` (looked
    up lazily: the executor is built on first use).
    """

    def __init__(self, abandon: Callable[[], Abandon],
                 has_ended: Callable[[], Callable[[str], bool]] | None = None) -> None:
        self._abandon = abandon
        self._has_ended = has_ended

    def _ended(self, job_id: str) -> bool:
        return self._has_ended is not None and self._has_ended()(job_id)

    def before_dead_letter(self, broker: Any, message: Any, *, kind: str, reason: str) -> bool:
        """End the message's job (a job message names its job id as its only argument).

        True when a message that kept crashing its workers belongs to a job that had already
        ended (it was finished, and the ack was lost with the worker): nothing to dead-letter."""
        if message.actor_name not in ACTOR_FOR_QUEUE.values() or not message.args:
            return False
        job_id = str(message.args[0])
        ended = self._abandon()(job_id, q_name(message.queue_name), ERROR_TYPES.get(kind, "dead_lettered"), reason)
        return kind == "crashed" and not ended and self._ended(job_id)
