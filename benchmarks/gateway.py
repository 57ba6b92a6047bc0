"""The gateway's cost: 200 concurrent streaming clients through ``routerctl serve`` versus the
same clients calling the library directly, side by side in one run.

Both paths run the same jobs (streamed, interactive) through the same real worker pool and
the in-process fake provider (no provider latency, so the figures are the broker's and the
gateway's own costs):

* **direct**: ``AsyncRouter.submit(stream=True)`` then ``AsyncRouter.stream`` until ``done``,
  with no user (no admission step: the library's fastest path, so the comparison is
  conservative: the gateway also authenticates and admits each request for its token's user);
* **gateway**: the openai SDK's ``AsyncOpenAI.chat.completions.create(stream=True)`` against
  the gateway, read until ``[DONE]``;
* **gateway_raw_http**: the same request over plain HTTP (SSE lines, no SDK objects), which
  separates the gateway's cost from the SDK client's.

All clients share this one process, as the CPU it spends per request shows
(``cpu_ms_per_request``: this process, the gateway's processes, the worker pool's).

Rounds alternate (direct, gateway, direct, gateway …) so that drift on a shared machine falls
on both. Reported: end-to-end latency and time to first token, p50 / p99, for each path; the
gateway's added latency (gateway minus direct, same percentile); requests per second.

    python benchmarks/gateway.py [--clients 200] [--requests 1000] [--rounds 2] [--gateway-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import _common
import httpx2 as httpx
import openai
import psutil

from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router
from router_jobs.gateway.tokens import TokenStore
from router_jobs.settings import Settings
from tests.gatewayproc import GatewayProcess
from tests.workerpool import WorkerPool

Sample = tuple[float, float]  # (end-to-end seconds, time to first token)


async def run_clients(clients: int, total: int, one: object) -> tuple[list[Sample], float]:
    """``clients`` tasks share ``total`` requests; returns samples and the wall time."""
    left = total
    samples: list[Sample] = []

    async def worker(w: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            samples.append(await one(f"c{w} r{left}"))  # type: ignore[operator]

    t = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return samples, time.perf_counter() - t


def direct_call(ar: AsyncRouter):  # type: ignore[no-untyped-def]
    async def one(prompt: str) -> Sample:
        t = time.perf_counter()
        first = 0.0
        job = await ar.submit(prompt, model="fake-model", max_output_tokens=16, stream=True)
        async for ev in ar.stream(job, timeout=120):
            if ev.type == "delta" and not first:
                first = time.perf_counter() - t
            if ev.type in ("done", "error"):
                assert ev.type == "done", ev
        return time.perf_counter() - t, first
    return one


def gateway_call(client: openai.AsyncOpenAI):  # type: ignore[no-untyped-def]
    async def one(prompt: str) -> Sample:
        t = time.perf_counter()
        first = 0.0
        stream = await client.chat.completions.create(
            model="fake-model", max_tokens=16, stream=True, messages=[{"role": "user", "content": prompt}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and not first:
                first = time.perf_counter() - t
        return time.perf_counter() - t, first
    return one


def raw_call(http: httpx.AsyncClient, url: str, token: str):  # type: ignore[no-untyped-def]
    """The same request as ``gateway_call`` over plain HTTP: SSE lines, no SDK objects."""
    headers = {"Authorization": f"Bearer {token}"}

    async def one(prompt: str) -> Sample:
        t = time.perf_counter()
        first = 0.0
        body = {"model": "fake-model", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        async with http.stream("POST", url + "/chat/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200, resp.status_code
            async for line in resp.aiter_lines():
                if not first and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    first = time.perf_counter() - t
        return time.perf_counter() - t, first
    return one


def summary(samples: list[Sample], wall: float) -> dict[str, float]:
    e2e = [s[0] for s in samples]
    ttft = [s[1] for s in samples]
    return {"p50_ms": 1000 * _common.percentile(e2e, 50), "p99_ms": 1000 * _common.percentile(e2e, 99),
            "ttft_p50_ms": 1000 * _common.percentile(ttft, 50), "ttft_p99_ms": 1000 * _common.percentile(ttft, 99),
            "req_per_s": len(samples) / wall, "requests": len(samples)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def bench(env: dict[str, str], gw: GatewayProcess, token: str, args: argparse.Namespace,
                pool_pid: int) -> dict[str, object]:
    ar = AsyncRouter(Router(Settings.from_env(env)), max_connections=4 * args.clients)
    # the registry cache's first read must complete before concurrent submits (a concurrent
    # first reader sees it still empty: "no active key serves model")
    await ar.served_models()
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=token, max_retries=0, timeout=120,
                                http_client=httpx.AsyncClient(limits=limits, timeout=120))
    http = httpx.AsyncClient(limits=limits, timeout=120)
    paths = {"direct": direct_call(ar), "gateway": gateway_call(client), "gateway_raw_http": raw_call(http, gw.url, token)}
    for one in paths.values():  # warm up both paths (connections, scripts, worker clients)
        await run_clients(min(args.clients, 50), min(args.clients, 50), one)
    got: dict[str, list[Sample]] = {n: [] for n in paths}
    walls: dict[str, float] = {n: 0.0 for n in paths}
    cpu: dict[str, dict[str, float]] = {n: {"client": 0.0, "gateway": 0.0, "workers": 0.0} for n in paths}
    me = os.getpid()
    for _ in range(args.rounds):
        for name, one in paths.items():
            before = {"client": cpu_seconds(me), "gateway": cpu_seconds(gw.proc.pid), "workers": cpu_seconds(pool_pid)}
            samples, wall = await run_clients(args.clients, args.requests, one)
            got[name] += samples
            walls[name] += wall
            for part, pid in (("client", me), ("gateway", gw.proc.pid), ("workers", pool_pid)):
                cpu[name][part] += cpu_seconds(pid) - before[part]
    await client.close()
    await http.aclose()
    await ar.aclose()
    out: dict[str, object] = {name: {**summary(got[name], walls[name]),
                                     "cpu_ms_per_request": {k: round(1000 * v / len(got[name]), 2)
                                                            for k, v in cpu[name].items()}}
                              for name in got}
    d = out["direct"]
    assert isinstance(d, dict)
    for name in ("gateway", "gateway_raw_http"):
        g = out[name]
        assert isinstance(g, dict)
        out[f"added_ms_{name}"] = {k: round(g[k] - d[k], 1) for k in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1000, help="requests per path per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gateway-workers", type=int, default=1)
    ap.add_argument("--worker-processes", type=int, default=2)
    ap.add_argument("--worker-threads", type=int, default=16)
    args = ap.parse_args()
    server = _common.RedisServer()
    keys = Path(tempfile.mkdtemp()) / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key_id": "gwb-1", "model_name": "fake-model", "provider": "fake"}]}))
    env = {"REDIS_URL": server.url, "ROUTER_NAMESPACE": "gwb", "ROUTER_KEYS_FILE": str(keys), "API_KEY_GWB_1": "x",
           "SECRET_STORE_TYPE": "env", "GLOBAL_RPM_MAX": "10000000", "GLOBAL_BURST_MAX": "10000000"}
    os.environ.update(env)
    router = Router(Settings.from_env(env))
    tokens = TokenStore(router.client, router.schema, router.limiter, router.budgets)
    token, _ = tokens.create("bench", rpm=10_000_000, burst=10_000_000)
    try:
        with WorkerPool(env, processes=args.worker_processes, threads=args.worker_threads) as pool:
            pool.wait_consuming(server.url, "gwb", processes=args.worker_processes)
            with GatewayProcess(env, "--workers", str(args.gateway_workers), "--no-batches") as gw:
                try:
                    result = asyncio.run(bench(env, gw, token, args, pool.proc.pid))
                except Exception:
                    print(f"gateway exit code {gw.proc.poll()}; log:\n{gw.output()[-3000:]}")
                    raise
    finally:
        router.close()
        server.stop()
    print(json.dumps({"clients": args.clients, "requests_per_path": args.requests * args.rounds,
                      "gateway_workers": args.gateway_workers, **result}, indent=2))


if __name__ == "__main__":
    main()
