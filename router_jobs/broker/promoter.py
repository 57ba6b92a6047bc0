"""Promote delayed messages at their due time, not at the next consumer tick.

Consumers run ``promote.lua`` on a tick (at least every 200 ms) and, when the delay set tells
them the next due time, at that time. A message parked with a delay shorter than the tick,
after the consumers last looked, would otherwise wait for the next tick: a 100 ms retry
delay ran after ~200 ms. The process that parks a message knows its due time, so it keeps a
small timer heap and runs ``promote.lua`` itself when the message falls due. The message is
in Redis all along (any process may promote it, and each moves exactly once); the timer is
only a hint, so losing it (a crash) costs at most one consumer tick.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger("router_jobs.broker")

#: Re-check again when Redis says the next message is due within this many ms (it may be the
#: one we were told about, a few ms early on the server's clock).
FOLLOW_UP_MS = 250


class DuePromoter:
    """One daemon thread per broker that promotes queues when messages parked here fall due.

    ``promote(queue)`` runs ``promote.lua`` for that queue and returns the ms until the next
    due message (or -1). Redis errors are logged and the hint dropped: consumers' own ticks
    promote the message then.
    """

    def __init__(self, promote: Callable[[str], int]) -> None:
        self._promote = promote
        self._heap: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors = 0

    def due_in(self, queue: str, delay_ms: int) -> None:
        """A message of ``queue`` was parked for ``delay_ms``: promote it when due."""
        at = time.monotonic() + max(0, delay_ms) / 1000
        with self._cv:
            if self._closed:
                return
            heapq.heappush(self._heap, (at, queue))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="due-promoter")
                self._thread.start()
            self._cv.notify()

    def close(self) -> None:
        """Stop the thread (pending hints are dropped)."""
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _next_due(self) -> set[str] | None:
        """Wait until the earliest hint is due; return the queues due now (None: closed)."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                now = time.monotonic()
                queues = set()
                while self._heap and self._heap[0][0] <= now:
                    queues.add(heapq.heappop(self._heap)[1])
                return queues

    def _run(self) -> None:
        while True:
            queues = self._next_due()
            if queues is None:
                return
            for queue in queues:
                try:
                    wait_ms = self._promote(queue)
                except redis.RedisError as exc:
                    self.errors += 1
                    log.warning("promoting due messages of %s failed (%s: %s); consumers will "
                                "promote them at their next tick", queue, type(exc).__name__, exc)
                    continue
                if 0 <= wait_ms <= FOLLOW_UP_MS:
                    self.due_in(queue, wait_ms)
