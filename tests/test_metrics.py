"""Metrics: the observer's counters, bounded reasons, Redis gauges, health answers, multiprocess folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from router_jobs import errors
from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import StreamsBroker
from router_jobs.capacity.config import Cost
from router_jobs.capacity.pool import Grant
from router_jobs.models import JobResult, JobSpec, JobStatus, Usage
from router_jobs.observability.exporter import MetricsServer, exported_metric_names, reap_dead_processes
from router_jobs.observability.metrics import MetricsObserver, WorkerMetrics, reason_class, record_submitted
from router_jobs.settings import Settings
from tests.support import metric_samples

samples = metric_samples


def val(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


GRANT = Grant(key_id="k1", provider="openai", model="gpt-x", reservation_id="j:0", input_tokens=10,
              output_tokens=100)


def test_observer_counts_jobs_calls_tokens_and_spend() -> None:
    reg = CollectorRegistry()
    obs = MetricsObserver(WorkerMetrics(reg), costs={"k1": Cost(input=2.0, output=8.0)})
    spec = JobSpec(prompt="hi", model="gpt-x", priority="batch")
    obs.provider_call(GRANT, 0.3, errors.ProviderRateLimited("429", retry_after=1.0), None)
    obs.job_deferred(spec, 0, "rate_limited")
    obs.job_deferred(spec, 2500, "every key is at its rpm (k1: full; k2: full)")
    obs.provider_call(GRANT, 0.2, None, Usage(input_tokens=1000, output_tokens=500))
    now = time.time()
    obs.job_finished(spec, JobResult(job_id="j", status=JobStatus.succeeded, queued_at=now - 3,
                                     started_at=now - 1, finished_at=now, queue_wait=2.0))
    obs.job_finished(spec, JobResult(job_id="j2", status=JobStatus.failed, error_type="bad_request",
                                     queued_at=now - 1, finished_at=now))
    record_submitted("batch", "gpt-x", "accepted", metrics=obs.metrics)

    assert val(reg, "request_router_attempts_total", key_id="k1") == 2
    assert val(reg, "request_router_rate_limited_total", key_id="k1") == 1
    assert val(reg, "router_provider_errors_total", provider="openai", key_id="k1", error_type="rate_limited") == 1
    assert val(reg, "router_tokens_total", key_id="k1", model="gpt-x", direction="input") == 1000
    assert val(reg, "router_tokens_total", key_id="k1", model="gpt-x", direction="output") == 500
    assert val(reg, "router_spend_usd_total", key_id="k1", model="gpt-x") == pytest.approx(0.006)
    assert val(reg, "router_provider_latency_seconds_count", provider="openai", model="gpt-x") == 2
    assert val(reg, "router_jobs_deferred_total", queue="batch", reason="rate_limited") == 1
    assert val(reg, "router_jobs_deferred_total", queue="batch", reason="capacity") == 1
    assert val(reg, "router_defer_delay_seconds_sum", queue="batch", reason="capacity") == 2.5
    assert val(reg, "router_jobs_completed_total", queue="batch", model="gpt-x", outcome="succeeded") == 1
    assert val(reg, "router_jobs_completed_total", queue="batch", model="gpt-x", outcome="failed") == 1
    assert val(reg, "router_jobs_failed_total", queue="batch", model="gpt-x", error_type="bad_request") == 1
    assert val(reg, "router_queue_wait_seconds_sum", queue="batch") == 2.0
    assert val(reg, "router_job_duration_seconds_sum", queue="batch", outcome="succeeded") == pytest.approx(3.0)
    assert val(reg, "router_jobs_submitted_total", queue="batch", model="gpt-x", outcome="accepted") == 1


@pytest.mark.parametrize("reason, expected", [
    ("rate_limited", "rate_limited"),
    ("transient", "transient"),
    ("booked slot on a full pool", "capacity"),
    ("booked key is at its concurrency limit", "concurrency"),
    ("every key is at its rpm", "capacity"),
    ("no room (gemini-01: cooldown)", "cooldown"),
    ("Something Else entirely, key sk-abc", "other"),
])
def test_deferral_reasons_are_bounded(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected


def test_redis_gauges_queues_dead_letters_and_keys(r: redis.Redis, namespace: str) -> None:
    ks = RedisSchema(namespace)
    broker = StreamsBroker(r, schema=ks)
    import dramatiq

    @dramatiq.actor(broker=broker, queue_name="interactive", actor_name=f"noop_{namespace}")
    def noop() -> None: ...

    for _ in range(3):
        noop.send()
    noop.send_with_options(delay=60_000)
    consumer = broker.consume("interactive", prefetch=1, timeout=100)
    msg = next(m for m in iter(lambda: next(consumer), object()) if m is not None)
    consumer.nack(msg)  # one dead letter
    statuses = [
        {"key_id": "k1", "provider": "openai", "state": "cooldown", "in_flight": 2, "successes_5m": 7,
         "errors_5m": 1, "latency_ewma_ms": 250.0, "quota_group": "proj",
         "limits": [{"unit": "requests", "seconds": 60, "limit": 100, "used": 42},
                    {"unit": "tokens", "seconds": 60, "limit": 10000, "used": 1234}],
         "group": {"name": "proj", "limits": [{"unit": "requests", "seconds": 60, "limit": 500, "used": 50}]}},
        {"key_id": "k2", "provider": "gemini", "state": "active"},
    ]
    settings = Settings(namespace=namespace)
    with MetricsServer(settings, lambda: statuses, client=r, port=0) as server:
        s = samples(urllib.request.urlopen(server.url + "/metrics").read().decode())
    assert s[("router_queue_depth", (("queue", "interactive"),))] == 2
    assert s[("router_queue_delayed", (("queue", "interactive"),))] == 1
    assert s[("router_queue_dead_letters", (("queue", "interactive"),))] == 1
    assert s[("router_queue_in_flight", (("queue", "interactive"),))] == 0
    assert s[("key_rpm_used", (("key_id", "k1"),))] == 42
    assert s[("key_tpm_used", (("key_id", "k1"),))] == 1234
    assert s[("key_cooldown", (("key_id", "k1"),))] == 1
    assert s[("key_cooldown", (("key_id", "k2"),))] == 0
    assert s[("key_state", (("key_id", "k1"), ("state", "cooldown")))] == 1
    assert s[("key_state", (("key_id", "k1"), ("state", "active")))] == 0
    assert s[("key_in_flight", (("key_id", "k1"),))] == 2
    assert s[("key_recent_calls", (("key_id", "k1"), ("outcome", "error")))] == 1
    assert s[("key_latency_ewma_seconds", (("key_id", "k1"),))] == 0.25
    assert s[("key_window_limit", (("key_id", "k1"), ("unit", "tokens"), ("window_seconds", "60")))] == 10000
    assert s[("quota_group_window_used", (("quota_group", "proj"), ("unit", "requests"), ("window_seconds", "60")))] == 50
    assert s[("router_redis_up", ())] == 1


def test_readyz_needs_redis_and_a_recent_worker_heartbeat(r: redis.Redis, namespace: str) -> None:
    ks = RedisSchema(namespace)
    settings = Settings(namespace=namespace, visibility_timeout_ms=5000)
    with MetricsServer(settings, client=r, port=0) as server:
        r.hset(ks.consumers(), "old-worker", str(time.time() - 3600))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/readyz")
        assert info.value.code == 503 and json.loads(info.value.read())["ready"] is False
        r.hset(ks.consumers(), "live-worker", str(time.time()))
        body = json.loads(urllib.request.urlopen(server.url + "/readyz").read())
        assert body == {"ready": True, "redis": "ok", "workers": 1}
        assert urllib.request.urlopen(server.url + "/healthz").status == 200


def test_redis_down_reports_up_zero_and_not_ready() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with MetricsServer(Settings(), client=dead, port=0) as server:
        s = samples(urllib.request.urlopen(server.url + "/metrics").read().decode())
        assert s[("router_redis_up", ())] == 0
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/readyz")
        assert info.value.code == 503 and json.loads(info.value.read())["redis"] == "down"


CHILD = """
from router_jobs.observability.metrics import MetricsObserver, WorkerMetrics
from router_jobs.models import Usage
from router_jobs.capacity.pool import Grant
m = WorkerMetrics(None)
g = Grant(key_id="k1", provider="fake", model="m", reservation_id="r", input_tokens=1, output_tokens=1)
MetricsObserver(m).provider_call(g, 0.1, None, Usage(input_tokens=5, output_tokens=1))
m.in_progress.labels("interactive").inc()
"""


def test_multiprocess_folder_adds_processes_up_and_forgets_dead_live_gauges(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": os.getcwd()}
    for _ in range(3):
        subprocess.run([sys.executable, "-c", CHILD], env=env, check=True)
    with MetricsServer(Settings(), redis_gauges=False, multiproc_dir=folder, reap=False, port=0) as server:
        s = samples(urllib.request.urlopen(server.url + "/metrics").read().decode())
    assert s[("request_router_attempts_total", (("key_id", "k1"),))] == 3
    assert s[("router_tokens_total", (("direction", "input"), ("key_id", "k1"), ("model", "m")))] == 15
    assert s[("router_worker_jobs_in_progress", (("queue", "interactive"),))] == 3
    # the three children are gone: their live gauges are forgotten, their counters stay
    assert len(reap_dead_processes(folder)) == 3
    with MetricsServer(Settings(), redis_gauges=False, multiproc_dir=folder, port=0) as server:
        s = samples(urllib.request.urlopen(server.url + "/metrics").read().decode())
    assert ("router_worker_jobs_in_progress", (("queue", "interactive"),)) not in s
    assert s[("request_router_attempts_total", (("key_id", "k1"),))] == 3


def test_exported_names_follow_prometheus_suffix_rules() -> None:
    names = exported_metric_names()
    for n in ("request_router_attempts_total", "request_router_rate_limited_total", "key_rpm_used",
              "key_tpm_used", "key_cooldown", "router_provider_latency_seconds_bucket",
              "router_queue_wait_seconds_count", "router_job_duration_seconds_sum"):
        assert n in names
    assert "request_router_attempts" not in names
