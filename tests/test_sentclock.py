"""The moment a provider request left the worker, through each real SDK, and the pool's
window stamp that follows it (settle.lua)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from fakeproviders import FakeProviderServer
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.pool import Grant
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.scheduler import Scheduler
from router_jobs.models import ChatMessage, Usage
from router_jobs.providers import sentclock
from router_jobs.providers.anthropic_provider import AnthropicAdapter
from router_jobs.providers.base import ChatRequest, KeyCredentials
from router_jobs.providers.gemini_provider import GeminiAdapter
from router_jobs.providers.openai_provider import OpenAIAdapter
from tests.test_scheduler import demand

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
ADAPTERS = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter, "gemini": GeminiAdapter}


@pytest.fixture(params=sorted(MODELS))
def provider(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeProviderServer]]:
    server = FakeProviderServer(request.param, keys={"k1": "secret-sentclock-1"}, latency=0.4)
    server.start()
    yield request.param, server
    server.stop()


def test_each_sdk_reports_when_its_request_left(provider: tuple[str, FakeProviderServer]) -> None:
    name, server = provider
    adapter = ADAPTERS[name]()
    creds = KeyCredentials(key_id="k1", api_key="secret-sentclock-1", base_url=server.base_url, timeout=10)
    call = ChatRequest(model=MODELS[name], messages=[ChatMessage(role="user", content="hi")], max_output_tokens=8)
    for _ in range(2):  # the first call also builds the client and connects
        sentclock.begin()
        started = time.monotonic()
        adapter.complete(call, creds)
        ended = time.monotonic()
        sent = sentclock.sent_at()
        assert sent is not None and started <= sent <= ended
        # the provider holds each request 0.4 s: the request left before that began
        assert ended - sent >= 0.4
    sentclock.begin()
    assert sentclock.sent_at() is None  # forgotten before the next call


def test_settle_stamps_the_window_entry_when_the_request_left(r: redis.Redis, namespace: str) -> None:
    spec = [{"key_id": "k0", "model_name": "m", "provider": "fake", "windows": [{"limit": 1, "seconds": 1}]}]
    pool = RedisKeyPool(r, RedisSchema(namespace), parse_keys({"keys": spec}), margin_ms=20)
    s = Scheduler(pool, lead_ms=0)
    s.enqueue([demand("a"), demand("b")])
    g = s.claim("a")
    assert isinstance(g, Grant)
    time.sleep(0.5)  # a long call: it left at once, its answer comes 0.5 s later
    pool.settle(g, Usage(input_tokens=1, output_tokens=1), sent_ago_ms=490)
    rec = json.loads(r.hget(pool.ks.pool_reservations("default"), g.reservation_id))
    s.settled(["a"])
    # the next room follows the moment the request left, not the answer (a settle on a
    # request-count window runs no step of its own: a forced one reads the next room)
    assert s.admit(force=True).next_ms <= 1020 - 450
    unknown = RedisKeyPool(r, RedisSchema(namespace + "x"), parse_keys({"keys": spec}), margin_ms=20)
    s2 = Scheduler(unknown, lead_ms=0)
    s2.enqueue([demand("c"), demand("d")])
    g2 = s2.claim("c")
    assert isinstance(g2, Grant)
    time.sleep(0.5)
    unknown.settle(g2, Usage(input_tokens=1, output_tokens=1))  # not known: stamped now
    s2.settled(["c"])
    assert s2.admit(force=True).next_ms >= 1000
    assert rec["s"] == "d"


def test_a_request_that_left_late_moves_its_window_entry_at_once(r: redis.Redis, namespace: str) -> None:
    spec = [{"key_id": "k0", "model_name": "m", "provider": "fake", "windows": [{"limit": 1, "seconds": 1}]}]
    pool = RedisKeyPool(r, RedisSchema(namespace), parse_keys({"keys": spec}), margin_ms=20)
    s = Scheduler(pool, lead_ms=0)
    s.enqueue([demand("a"), demand("b")])
    g = s.claim("a")
    assert isinstance(g, Grant)
    before = s.admit(force=True).next_ms  # b's room: 1 s + margin after a's claim
    time.sleep(0.3)  # the worker was slow to send it (a busy machine, a new connection)
    pool.sent(g)  # the call is still running: its entry moves now, not at settle
    time.sleep(max(0.0, before / 1000 - 0.3) + 0.05)
    # b's room at the old stamp has come, but not 1 s after the send: b still waits
    assert s.admit(force=True).admitted == 0
    time.sleep(0.35)
    assert s.admit(force=True).admitted == 1
