"""Dead letters for operators: list, replay (capped per call) and purge a queue's dead-letter
stream. Entries are decoded by the broker's wire format (:mod:`router_jobs.broker.wire`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import BrokerScripts
from router_jobs.broker.wire import decode_dead_letter
from router_jobs.observability.gauges import all_queues


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def dlq_list(client: redis.Redis, schema: RedisSchema, queue: str | None = None,
             count: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered entries (oldest first) of one queue or of every queue, up to ``count``."""
    out: list[dict[str, Any]] = []
    for q in [queue] if queue else all_queues(client, schema):
        rows: Any = client.xrange(schema.dead(q), count=max(0, count - len(out)))
        for entry_id, fields in rows:
            out.append(decode_dead_letter(q, entry_id, fields).as_dict())
            if len(out) >= count:
                return out
    return out


def _dead_ids(client: redis.Redis, schema: RedisSchema, queue: str, ids: Iterable[str] | None,
              limit: int | None) -> list[str]:
    if ids:
        return list(ids)
    rows: Any = client.xrange(schema.dead(queue), count=limit) if limit else client.xrange(schema.dead(queue))
    return [_text(entry_id) for entry_id, _ in rows]


def dlq_replay(client: redis.Redis, schema: RedisSchema, queue: str, ids: Iterable[str] | None = None,
               limit: int | None = None) -> int:
    """Put dead-lettered entries back on ``queue`` (all, ``limit`` oldest, or ``ids``) and take
    them out of the dead-letter stream, atomically per batch; returns how many moved."""
    todo = _dead_ids(client, schema, queue, ids, limit)
    moved = 0
    scripts = BrokerScripts(client)
    for i in range(0, len(todo), 200):
        moved += int(scripts.dlq_replay(keys=[schema.dead(queue), schema.stream(queue)], args=todo[i:i + 200]))
    return moved


def dlq_purge(client: redis.Redis, schema: RedisSchema, queue: str, ids: Iterable[str] | None = None) -> int:
    """Delete dead-lettered entries of ``queue`` (all, or ``ids``); returns how many."""
    if ids:
        return int(client.xdel(schema.dead(queue), *list(ids)))
    n = int(client.xlen(schema.dead(queue)))
    client.delete(schema.dead(queue))
    return n
