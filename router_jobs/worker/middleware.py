"""The worker side of metrics: a Dramatiq middleware and the setup a worker process runs.

:func:`install_worker_metrics` (called once per worker process, at import of the worker
module) creates the multiprocess folder when ``PROMETHEUS_MULTIPROC_DIR`` is set and adds
:class:`WorkerMetricsMiddleware` to the broker. The middleware keeps
``router_worker_jobs_in_progress``, marks its process dead in the folder on a clean shutdown,
and, when ``ROUTER_WORKER_METRICS_PORT`` is set too, has Dramatiq's main process run
:func:`router_jobs.observability.exporter.serve_worker_metrics` as a fork: one exporter per pool (per host
or container) that adds up its own worker processes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from prometheus_client.multiprocess import mark_process_dead

from router_jobs.observability.exporter import prepare_multiproc_dir, serve_worker_metrics
from router_jobs.observability.metrics import WorkerMetrics, default_metrics
from router_jobs.settings import Settings

log = logging.getLogger("router_jobs.worker")


class WorkerMetricsMiddleware(dramatiq.Middleware):
    """In-progress gauge, dead-process bookkeeping and the optional exporter fork."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    @property
    def forks(self) -> list[Callable[[], int]]:
        """The exporter fork, when both the folder and the worker metrics port are set."""
        if self.settings.prometheus_multiproc_dir and self.settings.worker_metrics_port:
            return [serve_worker_metrics]
        return []

    def before_process_message(self, broker: Any, message: Any) -> None:
        with self._lock:
            self._running.add(message.message_id)
        self.metrics.in_progress.labels(message.queue_name).inc()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        with self._lock:
            if message.message_id not in self._running:
                return  # skipped before our before_process_message ran
            self._running.discard(message.message_id)
        self.metrics.in_progress.labels(message.queue_name).dec()

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self.settings.prometheus_multiproc_dir is not None:
            mark_process_dead(os.getpid(), str(self.settings.prometheus_multiproc_dir))


def install_worker_metrics(broker: dramatiq.Broker, settings: Settings) -> WorkerMetricsMiddleware:
    """Prepare this worker process for metrics and add the middleware to ``broker``."""
    folder = settings.prometheus_multiproc_dir
    if folder is not None:
        prepare_multiproc_dir(folder)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(folder):
            log.warning("prometheus_multiproc_dir is set but not in the environment before "
                        "prometheus_client was imported: this process's metrics are not shared")
    middleware = WorkerMetricsMiddleware(settings)
    broker.add_middleware(middleware)
    return middleware


__all__ = ["WorkerMetricsMiddleware", "install_worker_metrics"]
