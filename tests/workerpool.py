"""Run a real worker pool (``routerctl worker``) as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil


def write_keys(keys: list[dict[str, Any]], **extra: Any) -> Path:
    """Write a keys file in the seed format; returns its path."""
    path = Path(tempfile.mkdtemp(prefix="rj-keys-")) / "keys.json"
    path.write_text(json.dumps({"keys": keys, **extra}))
    return path


def fake_key(key_id: str = "fake-1", model: str = "fake-model", **limits: Any) -> dict[str, Any]:
    return {"key_id": key_id, "model_name": model, "provider": "fake", "active": True, **limits}


class WorkerPool:
    """``routerctl worker`` with the given environment; ``stop()`` ends it gracefully."""

    def __init__(self, env: dict[str, str], processes: int = 2, threads: int = 4,
                 queues: tuple[str, ...] = ()) -> None:
        self.log = Path(tempfile.mkdtemp(prefix="rj-worker-")) / "worker.log"
        argv = [sys.executable, "-m", "cli.main", "worker", "--processes", str(processes),
                "--threads", str(threads)]
        for q in queues:
            argv += ["--queues", q]
        full_env = {**os.environ, **env}
        root = str(Path(__file__).resolve().parent.parent)
        full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(argv, env=full_env, cwd=root, start_new_session=True,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def worker_pids(self, expected: int, timeout: float = 20.0) -> list[int]:
        """PIDs of the Dramatiq worker processes (waits until ``expected`` are up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                    if "dramatiq" in " ".join(p.cmdline())]
            workers = [p for p in kids if p.children() == [] and p.ppid() != self.proc.pid]
            if len(workers) >= expected:
                return [p.pid for p in workers]
            time.sleep(0.1)
        raise RuntimeError(f"worker processes did not start; log:\n{self.output()}")

    def wait_consuming(self, redis_url: str, namespace: str = "rj", timeout: float = 30.0,
                       processes: int = 1) -> None:
        """Wait until ``processes`` worker processes have booted and warmed up."""
        import redis

        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        try:
            while client.hlen(f"{namespace}:workers") < processes:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"workers did not start consuming; log:\n{self.output()}")
                time.sleep(0.05)
        finally:
            client.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the supervisor (graceful); whatever is left after ``timeout`` is killed."""
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _gone, alive = psutil.wait_procs(family, timeout=5)
        for p in alive:  # the pool runs in its own session: leave nothing behind
            p.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
