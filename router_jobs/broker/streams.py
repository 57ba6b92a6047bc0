"""A Dramatiq broker on Redis Streams.

Each queue is one stream with one consumer group (``workers``); every worker process is a
consumer. What a message goes through:

* enqueue: ``XADD`` to the queue's stream, or, with a delay, ``ZADD`` to the queue's delay set
  scored by *server* time + delay (``delay.lua``). Delayed messages never sit in a worker's
  memory; ``promote.lua`` moves due ones into the stream atomically, and any consumer may run it.
  The process that parks a message also promotes it at its due time (``promoter.py``).
* consume: ``XREADGROUP … BLOCK`` (no polling back-off: an idle worker starts new work within a
  few ms). The block is cut short when a delayed message falls due.
* ack: ``XACK`` + ``XDEL`` in one script (``ack.lua``, which Redis runs even when out of
  memory). nack: to the queue's dead-letter stream with the reason (``dead_letter.lua``),
  after the broker's dead-letter hooks (``leaving.py``) heard of it.
* crash recovery: entries left pending by a dead consumer are taken over with ``XAUTOCLAIM``
  once idle past the visibility timeout (``reclaim.lua``); a live consumer keeps the entries it
  is still working on fresh with ``XCLAIM … JUSTID`` (heartbeat), so a long call is never
  handed to a second worker. An entry started ``max_deliveries`` times goes to the
  dead-letter stream, after the dead-letter hooks: it keeps killing its workers.
* retries of failed messages are parked with ``defer.lua`` (``leaving.StreamRetries``).
* graceful shutdown: prefetched entries are handed back (``requeue.lua``).

The broker and its consumer stay in one module (about 600 lines) on purpose: they are two
halves of one protocol over the same keys and scripts, and reading one needs the other.

Redis errors never end a consumer or its threads: the consumer logs them, backs off and
goes on (each maintenance step on its own), and the ack flusher retries every ack until
Redis takes it. Producer calls raise :class:`~router_jobs.errors.BrokerError`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed, DecodeError, QueueJoinTimeout
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.broker.leaving import DeadLetterHook, is_kept_pending, use_stream_retries
from router_jobs.broker.promoter import DuePromoter
from router_jobs.broker.wire import decode_dead_letter
from router_jobs.errors import BrokerError, RouterJobsError

log = logging.getLogger("router_jobs.broker")

GROUP = "workers"

#: Queues whose prefetch is capped so that merely queued batch jobs never sit in a worker's
#: memory while interactive jobs arrive (the work queue orders by actor priority anyway).
LOW_PRIORITY_QUEUES = frozenset({"batch"})

class BrokerScripts(ScriptSet):
    """The Lua scripts in ``broker/lua/``."""

    ack = lua("ack")
    promote = lua("promote")
    reclaim = lua("reclaim")
    defer = lua("defer")
    delay = lua("delay")
    requeue = lua("requeue")
    dead_letter = lua("dead_letter")
    dlq_replay = lua("dlq_replay")



def _entry_proxy(entry_id: str, data: bytes, redelivered: bool = False) -> _StreamMessage:
    return _StreamMessage(Message.decode(data), entry_id, redelivered)


class _StreamMessage(MessageProxy):
    """A message proxy that remembers which stream entry delivered it, and whether that
    entry was taken over from a consumer that died (a suspect)."""

    def __init__(self, message: Message, entry_id: str, redelivered: bool = False) -> None:
        super().__init__(message)
        self.entry_id = entry_id
        self.redelivered = redelivered


class StartTracker(Middleware):
    """Counts starts of redelivered entries, so that poison detection blames only messages
    that were actually running when their worker died (not ones merely prefetched)."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if getattr(message, "redelivered", False) and isinstance(broker, StreamsBroker):
            queue = q_name(message.queue_name)
            broker.client.hincrby(broker.schema.starts(queue), message.entry_id, 1)


class StreamsBroker(Broker):
    """Dramatiq broker on Redis Streams. See the module docstring for the protocol.

    Parameters:
      client: a redis-py client (``decode_responses=False``).
      schema: key names (namespace prefix).
      visibility_timeout: ms an entry may stay unacknowledged without a heartbeat before
        another consumer takes it over.
      max_deliveries: starts after which an entry that never got acknowledged (its worker
        died each time) is dead-lettered.
      dead_letter_maxlen: approximate cap of each dead-letter stream.
      low_priority_prefetch: prefetch cap for low-priority queues (default: half the
        worker's prefetch, i.e. its thread count).
      middleware: as for any Dramatiq broker.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        schema: RedisSchema | None = None,
        visibility_timeout: int = 30000,
        max_deliveries: int = 5,
        dead_letter_maxlen: int = 100_000,
        low_priority_prefetch: int | None = None,
        middleware: list[Any] | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.client = client
        self.schema = schema or RedisSchema()
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.dead_letter_maxlen = dead_letter_maxlen
        self.low_priority_prefetch = low_priority_prefetch
        self.queues: set[str] = set()
        self.scripts = BrokerScripts(client)
        self.add_middleware(StartTracker())
        use_stream_retries(self)
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        #: the key pool's admission step, run by consumers when it is due (set by the worker);
        #: returns seconds until it should run again
        self.admission: Callable[[], float] | None = None
        self.promoter = DuePromoter(self._promote_queue)

    def close(self) -> None:
        """Stop the promoter thread; the Redis client is the caller's."""
        self.promoter.close()
        super().close()

    def _promote_queue(self, queue_name: str) -> int:
        _moved, wait_ms = self.scripts.promote(
            keys=[self.schema.delayed(queue_name), self.schema.stream(queue_name)], args=[1000])
        return int(wait_ms)

    def before_dead_letter(self, message: MessageProxy, *, kind: str, reason: str) -> None:
        """Tell every middleware implementing :class:`DeadLetterHook` that ``message`` is about
        to be dead-lettered. Their errors propagate: the entry then stays pending."""
        for middleware in self.middleware:
            if isinstance(middleware, DeadLetterHook):
                middleware.before_dead_letter(self, message, kind=kind, reason=reason)

    # -- declaring -------------------------------------------------------------------------
    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (idempotent): its stream and consumer group are created."""
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.ensure_group(queue_name)
        self.emit_after("declare_queue", queue_name)

    def ensure_group(self, queue_name: str) -> None:
        """Create the queue's stream and consumer group unless they exist."""
        try:
            self.client.xgroup_create(self.schema.stream(queue_name), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"cannot create consumer group of {queue_name!r}: {exc}") from exc
        except redis.RedisError as exc:
            raise BrokerError(f"redis unavailable while declaring {queue_name!r}: {exc}") from exc
        self.client.sadd(self.schema.queues(), queue_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    # -- producing -------------------------------------------------------------------------
    def enqueue(self, message: Any, *, delay: int | None = None) -> Message:
        """Add a message to its queue now, or after ``delay`` ms (server clock)."""
        queue_name = q_name(message.queue_name)
        self.declare_queue(queue_name)
        message = message.copy(queue_name=queue_name, options={"redis_message_id": uuid.uuid4().hex})
        message.options.pop("eta", None)
        self.emit_before("enqueue", message, delay)
        data = message.encode()
        try:
            if delay:
                self.scripts.delay(keys=[self.schema.delayed(queue_name)], args=[int(delay), data])
                self.promoter.due_in(queue_name, int(delay))
            else:
                self.client.xadd(self.schema.stream(queue_name), {"m": data})
        except redis.RedisError as exc:
            raise BrokerError(f"cannot enqueue on {queue_name!r}: {exc}") from exc
        self.emit_after("enqueue", message, delay)
        return message

    def defer(self, message: MessageProxy, delay_ms: int) -> None:
        """Acknowledge a delivered message and park a fresh copy for ``delay_ms``, atomically.

        This is how a job is sent back for backpressure: no window in which it is lost or
        doubled. The worker's own ack that follows is a harmless no-op.
        """
        entry_id = getattr(message, "entry_id", None)
        queue_name = q_name(message.queue_name)
        fresh = message.copy(options={"redis_message_id": uuid.uuid4().hex})
        fresh.options.pop("eta", None)
        if entry_id is None:  # not delivered by us (e.g. a stub): just enqueue
            self.enqueue(fresh, delay=max(0, int(delay_ms)))
            return
        try:
            self.scripts.defer(
                keys=[self.schema.stream(queue_name), self.schema.delayed(queue_name)],
                args=[GROUP, entry_id, max(0, int(delay_ms)), fresh.encode()],
            )
        except redis.RedisError as exc:
            raise BrokerError(f"cannot defer a message on {queue_name!r}: {exc}") from exc
        self.promoter.due_in(queue_name, max(0, int(delay_ms)))

    # -- consuming -------------------------------------------------------------------------
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """A consumer of one queue for this process (a consumer of the group)."""
        self.declare_queue(queue_name)
        if queue_name in LOW_PRIORITY_QUEUES:
            cap = self.low_priority_prefetch or max(1, prefetch // 2)
            prefetch = min(prefetch, cap)
        return StreamConsumer(self, queue_name, prefetch, timeout)

    # -- housekeeping ----------------------------------------------------------------------
    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue: ready, pending and delayed."""
        ks = self.schema
        self.client.delete(ks.stream(queue_name), ks.delayed(queue_name))
        self.ensure_group(queue_name)

    def flush_all(self) -> None:
        """Drop all messages from all declared queues."""
        for queue_name in self.queues:
            self.flush(queue_name)

    def queue_size(self, queue_name: str) -> int:
        """Messages not yet acknowledged (ready + in flight) plus delayed ones."""
        ks = self.schema
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(ks.stream(queue_name))
        pipe.zcard(ks.delayed(queue_name))
        xlen, delayed = pipe.execute()
        return int(xlen) + int(delayed)

    def join(self, queue_name: str, *, interval: int = 50, timeout: int | None = None) -> None:
        """Wait until the queue has nothing ready, in flight or delayed (for tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while self.queue_size(queue_name):
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)

    def dead_letters(self, queue_name: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead-lettered entries of a queue, newest first."""
        rows: Any = self.client.xrevrange(self.schema.dead(queue_name), count=count)
        return [decode_dead_letter(queue_name, entry_id, fields).as_dict() for entry_id, fields in rows]


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
            reason = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            if entry_id is not None:
                self.broker.before_dead_letter(message, kind="failed", reason=reason)
                self.scripts.dead_letter(
                    keys=[self.stream, self.dead, self.broker.schema.starts(self.queue_name)],
                    args=[GROUP, entry_id, message.encode(), reason, self.broker.dead_letter_maxlen, 1, 0],
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
        if message is not None:
            self.broker.before_dead_letter(message, kind="crashed", reason=reason)
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


def set_stream_broker(broker: StreamsBroker) -> StreamsBroker:
    """Make ``broker`` Dramatiq's global broker (what ``dramatiq workers`` uses)."""
    dramatiq.set_broker(broker)
    return broker
