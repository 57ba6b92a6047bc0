"""Gemini adapter (``google-genai`` SDK, ``from google import genai``).

The older ``google-generativeai`` package lost all support on 2025-11-30; this adapter uses
its successor. System messages go to ``system_instruction`` and the assistant role is
Gemini's ``model``. The SDK retries nothing unless ``HttpRetryOptions`` is given; we pass
``attempts=1`` explicitly, which also turns off its implicit retry of connection errors.

Gemini counts thinking tokens (``thoughtsTokenCount``) apart from the answer but bills them
as output, so :class:`~router_jobs.models.Usage` adds them to ``output_tokens`` and reports
them as ``reasoning_tokens`` too.

Tools become function declarations (their JSON schema as ``parametersJsonSchema``), the
assistant's tool calls ``functionCall`` parts of a ``model`` turn and tool results
``functionResponse`` parts of a ``user`` turn, named after the call they answer (Gemini
matches results to calls by name and order; call ids are kept on our side, and calls that
come back without one get a fresh id). Images go as ``inlineData`` (base64) or ``fileData``
(URL with its media type). JSON output uses ``responseMimeType`` and ``responseJsonSchema``;
reasoning ``effort`` is the thinking level (Gemini 2.x models, which take only a budget, get
the budget of :data:`EFFORT_BUDGETS`), ``budget_tokens`` the thinking budget. Gemini caches
prompt prefixes implicitly, so ``cache_control`` hints need nothing.

Gemini 3 signs its function calls (``thoughtSignature``) and refuses a tool loop whose history
lost the signature; a signed call is kept whole as a Gemini
:class:`~router_jobs.request.ProviderPart` of the assistant message and sent back in place of
the neutral call (other providers leave it out).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from router_jobs.errors import BadRequest, ContentBlocked, ProviderError
from router_jobs.models import ChatMessage, Usage
from router_jobs.providers import errors_map as em
from router_jobs.providers import sentclock
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
from router_jobs.request import FinishReason, ImagePart, NamedToolChoice, ProviderPart, TextPart, ToolCall

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
        httpx_client=sentclock.http_module().Client(transport=sentclock.transport(), timeout=creds.timeout),
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


def _bad(message: str) -> BadRequest:
    return BadRequest(message, provider="gemini")


def _part(part: TextPart | ImagePart | ProviderPart, where: str) -> types.Part | None:
    if isinstance(part, TextPart):
        return types.Part(text=part.text)
    if isinstance(part, ProviderPart):
        return types.Part.model_validate(part.data) if part.provider == "gemini" else None
    if part.detail not in (None, "auto"):
        raise _bad(f"{where}.detail: gemini has no per-image detail setting")
    if part.url is not None:
        if part.media_type is None:
            raise _bad(f"{where}.media_type: gemini needs the media type of an image given by URL")
        return types.Part(file_data=types.FileData(file_uri=part.url, mime_type=part.media_type))
    try:
        raw = base64.b64decode(part.data or "", validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}.data: not valid base64") from None
    return types.Part(inline_data=types.Blob(data=raw, mime_type=part.media_type))


def _parts(msg: ChatMessage, where: str) -> list[types.Part]:
    if isinstance(msg.content, str):
        return [types.Part(text=msg.content)] if msg.content else []
    return [p for i, part in enumerate(msg.content) if (p := _part(part, f"{where}.content[{i}]")) is not None]


def _signed_calls(msg: ChatMessage) -> list[types.Part]:
    """The assistant's signed function-call parts, kept from Gemini's response."""
    if isinstance(msg.content, str):
        return []
    kept = [types.Part.model_validate(p.data) for p in msg.content
            if isinstance(p, ProviderPart) and p.provider == "gemini" and "function_call" in p.data]
    return [p for p in kept if p.function_call is not None]


def _call_part(call: ToolCall, where: str, signed: list[types.Part]) -> types.Part:
    for i, part in enumerate(signed):
        if part.function_call is not None and part.function_call.name == call.name:
            return signed.pop(i)
    try:
        args = call.args()
    except ValueError:
        raise _bad(f"{where}.arguments: not a JSON object, gemini needs one") from None
    return types.Part(function_call=types.FunctionCall(name=call.name, args=args))


def _result_part(msg: ChatMessage, names: dict[str, str], where: str) -> types.Part:
    name = msg.name or names.get(msg.tool_call_id or "")
    if not name:
        raise _bad(f"{where}.tool_call_id: answers no earlier tool call, and gemini needs the tool's name")
    if any(isinstance(p, ImagePart) for p in ([] if isinstance(msg.content, str) else msg.content)):
        raise _bad(f"{where}.content: gemini takes text only in tool results")
    text = msg.text
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    body = value if isinstance(value, dict) and not msg.is_error else {"error" if msg.is_error else "result": value}
    return types.Part(function_response=types.FunctionResponse(name=name, response=body))


def gemini_contents(messages: list[ChatMessage]) -> list[types.Content]:
    """``contents`` for neutral non-system messages; same-role neighbours share one turn."""
    names: dict[str, str] = {}
    out: list[types.Content] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role == "system":
            continue
        if m.role == "assistant":
            role = "model"
            signed = _signed_calls(m)
            parts = [p for p in _parts(m, where) if p.function_call is None]
            for j, call in enumerate(m.tool_calls):
                names[call.id] = call.name
                parts.append(_call_part(call, f"{where}.tool_calls[{j}]", signed))
        elif m.role == "tool":
            role, parts = "user", [_result_part(m, names, where)]
        else:
            role, parts = "user", _parts(m, where)
        if not parts:
            parts = [types.Part(text="")]
        if out and out[-1].role == role:
            out[-1].parts = [*(out[-1].parts or []), *parts]
        else:
            out.append(types.Content(role=role, parts=parts))
    return out


def _tool_config(request: ChatRequest) -> types.ToolConfig | None:
    choice = request.tool_choice
    if choice is None:
        return None
    mode = types.FunctionCallingConfigMode
    if isinstance(choice, NamedToolChoice):
        return types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=mode.ANY, allowed_function_names=[choice.name]))
    value = {"auto": mode.AUTO, "none": mode.NONE, "required": mode.ANY}[choice]
    return types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode=value))


#: Gemini 2.x models take a thinking budget, not a level: an effort maps to these budgets
EFFORT_BUDGETS = {"minimal": 128, "low": 1024, "medium": 8192, "high": 24576}


def _thinking(request: ChatRequest) -> types.ThinkingConfig | None:
    r = request.reasoning
    if r is None:
        return None
    if r.effort is not None and r.budget_tokens is not None:
        raise _bad("reasoning: gemini takes an effort or a budget_tokens, not both")
    if r.budget_tokens is not None:
        return types.ThinkingConfig(thinking_budget=r.budget_tokens)
    if request.model.removeprefix("models/").startswith("gemini-2"):
        return types.ThinkingConfig(thinking_budget=EFFORT_BUDGETS[str(r.effort)])
    return types.ThinkingConfig(thinking_level=types.ThinkingLevel(str(r.effort).upper()))


def gemini_request(request: ChatRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The ``contents`` and ``config`` for a neutral request."""
    system = "\n\n".join(m.text for m in request.messages if m.role == "system")
    if request.parallel_tool_calls is False:
        raise _bad("parallel_tool_calls: gemini cannot be kept from calling tools in parallel")
    fmt = request.output_format()
    tools = None
    if request.tools:
        tools = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.parameters)
            for t in request.tools
        ])]
    config = types.GenerateContentConfig(
        system_instruction=system or None,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_sequences=list(request.stop) if request.stop else None,
        seed=request.seed,
        response_mime_type="application/json" if fmt is not None and fmt.type != "text" else None,
        response_json_schema=fmt.json_schema if fmt is not None else None,
        tools=tools,  # type: ignore[arg-type]
        tool_config=_tool_config(request),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True) if tools else None,
        thinking_config=_thinking(request),
    )
    return gemini_contents(request.messages), config


def _finish(finish: str | None) -> FinishReason:
    if finish == "STOP":
        return "stop"
    if finish == "MAX_TOKENS":
        return "length"
    if finish in _BLOCKING_FINISH:
        return "content_filter"
    return "other"


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
        calls = [
            ToolCall(id=p.function_call.id or f"call_{uuid.uuid4().hex[:24]}", name=str(p.function_call.name),
                     arguments=json.dumps(p.function_call.args or {}))
            for p in parts if p.function_call is not None
        ]
        signed = [ProviderPart(provider="gemini", data=p.model_dump(mode="json", exclude_none=True))
                  for p in parts if p.function_call is not None and p.thought_signature]
        if finish in _BLOCKING_FINISH and not text and not calls:
            raise ContentBlocked(f"{self.name}: answer blocked ({finish})", provider=self.name, status=200)
        details: dict[str, str] = {"finish_reason": str(finish)}
        if resp.response_id:
            details["id"] = resp.response_id
        return ChatResponse(
            content=text,
            usage=_usage(resp.usage_metadata),
            model=str(resp.model_version or request.model),
            finish_reason="tool_calls" if calls else _finish(finish),
            rate_limit=None,  # the Gemini API sends no rate-limit headers
            details=details,
            tool_calls=calls,
            parts=signed,
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
