"""The fake provider server: one protocol per server, stdlib HTTP, in a background thread."""

from __future__ import annotations

import bisect
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakeproviders import sse, views, wire
from fakeproviders.views import IMAGE_TOKENS, Invalid, RequestView
from fakeproviders.wire import Reply, Scenario
from router_jobs.providers.fake import fake_turn
from router_jobs.tokens import estimate_text_tokens

PROVIDERS = ("openai", "anthropic", "gemini")


@dataclass(frozen=True)
class KeyLimit:
    """A limit of one key: ``requests`` and/or ``tokens`` per ``window`` s, enforced as

    * ``rolling``: at most that many in any ``window`` seconds;
    * ``bucket``: a token bucket holding ``requests`` (``tokens``), full at start, refilled
      continuously at requests / window per second (as Anthropic describes its limits);
    * ``quantized``: rolling, and also at most ceil(requests / window) + ``burst`` in each
      whole second of the server's clock (as OpenAI says limits may be enforced over
      shorter periods, e.g. 60,000 RPM as 1,000 requests per second).
    """

    requests: int | None = None
    tokens: int | None = None
    window: float = 60.0
    mode: str = "rolling"
    burst: int = 0


@dataclass(frozen=True)
class Record:
    """One request the server received. ``key`` is the key's name ("?" when unknown)."""

    time: float
    key: str
    model: str
    input_tokens: int
    output_tokens: int
    status: int
    scenario: str
    prompt: str
    text: str = ""  # every message's text as received (system prompt and history included)
    body: dict[str, Any] = field(default_factory=dict)  # the request body as received
    arrived: float = 0.0  # when the request arrived (the clock its limit was checked on)


class FakeProviderServer:
    """A local server speaking one provider's real wire protocol, for tests and demos.

    ``keys`` maps a key name to its secret (or is an iterable of secrets, named by
    themselves). ``limits`` maps a key name (or ``"*"``) to a :class:`KeyLimit` or a dict
    like ``{"rpm": 3, "tpm": 1000}`` / ``{"requests": 3, "window": 1}``. ``latency`` delays
    every answer; ``chunk_delay`` paces the events of streamed answers (see :mod:`.sse`).
    ``script(key, [...])`` queues scenarios (see :mod:`.wire`) for a key's next
    requests; a request header ``x-fake-scenario`` forces one too.

    ``start()`` returns the base URL to give the SDK: ``http://127.0.0.1:PORT/v1`` for
    OpenAI, ``http://127.0.0.1:PORT`` for Anthropic and Gemini.
    """

    def __init__(
        self,
        provider: str = "openai",
        keys: Mapping[str, str] | Iterable[str] = (),
        limits: Mapping[str, KeyLimit | Mapping[str, float]] | None = None,
        *,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}")
        self.provider = provider
        self._by_secret: dict[str, str] = (
            {v: k for k, v in keys.items()} if isinstance(keys, Mapping) else {s: s for s in keys}
        )
        self._limits = {name: _as_limit(v) for name, v in (limits or {}).items()}
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._admitted: dict[str, deque[tuple[float, int]]] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (requests, tokens, at)
        self._seconds: dict[str, dict[int, int]] = {}  # key -> whole second -> requests in it (recent)
        self._scripts: dict[str, deque[str]] = {}
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The server's root URL (``http://host:port``)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self._host}:{self._httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url``."""
        return self.url + ("/v1" if self.provider == "openai" else "")

    def start(self) -> str:
        """Start serving in a daemon thread; returns :attr:`base_url`."""
        # load the token encoder now: loaded by the first request instead, it held the first
        # requests' admission ~0.4 s (more on a busy machine), so the server's window ran that
        # far behind their arrival, as no real provider's limiter does (and a pool sending at
        # the window's real end drew a 429 one window later)
        estimate_text_tokens("warm")
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=f"fake-{self.provider}", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving; slow answers in flight are cut short."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProviderServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ test controls

    def add_key(self, name: str, secret: str) -> None:
        """Accept another key (e.g. a rotated secret)."""
        with self._lock:
            self._by_secret[secret] = name

    def remove_key(self, secret: str) -> None:
        """Stop accepting a secret (it now answers ``invalid_key``)."""
        with self._lock:
            self._by_secret.pop(secret, None)

    def script(self, key: str, scenarios: Iterable[str]) -> None:
        """Queue scenarios for the next requests of key name ``key`` (``"*"``: any key)."""
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(scenarios)

    def received(self, key: str | None = None) -> list[Record]:
        """Every request received so far (of one key name if given), oldest first."""
        with self._lock:
            return [r for r in self._records if key is None or r.key == key]

    def max_in_window(self, key: str, seconds: float, unit: str = "requests", status: int | None = 200) -> int:
        """The most requests (or ``unit="tokens"``) of ``key`` in any window of ``seconds``.

        Counts only answers with ``status`` (200 by default: what was admitted); ``None``
        counts every request received.
        """
        recs = sorted((r for r in self.received(key) if status is None or r.status == status),
                      key=lambda r: r.arrived)
        best = 0
        for i, first in enumerate(recs):
            total = 0
            for r in recs[i:]:
                if r.arrived - first.arrived >= seconds:
                    break
                total += 1 if unit == "requests" else r.input_tokens + r.output_tokens
            best = max(best, total)
        return best

    # ------------------------------------------------------------ request handling

    def _next_scenario(self, key: str, forced: str | None) -> Scenario:
        if forced:
            return Scenario.parse(forced)
        with self._lock:
            for name in (key, "*"):
                queue = self._scripts.get(name)
                if queue:
                    return Scenario.parse(queue.popleft())
        return Scenario("ok")

    def _admit(self, key: str, tokens: int, now: float | None = None) -> tuple[str | None, float]:
        """Check and charge the key's limit in its mode at ``now`` (the request's arrival;
        default: this moment); (limit kind hit or None, wait s)."""
        limit = self._limits.get(key) or self._limits.get("*") or KeyLimit()
        now = time.monotonic() if now is None else now
        if limit.mode == "bucket":
            return self._admit_bucket(key, limit, tokens, now)
        with self._lock:
            if limit.mode == "quantized" and limit.requests is not None:
                second = int(now)
                counts = self._seconds.setdefault(key, {})
                n = counts.get(second, 0)
                if n >= math.ceil(limit.requests / limit.window) + limit.burst:
                    return "rate_limit_requests", max(0.001, second + 1 - now)
            log = self._admitted.setdefault(key, deque())
            while log and log[0][0] <= now - limit.window:
                log.popleft()
            # requests admitted after this one arrived (their handlers ran first) are in the
            # log too: they count in its window as well
            wait = (log[0][0] + limit.window - now) if log else 0.0
            if limit.requests is not None and len(log) >= limit.requests:
                return "rate_limit_requests", max(wait, 0.001)
            if limit.tokens is not None and sum(t for _, t in log) + tokens > limit.tokens:
                return "rate_limit_tokens", max(wait, 0.001)
            if log and log[-1][0] > now:
                log.insert(bisect.bisect_right([t for t, _ in log], now), (now, tokens))
            else:
                log.append((now, tokens))
            if limit.mode == "quantized" and limit.requests is not None:
                counts[second] = n + 1
                for old in [x for x in counts if x < second - 5]:
                    del counts[old]
        return None, 0.0

    def _bucket_levels(self, key: str, limit: KeyLimit, now: float) -> tuple[float, float, float]:
        """(requests, tokens) in ``key``'s bucket at ``now``, refilled since it was last charged,
        and the moment they hold for (never before that charge); the caller holds the lock."""
        cap_r, cap_t = float(limit.requests or 0), float(limit.tokens or 0)
        level_r, level_t, at = self._buckets.get(key, (cap_r, cap_t, now))
        now = max(now, at)  # a request whose handler ran late is charged when the bucket last was
        dt = now - at
        return (min(cap_r, level_r + dt * cap_r / limit.window), min(cap_t, level_t + dt * cap_t / limit.window),
                now)

    def _admit_bucket(self, key: str, limit: KeyLimit, tokens: int, now: float) -> tuple[str | None, float]:
        with self._lock:
            cap_r = float(limit.requests or 0)
            cap_t = float(limit.tokens or 0)
            level_r, level_t, now = self._bucket_levels(key, limit, now)
            if limit.requests is not None and level_r < 1:
                self._buckets[key] = (level_r, level_t, now)
                return "rate_limit_requests", max(0.001, (1 - level_r) * limit.window / cap_r)
            if limit.tokens is not None and level_t < tokens:
                self._buckets[key] = (level_r, level_t, now)
                return "rate_limit_tokens", max(0.001, (tokens - level_t) * limit.window / cap_t)
            self._buckets[key] = (level_r - 1, level_t - tokens, now)
            self._admitted.setdefault(key, deque()).append((now, tokens))
        return None, 0.0

    def per_second(self, key: str, status: int | None = 200) -> dict[int, int]:
        """Requests of ``key`` (with ``status``) per whole second of the server's clock."""
        out: dict[int, int] = {}
        for r in self.received(key):
            if status is None or r.status == status:
                out[int(r.arrived)] = out.get(int(r.arrived), 0) + 1
        return out

    def _rate_headers(self, key: str) -> dict[str, str]:
        limit = self._limits.get(key) or self._limits.get("*") or KeyLimit(10_000, 10_000_000, 60.0)
        with self._lock:
            log = list(self._admitted.get(key, ()))
        now = time.monotonic()
        used_r, used_t = len(log), sum(t for _, t in log)
        reset = max(0.001, (log[0][0] + limit.window - now) if log else limit.window)
        rem_r = max(0, (limit.requests or 10_000) - used_r)
        rem_t = max(0, (limit.tokens or 10_000_000) - used_t)
        reset_t = reset
        if limit.mode == "bucket":
            # a bucket says what it holds now, and when it is full again (Anthropic's reset)
            with self._lock:
                level_r, level_t, _ = self._bucket_levels(key, limit, now)
            cap_r, cap_t = float(limit.requests or 0), float(limit.tokens or 0)
            if limit.requests:
                rem_r = max(0, int(level_r))
                reset = max(0.001, (cap_r - level_r) * limit.window / cap_r)
            if limit.tokens:
                rem_t = max(0, int(level_t))
                reset_t = max(0.001, (cap_t - level_t) * limit.window / cap_t)
        if self.provider == "openai":
            return {
                "x-ratelimit-limit-requests": str(limit.requests or 10_000),
                "x-ratelimit-remaining-requests": str(rem_r),
                "x-ratelimit-reset-requests": wire.go_duration(reset),
                "x-ratelimit-limit-tokens": str(limit.tokens or 10_000_000),
                "x-ratelimit-remaining-tokens": str(rem_t),
                "x-ratelimit-reset-tokens": wire.go_duration(reset_t),
            }
        if self.provider == "anthropic":
            at = wire.rfc3339(time.time() + reset)
            return {
                "anthropic-ratelimit-requests-limit": str(limit.requests or 10_000),
                "anthropic-ratelimit-requests-remaining": str(rem_r),
                "anthropic-ratelimit-requests-reset": at,
                "anthropic-ratelimit-tokens-limit": str(limit.tokens or 10_000_000),
                "anthropic-ratelimit-tokens-remaining": str(rem_t),
                "anthropic-ratelimit-tokens-reset": wire.rfc3339(time.time() + reset_t),
            }
        return {}

    def handle(self, path: str, headers: Mapping[str, str], body: dict[str, Any], *,
               arrived: float | None = None) -> Reply:
        """Answer one request (called by the HTTP handler; usable directly in unit tests).

        ``arrived`` (``time.monotonic()``): when the request line was read; the limits count
        the request then, not after its body was parsed (on a busy machine that took up to a
        few hundred ms, which no real provider's limiter adds)."""
        parsed = urlsplit(path)
        if self.provider == "gemini":
            body = views.camel_keys(body)  # recorded so too: the API takes either spelling
        req = _parse_request(self.provider, parsed.path, parse_qs(parsed.query), headers, body)
        if isinstance(req, Reply):
            return req
        secret, model, prompt_text, all_text = req.secret, req.model, req.prompt, req.all_text
        with self._lock:
            key = self._by_secret.get(secret, "?") if secret else "?"
        in_tokens = estimate_text_tokens(all_text) + 3 + IMAGE_TOKENS * req.images
        arrived = min(arrived, time.monotonic()) if arrived is not None else time.monotonic()
        scenario = self._next_scenario(key, headers.get("x-fake-scenario"))
        if key == "?":
            scenario = Scenario("invalid_key")
        wait = scenario.num("wait", 1.5)
        if scenario.name == "ok":
            hit, limit_wait = self._admit(key, in_tokens, arrived)
            if hit is not None:
                scenario, wait = Scenario(hit), limit_wait
        delay = self.latency + (scenario.num("seconds", 2.0) if scenario.name == "slow" else 0.0)
        if delay > 0:
            self._stopping.wait(delay)
        streamed = sse.is_streamed(self.provider, parsed.path, body)
        if streamed and scenario.name in ("ok", "slow", "tool_call", "stream_error", "stream_cut", "refusal",
                                          "blocked"):
            reply = self._stream_reply(scenario, key, req, in_tokens, body)
        else:
            reply = self._reply(scenario, key, secret, req, in_tokens, wait)
        out = 0
        if reply.status == 200:
            out = reply.output_tokens if reply.events is not None else _output_tokens(self.provider, reply.body)
        rec = Record(time.monotonic(), key, model, in_tokens, out, reply.status, scenario.name, prompt_text, all_text,
                     body, arrived)
        with self._lock:
            self._records.append(rec)
        return reply

    def _stream_reply(self, sc: Scenario, key: str, req: RequestView, in_tokens: int, body: dict[str, Any]) -> Reply:
        turn = fake_turn(user_text=req.prompt, tool_results=req.tool_results, tools=req.tools, choice=req.choice,
                         parallel=req.parallel, schema=req.schema)
        calls = list(turn.calls)
        if sc.name == "tool_call" and not calls:
            calls = [(sse.tool_name(self.provider, body), {"query": req.prompt})]
        out_text = turn.text + "".join(json.dumps(a) for _, a in calls)
        usage = {"input": in_tokens, "output": estimate_text_tokens(out_text) + self.reasoning_tokens,
                 "cached": min(self.cached_tokens, in_tokens), "reasoning": self.reasoning_tokens}
        events = sse.STREAMS[self.provider](sc, req.model, turn.text, usage, body, calls)
        return Reply(200, {}, self._rate_headers(key), events=events,
                     chunk_delay=sc.num("chunk_delay", self.chunk_delay), output_tokens=usage["output"])

    def _reply(self, sc: Scenario, key: str, secret: str, req: RequestView, in_tokens: int, wait: float) -> Reply:
        model = req.model
        if sc.name not in ("ok", "slow", "blocked", "blocked_answer", "refusal"):
            return wire.ERRORS[self.provider](sc, secret, model, wait)
        turn = fake_turn(user_text=req.prompt, tool_results=req.tool_results, tools=req.tools, choice=req.choice,
                         parallel=req.parallel, schema=req.schema)
        text, calls = turn.text, turn.calls
        out_text = text + "".join(json.dumps(a) for _, a in calls)
        cached = min(self.cached_tokens, in_tokens)
        usage = {"input": in_tokens, "output": estimate_text_tokens(out_text) + self.reasoning_tokens,
                 "cached": cached, "reasoning": self.reasoning_tokens,
                 # a marked prompt prefix is written to the cache (the uncached half, say)
                 "cache_write": (in_tokens - cached) // 2 if req.cache_breakpoints else 0}
        headers = self._rate_headers(key)
        blocked = sc.name in ("blocked", "blocked_answer") or (sc.name == "refusal" and self.provider == "gemini")
        if blocked:
            text, calls = "", []
        if self.provider == "openai":
            refusal = wire.REFUSAL if sc.name == "refusal" else None
            body = wire.openai_success(model, "" if refusal else text, usage,
                                       "content_filter" if blocked else ("tool_calls" if calls else "stop"),
                                       calls=calls, refusal=refusal)
        elif self.provider == "anthropic":
            if sc.name == "refusal":
                text, calls = wire.REFUSAL, []
            stop = "refusal" if blocked or sc.name == "refusal" else ("tool_use" if calls else "end_turn")
            body = wire.anthropic_success(model, text, usage, stop, calls=calls, thinking=req.thinking)
        elif sc.name == "blocked":
            body = wire.gemini_success(model, "", usage, block_reason="SAFETY")
        else:
            body = wire.gemini_success(model, text, usage, "SAFETY" if blocked else "STOP", calls=calls)
        return Reply(200, body, headers)


def _as_limit(v: KeyLimit | Mapping[str, float]) -> KeyLimit:
    if isinstance(v, KeyLimit):
        return v
    req = v.get("requests", v.get("rpm"))
    tok = v.get("tokens", v.get("tpm"))
    return KeyLimit(None if req is None else int(req), None if tok is None else int(tok), float(v.get("window", 60.0)),
                    str(v.get("mode", "rolling")), int(v.get("burst", 0)))


def _output_tokens(provider: str, body: dict[str, Any]) -> int:
    u = body.get("usage") or {}
    if provider == "openai":
        return int(u.get("completion_tokens", 0))
    if provider == "anthropic":
        return int(u.get("output_tokens", 0))
    meta = body.get("usageMetadata") or {}
    return int(meta.get("candidatesTokenCount", 0)) + int(meta.get("thoughtsTokenCount", 0))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def _invalid(provider: str, message: str) -> Reply:
    """A 400 for a malformed body, in the provider's own error envelope."""
    if provider == "openai":
        return Reply(400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    if provider == "anthropic":
        return Reply(400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    return Reply(400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})


def _parse_request(
    provider: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: dict[str, Any]
) -> Reply | RequestView:
    """What a request asks (see :mod:`fakeproviders.views`), or an error reply."""
    try:
        return _view(provider, path, query, headers, body)
    except Invalid as exc:
        return _invalid(provider, str(exc))


def _view(
    provider: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: dict[str, Any]
) -> Reply | RequestView:
    if provider == "openai":
        if path.rstrip("/") != "/v1/chat/completions":
            return Reply(404, {"error": {"message": f"Unknown path {path}", "type": "invalid_request_error", "code": None}})
        return views.openai_view(body, headers)
    if provider == "anthropic":
        if path.rstrip("/") != "/v1/messages":
            return Reply(404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
        if not headers.get("anthropic-version"):
            return Reply(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "anthropic-version: header is required"}})
        # the API takes x-api-key; recent SDKs send the key as a bearer token instead
        return views.anthropic_view(body, headers)
    prefix = "/v1beta/models/"
    method = next((m for m in (":generateContent", ":streamGenerateContent") if path.endswith(m)), None)
    if not path.startswith(prefix) or method is None:
        return Reply(404, {"error": {"code": 404, "message": f"Unknown path {path}", "status": "NOT_FOUND"}})
    model = path[len(prefix):-len(method)]
    secret = headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
    return views.gemini_view(model, secret, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # a real provider accepts a burst of connections; the stdlib's backlog of 5 refused some
    # of a window's opening burst (clients saw connection errors, not 429s)
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and hung up is expected here; stay quiet about it."""


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProviderServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: tests and the demo read :meth:`FakeProviderServer.received` instead."""

    def parse_request(self) -> bool:
        self.arrived = time.monotonic()  # the request line has just been read
        return super().parse_request()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send(Reply(400, {"error": {"message": "body is not a JSON object", "code": 400}}))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._send(self.fake.handle(self.path, headers, body, arrived=getattr(self, "arrived", None)))

    def _send(self, reply: Reply) -> None:
        if reply.events is not None:
            self._send_events(reply)
            return
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, reply: Reply) -> None:
        """A server-sent event stream, chunked (the connection stays open for the next call).

        Each event leaves at once, as from a real provider: no Nagle delay between the small
        writes (which the client's delayed ACK would stretch to tens of milliseconds)."""
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_response(reply.status)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        for i, event in enumerate(reply.events or []):
            if i and reply.chunk_delay > 0 and self.fake._stopping.wait(reply.chunk_delay):
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
