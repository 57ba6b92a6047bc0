"""The actors: one per queue, same work, different priority (interactive first)."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from router_jobs.broker.wire import ACTOR_FOR_QUEUE, PRIORITY_FOR_QUEUE
from router_jobs.worker.context import executor
from router_jobs.worker.setup import broker

#: A job's own retries are decided by the executor; Dramatiq only retries unexpected crashes,
#: three times within seconds (1 s, 2 s, 4 s backoff), after which the job ends ``failed``
#: (``dead_lettered``, see ``endings.py``) instead of keeping its awaiters for minutes.
ACTOR_OPTIONS: dict[str, Any] = {"max_retries": 3, "min_backoff": 1000, "max_backoff": 10_000,
                                 "time_limit": 15 * 60 * 1000}


def _run(job_id: str, queue: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None, "an actor runs inside a worker, with its message"

    def defer(delay_ms: int) -> None:
        broker.defer(message, delay_ms)  # type: ignore[arg-type]  # a MessageProxy at run time

    executor().run(job_id, queue, defer)


@dramatiq.actor(actor_name=ACTOR_FOR_QUEUE["interactive"], queue_name="interactive",
                priority=PRIORITY_FOR_QUEUE["interactive"], **ACTOR_OPTIONS)
def run_interactive_job(job_id: str) -> None:
    """Run one delivery of an interactive job."""
    _run(job_id, "interactive")


@dramatiq.actor(actor_name=ACTOR_FOR_QUEUE["batch"], queue_name="batch",
                priority=PRIORITY_FOR_QUEUE["batch"], **ACTOR_OPTIONS)
def run_batch_job(job_id: str) -> None:
    """Run one delivery of a batch job."""
    _run(job_id, "batch")
