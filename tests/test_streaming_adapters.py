"""Each adapter's streaming path through its official SDK against the fake server's real SSE
wire format: text, tool-call fragments, usage, and every mid-stream failure classified."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fakeproviders import FakeProviderServer
from router_jobs import errors
from router_jobs.models import ChatMessage
from router_jobs.providers import get_adapter
from router_jobs.providers.base import ChatRequest, KeyCredentials, StreamChunk

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-opus-4-6", "gemini": "gemini-2.5-flash"}
SECRET = "sk-stream-canary-5e1f0c9a7b3d"
PROMPT = "one two three four"


@pytest.fixture(scope="module", params=list(MODELS))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeProviderServer]]:
    with FakeProviderServer(request.param, keys={"k": SECRET}) as server:
        yield request.param, server


def run(provider: str, server: FakeProviderServer, scenario: str) -> list[StreamChunk]:
    server.script("*", [scenario])
    adapter = get_adapter(provider)
    creds = KeyCredentials("k", SECRET, base_url=server.base_url, timeout=10)
    req = ChatRequest(model=MODELS[provider], messages=[ChatMessage(role="user", content=PROMPT)])
    stream = adapter.open_stream(req, creds)  # type: ignore[attr-defined]
    try:
        return list(stream)
    finally:
        stream.close()


def test_text_streams_in_pieces_with_usage_and_a_finish(served: tuple[str, FakeProviderServer]) -> None:
    provider, server = served
    chunks = run(provider, server, "ok")
    texts = [c.text for c in chunks if c.text]
    assert len(texts) == 5 and "".join(texts) == f"echo: {PROMPT}"
    usage = [c.usage for c in chunks if c.usage is not None][-1]
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert [c.finish_reason for c in chunks if c.finish_reason] in (["stop"], ["end_turn"], ["STOP"])
    assert server.received()[-1].status == 200


def test_tool_call_fragments_join_into_the_arguments(served: tuple[str, FakeProviderServer]) -> None:
    provider, server = served
    frags = [c.tool_call for c in run(provider, server, "tool_call") if c.tool_call is not None]
    assert frags[0].name == "lookup" and frags[0].id
    assert {f.index for f in frags} == {0}
    assert json.loads("".join(f.arguments for f in frags)) == {"query": PROMPT}


@pytest.mark.parametrize(("kind", "error"), [
    ("bad_request", errors.BadRequest),
    ("rate_limit", errors.ProviderRateLimited),
    ("server_error", errors.TransientProviderError),
])
def test_an_error_event_mid_stream_is_classified(served: tuple[str, FakeProviderServer], kind: str,
                                                 error: type[errors.ProviderError]) -> None:
    provider, server = served
    with pytest.raises(errors.ProviderError) as info:
        run(provider, server, f"stream_error?kind={kind}&after=2")
    assert type(info.value) is error
    assert info.value.__context__ is None and SECRET not in str(info.value)


def test_an_overloaded_event_mid_stream_is_retryable(served: tuple[str, FakeProviderServer]) -> None:
    provider, server = served
    with pytest.raises(errors.ProviderError) as info:
        run(provider, server, "stream_error?kind=overloaded")
    assert info.value.retryable and not info.value.key_fault


def test_a_stream_cut_short_is_a_transient_error(served: tuple[str, FakeProviderServer]) -> None:
    provider, server = served
    with pytest.raises(errors.TransientProviderError, match="ended before"):
        run(provider, server, "stream_cut?after=2")


def test_a_refused_call_raises_before_any_chunk(served: tuple[str, FakeProviderServer]) -> None:
    provider, server = served
    with pytest.raises(errors.ProviderRateLimited):
        run(provider, server, "rate_limit_requests?retry_after=2")
