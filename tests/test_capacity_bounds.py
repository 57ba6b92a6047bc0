"""The capacity benchmark's two bounds: the providers' limits alone (``theoretical_minimum``)
and those limits with workers that start at most R jobs per second (``achievable_minimum``).
Pure functions; every expected figure below is worked out by hand in the comment beside it."""

from __future__ import annotations

import itertools
import math

import pytest

from benchmarks.capacity_workers import achievable_minimum, theoretical_minimum

# --- rolling -------------------------------------------------------------------------------


def test_rolling_without_a_rate_limit_is_full_windows_back_to_back() -> None:
    # 1 key, 2 per 10 s: starts 0, 0, 10, 10, 20
    assert achievable_minimum(5, 2, 10.0, "rolling") == pytest.approx(20.0)
    assert theoretical_minimum(5, 2, 10.0, "rolling") == pytest.approx(20.0)
    # 4 jobs fit two windows exactly: the last starts at 10
    assert achievable_minimum(4, 2, 10.0, "rolling") == pytest.approx(10.0)


def test_rolling_with_one_start_per_second_over_two_keys() -> None:
    # 2 keys x 2 per 10 s, 1 start/s: k0 at 0 and 1, k1 at 2 and 3; job 4 may start at 4 but
    # k0 is free again at 10 (its start at 0 leaves), k1 only at 12; job 5 at 11 on k0
    # (its start at 1 leaves at 11). Without the rate limit: 10.
    assert achievable_minimum(6, 4, 10.0, "rolling", keys=2, rate=1.0) == pytest.approx(11.0)
    assert theoretical_minimum(6, 4, 10.0, "rolling", keys=2) == pytest.approx(10.0)


def test_rolling_600_per_minute_on_20_s_windows_at_100_starts_per_second() -> None:
    # 4 keys x 200 per 20 s, 1,600 jobs (2x), 100 starts/s: the first window's 800 starts take
    # 0 .. 7.99 s; each slot comes back 20 s after its start, so job 800 + j starts at 20 + j/100
    # and the last (j = 799) at 27.99 s, where the pool alone would allow 20 s.
    assert achievable_minimum(1600, 800, 20.0, "rolling", keys=4, rate=100.0) == pytest.approx(27.99)
    assert theoretical_minimum(1600, 800, 20.0, "rolling", keys=4) == pytest.approx(20.0)


def test_a_rate_fast_enough_changes_nothing() -> None:
    # 1 key, 10 per 60 s, 20 jobs at 10 starts/s: the burst takes 0.9 s, the second window
    # opens at 60 and its starts follow 0.1 s apart: 60.9 (the spacing, not the pool, adds 0.9)
    assert achievable_minimum(20, 10, 60.0, "rolling", rate=10.0) == pytest.approx(60.9)


# --- bucket --------------------------------------------------------------------------------


def test_bucket_without_a_rate_limit_is_the_capacity_then_the_refill() -> None:
    # 1 key, capacity 2, refill 2 per 10 s (one request per 5 s), full at start:
    # starts 0, 0, 5, 10, 15
    assert achievable_minimum(5, 2, 10.0, "bucket") == pytest.approx(15.0)
    assert theoretical_minimum(5, 2, 10.0, "bucket") == pytest.approx(15.0)
    assert achievable_minimum(2, 2, 10.0, "bucket") == pytest.approx(0.0, abs=1e-6)


def test_bucket_refills_while_slow_workers_drain_it() -> None:
    # capacity 2, one request per 5 s, one start per 2 s. Level: 2 -> 1 at 0; 1.4 -> 0.4 at 2;
    # reaches 1 at 2 + 0.6 x 5 = 5 -> 0 at 5; then 10, 15. The last start: 15, as if the
    # workers were infinitely fast (the refill during the burst makes up for its length) ...
    assert achievable_minimum(5, 2, 10.0, "bucket", rate=0.5) == pytest.approx(15.0)
    # ... where a rolling window of the same limit makes the slow burst cost its length:
    # 0, 2, 10, 12, 20
    assert achievable_minimum(5, 2, 10.0, "rolling", rate=0.5) == pytest.approx(20.0)


def test_bucket_with_slow_starts_falls_to_the_refill_rate() -> None:
    # capacity 2, one request per 5 s, one start per 6 s: the bucket never empties, so the
    # spacing alone decides: 0, 6, 12, 18
    assert achievable_minimum(4, 2, 10.0, "bucket", rate=1 / 6) == pytest.approx(18.0)


def test_bucket_minimum_counts_whole_requests_per_key() -> None:
    # 4 keys x 1 request per 60 s, 5 jobs: four start at 0; the fifth needs one key's bucket
    # to refill a whole request: 60 s. (The pool's combined refill, 4 per 60 s, said 15 s.)
    assert theoretical_minimum(5, 4, 60.0, "bucket", keys=4) == pytest.approx(60.0)
    assert achievable_minimum(5, 4, 60.0, "bucket", keys=4) == pytest.approx(60.0)
    # 4 keys x 2 per 60 s (one request per 30 s each), 13 jobs: 8 at 0, 4 at 30, 1 at 60
    assert theoretical_minimum(13, 8, 60.0, "bucket", keys=4) == pytest.approx(60.0)
    assert achievable_minimum(13, 8, 60.0, "bucket", keys=4) == pytest.approx(60.0)


# --- quantized -----------------------------------------------------------------------------


def test_quantized_spreads_a_window_over_its_seconds() -> None:
    # 1 key, 6 per 3 s, so at most ceil(6 / 3) = 2 per whole second: 2 at 0, 2 at 1, 2 at 2
    assert achievable_minimum(6, 6, 3.0, "quantized") == pytest.approx(2.0)
    assert theoretical_minimum(6, 6, 3.0, "quantized") == pytest.approx(2.0)
    # (a rolling provider takes all six at 0)
    assert achievable_minimum(6, 6, 3.0, "rolling") == pytest.approx(0.0, abs=1e-6)
    # with a burst of 1 (3 per second): 3 at 0, 3 at 1, none at 2 (the window is full),
    # one at 3 when second 0's starts leave
    assert achievable_minimum(7, 6, 3.0, "quantized", burst=1) == pytest.approx(3.0)
    assert theoretical_minimum(7, 6, 3.0, "quantized", burst=1) == pytest.approx(3.0)


def test_quantized_with_four_starts_per_second() -> None:
    # 6 per 3 s, 2 per second, one start per 0.25 s: 0, 0.25 | second 0 full -> 1, 1.25 |
    # -> 2, 2.25 | 2.5 falls in the full second 2 -> 3 (the start at 0 has left) | 3.25 (the
    # start at 0.25 has left, second 3 holds one)
    assert achievable_minimum(8, 6, 3.0, "quantized", rate=4.0) == pytest.approx(3.25)


# --- the two bounds together ---------------------------------------------------------------

GRID = list(itertools.product([1, 2, 3, 4], [1, 2, 3, 5, 7], [1.0, 3.0, 10.0], [0, 1]))


@pytest.mark.parametrize("mode", ["rolling", "bucket", "quantized"])
def test_with_no_rate_limit_the_simulation_is_the_theoretical_minimum(mode: str) -> None:
    for keys, limit, window, burst in GRID:
        for jobs in range(1, 4 * keys * limit + 2):
            args = (jobs, keys * limit, window, mode, keys, burst)
            assert achievable_minimum(*args) == pytest.approx(theoretical_minimum(*args), abs=1e-6), args


@pytest.mark.parametrize("mode", ["rolling", "bucket", "quantized"])
def test_slower_workers_never_finish_sooner(mode: str) -> None:
    for keys, limit, window, burst in GRID:
        jobs = 3 * keys * limit + 1
        args = (jobs, keys * limit, window, mode, keys, burst)
        bounds = [achievable_minimum(*args, rate=r) for r in (math.inf, 50.0, 5.0, 1.0, 0.3)]
        assert bounds[0] == pytest.approx(theoretical_minimum(*args), abs=1e-6)
        assert bounds == sorted(bounds), (args, bounds)
        # the spacing alone: job n starts no sooner than n / rate
        assert bounds[-1] >= (jobs - 1) / 0.3 - 1e-6


def test_a_key_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        achievable_minimum(10, 3, 10.0, keys=4)
    with pytest.raises(ValueError):
        achievable_minimum(10, 4, 10.0, keys=4, rate=0.0)
