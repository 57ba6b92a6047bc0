"""``routerctl metrics``: the metrics exporter (``/metrics``, ``/healthz``, ``/readyz``)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.observability.exporter import MetricsServer
from router_jobs.observability.gauges import KeyStatuses
from router_jobs.observability.logs import configure_logging
from router_jobs.settings import Settings

#: what `metrics serve` says when the workers' counters cannot reach it
MULTIPROC_UNSET = (
    "warning: PROMETHEUS_MULTIPROC_DIR is unset: /metrics serves only the Redis-derived gauges (queues, "
    "workers, keys), not the workers' counters (jobs, latency, tokens, spend). Set the same "
    "PROMETHEUS_MULTIPROC_DIR for `routerctl worker` and `routerctl metrics serve` on this host."
)


def pool_key_statuses(client: Any, schema: RedisSchema) -> KeyStatuses | None:
    """``RedisKeyPool(...).key_statuses`` when the exact key pool is installed, else None."""
    try:
        capacity = importlib.import_module("router_jobs.capacity.redis_pool")
    except ImportError:
        return None
    pool = capacity.RedisKeyPool(client, schema)
    statuses: KeyStatuses = pool.key_statuses
    return statuses


@click.group()
def metrics() -> None:
    """Prometheus metrics and health endpoints."""


@metrics.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=None, help="port (default: ROUTER_METRICS_PORT, 9464)")
@click.option("--redis/--no-redis", "redis_gauges", default=True, show_default=True,
              help="export Redis-derived gauges (queues, keys); off for a per-host worker exporter")
def serve(host: str, port: int | None, redis_gauges: bool) -> None:
    """Serve /metrics (worker counters + Redis gauges), /healthz and /readyz until stopped."""
    settings = Settings.from_env()
    configure_logging(json=settings.log_json)
    client = connect(resolve_redis_url(settings)) if redis_gauges else None
    statuses = pool_key_statuses(client, RedisSchema(settings.namespace)) if client is not None else None
    server = MetricsServer(settings, statuses, client=client, host=host, port=port, redis_gauges=redis_gauges)
    logging.getLogger("router_jobs.observability.exporter").info(
        "serving metrics on %s:%d (multiprocess folder: %s)", host, server.port,
        settings.prometheus_multiproc_dir or "none")
    if settings.prometheus_multiproc_dir is None:
        click.echo(MULTIPROC_UNSET, err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
