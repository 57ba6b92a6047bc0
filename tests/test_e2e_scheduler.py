"""The scheduler through real worker processes against fake providers enforcing each model of
limit, checked against what the provider received (window by window, second by second)."""

from __future__ import annotations

import pytest

from benchmarks.capacity_workers import run_batch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["rolling", "bucket", "quantized"])
def test_each_enforcement_mode_is_met_exactly_with_one_delivery_per_job(redis_url: str, mode: str) -> None:
    # 2 keys x 10 requests per 4 s (quantized: also 3 per whole second), a batch of 2x that
    run = run_batch(redis_url, keys=2, limit=10, window_s=4.0, jobs=40, processes=2, threads=8, latency=0.05,
                    mode=mode)
    assert run.completed == 40 and run.failed == 0
    assert run.provider_429s == 0
    if mode == "bucket":
        # replaying what the provider accepted: no bucket ever went below empty, and every
        # key's bucket was drained to under one request (used to its limit, beyond what a
        # rolling window of 10 per 4 s would have sent)
        assert run.lowest_bucket_level is not None
        assert all(0 <= v < 1 for v in run.lowest_bucket_level.values()), run.lowest_bucket_level
        assert any(n > 10 for n in run.max_in_window.values()), run.max_in_window
    else:
        assert all(n <= 10 for n in run.max_in_window.values()), run.max_in_window
    if mode == "quantized":
        assert run.max_per_second is not None and all(n <= 3 for n in run.max_per_second.values())
    elif mode == "rolling":  # the pool was used to its limit: some window of every key held all it may
        assert all(n == 10 for n in run.max_in_window.values()), run.max_in_window
    # each job was delivered once: it waited in the pool, not in the queue
    assert run.deliveries_per_job <= 1.1


def test_no_job_fails_because_of_429s_alone(redis_url: str) -> None:
    # the provider allows far less than the keys file says: 429s come, and cost no attempts
    run = run_batch(redis_url, keys=1, limit=4, window_s=1.0, jobs=24, processes=2, threads=4,
                    extra_env={"ROUTER_MAX_ATTEMPTS": "1"}, declared_limit=600, declared_window_s=60.0)
    assert run.provider_429s > 0
    assert run.completed == 24 and run.failed == 0
    assert run.attempts_max == 1
