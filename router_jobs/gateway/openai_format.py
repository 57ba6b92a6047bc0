"""Job results in OpenAI's chat-completions shapes: the completion object, stream chunks,
and the output / error lines of a batch.

One formatter for all three, so a reply looks the same whether it came back from
``POST /v1/chat/completions`` or from a batch's output file. The provider-neutral finish
reasons map to OpenAI's (``refusal`` and ``other`` become ``stop``).
"""

from __future__ import annotations

import time
from typing import Any

from router_jobs.models import JobResult, Usage
from router_jobs.request import ToolCall


def completion_id(job_id: str) -> str:
    """The ``chatcmpl-`` id of a job's completion (stable: the job id inside)."""
    return f"chatcmpl-{job_id}"


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


#: neutral finish reasons -> OpenAI's words
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
           "refusal": "stop", "other": "stop"}


def openai_finish(reason: str | None) -> str:
    """OpenAI's finish reason for a neutral one (``stop`` when unknown)."""
    return _FINISH.get(reason or "stop", "stop")


def finish_reason(result: JobResult) -> str:
    """The result's finish reason in OpenAI's words."""
    return openai_finish(result.finish_reason)


def tool_call(call: ToolCall) -> dict[str, Any]:
    """OpenAI's shape of one tool call."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def completion(result: JobResult, requested_model: str) -> dict[str, Any]:
    """The ``chat.completion`` object of a job that succeeded."""
    message: dict[str, Any] = {"role": "assistant", "content": result.content, "refusal": result.refusal}
    if result.tool_calls:
        message["tool_calls"] = [tool_call(tc) for tc in result.tool_calls]
        if not result.content:
            message["content"] = None
    return {
        "id": completion_id(result.job_id),
        "object": "chat.completion",
        "created": int(result.finished_at or time.time()),
        "model": result.model or requested_model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result), "logprobs": None}],
        "usage": usage_dict(result.usage),
        "system_fingerprint": None,
        "service_tier": None,
    }


def chunk(job_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
          usage: Usage | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` it is the final, choice-less usage chunk."""
    out: dict[str, Any] = {"id": completion_id(job_id), "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": None}
    if usage is not None:
        out["choices"] = []
        out["usage"] = usage_dict(usage)
    else:
        out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return out


def batch_output_line(custom_id: str | None, line: int, result: JobResult, requested_model: str) -> dict[str, Any]:
    """The output-file line of a request that succeeded."""
    return {"id": f"batch_req_{result.job_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": result.job_id,
                         "body": completion(result, requested_model)},
            "error": None}


def batch_error_line(custom_id: str | None, line: int, code: str, message: str, *, job_id: str | None = None,
                     status_code: int | None = None) -> dict[str, Any]:
    """The error-file line of a request that failed (with the HTTP answer it would have had,
    when it ran) or never ran (``response: null``)."""
    response = None
    if status_code is not None:
        response = {"status_code": status_code, "request_id": job_id,
                    "body": {"error": {"message": message, "type": "invalid_request_error"
                                       if status_code < 500 else "server_error", "param": None, "code": code}}}
    return {"id": f"batch_req_{job_id or f'line{line}'}", "custom_id": custom_id, "response": response,
            "error": None if response is not None else {"code": code, "message": message}}
