"""How late a short Dramatiq retry runs: ``raise Retry(delay=100)``, then time until the retry starts.

Ours: the Streams broker, whose parking process promotes the message at its due time.
Compared with: the same broker with that hint turned off (promotion on the consumers' own
tick, at least every 200 ms), in the same run. One in-process Dramatiq worker, 2 threads.

    python benchmarks/retry_delay.py [--trials 40] [--delay 100]
"""

from __future__ import annotations

import argparse
import threading
import time

import _common
import dramatiq
import redis
from dramatiq import Worker
from dramatiq.errors import Retry

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import StreamsBroker


def lateness(url: str, trials: int, delay: int, hint: bool) -> list[float]:
    """ms between the due time of each retry and the retry's start."""
    broker = StreamsBroker(redis.Redis.from_url(url), schema=RedisSchema(f"rd-{hint}"))
    if not hint:
        broker.promoter.due_in = lambda queue, delay_ms: None  # type: ignore[method-assign]
    dramatiq.set_broker(broker)
    failed_at: dict[int, float] = {}
    late: list[float] = []
    done = threading.Semaphore(0)

    @dramatiq.actor(queue_name="interactive", max_retries=3)
    def flaky(i: int) -> None:
        now = time.perf_counter()
        if i not in failed_at:
            failed_at[i] = now
            raise Retry(delay=delay)
        late.append((now - failed_at[i]) * 1000 - delay)
        done.release()

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for i in range(trials):
            flaky.send(i)
            if not done.acquire(timeout=10):
                raise RuntimeError("a retry did not run")
            time.sleep(0.05)
    finally:
        worker.stop()
        broker.close()
    return late


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--delay", type=int, default=100)
    args = ap.parse_args()
    server = _common.RedisServer()
    try:
        ours = lateness(server.url, args.trials, args.delay, hint=True)
        tick = lateness(server.url, args.trials, args.delay, hint=False)
    finally:
        server.stop()
    p = _common.percentile
    print(f"retry delay {args.delay} ms, {args.trials} trials each: how late the retry started")
    print(f"promoted at the due time : p50 {p(ours, 50):6.1f} ms  max {max(ours):6.1f} ms")
    print(f"promoted on the tick     : p50 {p(tick, 50):6.1f} ms  max {max(tick):6.1f} ms")


if __name__ == "__main__":
    main()
