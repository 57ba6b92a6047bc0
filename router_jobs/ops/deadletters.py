"""Dead letters for operators: list, replay and purge a queue's dead-letter stream. Entries
are decoded by the broker's wire format (:mod:`router_jobs.broker.wire`).

Replays are capped so that a poison message cannot loop forever: each replay stamps the
message with how often it was replayed (``dlq_replays`` in its options, which stays with it
through the next dead letter), and a message replayed ``max_replays`` times already is
refused; it stays in the dead-letter stream for an operator to read and purge. A job
message's job, ended ``failed`` when the message was dead-lettered, is reopened (back to
``queued``) just before its message goes back on the queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import BrokerScripts
from router_jobs.broker.wire import ACTOR_FOR_QUEUE, decode_dead_letter
from router_jobs.jobs.records import JobStore
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


#: Replays of one message before ``dlq replay`` refuses it.
MAX_REPLAYS = 3


@dataclass
class ReplayOutcome:
    """What a replay did: how many entries went back, which ids were refused and why."""

    replayed: int = 0
    refused: dict[str, str] = field(default_factory=dict)


def dlq_replay(client: redis.Redis, schema: RedisSchema, queue: str, ids: Iterable[str] | None = None,
               limit: int | None = None, *, max_replays: int = MAX_REPLAYS) -> ReplayOutcome:
    """Put dead-lettered entries back on ``queue`` (all, the ``limit`` oldest, or ``ids``).

    Entries replayed ``max_replays`` times already, and entries without a readable message,
    are refused and stay where they are; ids not in the dead-letter stream count as neither.
    """
    dead = schema.dead(queue)
    if ids:
        rows: list[Any] = []
        for entry_id in ids:
            rows.extend(client.xrange(dead, entry_id, entry_id))  # type: ignore[arg-type]
    else:
        rows = list(client.xrange(dead, count=limit) if limit else client.xrange(dead))  # type: ignore[arg-type]
    outcome = ReplayOutcome()
    jobs = JobStore(client, schema)
    scripts = BrokerScripts(client)
    for raw_id, fields in rows:
        entry_id = _text(raw_id)
        try:
            msg = Message.decode(fields[b"m"])
        except (KeyError, DecodeError):
            outcome.refused[entry_id] = "no readable message"
            continue
        done = int(msg.options.get("dlq_replays", 0) or 0)
        if done >= max_replays:
            outcome.refused[entry_id] = f"replayed {done} times already (cap {max_replays})"
            continue
        options = {k: v for k, v in msg.options.items() if k not in ("retries", "traceback", "eta")}
        fresh = msg.copy(options={**options, "dlq_replays": done + 1, "redis_message_id": uuid.uuid4().hex})
        if msg.actor_name in ACTOR_FOR_QUEUE.values() and msg.args:
            jobs.reopen(str(msg.args[0]))
        outcome.replayed += int(scripts.dlq_replay(keys=[dead, schema.stream(queue)],
                                                   args=[entry_id, fresh.encode()]))
    return outcome


def dlq_purge(client: redis.Redis, schema: RedisSchema, queue: str, ids: Iterable[str] | None = None) -> int:
    """Delete dead-lettered entries of ``queue`` (all, or ``ids``); returns how many."""
    if ids:
        return int(client.xdel(schema.dead(queue), *list(ids)))
    n = int(client.xlen(schema.dead(queue)))
    client.delete(schema.dead(queue))
    return n
