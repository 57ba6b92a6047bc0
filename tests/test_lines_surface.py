"""The one converter from OpenAI chat-completions bodies to job fields: tools, images, formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fakeproviders import FakeProviderServer
from router_jobs.batch.lines import LineError, body_fields, parse_line
from router_jobs.batch.runner import output_record
from router_jobs.client.router import validate_spec
from router_jobs.errors import JobValidationError
from router_jobs.models import JobResult, JobStatus
from router_jobs.providers import ChatRequest, KeyCredentials, get_adapter
from router_jobs.request import ImagePart, NamedToolChoice, ToolCall
from router_jobs.settings import Settings

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "strict": True,
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"], "additionalProperties": False}}}
BODY: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather where this was taken?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                                         "detail": "high"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow, -3 C"},
    ],
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "report", "strict": True, "schema": {
        "type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}}},
    "reasoning_effort": "low",
    "seed": 11,
    "max_completion_tokens": 300,
}


def test_a_full_body_becomes_a_job_with_every_feature() -> None:
    spec = validate_spec(body_fields(BODY), Settings(), {"gpt-x": {"openai"}})
    assert spec.system_prompt == "be brief" and spec.max_output_tokens == 300 and spec.seed == 11
    msgs = spec.messages or []
    assert [m.role for m in msgs] == ["user", "assistant", "tool"]
    images = [p for p in msgs[0].content if isinstance(p, ImagePart)]
    assert images[0].data == PNG and images[0].media_type == "image/png" and images[0].detail == "high"
    assert images[1].url == "https://example.com/b.png"
    assert msgs[1].tool_calls[0].id == "call_1" and msgs[1].tool_calls[0].args() == {"city": "Oslo"}
    assert msgs[2].tool_call_id == "call_1" and msgs[2].text == "snow, -3 C"
    assert spec.tools is not None and spec.tools[0].strict and spec.tools[0].name == "get_weather"
    assert spec.tool_choice == NamedToolChoice(name="get_weather") and spec.parallel_tool_calls is False
    assert spec.response_format is not None and spec.response_format.name == "report" and spec.response_format.strict
    assert spec.reasoning is not None and spec.reasoning.effort == "low"


@pytest.fixture()
def openai_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer("openai", {"k1": "sk-lines-1"}) as s:
        yield s


def test_openai_in_openai_out_sends_the_same_request(openai_server: FakeProviderServer) -> None:
    """A body through the converter and the OpenAI adapter reaches OpenAI as it was sent."""
    spec = validate_spec(body_fields(BODY), Settings(), {"gpt-x": {"openai"}})
    request = ChatRequest.from_spec(spec, "gpt-x", spec.chat_messages())
    get_adapter("openai").complete(request, KeyCredentials("k1", "sk-lines-1", openai_server.base_url, 10.0))
    sent = openai_server.received("k1")[-1].body
    for key in ("tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "seed",
                "max_completion_tokens"):
        assert sent[key] == BODY[key], key
    original = [{**BODY["messages"][0], "role": "system"}, *BODY["messages"][1:]]
    assert sent["messages"] == original


@pytest.mark.parametrize("body, kind", [
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "unsupported"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "unsupported"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, "unsupported"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}, "unsupported"),
    ({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}, "unsupported"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "invalid_request"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "invalid_request"),
])
def test_what_the_broker_cannot_do_is_refused_not_ignored(body: dict[str, Any], kind: str) -> None:
    with pytest.raises(LineError) as info:
        body_fields(body)
    assert info.value.kind == kind


def test_refusals_of_the_job_model_name_the_field() -> None:
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "x"}], "seed": 3}
    with pytest.raises(JobValidationError) as info:
        validate_spec(body_fields(body), Settings(), {"claude-x": {"anthropic"}})
    assert info.value.field == "seed"
    bad = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}
    with pytest.raises(JobValidationError) as info:
        validate_spec(body_fields(bad), Settings(), {"m": {"openai"}})
    assert info.value.field == "messages[0].content[0]"


def test_text_only_parts_stay_plain_text_and_batch_lines_carry_the_tools() -> None:
    fields = body_fields({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]})
    assert fields["messages"] == [{"role": "user", "content": "ab"}]
    line = parse_line(1, json.dumps({"custom_id": "c", "url": "/v1/chat/completions", "body": BODY}))
    assert line.fields["tools"][0]["name"] == "get_weather" and line.fields["seed"] == 11


def test_batch_output_lines_carry_tool_calls_finish_reason_and_refusal() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    result = JobResult(job_id="j", status=JobStatus.succeeded, content="", tool_calls=[call],
                       finish_reason="tool_calls")
    rec = output_record(3, "c3", {}, result=result)
    assert rec["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    assert rec["finish_reason"] == "tool_calls" and "refusal" not in rec
    refused = output_record(4, "c4", {}, result=JobResult(job_id="k", status=JobStatus.succeeded, content="",
                                                          refusal="no", finish_reason="refusal"))
    assert refused["refusal"] == "no" and "tool_calls" not in refused
