"""Submit -> result overhead with an idle worker and a zero-latency fake provider.

Ours: ``Router.submit`` then ``Router.await_result`` through a real ``routerctl worker`` pool
(Streams broker, job record, key reservation, fake provider, result, pub/sub wake-up).
Compared with: the same no-op round trip (enqueue -> actor -> reply) through Dramatiq's stock
RedisBroker, whose idle consumers poll with back-off. Sequential requests, idle pool.

    python benchmarks/latency.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _common
import redis


def ours(url: str, n: int) -> list[float]:
    keys = Path(tempfile.mkdtemp()) / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key_id": "lat-1", "model_name": "fake-model", "provider": "fake"}]}))
    env = {"REDIS_URL": url, "ROUTER_NAMESPACE": "lat", "ROUTER_KEYS_FILE": str(keys), "API_KEY_LAT_1": "x"}
    os.environ.update(env)
    from router_jobs.client.router import Router
    from tests.workerpool import WorkerPool

    router = Router.from_env()
    with WorkerPool(env, processes=1, threads=4):
        router.await_result(router.submit("warm up", model="fake-model"), timeout=60)
        out = []
        for i in range(n):
            time.sleep(0.25)  # let the worker go idle again
            t = time.perf_counter()
            router.await_result(router.submit(f"p{i}", model="fake-model", max_output_tokens=16), timeout=30)
            out.append(time.perf_counter() - t)
    router.close()
    return out


def stock(url: str, n: int) -> list[float]:
    env = {"BENCH_BROKER": "dramatiq", "BENCH_REDIS_URL": url, "BENCH_NS": "lat-stock"}
    os.environ.update(env)
    import bench_actors

    client = redis.Redis.from_url(url)
    pool = _common.start_pool("benchmarks.bench_actors", env, 1, 4)
    try:
        bench_actors.noop.send(reply_to="lat-stock:ready")
        _common.wait_ready(client, "lat-stock:ready")
        out = []
        for i in range(n):
            time.sleep(0.25)  # idle, as between the interactive requests of an agent
            t = time.perf_counter()
            bench_actors.noop.send(reply_to=f"lat-stock:r{i}")
            client.blpop([f"lat-stock:r{i}"], timeout=30)
            out.append(time.perf_counter() - t)
        return out
    finally:
        _common.stop_pool(pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    server = _common.RedisServer()
    try:
        a = ours(server.url, args.requests)
        b = stock(server.url, min(args.requests, 60))
    finally:
        server.stop()
    p = _common.percentile
    print(f"requests={args.requests} (stock broker: {min(args.requests, 60)}), idle pool, 1 process x 4 threads")
    print(f"router-jobs submit->result : p50 {p(a, 50) * 1000:7.1f} ms   p99 {p(a, 99) * 1000:7.1f} ms"
          "   (aim: p50 <= 5 ms, p99 <= 20 ms)")
    print(f"dramatiq RedisBroker no-op : p50 {p(b, 50) * 1000:7.1f} ms   p99 {p(b, 99) * 1000:7.1f} ms")
    print(f"ratio stock/ours at p50    : {p(b, 50) / p(a, 50):7.1f}x")


if __name__ == "__main__":
    main()
