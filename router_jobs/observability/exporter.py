"""Serving metrics: the multiprocess folder, Redis-derived gauges, ``/metrics``, ``/healthz``, ``/readyz``.

Worker processes count into prometheus-client's multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``,
:attr:`Settings.prometheus_multiproc_dir`): each process writes its own ``<type>_<pid>.db``
files and :class:`MetricsServer` adds them up at scrape time. The variable has to be in the
environment *before* ``prometheus_client`` is imported, so it is set in the environment of the
pool (``PROMETHEUS_MULTIPROC_DIR=/var/run/rj-metrics routerctl worker``); every worker process
inherits it. The folder should start empty for each run of the pool
(:func:`prepare_multiproc_dir` with ``wipe=True``, or a fresh tmpfs in a container).

Dead processes: the files of a dead worker stay, because its counters must keep counting in
the sums (a counter that went down would look like a reset). Only gauges that are summed over
*live* processes (``router_worker_jobs_in_progress``) must forget a dead pid: a worker marks
itself dead on a clean shutdown (:class:`WorkerMetricsMiddleware`), and the exporter
:func:`reap_dead_processes` at each scrape for pids that no longer exist — which is only
meaningful when the exporter shares the workers' pid namespace (same host or container).
With several hosts or containers, each has its own folder and its own exporter of worker
metrics (``ROUTER_WORKER_METRICS_PORT``); Prometheus adds the hosts up.

Redis-derived gauges (queue depths, dead letters, live workers, key usage and state) are
computed by :class:`RedisCollector` at scrape time in one exporter only, so that they are
not reported once per worker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.observability.gauges import GAUGES, KeyStatuses, RedisCollector
from router_jobs.observability.metrics import WorkerMetrics
from router_jobs.ops.health import readiness
from router_jobs.ops.workers import stale_after
from router_jobs.settings import Settings

log = logging.getLogger("router_jobs.observability.exporter")

_LIVE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def prepare_multiproc_dir(path: str | Path, *, wipe: bool = False) -> Path:
    """Create the multiprocess folder; with ``wipe``, empty it first (only before a pool starts)."""
    p = Path(path)
    if wipe and p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_processes(path: str | Path) -> list[int]:
    """``mark_process_dead`` for every pid with live-gauge files that is no longer running.

    Only valid when the caller sees the workers' pids (same host / container). Returns the
    pids reaped.
    """
    dead: set[int] = set()
    for entry in os.listdir(path):
        m = _LIVE_FILE.match(entry)
        if m and not _pid_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in sorted(dead):
        mark_process_dead(pid, str(path))
    return sorted(dead)


class _RegistryCollector:
    """Exposes another registry's metrics (the process's own, in single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class MetricsServer:
    """HTTP exporter: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (Redis + a live worker).

    Parameters:
      settings: Redis URL, namespace, multiprocess folder, visibility timeout.
      key_statuses: a callable giving the key pool's per-key statuses (e.g.
        ``RedisKeyPool.key_statuses``); without it no key gauges are exported.
      client: a redis-py client (default: one for ``settings``). ``redis_gauges=False``
        serves worker metrics only (the per-host worker exporter) and never touches Redis.
      multiproc_dir: the folder to aggregate (default: ``settings.prometheus_multiproc_dir``);
        without one, the process's own registry is served.
      reap: reap dead pids' live-gauge files at each scrape (same pid namespace only).
    """

    def __init__(
        self,
        settings: Settings,
        key_statuses: KeyStatuses | None = None,
        *,
        client: Any = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        redis_gauges: bool = True,
        multiproc_dir: str | Path | None = None,
        reap: bool = True,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = settings.metrics_port if port is None else port
        self.multiproc_dir = Path(multiproc_dir) if multiproc_dir else settings.prometheus_multiproc_dir
        self.reap = reap
        self.stale_after = stale_after(settings)
        self.client = client
        if redis_gauges and client is None:
            self.client = connect(resolve_redis_url(settings))
        self.collector: RedisCollector | None = None
        if redis_gauges:
            self.collector = RedisCollector(self.client, RedisSchema(settings.namespace), key_statuses,
                                            stale_after=self.stale_after)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the three answers ------------------------------------------------------------------
    def render_metrics(self) -> bytes:
        """The text exposition of everything this exporter serves."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiproc_dir is not None:
            path = prepare_multiproc_dir(self.multiproc_dir)
            if self.reap:
                reap_dead_processes(path)
            MultiProcessCollector(registry, path=str(path))
        else:
            registry.register(_RegistryCollector(REGISTRY))
        if self.collector is not None:
            registry.register(self.collector)
        return generate_latest(registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: the process answers."""
        return 200, {"status": "ok"}

    def ready(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: Redis answers PING and some worker's heartbeat is recent."""
        if self.client is None:
            return 200, {"ready": True, "reason": "worker exporter (no Redis checks)"}
        ok, body = readiness(self.client, self.collector.schema if self.collector else None,
                             self.stale_after)
        return (200 if ok else 503), body

    # -- serving -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def start(self) -> str:
        """Serve in a daemon thread; returns :attr:`url`."""
        self._httpd = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.2,),
                                        name="metrics-server", daemon=True)
        self._thread.start()
        log.info("metrics server at %s", self.url)
        return self.url

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or KeyboardInterrupt)."""
        self._httpd = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        log.info("metrics server at %s", self.url)
        try:
            self._httpd.serve_forever(0.2)
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.render_metrics(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                code, body = server.health() if path == "/healthz" else server.ready()
                self._send(code, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported_metric_names() -> set[str]:
    """Every sample name this project exports (worker metrics and Redis gauges), with the
    suffixes Prometheus adds (``_total``, ``_bucket``, ``_sum``, ``_count``, ``_created``)."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    families = [(f.name, f.type) for f in registry.collect()]
    families += [(name, "gauge") for name in GAUGES]
    return {name + suffix for name, kind in families for suffix in _SUFFIXES.get(kind, ("",))}


def serve_worker_metrics() -> int:
    """Entry point of the worker pool's exporter fork: worker metrics only, no Redis reads."""
    settings = Settings.from_env()
    port = settings.worker_metrics_port
    if port is None or settings.prometheus_multiproc_dir is None:
        return 0
    MetricsServer(settings, redis_gauges=False, host="0.0.0.0", port=port).serve_forever()
    return 0
