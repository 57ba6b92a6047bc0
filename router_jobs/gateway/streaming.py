"""Server-sent events in OpenAI's chunk format, fed by a job's events.

:class:`EventSource` is the one seam between the gateway and the job: it yields
:class:`JobEvent` values (``delta`` text, ``tool_call``, ``usage``, ``done``, ``error``).
:class:`JobStreamEvents` reads the job's durable event stream (text as the provider produces
it); :class:`ResultEvents` waits for the job's result and yields the whole reply as one
delta (for jobs submitted without a stream).
:func:`sse_body` turns events into the ``data: {...}`` lines an OpenAI SDK reads, ending with
``data: [DONE]``; an error after the first byte is sent as a chunk ``{"error": {...}}``,
which the SDK raises as ``APIError``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from router_jobs.client.async_router import AsyncRouter
from router_jobs.errors import JobFailed, JobTimeout, RouterJobsError
from router_jobs.gateway import openai_format as fmt
from router_jobs.gateway.errors import ApiError, from_library_error
from router_jobs.jobs.records import raise_for_result
from router_jobs.models import Usage


@dataclass
class JobEvent:
    """One event of a job's reply: ``delta`` (``text``), ``tool_call`` (``data``: OpenAI's
    tool-call delta), ``model``, ``usage``, ``done`` or ``error``."""

    kind: str
    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    error: ApiError | None = None
    data: dict[str, Any] = field(default_factory=dict)


class EventSource(Protocol):
    """Where a streamed reply's events come from."""

    def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's events, in order, ending with ``done`` or ``error``."""
        ...


class ResultEvents:
    """Events of a finished job: its reply as one delta, then usage and done."""

    def __init__(self, router: AsyncRouter, timeout: float) -> None:
        self.router = router
        self.timeout = timeout

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        try:
            result = await self.router.await_result(job_id, timeout=self.timeout, raise_on_error=False)
            raise_for_result(result)
        except JobTimeout as exc:
            await self.router.cancel(job_id)
            yield JobEvent("error", error=from_library_error(exc))
            return
        except RouterJobsError as exc:
            yield JobEvent("error", error=from_library_error(exc))
            return
        if result.content:
            yield JobEvent("delta", text=result.content, model=result.model)
        yield JobEvent("usage", usage=result.usage, model=result.model)
        yield JobEvent("done", model=result.model, finish_reason=fmt.finish_reason(result))


class JobStreamEvents:
    """Events of the job's durable stream (jobs submitted with ``stream=True``), as they are
    written: text arrives while the provider produces it.

    An attempt abandoned after some of its text was sent cannot be taken back from an SSE
    client, so it ends the response with an error event (``stream_restarted``); the job itself
    goes on, and its result stays readable. Before any text, a restart is invisible.
    """

    def __init__(self, router: AsyncRouter, timeout: float) -> None:
        self.router = router
        self.timeout = timeout

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        sent = sent_text = sent_tools = False
        usage: Usage | None = None
        try:
            async for ev in self.router.stream(job_id, timeout=self.timeout):
                if ev.type == "delta" and ev.text:
                    sent = sent_text = True
                    yield JobEvent("delta", text=ev.text, model=ev.model)
                elif ev.type == "tool_call_delta" and ev.tool_call is not None:
                    sent = sent_tools = True
                    tc = ev.tool_call
                    call: dict[str, Any] = {"index": tc.index, "function": {"arguments": tc.arguments}}
                    if tc.id:
                        call["id"], call["type"] = tc.id, "function"
                    if tc.name:
                        call["function"]["name"] = tc.name
                    yield JobEvent("tool_call", data=call)
                elif ev.type == "started" and ev.model:
                    yield JobEvent("model", model=ev.model)
                elif ev.type == "usage":
                    usage = ev.usage
                elif ev.type == "attempt_restarted" and sent:
                    yield JobEvent("error", error=ApiError(
                        502, f"the provider call was restarted ({ev.reason}) after part of the answer was sent; "
                        f"job {job_id} goes on", type="server_error", code="stream_restarted"))
                    return
                elif ev.type == "done":
                    # what the adapter did not stream (some stream no tool calls) is in the result
                    want_tools = not sent_tools and ev.finish_reason == "tool_calls"
                    if not sent_text or want_tools:
                        async for filled in self._whole_answer(job_id, text=not sent_text, tools=want_tools):
                            yield filled
                    yield JobEvent("usage", usage=ev.usage or usage)
                    yield JobEvent("done", model=ev.model, finish_reason=fmt.openai_finish(ev.finish_reason))
                    return
                elif ev.type == "error":
                    failed = JobFailed(job_id, ev.error_type or "error", ev.message or "the job failed")
                    yield JobEvent("error", error=from_library_error(failed))
                    return
        except JobTimeout as exc:
            await self.router.cancel(job_id)
            yield JobEvent("error", error=from_library_error(exc))
        except RouterJobsError as exc:
            yield JobEvent("error", error=from_library_error(exc))


    async def _whole_answer(self, job_id: str, *, text: bool, tools: bool) -> AsyncIterator[JobEvent]:
        """The result's text and/or tool calls as events (for a job whose events lacked them)."""
        result = await self.router.status(job_id)
        if result is None:
            return
        if text and result.content:
            yield JobEvent("delta", text=result.content, model=result.model)
        for i, call in enumerate(result.tool_calls if tools else []):
            yield JobEvent("tool_call", data={"index": i, **fmt.tool_call(call)})


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def sse_body(source: EventSource, job_id: str, model: str, *, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE byte stream of one streamed completion."""
    created = int(time.time())
    yield _sse(fmt.chunk(job_id, created, model, {"role": "assistant", "content": ""}))
    usage: Usage | None = None
    async for ev in source.events(job_id):
        if ev.model:
            model = ev.model
        if ev.kind == "delta" and ev.text:
            yield _sse(fmt.chunk(job_id, created, model, {"content": ev.text}))
        elif ev.kind == "tool_call":
            yield _sse(fmt.chunk(job_id, created, model, {"tool_calls": [ev.data]}))
        elif ev.kind == "usage":
            usage = ev.usage
        elif ev.kind == "error":
            err = ev.error or ApiError(500, "the job failed", type="server_error")
            yield _sse(err.body())
            return
        elif ev.kind == "done":
            yield _sse(fmt.chunk(job_id, created, model, {}, finish=ev.finish_reason or "stop"))
            if include_usage and usage is not None:
                yield _sse(fmt.chunk(job_id, created, model, {}, usage=usage))
            yield b"data: [DONE]\n\n"
            return
