"""Cost of log redaction per record: whole secret values only, and with pieces of them.

Every log record a worker writes, and every provider error message, goes through
:func:`router_jobs.providers.errors_map.redact`. This times one call on a provider's error
line and on a 4 KB traceback, for pools of 10, 100 and 1,000 secrets of 51 characters,
without and with the piece index (:mod:`router_jobs.secrets.fragments`); best of 5.

    python -m benchmarks.redaction
"""

from __future__ import annotations

import secrets
import timeit

from router_jobs.providers.errors_map import redact
from router_jobs.secrets.fragments import FragmentIndex

LINE = ("openai: 401 Incorrect API key provided: sk-proj-abcd****************************wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys.")
TRACE = ("Traceback (most recent call last):\n  File \"/srv/app/router_jobs/worker/executor.py\", line 210, "
         "in _call\n    reply = adapter.complete(creds, request)\n") * 30


def best_us(call: object, runs: int) -> float:
    return min(timeit.repeat(call, number=runs, repeat=5)) / runs * 1e6  # type: ignore[arg-type]


def main() -> None:
    print("(timings of a loaded machine say little: run it on an idle one)")
    none = FragmentIndex(())
    for n in (10, 100, 1000):
        values = tuple(f"sk-proj-{secrets.token_urlsafe(32)}" for _ in range(n))
        pieces = FragmentIndex(values)
        for name, text, runs in (("error line", LINE, 1000), ("4 KB traceback", TRACE[:4096], 100)):
            exact = best_us(lambda text=text, values=values: redact(text, values, none), runs)
            full = best_us(lambda text=text, values=values, pieces=pieces: redact(text, values, pieces), runs)
            print(f"{n:5d} secrets, {name:15s}: whole values {exact:8.1f} us, with pieces {full:8.1f} us")


if __name__ == "__main__":
    main()
