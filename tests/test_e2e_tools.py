"""A tool-calling agent loop through the queue and real workers, on each provider, and one
conversation whose tool turns move OpenAI -> Anthropic -> Gemini -> OpenAI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fakeproviders import FakeProviderServer
from router_jobs.client.router import Router
from router_jobs.errors import JobValidationError
from router_jobs.models import ChatMessage, JobResult
from router_jobs.request import ToolCall
from router_jobs.settings import Settings
from tests.workerpool import WorkerPool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
WEATHER = {"name": "get_weather", "description": "Weather now in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def get_weather(city: str) -> str:
    """The agent's tool."""
    return f"sunny in {city}"


def run_tools(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool messages answering ``calls`` (the agent's side of the loop)."""
    return [{"role": "tool", "tool_call_id": c.id, "content": get_weather(**c.args())} for c in calls]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeProviderServer]]:
    made = {p: FakeProviderServer(p, keys={f"{p}-1": f"secret-{p}-1"}) for p in MODELS}
    for s in made.values():
        s.start()
    yield made
    for s in made.values():
        s.stop()


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
        servers: dict[str, FakeProviderServer]) -> dict[str, str]:
    keys = [{"key_id": f"{p}-1", "model_name": MODELS[p], "provider": p, "base_url": s.base_url, "active": True}
            for p, s in servers.items()]
    path = tmp_path_factory.mktemp("tools") / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return {
        "REDIS_URL": redis_url, "ROUTER_NAMESPACE": "rj-tools", "ROUTER_KEYS_FILE": str(path),
        "ROUTER_VISIBILITY_TIMEOUT_MS": "3000", "SECRET_STORE_TYPE": "env",
        "API_KEY_OPENAI_1": "secret-openai-1", "API_KEY_ANTHROPIC_1": "secret-anthropic-1",
        "API_KEY_GEMINI_1": "secret-gemini-1",
    }


@pytest.fixture(scope="module")
def pool(env: dict[str, str]) -> Iterator[WorkerPool]:
    with WorkerPool(env, processes=1, threads=2) as workers:
        yield workers


@pytest.fixture(scope="module")
def router(env: dict[str, str]) -> Iterator[Router]:
    router = Router(Settings.from_env(env))
    yield router
    router.close()


def ask(router: Router, model: str, **fields: Any) -> JobResult:
    return router.await_result(router.submit(model=model, tools=[WEATHER], **fields), timeout=60)


@pytest.mark.parametrize("provider", list(MODELS))
def test_agent_loop_through_the_queue(router: Router, pool: WorkerPool, provider: str) -> None:
    model = MODELS[provider]
    question = [{"role": "user", "content": "Lisbon"}]
    first = ask(router, model, messages=question)
    assert first.provider == provider and first.finish_reason == "tool_calls" and first.content == ""
    assert [c.name for c in first.tool_calls] == ["get_weather"] and first.tool_calls[0].args() == {"city": "Lisbon"}
    assert first.usage.input_tokens > 0
    assistant = ChatMessage(role="assistant", tool_calls=first.tool_calls).model_dump(mode="json")
    second = ask(router, model, messages=[*question, assistant, *run_tools(first.tool_calls)])
    assert second.finish_reason == "stop" and second.tool_calls == []
    assert "sunny in Lisbon" in (second.content or "")


def test_a_tool_conversation_moves_across_providers(router: Router, pool: WorkerPool,
                                                    servers: dict[str, FakeProviderServer]) -> None:
    conv = "conv-tools-moving"
    # 1. OpenAI asks for the tool
    r1 = ask(router, MODELS["openai"], prompt="Paris", conversation_id=conv, system_prompt="you forecast")
    assert r1.provider == "openai" and len(r1.tool_calls) == 1
    # 2. the tool's result goes to Anthropic, which answers from it
    r2 = ask(router, MODELS["anthropic"], messages=run_tools(r1.tool_calls), conversation_id=conv)
    assert r2.provider == "anthropic" and r2.content == "echo: sunny in Paris" and r2.finish_reason == "stop"
    sent = servers["anthropic"].received("anthropic-1")[-1].body
    assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": r1.tool_calls[0].id,
                                               "name": "get_weather", "input": {"city": "Paris"}}]
    assert sent["messages"][2]["content"][0]["tool_use_id"] == r1.tool_calls[0].id
    # 3. Gemini, with that history, asks for the tool again
    r3 = ask(router, MODELS["gemini"], prompt="Oslo", conversation_id=conv)
    assert r3.provider == "gemini" and [c.args() for c in r3.tool_calls] == [{"city": "Oslo"}]
    sent = servers["gemini"].received("gemini-1")[-1].body
    assert sent["contents"][1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"
    # 4. the result of Gemini's call goes to OpenAI, which answers
    r4 = ask(router, MODELS["openai"], messages=run_tools(r3.tool_calls), conversation_id=conv)
    assert r4.provider == "openai" and r4.content == "echo: sunny in Oslo"
    sent = servers["openai"].received("openai-1")[-1].body
    assert sent["messages"][-2]["tool_calls"][0]["id"] == r3.tool_calls[0].id
    # the stored history is provider-neutral: every tool turn whole, in order
    history = router.conversations.history(conv)
    assert [(m.role, bool(m.tool_calls)) for m in history] == [
        ("user", False), ("assistant", True), ("tool", False), ("assistant", False),
        ("user", False), ("assistant", True), ("tool", False), ("assistant", False)]
    assert history[2].tool_call_id == r1.tool_calls[0].id and history[6].tool_call_id == r3.tool_calls[0].id


def test_a_job_no_serving_provider_can_run_is_refused_before_the_queue(router: Router) -> None:
    with pytest.raises(JobValidationError) as info:
        router.submit(prompt="x", model=MODELS["anthropic"], seed=5)
    assert info.value.field == "seed"
    with pytest.raises(JobValidationError) as info:
        router.submit(model=MODELS["gemini"], tools=[WEATHER], parallel_tool_calls=False,
                      messages=[{"role": "user", "content": "x"}])
    assert info.value.field == "parallel_tool_calls"
