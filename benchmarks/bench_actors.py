"""Worker module for the broker benchmarks: the same no-op actor on either broker.

BENCH_BROKER=streams (ours) or BENCH_BROKER=dramatiq (Dramatiq's stock RedisBroker);
BENCH_REDIS_URL and BENCH_NS say where. The actor only counts itself (INCR) and, for
latency runs, answers on a list the producer waits on.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import StreamsBroker

URL = os.environ["BENCH_REDIS_URL"]
NS = os.environ.get("BENCH_NS", "bench")
client = redis.Redis.from_url(URL)

if os.environ.get("BENCH_BROKER", "streams") == "streams":
    broker: dramatiq.Broker = StreamsBroker(redis.Redis.from_url(URL), schema=RedisSchema(NS))
else:
    broker = RedisBroker(url=URL, namespace=NS)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="interactive", max_retries=0)
def noop(reply_to: str | None = None) -> None:
    """Count the message; answer on ``reply_to`` when asked (latency runs)."""
    client.incr(f"{NS}:count")
    if reply_to:
        client.lpush(reply_to, b"1")
