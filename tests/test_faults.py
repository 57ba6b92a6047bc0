"""Fault injection through real worker processes (``routerctl worker``) and a real Redis.

Redis runs out of memory (noeviction), restarts, a worker process is SIGKILLed, the
supervisor is SIGKILLed, the keys file is broken, an adapter throws what it should not:
every job still ends exactly once, with its reason when it fails, and nothing stays pending.
Each test has a Redis of its own (they change its configuration or restart it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP
from router_jobs.client.router import Router
from router_jobs.errors import JobFailed
from router_jobs.models import JobStatus
from router_jobs.settings import Settings
from tests.redis_server import RedisServer
from tests.workerpool import WorkerPool, fake_key, write_keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
NS = "flt"
QUEUES = ("interactive", "batch")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer("--appendfsync", "always", appendonly=True, data_dir=tmp_path)
    yield s
    s.stop()


def worker_env(url: str, keys: Path | None = None) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "ROUTER_NAMESPACE": NS,
        "ROUTER_KEYS_FILE": str(keys or write_keys([fake_key("fake-1"), fake_key("fake-2")])),
        "ROUTER_VISIBILITY_TIMEOUT_MS": "1500",
        "ROUTER_MAX_DELIVERIES": "3",
        "SECRET_STORE_TYPE": "env",
        "API_KEY_FAKE_1": "fake-secret-1",
        "API_KEY_FAKE_2": "fake-secret-2",
    }


def make_router(env: dict[str, str]) -> Router:
    return Router(Settings.from_env(env))


def assert_nothing_left(client: redis.Redis) -> None:
    ks = RedisSchema(NS)
    for q in QUEUES:
        if client.exists(ks.stream(q)):
            assert client.xpending(ks.stream(q), GROUP)["pending"] == 0, q
            assert client.xlen(ks.stream(q)) == 0, q
        assert client.zcard(ks.delayed(q)) == 0, q


def endings(client: redis.Redis) -> int:
    """Jobs ended so far: finish_job.lua counts only the call that really ends a job."""
    keys = [k for q in QUEUES for k in client.scan_iter(f"{RedisSchema(NS).completions(q)}:*")]
    return sum(int(v or 0) for v in client.mget(keys)) if keys else 0


def endings_eventually(url: str) -> int:
    """``endings`` that tolerates Redis being down or out of memory for a moment."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return endings(client)
    except redis.RedisError:
        return -1
    finally:
        client.close()


def oom_refusals(client: redis.Redis) -> int:
    """Commands Redis refused for want of memory so far."""
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def wait_endings(url: str, at_least: int, pool: WorkerPool, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while endings_eventually(url) < at_least:
        assert time.monotonic() < deadline, pool.output()[-4000:]
        time.sleep(0.1)


# ------------------------------------------------------- the whole picture, under faults
def settle(client: redis.Redis, timeout: float = 20.0) -> None:
    """Wait until nothing is left pending (the last acks leave with the flusher), then check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            assert_nothing_left(client)
            return
        except AssertionError:
            time.sleep(0.2)
    assert_nothing_left(client)


def submit_batch(router: Router, tag: str, n: int) -> list[Any]:
    # 0.2 s a call: 100 jobs keep 8 threads busy for about 2.5 s, so the workers are still
    # writing results when the faults begin (with shorter calls they could all be done first)
    return [router.submit(f"{tag} {i} [[sleep:0.2]]", model="fake-model",
                          priority="batch" if i % 3 else "interactive") for i in range(n)]


def collect_once(router: Router, jobs: list[Any], seen: dict[str, int]) -> None:
    for res in router.as_completed(jobs, timeout=240):
        seen[res.job_id] = seen.get(res.job_id, 0) + 1
        assert res.status == JobStatus.succeeded, (res.error_type, res.error_message)


def test_every_job_ends_once_through_oom_redis_restart_and_a_killed_worker(server: RedisServer) -> None:
    env = worker_env(server.url)
    env["ROUTER_MAX_DELIVERIES"] = "6"  # jobs refused by a full Redis come back; never poison
    router = make_router(env)
    n = 120
    first = submit_batch(router, "first", n)
    admin = redis.Redis.from_url(server.url)
    seen: dict[str, int] = {}
    with WorkerPool(env, processes=2, threads=4) as pool:
        wait_endings(server.url, 20, pool)
        # 1. out of memory under noeviction for 2 s: writes refused, acks still go through;
        #    the same worker processes (nothing restarted) must finish and acknowledge it all
        #    (the limit is set from the memory used before the ballast: right after the SET the
        #    figure also counts the command's 2 MB query buffer, freed a moment later)
        baseline = int(admin.info("memory")["used_memory"])
        admin.set("ballast", b"x" * 2_000_000)
        admin.config_set("maxmemory", baseline + 1_000_000)
        time.sleep(2.0)
        refused = oom_refusals(admin)
        admin.config_set("maxmemory", 0)
        admin.delete("ballast")
        collect_once(router, first, seen)
        settle(admin)
        second = submit_batch(router, "second", n)
        wait_endings(server.url, n + 20, pool)
        # 2. Redis restarts (AOF, fsync always): a second of outage
        admin.close()
        server.stop()
        time.sleep(1.0)
        restarted = RedisServer("--appendfsync", "always", port=server.port, appendonly=True,
                                data_dir=server.dir)
        server.proc = restarted.proc  # the fixture stops whichever runs
        admin = redis.Redis.from_url(server.url)
        wait_endings(server.url, endings(admin) + 20, pool)
        # 3. a worker process dies mid-call (the supervisor starts the pool again)
        os.kill(pool.worker_pids(1)[0], signal.SIGKILL)
        collect_once(router, second, seen)
        settle(admin)
        log = pool.output()
    assert len(seen) == 2 * n and set(seen.values()) == {1}
    assert endings(admin) == 2 * n  # each job ended exactly once
    assert sum(admin.xlen(RedisSchema(NS).dead(q)) for q in QUEUES) == 0
    calls = sum(int(admin.hget(RedisSchema(NS).job(j.job_id), "attempts") or 0) for j in first + second)
    print(f"\nprovider calls started: {calls} for {2 * n} jobs ({calls - 2 * n} repeated after faults)")
    # the faults did hit the workers (only they write in that window), and were reported (by
    # the error's name, or by its message where a warning quotes only the message)
    assert refused > 0
    assert "OutOfMemoryError" in log or "OOM command not allowed" in log


# ------------------------------------------- a producer dies between the record and the line
def test_a_job_whose_producer_died_before_the_line_is_run_by_the_workers(server: RedisServer) -> None:
    from router_jobs.models import JobSpec

    env = worker_env(server.url)
    router = make_router(env)
    first = router.submit("seeds the registry", model="fake-model")
    joining = router.scheduler.joining_key()
    # what a producer killed after submit.lua leaves: the record, held, noted as joining
    router.jobs.submit(JobSpec(prompt="orphan", model="fake-model"), job_id="orphan", hold=True, joining=joining)
    router.client.zadd(joining, {"orphan": 0})  # long ago: the first sweep takes it
    with WorkerPool(env, processes=1, threads=2) as pool:
        assert router.await_result(first, timeout=60).ok
        res = router.await_result("orphan", timeout=60)
        assert res.ok, (res.error_type, res.error_message)
        assert "put 1 job(s) in line whose producer died" in pool.output()
    assert router.client.zcard(joining) == 0
    assert int(router.client.hget(router.schema.job("orphan"), "deliveries") or 0) == 1


# --------------------------------------------------------- item 2: dead letters end jobs
def test_adapter_bug_and_worker_killer_end_failed_with_the_reason(server: RedisServer) -> None:
    env = worker_env(server.url)
    router = make_router(env)
    bug = router.submit("an adapter bug [[raise]]", model="fake-model")
    bomb = router.submit("kills its worker [[crash]]", model="fake-model")
    fine = [router.submit(f"fine {i}", model="fake-model") for i in range(10)]
    with WorkerPool(env, processes=1, threads=2):
        with pytest.raises(JobFailed) as info:
            router.await_result(bug, timeout=90)
        assert info.value.error_type == "dead_lettered"
        assert "RuntimeError: fake provider hit an unexpected bug" in info.value.error_message
        with pytest.raises(JobFailed) as info2:
            router.await_result(bomb, timeout=120)
        assert info2.value.error_type == "crashed"
        assert "started 3 times without an ack" in info2.value.error_message
        assert all(r.ok for r in router.as_completed(fine, timeout=60))
    dead = {str(d["job_id"]) for d in _dlq(router)}
    assert dead == {bug.job_id, bomb.job_id}
    assert_nothing_left(router.client)


def _dlq(router: Router) -> list[dict[str, Any]]:
    from router_jobs.ops.deadletters import dlq_list

    return dlq_list(router.client, router.schema)


# ------------------------------------------------- item 3: invalid keys file, no consumer
@pytest.mark.parametrize("argv", [
    ["-m", "cli.main", "worker", "-p", "1", "-t", "1"],
    ["-m", "cli.main", "worker", "-p", "1", "-t", "1", "--no-restart"],
    ["-m", "dramatiq", "workers", "-p", "1", "-t", "1"],
], ids=["routerctl", "routerctl-no-restart", "dramatiq"])
def test_worker_with_invalid_keys_file_refuses_to_start(server: RedisServer, tmp_path: Path,
                                                        argv: list[str]) -> None:
    good = worker_env(server.url)
    router = make_router(good)
    job = router.submit("must stay queued", model="fake-model")
    bad = tmp_path / "keys.json"
    bad.write_text('{"keys": [{"key_id": "k", "model_name": "m", "provider": "fake", "rpm": -5}]}')
    env = {**os.environ, **worker_env(server.url, bad), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if str(bad) in ln]
    assert lines and "rpm" in lines[0], done.stderr[-3000:]
    if argv[1] == "cli.main":
        assert done.stderr.strip().count("\n") == 0  # exactly one line
    ks = RedisSchema(NS)
    groups = router.client.xinfo_groups(ks.stream("interactive"))
    assert all(g["consumers"] == 0 for g in groups)  # never registered as a consumer
    assert router.client.hlen(ks.consumers()) == 0
    assert router.status(job).status == JobStatus.queued


# ------------------------------------------------------ item 6: the pool dies with its supervisor
def test_pool_dies_with_its_sigkilled_supervisor(server: RedisServer) -> None:
    env = worker_env(server.url)
    with WorkerPool(env, processes=2, threads=2) as pool:
        pool.wait_consuming(server.url, namespace=NS, processes=2)
        family = psutil.Process(pool.proc.pid).children(recursive=True)
        assert len(family) >= 3  # dramatiq's main process and two workers
        pool.proc.send_signal(signal.SIGKILL)
        pool.proc.wait()
        _gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
    # they stopped gracefully: each worker process took itself off the ready list
    assert redis.Redis.from_url(server.url).hlen(RedisSchema(NS).workers()) == 0
