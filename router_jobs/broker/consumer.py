"""The consumer half of the Redis Streams broker (:mod:`router_jobs.broker.streams`): one per
queue per worker process. It reads with ``XREADGROUP BLOCK``, hands out messages, acks them
through a group-committing flusher thread (``ack.lua``), keeps held entries fresh (heartbeat,
``XCLAIM JUSTID``), takes over a dead consumer's entries (``reclaim.lua``), promotes due
delayed messages (``promote.lua``), runs the pool's admission when room is due, and sends an
entry started too often to the dead-letter stream. Redis errors never end it or its threads:
it logs them, backs off and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message

from router_jobs.broker.leaving import is_kept_pending
from router_jobs.broker.streams import GROUP
from router_jobs.errors import BrokerError, RouterJobsError

if TYPE_CHECKING:
    from router_jobs.broker.streams import StreamsBroker

log = logging.getLogger("router_jobs.broker")


def _entry_proxy(entry_id: str, data: bytes, redelivered: bool = False) -> _StreamMessage:
    return _StreamMessage(Message.decode(data), entry_id, redelivered)


class _StreamMessage(MessageProxy):
    """A message proxy that remembers which stream entry delivered it, and whether that
    entry was taken over from a consumer that died (a suspect)."""

    def __init__(self, message: Message, entry_id: str, redelivered: bool = False) -> None:
        super().__init__(message)
        self.entry_id = entry_id
        self.redelivered = redelivered

class StreamConsumer(Consumer):
    """Consumes one queue for one worker process. Acks may come from worker threads."""

    def __init__(self, broker: StreamsBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.client = broker.client
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        ks = broker.schema
        self.stream = ks.stream(queue_name)
        self.delayed = ks.delayed(queue_name)
        self.dead = ks.dead(queue_name)
        self.name = broker.consumer_name
        self.scripts = broker.scripts
        self.visibility = broker.visibility_timeout
        self._cache: deque[_StreamMessage] = deque()
        self._suspects: deque[_StreamMessage] = deque()
        self._suspect_running: str | None = None
        self._acks: list[str] = []
        self._ack_cv = threading.Condition()
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._inflight: dict[str, _StreamMessage] = {}
        self._lock = threading.Lock()
        self._room = threading.Event()
        self._backoff = 0.0  # seconds to pause after a Redis error in __next__ (grows, capped)
        #: Redis errors met so far (reported in the log as they happen), for health and tests.
        self.errors: dict[str, int] = {}
        now = time.monotonic()
        self._next_heartbeat = now  # announce this consumer at once (health, readiness)
        self._next_reclaim = now  # take over orphans at once on start
        self._next_promote = now
        self._next_admit = now

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._inflight)

    def _forget(self, message: MessageProxy) -> None:
        entry_id = getattr(message, "entry_id", "")
        with self._lock:
            self._inflight.pop(entry_id, None)
            if self._suspect_running == entry_id:
                self._suspect_running = None
        self._room.set()

    def _next_cached(self) -> _StreamMessage | None:
        """The next local message: fresh ones first; redelivered ones (suspects) one at a
        time, so an innocent message is never twice in a crash with a poison one."""
        if self._cache:
            return self._cache.popleft()
        with self._lock:
            if self._suspects and self._suspect_running is None:
                msg = self._suspects.popleft()
                self._suspect_running = msg.entry_id
                return msg
        return None

    def _report(self, where: str, exc: Exception) -> None:
        """Count and log a Redis error met by ``where`` (the consumer goes on)."""
        n = self.errors[where] = self.errors.get(where, 0) + 1
        if n == 1 or n % 100 == 0:
            log.warning("%s of queue %s: redis error #%d: %s: %s", where, self.queue_name, n,
                        type(exc).__name__, exc)

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge: XACK + XDEL, group-committed by a flusher thread.

        Whatever acks wait when the flusher wakes go out as one call of ``ack.lua``: an idle
        worker acks at once, a busy one pays one round trip for many. An ack lost to a crash
        before its flush means one more delivery, which the job's own record turns into a
        no-op (a job ends exactly once). A message marked with ``leaving.keep_pending`` is
        only forgotten locally.
        """
        entry_id = getattr(message, "entry_id", None)
        if entry_id is not None and not is_kept_pending(message):
            with self._ack_cv:
                self._acks.append(entry_id)
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                     name=f"ack-flusher({self.queue_name})")
                    self._flusher.start()
                self._ack_cv.notify()
        self._forget(message)

    def _flush_loop(self) -> None:
        """The flusher thread: survives every Redis error (see ``_flush_acks``)."""
        while True:
            with self._ack_cv:
                while not self._acks and not self._closed:
                    self._ack_cv.wait(1.0)
                batch, self._acks = self._acks, []
                if not batch and self._closed:
                    return
            self._flush_acks(batch)

    def _flush_acks(self, batch: list[str]) -> None:
        """Send ``batch`` until Redis takes it. Any Redis error (connection lost, out of memory,
        read-only replica …) is reported and retried with backoff, for as long as it takes,
        except at shutdown, when the entries are left to be delivered again."""
        delay = 0.05
        while batch:
            try:
                self.scripts.ack(keys=[self.stream, self.broker.schema.starts(self.queue_name)],
                                 args=[GROUP, *batch])
                return
            except redis.RedisError as exc:
                self._report("ack flusher", exc)
                if self._closed and delay > 2:
                    return  # shutting down with Redis gone: the entries will be redelivered
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def nack(self, message: MessageProxy) -> None:
        """Dead-letter a rejected message, after the broker's dead-letter hooks.

        When a hook or Redis fails, the entry stays pending (it comes back after the
        visibility timeout) and :class:`ConnectionClosed` makes Dramatiq retry this nack.
        """
        entry_id = getattr(message, "entry_id", None)
        reason = "rejected by the worker"
        exc = getattr(message, "_exception", None)
        if exc is not None:
            reason = self.broker.redact(f"{type(exc).__name__}: {exc}")[:2000]
        try:
            if entry_id is not None:
                self.broker.before_dead_letter(message, kind="failed", reason=reason)
                # the message carries the actor's traceback in its options: redacted like the reason
                stored = self.broker.redact(message.encode().decode()).encode()
                self.scripts.dead_letter(
                    keys=[self.stream, self.dead, self.broker.schema.starts(self.queue_name)],
                    args=[GROUP, entry_id, stored, reason, self.broker.dead_letter_maxlen, 1, 0],
                )
        except (redis.RedisError, RouterJobsError) as err:
            self._report("nack", err)
            raise ConnectionClosed(err) from None
        self._forget(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        args: list[Any] = [GROUP]
        for m in messages:
            entry_id = getattr(m, "entry_id", None)
            if entry_id is not None:
                args.extend([entry_id, m.encode()])
                self._forget(m)
        if len(args) > 1:
            try:
                self.scripts.requeue(keys=[self.stream, self.broker.schema.starts(self.queue_name)], args=args)
            except redis.RedisError as exc:
                self._report("requeue", exc)
                raise ConnectionClosed(exc) from None

    # -- maintenance -------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        with self._lock:
            ids: list[Any] = list(self._inflight)
        for i in range(0, len(ids), 500):
            self.client.xclaim(self.stream, GROUP, self.name, 0, ids[i:i + 500], justid=True)
        self.client.hset(self.broker.schema.consumers(), self.name, str(time.time()))

    def _reclaim(self) -> None:
        room = self.prefetch - self.outstanding
        if room <= 0:
            return
        starts_key = self.broker.schema.starts(self.queue_name)
        flat, poison = self.scripts.reclaim(
            keys=[self.stream, starts_key],
            args=[GROUP, self.name, self.visibility, room, self.broker.max_deliveries],
        )
        for i in range(0, len(flat), 2):
            self._take(flat[i].decode(), flat[i + 1], redelivered=True)
        for i in range(0, len(poison), 4):
            self._bury(poison[i].decode(), poison[i + 1], int(poison[i + 2]), int(poison[i + 3]))

    def _bury(self, entry_id: str, data: bytes, starts: int, deliveries: int) -> None:
        """Dead-letter a poison entry (claimed by this consumer), after the dead-letter hooks.
        Should anything fail, the entry stays pending and is found again by a later reclaim."""
        reason = f"started {starts} times without an ack (its worker crashed or timed out each time)"
        try:
            message = _entry_proxy(entry_id, data, True)
        except DecodeError:
            message = None  # not a message of ours: nobody to tell
        if message is not None and self.broker.before_dead_letter(message, kind="crashed", reason=reason):
            # its job had ended: a worker finished it and died before the ack left (acks are
            # flushed in batches), and again on each redelivery. Nothing is dead: acknowledge it
            self.scripts.ack(keys=[self.stream, self.broker.schema.starts(self.queue_name)],
                             args=[GROUP, entry_id])
            return
        self.scripts.dead_letter(
            keys=[self.stream, self.dead, self.broker.schema.starts(self.queue_name)],
            args=[GROUP, entry_id, data, reason, self.broker.dead_letter_maxlen, deliveries, starts],
        )

    def _promote(self) -> float:
        """Move due delayed messages; return seconds until the next one falls due."""
        moved, wait_ms = self.scripts.promote(keys=[self.delayed, self.stream], args=[1000])
        if int(moved) >= 1000:
            return 0.0
        return 1.0 if int(wait_ms) < 0 else int(wait_ms) / 1000

    def _take(self, entry_id: str, data: bytes, redelivered: bool = False) -> None:
        msg = _entry_proxy(entry_id, data, redelivered)
        with self._lock:
            self._inflight[entry_id] = msg
            if redelivered:
                self._suspects.append(msg)
                return
        self._cache.append(msg)

    def _maintain(self, now: float) -> None:
        """Heartbeat, reclaim, promote: each on its own schedule, and each survives Redis
        errors on its own (reported, retried soon), so that one refused write (say, the
        heartbeat's HSET when Redis is out of memory) never stops the others."""
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.visibility / 3000
            try:
                self._heartbeat()
            except redis.RedisError as exc:
                self._report("heartbeat", exc)
                self._next_heartbeat = now + min(0.5, self.visibility / 6000)
        if now >= self._next_reclaim:
            self._next_reclaim = now + max(0.1, self.visibility / 4000)
            try:
                self._reclaim()
            except (redis.RedisError, RouterJobsError) as exc:
                self._report("reclaim", exc)
        if now >= self._next_promote:
            # Re-check at least every 200 ms: another process may park a sooner message.
            try:
                self._next_promote = now + min(0.2, self._promote())
            except redis.RedisError as exc:
                self._report("promote", exc)
                self._next_promote = now + 0.2
        admission = self.broker.admission
        if admission is not None and now >= self._next_admit:
            try:
                self._next_admit = now + admission()
            except redis.RedisError as exc:
                self._report("admission", exc)
                self._next_admit = now + 0.2

    # -- iteration ---------------------------------------------------------------------------
    def __next__(self) -> MessageProxy | None:
        try:
            msg = self._next_cached()
            if msg is not None:
                return msg
            now = time.monotonic()
            self._maintain(now)
            msg = self._next_cached()
            if msg is not None:
                return msg
            room = self.prefetch - self.outstanding
            wake = min(self._next_heartbeat, self._next_reclaim, self._next_promote,
                       self._next_admit if self.broker.admission is not None else self._next_promote)
            block_ms = int(max(1.0, min(self.timeout, (wake - now) * 1000)))
            if room <= 0:
                self._room.clear()
                if self.outstanding >= self.prefetch:
                    self._room.wait(block_ms / 1000)
                return None
            reply: Any = self.client.xreadgroup(
                GROUP, self.name, {self.stream: ">"}, count=room, block=block_ms
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    data = fields.get(b"m")
                    if data is None:  # foreign entry: drop it
                        self.client.xack(self.stream, GROUP, entry_id)
                        continue
                    self._take(entry_id.decode(), data)
            self._backoff = 0.0
            return self._next_cached()
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted (flush): recreate and go on
                try:
                    self.broker.ensure_group(self.queue_name)
                except BrokerError as err:
                    self._report("consumer", err)
                return None
            self._pause_after(exc)
            return None
        except redis.RedisError as exc:
            # Not ConnectionClosed: Dramatiq would replace this consumer, and the new one
            # would not heartbeat the messages this one handed to worker threads.
            self._pause_after(exc)
            return None

    def _pause_after(self, exc: redis.RedisError) -> None:
        """Report a Redis error of the consumer loop and back off (50 ms, doubling, ≤ 1 s)."""
        self._report("consumer", exc)
        self._backoff = min(1.0, max(0.05, self._backoff * 2))
        time.sleep(self._backoff)

    def close(self) -> None:
        """Hand back what we hold locally, flush acks, forget this consumer when it holds nothing."""
        with self._lock:
            held = list(self._cache) + list(self._suspects)
            self._cache.clear()
            self._suspects.clear()
        try:
            self.requeue(held)
        except ConnectionClosed:
            pass  # Redis is gone: the entries stay pending and are reclaimed later
        with self._ack_cv:
            self._closed = True
            self._ack_cv.notify()
        if self._flusher is not None:
            self._flusher.join(10)
        try:
            pending = self.client.xpending_range(self.stream, GROUP, "-", "+", 1, consumername=self.name)
            if not pending:
                self.client.xgroup_delconsumer(self.stream, GROUP, self.name)
                self.client.hdel(self.broker.schema.consumers(), self.name)
        except redis.RedisError:
            pass
