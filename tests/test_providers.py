"""Each adapter through its real SDK against the fake server of its protocol."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator

import pytest

from fakeproviders import FakeProviderServer, KeyLimit
from router_jobs.errors import (
    BadRequest,
    ConfigError,
    ContentBlocked,
    KeyInvalid,
    ProviderError,
    ProviderOverloaded,
    ProviderRateLimited,
    QuotaExhausted,
    RequestTooLarge,
    TransientProviderError,
)
from router_jobs.models import ChatMessage
from router_jobs.providers import ChatRequest, KeyCredentials, get_adapter

SECRET = "sk-canary-7f3a9c1e5b2d4680"
PROVIDERS = ["openai", "anthropic", "gemini"]
MSGS = [
    ChatMessage(role="system", content="be brief"),
    ChatMessage(role="user", content="first question"),
    ChatMessage(role="assistant", content="first answer"),
    ChatMessage(role="user", content="what is 2+2?"),
]


@pytest.fixture(params=PROVIDERS)
def server(request: pytest.FixtureRequest) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(request.param, {"k1": SECRET}, cached_tokens=2, reasoning_tokens=5) as s:
        yield s


def call(s: FakeProviderServer, timeout: float = 10.0, secret: str = SECRET, **kw: object):
    creds = KeyCredentials("k1", secret, s.base_url, timeout)
    return get_adapter(s.provider).complete(ChatRequest(model="model-x", messages=MSGS, **kw), creds)  # type: ignore[arg-type]


def fail(s: FakeProviderServer, scenario: str, timeout: float = 10.0) -> ProviderError:
    s.script("k1", [scenario])
    with pytest.raises(ProviderError) as info:
        call(s, timeout)
    return info.value


def test_success_content_usage_and_rate_headers(server: FakeProviderServer) -> None:
    resp = call(server, temperature=0.2, top_p=0.9, stop=["END"], max_output_tokens=50)
    assert resp.content == "echo: what is 2+2?"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens >= 5
    assert resp.usage.cached_tokens == 2
    if server.provider == "anthropic":
        assert resp.usage.reasoning_tokens == 0  # Anthropic does not report thinking apart
    else:
        assert resp.usage.reasoning_tokens == 5
    rec = server.received("k1")
    assert len(rec) == 1 and rec[0].status == 200 and rec[0].model == "model-x"
    assert rec[0].input_tokens == resp.usage.input_tokens
    if server.provider == "gemini":
        assert resp.rate_limit is None
    else:
        assert resp.rate_limit is not None and resp.rate_limit.remaining_requests == 10_000 - 1
        assert resp.rate_limit.reset_requests_at is not None and resp.rate_limit.reset_requests_at > time.time()


def test_json_output_accepted(server: FakeProviderServer) -> None:
    assert call(server, json_output=True).content.startswith("echo:")


ERRORS = [
    ("rate_limit_requests", ProviderRateLimited),
    ("rate_limit_tokens", ProviderRateLimited),
    ("quota", QuotaExhausted),
    ("invalid_key", KeyInvalid),
    ("forbidden", KeyInvalid),
    ("context_length", RequestTooLarge),
    ("too_large", RequestTooLarge),
    ("server_error", TransientProviderError),
    ("overloaded", ProviderOverloaded),
    ("blocked", ContentBlocked),
    ("blocked_answer", ContentBlocked),
    ("bad_request", BadRequest),
]


@pytest.mark.parametrize("scenario,cls", ERRORS, ids=[e[0] for e in ERRORS])
def test_each_error_is_classified_and_sent_once(server: FakeProviderServer, scenario: str, cls: type) -> None:
    err = fail(server, scenario)
    assert type(err) is cls, (type(err), str(err))
    assert err.provider == server.provider
    assert len(server.received()) == 1  # SDK retries are off: exactly one request per call
    if isinstance(err, ProviderRateLimited):
        assert err.kind == ("tokens" if scenario.endswith("tokens") else "requests")
        assert err.retry_after is not None and 1.0 <= err.retry_after <= 2.0
    if scenario not in ("blocked", "blocked_answer"):
        assert err.status is not None and err.status >= 400


def test_unavailable_503(server: FakeProviderServer) -> None:
    err = fail(server, "unavailable")
    expected = TransientProviderError if server.provider == "anthropic" else ProviderOverloaded
    assert type(err) is expected and err.retryable
    assert len(server.received()) == 1


def test_timeout_is_transient_and_not_retried(server: FakeProviderServer) -> None:
    err = fail(server, "slow?seconds=3", timeout=0.5)
    assert type(err) is TransientProviderError and "timed out" in str(err)
    assert len(server.received()) <= 1  # the server records after its slow answer


def test_slow_answer_within_timeout_succeeds(server: FakeProviderServer) -> None:
    server.script("k1", ["slow?seconds=0.3"])
    assert call(server, timeout=10).content == "echo: what is 2+2?"


def test_unknown_key_is_key_invalid(server: FakeProviderServer) -> None:
    with pytest.raises(KeyInvalid):
        call(server, secret="sk-not-a-key-000000000")
    assert server.received()[0].key == "?"


@pytest.mark.parametrize("scenario", ["invalid_key", "quota", "rate_limit_requests", "server_error", "slow?seconds=3"])
def test_canary_key_never_in_errors(server: FakeProviderServer, scenario: str) -> None:
    err = fail(server, scenario, timeout=0.5 if scenario.startswith("slow") else 10)
    texts = [str(err), repr(err), repr(err.args), "".join(traceback.format_exception(err))]
    for t in texts:
        assert SECRET not in t
        assert SECRET[6:] not in t
    assert err.__context__ is None and err.__cause__ is None  # the SDK exception is not attached


# ---------------------------------------------------------------- retry hints by source


@pytest.mark.parametrize(
    "scenario,low,high",
    [
        ("rate_limit_requests?hint=message&wait=0.02", 0.019, 0.021),  # "Please try again in 20ms"
        ("rate_limit_requests?hint=reset&wait=360", 359.9, 360.1),  # x-ratelimit-reset-requests: 6m0s
        ("rate_limit_tokens?hint=none&retry_after_ms=1500", 1.49, 1.51),
        ("rate_limit_requests?hint=none&retry_after=7", 6.99, 7.01),
        ("rate_limit_requests?hint=none&retry_after_date=30", 25, 31),
    ],
)
def test_openai_retry_hint_sources(scenario: str, low: float, high: float) -> None:
    with FakeProviderServer("openai", {"k1": SECRET}) as s:
        err = fail(s, scenario)
        assert isinstance(err, ProviderRateLimited)
        assert err.retry_after is not None and low <= err.retry_after <= high


def test_anthropic_retry_hint_from_reset_header_when_no_retry_after() -> None:
    with FakeProviderServer("anthropic", {"k1": SECRET}) as s:
        err = fail(s, "rate_limit_tokens?hint=reset&wait=30")
        assert isinstance(err, ProviderRateLimited) and err.kind == "tokens"
        assert err.retry_after is not None and 25 <= err.retry_after <= 31


def test_gemini_retry_info_and_daily_quota_reset() -> None:
    with FakeProviderServer("gemini", {"k1": SECRET}) as s:
        err = fail(s, "rate_limit_requests?wait=12")
        assert isinstance(err, ProviderRateLimited) and err.retry_after == 12.0
        q = fail(s, "quota")
        assert isinstance(q, QuotaExhausted) and q.reset_at is not None
        assert 0 < q.reset_at - time.time() <= 25 * 3600


# ---------------------------------------------------------------- limits enforced by the fake server


def test_fake_server_enforces_rolling_window_and_records(server: FakeProviderServer) -> None:
    with FakeProviderServer(server.provider, {"k1": SECRET}, {"k1": KeyLimit(requests=3, window=1.0)}) as s:
        outcomes = []
        for _ in range(6):
            try:
                call(s)
                outcomes.append("ok")
            except ProviderRateLimited as exc:
                assert exc.retry_after is not None and exc.retry_after <= 2.0
                outcomes.append("429")
        assert outcomes.count("ok") >= 3 and "429" in outcomes
        assert s.max_in_window("k1", 1.0) <= 3
        assert len(s.received("k1")) == 6
        assert s.max_in_window("k1", 1.0, status=None) >= 4


def test_fake_server_counts_a_request_when_it_arrived() -> None:
    """A request whose handler ran late is counted at its arrival (kept in order), so the
    server's window does not run behind the requests: the basis of every 0 x 429 claim."""
    s = FakeProviderServer("openai", {"k1": SECRET}, {"k1": KeyLimit(requests=2, window=1.0)})
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {SECRET}"}
    t0 = time.monotonic() - 2  # every arrival below lies in the past
    assert s.handle("/v1/chat/completions", headers, body, arrived=t0).status == 200
    # handled after the first, but it arrived 0.4 s before it
    assert s.handle("/v1/chat/completions", headers, body, arrived=t0 - 0.4).status == 200
    assert [round(r.arrived - t0, 1) for r in s.received("k1")] == [0.0, -0.4]
    # full until the earlier one leaves the window, 0.6 s after the first, not 1 s
    assert s.handle("/v1/chat/completions", headers, body, arrived=t0 + 0.5).status == 429
    assert s.handle("/v1/chat/completions", headers, body, arrived=t0 + 0.61).status == 200
    # quantized: a late-handled request is counted in the second it arrived in
    q = FakeProviderServer("openai", {"k1": SECRET}, {"k1": KeyLimit(requests=60, window=60.0, mode="quantized")})
    second = float(int(time.monotonic()) - 3)
    assert q.handle("/v1/chat/completions", headers, body, arrived=second + 1.2).status == 200
    assert q.handle("/v1/chat/completions", headers, body, arrived=second + 0.5).status == 200
    assert q.handle("/v1/chat/completions", headers, body, arrived=second + 0.9).status == 429
    assert q.handle("/v1/chat/completions", headers, body, arrived=second + 1.5).status == 429


def test_fake_server_token_limit() -> None:
    with FakeProviderServer("openai", {"k1": SECRET}, {"*": {"tpm": 40, "window": 60}}) as s:
        call(s)
        with pytest.raises(ProviderRateLimited) as info:
            for _ in range(5):
                call(s)
        assert info.value.kind == "tokens"
        assert s.max_in_window("k1", 60, unit="tokens") <= 40 + 20  # input within limit, output on top


# ---------------------------------------------------------------- registry and client reuse


def test_registry_and_client_cache() -> None:
    a = get_adapter("openai")
    assert get_adapter("openai") is a
    assert get_adapter("openai-compatible").name == "openai-compatible"
    with pytest.raises(ConfigError):
        get_adapter("nope")
    cache = a._clients  # type: ignore[attr-defined]
    c1 = cache.get(KeyCredentials("kc", "s1", "http://127.0.0.1:9/v1", 5))
    assert cache.get(KeyCredentials("kc", "s1", "http://127.0.0.1:9/v1", 5)) is c1
    c2 = cache.get(KeyCredentials("kc", "s2-rotated", "http://127.0.0.1:9/v1", 5))
    assert c2 is not c1 and c1.max_retries == 0 and c2.max_retries == 0


def test_openai_compatible_uses_max_tokens_and_base_url() -> None:
    with FakeProviderServer("openai", {"k1": SECRET}) as s:
        creds = KeyCredentials("k1", SECRET, s.base_url, 10)
        resp = get_adapter("openai-compatible").complete(ChatRequest(model="llama", messages=MSGS), creds)
        assert resp.content == "echo: what is 2+2?"


def test_connection_refused_is_transient(server: FakeProviderServer) -> None:
    base = server.base_url
    server.stop()
    creds = KeyCredentials("k9", SECRET, base, 2)
    with pytest.raises(TransientProviderError):
        get_adapter(server.provider).complete(ChatRequest(model="m", messages=MSGS), creds)


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import router_jobs.providers as registry

    monkeypatch.setitem(registry.PROVIDERS, "ghost", ("ghost_provider_missing", "Ghost", (), "ghost"))
    with pytest.raises(ConfigError) as info:
        get_adapter("ghost")
    assert "router-jobs[ghost]" in str(info.value)
