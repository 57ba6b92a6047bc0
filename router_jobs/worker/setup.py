"""Broker setup for worker processes: settings from the environment, Streams broker."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import StreamsBroker
from router_jobs.settings import Settings


def build_broker(settings: Settings) -> StreamsBroker:
    """A Streams broker for ``settings``, with Dramatiq's default middleware plus CurrentMessage."""
    client = connect(resolve_redis_url(settings))
    broker = StreamsBroker(
        client,
        schema=RedisSchema(settings.namespace),
        visibility_timeout=settings.visibility_timeout_ms,
        max_deliveries=settings.max_deliveries,
        dead_letter_maxlen=settings.dead_letter_maxlen,
    )
    broker.add_middleware(CurrentMessage())
    return broker


settings = Settings.from_env()
broker = build_broker(settings)
dramatiq.set_broker(broker)
