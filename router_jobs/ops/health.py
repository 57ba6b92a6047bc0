"""Health, in one place: what ``routerctl health``, the seed's ``health_check`` and the
exporter's ``/readyz`` report. Each check names what failed."""

from __future__ import annotations

from typing import Any

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.observability.gauges import queue_depths
from router_jobs.ops.workers import live_workers

#: Key states in which a key is still (or soon again) usable.
USABLE_STATES = frozenset({"active", "cooldown", "full"})


def health(client: redis.Redis, schema: RedisSchema, pool: RedisKeyPool | None, *,
           stale: float = 30.0) -> dict[str, Any]:
    """Checks an operator (or a probe) wants: Redis answers, some worker has a recent
    heartbeat, some key is usable. ``healthy`` is False with ``reasons`` when one fails."""
    checks: list[dict[str, Any]] = []
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"redis did not answer PING ({type(exc).__name__})"
        return {"healthy": False, "reasons": [reason], "checks": [{"name": "redis", "ok": False, "detail": reason}]}
    checks.append({"name": "redis", "ok": True, "detail": "PING answered"})
    workers = live_workers(client, schema, stale)
    checks.append({"name": "workers", "ok": workers > 0,
                   "detail": f"{workers} worker(s) alive" if workers else f"no worker heartbeat in the last {stale:g}s"})
    if pool is not None:
        states: dict[str, int] = {}
        for st in pool.key_statuses():
            states[st["state"]] = states.get(st["state"], 0) + 1
        usable = sum(n for s, n in states.items() if s in USABLE_STATES)
        detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no keys configured"
        checks.append({"name": "keys", "ok": usable > 0,
                       "detail": detail if usable else f"no usable key ({detail})"})
    dead = sum(d["dead"] for d in queue_depths(client, schema).values())
    checks.append({"name": "dead_letters", "ok": True, "detail": f"{dead} dead-lettered"})
    reasons = [c["detail"] for c in checks if not c["ok"]]
    return {"healthy": not reasons, "reasons": reasons, "checks": checks}


def readiness(client: redis.Redis, schema: RedisSchema | None, stale_after: float) -> tuple[bool, dict[str, Any]]:
    """Whether Redis answers PING and at least one worker heartbeat is recent, with a reason."""
    try:
        client.ping()
    except redis.RedisError as exc:
        return False, {"ready": False, "redis": "down", "reason": f"redis did not answer PING: {type(exc).__name__}"}
    if schema is None:
        return True, {"ready": True, "redis": "ok"}
    try:
        workers = live_workers(client, schema, stale_after)
    except redis.RedisError as exc:
        return False, {"ready": False, "redis": "error", "reason": f"cannot read heartbeats: {type(exc).__name__}"}
    if workers == 0:
        return False, {"ready": False, "redis": "ok", "workers": 0,
                       "reason": f"no worker heartbeat in the last {stale_after:g}s"}
    return True, {"ready": True, "redis": "ok", "workers": workers}
