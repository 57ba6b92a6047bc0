"""A batch through real worker processes against fake provider servers that enforce their
limits (rolling window, token bucket or quantized per second), measured from what the
providers actually received.

Used by ``benchmarks/capacity.py`` (figures) and ``tests/test_e2e_capacity.py`` (claims).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fakeproviders import KeyLimit, ProcessFakeServer  # noqa: E402
from router_jobs.client.router import Router  # noqa: E402
from router_jobs.settings import Settings  # noqa: E402
from tests.workerpool import WorkerPool  # noqa: E402


@dataclass
class CapacityRun:
    """What happened in one run."""

    keys: int
    limit_per_key: int
    window_s: float
    jobs: int
    completed: int
    failed: int
    wall_s: float
    theoretical_s: float
    provider_429s: int
    max_in_window: dict[str, int]
    deliveries_per_job: float
    mode: str = "rolling"
    latency_s: float = 0.0
    max_per_second: dict[str, int] | None = None
    interactive_p50_s: float | None = None
    interactive_p95_s: float | None = None
    interactive_jobs: int = 0
    attempts_max: int = 0
    start_rate_per_s: float | None = None  # accepted requests per second, first to last arrival
    limit_notes: list[str] | None = None  # one line per 429: which side of the window ran off our stamps
    #: bucket mode: the lowest level each key's bucket reached, replaying what the provider accepted
    lowest_bucket_level: dict[str, float] | None = None

    @property
    def wall_over_minimum(self) -> float:
        return self.wall_s / self.theoretical_s if self.theoretical_s else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "wall_over_minimum": round(self.wall_over_minimum, 4)}


def theoretical_minimum(jobs: int, capacity_per_window: int, window_s: float, mode: str = "rolling",
                        keys: int = 1, burst: int = 0) -> float:
    """Least wall time until the last of ``jobs`` may start when ``keys`` keys share
    ``capacity_per_window`` per window of ``window_s`` under the providers' ``mode`` and any
    number of jobs may start at the same moment:

    * rolling: full windows back to back;
    * bucket: each key's bucket (capacity = its limit, full at start) at once, then one
      request per key every window / limit seconds as it refills;
    * quantized: each key at most ceil(limit / window) + burst per whole second as well.

    Each key refills its own bucket: the pool's buckets together never hold a fraction of a
    request that one key can use, so the bucket minimum is counted per key in whole requests
    (the pool's combined refill rate would put the (capacity + 1)-th job ``keys`` times too
    early).
    """
    per_key = math.ceil(jobs / keys)
    limit = capacity_per_window // keys
    if mode == "bucket":
        return max((per_key - limit) * window_s / limit, 1e-9)
    if mode == "quantized":
        per_second = math.ceil(limit / window_s) + burst
        done, t = 0, 0
        counts: list[int] = []
        while True:
            in_window = sum(counts[max(0, t - int(math.ceil(window_s)) + 1):t])
            take = min(per_second, limit - in_window, per_key - done)
            counts.append(take)
            done += take
            if done >= per_key:
                return max(float(t), 1e-9)
            t += 1
    full_windows = (jobs - 1) // capacity_per_window
    return max(full_windows * window_s, 1e-9)


def achievable_minimum(jobs: int, capacity_per_window: int, window_s: float, mode: str = "rolling",
                       keys: int = 1, burst: int = 0, rate: float = math.inf) -> float:
    """Least wall time until the last of ``jobs`` may start when the providers' ``mode``
    limits hold exactly as in :func:`theoretical_minimum` and the workers start at most
    ``rate`` jobs per second (two starts at least 1 / ``rate`` apart).

    Simulated job by job: each job starts at the earliest moment that is at least 1 / ``rate``
    after the previous start and that some key allows (the key free earliest; ties to the
    lowest key). A key allows a start at ``t``

    * rolling: when fewer than its limit of its starts lie in (t - window, t];
    * bucket: when its token bucket (capacity = its limit, full at start, refilled
      continuously at limit / window per second) holds a whole request at ``t``;
    * quantized: when the rolling rule holds and the whole second of ``t`` (seconds aligned
      at t = 0, the first start) holds fewer than ceil(limit / window) + ``burst`` of its starts.

    With ``rate`` infinite this is :func:`theoretical_minimum`; with a finite ``rate`` it
    says how much later the last job must start because the workers cannot start a window's
    opening burst at once.
    """
    limit = capacity_per_window // keys
    if limit < 1 or rate <= 0:
        raise ValueError("each key needs a limit of at least 1 and the workers a positive rate")
    gap = 0.0 if math.isinf(rate) else 1.0 / rate
    per_second = math.ceil(limit / window_s) + burst
    interval = window_s / limit  # bucket: one request's worth of refill
    recent: list[deque[float]] = [deque(maxlen=limit) for _ in range(keys)]  # each key's last `limit` starts
    due = [0.0] * keys  # bucket: when each key's bucket would be empty again had it refilled untouched
    second = [-1] * keys  # quantized: the whole second of each key's last start and its count
    in_second = [0] * keys

    def earliest(k: int, t: float) -> float:
        if mode == "bucket":
            # the bucket holds a whole request once `due` lies at most (limit - 1) intervals ahead
            return max(t, due[k] - (limit - 1) * interval)
        log = recent[k]
        if len(log) == limit:
            t = max(t, log[0] + window_s)
        if mode == "quantized" and _whole_second(t) == second[k] and in_second[k] >= per_second:
            t = float(second[k] + 1)
        return t

    start = 0.0
    for i in range(jobs):
        not_before = start + gap if i else 0.0
        start, k = min((earliest(k, not_before), k) for k in range(keys))
        recent[k].append(start)
        due[k] = max(due[k], start) + interval
        s = _whole_second(start)
        in_second[k] = in_second[k] + 1 if s == second[k] else 1
        second[k] = s
    return max(start, 1e-9)


def _whole_second(t: float) -> int:
    """The whole second holding ``t`` (sums of 1 / rate land a hair below an integer)."""
    return math.floor(t + 1e-9)


def lowest_bucket_level(times: Sequence[float], capacity: float, interval_s: float) -> float:
    """Replay arrival times against a bucket of ``capacity`` (full at the first arrival)
    refilled one request per ``interval_s``; the lowest level left after an arrival (below 0:
    the provider would have refused one; near 0: the key was used to its limit)."""
    if not times:
        return capacity
    level, last, low = capacity, times[0], capacity
    for t in times:
        level = min(capacity, level + (t - last) / interval_s) - 1
        last = t
        low = min(low, level)
    return low


def run_batch(redis_url: str, *, keys: int = 4, limit: int = 60, window_s: float = 60.0, jobs: int = 480,
              processes: int = 2, threads: int = 8, latency: float = 0.0,
              extra_env: dict[str, str] | None = None, mode: str = "rolling", burst: int = 0,
              interactive_every: float = 0.0, interactive_cold: bool = False, margin_ms: int | None = None,
              declared_limit: int | None = None, declared_window_s: float | None = None,
              announce: bool = False) -> CapacityRun:
    """Submit ``jobs`` batch jobs at once over ``keys`` OpenAI keys, each allowed ``limit``
    requests per ``window_s`` by the fake server in enforcement ``mode`` (the keys file names
    the same mode), and let the workers drain them. With ``interactive_every`` > 0, one
    interactive job is submitted that often while the batch runs (its latency is measured): from
    a few seconds before the batch (as beside a live chat service), or with ``interactive_cold``
    from the moment the batch was submitted (a pool that has seen no interactive work yet).
    ``declared_limit``/``declared_window_s`` make the keys file claim another limit than the
    provider enforces (to provoke 429s). ``announce``: an interactive client (a gateway) says
    it serves before the batch comes (``Router.announce_interactive``)."""
    ns = f"cap{uuid.uuid4().hex[:8]}"
    names = {f"k{i}": f"sk-cap-{i}-{uuid.uuid4().hex}" for i in range(keys)}
    # the provider in its own process, as a real one is (its clock not held up by ours)
    server = ProcessFakeServer("openai", keys=names, limits={
        k: KeyLimit(requests=limit, window=window_s, mode=mode, burst=burst) for k in names}, latency=latency)
    base_url = server.start()
    folder = Path(tempfile.mkdtemp(prefix="rj-cap-"))
    spec = [{"key_id": k, "model_name": "gpt-4o-mini", "provider": "openai", "base_url": base_url,
             "windows": [{"limit": declared_limit or limit, "seconds": declared_window_s or window_s}],
             "active": True,
             "enforcement": {"mode": mode, "burst": burst}} for k in names]
    (folder / "keys.json").write_text(json.dumps({"keys": spec}))
    env = {**(extra_env or {}), "REDIS_URL": redis_url, "ROUTER_NAMESPACE": ns, "ROUTER_KEYS_FILE": str(folder / "keys.json"),
           "SECRET_STORE_TYPE": "env", **{f"API_KEY_{k.upper()}": v for k, v in names.items()}}
    if margin_ms is not None:
        env["ROUTER_POOL_MARGIN_MS"] = str(margin_ms)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    router = Router(Settings.from_env(env))
    try:
        with WorkerPool(env, processes=processes, threads=threads) as pool:
            pool.wait_consuming(redis_url, ns, processes=processes)
            # the booted workers have seeded the key registry; the router read it (empty) when
            # it was made and re-reads it at most once a second, so a batch submitted within
            # that second would go through a worker first (two deliveries per job). A producer
            # of a running system has long read it: measure that.
            router.pool.registry.current(force=True)
            if announce:
                router.announce_interactive(3600)
            probe = None
            if interactive_every > 0 and not interactive_cold:
                # interactive traffic is already running when the batch comes (as beside a live
                # chat service); only the waits of jobs submitted once the batch came count
                probe = _InteractiveProbe(router, interactive_every)
                time.sleep(max(3.0, 5 * interactive_every))
                probe.mark()
            started = time.monotonic()
            handles = [router.submit(f"job {i}", model="gpt-4o-mini", priority="batch", max_output_tokens=16)
                       for i in range(jobs)]
            if interactive_every > 0 and interactive_cold:
                probe = _InteractiveProbe(router, interactive_every)
                probe.mark()
            results = list(router.as_completed(handles, timeout=max(120.0, 4 * jobs / (keys * limit) * window_s)))
            wall = time.monotonic() - started
            waits = probe.stop() if probe is not None else []
            if os.environ.get("CAP_DEBUG"):
                q0 = min(r.queued_at or 0 for r in results)
                fin = sorted(round((r.finished_at or 0) - q0, 1) for r in results)
                print("finished (s after first queued):", fin[::8], "last", fin[-1], "wall", round(wall, 2))
                for r in results:
                    if r.attempts > 1 or (r.finished_at or 0) - q0 > wall - 5:
                        print("  slow/retried:", r.job_id[:8], r.attempts, r.key_id, round((r.started_at or 0) - q0, 2),
                              round((r.finished_at or 0) - q0, 2))
                print(pool.output()[-3000:])
        deliveries = 0
        for h in handles:
            deliveries += int(router.client.hget(router.schema.job(h.job_id), "deliveries") or 0)
        received = server.received()
        if os.environ.get("CAP_DEBUG"):
            ok = sorted(r.arrived for r in received if r.status == 200)
            if ok:
                hist: dict[int, int] = {}
                for a in ok:
                    hist[int(a - ok[0])] = hist.get(int(a - ok[0]), 0) + 1
                print("arrivals per second after the first:", [hist.get(i, 0) for i in range(max(hist) + 1)])
                stamps = sorted(int(json.loads(v)["t"]) / 1000 for v in
                                router.client.hvals(router.schema.pool_reservations("default")))
                if stamps:
                    sh: dict[int, int] = {}
                    for t in stamps:
                        sh[int(t - stamps[0])] = sh.get(int(t - stamps[0]), 0) + 1
                    print("final stamps per second after the first:", [sh.get(i, 0) for i in range(max(sh) + 1)])
            print("\n".join(_limit_report(router, handles, received, window_s)))
            for k in names:
                times = sorted(r.arrived for r in received if r.key == k and r.status == 200)
                gaps = sorted(round((b - a) * 1000) for a, b in zip(times, times[1:], strict=False))
                if gaps:
                    print(f"arrival gaps of {k} (ms): min {gaps[0]} p10 {gaps[len(gaps) // 10]} "
                          f"p50 {gaps[len(gaps) // 2]} p90 {gaps[9 * len(gaps) // 10]} max {gaps[-1]}")
        limit_notes = (_limit_report(router, handles, received, window_s)
                       if any(r.status == 429 for r in received) else [])
        windows = {k: server.max_in_window(k, window_s) for k in names}
        per_second = {k: max(server.per_second(k).values(), default=0) for k in names}
        levels = None
        if mode == "bucket":
            levels = {k: lowest_bucket_level(sorted(r.arrived for r in received if r.key == k and r.status == 200),
                                             limit, window_s / limit) for k in names}
        arrivals = sorted(r.arrived for r in received if r.status == 200)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        waits.sort()
        return CapacityRun(
            keys=keys, limit_per_key=limit, window_s=window_s, jobs=jobs,
            completed=sum(1 for r in results if r.ok), failed=sum(1 for r in results if not r.ok),
            wall_s=wall, theoretical_s=theoretical_minimum(jobs, keys * limit, window_s, mode, keys, burst),
            provider_429s=sum(1 for r in received if r.status == 429),
            max_in_window=windows,
            deliveries_per_job=deliveries / jobs,
            mode=mode, latency_s=latency, max_per_second=per_second,
            interactive_p50_s=waits[len(waits) // 2] if waits else None,
            interactive_p95_s=waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else None,
            interactive_jobs=len(waits),
            attempts_max=max((r.attempts for r in results), default=0),
            start_rate_per_s=(len(arrivals) - 1) / span if span > 0 else None, limit_notes=limit_notes,
            lowest_bucket_level=levels,
        )
    finally:
        router.close()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _InteractiveProbe:
    """Submits one interactive job every ``every`` s in a thread; ``stop()`` returns each
    one's time from submit to result, in seconds."""

    def __init__(self, router: Router, every: float) -> None:
        self.router, self.every = router, every
        self.times: list[float] = []
        self.began = time.monotonic()
        self.since = float("inf")  # waits count for jobs submitted from then on (mark())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.every):
            t0 = time.monotonic()
            h = self.router.submit(f"chat {i}", model="gpt-4o-mini", priority="interactive", max_output_tokens=16)
            self.router.await_result(h, timeout=120)
            waited = time.monotonic() - t0
            if t0 >= self.since:
                self.times.append(waited)
            if os.environ.get("CAP_DEBUG") and waited > 1.0:
                print(f"interactive {i}: submitted {t0 - self.since:.1f} s after the batch, waited {waited:.2f} s")
            i += 1

    def mark(self) -> None:
        """From now on, count the waits."""
        self.since = time.monotonic()

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(130)
        return list(self.times)


def _limit_report(router: Router, handles: list, received: list, window_s: float) -> list[str]:  # type: ignore[type-arg]
    """Debug: for each 429, how far the request that drew it and the oldest request the server
    still counted were from our stamps (arrival - stamp, less the median over all requests):
    which side of the window ran off our clock, and by how much."""
    by_prompt = {}
    for h in handles:
        spec = json.loads(router.client.hget(router.schema.job(h.job_id), "spec"))
        by_prompt[spec["prompt"]] = h.job_id
    stamps: dict[str, list[float]] = {}
    for rid, raw in router.client.hgetall(router.schema.pool_reservations("default")).items():
        stamps.setdefault(rid.decode().split(":")[0], []).append(int(json.loads(raw)["t"]) / 1000)

    # the server's clock (monotonic) and ours (Redis TIME) differ by a constant: the median of
    # arrival - stamp over requests with one reservation
    single = sorted(r.arrived - got[0] for r in received if r.status == 200
                    for got in [stamps.get(by_prompt.get(r.prompt, ""), [])] if len(got) == 1)
    if not single:
        return []
    base = single[len(single) // 2]

    def off(r: Any) -> float | None:
        got = stamps.get(by_prompt.get(r.prompt, ""), [])
        return min((r.arrived - t - base for t in got), key=abs) if got else None

    offs = sorted(o for o in (off(r) for r in received if r.status == 200) if o is not None)
    out = [f"arrival - stamp (s, less the median): p1 {offs[len(offs) // 100]:+.3f} "
          f"p99 {offs[99 * len(offs) // 100]:+.3f} max {offs[-1]:+.3f}"]
    for r in [r for r in received if r.status == 429][:10]:
        counted = sorted((x for x in received if x.key == r.key and x.status == 200
                          and r.arrived - window_s < x.arrived <= r.arrived), key=lambda x: x.arrived)
        if not counted:
            continue
        o_new, o_old = off(r), off(counted[0])
        first = min(x.arrived for x in received)
        out.append(f"429 on {r.key} at {r.arrived - first:.3f} s: server counted {len(counted)}, the oldest "
              f"{r.arrived - counted[0].arrived:.3f} s before; arrival - stamp: new "
              f"{'?' if o_new is None else f'{o_new:+.3f}'}, oldest "
              f"{'?' if o_old is None else f'{o_old:+.3f}'}")
    return out
