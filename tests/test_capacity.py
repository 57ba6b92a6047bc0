"""RedisKeyPool behaviour against a real Redis: windows, states, idempotency, settle, objectives."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import KeyConfig, parse_keys
from router_jobs.capacity.pool import Grant, ReserveRequest, Wait
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.errors import (
    ConfigError,
    KeyInvalid,
    ProviderRateLimited,
    QuotaExhausted,
    TransientProviderError,
)
from router_jobs.models import Usage
from router_jobs.providers.base import RateLimitInfo


def make_pool(r: redis.Redis, namespace: str, keys: list[dict[str, Any]], groups: list[dict[str, Any]] | None = None,
              **kw: Any) -> RedisKeyPool:
    kw.setdefault("margin_ms", 0)
    kf = parse_keys({"keys": keys, "quota_groups": groups or []})
    return RedisKeyPool(r, RedisSchema(namespace), kf, **kw)


def req(models: list[str] | str = "m", tin: int = 10, tout: int = 10, rid: str | None = None, **kw: Any) -> ReserveRequest:
    return ReserveRequest(rid or uuid.uuid4().hex, [models] if isinstance(models, str) else models, tin, tout, **kw)


def grants(results: list[Grant | Wait]) -> list[Grant]:
    return [x for x in results if isinstance(x, Grant)]


def key(kid: str, **kw: Any) -> dict[str, Any]:
    return {"key_id": kid, "model_name": "m", "provider": "fake", **kw}


def test_rpm_admits_limit_then_books_distinct_slots(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=5)])
    out = [pool.reserve(req()) for _ in range(9)]
    assert len(grants(out)) == 5
    waits = [x for x in out if isinstance(x, Wait)]
    assert all(w.retryable and w.wait_ms > 50_000 for w in waits)
    # every waiter has its own slot: no two wake at the same instant (slots follow the log)
    st = pool.key_status("a")["limits"][0]
    assert (st["used"], st["booked"]) == (5, 4)


def test_sliding_window_not_fixed_window(r: redis.Redis, namespace: str) -> None:
    """Bursts at the end of one aligned window and the start of the next stay within limit."""
    pool = make_pool(r, namespace, [key("a", windows=[{"limit": 5, "seconds": 2}])])

    def server_ms() -> int:
        s, us = r.time()
        return int(s) * 1000 + int(us) // 1000

    while server_ms() % 2000 < 1700:  # land the first burst late in an aligned 2 s window
        time.sleep(0.02)
    first = [pool.reserve(req(rid=f"a{i}")) for i in range(5)]
    while server_ms() % 2000 > 1000:
        time.sleep(0.02)
    second = [pool.reserve(req(rid=f"b{i}")) for i in range(5)]
    assert len(grants(first)) == 5
    assert grants(second) == []  # a fixed window would have admitted these
    waits = [x for x in second if isinstance(x, Wait)]
    time.sleep(max(w.wait_ms for w in waits) / 1000 + 0.01)
    # claiming the booked slots needs no room check; reclaim them in slot order
    again = [pool.reserve(req(rid=f"b{i}")) for i in range(5)]
    assert len(grants(again)) + sum(1 for x in again if isinstance(x, Wait) and x.retryable) == 5
    assert_no_window_over(r, namespace, "k:a", 2000, 5)


def assert_no_window_over(r: redis.Redis, namespace: str, scope: str, ms: int, limit: int) -> None:
    """Every stamp in the key's log: no rolling window of ``ms`` holds more than ``limit``."""
    ks = RedisSchema(namespace)
    prefix = f"{scope}\x1f{ms}\x1f"
    stamps = sorted(
        int(m.decode()[len(prefix):len(prefix) + 15])
        for m in r.zrangebylex(ks.pool_log("default"), "[" + prefix, "(" + prefix + "\xff")
    )
    for i in range(len(stamps) - limit):
        assert stamps[i + limit] - stamps[i] >= ms, (i, stamps)


def test_booked_slot_is_claimed_with_same_id(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", windows=[{"limit": 1, "seconds": 0.3}])])
    assert isinstance(pool.reserve(req(rid="one")), Grant)
    w = pool.reserve(req(rid="two"))
    assert isinstance(w, Wait) and w.retryable
    again = pool.reserve(req(rid="two"))
    assert isinstance(again, Wait)  # still early: same booking, no second charge
    time.sleep(again.wait_ms / 1000 + 0.005)
    g = pool.reserve(req(rid="two"))
    assert isinstance(g, Grant) or (isinstance(g, Wait) and g.retryable)  # late beyond late_ms re-queues


def test_idempotent_reserve_charges_once(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=2)])
    g1 = pool.reserve(req(rid="x"))
    g2 = pool.reserve(req(rid="x"))
    assert isinstance(g1, Grant) and g1 == g2
    assert isinstance(pool.reserve(req(rid="y")), Grant)
    assert pool.key_status("a")["limits"][0]["used"] == 2
    pool.settle(g1, Usage(input_tokens=1, output_tokens=1))
    after = pool.reserve(req(rid="x"))
    assert isinstance(after, Wait) and not after.retryable


def test_settle_refunds_tokens_and_counts_overruns(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", tpm=1000)])
    g = pool.reserve(req(tin=400, tout=500))
    assert isinstance(g, Grant)
    assert isinstance(pool.reserve(req(tin=100, tout=100, rid="booked")), Wait)  # 900 + 200 > 1000
    pool.settle(g, Usage(input_tokens=400, output_tokens=50))
    pool.settle(g, Usage(input_tokens=400, output_tokens=50))  # idempotent
    assert pool.key_status("a")["limits"][0]["used"] == 450
    g2 = pool.reserve(req(tin=100, tout=100))
    assert isinstance(g2, Grant)
    pool.settle(g2, Usage(input_tokens=100, output_tokens=300))  # overrun of 200
    st = pool.key_status("a")
    assert (st["overrun_tokens"], st["overrun_calls"]) == (200, 1)
    assert st["limits"][0]["used"] == 850
    assert pool.release("booked")  # the waiter gives its booked 200 back
    g3 = pool.reserve(req(tin=100, tout=0))
    assert isinstance(g3, Grant)
    pool.settle(g3, None)  # refund: tokens back, the request itself stays counted
    assert pool.key_status("a")["limits"][0]["used"] == 850


def test_settle_none_keeps_request_counted(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=1)])
    g = pool.reserve(req())
    assert isinstance(g, Grant)
    pool.settle(g, None)
    assert isinstance(pool.reserve(req()), Wait)


def test_release_gives_back_a_booked_slot(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=1)])
    assert isinstance(pool.reserve(req(rid="g")), Grant)
    assert isinstance(pool.reserve(req(rid="b1")), Wait)
    assert pool.key_status("a")["limits"][0]["booked"] == 1
    assert pool.release("b1")
    assert not pool.release("b1")
    assert pool.key_status("a")["limits"][0]["booked"] == 0


def test_concurrency_leases_block_and_expire(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", max_concurrency=1, timeout=0.2)], lease_grace=0.0,
                     concurrency_poll_ms=50)
    g = pool.reserve(req())
    assert isinstance(g, Grant)
    assert pool.key_status("a")["in_flight"] == 1
    assert isinstance(pool.reserve(req()), Wait)
    time.sleep(0.3)  # the worker "died": its lease runs out by itself
    g2 = pool.reserve(req())
    assert isinstance(g2, Grant)
    pool.settle(g2, Usage(input_tokens=1, output_tokens=1))
    assert pool.key_status("a")["in_flight"] == 0


def test_states_skip_key(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a"), key("b")])
    for change, undo in [
        (lambda: pool.disable("a", "maintenance"), lambda: pool.enable("a")),
        (lambda: pool.cooldown("a", 60), lambda: pool.clear("a")),
        (lambda: pool.report_error(_grant("a"), QuotaExhausted("gone", reset_at=time.time() + 60)),
         lambda: pool.clear("a")),
        (lambda: pool.report_error(_grant("a"), KeyInvalid("no", status=401)), lambda: pool.clear("a")),
        (lambda: pool.report_success(_grant("a"), latency=0.1, rate_limit=RateLimitInfo(
            remaining_requests=0, reset_requests_at=time.time() + 60)), lambda: pool.clear("a")),
    ]:
        change()
        assert pool.key_status("a")["state"] != "active"
        assert {g.key_id for g in grants([pool.reserve(req()) for _ in range(6)])} == {"b"}
        undo()
        assert pool.key_status("a")["state"] == "active"
        assert "a" in {g.key_id for g in grants([pool.reserve(req()) for _ in range(6)])}


def _grant(kid: str, provider: str = "fake") -> Grant:
    return Grant(key_id=kid, provider=provider, model="m", reservation_id=uuid.uuid4().hex, input_tokens=1,
                 output_tokens=1)


def test_rate_limited_cooldown_then_back(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a")])
    pool.report_error(_grant("a"), ProviderRateLimited("429", retry_after=0.2))
    w = pool.reserve(req())
    assert isinstance(w, Wait) and w.retryable and w.wait_ms <= 200
    time.sleep(0.25)
    assert isinstance(pool.reserve(req()), Grant)


def test_gemini_quota_defaults_to_pacific_midnight(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a")])
    pool.report_error(_grant("a", "gemini"), QuotaExhausted("daily"))
    st = pool.key_status("a")
    assert st["state"] == "exhausted" and 0 < st["until"] - time.time() <= 25 * 3600


def test_invalid_then_revalidate_with_new_fingerprint(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a")])
    pool.report_error(_grant("a"), KeyInvalid("401", status=401), secret_fingerprint="fp1")
    w = pool.reserve(req())
    assert isinstance(w, Wait) and not w.retryable and "invalid" in w.reason
    assert pool.revalidate({"a": "fp1"}) == []
    assert pool.key_status("a")["state"] == "invalid"
    assert pool.revalidate({"a": "fp2"}) == ["a"]
    assert isinstance(pool.reserve(req()), Grant)


def test_error_stats_and_latency(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a")])
    for lat in (0.1, 0.2, 0.3):
        pool.report_success(_grant("a"), latency=lat, rate_limit=None)
    pool.report_error(_grant("a"), TransientProviderError("boom"))
    st = pool.key_status("a")
    assert (st["successes_5m"], st["errors_5m"]) == (3, 1)
    assert st["latency_p50_ms"] == pytest.approx(200)
    assert 0 < st["error_rate_ewma"] < 1 and st["state"] == "active"


def test_impossible_requests_fail_for_good(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", tpm=100), key("b", tpm=50)])
    w = pool.reserve(req(tin=90, tout=20))
    assert isinstance(w, Wait) and not w.retryable and "larger than a limit" in w.reason
    w2 = pool.reserve(req("nope"))
    assert isinstance(w2, Wait) and not w2.retryable
    pool.disable("a")
    pool.disable("b")
    w3 = pool.reserve(req())
    assert isinstance(w3, Wait) and not w3.retryable
    w4 = pool.reserve(req(exclude_keys=frozenset({"a", "b"})))
    assert isinstance(w4, Wait) and not w4.retryable


def test_model_preference_order(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=1), {"key_id": "b", "model_name": "m2", "provider": "fake"}])
    g = pool.reserve(req(["m", "m2"]))
    assert isinstance(g, Grant) and (g.key_id, g.model) == ("a", "m")
    g2 = pool.reserve(req(["m", "m2"]))
    assert isinstance(g2, Grant) and (g2.key_id, g2.model) == ("b", "m2")


def test_objectives_pick_the_right_key(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [
        key("cheap", cost={"input": 0.1, "output": 0.2}),
        key("dear", cost={"input": 5, "output": 15}),
        key("mid", cost={"input": 1, "output": 2}),
    ])
    assert {pool.reserve(req(objective="cost")).key_id for _ in range(5)} == {"cheap"}  # type: ignore[union-attr]
    for _ in range(5):
        pool.report_error(_grant("cheap"), TransientProviderError("x"))
        pool.report_success(_grant("dear"), latency=2.0, rate_limit=None)
        pool.report_success(_grant("mid"), latency=0.05, rate_limit=None)
    pool.report_error(_grant("mid"), TransientProviderError("x"))
    assert pool.reserve(req(objective="reliability")).key_id == "dear"  # type: ignore[union-attr]
    assert pool.reserve(req(objective="latency")).key_id == "cheap"  # no latency sample yet: 0
    pool.report_success(_grant("cheap"), latency=9.0, rate_limit=None)
    assert pool.reserve(req(objective="latency")).key_id == "mid"  # type: ignore[union-attr]


def test_fairness_spreads_load(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key(f"k{i}", rpm=100) for i in range(4)])
    used = [g.key_id for g in grants([pool.reserve(req()) for _ in range(40)])]
    assert sorted(used.count(f"k{i}") for i in range(4)) == [10, 10, 10, 10]


def test_quota_group_is_shared(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", quota_group="proj"), key("b", quota_group="proj")],
                     groups=[{"name": "proj", "rpm": 5}])
    got = grants([pool.reserve(req()) for _ in range(12)])
    assert len(got) == 5 and {g.key_id for g in got} == {"a", "b"}


def test_registry_changes_are_seen_by_other_workers(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a")])
    other = RedisKeyPool(r, RedisSchema(namespace), refresh_interval=0.0)
    assert other.models() == {"m"}
    pool.add_key(KeyConfig(key_id="n", model_name="new", provider="openai", base_url="http://x"))
    g = other.reserve(req("new"))
    assert isinstance(g, Grant) and g.provider == "openai" and g.base_url == "http://x"
    assert other.models() == {"m", "new"}
    assert pool.remove_key("n")
    assert isinstance(other.reserve(req("new")), Wait)
    # a worker started with a keys file does not undo live changes
    seeded = make_pool(r, namespace, [key("zzz")])
    assert "zzz" not in {s["key_id"] for s in seeded.key_statuses()}
    pool.reload(parse_keys({"keys": [key("b")]}))
    assert [s["key_id"] for s in other.key_statuses()] == ["b"]


def test_config_errors_name_key_and_field(r: redis.Redis, namespace: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_keys({"keys": [key("a", rpm=-1)]})
    assert exc.value.key_id == "a" and exc.value.field == "rpm"
    pool = make_pool(r, namespace, [key("a")])
    with pytest.raises(ConfigError) as exc2:
        pool.add_key(KeyConfig(key_id="g", model_name="m", provider="fake", quota_group="missing"))
    assert exc2.value.key_id == "g" and exc2.value.field == "quota_group"


def test_script_flush_is_survived(r: redis.Redis, namespace: str) -> None:
    pool = make_pool(r, namespace, [key("a", rpm=3)])
    g = pool.reserve(req())
    r.script_flush()
    assert isinstance(g, Grant)
    pool.settle(g, Usage(input_tokens=1, output_tokens=1))
    r.script_flush()
    pool.report_error(g, TransientProviderError("x"))
    r.script_flush()
    assert len(grants([pool.reserve(req()) for _ in range(4)])) == 2
