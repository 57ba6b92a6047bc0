"""Gemini adapter (``google-genai`` SDK, ``from google import genai``).

The older ``google-generativeai`` package lost all support on 2025-11-30; this adapter uses
its successor. System messages go to ``system_instruction`` and the assistant role is
Gemini's ``model``. The SDK retries nothing unless ``HttpRetryOptions`` is given; we pass
``attempts=1`` explicitly, which also turns off its implicit retry of connection errors.

Gemini counts thinking tokens (``thoughtsTokenCount``) apart from the answer but bills them
as output, so :class:`~router_jobs.models.Usage` adds them to ``output_tokens`` and reports
them as ``reasoning_tokens`` too.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from router_jobs.errors import ContentBlocked, ProviderError
from router_jobs.models import Usage
from router_jobs.providers import errors_map as em
from router_jobs.providers._clients import ClientCache
from router_jobs.providers.base import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    KeyCredentials,
    RateLimitInfo,
    StreamChunk,
    ToolCallFragment,
)

# The SDK runs on httpx or on httpx2, whichever the installation resolved: catch both.
_TIMEOUTS: tuple[type[BaseException], ...] = ()
_TRANSPORT: tuple[type[BaseException], ...] = ()
for _name in ("httpx", "httpx2"):
    try:
        _http = importlib.import_module(_name)
    except ImportError:  # pragma: no cover - depends on the environment
        continue
    _TIMEOUTS += (_http.TimeoutException,)
    _TRANSPORT += (_http.TransportError,)

_SDK_ERRORS: tuple[type[BaseException], ...] = (genai_errors.APIError, *_TIMEOUTS, *_TRANSPORT)

_BLOCKING_FINISH = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}


def _build_client(creds: KeyCredentials) -> genai.Client:
    options = types.HttpOptions(
        base_url=creds.base_url,
        api_version="v1beta",
        timeout=max(1, int(creds.timeout * 1000)),
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key=creds.api_key, http_options=options)


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    thoughts = int(getattr(raw, "thoughts_token_count", 0) or 0)
    return Usage(
        input_tokens=int(getattr(raw, "prompt_token_count", 0) or 0),
        output_tokens=int(getattr(raw, "candidates_token_count", 0) or 0) + thoughts,
        cached_tokens=int(getattr(raw, "cached_content_token_count", 0) or 0),
        reasoning_tokens=thoughts,
    )


def gemini_request(request: ChatRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The ``contents`` and ``config`` for a neutral request."""
    system = "\n\n".join(m.text for m in request.messages if m.role == "system")
    contents = [
        types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.text)])
        for m in request.messages
        if m.role != "system"
    ]
    config = types.GenerateContentConfig(
        system_instruction=system or None,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_sequences=list(request.stop) if request.stop else None,
        response_mime_type="application/json" if request.json_output else None,
    )
    return contents, config


def classify_sdk_error(exc: BaseException, provider: str, creds: KeyCredentials) -> ProviderError:
    """The library's error for what the SDK raised (an error chunk mid-stream included)."""
    if isinstance(exc, genai_errors.APIError):
        headers = em.lower_headers(getattr(exc.response, "headers", None))
        return em.classify_gemini(int(exc.code or 0), headers, exc.details, provider=provider,
                                  secrets=(creds.api_key,), fallback_message=str(exc.message or ""))
    if isinstance(exc, _TIMEOUTS):
        return em.transient(f"request timed out after {creds.timeout}s", provider=provider)
    return em.transient(f"connection error: {type(exc).__name__}", provider=provider)


class GeminiAdapter:
    """generateContent through the official ``google-genai`` SDK."""

    name = "gemini"

    def __init__(self) -> None:
        self._clients: ClientCache[genai.Client] = ClientCache(_build_client)

    def prepare(self, creds: KeyCredentials) -> None:
        """Build (and cache) the key's SDK client now, so its first call costs what any
        call costs: a first call late against its reservation eats the pool's margin."""
        client = self._clients.get(creds)
        _ = client.models  # the SDK loads its resources lazily

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        """One generateContent call; raises a classified, redacted ProviderError on failure."""
        client = self._clients.get(creds)
        contents, config = gemini_request(request)
        failure: ProviderError | None = None
        try:
            resp = client.models.generate_content(model=request.model, contents=contents, config=config)
        except _SDK_ERRORS as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        return self._response(resp, request)

    def open_stream(self, request: ChatRequest, creds: KeyCredentials) -> ChatStream:
        """Start ``streamGenerateContent``; the first chunk is read here, so a refused call
        raises now, as ``complete`` would."""
        client = self._clients.get(creds)
        contents, config = gemini_request(request)
        failure: ProviderError | None = None
        try:
            chunks = client.models.generate_content_stream(model=request.model, contents=contents, config=config)
            first = next(chunks, None)
        except _SDK_ERRORS as exc:
            failure = classify_sdk_error(exc, self.name, creds)
        if failure is not None:
            raise failure
        return GeminiStream(chunks, first, request.model, self.name, creds)

    def _response(self, resp: types.GenerateContentResponse, request: ChatRequest) -> ChatResponse:
        feedback = resp.prompt_feedback
        if feedback is not None and feedback.block_reason:
            reason = getattr(feedback.block_reason, "value", str(feedback.block_reason))
            raise ContentBlocked(f"{self.name}: prompt blocked ({reason})", provider=self.name, status=200)
        if not resp.candidates:
            raise ContentBlocked(f"{self.name}: no candidates returned", provider=self.name, status=200)
        cand = resp.candidates[0]
        finish = getattr(cand.finish_reason, "value", None) if cand.finish_reason is not None else None
        parts = (cand.content.parts if cand.content else None) or []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        if finish in _BLOCKING_FINISH and not text:
            raise ContentBlocked(f"{self.name}: answer blocked ({finish})", provider=self.name, status=200)
        details: dict[str, str] = {}
        if resp.response_id:
            details["id"] = resp.response_id
        return ChatResponse(
            content=text,
            usage=_usage(resp.usage_metadata),
            model=str(resp.model_version or request.model),
            finish_reason=finish,
            rate_limit=None,  # the Gemini API sends no rate-limit headers
            details=details,
        )


class GeminiStream:
    """Chunks of ``streamGenerateContent`` as provider-neutral :class:`StreamChunk` s.

    Gemini sends a function call whole, in one part: it becomes one tool-call fragment
    holding all of its arguments. Each chunk's usage is the total so far; the last one counts.
    """

    def __init__(self, chunks: Iterator[types.GenerateContentResponse], first: types.GenerateContentResponse | None,
                 model: str, provider: str, creds: KeyCredentials) -> None:
        self._chunks = chunks
        self._first = first
        self.model = model
        self.rate_limit: RateLimitInfo | None = None  # the Gemini API sends no rate-limit headers
        self._provider = provider
        self._creds = creds

    def __iter__(self) -> Iterator[StreamChunk]:
        failure: ProviderError | None = None
        finished = False
        calls = 0
        try:
            chunk = self._first
            while chunk is not None:
                feedback = chunk.prompt_feedback
                if feedback is not None and feedback.block_reason:
                    reason = getattr(feedback.block_reason, "value", str(feedback.block_reason))
                    raise ContentBlocked(f"{self._provider}: prompt blocked ({reason})", provider=self._provider,
                                         status=200)
                if chunk.model_version:
                    self.model = str(chunk.model_version)
                cand = chunk.candidates[0] if chunk.candidates else None
                for part in ((cand.content.parts if cand and cand.content else None) or []):
                    if part.text and not part.thought:
                        yield StreamChunk(text=part.text)
                    if part.function_call is not None:
                        fc = part.function_call
                        yield StreamChunk(tool_call=ToolCallFragment(
                            index=calls, id=fc.id or f"call_{uuid.uuid4().hex[:24]}", name=fc.name,
                            arguments=json.dumps(fc.args or {})))
                        calls += 1
                if chunk.usage_metadata is not None:
                    yield StreamChunk(usage=_usage(chunk.usage_metadata))
                if cand is not None and cand.finish_reason is not None:
                    finished = True
                    yield StreamChunk(finish_reason=getattr(cand.finish_reason, "value", str(cand.finish_reason)))
                chunk = next(self._chunks, None)
        except _SDK_ERRORS as exc:
            failure = classify_sdk_error(exc, self._provider, self._creds)
        if failure is not None:
            raise failure  # raised outside the except block: no SDK exception in its context
        if not finished:
            raise em.transient(f"{self._provider}: the stream ended before the answer did", provider=self._provider)

    def close(self) -> None:
        """Drop the connection (the SDK's generator closes its response)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
