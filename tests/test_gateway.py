"""The gateway end to end: the real openai SDK -> routerctl serve -> queue -> real workers ->
fake providers (the in-process fake and the fake OpenAI HTTP server through the OpenAI SDK)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from fakeproviders import FakeProviderServer
from router_jobs.client.router import Router
from router_jobs.gateway.tokens import token_hash
from router_jobs.settings import Settings
from tests.gatewayproc import GatewayProcess
from tests.workerpool import WorkerPool, fake_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeProviderServer]:
    server = FakeProviderServer("openai", keys={"openai-1": "secret-openai-1"})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
        openai_server: FakeProviderServer) -> dict[str, str]:
    keys = [fake_key("fake-1", "fake-model"), fake_key("fake-2", "other-model"),
            {"key_id": "openai-1", "model_name": "gpt-4o-mini", "provider": "openai",
             "base_url": openai_server.base_url, "active": True}]
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": f"gw{time.time_ns() % 10**9}", "ROUTER_KEYS_FILE": str(path),
            "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": "x", "API_KEY_FAKE_2": "y",
            "API_KEY_OPENAI_1": "secret-openai-1"}


@pytest.fixture(scope="module")
def router(env: dict[str, str]) -> Iterator[Router]:
    r = Router(Settings.from_env(env))
    yield r
    r.close()


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], router: Router, redis_url: str) -> Iterator[GatewayProcess]:
    with WorkerPool(env, processes=1, threads=8) as pool:
        pool.wait_consuming(redis_url, env["ROUTER_NAMESPACE"])
        with GatewayProcess(env, "--max-file-bytes", "20000") as gw:
            yield gw


def issue(env: dict[str, str], *args: str) -> str:
    """A token made by ``routerctl tokens create``."""
    result = CliRunner().invoke(cli, ["tokens", "create", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["token"])


@pytest.fixture(scope="module")
def client(env: dict[str, str], gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=issue(env, "--user", "alice"), max_retries=0)


def test_chat_completion_through_real_workers(client: openai.OpenAI, openai_server: FakeProviderServer) -> None:
    out = client.chat.completions.create(model="fake-model", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert out.choices[0].message.content == "echo: hello there"
    assert out.choices[0].finish_reason == "stop" and out.object == "chat.completion"
    assert out.usage is not None and out.usage.completion_tokens > 0
    # the OpenAI provider through its own SDK, behind the gateway
    out = client.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                         messages=[{"role": "user", "content": "via openai"}])
    assert out.choices[0].message.content == "echo: via openai"
    assert any(r.prompt == "via openai" for r in openai_server.received())


def test_streaming_chat_completion(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_streaming_job_failure_is_raised_by_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "no [[fail:bad_request]]"}], stream=True)
    with pytest.raises(openai.APIError, match="refused"):
        list(stream)


def test_failed_job_answers_openai_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="fake-model",
                                       messages=[{"role": "user", "content": "[[fail:request_too_large]]"}])
    assert err.value.code == "context_length_exceeded"


def test_models_from_the_registry_and_token_scope(env: dict[str, str], gateway: GatewayProcess,
                                                  client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["fake-model", "gpt-4o-mini", "other-model"]
    assert client.models.retrieve("gpt-4o-mini").owned_by == "openai"
    scoped = openai.OpenAI(base_url=gateway.url, max_retries=0,
                           api_key=issue(env, "--user", "bob", "--model", "other-model"))
    assert [m.id for m in scoped.models.list()] == ["other-model"]
    with pytest.raises(openai.PermissionDeniedError):
        scoped.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        scoped.models.retrieve("fake-model")


def test_files_upload_list_content_delete(env: dict[str, str], gateway: GatewayProcess, client: openai.OpenAI) -> None:
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert f.bytes == len(data) and f.purpose == "batch" and f.expires_at is not None
    assert client.files.retrieve(f.id).filename == "in.jsonl"
    assert client.files.content(f.id).content == data
    assert f.id in [x.id for x in client.files.list()]
    # another user's token does not see it
    other = openai.OpenAI(base_url=gateway.url, api_key=issue(env, "--user", "carol"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    assert f.id not in [x.id for x in other.files.list()]
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)


def test_rate_limited_token_gets_429_with_retry_after(env: dict[str, str], gateway: GatewayProcess) -> None:
    c = openai.OpenAI(base_url=gateway.url, max_retries=0,
                      api_key=issue(env, "--user", "dave", "--rpm", "1", "--burst", "1"))
    c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "first"}])
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "second"}])
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_daily_budget_gets_429(env: dict[str, str], gateway: GatewayProcess) -> None:
    c = openai.OpenAI(base_url=gateway.url, max_retries=0,
                      api_key=issue(env, "--user", "erin", "--daily-budget", "0"))
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "insufficient_quota"


def test_tokens_are_stored_hashed_and_listed_without_secret(env: dict[str, str], router: Router) -> None:
    token = issue(env, "--user", "frank", "--name", "ci")
    store = router.client.hgetall(router.schema.gw_tokens())
    assert token_hash(token).encode() in store
    assert all(token.encode() not in k and token.encode() not in v for k, v in store.items())
    listed = CliRunner().invoke(cli, ["tokens", "list", "--json"], env=env)
    assert listed.exit_code == 0 and token not in listed.output and '"frank"' in listed.output


def test_health_and_metrics(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    client.models.list()
    with urllib.request.urlopen(gateway.root + "/healthz") as resp:
        assert json.loads(resp.read())["status"] == "ok"
    with urllib.request.urlopen(gateway.root + "/readyz") as resp:
        assert "fake-model" in json.loads(resp.read())["models"]
    with urllib.request.urlopen(gateway.root + "/metrics") as resp:
        text = resp.read().decode()
    assert 'router_gateway_requests_total{method="GET",route="/v1/models",status="200"}' in text
    assert 'router_gateway_request_seconds_count{method="POST",route="/v1/chat/completions"}' in text


def test_secrets_never_reach_redis(router: Router, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "canary"}])
    r: redis.Redis = router.client
    for key in r.scan_iter(match=f"{router.schema.ns}:*", count=1000):
        kind = r.type(key)
        if kind == b"hash":
            blob = b"".join(k + v for k, v in r.hgetall(key).items())
        elif kind == b"string":
            blob = r.get(key) or b""
        else:
            continue
        assert b"secret-openai-1" not in blob, key


def _wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end: {b}")


def batch_file(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def line(custom_id: str, content: str, model: str = "fake-model") -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}]}}


def test_batch_lifecycle_output_and_error_files(client: openai.OpenAI) -> None:
    rows = [line(f"r{i}", f"question {i}") for i in range(20)]
    rows[5] = line("r5", "bad [[fail:bad_request]]")
    rows[9] = line("r9", "to openai", model="gpt-4o-mini")
    f = client.files.create(file=("batch.jsonl", batch_file(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"run": "t1"})
    assert b.status == "validating" and b.metadata == {"run": "t1"}
    b = _wait_batch(client, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (20, 19, 1)
    assert b.in_progress_at and b.finalizing_at and b.completed_at
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(20) if i != 5]  # input order
    by_id = {o["custom_id"]: o for o in out}
    assert by_id["r3"]["response"]["status_code"] == 200
    assert by_id["r3"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 3"
    assert by_id["r9"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: to openai"
    errs = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errs] == ["r5"] and errs[0]["response"]["status_code"] == 400
    assert b.id in [x.id for x in client.batches.list()]


def test_batch_validation_errors_name_their_lines(client: openai.OpenAI) -> None:
    rows = batch_file([line("a", "fine"), line("a", "duplicate id")]) + b"{not json\n" + batch_file(
        [{"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-model"}}])
    f = client.files.create(file=("bad.jsonl", rows), purpose="batch")
    b = _wait_batch(client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h").id)
    assert b.status == "failed" and b.errors is not None and b.errors.data is not None
    assert [(e.line, e.code) for e in b.errors.data] == [
        (2, "duplicate_custom_id"), (3, "invalid_json_line"), (4, "mismatched_endpoint")]
    assert b.output_file_id is None


def test_batch_create_refusals(client: openai.OpenAI) -> None:
    f = client.files.create(file=("x.jsonl", batch_file([line("a", "x")])), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_batch_cancel_stops_taking_lines(client: openai.OpenAI) -> None:
    rows = [line(f"s{i}", f"{i} [[sleep:0.3]]") for i in range(120)]
    f = client.files.create(file=("slow.jsonl", batch_file(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while client.batches.retrieve(b.id).request_counts.completed < 5 and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.1)
    assert client.batches.cancel(b.id).status == "cancelling"
    b = _wait_batch(client, b.id)
    assert b.status == "cancelled" and b.cancelled_at is not None
    assert b.request_counts is not None and 5 <= b.request_counts.completed < 120
    done = client.files.content(b.output_file_id).text.splitlines()
    assert len(done) == b.request_counts.completed
    with pytest.raises(openai.APIStatusError) as err:
        client.batches.cancel(b.id) and client.batches.cancel("batch_nope")
    assert err.value.status_code == 404


def test_stream_is_fed_by_the_durable_job_stream(client: openai.OpenAI, router: Router) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": words}], stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == f"echo: {words}"
    assert len(pieces) > 1  # text arrived as the provider streamed it, not as one block
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    events = [e.type for e in router.stream(job_id, timeout=5)]
    assert events[0] == "state" and "started" in events and events[-1] == "done"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "fake-model"])
def test_tool_calling_loop_through_the_gateway(client: openai.OpenAI, model: str) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    assert second.choices[0].message.content == "echo: sunny, 21C"
    # streamed: the tool call arrives as tool_calls deltas that join into the same call
    chunks = list(client.chat.completions.create(model=model, messages=messages[:1], tools=[WEATHER],  # type: ignore[arg-type]
                                                 stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function is not None and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas if d.function is not None)
    assert "city" in json.loads(args)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_response_format_and_images_pass_through(client: openai.OpenAI, openai_server: FakeProviderServer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "as json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    assert "answer" in json.loads(out.choices[0].message.content or "")
    pixel = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}])
    assert out.choices[0].message.content == "echo: what is this?"
    sent = [r for r in openai_server.received() if r.prompt == "what is this?"][-1]
    assert pixel in json.dumps(sent.body)
