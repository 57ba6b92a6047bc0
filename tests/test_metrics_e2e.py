"""Real worker processes feed metrics through the multiprocess folder; one exporter serves them."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from router_jobs.client.router import Router
from router_jobs.errors import JobExpired, JobFailed
from router_jobs.observability.exporter import MetricsServer
from router_jobs.settings import Settings
from tests.support import Samples, metric_samples, metric_total
from tests.workerpool import WorkerPool, fake_key, write_keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def scrape(url: str) -> Samples:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    return metric_samples(urllib.request.urlopen(url + "/metrics", timeout=10).read().decode())


def scrape_when_up(url: str, timeout: float = 20.0) -> Samples:
    """:func:`scrape` once the exporter listens (a pool starts its fork after its workers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(url)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


total = metric_total


@pytest.fixture
def setup(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], Settings]]:
    keys = write_keys([fake_key("fake-1", rpm=100000, cost={"input": 1.0, "output": 2.0}),
                       fake_key("fake-2", rpm=100000, cost={"input": 1.0, "output": 2.0})])
    folder = tmp_path / "prom"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fork_port = sock.getsockname()[1]
    sock.close()
    env = {
        "REDIS_URL": redis_url,
        "ROUTER_NAMESPACE": namespace,
        "ROUTER_KEYS_FILE": str(keys),
        "ROUTER_VISIBILITY_TIMEOUT_MS": "1500",
        "ROUTER_MAX_ATTEMPTS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "ROUTER_WORKER_METRICS_PORT": str(fork_port),
        "API_KEY_FAKE_1": "fake-secret-value-1",
        "API_KEY_FAKE_2": "fake-secret-value-2",
    }
    yield env, Settings.from_env(env)


def test_workers_metrics_match_what_happened(setup: tuple[dict[str, str], Settings]) -> None:
    env, settings = setup
    router = Router(settings, keys=None)
    client = router.client
    server = MetricsServer(settings, router.pool.key_statuses,
                           client=client, port=0)
    server.start()
    try:
        # before any worker: Redis answers, but nobody consumes
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(server.url + "/readyz", timeout=5)
        assert not_ready.value.code == 503
        assert "no worker heartbeat" in json.loads(not_ready.value.read())["reason"]
        assert urllib.request.urlopen(server.url + "/healthz", timeout=5).status == 200

        ok = [router.submit(f"hello {i}", model="fake-model", priority="batch" if i % 2 else "interactive")
              for i in range(10)]
        bad = router.submit("refuse me [[fail:bad_request]]", model="fake-model")
        # 429s cost no attempt: this job keeps waiting for a key until its deadline
        limited = router.submit("slow down [[fail:rate_limited]]", model="fake-model", deadline=time.time() + 8)
        with WorkerPool(env, processes=2, threads=2) as pool:
            results = list(router.as_completed(ok, timeout=60))
            with pytest.raises(JobFailed):
                router.await_result(bad, timeout=60)
            with pytest.raises(JobExpired):
                router.await_result(limited, timeout=60)
            deadline = time.monotonic() + 20
            while True:  # first heartbeat comes a third of a visibility timeout after start
                try:
                    ready = urllib.request.urlopen(server.url + "/readyz", timeout=5)
                    break
                except urllib.error.HTTPError:
                    if time.monotonic() > deadline:
                        raise AssertionError(pool.output()[-2000:]) from None
                    time.sleep(0.2)
            assert json.loads(ready.read())["workers"] >= 1
            s = scrape(server.url)
            # the pool's own exporter (a Dramatiq fork) adds up the same worker processes
            pool_side = scrape_when_up(f"http://127.0.0.1:{settings.worker_metrics_port}")
            assert total(pool_side, "router_jobs_completed_total") == 12
            assert total(pool_side, "router_redis_up") == 0  # worker exporter: no Redis gauges
        assert all(r.ok for r in results)
        in_tokens = sum(r.usage.input_tokens for r in results)
        out_tokens = sum(r.usage.output_tokens for r in results)

        assert total(s, "router_jobs_completed_total", outcome="succeeded") == 10
        assert total(s, "router_jobs_completed_total", outcome="succeeded", queue="batch") == 5
        assert total(s, "router_jobs_completed_total", outcome="failed") == 1
        assert total(s, "router_jobs_completed_total", outcome="expired") == 1
        assert total(s, "router_jobs_failed_total", error_type="bad_request", model="fake-model") == 1
        assert total(s, "router_jobs_failed_total", error_type="rate_limited") == 0
        # the rate-limited job was tried more than ROUTER_MAX_ATTEMPTS=2 times (429s are not
        # attempts), back in line after each, until its deadline
        limited_calls = total(s, "request_router_rate_limited_total")
        assert limited_calls > 2
        assert total(s, "router_provider_errors_total", error_type="rate_limited", provider="fake") == limited_calls
        assert total(s, "router_provider_errors_total", error_type="bad_request") == 1
        assert total(s, "router_jobs_deferred_total", reason="rate_limited") == limited_calls
        assert total(s, "request_router_attempts_total") == 10 + 1 + limited_calls
        assert total(s, "router_provider_latency_seconds_count") == 11 + limited_calls
        assert total(s, "router_tokens_total", direction="input") == in_tokens
        assert total(s, "router_tokens_total", direction="output") == out_tokens
        assert total(s, "router_spend_usd_total") == pytest.approx((in_tokens + 2 * out_tokens) / 1e6)
        assert total(s, "router_queue_wait_seconds_count") == 12
        assert total(s, "router_job_duration_seconds_count", outcome="succeeded") == 10
        assert total(s, "router_worker_jobs_in_progress") == 0
        # Redis-derived gauges: everything drained, nothing dead, both workers seen
        for q in ("interactive", "batch"):
            assert total(s, "router_queue_depth", queue=q) == 0
            assert total(s, "router_queue_delayed", queue=q) == 0
            assert total(s, "router_queue_dead_letters", queue=q) == 0
        assert total(s, "router_workers_alive") >= 1
        assert total(s, "router_redis_up") == 1
        assert total(s, "key_rpm_used") == 11 + limited_calls  # one reservation per provider call
        # the 429s put the keys that answered them into a short cooldown (1 s): the gauge
        # shows 1 for a key while it lasts, and there is one series per key
        cooldowns = [v for (name, _labels), v in s.items() if name == "key_cooldown"]
        assert len(cooldowns) == 2 and set(cooldowns) <= {0.0, 1.0}
        # each key has exactly one state; keys not cooling down are active
        states = {dict(labels)["key_id"]: dict(labels)["state"] for (name, labels), v in s.items()
                  if name == "key_state" and v == 1}
        assert set(states) == {"fake-1", "fake-2"}
        assert set(states.values()) <= {"active", "cooldown"}
        # no secret, no job id anywhere in the exposition
        text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
        assert "fake-secret-value" not in text and ok[0].job_id not in text
    finally:
        server.stop()
        router.close()
