"""Throughput of the conversation, submit-limit and budget steps, next to a plain round trip.

Run from the repository root:  python -m benchmarks.bench_convs_limits [--n 5000]
Starts a private redis-server; prints operations per second of each step and of PING/INCR
measured the same way, so the figures can be compared on any machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import redis

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.schema import RedisSchema
from router_jobs.conversations.store import ConversationStore
from router_jobs.models import ChatMessage
from router_jobs.settings import Settings
from tests.redis_server import RedisServer


def rate(n: int, step: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - start)


def one_turn(store: ConversationStore) -> None:
    seq = store.next_turn_seq("t")
    assert store.turn_gate("t", seq)
    store.finish_turn("t", seq)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n
    server = RedisServer()
    try:
        r = redis.Redis.from_url(server.url)
        ks = RedisSchema("bench")
        store = ConversationStore(r, ks)
        limiter = UserLimiter(r, ks, Settings(user_rpm_default=1e9, user_burst_default=1e9,
                                              global_rpm_max=1e9, global_burst_max=1e9))
        budgets = Budgets(r, ks)
        q, a = ChatMessage(role="user", content="q" * 200), ChatMessage(role="assistant", content="a" * 400)
        rows = [
            ("PING (comparison)", lambda i: r.ping()),
            ("INCR (comparison)", lambda i: r.incr("bench:x")),
            ("limiter.acquire(user)", lambda i: limiter.acquire(f"u{i % 50}")),
            ("store.append_turn", lambda i: store.append_turn(f"c{i % 50}", [q], a, tokens=10, model="m",
                                                                key_id="k", provider="fake", job_id=f"j{i}")),
            ("store.history(limit=20)", lambda i: store.history(f"c{i % 50}", limit=20)),
            ("turn: seq + gate + finish", lambda i: one_turn(store)),
            ("budgets.check(user,key)", lambda i: budgets.check("alice", "k1", 0.01)),
            ("budgets.record", lambda i: budgets.record("k1", "m", "alice", 0.001)),
        ]
        for name, step in rows:
            rate(min(n, 500), step)  # warm up (script loading, connections)
            print(f"{name:28s} {rate(n, step):10.0f} ops/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
