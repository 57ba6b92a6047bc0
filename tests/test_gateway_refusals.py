"""Refusals through the real openai SDK: malformed bodies, wrong, missing and revoked tokens,
oversized uploads, bad purposes. Each gets OpenAI's status and envelope, and nothing is
enqueued (no worker runs here: every job would stay visible in Redis)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from cli.main import cli
from router_jobs.client.router import Router
from router_jobs.settings import Settings
from tests.gatewayproc import GatewayProcess
from tests.workerpool import fake_key, write_keys

pytestmark = [pytest.mark.e2e]

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(redis_url: str) -> dict[str, str]:
    keys = write_keys([fake_key("fake-1", "fake-model")])
    return {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": f"gr{time.time_ns() % 10**9}", "ROUTER_KEYS_FILE": str(keys),
            "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": "x"}


@pytest.fixture(scope="module")
def router(env: dict[str, str]) -> Iterator[Router]:
    r = Router(Settings.from_env(env))
    yield r
    r.close()


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], router: Router) -> Iterator[GatewayProcess]:
    with GatewayProcess(env, "--max-file-bytes", "1000") as gw:
        yield gw


def issue(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["tokens", "create", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@pytest.fixture(scope="module")
def token(env: dict[str, str], gateway: GatewayProcess) -> str:
    return str(issue(env, "--user", "u1")["token"])


def enqueued(router: Router) -> int:
    """Job records plus queued messages under the test's namespace."""
    jobs = sum(1 for _ in router.client.scan_iter(match=router.schema.job_pattern(), count=1000))
    queued = sum(int(router.client.exists(router.schema.stream(q)) and router.client.xlen(router.schema.stream(q)))
                 + int(router.client.zcard(router.schema.delayed(q))) for q in ("interactive", "batch"))
    return jobs + queued


@pytest.fixture
def nothing_enqueued(router: Router) -> Iterator[None]:
    before = enqueued(router)
    yield
    assert enqueued(router) == before == 0


def raw(gateway: GatewayProcess, path: str, body: bytes, token: str | None, method: str = "POST",
        content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(gateway.url + path, data=body, method=method,
                                 headers={"Content-Type": content_type,
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def sdk(gateway: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=token, max_retries=0)


@pytest.mark.usefixtures("nothing_enqueued")
@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "fake-model"}', "messages"),
    (b'{"model": "fake-model", "messages": []}', "messages"),
    (b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}', "messages"),
    (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 3}', "n"),
])
def test_malformed_bodies_get_400_envelope(gateway: GatewayProcess, token: str, body: bytes,
                                           param: str | None) -> None:
    status, answer = raw(gateway, "/chat/completions", body, token)
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param


@pytest.mark.usefixtures("nothing_enqueued")
def test_sdk_raises_its_typed_errors(gateway: GatewayProcess, token: str) -> None:
    c = sdk(gateway, token)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="fake-model", messages=MSG, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        c.chat.completions.create(model="no-such-model", messages=MSG)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_unknown")
    with pytest.raises(openai.NotFoundError):
        c.files.content("file-unknown")


@pytest.mark.usefixtures("nothing_enqueued")
@pytest.mark.parametrize("bad", ["", "rjk-not-a-real-token", "sk-something-else"])
def test_wrong_or_missing_token_gets_401(gateway: GatewayProcess, bad: str) -> None:
    c = sdk(gateway, bad or "placeholder")
    if not bad:
        status, answer = raw(gateway, "/chat/completions", json.dumps({"model": "fake-model", "messages": MSG}).encode(),
                             None)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        return
    with pytest.raises(openai.AuthenticationError) as err:
        c.chat.completions.create(model="fake-model", messages=MSG)
    assert err.value.code == "invalid_api_key"
    for call in (c.models.list, c.files.list, c.batches.list):
        with pytest.raises(openai.AuthenticationError):
            call()


@pytest.mark.usefixtures("nothing_enqueued")
def test_revoked_token_gets_401(env: dict[str, str], gateway: GatewayProcess) -> None:
    made = issue(env, "--user", "u2")
    c = sdk(gateway, made["token"])
    assert [m.id for m in c.models.list()] == ["fake-model"]
    result = CliRunner().invoke(cli, ["tokens", "revoke", made["token_id"]], env=env)
    assert result.exit_code == 0, result.output
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="fake-model", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    again = CliRunner().invoke(cli, ["tokens", "revoke", made["token_id"]], env=env)
    assert again.exit_code == 1


@pytest.mark.usefixtures("nothing_enqueued")
def test_oversized_and_wrong_purpose_uploads(gateway: GatewayProcess, token: str, router: Router) -> None:
    c = sdk(gateway, token)
    with pytest.raises(openai.APIStatusError) as err:
        c.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert err.value.status_code == 413 and err.value.code == "file_too_large"
    with pytest.raises(openai.APIStatusError) as err:  # just over the limit, within the form's slack
        c.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
    assert err.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as bad:
        c.files.create(file=("f.jsonl", b"{}\n"), purpose="fine-tune")
    assert bad.value.param == "purpose"
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("f.jsonl", b""), purpose="batch")
    assert c.files.list().data == []
    assert not list(router.client.scan_iter(match=router.schema.gw_file("*")))


def test_unknown_route_and_method_use_the_envelope(gateway: GatewayProcess, token: str) -> None:
    status, answer = raw(gateway, "/embeddings", b"{}", token)
    assert status == 404 and answer["error"]["code"] == "unknown_url"
    status, answer = raw(gateway, "/models", b"", token, method="DELETE")
    assert status == 405 and "error" in answer


