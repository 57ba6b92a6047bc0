"""First-delta latency of a streamed job, against the provider's own first byte.

A zero-latency fake OpenAI server runs in a process of its own. Each round measures, one right
after the other (paired, so both see the same machine load):

* provider: the OpenAI SDK streaming straight from the server — request sent to first text
  chunk parsed (the provider's own first byte, as a caller of the SDK sees it);
* broker: ``Router.submit(..., stream=True)`` then ``Router.stream(job)`` through a real
  ``routerctl worker`` pool — submit to first ``delta`` event read (queue, worker pick-up, key
  reservation, the same SDK call, the event writer, the reader's XREAD wake-up);
* unstreamed: the same job without ``stream=True``, submit to ``await_result`` returning (the
  broker's own overhead on this machine at this moment, for reading the first two lines).

Sequential requests, idle pool (one process, four threads).

    python benchmarks/stream_latency.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _common

MODEL = "gpt-4o-mini"
SECRET = "sk-bench-stream-0000"


def direct_first_byte(base_url: str, prompt: str) -> float:
    from router_jobs.models import ChatMessage
    from router_jobs.providers import get_adapter
    from router_jobs.providers.base import ChatRequest, KeyCredentials

    adapter = get_adapter("openai")
    creds = KeyCredentials(key_id="bench-1", api_key=SECRET, base_url=base_url, timeout=30)
    request = ChatRequest(model=MODEL, messages=[ChatMessage(role="user", content=prompt)], max_output_tokens=64)
    t = time.perf_counter()
    stream = adapter.open_stream(request, creds)  # type: ignore[attr-defined]
    try:
        for chunk in stream:
            if chunk.text:
                return time.perf_counter() - t
    finally:
        stream.close()
    raise RuntimeError("the stream had no text")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    from fakeproviders.process import ProcessFakeServer

    redis_server = _common.RedisServer()
    fake = ProcessFakeServer("openai", keys={"bench-1": SECRET})
    base_url = fake.start()
    keys = Path(tempfile.mkdtemp()) / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key_id": "bench-1", "model_name": MODEL, "provider": "openai",
                                          "base_url": base_url, "rpm": 1_000_000, "tpm": 1_000_000_000}]}))
    env = {"REDIS_URL": redis_server.url, "ROUTER_NAMESPACE": "slat", "ROUTER_KEYS_FILE": str(keys),
           "API_KEY_BENCH_1": SECRET}
    os.environ.update(env)
    from router_jobs.client.router import Router
    from tests.workerpool import WorkerPool

    router = Router.from_env()
    provider: list[float] = []
    broker: list[float] = []
    whole: list[float] = []
    try:
        with WorkerPool(env, processes=1, threads=4) as pool:
            pool.wait_consuming(redis_server.url, "slat")
            for i in range(3):  # warm both paths up
                direct_first_byte(base_url, f"warm {i}")
                list(router.stream(router.submit(f"warm {i}", model=MODEL, stream=True), timeout=60))
            for i in range(args.requests):
                prompt = f"request {i} tell me a short story about streams"
                time.sleep(0.1)  # idle again, as between an agent's interactive requests
                provider.append(direct_first_byte(base_url, prompt))
                time.sleep(0.1)
                t = time.perf_counter()
                job = router.submit(prompt, model=MODEL, stream=True, max_output_tokens=64)
                first = None
                for event in router.stream(job, timeout=60):
                    if first is None and event.type == "delta":
                        first = time.perf_counter() - t
                    if event.terminal:
                        break
                assert first is not None, "no delta arrived"
                broker.append(first)
                time.sleep(0.1)
                t = time.perf_counter()
                router.await_result(router.submit(prompt, model=MODEL, max_output_tokens=64), timeout=60)
                whole.append(time.perf_counter() - t)
    finally:
        router.close()
        fake.stop()
        redis_server.stop()
    p = _common.percentile
    extra = [b - a for a, b in zip(provider, broker, strict=True)]
    print(f"requests={args.requests}, zero-latency fake OpenAI (own process), idle pool 1 process x 4 threads")
    print(f"provider first byte (SDK direct)   : p50 {p(provider, 50) * 1000:6.1f} ms   p99 {p(provider, 99) * 1000:6.1f} ms")
    print(f"broker first delta (submit->event) : p50 {p(broker, 50) * 1000:6.1f} ms   p99 {p(broker, 99) * 1000:6.1f} ms")
    print(f"added by the broker (paired)       : p50 {p(extra, 50) * 1000:6.1f} ms   p99 {p(extra, 99) * 1000:6.1f} ms"
          "   (aim: p50 <= 10 ms)")
    print(f"unstreamed job, submit->result     : p50 {p(whole, 50) * 1000:6.1f} ms   p99 {p(whole, 99) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
