"""Per-user and global token buckets against a real Redis, under many concurrent producers."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time

import pytest
import redis

from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import SubmitRateLimited
from router_jobs.settings import Settings

#: a refill so slow that nothing refills while a test runs (about one token per 700 days)
FROZEN = 1e-6


def limiter(r: redis.Redis, namespace: str, **kw: float) -> UserLimiter:
    values = {"user_rpm_default": FROZEN, "user_burst_default": 20, "global_rpm_max": FROZEN,
              "global_burst_max": 1_000_000}
    values.update(kw)
    return UserLimiter(r, RedisSchema(namespace), Settings(**values))


def hammer_in_child(url: str, namespace: str, settings: dict[str, float], user: str) -> list[tuple[int, float]]:
    """Run in a second process: wait for the go signal, then take until the deadline."""
    client = redis.Redis.from_url(url)
    lim = UserLimiter(client, RedisSchema(namespace), Settings(**settings))
    client.set(f"{namespace}:test:ready", 1)
    while (raw := client.get(f"{namespace}:test:go")) is None:
        time.sleep(0.005)
    deadline = float(raw)
    out: list[tuple[int, float]] = []
    while True:
        d = lim.decide(user)
        out.append((int(d.admitted), d.server_time))
        if d.server_time >= deadline:
            return out


def run_producers(
    r: redis.Redis, redis_url: str, namespace: str, settings: dict[str, float], user: str, seconds: float
) -> list[tuple[int, float]]:
    """32 threads here and one more process hammer one user's bucket until a server-clock deadline."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(hammer_in_child, (redis_url, namespace, settings, user))
        while r.get(f"{namespace}:test:ready") is None:
            if child.ready():
                child.get()
            time.sleep(0.005)
        sec, usec = r.time()
        deadline = sec + usec / 1e6 + seconds
        r.set(f"{namespace}:test:go", repr(deadline))
        lim = UserLimiter(r, RedisSchema(namespace), Settings(**settings))
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def produce() -> None:
            mine: list[tuple[int, float]] = []
            while True:
                d = lim.decide(user)
                mine.append((int(d.admitted), d.server_time))
                if d.server_time >= deadline:
                    break
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=produce) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        from_child = child.get(120)
    assert len(from_child) >= 2  # the second process decided at least once before the deadline
    return results + from_child


def test_burst_admits_exactly_burst_under_contention(r: redis.Redis, redis_url: str, namespace: str) -> None:
    settings = {"user_rpm_default": FROZEN, "user_burst_default": 20, "global_rpm_max": FROZEN,
                "global_burst_max": 1_000_000}
    decisions = run_producers(r, redis_url, namespace, settings, "alice", seconds=1.0)
    assert len(decisions) > 200
    assert sum(a for a, _ in decisions) == 20


def test_refill_admits_exactly_the_rate(r: redis.Redis, redis_url: str, namespace: str) -> None:
    """Replay every decision in server-clock order against the bucket's definition: each
    admission and each refusal is exactly what burst 20 + 600/min allows at that instant."""
    burst, rpm = 20.0, 600.0
    settings = {"user_rpm_default": rpm, "user_burst_default": burst, "global_rpm_max": FROZEN,
                "global_burst_max": 1_000_000}
    decisions = run_producers(r, redis_url, namespace, settings, "alice", seconds=1.5)
    decisions.sort(key=lambda d: (d[1], -d[0]))
    rate = rpm / 60.0
    t0 = decisions[0][1]
    tokens, ts = burst, t0
    admitted = 0
    for ok, t in decisions:
        level = min(burst, tokens + (t - ts) * rate)
        if abs(level - 1.0) > 1e-6:  # a tie at the microsecond boundary may go either way
            assert bool(ok) == (level >= 1.0), (admitted, level)
        if ok:
            tokens, ts = level - 1.0, t
            admitted += 1
    elapsed = decisions[-1][1] - t0
    assert elapsed >= 1.5
    expected = burst + rate * elapsed
    assert expected - 1 - 1e-6 < admitted <= expected + 1e-6
    assert admitted > burst + 10  # the refill really happened (1.5 s at 10/s)


def test_both_or_neither_when_global_refuses(r: redis.Redis, namespace: str) -> None:
    lim = limiter(r, namespace, user_burst_default=5, global_burst_max=3)
    assert [lim.acquire("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    d = lim.decide("alice")
    assert not d.admitted and d.scope == "global" and d.retry_after > 0
    peek = lim.peek("alice")
    assert peek["user"]["tokens"] == pytest.approx(2.0, abs=1e-3)  # the refusal charged nothing
    assert peek["global"]["tokens"] == pytest.approx(0.0, abs=1e-3)


def test_both_or_neither_when_user_refuses(r: redis.Redis, namespace: str) -> None:
    lim = limiter(r, namespace, user_burst_default=1, global_burst_max=100)
    assert lim.acquire("alice") == 0.0
    d = lim.decide("alice")
    assert not d.admitted and d.scope == "user"
    assert lim.peek()["global"]["tokens"] == pytest.approx(99.0, abs=1e-3)
    assert lim.acquire("bob") == 0.0  # another user has their own bucket
    assert lim.acquire(None) == 0.0  # no user: global bucket only
    assert lim.peek()["global"]["tokens"] == pytest.approx(97.0, abs=1e-3)


def test_per_user_override(r: redis.Redis, namespace: str) -> None:
    lim = limiter(r, namespace)
    lim.set_user_limit("bob", rpm=FROZEN, burst=3)
    assert lim.get_user_limit("bob") == (FROZEN, 3.0)
    assert sum(lim.acquire("bob") == 0.0 for _ in range(10)) == 3
    assert sum(lim.acquire("carol") == 0.0 for _ in range(30)) == 20
    other = limiter(r, namespace)  # another producer sees the override at once
    assert other.peek("bob")["user"]["burst"] == 3.0 and other.peek("bob")["user"]["override"]
    assert lim.user_limits() == {"bob": (FROZEN, 3.0)}
    lim.set_user_limit("dave", rpm=FROZEN, burst=50)
    assert sum(lim.acquire("dave") == 0.0 for _ in range(60)) == 50
    assert lim.clear_user_limit("bob") and not lim.clear_user_limit("bob")
    assert lim.peek("bob")["user"]["burst"] == 20.0


def test_retry_after_and_typed_error(r: redis.Redis, namespace: str) -> None:
    lim = limiter(r, namespace, user_rpm_default=60, user_burst_default=2)
    assert lim.acquire("alice", cost=2) == 0.0
    wait = lim.acquire("alice")
    assert 0.0 < wait <= 1.0  # one token per second
    with pytest.raises(SubmitRateLimited) as err:
        lim.check("alice")
    assert err.value.scope == "user alice" and 0.0 < err.value.retry_after <= 1.0
    assert lim.acquire("alice", cost=3) == math.inf  # more than the burst can ever hold
    assert lim.check_rate_limit("zoe") is True


def test_buckets_expire_once_full_again(r: redis.Redis, namespace: str) -> None:
    lim = limiter(r, namespace, user_rpm_default=60, user_burst_default=2)
    lim.acquire("alice")
    ttl = r.pttl(RedisSchema(namespace).limits_user("alice"))
    assert 0 < ttl <= 3000  # refilled to the burst in 2 s; the key then carries no information
    lim.reset("alice")
    assert lim.peek("alice")["user"]["tokens"] == 2.0
