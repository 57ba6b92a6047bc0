"""Prometheus metrics of the workers and producers, and the executor's metrics observer.

What is counted where:

* **worker processes** count what happens to jobs and provider calls through
  :class:`MetricsObserver` (the :class:`~router_jobs.worker.executor.Observer` the worker hands to
  its executor). With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client writes every
  process's values to files in that folder and one exporter adds them up
  (see :mod:`router_jobs.observability.exporter`).
* **producers** count submissions with :func:`record_submitted`; those live in the producer's
  own process registry (serve them with the producer's usual exporter).
* **Redis-derived gauges** (queue depths, dead letters, key usage and state) are computed at
  scrape time by one exporter only (:class:`router_jobs.observability.exporter.RedisCollector`), so they are
  never counted once per worker.

Label sets are bounded: queue, model (as configured in the keys file), key id, provider,
outcome, error class, reason class. Never a job id, a user id, a prompt or a secret.

The seed system's names stay: ``key_rpm_used``, ``key_tpm_used``, ``key_cooldown`` (gauges, in
the exporter) and ``request_router_attempts_total``, ``request_router_rate_limited_total``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from router_jobs import errors
from router_jobs.capacity.config import Cost, KeysFile
from router_jobs.capacity.pool import Grant
from router_jobs.models import JobResult, JobSpec, JobStatus, Usage

#: Buckets for waits and end-to-end times: 5 ms … 1 h.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Buckets for provider calls: 10 ms … 5 min.
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)

#: What ``job_deferred`` reasons are reduced to when they are free text (pool wait reasons).
REASON_CLASSES = ("concurrency", "capacity", "cooldown", "excluded", "other")
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def reason_class(reason: str) -> str:
    """A bounded label for a deferral reason.

    Error types (``rate_limited``, ``transient`` …) are kept as they are; the pool's free-text
    wait reasons (which may name keys and models) become one of :data:`REASON_CLASSES`.
    """
    if _IDENT.match(reason):
        return reason
    text = reason.lower()
    if "concurrency" in text or "in flight" in text:
        return "concurrency"
    if "cooldown" in text or "cooling" in text:
        return "cooldown"
    if "excluded" in text:
        return "excluded"
    if any(w in text for w in ("room", "full", "rpm", "tpm", "limit", "slot", "booked")):
        return "capacity"
    return "other"


class WorkerMetrics:
    """The metric objects. One set per process; ``registry=None`` registers none of them.

    In multiprocess mode the values go to the multiprocess folder whatever the registry;
    the registry only matters for single-process exposition and for tests.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.submitted = Counter(
            "router_jobs_submitted", "Jobs offered to submit, by outcome (accepted, deduplicated, rejected).",
            ["queue", "model", "outcome"], registry=r)
        self.completed = Counter(
            "router_jobs_completed", "Jobs that ended, by final status (succeeded, failed, expired, cancelled).",
            ["queue", "model", "outcome"], registry=r)
        self.failed = Counter(
            "router_jobs_failed", "Jobs that ended without a result, by error class.",
            ["queue", "model", "error_type"], registry=r)
        self.deferred = Counter(
            "router_jobs_deferred", "Deliveries sent back for later: reservation waits and retries, by reason.",
            ["queue", "reason"], registry=r)
        self.defer_delay = Histogram(
            "router_defer_delay_seconds", "Delay a deferred delivery was given, by reason.",
            ["queue", "reason"], buckets=WAIT_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "router_queue_wait_seconds", "Time from submit to the start of the job's final delivery.",
            ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.job_duration = Histogram(
            "router_job_duration_seconds", "End-to-end time from submit to the job's end, by outcome.",
            ["queue", "outcome"], buckets=WAIT_BUCKETS, registry=r)
        self.provider_latency = Histogram(
            "router_provider_latency_seconds", "Duration of provider calls (successful or not).",
            ["provider", "model"], buckets=CALL_BUCKETS, registry=r)
        self.attempts = Counter(
            "request_router_attempts", "Provider calls made, by key (seed-compatible name).",
            ["key_id"], registry=r)
        self.rate_limited = Counter(
            "request_router_rate_limited", "Provider calls refused with a rate limit (429), by key.",
            ["key_id"], registry=r)
        self.provider_errors = Counter(
            "router_provider_errors", "Failed provider calls by error class.",
            ["provider", "key_id", "error_type"], registry=r)
        self.tokens = Counter(
            "router_tokens", "Tokens reported by providers, by key, model and direction (input, output).",
            ["key_id", "model", "direction"], registry=r)
        self.spend = Counter(
            "router_spend_usd", "Spend in USD from the keys file's cost per million tokens.",
            ["key_id", "model"], registry=r)
        self.in_progress = Gauge(
            "router_worker_jobs_in_progress", "Deliveries being handled by worker threads right now.",
            ["queue"], registry=r, multiprocess_mode="livesum")


_default: WorkerMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> WorkerMetrics:
    """The process's metric set in the default registry, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = WorkerMetrics(REGISTRY)
        return _default


def record_submitted(queue: str, model: str, outcome: str = "accepted",
                     metrics: WorkerMetrics | None = None) -> None:
    """Count one submission (producer side). ``outcome``: accepted, deduplicated, rejected
    (refused at validation; ``model`` is then ``refused``) or rate_limited."""
    (metrics or default_metrics()).submitted.labels(queue, model, outcome).inc()


class MetricsObserver:
    """The executor's :class:`~router_jobs.worker.executor.Observer` that feeds :class:`WorkerMetrics`.

    ``keys`` (or ``costs``, key id -> :class:`~router_jobs.capacity.config.Cost`) prices the tokens
    for ``router_spend_usd_total``; keys without a cost count no spend.
    """

    def __init__(self, metrics: WorkerMetrics | None = None, *, keys: KeysFile | None = None,
                 costs: Mapping[str, Cost] | None = None) -> None:
        self.metrics = metrics or default_metrics()
        self.costs: Mapping[str, Cost]
        if costs is not None and keys is None:
            self.costs = costs  # may be a live view (e.g. of the pool's registry)
        else:
            table: dict[str, Cost] = {k.key_id: k.cost for k in keys.keys} if keys is not None else {}
            table.update(costs or {})
            self.costs = table

    def job_finished(self, spec: JobSpec, result: JobResult) -> None:
        """Count the job's end; observe its queue wait and end-to-end time."""
        m = self.metrics
        queue = spec.priority.value
        outcome = result.status.value
        m.completed.labels(queue, spec.model, outcome).inc()
        if result.status != JobStatus.succeeded:
            m.failed.labels(queue, spec.model, result.error_type or outcome).inc()
        if result.queue_wait is not None:
            m.queue_wait.labels(queue).observe(max(0.0, result.queue_wait))
        if result.finished_at is not None and result.queued_at is not None:
            m.job_duration.labels(queue, outcome).observe(max(0.0, result.finished_at - result.queued_at))

    def job_deferred(self, spec: JobSpec, delay_ms: int, reason: str) -> None:
        """Count a reservation wait or a retry, with its reason reduced to a bounded class."""
        queue = spec.priority.value
        why = reason_class(reason)
        self.metrics.deferred.labels(queue, why).inc()
        self.metrics.defer_delay.labels(queue, why).observe(max(0, delay_ms) / 1000)

    def provider_call(self, grant: Grant, seconds: float, error: errors.ProviderError | None,
                      usage: Usage | None) -> None:
        """Count the call, its latency, its error class, its tokens and their price."""
        m = self.metrics
        m.attempts.labels(grant.key_id).inc()
        m.provider_latency.labels(grant.provider, grant.model).observe(max(0.0, seconds))
        if error is not None:
            m.provider_errors.labels(grant.provider, grant.key_id, error.error_type).inc()
            if isinstance(error, errors.ProviderRateLimited):
                m.rate_limited.labels(grant.key_id).inc()
        if usage is not None:
            m.tokens.labels(grant.key_id, grant.model, "input").inc(usage.input_tokens)
            m.tokens.labels(grant.key_id, grant.model, "output").inc(usage.output_tokens)
            cost = self.costs.get(grant.key_id)
            if cost is not None:
                usd = cost.of(usage.input_tokens, usage.output_tokens)
                if usd > 0:
                    m.spend.labels(grant.key_id, grant.model).inc(usd)


__all__ = [
    "CALL_BUCKETS", "REASON_CLASSES", "WAIT_BUCKETS", "MetricsObserver", "WorkerMetrics",
    "default_metrics", "reason_class", "record_submitted",
]
