"""Helpers shared by the benchmark scripts: a private redis-server and worker pools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

__all__ = ["RedisServer", "start_pool", "stop_pool", "percentile"]


def start_pool(module: str, env: dict[str, str], processes: int, threads: int) -> subprocess.Popen[bytes]:
    """``dramatiq <module>`` with the given size, in its own session, output discarded."""
    full = {**os.environ, **env, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", module, "--processes", str(processes), "--threads", str(threads)],
        env=full, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_pool(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def wait_ready(client, key: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Wait until the pool answers a probe message (it has booted)."""
    deadline = time.monotonic() + timeout
    while client.llen(key) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("worker pool did not boot")
        time.sleep(0.05)
