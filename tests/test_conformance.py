"""The conformance matrix: every feature of the neutral request x every provider.

Each cell either works -- the job's fields go through ``validate_spec`` (as ``submit`` does),
the adapter's real SDK sends them to the fake server of that provider, which checks the body
as strictly as the real API and answers in its real wire format, and the neutral result is
checked -- or is refused at submit with a :class:`JobValidationError` naming the field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as redis_lib

from fakeproviders import FakeProviderServer
from router_jobs.capacity.config import parse_keys
from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router, validate_spec
from router_jobs.errors import BadRequest, ContentBlocked, JobValidationError
from router_jobs.models import ChatMessage, JobSpec
from router_jobs.providers import ChatRequest, ChatResponse, KeyCredentials, get_adapter
from router_jobs.request import ImagePart, ProviderPart, ToolCall
from router_jobs.settings import Settings

SECRET = "sk-conformance-0b1c2d3e4f"
PROVIDERS = ["openai", "anthropic", "gemini"]
MODEL = "model-x"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {"name": "get_weather", "description": "Weather now in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
                 "required": ["answer", "confidence"], "additionalProperties": False}

Body = dict[str, Any]
Check = Callable[[str, ChatResponse, Body], None]


@dataclass
class Feature:
    """One row of the matrix: the job's fields, the refusals, and what a working cell shows."""

    fields: dict[str, Any]
    check: Check
    refused: dict[str, str] = field(default_factory=dict)  # provider -> field named in the refusal
    scenario: str | None = None


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_turn(is_error: bool = False) -> list[dict[str, Any]]:
    call = {"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    return [{"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C", "is_error": is_error}]


# ------------------------------------------------------------------------------- checks

def _msgs(provider: str, body: Body) -> list[Any]:
    return body["contents"] if provider == "gemini" else body["messages"]


def check_text(provider: str, resp: ChatResponse, body: Body) -> None:
    assert resp.content == "echo: hello" and resp.finish_reason == "stop" and resp.tool_calls == []


def check_image(kind: str) -> Check:
    def check(provider: str, resp: ChatResponse, body: Body) -> None:
        assert resp.content == "echo: what is this?"
        parts = _msgs(provider, body)[-1]["parts" if provider == "gemini" else "content"]
        image = [p for p in parts if p.get("type") in ("image_url", "image") or "inlineData" in p or "fileData" in p]
        assert len(image) == 1
        img = image[0]
        if provider == "openai":
            url = img["image_url"]["url"]
            assert url == (f"data:image/png;base64,{PNG}" if kind == "data" else "https://example.com/cat.png")
        elif provider == "anthropic":
            assert img["source"] == ({"type": "base64", "media_type": "image/png", "data": PNG} if kind == "data"
                                     else {"type": "url", "url": "https://example.com/cat.png"})
        else:
            assert (img["inlineData"] == {"mimeType": "image/png", "data": PNG} if kind == "data"
                    else img["fileData"] == {"fileUri": "https://example.com/cat.png", "mimeType": "image/png"})
    return check


def check_detail(provider: str, resp: ChatResponse, body: Body) -> None:
    assert body["messages"][-1]["content"][1]["image_url"]["detail"] == "low"


def check_calls(*names: str) -> Check:
    def check(provider: str, resp: ChatResponse, body: Body) -> None:
        assert [c.name for c in resp.tool_calls] == list(names)
        assert resp.finish_reason == "tool_calls" and resp.content == ""
        assert len({c.id for c in resp.tool_calls}) == len(names) and all(c.id for c in resp.tool_calls)
        for c in resp.tool_calls:
            key = "city" if c.name == "get_weather" else "zone"
            assert c.args() == {key: "weather in Paris?"}
    return check


def check_parallel_off(provider: str, resp: ChatResponse, body: Body) -> None:
    check_calls("get_weather")(provider, resp, body)
    if provider == "openai":
        assert body["parallel_tool_calls"] is False
    else:
        assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def check_choice_none(provider: str, resp: ChatResponse, body: Body) -> None:
    assert resp.tool_calls == [] and resp.content == "echo: weather in Paris?"


def check_tool_result(provider: str, resp: ChatResponse, body: Body) -> None:
    assert resp.finish_reason == "stop" and resp.tool_calls == []
    msgs = _msgs(provider, body)
    if provider == "openai":
        assert resp.content == "echo: sunny, 21 C"
        assert msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert msgs[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"}
    elif provider == "anthropic":
        assert resp.content == "echo: sunny, 21 C"
        assert msgs[1]["content"] == [{"type": "tool_use", "id": "call_w1", "name": "get_weather",
                                       "input": {"city": "Paris"}}]
        assert msgs[2]["content"][0]["tool_use_id"] == "call_w1"
    else:
        assert resp.content == 'echo: {"result": "sunny, 21 C"}'
        assert msgs[1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
        assert msgs[2]["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                          "response": {"result": "sunny, 21 C"}}


def check_tool_error(provider: str, resp: ChatResponse, body: Body) -> None:
    last = _msgs(provider, body)[-1]
    if provider == "openai":
        assert last["content"] == "[tool error] sunny, 21 C"
    elif provider == "anthropic":
        assert last["content"][0]["is_error"] is True
    else:
        assert last["parts"][0]["functionResponse"]["response"] == {"error": "sunny, 21 C"}


def check_json_object(provider: str, resp: ChatResponse, body: Body) -> None:
    if provider == "openai":
        assert body["response_format"] == {"type": "json_object"}
    elif provider == "anthropic":
        assert body["output_config"]["format"] == {"type": "json_schema", "schema": {"type": "object"}}
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"


def check_json_schema(provider: str, resp: ChatResponse, body: Body) -> None:
    value = json.loads(resp.content)
    assert set(value) == {"answer", "confidence"} and isinstance(value["confidence"], float)
    if provider == "openai":
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    elif provider == "anthropic":
        assert body["output_config"]["format"]["schema"] == ANSWER_SCHEMA
    else:
        assert body["generationConfig"]["responseJsonSchema"] == ANSWER_SCHEMA


def check_effort(provider: str, resp: ChatResponse, body: Body) -> None:
    if provider == "openai":
        assert body["reasoning_effort"] == "high"
    elif provider == "anthropic":
        assert body["output_config"] == {"effort": "high"}
    else:
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH"}
    assert resp.usage.reasoning_tokens == (0 if provider == "anthropic" else 5)


def check_budget(provider: str, resp: ChatResponse, body: Body) -> None:
    if provider == "anthropic":
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        assert [p.data["type"] for p in resp.parts] == ["thinking"] and resp.parts[0].data["signature"]
    else:
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
    assert resp.content == "echo: hello"


def check_seed(provider: str, resp: ChatResponse, body: Body) -> None:
    assert (body["seed"] if provider == "openai" else body["generationConfig"]["seed"]) == 42


def check_cache(provider: str, resp: ChatResponse, body: Body) -> None:
    if provider == "anthropic":
        assert body["system"] == [{"type": "text", "text": "long stable instructions",
                                   "cache_control": {"type": "ephemeral"}}]
        assert body["tools"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert resp.usage.cache_write_tokens > 0  # counted in input_tokens, as cache reads are
    else:  # caching is automatic there: the hint has nothing to map to, and nothing leaks
        assert "cache_control" not in json.dumps(body)
    assert resp.usage.cached_tokens == 2


def check_provider_part(provider: str, resp: ChatResponse, body: Body) -> None:
    last = _msgs(provider, body)[-1]
    parts = last["parts"] if provider == "gemini" else last["content"]
    assert PASS_THROUGH[provider] in parts


def check_refusal(provider: str, resp: ChatResponse, body: Body) -> None:
    assert resp.refusal == "I can't help with that." and resp.finish_reason == "refusal" and resp.content == ""


PASS_THROUGH = {
    "openai": {"type": "text", "text": "raw openai part"},
    "anthropic": {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a doc"}},
    "gemini": {"text": "raw gemini part"},
}
TOOLS_ASK = {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": [WEATHER]}

FEATURES: dict[str, Feature] = {
    "text": Feature({"prompt": "hello", "temperature": 0.3, "top_p": 0.9, "stop": ["END"]}, check_text),
    "image_base64": Feature({"messages": [user(text("what is this?"), {"type": "image", "data": PNG,
                                                                        "media_type": "image/png"})]},
                            check_image("data")),
    "image_url": Feature({"messages": [user(text("what is this?"), {"type": "image", "url": "https://example.com/cat.png",
                                                                     "media_type": "image/png"})]},
                         check_image("url")),
    "image_url_no_media_type": Feature(
        {"messages": [user(text("what is this?"), {"type": "image", "url": "https://example.com/cat.png"})]},
        check_image("url"), refused={"gemini": "messages[0].content[1].media_type"}),
    "image_detail": Feature(
        {"messages": [user(text("what is this?"), {"type": "image", "url": "https://x.test/a.png", "detail": "low"})]},
        check_detail, refused={"anthropic": "messages[0].content[1].detail", "gemini": "messages[0].content[1].media_type"}),
    "tool_call": Feature(TOOLS_ASK, check_calls("get_weather")),
    "parallel_tool_calls": Feature({**TOOLS_ASK, "tools": [WEATHER, TIME]}, check_calls("get_weather", "get_time")),
    "parallel_tool_calls_off": Feature({**TOOLS_ASK, "tools": [WEATHER, TIME], "parallel_tool_calls": False},
                                       check_parallel_off, refused={"gemini": "parallel_tool_calls"}),
    "tool_choice_none": Feature({**TOOLS_ASK, "tool_choice": "none"}, check_choice_none),
    "tool_choice_required": Feature({**TOOLS_ASK, "tool_choice": "required"}, check_calls("get_weather")),
    "tool_choice_named": Feature({**TOOLS_ASK, "tools": [WEATHER, TIME], "tool_choice": {"name": "get_time"}},
                                 check_calls("get_time")),
    "tool_result": Feature({"messages": tool_turn(), "tools": [WEATHER]}, check_tool_result),
    "tool_result_error": Feature({"messages": tool_turn(is_error=True), "tools": [WEATHER]}, check_tool_error),
    "json_object": Feature({"prompt": "hello", "response_format": {"type": "json_object"}}, check_json_object),
    "json_schema_strict": Feature({"prompt": "hello", "response_format": {
        "type": "json_schema", "name": "answer", "json_schema": ANSWER_SCHEMA, "strict": True}}, check_json_schema),
    "reasoning_effort": Feature({"prompt": "hello", "reasoning": {"effort": "high"}}, check_effort),
    "reasoning_budget": Feature({"prompt": "hello", "max_output_tokens": 4096, "reasoning": {"budget_tokens": 2048}},
                                check_budget, refused={"openai": "reasoning.budget_tokens"}),
    "seed": Feature({"prompt": "hello", "seed": 42}, check_seed, refused={"anthropic": "seed"}),
    "cache_control": Feature({
        "messages": [{"role": "system", "content": [{"type": "text", "text": "long stable instructions",
                                                     "cache_control": {"type": "ephemeral"}}]},
                     {"role": "user", "content": "hello"}],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral", "ttl": "1h"}}], "tool_choice": "none"},
        check_cache),
    "refusal": Feature({"prompt": "hello"}, check_refusal, scenario="refusal"),
}
# provider parts: each provider takes its own, the others refuse them at submit
for _p in PROVIDERS:
    FEATURES[f"provider_part_{_p}"] = Feature(
        {"messages": [user(text("hello "), {"type": "provider", "provider": _p, "data": PASS_THROUGH[_p]})]},
        check_provider_part, refused={q: "messages[0].content[1]" for q in PROVIDERS if q != _p})


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeProviderServer]]:
    started = {p: FakeProviderServer(p, {"k1": SECRET}, cached_tokens=2, reasoning_tokens=5) for p in PROVIDERS}
    for s in started.values():
        s.start()
    yield started
    for s in started.values():
        s.stop()


def run(server: FakeProviderServer, spec: JobSpec) -> tuple[ChatResponse, Body]:
    before = len(server.received("k1"))
    request = ChatRequest.from_spec(spec, MODEL, spec.chat_messages())
    response = get_adapter(server.provider).complete(request, KeyCredentials("k1", SECRET, server.base_url, 10.0))
    records = server.received("k1")
    assert len(records) == before + 1 and records[-1].status == 200
    return response, records[-1].body


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_works_or_is_refused_at_submit(servers: dict[str, FakeProviderServer], name: str,
                                               provider: str) -> None:
    feature = FEATURES[name]
    fields = {"model": MODEL, **feature.fields}
    served = {MODEL: {provider}}
    if provider in feature.refused:
        with pytest.raises(JobValidationError) as info:
            validate_spec(fields, Settings(), served)
        assert info.value.field == feature.refused[provider]
        assert provider in info.value.reason
        return
    spec = validate_spec(fields, Settings(), served)
    server = servers[provider]
    if feature.scenario:
        server.script("k1", [feature.scenario])
    if name == "refusal" and provider == "gemini":  # Gemini has no refusal message: a safety block
        with pytest.raises(ContentBlocked):
            run(server, spec)
        return
    response, body = run(server, spec)
    feature.check(provider, response, body)
    # every provider's usage comes back whole: all input tokens (cache reads and writes too)
    assert response.usage.input_tokens == server.received("k1")[-1].input_tokens


def test_a_job_is_checked_against_every_provider_of_its_models() -> None:
    fields = {"model": "m1", "fallback_models": ["m2"], "prompt": "x", "seed": 1}
    assert validate_spec(fields, Settings(), {"m1": {"openai"}, "m2": {"gemini", "fake"}}).seed == 1
    with pytest.raises(JobValidationError) as info:
        validate_spec(fields, Settings(), {"m1": {"openai"}, "m2": {"anthropic"}})
    assert info.value.field == "seed" and "'m2' is served by anthropic" in info.value.reason


@pytest.mark.parametrize("fields, where", [
    ({"reasoning": {"budget_tokens": 512}}, "reasoning.budget_tokens"),
    ({"reasoning": {"budget_tokens": 2048}, "max_output_tokens": 1024}, "reasoning.budget_tokens"),
    ({"reasoning": {"effort": "minimal"}}, "reasoning.effort"),
    ({"reasoning": {"budget_tokens": 2048}, "max_output_tokens": 4096, "temperature": 0.2}, "temperature"),
    ({"reasoning": {"budget_tokens": 2048}, "max_output_tokens": 4096, "tools": [WEATHER],
      "tool_choice": "required"}, "tool_choice"),
])
def test_anthropic_thinking_rules_are_refused_at_submit(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(JobValidationError) as info:
        validate_spec({"model": MODEL, "prompt": "x", **fields}, Settings(), {MODEL: {"anthropic"}})
    assert info.value.field == where


def test_gemini_takes_an_effort_or_a_budget_not_both() -> None:
    with pytest.raises(JobValidationError) as info:
        validate_spec({"model": MODEL, "prompt": "x", "reasoning": {"effort": "low", "budget_tokens": 2048}},
                      Settings(), {MODEL: {"gemini"}})
    assert info.value.field == "reasoning"


def test_images_in_tool_results_only_where_the_provider_takes_them() -> None:
    msgs = tool_turn()
    msgs[2] = {**msgs[2], "content": [text("chart:"), {"type": "image", "data": PNG, "media_type": "image/png"}]}
    for provider in ("openai", "gemini"):
        with pytest.raises(JobValidationError) as info:
            validate_spec({"model": MODEL, "messages": msgs}, Settings(), {MODEL: {provider}})
        assert info.value.field == "messages[2].content"
    validate_spec({"model": MODEL, "messages": msgs}, Settings(), {MODEL: {"anthropic"}})


def test_history_a_provider_cannot_take_fails_the_call_naming_the_part(
        servers: dict[str, FakeProviderServer]) -> None:
    """History is not checked at submit; the adapter refuses it rather than dropping it."""
    history = [ChatMessage(role="user", content=[ImagePart(url="gs://bucket/cat.png", media_type="image/png")])]
    for provider in ("openai", "anthropic"):
        with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]"):
            get_adapter(provider).complete(ChatRequest(model=MODEL, messages=history),
                                           KeyCredentials("k1", SECRET, servers[provider].base_url, 10.0))


def test_another_providers_parts_in_history_stay_out_of_the_request(servers: dict[str, FakeProviderServer]) -> None:
    thinking = ProviderPart(provider="anthropic", data={"type": "thinking", "thinking": "t", "signature": "s"})
    history = [ChatMessage(role="user", content="weather in Paris?"),
               ChatMessage(role="assistant", content=[thinking],
                           tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}')]),
               ChatMessage(role="tool", tool_call_id="c1", content="rain")]
    for provider in ("openai", "gemini"):
        server = servers[provider]
        get_adapter(provider).complete(ChatRequest(model=MODEL, messages=history),
                                       KeyCredentials("k1", SECRET, server.base_url, 10.0))
        assert '"thinking"' not in json.dumps(server.received("k1")[-1].body)


def test_gemini_3_signed_function_calls_go_back_signed(servers: dict[str, FakeProviderServer]) -> None:
    """Gemini 3 refuses a tool loop whose calls lost their thought signature; the kept part
    carries it back, through the conversation's neutral reply message."""
    server, creds = servers["gemini"], KeyCredentials("k1", SECRET, servers["gemini"].base_url, 10.0)
    spec = validate_spec({"model": "gemini-3-pro", **TOOLS_ASK}, Settings(), {"gemini-3-pro": {"gemini"}})
    question = spec.chat_messages()
    first = get_adapter("gemini").complete(ChatRequest.from_spec(spec, "gemini-3-pro", question), creds)
    assert len(first.parts) == 1 and first.parts[0].data["thought_signature"]
    reply = first.message()
    result = ChatMessage(role="tool", tool_call_id=first.tool_calls[0].id, content="sunny")
    answer = get_adapter("gemini").complete(
        ChatRequest.from_spec(spec, "gemini-3-pro", [*question, reply, result]), creds)
    assert answer.content == 'echo: {"result": "sunny"}'
    sent = server.received("k1")[-1].body["contents"][1]["parts"]
    assert sent[0]["thoughtSignature"] == first.parts[0].data["thought_signature"]
    # the same history without the kept part is refused, as Gemini 3 refuses it
    bare = ChatMessage(role="assistant", tool_calls=first.tool_calls)
    with pytest.raises(BadRequest, match="thought_signature"):
        get_adapter("gemini").complete(ChatRequest.from_spec(spec, "gemini-3-pro", [*question, bare, result]), creds)
    # other providers leave the signed part out
    get_adapter("openai").complete(ChatRequest.from_spec(spec, MODEL, [*question, reply, result]),
                                   KeyCredentials("k1", SECRET, servers["openai"].base_url, 10.0))
    assert "thought_signature" not in json.dumps(servers["openai"].received("k1")[-1].body)


def test_anthropic_thinking_tool_loop_sends_its_thinking_block_back(servers: dict[str, FakeProviderServer]) -> None:
    """With thinking on, Anthropic wants the last assistant turn to lead with its thinking
    block; the conversation's reply message keeps it (and only Anthropic gets it)."""
    server, creds = servers["anthropic"], KeyCredentials("k1", SECRET, servers["anthropic"].base_url, 10.0)
    fields = {"model": MODEL, **TOOLS_ASK, "max_output_tokens": 4096, "reasoning": {"budget_tokens": 2048}}
    spec = validate_spec(fields, Settings(), {MODEL: {"anthropic"}})
    question = spec.chat_messages()
    first = get_adapter("anthropic").complete(ChatRequest.from_spec(spec, MODEL, question), creds)
    assert first.finish_reason == "tool_calls" and [p.data["type"] for p in first.parts] == ["thinking"]
    reply = first.message()
    result = ChatMessage(role="tool", tool_call_id=first.tool_calls[0].id, content="sunny")
    answer = get_adapter("anthropic").complete(ChatRequest.from_spec(spec, MODEL, [*question, reply, result]), creds)
    assert answer.content == "echo: sunny"
    sent = server.received("k1")[-1].body["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "tool_use"]
    bare = ChatMessage(role="assistant", tool_calls=first.tool_calls)
    with pytest.raises(BadRequest, match="thinking"):
        get_adapter("anthropic").complete(ChatRequest.from_spec(spec, MODEL, [*question, bare, result]), creds)


def test_sync_and_async_submit_refuse_what_the_serving_provider_cannot_do(redis_url: str, namespace: str) -> None:
    keys = parse_keys({"keys": [{"key_id": "a1", "model_name": "claude-x", "provider": "anthropic"},
                                {"key_id": "g1", "model_name": "gemini-x", "provider": "gemini"}]})
    router = Router(Settings(redis_url=redis_url, namespace=namespace), client=redis_lib.Redis.from_url(redis_url),
                    keys=keys)
    assert router.served_providers() == {"claude-x": {"anthropic"}, "gemini-x": {"gemini"}}
    with pytest.raises(JobValidationError) as info:
        router.submit("x", model="gemini-x", fallback_models=["claude-x"], seed=1)
    assert info.value.field == "seed"

    async def scenario() -> None:
        arouter = AsyncRouter(router)
        try:
            with pytest.raises(JobValidationError) as ainfo:
                await arouter.submit("x", model="claude-x", reasoning={"effort": "minimal"})
            assert ainfo.value.field == "reasoning.effort"
            assert (await arouter.submit("x", model="gemini-x", seed=1)).job_id
        finally:
            await arouter.aclose()

    asyncio.run(scenario())


def test_the_in_process_fake_plays_the_same_agent() -> None:
    """The ``fake`` provider (demos, tests without HTTP) answers tools as the fake servers do."""
    fake = get_adapter("fake")
    creds = KeyCredentials("f", "x")
    spec = validate_spec({"model": "fake-model", **TOOLS_ASK, "tools": [WEATHER, TIME]}, Settings(),
                         {"fake-model": {"fake"}})
    first = fake.complete(ChatRequest.from_spec(spec, "fake-model", spec.chat_messages()), creds)
    check_calls("get_weather", "get_time")("fake", first, {})
    results = [ChatMessage(role="tool", tool_call_id=c.id, content=f"r{i}") for i, c in enumerate(first.tool_calls)]
    done = fake.complete(ChatRequest.from_spec(spec, "fake-model", [*spec.chat_messages(), first.message(), *results]),
                         creds)
    assert done.content == "echo: r0 | r1" and done.finish_reason == "stop"
    spec = validate_spec({"model": "fake-model", "prompt": "hi", "response_format": {
        "type": "json_schema", "name": "answer", "json_schema": ANSWER_SCHEMA}}, Settings(), {"fake-model": {"fake"}})
    answer = fake.complete(ChatRequest.from_spec(spec, "fake-model", spec.chat_messages()), creds)
    assert json.loads(answer.content) == {"answer": "echo: hi", "confidence": 1.5}


def test_gemini_2_models_get_an_effort_as_a_thinking_budget(servers: dict[str, FakeProviderServer]) -> None:
    """Gemini 2.x takes no thinking level; the effort becomes the matching budget."""
    spec = validate_spec({"model": "gemini-2.5-flash", "prompt": "hello", "reasoning": {"effort": "low"}},
                         Settings(), {"gemini-2.5-flash": {"gemini"}})
    server = servers["gemini"]
    get_adapter("gemini").complete(ChatRequest.from_spec(spec, "gemini-2.5-flash", spec.chat_messages()),
                                   KeyCredentials("k1", SECRET, server.base_url, 10.0))
    assert server.received("k1")[-1].body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}
