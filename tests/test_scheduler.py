"""The pool's wait lines and admission (admit.lua, claim.lua) against a real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.pool import Grant
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.scheduler import Demand, Lost, Refused, Scheduler
from router_jobs.client.router import Router
from router_jobs.models import JobSpec
from router_jobs.settings import Settings


def make(r: redis.Redis, ns: str, *, rpm: int = 3, keys: int = 1, share: float = 0.0, margin_ms: int = 20,
         extra: dict | None = None) -> Scheduler:
    spec = [{"key_id": f"k{i}", "model_name": "m", "provider": "fake", "rpm": rpm, **(extra or {})}
            for i in range(keys)]
    pool = RedisKeyPool(r, RedisSchema(ns), parse_keys({"keys": spec}), margin_ms=margin_ms)
    return Scheduler(pool, interactive_share=share)


def demand(job_id: str, queue: str = "batch", fairness: str = "-", **kw: object) -> Demand:
    return Demand(job_id=job_id, queue=queue, models=kw.pop("models", ["m"]), input_tokens=10,  # type: ignore[arg-type]
                  max_output_tokens=10, message=f"msg-{job_id}".encode(), fairness_key=fairness, **kw)  # type: ignore[arg-type]


def delivered(r: redis.Redis, ns: str, queue: str) -> list[str]:
    return [f[b"m"].decode()[4:] for _id, f in r.xrange(RedisSchema(ns).stream(queue))]


def test_admits_while_room_then_holds_the_rest_in_line(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=3)
    out = s.enqueue([demand(f"j{i}") for i in range(5)])
    assert out.admitted == 3 and out.waiting == 2
    assert 55_000 < out.next_ms <= 60_100  # the next room: when the first entry leaves the window
    assert delivered(r, namespace, "batch") == ["j0", "j1", "j2"]
    # nothing new is admitted while the window is full, however often admission runs
    assert s.admit(force=True).admitted == 0
    assert s.admit().admitted == 0
    pos = s.position("j4")
    assert pos is not None and pos.place == 1


def test_claim_stamps_again_and_a_job_never_admitted_is_not_claimed(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=2)
    s.enqueue([demand("a"), demand("b"), demand("c")])
    g = s.claim("a")
    assert g is not None and not isinstance(g, (Refused, Lost)) and g.key_id == "k0"
    # a redelivery after its worker died (before settling) runs on the same reservation
    assert s.claim("a") == g
    assert s.claim("c") is None  # still waiting in line
    s.pool.settle(g, None)
    s.settled(["a"])
    assert s.claim("a") is None  # settled: a new delivery must wait in line again


def test_interactive_is_admitted_before_any_waiting_batch(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=100, margin_ms=0, extra={"windows": [{"limit": 1, "seconds": 0.3}]})
    s.enqueue([demand(f"b{i}") for i in range(4)])
    s.enqueue([demand("i0", queue="interactive")])
    assert delivered(r, namespace, "interactive") == []
    deadline = time.monotonic() + 5
    while not delivered(r, namespace, "interactive") and time.monotonic() < deadline:
        time.sleep(0.05)
        s.admit(force=True)
    # the first room after the window went to the interactive job, not to b2/b3 ahead of it
    assert delivered(r, namespace, "interactive") == ["i0"]
    assert delivered(r, namespace, "batch") == ["b0"]


def test_weighted_fair_share_between_a_long_and_a_short_batch(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=1, margin_ms=0)
    s.enqueue([demand("x", fairness="warm")])  # fills the window: everything below waits
    s.enqueue([demand(f"big{i}", fairness="big") for i in range(200)])
    s.enqueue([demand(f"small{i}", fairness="small") for i in range(10)])
    line = [m.decode().rsplit("\x1f", 1)[1] for m in r.zrange(s.line_key("m"), 0, 19)]
    # the 10-line batch submitted later is interleaved one for one with the 200-line one
    assert Counter(j.rstrip("0123456789") for j in line) == {"big": 10, "small": 10}
    assert line[:4] in (["big0", "small0", "big1", "small1"], ["small0", "big0", "small1", "big1"])


def test_refused_for_good_is_handed_over_with_the_reason(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=3)
    s.pool.disable("k0")
    s.enqueue([demand("a")])
    got = s.claim("a")
    assert isinstance(got, Refused) and "disabled" in got.reason


def test_claim_after_a_cooldown_puts_the_room_back(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=1)
    s.enqueue([demand("a")])
    s.pool.cooldown("k0", 30)
    got = s.claim("a")
    assert isinstance(got, Lost)
    s.pool.clear("k0")
    # the lost admission charged nothing: the next job is admitted at once
    assert s.enqueue([demand("b")]).admitted == 1


def one_per_second(r: redis.Redis, ns: str, lead_ms: int) -> Scheduler:
    spec = [{"key_id": "k0", "model_name": "m", "provider": "fake", "windows": [{"limit": 1, "seconds": 1}]}]
    pool = RedisKeyPool(r, RedisSchema(ns), parse_keys({"keys": spec}), margin_ms=20)
    return Scheduler(pool, lead_ms=lead_ms)


def stamp_of(s: Scheduler, job_id: str) -> int:
    rid = s.client.hget(s._part("grants"), job_id)
    assert rid is not None
    return int(json.loads(s.client.hget(s.ks.pool_reservations("default"), rid))["t"])


def test_admitted_ahead_of_room_is_stamped_when_the_room_exists(r: redis.Redis, namespace: str) -> None:
    s = one_per_second(r, namespace, lead_ms=300)
    first = s.enqueue([demand("a"), demand("b"), demand("c")])
    assert first.admitted == 1
    # the next step is due `lead` before the room: 1 s + margin after a's stamp, less 300 ms
    assert 600 <= first.next_ms <= 760
    time.sleep(first.next_ms / 1000)
    assert s.admit().admitted == 1 and delivered(r, namespace, "batch") == ["a", "b"]
    a, b = stamp_of(s, "a"), stamp_of(s, "b")
    assert b == a + 1020  # exactly when a's entry leaves the 1 s window (+ margin)
    g = s.claim("b")
    assert isinstance(g, Grant) and 0 < g.delay_s <= 0.3  # the worker waits for the stamp
    assert stamp_of(s, "b") == b  # an early claim keeps the admission's stamp
    # c is not admitted before b's room has passed: the window holds one
    assert s.admit(force=True).admitted == 0


def test_a_late_claim_is_stamped_again_and_lost_if_the_room_moved_beyond_the_lead(
        r: redis.Redis, namespace: str) -> None:
    s = one_per_second(r, namespace, lead_ms=200)
    s.enqueue([demand("a")])
    time.sleep(0.05)
    g = s.claim("a")  # late by ~50 ms: stamped again now, no wait
    assert isinstance(g, Grant) and g.delay_s == 0
    s.enqueue([demand("b")])
    assert delivered(r, namespace, "batch") == ["a"]
    # b admitted ahead (by force, pretending the step came early), then a cooldown moves its
    # room beyond the lead: the on-time claim does not trust the stamp, the job goes back
    time.sleep(0.85)
    assert s.admit(force=True).admitted == 1
    s.pool.cooldown("k0", 5)
    assert isinstance(s.claim("b"), Lost)


def per_second(r: redis.Redis, ns: str, limit: int, lead_ms: int) -> Scheduler:
    spec = [{"key_id": "k0", "model_name": "m", "provider": "fake", "windows": [{"limit": limit, "seconds": 1}]}]
    pool = RedisKeyPool(r, RedisSchema(ns), parse_keys({"keys": spec}), margin_ms=20)
    return Scheduler(pool, lead_ms=lead_ms)


@pytest.mark.parametrize("limit", [2, 3])
def test_a_late_claim_moves_to_now_in_place_only_when_every_window_still_fits(
        r: redis.Redis, namespace: str, limit: int) -> None:
    """A claim that comes after its stamp, while later jobs were admitted ahead, starts at once
    when moving its entry to now keeps every window within the limit (it used to wait in its
    worker thread until those later jobs' room, a lead's worth); otherwise it does not move."""
    s = per_second(r, namespace, limit, lead_ms=300)
    ids = [f"j{i}" for i in range(limit + 2)]
    first = s.enqueue([demand(i) for i in ids])
    assert first.admitted == limit
    time.sleep(first.next_ms / 1000 + 0.03)
    assert s.admit().admitted == 2  # the last two, admitted ahead: stamped when the first leave
    ahead = [stamp_of(s, i) for i in ids[limit:]]
    g = s.claim(ids[0])  # late by ~0.75 s
    stamps = sorted(stamp_of(s, i) for i in ids if s.client.hexists(s._part("grants"), i))
    # whatever happened, no 1 s window (+ the 20 ms margin) holds more than the limit
    assert all(sum(1 for t in stamps if e - 1020 < t <= e) <= limit for e in stamps)
    if limit == 3:  # the late job and the two ahead fit the window ending at their stamp
        assert isinstance(g, Grant) and g.delay_s == 0
        assert ahead[0] - 300 < stamp_of(s, ids[0]) < ahead[0]
    else:  # it would make three in the window ending at theirs: it cannot start now
        assert isinstance(g, Lost)


def test_cancelled_before_claim_gives_the_room_back(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=1)
    s.enqueue([demand("a"), demand("b")])
    assert delivered(r, namespace, "batch") == ["a"]
    out = s.remove(["a"])
    assert out.admitted == 1 and delivered(r, namespace, "batch") == ["a", "b"]


def test_many_threads_admit_exactly_the_window(r: redis.Redis, namespace: str, redis_url: str) -> None:
    s = make(r, namespace, rpm=50, keys=2)

    def producer(t: int) -> None:
        client = redis.Redis.from_url(redis_url)
        mine = Scheduler(RedisKeyPool(client, RedisSchema(namespace), margin_ms=20), interactive_share=0.0)
        for i in range(40):
            mine.enqueue([demand(f"t{t}-{i}")])
            mine.admit()
        client.close()

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = delivered(r, namespace, "batch")
    assert len(got) == len(set(got)) == 100
    assert sum(s.lines()["m"].values()) == 220


@pytest.mark.parametrize("burst", [0, 1])
def test_quantized_limits_add_a_one_second_window(burst: int) -> None:
    from router_jobs.capacity.registry import key_spec

    cfg = parse_keys({"keys": [{"key_id": "a", "model_name": "m", "provider": "openai", "rpm": 150,
                                "enforcement": {"mode": "quantized", "burst": burst}}]}).keys[0]
    assert [1000, 3 + burst, 0, 0, 0] in key_spec(cfg)["L"]


def test_max_wait_holds_fallbacks_back_and_none_means_at_once(r: redis.Redis, namespace: str) -> None:
    spec = [{"key_id": "a", "model_name": "m", "provider": "fake", "rpm": 1},
            {"key_id": "b", "model_name": "m2", "provider": "fake", "rpm": 5}]
    s = Scheduler(RedisKeyPool(r, RedisSchema(namespace), parse_keys({"keys": spec}), margin_ms=20))
    s.enqueue([demand("first", models=["m", "m2"])])
    s.enqueue([demand("patient", models=["m", "m2"], max_wait_ms=60_000)])
    s.enqueue([demand("eager", models=["m", "m2"])])
    assert delivered(r, namespace, "batch") == ["first", "eager"]
    eager = s.claim("eager")
    assert isinstance(eager, Grant) and eager.model == "m2"
    pos = s.position("patient")
    assert pos is not None and pos.place == 0


def test_a_job_past_its_deadline_is_handed_over_without_room(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=1)
    s.enqueue([demand("a")])
    s.enqueue([demand("late", deadline_ms=int(time.time() * 1000) + 150)])
    assert delivered(r, namespace, "batch") == ["a"]
    time.sleep(0.2)
    s.admit(force=True)
    assert delivered(r, namespace, "batch") == ["a", "late"]
    assert s.claim("late") is None  # no room was taken for it: the worker expires it


def test_position_and_eta_follow_the_line(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=60, keys=2)  # 2 requests per second in the long run
    s.enqueue([demand(f"j{i}") for i in range(130)])
    p0, p9 = s.position("j120"), s.position("j129")
    assert p0 is not None and p9 is not None
    assert (p0.place, p9.place) == (0, 9)
    assert p9.eta - p0.eta == pytest.approx(9 / 2, abs=0.01)
    assert s.position("j0") is None  # admitted: not waiting


def test_batch_eta_is_never_faster_than_the_pool() -> None:
    from router_jobs.batch.runner import BatchProgress

    p = BatchProgress("b", total=100, done=10, elapsed=1.0, finished_this_run=10, pool_rate=2.0)
    # the first window ran at 10 lines/s; the pool admits 2/s from now on
    assert p.eta == pytest.approx(45.0)


def test_a_model_no_key_serves_is_refused_not_lost(r: redis.Redis, namespace: str) -> None:
    s = make(r, namespace, rpm=3)
    s.enqueue([demand("a", models=["nobody-serves-this"])])
    assert delivered(r, namespace, "batch") == ["a"]
    got = s.claim("a")
    assert isinstance(got, Refused) and "nobody-serves-this" in got.reason


def test_a_producer_started_before_the_keys_were_seeded_sees_them_at_once(r: redis.Redis, namespace: str) -> None:
    early = Scheduler(RedisKeyPool(r, RedisSchema(namespace), margin_ms=20))
    assert early.lane_models() == []  # nothing seeded yet (and this read is cached)
    make(r, namespace, rpm=5)  # a worker seeds the registry
    out = early.enqueue([demand("a")])
    # admitted into its line at once, not handed over as "no key serves" for up to 1 s
    assert out.admitted == 1 and isinstance(early.claim("a"), Grant)


def test_weighted_shares_follow_the_configured_weights(r: redis.Redis, namespace: str) -> None:
    weights = Settings.from_env({"ROUTER_FAIRNESS_WEIGHTS": "tenant-a=3, alice=1"}).fairness_weights
    s = make(r, namespace, rpm=40, margin_ms=0)

    def job(i: int, **who: object) -> Demand:
        spec = JobSpec(prompt="x", model="m", **who)  # type: ignore[arg-type]
        job_id = f"{'a' if who.get('metadata') else 'u'}{i}"
        return Demand.for_spec(job_id, "batch", spec, 10, f"msg-{job_id}".encode(), weights=weights)

    heavy = [job(i, metadata={"tenant": "tenant-a"}) for i in range(100)]
    light = [job(i, user_id="alice") for i in range(100)]
    assert {d.weight for d in heavy} == {3.0} and {d.weight for d in light} == {1.0}
    out = s.enqueue(heavy + light)
    # 40 admitted in fair-tag order: three of tenant-a's jobs for each of alice's
    assert out.admitted == 40
    got = Counter(j[0] for j in delivered(r, namespace, "batch"))
    assert got == {"a": 30, "u": 10}


def test_submit_puts_jobs_in_line_with_their_configured_weight(r: redis.Redis, redis_url: str,
                                                               namespace: str) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace,
                                  "ROUTER_FAIRNESS_WEIGHTS": '{"tenant-a": 3}'})
    keys = parse_keys({"keys": [{"key_id": "k0", "model_name": "m", "provider": "fake", "rpm": 1}]})
    router = Router(settings, client=redis.Redis.from_url(redis_url), keys=keys)
    try:
        router.submit("warm", model="m", priority="batch")  # takes the only room: the rest waits
        ids = {router.submit(f"a{i}", model="m", priority="batch", metadata={"tenant": "tenant-a"}).job_id: "a"
               for i in range(6)}
        ids |= {router.submit(f"u{i}", model="m", priority="batch", user_id="alice").job_id: "u" for i in range(2)}
        line = [m.decode().rsplit("\x1f", 1)[1] for m in r.zrange(router.scheduler.line_key("m"), 0, -1)]
        assert "".join(ids[j] for j in line) == "aaauaaau"
    finally:
        router.close()


def test_a_short_batch_after_a_long_one_is_admitted_interleaved(r: redis.Redis, namespace: str) -> None:
    spec = [{"key_id": "k0", "model_name": "m", "provider": "fake", "rpm": 100_000}]
    s = Scheduler(RedisKeyPool(r, RedisSchema(namespace), parse_keys({"keys": spec}), margin_ms=0), max_admit=50)
    s.enqueue([demand(f"big{i}", fairness="big") for i in range(10_000)])  # each step admits 50 at most
    before = len(delivered(r, namespace, "batch"))
    s.enqueue([demand(f"small{i}", fairness="small") for i in range(100)])
    while not any(j == "small99" for j in delivered(r, namespace, "batch")):
        assert s.admit(force=True).admitted > 0
    got = delivered(r, namespace, "batch")
    after = got[before:]
    # one for one with the 10,000-line batch: all 100 within the next 200 admissions, not after 10,000
    assert len(after) == 200
    assert Counter(j.rstrip("0123456789") for j in after) == {"big": 100, "small": 100}


def _models_pool(r: redis.Redis, ns: str, rpm: dict[str, int], **kw: object) -> Scheduler:
    """One key per model (k-<model>, its own rpm): each step below uses fresh room."""
    spec = [{"key_id": f"k-{m}", "model_name": m, "provider": "fake", "rpm": n} for m, n in rpm.items()]
    return Scheduler(RedisKeyPool(r, RedisSchema(ns), parse_keys({"keys": spec}), margin_ms=0),
                     **kw)  # type: ignore[arg-type]


def _burst(s: Scheduler, model: str, queue: str, n: int, tag: str) -> int:
    """Put n jobs of ``queue`` in ``model``'s line; how many of them were admitted at once."""
    s.enqueue([demand(f"{tag}{i}", queue=queue, models=[model]) for i in range(n)])
    return sum(1 for j in delivered(s.client, s.ks.ns, queue) if j.startswith(tag))


def test_held_share_follows_the_interactive_arrival_rate(r: redis.Redis, namespace: str) -> None:
    rpm = {"a": 100, "b": 100, "c": 100, "d": 100, "e": 1000}
    s = _models_pool(r, namespace, rpm, interactive_share=0.3, interactive_share_min=0.05, max_admit=2000,
                     interactive_hold_ms=3_600_000)  # counts decay over 15 min: none within the test
    capacity = sum(rpm.values()) / 60  # requests per second of the whole pool
    # no interactive work ever: batch work gets every key's full limit
    assert s.held_share() == 0.0
    assert _burst(s, "a", "batch", 150, "a") == 100
    # one interactive arrival within the first second reads as 1/s: twice 1/s of the pool's
    # 23.3/s is held (8 whole requests of b's 100; one of them used)
    assert _burst(s, "b", "interactive", 1, "ib") == 1
    assert s.held_share() == pytest.approx(2 / capacity, rel=0.05)
    assert _burst(s, "b", "batch", 150, "b") == 100 - 8 - 1
    # a batch burst does not dilute it: the share follows interactive arrivals, not the
    # fraction of admissions (a burst of 1,000 used to push it down to the least)
    held = s.held_share()
    assert _burst(s, "e", "batch", 1000, "e") == 1000 - int(1000 * held + 1e-6)
    assert s.held_share() == pytest.approx(held, rel=0.05)
    # twenty arrivals at once: past the ceiling, the most is held
    assert _burst(s, "c", "interactive", 20, "ic") == 20
    assert s.held_share() == pytest.approx(0.3)
    assert _burst(s, "c", "batch", 150, "c") == 100 - 30 - 20


def test_held_share_ends_with_the_hold(r: redis.Redis, namespace: str) -> None:
    s = _models_pool(r, namespace, {"a": 100, "b": 100}, interactive_share=0.3, interactive_share_min=0.05,
                     interactive_hold_ms=1500)
    assert _burst(s, "a", "interactive", 30, "i") == 30
    assert s.held_share() == pytest.approx(0.3)  # 30 arrivals in a second: the most
    time.sleep(1.6)  # no interactive arrival for longer than the hold: back to the reserve
    assert s.held_share() == pytest.approx(0.05)
    assert _burst(s, "b", "batch", 150, "b") == 95


@pytest.mark.parametrize(("reserve", "before", "after"), [("auto", 100, 95), ("always", 95, 95), ("off", 100, 100)])
def test_the_standing_reserve_follows_its_setting(r: redis.Redis, namespace: str, reserve: str, before: int,
                                                  after: int) -> None:
    s = _models_pool(r, namespace, {"a": 100, "b": 100, "c": 100}, interactive_share=0.3,
                     interactive_share_min=0.05, interactive_hold_ms=300, interactive_reserve=reserve)
    # a pool that never saw interactive work: "always" holds the least from the start
    assert _burst(s, "a", "batch", 150, "a") == before
    assert _burst(s, "b", "interactive", 1, "i") == 1
    time.sleep(0.4)  # past the hold: "auto" and "always" keep the least, "off" holds nothing
    assert _burst(s, "c", "batch", 150, "c") == after
    with pytest.raises(ValueError, match="auto, always or off"):
        _models_pool(r, namespace, {"a": 1}, interactive_reserve="sometimes")


def test_an_announced_interactive_client_holds_the_reserve_before_its_first_job(
        r: redis.Redis, namespace: str) -> None:
    s = _models_pool(r, namespace, {"a": 100, "b": 100, "c": 100}, interactive_share=0.3,
                     interactive_share_min=0.05, interactive_hold_ms=300)
    assert s.held_share() == 0.0  # "auto", no interactive work seen: nothing held
    s.announce_interactive(0.5)  # a gateway starts serving
    assert s.held_share() == pytest.approx(0.05)
    assert _burst(s, "a", "batch", 150, "a") == 95  # the least is held for its first job
    time.sleep(0.6)  # the announcement lapsed (its gateway stopped renewing it)
    assert s.held_share() == 0.0
    assert _burst(s, "b", "batch", 150, "b") == 100
    s.announce_interactive(60)
    s.announce_interactive(0)  # withdrawn
    assert _burst(s, "c", "batch", 150, "c") == 100


def test_the_gateway_announces_itself_while_it_runs(r: redis.Redis, redis_url: str, namespace: str) -> None:
    from router_jobs.gateway.state import Gateway, GatewayConfig

    settings = Settings.from_env({"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace})
    keys = parse_keys({"keys": [{"key_id": "k0", "model_name": "m", "provider": "fake", "rpm": 100}]})
    router = Router(settings, client=redis.Redis.from_url(redis_url), keys=keys)
    gw = Gateway(settings, GatewayConfig(run_batches=False, announce_every=0.2), router=router)
    try:
        gw.start()
        deadline = time.monotonic() + 5
        while router.scheduler.held_share() == 0.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.scheduler.held_share() == pytest.approx(settings.interactive_share_min)
    finally:
        import asyncio

        asyncio.run(gw.close())
        router.close()
    assert gw._announcer is not None and not gw._announcer.is_alive()


def test_no_interactive_share_holds_nothing(r: redis.Redis, namespace: str) -> None:
    s = _models_pool(r, namespace, {"a": 100, "b": 100}, interactive_share=0.0)
    assert _burst(s, "a", "interactive", 30, "i") == 30
    assert s.held_share() == 0.0
    assert _burst(s, "b", "batch", 150, "b") == 100


def test_a_settle_walks_the_lines_only_when_it_may_have_freed_room(r: redis.Redis, namespace: str) -> None:
    # request-count windows only: settling keeps the request counted; the step waits until due
    s = make(r, namespace, rpm=1)
    s.enqueue([demand("a"), demand("b")])
    g = s.claim("a")
    assert isinstance(g, Grant)
    s.pool.settle(g, None)
    out = s.settled(["a"])
    assert out.waiting == -1 and out.next_ms > 50_000  # not due: the lines were not walked
    assert s.claim("a") is None  # the grant is forgotten all the same
    # a concurrency limit: the settle released the lease, the next job is admitted at once
    c = make(r, namespace + "-c", rpm=1000, extra={"max_concurrency": 1})
    c.enqueue([demand("x"), demand("y")])
    assert delivered(r, namespace + "-c", "batch") == ["x"]
    gx = c.claim("x")
    assert isinstance(gx, Grant)
    c.pool.settle(gx, None)
    assert c.settled(["x"]).admitted == 1
    assert delivered(r, namespace + "-c", "batch") == ["x", "y"]


def test_a_job_its_producer_left_out_of_line_is_put_in_line_by_the_sweep(r: redis.Redis, redis_url: str,
                                                                        namespace: str) -> None:
    """submit writes the record, then puts the job in line: a producer that dies in between
    leaves the job noted as joining, and a worker's sweep puts it in line (once)."""
    from dramatiq.message import Message

    from router_jobs.capacity.joining import JoiningSweeper

    settings = Settings.from_env({"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace})
    keys = parse_keys({"keys": [{"key_id": "k0", "model_name": "m", "provider": "fake", "rpm": 5}]})
    router = Router(settings, client=redis.Redis.from_url(redis_url), keys=keys)

    def sent() -> list[str]:
        return [Message.decode(f[b"m"]).args[0] for _, f in r.xrange(router.schema.stream("batch"))]

    try:
        joining = router.scheduler.joining_key()
        fine = router.submit("a normal submit", model="m", priority="batch")
        assert r.zcard(joining) == 0  # joining the line took it out at once
        # a producer that died after the record: held, noted as joining, not in line
        spec = JobSpec(prompt="orphan", model="m", priority="batch")
        router.jobs.submit(spec, job_id="orphan", hold=True, joining=joining)
        router.jobs.submit(JobSpec(prompt="gone", model="m"), job_id="ended", hold=True, joining=joining)
        r.hset(router.schema.job("ended"), "status", "cancelled")
        assert set(r.zrange(joining, 0, -1)) == {b"orphan", b"ended"}
        sweep = JoiningSweeper(router.scheduler, after_s=30)
        assert sweep() == 0 and r.zcard(joining) == 2  # too young: its producer may be on its way
        sweep.after_s = 0
        assert sweep() == 1  # the orphan joins the line; the cancelled one is only forgotten
        assert r.zcard(joining) == 0
        assert sent() == [fine.job_id, "orphan"]  # in line, and admitted at once: there is room
        assert sweep() == 0 and sent() == [fine.job_id, "orphan"]
    finally:
        router.close()
