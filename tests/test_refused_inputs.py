"""Every malformed input is refused with a typed error naming the field, and nothing is enqueued.

These are the inputs that used to slip through (or crash with an untyped error deep inside
Redis, JSON or the worker): lone surrogates, metadata that is not JSON or nested absurdly deep,
NaN numbers, negative waits, booleans passed as counts, delays of thousands of years, a job
made of a system message only, NUL bytes in key ids and base URLs that are not URLs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from router_jobs.capacity.config import parse_keys
from router_jobs.client.router import Router
from router_jobs.errors import ConfigError, JobValidationError
from router_jobs.settings import Settings

KEYS = parse_keys({"keys": [{"key_id": "k1", "model_name": "fake-model", "provider": "fake", "rpm": 10}]})


def deep(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(n):
        out = {"a": out}
    return out


@pytest.fixture
def router(redis_url: str, namespace: str) -> Iterator[Router]:
    settings = Settings(redis_url=redis_url, namespace=namespace)
    router = Router(settings, client=redis.Redis.from_url(redis_url), keys=KEYS)
    yield router
    router.close()


def queued(router: Router) -> int:
    return sum(int(router.client.xlen(router.schema.stream(q))) + int(router.client.zcard(router.schema.delayed(q)))
               for q in ("interactive", "batch"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "hi \ud800 there"}, "prompt"),
        ({"messages": [{"role": "user", "content": "\udfff"}]}, "messages[0].content"),
        ({"prompt": "hi", "system_prompt": "\ud800"}, "system_prompt"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udc80"}]}]}, "messages[0].content"),
        ({"prompt": "hi", "tools": [{"name": "t", "description": "\ud800"}]}, "job"),
        ({"prompt": "hi", "metadata": {"k": object()}}, "metadata"),
        ({"prompt": "hi", "metadata": {"k": {1, 2}}}, "metadata"),
        ({"prompt": "hi", "metadata": {"k": "\ud800"}}, "metadata"),
        ({"prompt": "hi", "metadata": {"k": math.nan}}, "metadata"),
        ({"prompt": "hi", "metadata": deep(1000)}, "metadata"),
        ({"prompt": "hi", "deadline": math.nan}, "deadline"),
        ({"prompt": "hi", "deadline": math.inf}, "deadline"),
        ({"prompt": "hi", "max_wait": -1.0}, "max_wait"),
        ({"prompt": "hi", "max_wait": math.nan}, "max_wait"),
        ({"prompt": "hi", "max_output_tokens": True}, "max_output_tokens"),
        ({"prompt": "hi", "max_output_tokens": 12.5}, "max_output_tokens"),
        ({"prompt": "hi", "temperature": math.nan}, "temperature"),
        ({"messages": [{"role": "system", "content": "be brief"}]}, "messages"),
        ({"prompt": "hi", "delay": math.nan}, "delay"),
        ({"prompt": "hi", "delay": math.inf}, "delay"),
        ({"prompt": "hi", "delay": -1.0}, "delay"),
        ({"prompt": "hi", "delay": 1e12}, "delay"),
        ({"prompt": "hi", "delay": True}, "delay"),
        ({"prompt": "hi", "idempotency_key": "a\ud800"}, "idempotency_key"),
    ],
)
def test_refused_with_a_typed_error_naming_the_field(router: Router, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(JobValidationError) as info:
        router.submit(model="fake-model", **kwargs)
    assert info.value.field == field
    assert queued(router) == 0


def test_valid_edge_values_still_pass(router: Router) -> None:
    router.submit("hi", model="fake-model", delay=3600.0, max_wait=0.0, metadata=deep(20),
                  messages=None, system_prompt="be brief")
    router.submit(model="fake-model", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert queued(router) == 2


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ({"key_id": "k\x00"}, "key_id"),
        ({"key_id": "k\ud800"}, "key_id"),
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": "ftp://example.com/v1"}, "base_url"),
        ({"base_url": "http://"}, "base_url"),
    ],
)
def test_bad_key_fields_are_config_errors(key: dict[str, Any], field: str) -> None:
    data = {"key_id": "k1", "model_name": "m", "provider": "openai", **key}
    with pytest.raises(ConfigError) as info:
        parse_keys({"keys": [data]})
    assert info.value.field == field


def test_a_good_base_url_is_kept() -> None:
    kf = parse_keys({"keys": [{"key_id": "k1", "model_name": "m", "provider": "openai",
                               "base_url": "http://127.0.0.1:8080/v1"}]})
    assert kf.keys[0].base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize("argv", [[b"submit", b"caf\xe9", b"--model", b"m"], [b"jobs", b"show", b"\xff\xfe"],
                                  [b"keys", b"disable", b"k\xc3"]])
def test_routerctl_refuses_arguments_that_are_not_utf8(argv: list[bytes]) -> None:
    routerctl = Path(sys.executable).with_name("routerctl")
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0"}  # nothing may be reached
    done = subprocess.run([bytes(routerctl), *argv], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert b"is not valid UTF-8" in done.stderr


def test_the_async_router_refuses_the_same(redis_url: str, namespace: str) -> None:
    import asyncio

    from router_jobs.client.async_router import AsyncRouter

    async def scenario() -> list[str]:
        settings = Settings(redis_url=redis_url, namespace=namespace)
        router = AsyncRouter(Router(settings, client=redis.Redis.from_url(redis_url), keys=KEYS))
        fields = []
        try:
            for kwargs in ({"prompt": "hi", "delay": math.nan}, {"prompt": "\ud800"},
                           {"prompt": "hi", "metadata": deep(1000)}):
                try:
                    await router.submit(model="fake-model", **kwargs)  # type: ignore[arg-type]
                except JobValidationError as exc:
                    fields.append(exc.field)
        finally:
            await router.aclose()
        return fields

    assert asyncio.run(scenario()) == ["delay", "prompt", "metadata"]
