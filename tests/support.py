"""Helpers shared by the tests: waiting on a condition (never a bare sleep), and reading a
Prometheus exposition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

#: {(sample name, sorted label pairs): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        time.sleep(interval)


def metric_samples(text: str) -> Samples:
    """A Prometheus text exposition as {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric_total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))
