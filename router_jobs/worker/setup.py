"""Broker setup for worker processes: settings from the environment, Streams broker.

A worker whose configuration is invalid exits (code 2, one line on stderr) here, at import,
before its broker registers a consumer (``preflight.py``). Each worker process dies with the
process that started it (``lifeline.py``).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import StreamsBroker
from router_jobs.settings import Settings
from router_jobs.worker.lifeline import die_with_parent
from router_jobs.worker.preflight import refuse_unless_valid

#: A worker's Redis calls ride out an outage of about 10 s (a restart, a failover) before an
#: error reaches the job: each error after a provider call would cost a duplicate call.
WORKER_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), 14)


class DieWithParent(Middleware):
    """Each worker process gets SIGTERM (a graceful stop) when its parent dies."""

    def after_process_boot(self, broker: Any) -> None:
        die_with_parent()


def build_broker(settings: Settings) -> StreamsBroker:
    """A Streams broker for ``settings``, with Dramatiq's default middleware plus CurrentMessage."""
    client = connect(resolve_redis_url(settings), retry=WORKER_RETRY)
    broker = StreamsBroker(
        client,
        schema=RedisSchema(settings.namespace),
        visibility_timeout=settings.visibility_timeout_ms,
        max_deliveries=settings.max_deliveries,
        dead_letter_maxlen=settings.dead_letter_maxlen,
    )
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(DieWithParent())
    return broker


settings = Settings.from_env()
refuse_unless_valid(settings)
broker = build_broker(settings)
dramatiq.set_broker(broker)
