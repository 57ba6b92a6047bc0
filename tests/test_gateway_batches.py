"""Gateway batches that outlive their gateway, and the completion window.

A batch is driven by whichever gateway holds its lease in Redis; a gateway killed mid-batch
leaves the lease to lapse, and another gateway resumes the batch without running a line
twice. A completion window that ends first expires the batch: lines that never ran are
reported in the error file as ``batch_expired``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from router_jobs.batch.runner import line_job_id
from router_jobs.client.router import Router
from router_jobs.gateway.tokens import TokenStore
from router_jobs.settings import Settings
from tests.gatewayproc import GatewayProcess
from tests.workerpool import WorkerPool, fake_key, write_keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    keys = write_keys([fake_key("fake-1", "fake-model")])
    return {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": f"gb{uuid.uuid4().hex[:8]}", "ROUTER_KEYS_FILE": str(keys),
            "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": "x"}


@pytest.fixture
def router(env: dict[str, str]) -> Iterator[Router]:
    r = Router(Settings.from_env(env))
    yield r
    r.close()


@pytest.fixture
def token(router: Router) -> str:
    return TokenStore(router.client, router.schema, router.limiter, router.budgets).create("batcher")[0]


def upload(c: openai.OpenAI, n: int, content: str) -> str:
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "fake-model", "messages": [{"role": "user", "content": f"{i} {content}"}]}}
            for i in range(n)]
    return c.files.create(file=("in.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                          purpose="batch").id


def wait_end(c: openai.OpenAI, batch_id: str, timeout: float = 90) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        time.sleep(0.2)
    raise AssertionError(f"batch did not end: {c.batches.retrieve(batch_id)}")


def test_batch_resumes_on_another_gateway_after_a_crash(env: dict[str, str], router: Router, token: str,
                                                        redis_url: str) -> None:
    n = 120
    with WorkerPool(env, processes=1, threads=4) as pool:
        pool.wait_consuming(redis_url, env["ROUTER_NAMESPACE"])
        first = GatewayProcess(env, "--batch-max-in-flight", "8")
        c = openai.OpenAI(base_url=first.url, api_key=token, max_retries=0)
        b = c.batches.create(input_file_id=upload(c, n, "[[sleep:0.05]]"), endpoint="/v1/chat/completions",
                             completion_window="24h")
        deadline = time.monotonic() + 60
        while router.client.hlen(router.schema.gw_batch_results(b.id)) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()  # mid-batch, no clean-up: its lease must lapse
        written = router.client.hlen(router.schema.gw_batch_results(b.id))
        assert 20 <= written < n
        with GatewayProcess(env) as second:
            c2 = openai.OpenAI(base_url=second.url, api_key=token, max_retries=0)
            done = wait_end(c2, b.id)
            assert done.status == "completed", done
            assert done.request_counts is not None and done.request_counts.completed == n
            out = [json.loads(x) for x in c2.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(n)]  # each line once, in order
    # each line ran as exactly one job: ids come from the batch and the line
    ids = {line_job_id(router.schema.ns, f"gw-{b.id}", i) for i in range(1, n + 1)}
    assert {o["response"]["request_id"] for o in out} == ids
    for job_id in ids:
        assert int(router.client.hget(router.schema.job(job_id), "attempts") or 0) == 1


def test_completion_window_expires_the_batch(env: dict[str, str], router: Router, token: str,
                                             redis_url: str) -> None:
    n = 60
    with WorkerPool(env, processes=1, threads=2) as pool, GatewayProcess(env, "--batch-max-in-flight", "4") as gw:
        pool.wait_consuming(redis_url, env["ROUTER_NAMESPACE"])
        c = openai.OpenAI(base_url=gw.url, api_key=token, max_retries=0)
        b = c.batches.create(input_file_id=upload(c, n, "[[sleep:0.3]]"), endpoint="/v1/chat/completions",
                             completion_window="3s")  # type: ignore[arg-type]
        done = wait_end(c, b.id)
        assert done.status == "expired" and done.expired_at is not None, done
        assert done.request_counts is not None and 0 < done.request_counts.completed < n
        assert done.request_counts.completed + done.request_counts.failed == n
        errors = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
        assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
        ok = c.files.content(done.output_file_id).text.splitlines()
        assert len(ok) + len(errors) == n
