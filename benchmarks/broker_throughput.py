"""No-op messages per second through our Streams broker and Dramatiq's stock RedisBroker.

Same actor, same worker processes and threads, same private redis-server; each broker gets
the same burst of messages sent by the same producer threads while its pool is already up,
and the clock runs from the first send until the actor has counted the last one.

    python benchmarks/broker_throughput.py [--messages 20000] [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import _common
import redis


def run(kind: str, url: str, messages: int, processes: int, threads: int, producers: int) -> float:
    ns = f"tp-{kind}-{time.time_ns()}"
    env = {"BENCH_BROKER": kind, "BENCH_REDIS_URL": url, "BENCH_NS": ns}
    os.environ.update(env)
    import importlib

    import bench_actors  # noqa: F401

    mod = importlib.reload(bench_actors)
    client = redis.Redis.from_url(url)
    pool = _common.start_pool("benchmarks.bench_actors", env, processes, threads)
    try:
        mod.noop.send(reply_to=f"{ns}:ready")
        _common.wait_ready(client, f"{ns}:ready")
        client.delete(f"{ns}:count")
        per = messages // producers

        def produce() -> None:
            for _ in range(per):
                mod.noop.send()

        started = time.perf_counter()
        ts = [threading.Thread(target=produce) for _ in range(producers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        total = per * producers
        while int(client.get(f"{ns}:count") or 0) < total:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        return total / elapsed
    finally:
        _common.stop_pool(pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    server = _common.RedisServer()
    try:
        ours: list[float] = []
        stock: list[float] = []
        for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits both
            ours.append(run("streams", server.url, args.messages, args.processes, args.threads, args.producers))
            stock.append(run("dramatiq", server.url, args.messages, args.processes, args.threads, args.producers))
        o, s = max(ours), max(stock)
        paired = [a / b for a, b in zip(ours, stock, strict=True)]
        print(f"messages={args.messages} processes={args.processes} threads={args.threads} producers={args.producers}")
        print(f"router-jobs StreamsBroker : {o:8.0f} msg/s best  (rounds: {', '.join(f'{x:.0f}' for x in ours)})")
        print(f"dramatiq RedisBroker      : {s:8.0f} msg/s best  (rounds: {', '.join(f'{x:.0f}' for x in stock)})")
        print(f"ratio ours/stock, paired  : {sum(paired) / len(paired):8.2f}x mean  "
              f"(rounds: {', '.join(f'{x:.2f}' for x in paired)}; best/best {o / s:.2f}x; aim >= 1.3x)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
