"""Conversations through real workers: order, atomic turns, provider switches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakeproviders import FakeProviderServer
from router_jobs.client.router import Router
from router_jobs.models import JobStatus
from router_jobs.settings import Settings
from tests.workerpool import WorkerPool, fake_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def servers() -> Iterator[dict[str, FakeProviderServer]]:
    made = {p: FakeProviderServer(p, keys={f"{p}-1": f"secret-{p}-1"}) for p in ("openai", "anthropic", "gemini")}
    for s in made.values():
        s.start()
    yield made
    for s in made.values():
        s.stop()


@pytest.fixture
def env(redis_url: str, namespace: str, tmp_path: Path, servers: dict[str, FakeProviderServer]) -> dict[str, str]:
    models = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
    keys = [fake_key("fake-1", "fake-model")] + [
        {"key_id": f"{p}-1", "model_name": models[p], "provider": p, "base_url": s.base_url, "active": True}
        for p, s in servers.items()
    ]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return {
        "REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace, "ROUTER_KEYS_FILE": str(path),
        "ROUTER_VISIBILITY_TIMEOUT_MS": "3000", "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": "x",
        "API_KEY_OPENAI_1": "secret-openai-1", "API_KEY_ANTHROPIC_1": "secret-anthropic-1",
        "API_KEY_GEMINI_1": "secret-gemini-1",
    }


@pytest.fixture
def router(env: dict[str, str]) -> Iterator[Router]:
    router = Router(Settings.from_env(env))
    yield router
    router.close()


def test_twenty_turns_at_once_keep_submission_order(env: dict[str, str], router: Router) -> None:
    conv = "conv-twenty"
    # a turn that fails (the provider refuses it) sits in the middle
    prompts = [f"turn {i}" + (" [[fail:bad_request]]" if i == 7 else "") for i in range(21)]
    jobs = [router.submit(p, model="fake-model", conversation_id=conv, system_prompt="be brief") for p in prompts]
    with WorkerPool(env, processes=4, threads=4):
        results = {r.job_id: r for r in router.as_completed(jobs, timeout=120)}
    assert results[jobs[7].job_id].status == JobStatus.failed
    assert all(results[j.job_id].ok for i, j in enumerate(jobs) if i != 7)
    history = router.conversations.history(conv)
    assert len(history) == 40
    expected = []
    for i, p in enumerate(prompts):
        if i == 7:
            continue  # the failed turn left no trace
        expected += [("user", p), ("assistant", f"echo: {p}")]
    assert [(m.role, m.content) for m in history] == expected
    meta = router.conversations.metadata(conv)
    assert meta is not None and meta["message_count"] == 40


def test_conversation_switches_provider_and_keeps_history(
    env: dict[str, str], router: Router, servers: dict[str, FakeProviderServer]
) -> None:
    conv = "conv-switch"
    plan = [("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic"), ("gemini-2.5-flash", "gemini"),
            ("gpt-4o-mini", "openai")]
    with WorkerPool(env, processes=1, threads=2):
        for i, (model, provider) in enumerate(plan):
            result = router.await_result(
                router.submit(f"question {i}", model=model, conversation_id=conv, system_prompt="sys-prompt-x"),
                timeout=60)
            assert result.provider == provider and result.content == f"echo: question {i}"
    # each provider received the whole history so far, in its own wire format
    for i, (_model, provider) in enumerate(plan):
        rec = [r for r in servers[provider].received() if r.prompt == f"question {i}"][-1]
        assert "sys-prompt-x" in rec.text
        for j in range(i):
            assert f"question {j}" in rec.text and f"echo: question {j}" in rec.text
    history = router.conversations.history(conv)
    assert [m.content for m in history if m.role == "user"] == [f"question {i}" for i in range(4)]
    meta = router.conversations.metadata(conv)
    assert meta is not None and meta["last_provider"] == "openai" and meta["message_count"] == 8
