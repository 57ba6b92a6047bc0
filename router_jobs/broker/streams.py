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

The consumer (``consumer.py``) is the other half of this protocol: it reads, acks, heartbeats,
reclaims and promotes over the same keys and scripts (:class:`BrokerScripts`).

Redis errors never end a consumer or its threads: the consumer logs them, backs off and
goes on (each maintenance step on its own), and the ack flusher retries every ack until
Redis takes it. Producer calls raise :class:`~router_jobs.errors.BrokerError`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import QueueJoinTimeout
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.broker.leaving import DeadLetterHook, use_stream_retries
from router_jobs.broker.promoter import DuePromoter
from router_jobs.broker.wire import decode_dead_letter
from router_jobs.errors import BrokerError

log = logging.getLogger("router_jobs.broker")

GROUP = "workers"

#: Queues whose prefetch is capped so that merely queued batch jobs never sit in a worker's
#: memory while interactive jobs arrive (the work queue orders by actor priority anyway).
LOW_PRIORITY_QUEUES = frozenset({"batch"})

def _unchanged(text: str) -> str:
    return text


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
        #: applied to every dead-letter reason before it is stored (a worker sets its secret
        #: store's redaction here: an exception's text may echo a secret)
        self.redact: Callable[[str], str] = _unchanged
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

    def before_dead_letter(self, message: MessageProxy, *, kind: str, reason: str) -> bool:
        """Tell every middleware implementing :class:`DeadLetterHook` that ``message`` is about
        to be dead-lettered. Their errors propagate: the entry then stays pending. True when
        one says the message's work had already ended (nothing to dead-letter)."""
        done = False
        for middleware in self.middleware:
            if isinstance(middleware, DeadLetterHook):
                done = bool(middleware.before_dead_letter(self, message, kind=kind, reason=reason)) or done
        return done

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
        from router_jobs.broker.consumer import StreamConsumer

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


def set_stream_broker(broker: StreamsBroker) -> StreamsBroker:
    """Make ``broker`` Dramatiq's global broker (what ``dramatiq workers`` uses)."""
    dramatiq.set_broker(broker)
    return broker
