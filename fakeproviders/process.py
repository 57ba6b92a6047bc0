"""A fake provider in a process of its own, like a real provider.

A server that shares a process with a busy producer (a demo driver, a benchmark) records
arrivals late whenever that process holds the GIL, which shifts its rolling windows against
the key pool's by more than any margin covers. :class:`ProcessFakeServer` runs a
:class:`~.server.FakeProviderServer` in a child process and answers the same questions
(``received``, ``max_in_window``) over a pipe.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Mapping
from typing import Any

from fakeproviders.server import FakeProviderServer, KeyLimit, Record


def _child(conn: Any, provider: str, keys: dict[str, str], limits: dict[str, KeyLimit], latency: float) -> None:
    # Ctrl-C reaches the whole foreground process group: the parent decides when to stop us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = FakeProviderServer(provider, keys=keys, limits=limits, latency=latency)
    conn.send(server.start())
    while True:
        cmd, args = conn.recv()
        if cmd == "received":
            conn.send(server.received(*args))
        elif cmd == "max_in_window":
            conn.send(server.max_in_window(*args))
        elif cmd == "per_second":
            conn.send(server.per_second(*args))
        else:
            server.stop()
            conn.send(None)
            return


class ProcessFakeServer:
    """:class:`FakeProviderServer` in a child process: ``start``, ``received``,
    ``max_in_window``, ``stop`` (also a context manager)."""

    def __init__(self, provider: str = "openai", keys: Mapping[str, str] | None = None,
                 limits: Mapping[str, KeyLimit] | None = None, *, latency: float = 0.0) -> None:
        self.provider = provider
        self._args = (provider, dict(keys or {}), dict(limits or {}), latency)
        self._conn: Any = None
        self._proc: Any = None
        self._lock = threading.Lock()
        self.base_url = ""

    def start(self) -> str:
        # fork: the child only serves HTTP, and a fork needs no re-import of the caller's main
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, *self._args), daemon=True)
        self._proc.start()
        self._conn = parent
        self.base_url = str(parent.recv())
        return self.base_url

    def _ask(self, cmd: str, *args: Any) -> Any:
        with self._lock:
            self._conn.send((cmd, args))
            return self._conn.recv()

    def received(self, key: str | None = None) -> list[Record]:
        """Every request the server received (of one key name if given), oldest first."""
        return list(self._ask("received", key))

    def max_in_window(self, key: str, seconds: float, unit: str = "requests", status: int | None = 200) -> int:
        """The most requests (or tokens) of ``key`` in any window of ``seconds``."""
        return int(self._ask("max_in_window", key, seconds, unit, status))

    def per_second(self, key: str, status: int | None = 200) -> dict[int, int]:
        """Requests of ``key`` per whole second of the server's clock."""
        return dict(self._ask("per_second", key, status))

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._ask("stop")
        except (EOFError, OSError, BrokenPipeError):
            pass  # the child is gone already
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc = None

    def __enter__(self) -> ProcessFakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
