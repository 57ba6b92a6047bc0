"""Run ``routerctl serve`` as a subprocess for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    """``routerctl serve`` on a free port; ``url`` is its ``/v1`` base URL."""

    def __init__(self, env: dict[str, str], *extra: str, workers: int = 1) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="rj-gateway-")) / "gateway.log"
        argv = [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port), "--workers", str(workers),
                "--log-level", "warning", *extra]
        full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, env=full, cwd=ROOT, start_new_session=True,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited; log:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.root + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway did not answer; log:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole server (a crash: no clean-up)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
