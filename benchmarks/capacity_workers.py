"""A batch through real worker processes against fake provider servers that enforce rolling
windows, measured from what the providers actually received.

Used by ``benchmarks/capacity.py`` (figures) and ``tests/test_e2e_capacity.py`` (claims).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

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

    @property
    def wall_over_minimum(self) -> float:
        return self.wall_s / self.theoretical_s if self.theoretical_s else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "wall_over_minimum": round(self.wall_over_minimum, 4)}


def theoretical_minimum(jobs: int, capacity_per_window: int, window_s: float) -> float:
    """Least wall time for ``jobs`` when the pool admits ``capacity_per_window`` per rolling
    window: full windows back to back (the last one starts, it need not end)."""
    full_windows = (jobs - 1) // capacity_per_window
    return max(full_windows * window_s, 1e-9)


def run_batch(redis_url: str, *, keys: int = 4, limit: int = 60, window_s: float = 60.0, jobs: int = 480,
              processes: int = 2, threads: int = 8, latency: float = 0.0,
              extra_env: dict[str, str] | None = None) -> CapacityRun:
    """Submit ``jobs`` batch jobs at once over ``keys`` OpenAI keys, each allowed ``limit``
    requests per rolling ``window_s`` by the fake server, and let the workers drain them."""
    ns = f"cap{uuid.uuid4().hex[:8]}"
    names = {f"k{i}": f"sk-cap-{i}-{uuid.uuid4().hex}" for i in range(keys)}
    # the provider in its own process, as a real one is (its clock not held up by ours)
    server = ProcessFakeServer("openai", keys=names, limits={k: KeyLimit(requests=limit, window=window_s)
                                                             for k in names}, latency=latency)
    base_url = server.start()
    folder = Path(tempfile.mkdtemp(prefix="rj-cap-"))
    spec = [{"key_id": k, "model_name": "gpt-4o-mini", "provider": "openai", "base_url": base_url,
             "windows": [{"limit": limit, "seconds": window_s}], "active": True} for k in names]
    (folder / "keys.json").write_text(json.dumps({"keys": spec}))
    env = {**(extra_env or {}), "REDIS_URL": redis_url, "ROUTER_NAMESPACE": ns, "ROUTER_KEYS_FILE": str(folder / "keys.json"),
           "SECRET_STORE_TYPE": "env", **{f"API_KEY_{k.upper()}": v for k, v in names.items()}}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    router = Router(Settings.from_env(env))
    try:
        with WorkerPool(env, processes=processes, threads=threads) as pool:
            pool.wait_consuming(redis_url, ns, processes=processes)
            started = time.monotonic()
            handles = [router.submit(f"job {i}", model="gpt-4o-mini", priority="batch", max_output_tokens=16)
                       for i in range(jobs)]
            results = list(router.as_completed(handles, timeout=max(120.0, 4 * jobs / (keys * limit) * window_s)))
            wall = time.monotonic() - started
            if os.environ.get("CAP_DEBUG"):
                q0 = min(r.queued_at or 0 for r in results)
                fin = sorted(round((r.finished_at or 0) - q0, 1) for r in results)
                print("finished (s after first queued):", fin[::8], "last", fin[-1], "wall", round(wall, 2))
        deliveries = 0
        for h in handles:
            deliveries += int(router.client.hget(router.schema.job(h.job_id), "deliveries") or 0)
        received = server.received()
        windows = {k: server.max_in_window(k, window_s) for k in names}
        return CapacityRun(
            keys=keys, limit_per_key=limit, window_s=window_s, jobs=jobs,
            completed=sum(1 for r in results if r.ok), failed=sum(1 for r in results if not r.ok),
            wall_s=wall, theoretical_s=theoretical_minimum(jobs, keys * limit, window_s),
            provider_429s=sum(1 for r in received if r.status == 429),
            max_in_window=windows,
            deliveries_per_job=deliveries / jobs,
        )
    finally:
        router.close()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
