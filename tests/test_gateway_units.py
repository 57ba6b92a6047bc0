"""Gateway pieces against a real Redis, without servers: tokens, files, batch validation,
the driver's lease and result lines, and the error envelope."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import BudgetExceeded, JobFailed, JobValidationError, SubmitRateLimited
from router_jobs.gateway.batches import validate_input, window_seconds
from router_jobs.gateway.driver import LeaseScripts, RedisResults
from router_jobs.gateway.errors import ApiError, from_library_error
from router_jobs.gateway.files import FileStore
from router_jobs.gateway.tokens import TokenStore, token_hash
from router_jobs.models import JobResult, JobStatus, Usage
from router_jobs.settings import Settings


def line(custom_id: Any, model: str = "m", url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"model": model, "messages": [{"role": "user", "content": "x"}]}})


def test_validation_names_each_bad_line() -> None:
    content = "\n".join([line("a"), "", line("a"), "{oops", line(None), line("d", url="/v1/embeddings"),
                         json.dumps({"custom_id": "e", "url": "/v1/chat/completions", "body": {"model": "m"}}),
                         line("f", model="forbidden")]).encode()
    total, errors = validate_input(content, "/v1/chat/completions", models=["m"])
    assert total == 7
    assert [(e["line"], e["code"]) for e in errors] == [
        (3, "duplicate_custom_id"), (4, "invalid_json_line"), (5, "missing_required_parameter"),
        (6, "mismatched_endpoint"), (7, "invalid_request"), (8, "model_not_allowed")]
    assert validate_input(b"\n\n", "/v1/chat/completions")[1][0]["code"] == "empty_file"
    assert validate_input(line("ok").encode(), "/v1/chat/completions") == (1, [])


def test_completion_window() -> None:
    assert window_seconds("24h") == 86400 and window_seconds("90s") == 90 and window_seconds("5m") == 300
    for bad in ("", "0h", "1d", "24 h"):
        with pytest.raises(ApiError):
            window_seconds(bad)


@pytest.fixture
def store(r: redis.Redis, namespace: str) -> TokenStore:
    schema = RedisSchema(namespace)
    return TokenStore(r, schema, UserLimiter(r, schema, Settings()), Budgets(r, schema))


def test_tokens_hashed_scoped_and_revocable(store: TokenStore, r: redis.Redis) -> None:
    token, key = store.create("alice", team="t1", models=["m1"], priority="batch", rpm=30, daily_budget=2.5)
    assert token.startswith("rjk-") and len(token) > 40
    raw = r.hgetall(store.schema.gw_tokens())
    assert list(raw) == [token_hash(token).encode()] and token.encode() not in b"".join(raw.values())
    got = store.authenticate(token)
    assert got is not None and got.user_id == "alice" and got.allows("m1") and not got.allows("m2")
    assert store.limiter.get_user_limit("alice") == (30.0, 30.0)
    assert store.budgets.caps()["user:alice"] == 2.5
    assert store.authenticate(token + "x") is None and store.authenticate("sk-" + token) is None
    assert store.revoke(key.token_id) and not store.revoke(key.token_id)
    assert store.authenticate(token) is None
    listed = store.all()
    assert [k.token_id for k in listed] == [key.token_id] and listed[0].revoked_at is not None
    with pytest.raises(JobValidationError):
        store.create("bob", burst=5)


def test_files_expire_and_belong_to_their_owner(r: redis.Redis, namespace: str) -> None:
    files = FileStore(r, RedisSchema(namespace), max_bytes=10, ttl_seconds=60)
    f = files.create(b"abc", filename="a.jsonl", purpose="batch", owner="u1")
    assert 0 < r.ttl(files.schema.gw_file(f.id)) <= 60 and f.expires_at == f.created_at + 60
    assert files.content(f.id, "u1") == b"abc"
    with pytest.raises(ApiError) as err:
        files.get(f.id, "u2")
    assert err.value.status == 404
    for size, purpose, status in ((11, "batch", 413), (5, "fine-tune", 400), (0, "batch", 400)):
        with pytest.raises(ApiError) as err:
            files.check_upload(size, purpose)
        assert err.value.status == status
    r.delete(files.schema.gw_file(f.id))  # as if it expired
    assert files.owned("u1") == [] and r.zcard(files.schema.gw_files()) == 0


def test_lease_is_renewed_and_released_only_by_its_holder(r: redis.Redis, namespace: str) -> None:
    key = RedisSchema(namespace).gw_batch_lease("b1")
    lease = LeaseScripts(r).lease
    assert r.set(key, "gw-a", nx=True, px=1000)
    assert not r.set(key, "gw-b", nx=True, px=1000)
    assert lease(keys=[key], args=["gw-b", "renew", 60000]) == 0 and r.pttl(key) <= 1000
    assert lease(keys=[key], args=["gw-a", "renew", 60000]) == 1 and r.pttl(key) > 1000
    assert lease(keys=[key], args=["gw-b", "release", 0]) == 0 and r.exists(key)
    assert lease(keys=[key], args=["gw-a", "release", 0]) == 1 and not r.exists(key)


class _Router:
    def __init__(self, client: redis.Redis, schema: RedisSchema) -> None:
        self.client = client
        self.schema = schema


def test_result_lines_in_openai_batch_format(r: redis.Redis, namespace: str) -> None:
    sink = RedisResults(_Router(r, RedisSchema(namespace)), "b1", model="m")  # type: ignore[arg-type]
    ok = JobResult(job_id="j1", status=JobStatus.succeeded, content="hi", model="m",
                   usage=Usage(input_tokens=3, output_tokens=1), finish_reason="length")
    sink.write({"line": 2, "custom_id": "a", "job_id": "j1", "status": "succeeded"}, ok)
    bad = JobResult(job_id="j2", status=JobStatus.failed, error_type="bad_request", error_message="no")
    sink.write({"line": 1, "custom_id": "b", "job_id": "j2", "status": "failed",
                "error": {"type": "bad_request", "message": "no"}}, bad)
    sink.stop_reason = "expired"
    gone = JobResult(job_id="j3", status=JobStatus.cancelled, error_type="cancelled")
    sink.write({"line": 3, "custom_id": "c", "job_id": "j3", "status": "cancelled",
                "error": {"type": "cancelled", "message": "cancelled"}}, gone)
    rows = sink.ordered()
    assert [x["custom_id"] for x in rows] == ["b", "a", "c"]
    assert rows[1]["response"]["status_code"] == 200 and rows[1]["error"] is None
    body = rows[1]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "hi" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {**body["usage"], "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert rows[0]["response"]["status_code"] == 400 and rows[0]["response"]["body"]["error"]["message"] == "no"
    assert rows[2]["response"] is None and rows[2]["error"]["code"] == "batch_expired"
    seen, n_ok, n_bad = sink.scan()
    assert (1 in seen, 2 in seen, 3 in seen, 4 in seen, n_ok, n_bad) == (True, True, True, False, 1, 2)


def test_library_errors_map_to_openai_statuses() -> None:
    limited = from_library_error(SubmitRateLimited("user alice", 2.2))
    assert limited.status == 429 and limited.headers["Retry-After"] == "3"
    budget = from_library_error(BudgetExceeded("user:alice", 1.0, 1.0))
    assert budget.status == 429 and budget.code == "insufficient_quota" and int(budget.headers["Retry-After"]) >= 1
    unknown = from_library_error(JobValidationError("model", "no active key serves model 'x' (served: m)"))
    assert (unknown.status, unknown.code, unknown.param) == (404, "model_not_found", "model")
    assert from_library_error(JobValidationError("temperature", "must be between 0 and 2")).status == 400
    assert from_library_error(JobFailed("j", "request_too_large", "too long")).code == "context_length_exceeded"
    assert from_library_error(JobFailed("j", "transient", "boom")).status == 502
    assert set(limited.body()["error"]) == {"message", "type", "param", "code"}


def test_driver_gives_a_batch_up_when_another_process_takes_its_lease(redis_url: str, namespace: str) -> None:
    import threading

    from router_jobs.client.router import Router
    from router_jobs.gateway.batches import BatchStore
    from router_jobs.gateway.driver import BatchDriver
    from tests.workerpool import fake_key, write_keys

    router = Router(Settings(redis_url=redis_url, namespace=namespace,
                             keys_file=write_keys([fake_key("fake-1", "m")])))
    try:
        files = FileStore(router.client, router.schema, max_bytes=10_000, ttl_seconds=60)
        batches = BatchStore(router.client, router.schema, files)
        f = files.create(("\n".join(line(f"r{i}") for i in range(5)) + "\n").encode(), filename="in.jsonl",
                         purpose="batch", owner="u")
        b = batches.create("u", input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h",
                           metadata=None)
        driver = BatchDriver(router, batches, files, lease_ms=300)
        lease = router.schema.gw_batch_lease(b["id"])
        assert router.client.set(lease, driver.holder, px=300)
        # no worker runs: the lines stay queued and the run goes on until told otherwise
        t = threading.Thread(target=driver._drive_leased, args=(b["id"],), daemon=True)
        t.start()
        assert router.client.set(lease, "another-gateway", px=60_000)  # taken over
        t.join(30)
        assert not t.is_alive()
        assert router.client.get(lease) == b"another-gateway"  # not released by the old holder
        obj = batches.load(b["id"])
        assert obj is not None and obj[0]["status"] == "in_progress"  # left for the new holder
        assert not router.client.hlen(router.schema.gw_batch_results(b["id"]))
    finally:
        router.close()
