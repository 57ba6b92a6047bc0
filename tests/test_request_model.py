"""The provider-neutral request model: shapes it accepts, what it refuses, JSON round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router_jobs.models import ChatMessage, JobResult, JobSpec, JobStatus, Usage
from router_jobs.request import (
    CacheControl,
    ImagePart,
    NamedToolChoice,
    ProviderPart,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    content_images,
    content_text,
)

WEATHER = Tool(name="get_weather", description="Weather in a city",
               parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def full_spec() -> JobSpec:
    return JobSpec(
        model="m",
        messages=[
            ChatMessage(role="system", content=[TextPart(text="be brief", cache_control=CacheControl())]),
            ChatMessage(role="user", content=[
                TextPart(text="what is in this picture, and the weather?"),
                ImagePart(data="iVBORw0KGgo=", media_type="image/png"),
                ImagePart(url="https://example.com/cat.jpg", detail="low"),
                ProviderPart(provider="anthropic", data={"type": "document", "source": {"type": "text",
                                                         "media_type": "text/plain", "data": "x"}}),
            ]),
            ChatMessage(role="assistant", content="", tool_calls=[
                ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]),
            ChatMessage(role="tool", tool_call_id="call_1", content="sunny, 21 C"),
        ],
        tools=[WEATHER],
        tool_choice=NamedToolChoice(name="get_weather"),
        parallel_tool_calls=False,
        response_format=ResponseFormat(type="json_schema", name="answer", strict=True,
                                       json_schema={"type": "object", "properties": {"a": {"type": "string"}}}),
        reasoning=Reasoning(effort="low"),
        seed=7,
    )


def test_a_full_spec_survives_the_json_round_trip_of_the_job_record() -> None:
    spec = full_spec()
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    user = again.messages[1]  # type: ignore[index]
    assert isinstance(user.content, list) and isinstance(user.content[1], ImagePart)
    assert isinstance(user.content[3], ProviderPart)
    assert user.text == "what is in this picture, and the weather?"
    assert len(content_images(user.content)) == 2
    assert again.messages[2].tool_calls[0].args() == {"city": "Paris"}  # type: ignore[index]


def test_plain_text_messages_keep_working_as_before() -> None:
    m = ChatMessage(role="user", content="hi")
    assert m.text == "hi" and not m.has_parts and m.tool_calls == []
    assert content_text("x") == "x" and content_images("x") == []
    spec = JobSpec(model="m", prompt="hello", json_output=True)
    assert spec.output_format() == ResponseFormat(type="json_object")
    assert JobSpec(model="m", prompt="hello").output_format() is None


@pytest.mark.parametrize("kwargs, fragment", [
    ({"url": "https://x/y.png", "data": "AAAA", "media_type": "image/png"}, "exactly one of url or data"),
    ({}, "exactly one of url or data"),
    ({"data": "AAAA"}, "media_type"),
    ({"data": "AAAA", "media_type": "image/tiff"}, "media_type"),
    ({"data": "data:image/png;base64,AAAA", "media_type": "image/png"}, "bare base64"),
    ({"url": "file:///etc/passwd"}, "url must be"),
])
def test_images_need_one_well_formed_source(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        ImagePart(**kwargs)  # type: ignore[arg-type]


def test_messages_whose_shape_does_not_fit_the_role_are_refused() -> None:
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="tool", content="x")
    with pytest.raises(ValidationError, match="tool_calls"):
        ChatMessage(role="user", content="x", tool_calls=[ToolCall(id="a", name="f")])
    with pytest.raises(ValidationError, match="only a tool message"):
        ChatMessage(role="user", content="x", tool_call_id="a")
    with pytest.raises(ValidationError, match="text parts only"):
        ChatMessage(role="system", content=[ImagePart(url="https://x/y.png")])


def test_tool_definitions_and_choices_are_checked() -> None:
    with pytest.raises(ValidationError, match="must start with a letter"):
        Tool(name="bad name!")
    with pytest.raises(ValidationError, match="type object"):
        Tool(name="f", parameters={"type": "string"})
    with pytest.raises(ValidationError, match="unique"):
        JobSpec(model="m", prompt="x", tools=[WEATHER, WEATHER])
    with pytest.raises(ValidationError, match="tool_choice: needs tools"):
        JobSpec(model="m", prompt="x", tool_choice="required")
    with pytest.raises(ValidationError, match="names no tool"):
        JobSpec(model="m", prompt="x", tools=[WEATHER], tool_choice=NamedToolChoice(name="other"))
    with pytest.raises(ValidationError, match="parallel_tool_calls"):
        JobSpec(model="m", prompt="x", parallel_tool_calls=False)
    assert JobSpec(model="m", prompt="x", tools=[WEATHER], tool_choice="required").tool_choice == "required"


def test_response_formats_and_reasoning_are_checked() -> None:
    with pytest.raises(ValidationError, match="json_schema: required"):
        ResponseFormat(type="json_schema")
    with pytest.raises(ValidationError, match="only with type json_schema"):
        ResponseFormat(type="json_object", json_schema={"type": "object"})
    with pytest.raises(ValidationError, match="contradicts"):
        JobSpec(model="m", prompt="x", json_output=True, response_format=ResponseFormat(type="text"))
    with pytest.raises(ValidationError, match="effort or budget_tokens"):
        Reasoning()
    with pytest.raises(ValidationError):
        Reasoning(effort="extreme")  # type: ignore[arg-type]


def test_tool_call_arguments_that_are_not_an_object_raise_on_parse() -> None:
    with pytest.raises(ValueError):
        ToolCall(id="a", name="f", arguments="[1, 2]").args()
    with pytest.raises(ValueError):
        ToolCall(id="a", name="f", arguments="{not json").args()


def test_results_carry_tool_calls_finish_reason_refusal_and_cache_usage() -> None:
    result = JobResult(job_id="j", status=JobStatus.succeeded, content="",
                       tool_calls=[ToolCall(id="c", name="f", arguments="{}")], finish_reason="tool_calls",
                       usage=Usage(input_tokens=10, output_tokens=5, cached_tokens=4, reasoning_tokens=2,
                                   cache_write_tokens=3))
    again = JobResult.model_validate_json(result.model_dump_json())
    assert again == result and again.tool_calls[0].name == "f" and again.refusal is None
    with pytest.raises(ValidationError):
        JobResult(job_id="j", status=JobStatus.succeeded, finish_reason="exploded")  # type: ignore[arg-type]
