"""What the request surface costs: a plain text job next to a job with tools, an image, a JSON
schema and a tool turn in its history, in the same run.

1. CPU per request, no I/O: OpenAI body -> job fields (``body_fields``) -> ``validate_spec``
   (with the per-provider capability check) -> each adapter's SDK arguments.
2. Submit -> result through a real worker pool and the fake OpenAI server (zero latency, real
   SDK over loopback HTTP), sequential, idle pool: p50 / p99 of each kind, interleaved.

    python benchmarks/surface.py [--cpu 2000] [--requests 100]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common

from fakeproviders import FakeProviderServer
from router_jobs.batch.lines import body_fields
from router_jobs.client.router import Router, validate_spec
from router_jobs.providers.anthropic_provider import anthropic_params
from router_jobs.providers.base import ChatRequest
from router_jobs.providers.gemini_provider import gemini_request
from router_jobs.providers.openai_provider import OpenAIAdapter
from router_jobs.settings import Settings
from tests.workerpool import WorkerPool

IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + (640).to_bytes(4, "big") * 2 + os.urandom(30_000)).decode()
TOOLS = [{"type": "function", "function": {"name": n, "description": f"{n} tool", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
    for n in ("get_weather", "get_forecast")]
PLAIN = {"model": "gpt-x", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "what is the weather in Paris?"}]}
FULL = {
    "model": "gpt-x", "tools": TOOLS, "tool_choice": "auto",
    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"summary": {"type": "string"}}}}},
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is the weather where this was taken?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ],
}


def per_call_us(n: int, fn: Callable[[], object]) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def cpu(n: int) -> None:
    settings = Settings()
    served = {"gpt-x": {"openai", "anthropic", "gemini"}}
    openai = OpenAIAdapter()
    print(f"CPU per request, mean of {n} (microseconds)")
    print(f"{'step':<34}{'plain':>10}{'full':>10}")
    for name, step in [
        ("body_fields + validate_spec", lambda b: validate_spec(body_fields(b), settings, served)),
        ("openai SDK arguments", lambda b: openai._params(_request(b, settings, served))),
        ("anthropic SDK arguments", lambda b: anthropic_params(_request(b, settings, {"gpt-x": {"anthropic"}}))),
        ("gemini SDK arguments", lambda b: gemini_request(_request(b, settings, {"gpt-x": {"gemini"}}))),
    ]:
        row = [per_call_us(n, lambda b=b, step=step: step(b)) for b in (PLAIN, FULL)]  # type: ignore[misc]
        print(f"{name:<34}{row[0]:>10.1f}{row[1]:>10.1f}")
    print("(the SDK-argument rows include body_fields + validate_spec)")


def _request(body: dict[str, Any], settings: Settings, served: dict[str, set[str]]) -> ChatRequest:
    spec = validate_spec(body_fields(body), settings, served)
    return ChatRequest.from_spec(spec, "gpt-x", spec.chat_messages())


def e2e(n: int) -> None:
    server = FakeProviderServer("openai", {"oa-1": "sk-bench-surface"})
    server.start()
    redis_server = _common.RedisServer()
    times: dict[str, list[float]] = {"plain": [], "full": []}
    try:
        keys = Path(tempfile.mkdtemp()) / "keys.json"
        keys.write_text(json.dumps({"keys": [{"key_id": "oa-1", "model_name": "gpt-x", "provider": "openai",
                                              "base_url": server.base_url}]}))
        env = {"REDIS_URL": redis_server.url, "ROUTER_NAMESPACE": "surf", "ROUTER_KEYS_FILE": str(keys),
               "SECRET_STORE_TYPE": "env", "API_KEY_OA_1": "sk-bench-surface"}
        router = Router(Settings.from_env(env))
        with WorkerPool(env, processes=1, threads=4):
            for body in (PLAIN, FULL):
                router.await_result(router.submit(**body_fields(body)), timeout=60)
            for _ in range(n):
                for kind, body in (("plain", PLAIN), ("full", FULL)):
                    time.sleep(0.1)  # idle between an agent's requests
                    fields = body_fields(body)
                    t = time.perf_counter()
                    router.await_result(router.submit(**fields), timeout=30)
                    times[kind].append((time.perf_counter() - t) * 1000)
        router.close()
    finally:
        redis_server.stop()
        server.stop()
    print(f"\nsubmit -> result through a worker and the fake OpenAI server, {n} each, interleaved (ms)")
    for kind, values in times.items():
        print(f"{kind:<8} p50 {_common.percentile(values, 50):7.2f}   p99 {_common.percentile(values, 99):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", type=int, default=2000, help="iterations of each CPU step")
    parser.add_argument("--requests", type=int, default=100, help="requests of each kind end to end (0: skip)")
    args = parser.parse_args()
    cpu(args.cpu)
    if args.requests:
        e2e(args.requests)


if __name__ == "__main__":
    main()
