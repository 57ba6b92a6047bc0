"""Gauges read from Redis at scrape time: queues, dead letters, live workers, keys.

One exporter serves these (``routerctl metrics serve``), so they are never reported once per
worker. Queue gauges come straight from the broker's keys (:mod:`router_jobs.backend.schema`,
consumer group :data:`router_jobs.broker.streams.GROUP`); key gauges come from a ``key_statuses``
callable (the key pool's ``key_statuses``), so this module does not depend on the pool.

A status is a dict with at least ``key_id`` and ``state``; when present, ``provider``,
``quota_group``, ``in_flight``, ``successes_5m``, ``errors_5m``, ``latency_ewma_ms``,
``limits`` (a list of ``{"unit", "seconds", "limit", "used"}``) and ``group`` (``{"name",
"limits", "in_flight"}``) are exported too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.metrics_core import GaugeMetricFamily

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP
from router_jobs.errors import RouterJobsError
from router_jobs.models import Priority
from router_jobs.ops.workers import live_workers

log = logging.getLogger("router_jobs.observability.exporter")

KeyStatuses = Callable[[], list[dict[str, Any]]]

#: The states a key can be in (see the key pool); ``key_state`` has one series per state.
KEY_STATES = ("active", "disabled", "cooldown", "exhausted", "full", "invalid")

#: name -> (help, labels) of every gauge this collector exports.
GAUGES: dict[str, tuple[str, list[str]]] = {
    "router_redis_up": ("1 when Redis answered this scrape's reads, else 0.", []),
    "router_queue_depth": ("Messages ready in the queue's stream, not yet delivered.", ["queue"]),
    "router_queue_in_flight": ("Messages delivered to a worker and not yet acknowledged.", ["queue"]),
    "router_queue_delayed": ("Messages waiting in the queue's delay set (backpressure, retries).", ["queue"]),
    "router_queue_dead_letters": ("Entries in the queue's dead-letter stream.", ["queue"]),
    "router_workers_alive": ("Worker processes (consumers) with a recent heartbeat.", []),
    "router_key_status_up": ("1 when the key pool's statuses could be read this scrape.", []),
    "key_rpm_used": ("Requests admitted on the key in the last 60 s (seed-compatible name).", ["key_id"]),
    "key_tpm_used": ("Tokens admitted on the key in the last 60 s (seed-compatible name).", ["key_id"]),
    "key_cooldown": ("1 while the key cools down after a rate limit (seed-compatible name).", ["key_id"]),
    "key_state": ("1 for the key's current state, 0 for the others.", ["key_id", "state"]),
    "key_info": ("Always 1; the key's provider and quota group as labels.", ["key_id", "provider", "quota_group"]),
    "key_in_flight": ("Calls in progress on the key.", ["key_id"]),
    "key_window_used": ("Units admitted in each of the key's sliding windows.", ["key_id", "unit", "window_seconds"]),
    "key_window_limit": ("Limit of each of the key's sliding windows.", ["key_id", "unit", "window_seconds"]),
    "key_recent_calls": ("Calls on the key in the last 5 minutes, by outcome (success, error).", ["key_id", "outcome"]),
    "key_latency_ewma_seconds": ("Moving average of the key's call latency.", ["key_id"]),
    "quota_group_window_used": ("Units admitted in each window of a shared quota group.",
                                ["quota_group", "unit", "window_seconds"]),
    "quota_group_window_limit": ("Limit of each window of a shared quota group.",
                                 ["quota_group", "unit", "window_seconds"]),
}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def queue_names(client: redis.Redis, schema: RedisSchema) -> list[str]:
    """Every queue some producer or worker declared, sorted."""
    return sorted(_text(q) for q in client.smembers(schema.queues()))


def all_queues(client: redis.Redis, schema: RedisSchema) -> list[str]:
    """The job queues (interactive, batch) plus any other declared queue, sorted."""
    return sorted({p.value for p in Priority} | set(queue_names(client, schema)))


def queue_depths(client: redis.Redis, schema: RedisSchema,
                 queues: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per queue: ``ready`` (in the stream, not delivered), ``in_flight`` (delivered, not
    acknowledged), ``delayed`` (in the delay set) and ``dead`` (dead-letter stream length).

    ``queues`` defaults to the declared ones. Raises redis.ConnectionError when Redis is
    unreachable; a queue whose consumer group does not exist yet counts nothing in flight.
    """
    ks = schema
    queues = queue_names(client, ks) if queues is None else queues
    if not queues:
        return {}
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.xlen(ks.stream(q))
        pipe.xpending(ks.stream(q), GROUP)
        pipe.zcard(ks.delayed(q))
        pipe.xlen(ks.dead(q))
    replies = pipe.execute(raise_on_error=False)
    out: dict[str, dict[str, int]] = {}
    for i, q in enumerate(queues):
        xlen, pending, delayed, dead = replies[4 * i: 4 * i + 4]
        for r in (xlen, delayed, dead):
            if isinstance(r, redis.ConnectionError):
                raise r
        in_flight = int(pending["pending"]) if isinstance(pending, dict) else 0  # NOGROUP: none
        stream_len = int(xlen) if isinstance(xlen, int) else 0
        out[q] = {
            "ready": max(0, stream_len - in_flight),
            "in_flight": in_flight,
            "delayed": int(delayed) if isinstance(delayed, int) else 0,
            "dead": int(dead) if isinstance(dead, int) else 0,
        }
    return out


class RedisCollector:
    """A prometheus-client collector computing :data:`GAUGES` from Redis at each scrape."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, key_statuses: KeyStatuses | None = None,
                 *, stale_after: float = 30.0) -> None:
        self.client = client
        self.schema = schema
        self.key_statuses = key_statuses
        self.stale_after = stale_after

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Every family this collector may export (no samples)."""
        for name, (doc, labels) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, labels=labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read Redis now; on a Redis error, report ``router_redis_up 0`` and nothing else."""
        fam = {name: GaugeMetricFamily(name, doc, labels=labels) for name, (doc, labels) in GAUGES.items()}
        try:
            self._queues(fam)
            fam["router_workers_alive"].add_metric([], live_workers(self.client, self.schema, self.stale_after))
        except redis.RedisError as exc:
            log.warning("metrics: redis read failed: %s", type(exc).__name__)
            fam["router_redis_up"].add_metric([], 0)
            yield fam["router_redis_up"]
            return
        fam["router_redis_up"].add_metric([], 1)
        if self.key_statuses is not None:
            try:
                statuses = self.key_statuses()
            except (redis.RedisError, RouterJobsError) as exc:
                log.warning("metrics: key statuses unavailable: %s", type(exc).__name__)
                fam["router_key_status_up"].add_metric([], 0)
            else:
                fam["router_key_status_up"].add_metric([], 1)
                self._keys(fam, statuses)
        yield from (f for f in fam.values() if f.samples)

    def _queues(self, fam: dict[str, GaugeMetricFamily]) -> None:
        for q, n in queue_depths(self.client, self.schema).items():
            fam["router_queue_depth"].add_metric([q], n["ready"])
            fam["router_queue_in_flight"].add_metric([q], n["in_flight"])
            fam["router_queue_delayed"].add_metric([q], n["delayed"])
            fam["router_queue_dead_letters"].add_metric([q], n["dead"])

    @staticmethod
    def _keys(fam: dict[str, GaugeMetricFamily], statuses: list[dict[str, Any]]) -> None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for st in statuses:
            kid = str(st["key_id"])
            state = str(st.get("state") or "active")
            fam["key_info"].add_metric([kid, str(st.get("provider") or ""), str(st.get("quota_group") or "")], 1)
            fam["key_cooldown"].add_metric([kid], 1 if state == "cooldown" else 0)
            for s in (*KEY_STATES, *(() if state in KEY_STATES else (state,))):
                fam["key_state"].add_metric([kid, s], 1 if s == state else 0)
            if st.get("in_flight") is not None:
                fam["key_in_flight"].add_metric([kid], float(st["in_flight"]))
            for outcome, field in (("success", "successes_5m"), ("error", "errors_5m")):
                if st.get(field) is not None:
                    fam["key_recent_calls"].add_metric([kid, outcome], float(st[field]))
            if st.get("latency_ewma_ms") is not None:
                fam["key_latency_ewma_seconds"].add_metric([kid], float(st["latency_ewma_ms"]) / 1000)
            for w in st.get("limits") or []:
                unit, seconds = str(w.get("unit")), float(w.get("seconds", 0))
                labels = [kid, unit, f"{seconds:g}"]
                fam["key_window_used"].add_metric(labels, float(w.get("used", 0)))
                fam["key_window_limit"].add_metric(labels, float(w.get("limit", 0)))
                if seconds == 60 and unit == "requests":
                    fam["key_rpm_used"].add_metric([kid], float(w.get("used", 0)))
                elif seconds == 60 and unit == "tokens":
                    fam["key_tpm_used"].add_metric([kid], float(w.get("used", 0)))
            group = st.get("group")
            if isinstance(group, dict) and group.get("name"):
                groups.setdefault(str(group["name"]), list(group.get("limits") or []))
        for name, limits in sorted(groups.items()):
            for w in limits:
                labels = [name, str(w.get("unit")), f"{float(w.get('seconds', 0)):g}"]
                fam["quota_group_window_used"].add_metric(labels, float(w.get("used", 0)))
                fam["quota_group_window_limit"].add_metric(labels, float(w.get("limit", 0)))
