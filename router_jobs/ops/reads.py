"""Operator reads and actions behind ``routerctl``: queues, keys, jobs, batches.

Every function takes a redis-py client and a :class:`~router_jobs.backend.schema.RedisSchema` (or a
:class:`~router_jobs.client.router.Router` / key pool) and returns plain dicts and lists that
serialize to JSON as they are, so the CLI only formats them. No function here returns or
logs a secret value: keys are named by ``key_id``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from router_jobs.admission.budgets import Budgets
from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP
from router_jobs.capacity.config import KeyConfig
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.errors import ConfigError
from router_jobs.jobs.records import parse_result
from router_jobs.observability.gauges import all_queues, queue_depths
from router_jobs.ops.workers import heartbeats
from router_jobs.settings import Settings


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def server_time(client: redis.Redis) -> float:
    """The Redis server's clock, epoch seconds."""
    sec, usec = client.time()
    return int(sec) + int(usec) / 1e6


# ---------------------------------------------------------------------------------- queues
def queue_stats(client: redis.Redis, schema: RedisSchema, *, stale: float = 30.0) -> list[dict[str, Any]]:
    """One row per queue: ready, delayed, in_flight, dead, consumers_alive, consumers_gone,
    oldest_ready_age (seconds, None when nothing is ready), completed_last_minute.

    ``consumers_alive`` counts worker processes whose heartbeat is younger than ``stale``
    seconds (a heartbeat is per process, and a process consumes every queue unless started
    with ``--queues``); ``consumers_gone`` counts consumers the queue's group knows (Redis
    adds one on its first delivery) whose heartbeat is older or missing: dead workers, whose
    pending entries live ones take over. Completions over the last 60 s are estimated from the
    per-minute counters the job store keeps (this minute + the overlapping part of the last).
    """
    names = all_queues(client, schema)
    depths = queue_depths(client, schema, names)
    beats = heartbeats(client, schema)
    now = server_time(client)
    minute = int(time.time() // 60)
    frac = (time.time() % 60) / 60
    rows = []
    for q in names:
        stream = schema.stream(q)
        pipe = client.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xinfo_consumers(stream, GROUP)
        pipe.get(f"{schema.completions(q)}:{minute}")
        pipe.get(f"{schema.completions(q)}:{minute - 1}")
        groups, consumers, cur, prev = pipe.execute(raise_on_error=False)
        in_group = {_text(c["name"]) for c in consumers} if isinstance(consumers, list) else set()
        fresh = {n for n, a in beats.items() if a <= stale}
        alive = len(fresh)
        gone = len(in_group - fresh)
        oldest: float | None = None
        d = depths.get(q, {"ready": 0, "in_flight": 0, "delayed": 0, "dead": 0})
        if d["ready"] > 0 and isinstance(groups, list):
            last = next((_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0")
            first = client.xrange(stream, min=f"({last}", max="+", count=1)
            if first:
                oldest = max(0.0, now - int(_text(first[0][0]).split("-")[0]) / 1000)
        done_now = int(cur) if isinstance(cur, bytes | str | int) else 0
        done_prev = int(prev) if isinstance(prev, bytes | str | int) else 0
        rows.append({
            "queue": q, **d,
            "consumers_alive": alive, "consumers_gone": gone,
            "oldest_ready_age": oldest,
            "completed_last_minute": done_now + round(done_prev * (1 - frac)),
        })
    return rows


# ---------------------------------------------------------------------------------- keys
def key_rows(pool: RedisKeyPool, budgets: Budgets) -> list[dict[str, Any]]:
    """The pool's key statuses (see ``RedisKeyPool.key_status``) with ``spend_today_usd``."""
    spend = budgets.report().get("keys", {})
    rows = pool.key_statuses()
    for row in rows:
        row["spend_today_usd"] = float(spend.get(row["key_id"], 0.0))
    return rows


def window(row: dict[str, Any], unit: str, seconds: float) -> dict[str, Any] | None:
    """The limit entry of a key status for ``unit`` over ``seconds`` (None when unlimited)."""
    for w in row.get("limits") or []:
        if w.get("unit") == unit and float(w.get("seconds", 0)) == seconds:
            return dict(w)
    return None


def parse_key_config(data: dict[str, Any]) -> KeyConfig:
    """A :class:`KeyConfig` from a JSON object; ConfigError naming the field when invalid."""
    from pydantic import ValidationError

    try:
        return KeyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        raise ConfigError(f"key field {field}: {err.get('msg')}", field=field) from None


def require_key(pool: RedisKeyPool, key_id: str) -> None:
    """Raise KeyError when ``key_id`` is not in the pool's registry."""
    if key_id not in pool.registry.current(force=True).keys:
        raise KeyError(key_id)


def reload_keys(pool: RedisKeyPool, path: str | Path) -> int:
    """Replace the pool's registry with the keys file at ``path`` (even if unchanged since it
    was last applied: operators' live edits are undone). Returns the number of keys."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"keys file {p} does not exist", field="keys_file")
    pool.client.delete(pool.ks.pool_part(pool.pool, "file"))  # forget the applied digest
    pool.sync_file(p)
    return len(pool.key_ids())


# ---------------------------------------------------------------------------------- jobs
_LIST_FIELDS = ("status", "queue", "queued_at", "started_at", "finished_at", "attempts", "deliveries", "spec",
                "result")


def list_jobs(client: redis.Redis, schema: RedisSchema, *, status: str | None = None, limit: int = 20,
              scan_limit: int = 10_000) -> list[dict[str, Any]]:
    """The most recently queued jobs (newest first), optionally of one status.

    Bounded: at most ``scan_limit`` job records are looked at (SCAN in batches), so the
    answer is exact for deployments holding fewer records and a sample otherwise.
    """
    ids: list[str] = []
    prefix = schema.job("")
    for raw in client.scan_iter(match=schema.job_pattern(), count=1000):
        ids.append(_text(raw)[len(prefix):])
        if len(ids) >= scan_limit:
            break
    rows = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        pipe = client.pipeline(transaction=False)
        for j in chunk:
            pipe.hmget(schema.job(j), list(_LIST_FIELDS))
        for job_id, values in zip(chunk, pipe.execute(), strict=True):
            f = {k: (_text(v) if v is not None else None) for k, v in zip(_LIST_FIELDS, values, strict=True)}
            if f["status"] is None or (status is not None and f["status"] != status):
                continue
            spec = json.loads(f["spec"]) if f["spec"] else {}
            result = json.loads(f["result"]) if f["result"] else {}
            rows.append({
                "job_id": job_id, "status": f["status"], "queue": f["queue"], "model": spec.get("model"),
                "queued_at": float(f["queued_at"]) if f["queued_at"] else None,
                "finished_at": float(f["finished_at"]) if f["finished_at"] else None,
                "attempts": int(f["attempts"] or 0), "deliveries": int(f["deliveries"] or 0),
                "key_id": result.get("key_id"), "error_type": result.get("error_type"),
                "conversation_id": spec.get("conversation_id"),
            })
    rows.sort(key=lambda r: r["queued_at"] or 0.0, reverse=True)
    return rows[:limit]


def job_detail(client: redis.Redis, schema: RedisSchema, job_id: str) -> dict[str, Any] | None:
    """Everything known about one job: its result (or progress), spec and delivery count."""
    fields = client.hgetall(schema.job(job_id))
    result = parse_result(job_id, fields)
    if result is None:
        return None
    f = {_text(k): _text(v) for k, v in fields.items()}
    out = result.model_dump(mode="json")
    out["queue"] = f.get("queue")
    out["deliveries"] = int(f.get("deliveries", 0) or 0)
    out["spec"] = json.loads(f["spec"]) if f.get("spec") else None
    return out


# ---------------------------------------------------------------------------------- scan
def configured_secret_values(settings: Settings, key_ids: Iterable[str]) -> list[str]:
    """Real values of the configured keys that the secret store can read (for exact-match
    leak scans). Keys without a readable secret are skipped. Never print the result."""
    from router_jobs.errors import SecretStoreError
    from router_jobs.secrets.stores import build_secret_store

    store = build_secret_store(settings)
    values = []
    for key_id in key_ids:
        try:
            values.append(store.get(key_id))
        except SecretStoreError:
            continue
    return values


def default_model(served: Iterable[str]) -> str:
    """The model to use when none was named: the pool's only model, else a ConfigError."""
    models = sorted(served)
    if len(models) == 1:
        return models[0]
    known = ", ".join(models) or "none (no active key)"
    raise ConfigError(f"name a model with --model; the pool serves: {known}", field="model")
