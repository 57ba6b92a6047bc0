"""A key the provider enforces as a token bucket is paced as that bucket (lua/bucketlib.lua):
its capacity at once, then one request per refill interval, never more than the bucket holds
less the margin, whatever order entries are added, moved or taken out in. Real Redis."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from benchmarks.capacity_workers import lowest_bucket_level
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.pool import Grant, ReserveRequest
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.registry import compile_limits
from router_jobs.capacity.scheduler import Demand, Lost, Refused, Scheduler
from router_jobs.models import Usage
from router_jobs.providers.base import RateLimitInfo

SEP = "\x1f"


def bucket_key(key_id: str = "k0", limit: int = 10, seconds: float = 2.0, **extra: object) -> dict:
    return {"key_id": key_id, "model_name": "m", "provider": "fake", "windows": [{"limit": limit, "seconds": seconds}],
            "enforcement": {"mode": "bucket"}, **extra}


def make(r: redis.Redis, ns: str, keys: list[dict], *, margin_ms: int = 20, lead_ms: int = 250) -> Scheduler:
    pool = RedisKeyPool(r, RedisSchema(ns), parse_keys({"keys": keys}), margin_ms=margin_ms)
    return Scheduler(pool, interactive_share=0.0, lead_ms=lead_ms)


def demand(job_id: str) -> Demand:
    return Demand(job_id=job_id, queue="batch", models=["m"], input_tokens=10, max_output_tokens=10,
                  message=f"msg-{job_id}".encode(), fairness_key="-")


def stamps(r: redis.Redis, ns: str, key_id: str = "k0", ms: int = 2000) -> list[int]:
    prefix = f"k:{key_id}{SEP}{ms}{SEP}"
    members = r.zrangebylex(RedisSchema(ns).pool_log("default"), "[" + prefix, "(" + prefix + "\xff")
    return sorted(int(m.decode()[len(prefix):len(prefix) + 15]) for m in members)


def stored_tat(r: redis.Redis, ns: str, key_id: str = "k0", ms: int = 2000) -> float:
    raw = r.hget(RedisSchema(ns).pool_sums("default"), f"k:{key_id}{SEP}{ms}{SEP}")
    assert raw is not None
    return float(raw.split()[5])


def exact_tat(times: list[int], interval_ms: float) -> float:
    """The GCRA state of these stamps taken in order (what bucketlib's T must never be below)."""
    tat = float("-inf")
    for t in sorted(times):
        tat = max(tat, t) + interval_ms
    return tat


def lowest_level(times: list[int], capacity: float, interval_ms: float) -> float:
    """The lowest level a bucket of ``capacity`` refilled one request per ``interval_ms``
    reaches over these stamps (below 0: it would have refused one)."""
    return lowest_bucket_level(times, capacity, interval_ms)


def test_bucket_rows_are_marked_and_daily_rows_are_not() -> None:
    cfg = parse_keys({"keys": [bucket_key(rpd=1000)]}).keys[0]
    assert compile_limits(cfg, cfg.provider) == [[2000, 10, 0, 0, 0, 1], [86_400_000, 1000, 0, 0, 0]]
    rolling = parse_keys({"keys": [{**bucket_key(), "enforcement": {"mode": "rolling"}}]}).keys[0]
    assert compile_limits(rolling, rolling.provider) == [[2000, 10, 0, 0, 0]]
    # the provider's default model: Anthropic enforces a bucket
    anth = parse_keys({"keys": [{"key_id": "a", "model_name": "m", "provider": "anthropic", "rpm": 50}]}).keys[0]
    assert compile_limits(anth, anth.provider) == [[60_000, 50, 0, 0, 0, 1]]
    assert anth.bucket_refill_s(anth.provider) == pytest.approx(1.2)


def test_the_capacity_goes_at_once_then_one_request_per_refill(r: redis.Redis, namespace: str) -> None:
    # 10 per 2 s: a refill every 200 ms; admitted ahead up to 5 s, so the script alone places them
    s = make(r, namespace, [bucket_key()], lead_ms=5000)
    out = s.enqueue([demand(f"j{i}") for i in range(40)])
    assert out.admitted > 0
    t = stamps(r, namespace)
    t0 = t[0]
    rel = [x - t0 for x in t]
    # 10 - 20 ms / 200 ms = 9.9 requests at once: 9 at the first moment, then the refill
    assert rel[:9] == [0] * 9
    assert all(b - a >= 199 for a, b in zip(rel[9:], rel[10:], strict=False))
    assert all(b - a <= 201 for a, b in zip(rel[9:], rel[10:], strict=False))
    # within 5 s: 9 + about 25 refills; a rolling window of 10 per 2 s would have placed 30
    # only by 4.04 s and no more before 6.06 s
    assert len([x for x in rel if x <= 4000]) >= 28
    # never more than the bucket (less the margin) would take
    assert lowest_level(t, 10 - 20 / 200, 200) >= -1e-6
    assert lowest_level(t, 10, 200) >= 0.09


def test_taking_out_and_moving_entries_keeps_every_stamp_in_the_bucket(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, [bucket_key()], lead_ms=3000)
    s.enqueue([demand(f"j{i}") for i in range(30)])
    # cancel a few admitted-ahead jobs (their room comes back) and claim others late
    s.remove(["j3", "j12", "j20"])
    for i in (0, 1, 2, 4):
        g = s.claim(f"j{i}")
        assert g is not None and not isinstance(g, (Refused, Lost))
        s.pool.sent(g)
    for _ in range(20):
        s.admit(force=True)
    t = stamps(r, namespace)
    assert lowest_level(t, 10 - 20 / 200, 200) >= -1e-6


def test_many_threads_and_two_pools_keep_the_bucket(r: redis.Redis, namespace: str) -> None:
    keys = [bucket_key(limit=20, seconds=2.0)]
    scheds = [make(r, namespace, keys, lead_ms=400) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        s = scheds[n % 2]
        i = 0
        try:
            while not stop.is_set():
                out = s.enqueue([demand(f"w{n}-{i}")])
                i += 1
                if out.admitted:
                    g = s.claim(f"w{n}-{i - 1}")
                    if g is not None and not isinstance(g, (Refused, Lost)):
                        s.pool.sent(g)
                s.admit()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for th in threads:
        th.start()
    stop.wait(1.5)  # shorter than the log keeps entries (2 s + margin): every stamp is read back
    stop.set()
    for th in threads:
        th.join()
    assert not errors
    t = stamps(r, namespace)
    assert len(t) >= 30  # the bucket's 19.8 at once and its refill (10 per second) were used
    assert lowest_level(t, 20 - 20 / 100, 100) >= -1e-6


def test_a_bucket_saying_0_requests_left_does_not_hold_the_key(r: redis.Redis, namespace: str) -> None:
    # the paced bucket runs near empty by design; its reset is when it is full again
    s = make(r, namespace, [bucket_key("b"), {**bucket_key("w"), "enforcement": {"mode": "rolling"}}])
    pool = s.pool
    for kid in ("b", "w"):
        g = Grant(key_id=kid, provider="fake", model="m", reservation_id=f"r-{kid}", input_tokens=1, output_tokens=1)
        pool.report_success(g, latency=0.1, rate_limit=RateLimitInfo(remaining_requests=0,
                                                                      reset_requests_at=time.time() + 60))
    assert pool.key_status("b")["state"] == "active"
    assert pool.key_status("w")["state"] != "active"  # a rolling window's 0 left holds it to the reset
    # a bucket's tokens at 0 still hold it
    g = Grant(key_id="b", provider="fake", model="m", reservation_id="r-b2", input_tokens=1, output_tokens=1)
    pool.report_success(g, latency=0.1, rate_limit=RateLimitInfo(remaining_requests=0, remaining_tokens=0,
                                                                  reset_tokens_at=time.time() + 60))
    assert pool.key_status("b")["state"] != "active"


def test_booked_reservations_and_the_keys_view_follow_the_bucket(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, [bucket_key(limit=5, seconds=1.0)])
    pool = s.pool
    got = [pool.reserve(ReserveRequest(models=["m"], input_tokens=1, max_output_tokens=1, reservation_id=f"q{i}"))
           for i in range(8)]
    granted = [g for g in got if isinstance(g, Grant)]
    # 5 - 20 ms / 200 ms: 4 at once, the rest booked one refill (200 ms) apart
    assert len(granted) == 4
    row = pool.key_status("k0")["limits"][0]
    assert row["mode"] == "bucket" and row["limit"] == 5 and 4 <= row["used"] <= 5
    t = stamps(r, namespace, ms=1000)
    assert len(t) == 8
    assert lowest_level(t, 5 - 20 / 200, 200) >= -1e-6
    assert t[-1] - t[0] <= 4 * 200 + 30  # booked at the refill, not a window later


def test_random_admissions_cancels_late_claims_and_sends_keep_every_stamp_in_the_bucket(
        r: redis.Redis, namespace: str) -> None:
    """Many threads of two schedulers run every operation that adds, takes out or moves a bucket
    row's entries, in random order and at random moments; replaying the stamps left in the log
    afterwards, no moment ever held more than the bucket (less the margin) allows."""
    import random

    keys = [bucket_key(limit=20, seconds=10.0)]  # a refill every 500 ms; the log keeps 10 s
    # a margin of 100 ms: a thread that starts its call up to that late still fits
    scheds = [make(r, namespace, keys, lead_ms=1500, margin_ms=100) for _ in range(2)]
    ops: Counter[str] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(n: int) -> None:
        rng = random.Random(n)
        s = scheds[n % 2]
        admitted: list[str] = []
        granted: list[Grant] = []
        i = 0
        try:
            while not stop.is_set():
                roll = rng.random()
                if roll < 0.35:
                    job = f"w{n}-{i}"
                    i += 1
                    s.enqueue([demand(job)])  # admitted now or later by some admission step
                    admitted.append(job)
                    ops["enqueue"] += 1
                elif roll < 0.5 and admitted:
                    s.remove([admitted.pop(rng.randrange(len(admitted)))])
                    ops["remove"] += 1
                elif roll < 0.75 and admitted:
                    job = admitted[rng.randrange(len(admitted))]
                    g = s.claim(job)
                    if isinstance(g, Grant):
                        # as a worker does: the call starts at its stamp and says when it left
                        # (a late claim moved or re-fitted its entries; a send after the stamp
                        # moves them to it)
                        admitted.remove(job)
                        time.sleep(g.delay_s)
                        s.pool.sent(g)
                        granted.append(g)
                        ops["claim"] += 1
                elif roll < 0.9 and granted:
                    g = granted.pop(rng.randrange(len(granted)))
                    usage = Usage(input_tokens=5, output_tokens=3) if rng.random() < 0.5 else None
                    s.pool.settle(g, usage, sent_ago_ms=10**7)  # left long ago: its stamp stands
                    ops["settle"] += 1
                else:
                    s.admit(force=True)
                    ops["admit"] += 1
                time.sleep(rng.random() * 0.04)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    stop.wait(4.0)
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors
    assert min(ops.values()) > 5 and len(ops) == 5, ops  # every kind of operation ran
    t = stamps(r, namespace, ms=10_000)
    assert len(t) >= 25  # 19.x at once and the refill over 4 s
    # the provider's bucket (arrivals up to the margin after the stamps) never overflowed
    assert lowest_level(t, 20, 500) >= 0
    # and the row's arrival time is still a bound on the exact state of what is in its log
    assert stored_tat(r, namespace, ms=10_000) >= exact_tat(t, 500) - 0.01


def test_a_row_that_becomes_a_bucket_starts_from_its_log_not_from_a_full_bucket(
        r: redis.Redis, namespace: str) -> None:
    # the same key paced as a rolling window first (an older version, or the keys file said so)
    rolling = {**bucket_key(), "enforcement": {"mode": "rolling"}}
    s = make(r, namespace, [rolling], lead_ms=0)
    assert s.enqueue([demand(f"a{i}") for i in range(10)]).admitted == 10
    # now the provider's bucket model: the 10 already sent drained the bucket; no new burst
    s2 = make(r, namespace, [bucket_key()], lead_ms=0)
    s2.pool.load(parse_keys({"keys": [bucket_key()]}))  # the registry is replaced (an edit)
    got = s2.pool.reserve(ReserveRequest(reservation_id="x", models=["m"], input_tokens=1, max_output_tokens=1))
    assert not isinstance(got, Grant)
    t = stamps(r, namespace)
    assert len(t) == 11 and stored_tat(r, namespace) >= t[9] + 10 * 200 + 200
    assert s2.enqueue([demand(f"b{i}") for i in range(5)]).admitted == 0


def test_taking_out_an_entry_with_hundreds_stamped_after_it_keeps_a_bound(r: redis.Redis, namespace: str) -> None:
    # 2,000 per 2 s (a refill every ms), 700 admitted ahead: the walk stops at 512 and counts
    s = make(r, namespace, [bucket_key(limit=2000, seconds=2.0)], lead_ms=5000)
    s.enqueue([demand(f"j{i}") for i in range(2700)])
    for _ in range(20):  # each step admits at most 256
        if len(stamps(r, namespace)) == 2700:
            break
        s.admit(force=True)
    before = stored_tat(r, namespace)
    s.remove(["j0", "j5", "j1999"])
    t = stamps(r, namespace)
    assert len(t) == 2697
    after = stored_tat(r, namespace)
    assert exact_tat(t, 1.0) - 0.01 <= after <= before
    assert lowest_level(t, 2000 - 20, 1.0) >= -1e-6


def test_a_quota_group_takes_its_keys_provider_model_unless_it_names_its_own() -> None:
    from router_jobs.capacity.registry import group_provider, group_spec

    kf = parse_keys({"keys": [{"key_id": "a", "model_name": "m", "provider": "anthropic", "quota_group": "p"},
                              {"key_id": "b", "model_name": "m", "provider": "anthropic", "quota_group": "p"},
                              {"key_id": "c", "model_name": "m", "provider": "openai", "quota_group": "mixed"},
                              {"key_id": "d", "model_name": "m", "provider": "gemini", "quota_group": "mixed"}],
                     "quota_groups": [{"name": "p", "rpm": 50}, {"name": "mixed", "rpm": 60},
                                      {"name": "own", "rpm": 60, "enforcement": {"mode": "quantized"}}]})
    groups = {g.name: g for g in kf.quota_groups}
    # an Anthropic project's limit is its bucket; a group of mixed providers stays rolling
    assert group_provider("p", kf.keys) == "anthropic"
    assert group_spec(groups["p"], group_provider("p", kf.keys))["L"] == [[60_000, 50, 0, 0, 0, 1]]
    assert group_provider("mixed", kf.keys) is None
    assert group_spec(groups["mixed"], None)["L"] == [[60_000, 60, 0, 0, 0]]
    assert group_spec(groups["own"], "anthropic")["L"] == [[1000, 1, 0, 0, 0], [60_000, 60, 0, 0, 0]]
