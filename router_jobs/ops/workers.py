"""Live workers: one definition of a heartbeat's age and of "alive", for every reader.

Each worker process (a consumer of the broker) writes its epoch time into the hash
``rj:consumers`` (``RedisSchema.consumers``) at every heartbeat. A worker is alive while its
heartbeat is younger than :func:`stale_after`; ``routerctl health`` and ``queues``, the
``/readyz`` probe, the ``router_workers_alive`` gauge, the seed's ``health_check`` and the
demo all count with :func:`live_workers`.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.settings import Settings


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def stale_after(settings: Settings) -> float:
    """Seconds without a heartbeat after which a worker counts as gone (the visibility
    timeout: past it, live workers take the silent one's entries over anyway)."""
    return max(5.0, settings.visibility_timeout_ms / 1000)


def heartbeats(client: redis.Redis, schema: RedisSchema) -> dict[str, float]:
    """Worker (consumer name) -> seconds since its last heartbeat."""
    now = time.time()
    out: dict[str, float] = {}
    for name, raw in client.hgetall(schema.consumers()).items():
        try:
            out[_text(name)] = max(0.0, now - float(_text(raw)))
        except ValueError:
            continue
    return out


def live_workers(client: redis.Redis, schema: RedisSchema, stale: float) -> int:
    """Workers whose heartbeat is younger than ``stale`` seconds."""
    return sum(1 for age in heartbeats(client, schema).values() if age <= stale)
