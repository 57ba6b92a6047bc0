"""Worker memory with 100,000 delayed jobs: ours keeps them in Redis, not in the worker.

Starts one worker process on each broker, parks N delayed no-op messages (due in 10 min),
and prints each worker process's RSS before and after. Dramatiq's stock RedisBroker moves
delayed messages into worker memory (up to 1,000 per thread); ours leaves them in a sorted
set in Redis.

    python benchmarks/delayed_memory.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

import _common
import psutil
import redis


def rss_of_workers(pool) -> int:  # type: ignore[no-untyped-def]
    kids = psutil.Process(pool.pid).children(recursive=True)
    return sum(p.memory_info().rss for p in kids)


def run(kind: str, url: str, n: int) -> tuple[int, int]:
    ns = f"mem-{kind}"
    env = {"BENCH_BROKER": kind, "BENCH_REDIS_URL": url, "BENCH_NS": ns}
    os.environ.update(env)
    import bench_actors

    mod = importlib.reload(bench_actors)
    client = redis.Redis.from_url(url)
    pool = _common.start_pool("benchmarks.bench_actors", env, 1, 8)
    try:
        mod.noop.send(reply_to=f"{ns}:ready")
        _common.wait_ready(client, f"{ns}:ready")
        time.sleep(1.0)
        before = rss_of_workers(pool)
        for _ in range(n):
            mod.noop.send_with_options(delay=600_000)
        time.sleep(8.0)  # give the consumers time to fetch whatever they fetch
        after = rss_of_workers(pool)
        return before, after
    finally:
        _common.stop_pool(pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    server = _common.RedisServer()
    try:
        ob, oa = run("streams", server.url, args.messages)
        sb, sa = run("dramatiq", server.url, args.messages)
    finally:
        server.stop()
    mb = 1024 * 1024
    print(f"{args.messages} delayed messages, 1 worker process x 8 threads")
    print(f"router-jobs StreamsBroker : RSS {ob / mb:7.1f} MB -> {oa / mb:7.1f} MB  (+{(oa - ob) / mb:.1f} MB)")
    print(f"dramatiq RedisBroker      : RSS {sb / mb:7.1f} MB -> {sa / mb:7.1f} MB  (+{(sa - sb) / mb:.1f} MB)")


if __name__ == "__main__":
    main()
