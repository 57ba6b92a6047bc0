"""End to end through real worker processes (``routerctl worker``) and a real Redis."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from router_jobs.client.router import Router
from router_jobs.errors import JobFailed
from router_jobs.models import JobStatus
from router_jobs.settings import Settings
from tests.workerpool import WorkerPool, fake_key, write_keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def env(redis_url: str, namespace: str) -> dict[str, str]:
    keys = write_keys([fake_key("fake-1"), fake_key("fake-2")])
    return {
        "REDIS_URL": redis_url,
        "ROUTER_NAMESPACE": namespace,
        "ROUTER_KEYS_FILE": str(keys),
        "ROUTER_VISIBILITY_TIMEOUT_MS": "1500",
        "ROUTER_MAX_DELIVERIES": "3",
        "SECRET_STORE_TYPE": "env",
        "API_KEY_FAKE_1": "fake-secret-1",
        "API_KEY_FAKE_2": "fake-secret-2",
    }


@pytest.fixture
def router(env: dict[str, str]) -> Iterator[Router]:
    settings = Settings.from_env(env)
    router = Router(settings, keys=None)
    yield router
    router.close()


def leftover_keys(client: redis.Redis, ns: str) -> list[str]:
    """Keys of the namespace that could grow with the number of jobs.

    Allowed without a TTL: the queue registry and consumer heartbeats (one entry per
    queue/consumer), empty streams, and the key pool's structures under its hash tag, which
    are bounded by the number of keys and the window lengths (the pool's scripts trim
    window logs as they slide and drop reservation records after ``record_keep``).
    """
    fixed = {f"{ns}:queues", f"{ns}:consumers"}
    bad = []
    for raw in client.scan_iter(f"{ns}:*", count=1000):
        key = raw.decode()
        if key in fixed or client.ttl(key) > 0 or key.startswith(f"{ns}:{{pool:"):
            continue
        if key.endswith(":stream") and client.xlen(key) == 0:
            continue
        bad.append(key)
    return bad


def test_thousand_jobs_two_workers_four_producers(env: dict[str, str], router: Router) -> None:
    results: dict[str, str | None] = {}
    expected: dict[str, str] = {}
    lock = threading.Lock()

    def producer(p: int) -> None:
        jobs = []
        for i in range(250):
            prompt = f"producer {p} prompt {i}"
            job = router.submit(prompt, model="fake-model", priority="batch" if i % 2 else "interactive")
            jobs.append(job)
            with lock:
                expected[job.job_id] = f"echo: {prompt}"
        for res in router.as_completed(jobs, timeout=120):
            with lock:
                assert res.job_id not in results, "a result was delivered twice"
                results[res.job_id] = res.content

    with WorkerPool(env, processes=2, threads=4):
        threads = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    assert len(results) == 1000
    assert results == expected
    # each result stays retrievable, and Redis holds only TTL-bounded records
    some = next(iter(expected))
    assert router.await_result(some, timeout=1).content == expected[some]
    assert leftover_keys(router.client, router.schema.ns) == []


def test_sigkilled_worker_loses_nothing(env: dict[str, str], router: Router) -> None:
    jobs = [router.submit(f"slow {i} [[sleep:0.05]]", model="fake-model", priority="batch") for i in range(300)]
    seen: dict[str, int] = {}
    with WorkerPool(env, processes=1, threads=4) as victim, WorkerPool(env, processes=1, threads=4):
        [pid] = victim.worker_pids(1)
        # let it get going, then kill the worker process outright, mid-call
        while sum(1 for j in jobs[:60] if (router.status(j) or None) and router.status(j).status.terminal) < 20:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        for res in router.as_completed(jobs, timeout=120):
            seen[res.job_id] = seen.get(res.job_id, 0) + 1
            assert res.status == JobStatus.succeeded, (res.error_type, res.error_message)
    assert len(seen) == 300 and set(seen.values()) == {1}
    # the jobs the dead worker held were delivered again and completed once
    redelivered = [j for j in jobs if int(router.client.hget(router.schema.job(j.job_id), "deliveries")) > 1]
    assert redelivered
    assert all(router.await_result(j, timeout=1).ok for j in redelivered)


def test_job_that_crashes_its_worker_every_time_is_dead_lettered(env: dict[str, str], router: Router) -> None:
    bomb = router.submit("this one kills the worker [[crash]]", model="fake-model")
    fine = [router.submit(f"fine {i}", model="fake-model") for i in range(20)]
    with WorkerPool(env, processes=1, threads=2) as pool:
        deadline = time.monotonic() + 90
        dead: list[dict[str, object]] = []
        while time.monotonic() < deadline and not dead:
            dead = [d for d in _dead_letters(router) if d["args"] == [bomb.job_id]]
            time.sleep(0.2)
        assert dead, pool.output()[-3000:]
        for res in router.as_completed(fine, timeout=60):
            assert res.ok
    [entry] = dead
    assert "started 3 times without an ack" in str(entry["reason"])
    # the job ended failed with the reason (its awaiters woke at once); operators see it in the DLQ
    with pytest.raises(JobFailed) as info:
        router.await_result(bomb, timeout=10)
    assert info.value.error_type == "crashed"
    assert "started 3 times without an ack" in info.value.error_message


def test_jobs_failing_for_good_end_failed_with_the_reason(env: dict[str, str], router: Router) -> None:
    bad = router.submit("refuse me [[fail:bad_request]]", model="fake-model")
    flaky = router.submit("always broken [[fail:transient]]", model="fake-model")
    with WorkerPool(env, processes=1, threads=2):
        with pytest.raises(JobFailed) as info:
            router.await_result(bad, timeout=30)
        assert info.value.error_type == "bad_request"
        with pytest.raises(JobFailed) as info2:
            router.await_result(flaky, timeout=90)
    assert info2.value.error_type == "transient"
    assert "gave up after 6 attempts" in info2.value.error_message


def _dead_letters(router: Router) -> list[dict[str, object]]:
    from router_jobs.broker.streams import StreamsBroker

    return StreamsBroker(router.client, schema=router.schema).dead_letters("interactive")
