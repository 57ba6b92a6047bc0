"""Live workers: one definition of a heartbeat's age and of "alive", for every reader.

Each worker process (a consumer of the broker) writes its epoch time into the hash
``rj:consumers`` (``RedisSchema.consumers``) at every heartbeat. A worker is alive while its
heartbeat is younger than :func:`stale_after` and, when it ran on this host, its process
still exists (a killed or restarted worker stops counting at once); ``routerctl health``
and ``queues``, the ``/readyz`` probe, the ``router_workers_alive`` gauge, the seed's ``health_check`` and the
demo all count with :func:`live_workers`.
"""

from __future__ import annotations

import os
import socket
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


def process_gone(worker: str) -> bool:
    """Whether ``worker`` (a consumer named ``<host>-<pid>-<tag>`` by the broker) ran on this
    host and its process no longer exists. A worker killed or restarted keeps a fresh-looking
    heartbeat for up to ``stale`` seconds; on its own host there is no need to wait."""
    parts = worker.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        return False
    return False


def alive_workers(client: redis.Redis, schema: RedisSchema, stale: float) -> set[str]:
    """Workers whose heartbeat is younger than ``stale`` seconds and whose process, when it
    ran on this host, still exists."""
    return {name for name, age in heartbeats(client, schema).items() if age <= stale and not process_gone(name)}


def live_workers(client: redis.Redis, schema: RedisSchema, stale: float) -> int:
    """How many :func:`alive_workers` there are."""
    return len(alive_workers(client, schema, stale))
