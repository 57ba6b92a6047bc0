"""The pool's headline claim, checked against what the provider actually received: 2,000 jobs
over 4 keys through several worker processes, a fake provider enforcing a rolling 60 s
window per key; no window on any key ever holds more than its limit, no 429, nothing lost."""

from __future__ import annotations

import pytest

from benchmarks.capacity_workers import run_batch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_thousand_jobs_never_exceed_any_rolling_window(redis_url: str) -> None:
    run = run_batch(redis_url, keys=4, limit=300, window_s=60.0, jobs=2000, processes=3, threads=8)
    assert run.completed == 2000 and run.failed == 0
    assert run.provider_429s == 0, "\n".join(run.limit_notes or [])
    assert all(n <= 300 for n in run.max_in_window.values()), run.max_in_window
    # the pool was used: every key reached its limit in some window
    assert all(n == 300 for n in run.max_in_window.values()), run.max_in_window
