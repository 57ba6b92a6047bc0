"""The worker's side of a streamed job: one attempt's events, from ``started`` to its usage.

The attempt's first append looks at the stream's last event (in ``append_events.lua``): if an
earlier attempt was under way (its ``started`` or deltas are last, no ending, no restart
marker), its worker died mid-stream, and ``attempt_restarted`` (reason ``worker_lost``) goes
in before anything of this attempt, so a reader never splices two attempts' text. An attempt that fails with an error the
broker will retry marks itself abandoned the same way (reason: the error type).
"""

from __future__ import annotations

from router_jobs.errors import ContentBlocked, ProviderError
from router_jobs.models import JobResult, JobStatus, Usage
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials, ProviderAdapter
from router_jobs.request import FinishReason, ToolCall
from router_jobs.streaming.events import StreamEvent, ToolCallDelta
from router_jobs.streaming.log import EventLog


class LiveAttempt:
    """Streams one attempt's answer into the job's event stream while assembling it."""

    def __init__(self, log: EventLog, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.writer = log.writer(job_id, opening=attempt)
        self.started = False

    @classmethod
    def begin(cls, log: EventLog, job_id: str, attempt: int) -> LiveAttempt:
        """Open attempt number ``attempt``. Its first append marks an earlier attempt cut short
        by a dead worker (``append_events.lua`` decides, atomically, in the same round trip)."""
        return cls(log, job_id, attempt)

    def run(self, adapter: ProviderAdapter, request: ChatRequest, creds: KeyCredentials, provider: str) -> ChatResponse:
        """Call the provider, streaming when the adapter can (else one delta with the answer).

        A ProviderError leaves the writer open for :meth:`abandon` or :meth:`close`; any other
        failure (Redis gone, a bug) stops the writer and propagates.
        """
        try:
            return self._run(adapter, request, creds, provider)
        except ProviderError:
            raise
        except BaseException:
            self.writer.abort()
            raise

    def _run(self, adapter: ProviderAdapter, request: ChatRequest, creds: KeyCredentials,
             provider: str) -> ChatResponse:
        # ``started`` goes out while the call is made: its round trip overlaps the provider's
        # first byte, and a reader learns which model serves the job before the answer begins
        self._started(request.model, provider, creds.key_id)
        open_stream = getattr(adapter, "open_stream", None)
        if open_stream is None:
            response = adapter.complete(request, creds)
            if response.content:
                self.writer.emit(StreamEvent(type="delta", attempt=self.attempt, text=response.content))
            self.writer.emit(StreamEvent(type="usage", attempt=self.attempt, usage=response.usage))
            self.writer.drain()
            return response
        stream = open_stream(request, creds)
        parts: list[str] = []
        refused: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        calls: dict[int, dict[str, str]] = {}
        first = True
        try:
            for chunk in stream:
                if chunk.text:
                    parts.append(chunk.text)
                    self.writer.emit(StreamEvent(type="delta", attempt=self.attempt, text=chunk.text))
                if chunk.tool_call is not None:
                    frag = chunk.tool_call
                    call = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = call["id"] or (frag.id or "")
                    call["name"] = call["name"] or (frag.name or "")
                    call["arguments"] += frag.arguments
                    self.writer.emit(StreamEvent(type="tool_call_delta", attempt=self.attempt, tool_call=ToolCallDelta(
                        index=frag.index, id=frag.id, name=frag.name, arguments=frag.arguments)))
                if chunk.refusal:
                    refused.append(chunk.refusal)
                    self.writer.emit(StreamEvent(type="delta", attempt=self.attempt, refusal=chunk.refusal))
                if first and (chunk.text or chunk.tool_call is not None or chunk.refusal):
                    # wait for the first piece to be written: the flusher gets the GIL now,
                    # not after this thread has parsed every chunk already received
                    first = False
                    self.writer.drain()
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
        finally:
            stream.close()
        content, refusal = "".join(parts), "".join(refused) or None
        reason = neutral_finish(finish, len(calls))
        if reason in ("content_filter", "refusal") and not (content or refusal) and not calls:
            raise ContentBlocked(f"{provider}: answer withheld ({finish})", provider=provider, status=200)
        if reason == "refusal" or refusal:  # the text was the model declining: it is the refusal
            refusal, content, reason = refusal or content, "", "refusal"
        if usage is not None:
            self.writer.emit(StreamEvent(type="usage", attempt=self.attempt, usage=usage))
        self.writer.drain()
        tool_calls = [ToolCall(id=c["id"] or f"call_{i}", name=c["name"] or "unnamed",
                               arguments=c["arguments"] or "{}") for i, c in sorted(calls.items())]
        return ChatResponse(content=content, usage=usage or Usage(), model=stream.model or request.model,
                            finish_reason=reason, rate_limit=stream.rate_limit,
                            details={"finish_reason": finish} if finish else {}, tool_calls=tool_calls,
                            refusal=refusal)

    def _started(self, model: str, provider: str, key_id: str) -> None:
        self.started = True
        self.writer.emit(StreamEvent(type="started", attempt=self.attempt, model=model, provider=provider,
                                     key_id=key_id))

    def abandon(self, error: ProviderError) -> None:
        """This attempt failed and the job will be tried again: void what it streamed."""
        if self.started:
            self.writer.emit(StreamEvent(type="attempt_restarted", attempt=self.attempt, reason=error.error_type,
                                         message=str(error)))
        self.writer.close()

    def close(self) -> None:
        """Write what is still buffered and stop the writer."""
        self.writer.close()


_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "STOP": "stop",
    "length": "length", "max_tokens": "length", "MAX_TOKENS": "length",
    "tool_calls": "tool_calls", "function_call": "tool_calls", "tool_use": "tool_calls",
    "content_filter": "content_filter", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "refusal": "refusal", "other": "other",
}


def neutral_finish(raw: str | None, tool_calls: int) -> FinishReason | None:
    """The neutral finish reason of a provider's own word (Gemini says STOP after a call);
    a reason that is already neutral stays as it is."""
    if raw is None:
        return None
    reason = _FINISH.get(raw, "other")
    return "tool_calls" if tool_calls and reason == "stop" else reason


def ending_event(result: JobResult) -> StreamEvent:
    """The ``done`` or ``error`` event for a job's result."""
    attempt = result.attempts or None
    if result.status == JobStatus.succeeded:
        return StreamEvent(type="done", attempt=attempt, model=result.model, provider=result.provider,
                           key_id=result.key_id, usage=result.usage, finish_reason=result.finish_reason,
                           refusal=result.refusal)
    return StreamEvent(type="error", attempt=attempt, error_type=result.error_type or result.status.value,
                       message=result.error_message or f"job {result.status.value}")


def waiting_event(reason: str, eta_ms: int | None, position: int | None = None) -> StreamEvent:
    """A ``state`` event: the job is queued (again), for ``reason``, for about ``eta_ms``."""
    return StreamEvent(type="state", status=JobStatus.queued.value, reason=reason, eta_ms=eta_ms, position=position)
