"""Capacity benchmarks: the scheduler through real workers, per provider enforcement mode.

Run from the repository root::

    python -m benchmarks.capacity                          # the full matrix (over an hour)
    python -m benchmarks.capacity --modes quantized --rates 150 --over 2 --window 20
    python -m benchmarks.capacity --interactive-every 1    # interactive latency beside each batch
    python -m benchmarks.capacity --pool --no-workers      # reserve() latency, booked-slot simulation
    python -m benchmarks.capacity --window 20 --json rows.json   # every row also as JSON

The worker matrix first measures the workers' own ceiling R: the requests per second that
reach the provider when no limit holds them back, with the same processes, threads and
provider latency (``--no-calibrate`` skips it). It then prints one row per (mode, rate per
minute, oversubscription), each batch's wall time beside two bounds on when its last job may
start (``benchmarks/capacity_workers.py``):

* ``min`` (``theoretical_minimum``): the providers' limits alone, as if any number of jobs
  could start at the same moment;
* ``ach`` (``achievable_minimum``): the same limits, with starts at least 1 / R apart,
  simulated job by job. A rolling window's opening burst then takes burst / R seconds to
  start and the next window opens as late, however well the pool schedules.

``wall/min`` and ``wall/ach`` are the batch's wall time over each; ``limit`` says ``pool``
when ``ach`` is within 3 % of ``min`` (the pool's limits set the pace) and ``workers`` when
the workers' own ceiling costs more than that. Beside them: 429s the provider sent,
deliveries per job, the most requests any window (and any whole second) of a key held, and
interactive p50/p95 when asked. A summary follows: cells with wall/ach <= 1.03, cells with
429s, the most deliveries per job. ``--window`` shortens windows keeping each rate per
minute; ``--json PATH`` writes every row as a JSON list.

``--pool`` also prints the direct-reservation figures:

1. ``reserve`` latency p50/p99 with 10, 100 and 1,000 keys in one pool (aim: p99 <= 2 ms at
   1,000 keys), on a pool with room and on a pool that is full (every call books a slot).
2. A simulation of 5x oversubscription: worker threads take jobs, ``reserve``; on ``Wait``
   they sleep ``wait_ms`` and try again with the same reservation id; on a grant they "call"
   (a short sleep), ``settle`` and take the next job. Figures: attempts per completed job,
   wake-ups per job that had to wait (aim <= 1.3), wasted wake-ups (woke and still no room),
   wall time over the theoretical minimum, and the most entries any rolling window held.
   The comparison is a naive limiter that answers every waiter with the same shared "try
   again at T" (the time the oldest entry leaves the window).

``run_pool_benchmarks()`` returns the figures as a dict so that other benchmarks (real worker
processes against fake provider servers) can call and extend it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.pool import Grant, ReserveRequest, Wait
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.models import Usage

# a naive sliding-window limiter for comparison: every waiter is told the same "retry at T"
NAIVE_LUA = """
-- KEYS[1] log zset (member -> stamp ms)  ARGV[1] limit  ARGV[2] window ms  ARGV[3] member
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, win = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + win - now + 1
"""


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def reservation_latency(client: redis.Redis, n_keys: int, calls: int, *, full: bool = False) -> dict[str, float]:
    """p50/p99 (ms) of ``reserve`` with ``n_keys`` keys serving one model."""
    ns = f"bench{uuid.uuid4().hex[:8]}"
    limit = 2 if full else 1_000_000
    keys = [{"key_id": f"k{i:04d}", "model_name": "m", "provider": "fake", "rpm": limit, "tpm": 100_000_000}
            for i in range(n_keys)]
    pool = RedisKeyPool(client, RedisSchema(ns), parse_keys({"keys": keys}))
    if full:  # fill every key first; then every measured call books a future slot
        for _ in range(n_keys * limit):
            pool.reserve(ReserveRequest(uuid.uuid4().hex, ["m"], 100, 100))
    for _ in range(50):  # warm up (script load, connection)
        pool.reserve(ReserveRequest(uuid.uuid4().hex, ["m"], 100, 100))
    lat = []
    for _ in range(calls):
        rid = uuid.uuid4().hex
        t0 = time.perf_counter()
        pool.reserve(ReserveRequest(rid, ["m"], 100, 100))
        lat.append((time.perf_counter() - t0) * 1000)
    _drop_namespace(client, ns)
    return {"keys": n_keys, "p50_ms": statistics.median(lat), "p99_ms": percentile(lat, 0.99)}


def _drop_namespace(client: redis.Redis, ns: str) -> None:
    for k in client.scan_iter(match=f"{ns}:*", count=1000):
        client.delete(k)


@dataclass
class SimResult:
    scheme: str
    jobs: int
    completed: int = 0
    attempts: int = 0
    waited_jobs: int = 0
    wakeups: int = 0
    wasted_wakeups: int = 0
    wall: float = 0.0
    theoretical: float = 0.0
    stamps: list[float] = field(default_factory=list)

    def row(self, limit_window: float, limit: int) -> dict[str, Any]:
        st = sorted(self.stamps)
        worst = max((sum(1 for t in st[i:] if t < st[i] + limit_window) for i in range(len(st))), default=0)
        return {
            "scheme": self.scheme,
            "completed": f"{self.completed}/{self.jobs}",
            "attempts/job": round(self.attempts / max(1, self.completed), 3),
            "wakeups/waited job": round(self.wakeups / max(1, self.waited_jobs), 3),
            "wasted wakeups/job": round(self.wasted_wakeups / max(1, self.completed), 3),
            "wall/min": round(self.wall / self.theoretical, 3) if self.theoretical else None,
            "max in any window": f"{worst} (limit {limit})",
        }


def simulate(reserve: Callable[[str], float | None], settle: Callable[[str], None], *, scheme: str, jobs: int,
             threads: int, call_s: float, capacity: int, window_s: float) -> SimResult:
    """Worker threads over a shared job list. ``reserve(rid)`` -> None (granted) or seconds to wait."""
    res = SimResult(scheme, jobs)
    lock = threading.Lock()
    todo = list(range(jobs))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            rid = uuid.uuid4().hex
            waited = False
            while True:
                wait = reserve(rid)
                with lock:
                    res.attempts += 1
                    if waited:
                        res.wakeups += 1
                        if wait is not None:
                            res.wasted_wakeups += 1
                if wait is None:
                    break
                if not waited:
                    with lock:
                        res.waited_jobs += 1
                waited = True
                time.sleep(wait)
            stamp = time.monotonic()
            time.sleep(call_s)
            settle(rid)
            with lock:
                res.completed += 1
                res.stamps.append(stamp)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    res.wall = time.monotonic() - t0
    # the first `capacity` go at once; each later window admits `capacity` more
    res.theoretical = max(1, -(-jobs // capacity) - 1) * window_s + call_s
    # (stamps are the client's call times: what a provider's own rolling window would see)
    return res


def oversubscription(client: redis.Redis, *, keys: int = 4, per_key: int = 5, window_s: float = 2.0,
                     factor: int = 5, windows: int = 5, call_s: float = 0.01, margin_ms: int = 150,
                     late_ms: int = 100) -> list[dict[str, Any]]:
    """Booked slots (RedisKeyPool) vs a shared "retry at T", ``factor`` x more workers than capacity."""
    capacity = keys * per_key
    jobs = capacity * windows
    threads = capacity * factor
    ns = f"bench{uuid.uuid4().hex[:8]}"
    spec = [{"key_id": f"k{i}", "model_name": "m", "provider": "fake",
             "windows": [{"limit": per_key, "seconds": window_s}]} for i in range(keys)]
    pool = RedisKeyPool(client, RedisSchema(ns), parse_keys({"keys": spec}), margin_ms=margin_ms, late_ms=late_ms)
    grants: dict[str, Grant] = {}
    glock = threading.Lock()

    def booked_reserve(rid: str) -> float | None:
        out = pool.reserve(ReserveRequest(rid, ["m"], 10, 10))
        if isinstance(out, Grant):
            with glock:
                grants[rid] = out
            return None
        assert isinstance(out, Wait) and out.retryable, out
        return out.wait_ms / 1000

    def booked_settle(rid: str) -> None:
        with glock:
            g = grants.pop(rid)
        pool.settle(g, Usage(input_tokens=10, output_tokens=5))

    booked = simulate(booked_reserve, booked_settle, scheme="booked slots (RedisKeyPool)", jobs=jobs,
                      threads=threads, call_s=call_s, capacity=capacity, window_s=window_s)

    naive_script = client.register_script(NAIVE_LUA)
    naive_ns = f"{ns}:naive"

    def naive_reserve(rid: str) -> float | None:
        # the naive scheme tries keys in order; every waiter gets the same soonest T
        waits = []
        for i in range(keys):
            w = int(naive_script(keys=[f"{naive_ns}:{i}"], args=[per_key, int(window_s * 1000), rid]))
            if w < 0:
                return None
            waits.append(w)
        return min(waits) / 1000

    naive = simulate(naive_reserve, lambda rid: None, scheme='shared "retry at T"', jobs=jobs, threads=threads,
                     call_s=call_s, capacity=capacity, window_s=window_s)
    _drop_namespace(client, ns)
    return [booked.row(window_s, capacity), naive.row(window_s, capacity)]


def run_pool_benchmarks(client: redis.Redis, *, quick: bool = False) -> dict[str, Any]:
    """Every capacity figure as a dict (printable by :func:`print_report`)."""
    calls = 500 if quick else 3000
    latency = [reservation_latency(client, n, calls) for n in (10, 100, 1000)]
    latency_full = [reservation_latency(client, n, calls // 2, full=True) for n in (10, 100, 1000)]
    over = oversubscription(client, windows=3 if quick else 5)
    return {"latency_room": latency, "latency_full": latency_full, "oversubscription": over}


def print_report(figures: dict[str, Any]) -> None:
    print("reserve latency, pool with room (aim p99 <= 2 ms at 1,000 keys)")
    for row in figures["latency_room"]:
        print(f"  {row['keys']:>5} keys   p50 {row['p50_ms']:.3f} ms   p99 {row['p99_ms']:.3f} ms")
    print("reserve latency, full pool (every call books a future slot)")
    for row in figures["latency_full"]:
        print(f"  {row['keys']:>5} keys   p50 {row['p50_ms']:.3f} ms   p99 {row['p99_ms']:.3f} ms")
    print("5x oversubscription (4 keys x 5 per 2 s window, 100 worker threads, 100 jobs; margin 150 ms)")
    rows = figures["oversubscription"]
    cols = list(rows[0])
    width = max(len(c) for c in cols)
    for c in cols:
        print(f"  {c:<{width}}  " + "  ".join(f"{str(r[c]):<28}" for r in rows))


AIM = 1.03  # the aim for wall time over the bound


def run_worker_matrix(url: str, *, modes: list[str], rates: list[int], overs: list[float], window_s: float,
                      keys: int = 4, processes: int = 2, threads: int = 32, latency: float = 0.1,
                      interactive_every: float = 0.0, ceiling: float | None = None,
                      json_path: str | None = None, reserve: str | None = None,
                      interactive_cold: bool = False, env: dict[str, str] | None = None,
                      announce: bool = False) -> list[dict[str, Any]]:
    """One batch per (mode, rate per minute, oversubscription) through real worker processes
    against fake providers enforcing ``mode``. Windows are ``window_s`` long and hold
    rate x window_s / 60 requests (so a 10 s window keeps each rate per minute).

    ``ceiling`` (starts per second the workers manage, :func:`calibrate_workers`) adds the
    achievable bound to each row (:func:`bound_columns`). Each row is printed as it is
    measured and, with ``json_path``, every row so far is written there as a JSON list."""
    from benchmarks.capacity_workers import run_batch

    rows: list[dict[str, Any]] = []
    for mode in modes:
        for rate in rates:
            for over in overs:
                limit = max(1, round(rate * window_s / 60))
                jobs = int(over * keys * limit)
                run = run_batch(url, keys=keys, limit=limit, window_s=window_s, jobs=jobs, processes=processes,
                                threads=threads, latency=latency, mode=mode, interactive_every=interactive_every,
                                interactive_cold=interactive_cold, announce=announce,
                                extra_env={**(env or {}), **({"ROUTER_INTERACTIVE_RESERVE": reserve} if reserve else {})})
                row = {**run.as_dict(), "rate_per_min": rate, "over": over, "processes": processes,
                       "threads": threads, "interactive_every_s": interactive_every or None,
                       "interactive_cold": interactive_cold, "reserve": reserve or "auto", "env": env or {},
                       "announce": announce}
                row.update(bound_columns(row, ceiling))
                rows.append(row)
                print_matrix_row(row, flush=True)
                for note in run.limit_notes or []:
                    print("    " + note, flush=True)
                if json_path:
                    write_rows(json_path, rows)
    return rows


def bound_columns(row: dict[str, Any], ceiling: float | None) -> dict[str, Any]:
    """The achievable bound for a matrix row: the least time until its last job may start
    when the workers start at most ``ceiling`` jobs per second, wall time over it, and which
    of the two limits the cell: ``pool`` when that bound is within 3 % of the pool's own
    (theoretical) minimum, else ``workers``. All None without a ceiling."""
    from benchmarks.capacity_workers import achievable_minimum

    if ceiling is None:
        return {"workers_ceiling_per_s": None, "achievable_s": None, "wall_over_achievable": None, "limit": None}
    keys, limit = row["keys"], row["limit_per_key"]
    achievable = achievable_minimum(row["jobs"], keys * limit, row["window_s"], row["mode"], keys, rate=ceiling)
    return {
        "workers_ceiling_per_s": round(ceiling, 2),
        "achievable_s": round(achievable, 3),
        "wall_over_achievable": round(row["wall_s"] / achievable, 4),
        "limit": "pool" if achievable <= AIM * row["theoretical_s"] else "workers",
    }


def write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Every row so far as a JSON list at ``path`` (replaced whole, so a stopped run keeps
    the rows it measured)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)


def calibrate_workers(url: str, *, processes: int, threads: int, latency: float,
                      jobs: int = 1000) -> tuple[float, float]:
    """The workers' own ceiling when no limit holds them back: (requests per second reaching
    the provider, first to last arrival; jobs completed per second of wall time)."""
    from benchmarks.capacity_workers import run_batch

    run = run_batch(url, keys=4, limit=1_000_000, window_s=60.0, jobs=jobs, processes=processes, threads=threads,
                    latency=latency)
    completed = run.completed / run.wall_s
    return (run.start_rate_per_s or completed), completed


MATRIX_HEADER = (f"{'mode':<10}{'rate/min':>9}{'over':>6}{'jobs':>6}{'wall s':>8}{'min s':>7}{'wall/min':>9}"
                 f"{'ach s':>7}{'wall/ach':>9}{'limit':>8}"
                 f"{'429s':>6}{'deliv/job':>10}{'max/window':>11}{'max/s':>6}{'ok':>6}{'inter p50/p95 s':>17}")


def print_matrix_row(r: dict[str, Any], flush: bool = False) -> None:
    inter = "-" if r["interactive_p50_s"] is None else f"{r['interactive_p50_s']:.2f}/{r['interactive_p95_s']:.2f}"
    if r.get("achievable_s") is None:
        bound = f"{'-':>7}{'-':>9}{'-':>8}"
    else:
        bound = f"{r['achievable_s']:>7.1f}{r['wall_over_achievable']:>9.3f}{r['limit']:>8}"
    print(f"{r['mode']:<10}{r['rate_per_min']:>9}{r['over']:>6}{r['jobs']:>6}{r['wall_s']:>8.1f}"
          f"{r['theoretical_s']:>7.1f}{r['wall_over_minimum']:>9.3f}{bound}{r['provider_429s']:>6}"
          f"{r['deliveries_per_job']:>10.3f}{max(r['max_in_window'].values()):>7}/{r['limit_per_key']:<3}"
          f"{max((r['max_per_second'] or {}).values(), default=0):>6}{r['completed']:>6}{inter:>17}", flush=flush)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The matrix against the issue's aims: cells within 3 % of the achievable bound, cells
    where the provider sent 429s, the most deliveries per job, cells with jobs not completed."""
    bounded = [r for r in rows if r.get("wall_over_achievable") is not None]
    return {
        "cells": len(rows),
        "cells_with_bound": len(bounded),
        "meeting_aim": sum(1 for r in bounded if r["wall_over_achievable"] <= AIM),
        "missing_aim": [r for r in bounded if r["wall_over_achievable"] > AIM],
        "limited_by_workers": sum(1 for r in bounded if r["limit"] == "workers"),
        "cells_with_429s": sum(1 for r in rows if r["provider_429s"] > 0),
        "max_deliveries_per_job": max((r["deliveries_per_job"] for r in rows), default=0.0),
        "incomplete": [r for r in rows if r["completed"] < r["jobs"]],
    }


def _cell(r: dict[str, Any]) -> str:
    return f"{r['mode']} {r['rate_per_min']}/min {r['over']:g}x"


def print_summary(summary: dict[str, Any]) -> None:
    n = summary["cells"]
    if summary["cells_with_bound"]:
        missed = ", ".join(f"{_cell(r)} {r['wall_over_achievable']:.3f}" for r in summary["missing_aim"])
        print(f"wall/ach <= {AIM}: {summary['meeting_aim']} of {summary['cells_with_bound']} cells"
              + (f" (missed: {missed})" if missed else ""))
        print(f"limit: workers in {summary['limited_by_workers']} of {summary['cells_with_bound']} cells, "
              "pool in the rest")
    else:
        print("wall/ach: not measured (--no-calibrate)")
    print(f"429s: in {summary['cells_with_429s']} of {n} cells")
    print(f"deliveries per job: at most {summary['max_deliveries_per_job']:.3f}")
    for r in summary["incomplete"]:
        print(f"incomplete: {_cell(r)} {r['completed']}/{r['jobs']} jobs completed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", help="use this server (default: start a private one)")
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--pool", action="store_true", help="also the reserve() latency and booked-slot simulation")
    ap.add_argument("--no-workers", action="store_true", help="skip the real-worker matrix")
    ap.add_argument("--modes", default="rolling,bucket,quantized", help="provider enforcement modes")
    ap.add_argument("--rates", default="60,150,600", help="requests per minute per key")
    ap.add_argument("--over", default="2,5", help="oversubscription: jobs / one window's capacity")
    ap.add_argument("--window", type=float, default=60.0, help="window seconds (limits scaled to keep the rate)")
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1, help="provider latency, seconds")
    ap.add_argument("--interactive-every", type=float, default=0.0,
                    help="submit one interactive job this often during each batch (0: none)")
    ap.add_argument("--cold", action="store_true",
                    help="interactive jobs start with the batch (the pool has seen none before it)")
    ap.add_argument("--announce", action="store_true",
                    help="an interactive client (as a running gateway does) announces itself before the batch")
    ap.add_argument("--reserve", choices=["auto", "always", "off"],
                    help="ROUTER_INTERACTIVE_RESERVE for the workers and the producer (default: auto)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the workers and the producer (repeatable), e.g. ROUTER_INTERACTIVE_SHARE_MIN=0.1")
    ap.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                    help="first measure the workers' own ceiling R (default; --no-calibrate skips it and the "
                         "achievable bound)")
    ap.add_argument("--json", metavar="PATH", help="also write every matrix row to PATH as a JSON list")
    ns = ap.parse_args()
    server = None
    url = ns.redis_url
    if not url:
        from tests.redis_server import RedisServer

        server = RedisServer()
        url = server.url
    client = redis.Redis.from_url(url)
    try:
        if ns.pool:
            print_report(run_pool_benchmarks(client, quick=ns.quick))
        if not ns.no_workers:
            ceiling = None
            if ns.calibrate:
                ceiling, completed = calibrate_workers(url, processes=ns.processes, threads=ns.threads,
                                                       latency=ns.latency)
                print(f"workers' ceiling R: {ceiling:.1f} requests/s reaching the provider ({completed:.1f} jobs/s "
                      f"completed over the wall; {ns.processes} processes x {ns.threads} threads, "
                      f"{ns.latency * 1000:.0f} ms provider latency, no limit); the pool's long-run rate: "
                      + ", ".join(f"{ns.keys * int(r) / 60:.1f}/s at {r}/min" for r in ns.rates.split(",")))
            print(f"{ns.keys} keys, windows of {ns.window:g} s, {ns.processes} worker processes x {ns.threads} "
                  f"threads, provider latency {ns.latency * 1000:.0f} ms; min = least time until the last job "
                  "may start under the mode; ach = the same when starts are at least 1/R apart; "
                  f"limit = pool when ach <= {AIM} x min, else workers")
            print(MATRIX_HEADER)
            rows = run_worker_matrix(url, modes=ns.modes.split(","), rates=[int(r) for r in ns.rates.split(",")],
                                     overs=[float(o) for o in ns.over.split(",")], window_s=ns.window,
                                     keys=ns.keys, processes=ns.processes, threads=ns.threads,
                                     latency=ns.latency, interactive_every=ns.interactive_every,
                                     ceiling=ceiling, json_path=ns.json, reserve=ns.reserve,
                                     interactive_cold=ns.cold, announce=ns.announce,
                                     env=dict(e.split("=", 1) for e in ns.env))
            print_summary(summarize(rows))
    finally:
        client.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
