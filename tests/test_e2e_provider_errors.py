"""The worker's reaction to each provider error class, through the real OpenAI SDK against
the fake OpenAI server and real worker processes; and a canary scan for leaked secrets."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fakeproviders import FakeProviderServer
from router_jobs.client.router import Router
from router_jobs.errors import JobFailed
from router_jobs.observability.exporter import MetricsServer
from router_jobs.settings import Settings
from tests.workerpool import WorkerPool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CANARY = {"oa-1": "sk-canary-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e", "oa-2": "sk-canary-2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f0a"}
MODEL = "gpt-4o-mini"


class System:
    """One fake OpenAI server, two keys, a worker pool, a router and a metrics server."""

    def __init__(self, redis_url: str, folder: Path) -> None:
        self.server = FakeProviderServer("openai", keys=CANARY)
        base_url = self.server.start()
        keys = {"keys": [{"key_id": k, "model_name": MODEL, "provider": "openai", "base_url": base_url,
                          "rpm": 1000, "active": True} for k in CANARY]}
        (folder / "keys.json").write_text(json.dumps(keys))
        self.env = {
            "REDIS_URL": redis_url, "ROUTER_NAMESPACE": "perr", "ROUTER_KEYS_FILE": str(folder / "keys.json"),
            "ROUTER_MAX_ATTEMPTS": "3", "ROUTER_LOG_JSON": "1", "SECRET_STORE_TYPE": "env",
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "prom"), "ROUTER_VISIBILITY_TIMEOUT_MS": "3000",
            "API_KEY_OA_1": CANARY["oa-1"], "API_KEY_OA_2": CANARY["oa-2"],
        }
        self.settings = Settings.from_env(self.env)
        self.router = Router(self.settings)
        self.pool = WorkerPool(self.env, processes=2, threads=4)
        self.pool.wait_consuming(redis_url, "perr")

    def close(self) -> None:
        self.pool.stop()
        self.router.close()
        self.server.stop()


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    s = System(redis_url, tmp_path_factory.mktemp("perr"))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def healthy_keys(system: System) -> None:
    for k in CANARY:
        system.router.pool.clear(k)


def run_one(system: System, first: list[str], prompt: str = "hello") -> tuple[object, list[object]]:
    """Script the next requests (whatever key they use), run one job, return result and requests."""
    before = len(system.server.received())
    system.server.script("*", first)
    job = system.router.submit(prompt, model=MODEL)
    try:
        result: object = system.router.await_result(job, timeout=60)
    except JobFailed as exc:
        result = exc
    return result, system.server.received()[before:]


def test_rate_limit_cools_the_key_down_for_the_hinted_time_and_reroutes(system: System) -> None:
    result, reqs = run_one(system, ["rate_limit_requests?retry_after_ms=4000"])
    assert [r.status for r in reqs] == [429, 200]
    assert reqs[0].key != reqs[1].key  # the job moved to the other key at once
    status = system.router.pool.key_status(reqs[0].key)
    assert status["state"] == "cooldown"
    assert 2.0 < status["until"] - time.time() <= 4.5
    assert getattr(result, "key_id", None) == reqs[1].key


def test_invalid_key_is_taken_out_and_job_rerouted(system: System) -> None:
    result, reqs = run_one(system, ["invalid_key"])
    assert [r.status for r in reqs] == [401, 200]
    assert system.router.pool.key_status(reqs[0].key)["state"] == "invalid"
    assert getattr(result, "ok", False)


def test_quota_exhausted_key_waits_for_its_reset(system: System) -> None:
    result, reqs = run_one(system, ["quota"])
    assert [r.status for r in reqs] == [429, 200]
    status = system.router.pool.key_status(reqs[0].key)
    assert status["state"] == "exhausted" and status["until"] > time.time() + 60
    assert getattr(result, "ok", False)


def test_context_length_fails_at_once_with_the_reason(system: System) -> None:
    result, reqs = run_one(system, ["context_length"])
    assert len(reqs) == 1  # no retry: it can never fit
    assert isinstance(result, JobFailed) and result.error_type == "request_too_large"
    assert "context length" in result.error_message


def test_transient_errors_are_retried_a_bounded_number_of_times(system: System) -> None:
    result, reqs = run_one(system, ["server_error"] * 3)
    assert [r.status for r in reqs] == [500, 500, 500]
    assert isinstance(result, JobFailed) and result.error_type == "transient"
    assert "gave up after 3 attempts" in result.error_message


def test_overloaded_provider_is_retried_with_backoff(system: System) -> None:
    result, reqs = run_one(system, ["overloaded"])
    assert [r.status for r in reqs] == [503, 200]
    assert getattr(result, "attempts", 0) == 2


def _dump_redis(client: redis.Redis) -> bytes:
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out.extend(b for kv in client.hgetall(key).items() for b in kv)
        elif kind == "list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            out.extend(client.smembers(key))
        elif kind == "zset":
            out.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            for _id, fields in client.xrange(key):
                out.extend(b for kv in fields.items() for b in kv)
    return b"\n".join(out)


def test_canary_secrets_never_leak(system: System, redis_url: str) -> None:
    # a batch with every kind of failure mixed in; the 401 (whose body echoes the presented
    # key) and the quota error take oa-1 out, so oa-2 serves the rest and gets the others
    system.server.script("oa-1", ["ok", "invalid_key"])
    system.server.script("oa-2", ["rate_limit_tokens", "server_error", "context_length", "ok", "server_error",
                                  "context_length"] * 3)
    jobs = [system.router.submit(f"batch prompt {i}", model=MODEL, priority="batch") for i in range(60)]
    results = list(system.router.as_completed(jobs, timeout=120))
    assert len(results) == 60
    metrics = MetricsServer(system.settings, system.router.pool.key_statuses, client=system.router.client, port=0)
    metrics.start()
    try:
        scraped = urllib.request.urlopen(metrics.url + "/metrics", timeout=10).read()
    finally:
        metrics.stop()
    artifacts = {
        "redis": _dump_redis(redis.Redis.from_url(redis_url)),
        "worker logs": system.pool.output().encode(),
        "results": json.dumps([r.model_dump() for r in results]).encode(),
        "metrics": scraped,
    }
    # the artifacts really carry the failures (so finding no secret in them means something)
    assert b"key_invalid on key oa-" in artifacts["worker logs"]
    assert b"Incorrect API key provided" in artifacts["worker logs"]
    assert any(r.error_type == "request_too_large" for r in results)
    assert b"router_provider_errors_total" in artifacts["metrics"]
    for name, blob in artifacts.items():
        for secret in CANARY.values():
            assert secret.encode() not in blob, f"a canary secret leaked into {name}"
            assert secret[-12:].encode() not in blob, f"part of a canary secret leaked into {name}"
