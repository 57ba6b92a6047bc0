"""A private redis-server for a test run: free port, no persistence, killed at the end."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from router_jobs.backend.connection import redis_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>; ``url`` to connect, ``stop()`` to end it."""

    def __init__(
        self, *extra: str, port: int | None = None, appendonly: bool = False,
        data_dir: Path | None = None, binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="rj-redis-"))
        cmd = [
            binary or redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--dir", str(self.dir),
            "--maxmemory-policy", "noeviction", *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("test redis-server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
