"""Exactness of RedisKeyPool under contention, skewed client clocks, restarts and Redis Cluster."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from router_jobs.backend.connection import connect
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.pool import Grant, ReserveRequest, Wait
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.models import Usage
from tests.redis_server import RedisServer, free_port

THREADS_PER_PROCESS = 32
PROCESSES = 2


def _hammer(url: str, namespace: str, tag: str, weights: list[int], out: Any) -> None:
    """One process: THREADS_PER_PROCESS threads, each reserving once with its weight."""
    client = redis.Redis.from_url(url)
    pool = RedisKeyPool(client, RedisSchema(namespace))
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(weights))

    def one(i: int, w: int) -> None:
        start.wait()
        res = pool.reserve(ReserveRequest(f"{tag}-{i}", ["m"], w, 0))
        with lock:
            results.append(("g" if isinstance(res, Grant) else "w", w, getattr(res, "key_id", "")))

    threads = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate(weights)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def run_contention(redis_url: str, namespace: str, weights: list[int]) -> list[tuple[str, int, str]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = len(weights) // PROCESSES
    procs = [
        ctx.Process(target=_hammer, args=(redis_url, namespace, f"p{p}", weights[p * per:(p + 1) * per], q))
        for p in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results: list[tuple[str, int, str]] = []
    for _ in procs:
        results += q.get(timeout=60)
    for p in procs:
        p.join(10)
    return results


def load(r: redis.Redis, namespace: str, keys: list[dict[str, Any]], groups: list[dict[str, Any]] | None = None,
         ) -> RedisKeyPool:
    return RedisKeyPool(r, RedisSchema(namespace), parse_keys({"keys": keys, "quota_groups": groups or []}),
                        margin_ms=0)


def stamps(r: redis.Redis, namespace: str, scope: str, ms: int) -> list[tuple[int, int]]:
    """(stamp, tokens) of every live entry of a scope's log, in time order."""
    prefix = f"{scope}\x1f{ms}\x1f"
    out = []
    for m in r.zrangebylex(RedisSchema(namespace).pool_log("default"), "[" + prefix, "(" + prefix + "\xff"):
        text = m.decode()
        out.append((int(text[len(prefix):len(prefix) + 15]), int(text.rsplit("\x1f", 1)[1].split(",")[1])))
    return out


def max_in_any_window(entries: list[tuple[int, int]], ms: int, weighted: bool = False) -> int:
    best = 0
    for i, (t0, _) in enumerate(entries):
        total = sum((w if weighted else 1) for t, w in entries[i:] if t < t0 + ms)
        best = max(best, total)
    return best


def test_rpm_exact_under_contention(redis_url: str, r: redis.Redis, namespace: str) -> None:
    load(r, namespace, [{"key_id": "a", "model_name": "m", "provider": "fake", "rpm": 5}])
    results = run_contention(redis_url, namespace, [1] * (THREADS_PER_PROCESS * PROCESSES))
    assert sum(1 for kind, _, _ in results if kind == "g") == 5
    log = stamps(r, namespace, "k:a", 60000)
    assert len(log) == 64  # 5 granted + 59 booked slots, each in its own place
    assert max_in_any_window(log, 60000) == 5


def test_tpm_exact_with_weighted_costs(redis_url: str, r: redis.Redis, namespace: str) -> None:
    load(r, namespace, [{"key_id": "a", "model_name": "m", "provider": "fake", "tpm": 1000}])
    rng = random.Random(7)
    weights = [rng.randint(20, 200) for _ in range(THREADS_PER_PROCESS * PROCESSES)]
    results = run_contention(redis_url, namespace, weights)
    granted = sum(w for kind, w, _ in results if kind == "g")
    assert 1000 - 200 < granted <= 1000  # full to within one request, never over
    assert max_in_any_window(stamps(r, namespace, "k:a", 60000), 60000, weighted=True) <= 1000


def test_quota_group_exact_under_contention(redis_url: str, r: redis.Redis, namespace: str) -> None:
    load(
        r, namespace,
        [{"key_id": k, "model_name": "m", "provider": "fake", "quota_group": "proj", "rpm": 50} for k in "ab"],
        groups=[{"name": "proj", "rpm": 7}],
    )
    results = run_contention(redis_url, namespace, [1] * (THREADS_PER_PROCESS * PROCESSES))
    got = [k for kind, _, k in results if kind == "g"]
    assert len(got) == 7 and set(got) == {"a", "b"}
    assert max_in_any_window(stamps(r, namespace, "g:proj", 60000), 60000) == 7


@pytest.mark.parametrize("skews", [(30.0, -30.0), (-30.0, 30.0)])
def test_skewed_client_clocks_admit_the_same(r: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch,
                                             skews: tuple[float, float]) -> None:
    pool = load(r, namespace, [{"key_id": "a", "model_name": "m", "provider": "fake", "rpm": 5}])
    real = time.time
    got = 0
    for i, skew in enumerate(skews * 4):
        monkeypatch.setattr(time, "time", lambda s=skew: real() + s)
        got += isinstance(pool.reserve(ReserveRequest(f"r{i}", ["m"], 1, 1)), Grant)
    assert got == 5


def test_redis_restart_is_survived(tmp_path: Any, namespace: str) -> None:
    port = free_port()
    server = RedisServer(port=port, appendonly=True, data_dir=tmp_path)
    try:
        client = connect(server.url)
        pool = load(client, namespace, [{"key_id": "a", "model_name": "m", "provider": "fake", "rpm": 5}])
        first = [pool.reserve(ReserveRequest(uuid.uuid4().hex, ["m"], 1, 1)) for _ in range(3)]
        assert all(isinstance(g, Grant) for g in first)
        server.stop()
        server = RedisServer(port=port, appendonly=True, data_dir=tmp_path)
        after = [pool.reserve(ReserveRequest(uuid.uuid4().hex, ["m"], 1, 1)) for _ in range(4)]
        assert [isinstance(x, Grant) for x in after] == [True, True, False, False]
        g = first[0]
        assert isinstance(g, Grant)
        pool.settle(g, Usage(input_tokens=1, output_tokens=1))
    finally:
        server.stop()


def test_redis_cluster_runs_every_script(cluster: RedisCluster, namespace: str) -> None:
    rc = cluster
    kf = parse_keys({
        "keys": [{"key_id": "a", "model_name": "m", "models": ["m2"], "provider": "fake", "rpm": 3,
                  "quota_group": "proj", "max_concurrency": 5},
                 {"key_id": "b", "model_name": "m2", "provider": "fake", "tpm": 1000}],
        "quota_groups": [{"name": "proj", "rpd": 100}],
    })
    pool = RedisKeyPool(rc, RedisSchema(namespace), kf)  # type: ignore[arg-type]
    out = [pool.reserve(ReserveRequest(f"r{i}", ["m", "m2"], 10, 10)) for i in range(6)]
    grants = [g for g in out if isinstance(g, Grant)]
    assert len(grants) == 6 and {g.key_id for g in grants} == {"a", "b"}
    for g in grants:
        pool.settle(g, Usage(input_tokens=5, output_tokens=5))
    w = pool.reserve(ReserveRequest("w", ["m"], 1, 1))
    assert isinstance(w, Wait) and w.retryable
    assert pool.release("w")
    pool.cooldown("b", 5)
    pool.report_success(grants[0], latency=0.1, rate_limit=None)
    statuses = pool.key_statuses()
    assert [s["state"] for s in statuses] == ["active", "cooldown"]
    assert json.dumps(statuses)
