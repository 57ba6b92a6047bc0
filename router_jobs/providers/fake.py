"""An in-process fake provider for demos and tests: no network, no SDK.

It echoes the last user message (``"echo: <text>"``) and reports usage from a simple token
estimate. Directives inside the prompt steer it, so tests can drive every worker reaction:

* ``[[sleep:1.5]]`` answer after 1.5 s;
* ``[[fail:<error_type>]]`` raise that error class (``rate_limited``, ``key_invalid``,
  ``quota_exhausted``, ``bad_request``, ``request_too_large``, ``transient``, ``overloaded``,
  ``content_blocked``);
* ``[[crash]]`` end the whole worker process at once (for dead-letter tests).
"""

from __future__ import annotations

import os
import re
import time

from router_jobs import errors
from router_jobs.models import Usage
from router_jobs.providers.base import ChatRequest, ChatResponse, KeyCredentials

_DIRECTIVE = re.compile(r"\[\[(sleep|fail|crash)(?::([^\]]+))?\]\]")

_ERRORS: dict[str, type[errors.ProviderError]] = {
    cls.error_type: cls
    for cls in (
        errors.ProviderRateLimited, errors.KeyInvalid, errors.QuotaExhausted, errors.BadRequest,
        errors.RequestTooLarge, errors.TransientProviderError, errors.ProviderOverloaded,
        errors.ContentBlocked,
    )
}


def _estimate(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


class FakeAdapter:
    """The ``fake`` provider. Thread-safe; holds no state."""

    name = "fake"

    def complete(self, request: ChatRequest, creds: KeyCredentials) -> ChatResponse:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        for kind, arg in _DIRECTIVE.findall(last):
            if kind == "sleep":
                time.sleep(float(arg or 0))
            elif kind == "crash":
                os._exit(17)
            elif kind == "fail":
                cls = _ERRORS.get(arg or "", errors.TransientProviderError)
                retry_after = 1.0 if cls is errors.ProviderRateLimited else None
                raise cls(f"fake provider refused the call ({arg})", provider="fake", retry_after=retry_after)
        prompt_tokens = sum(_estimate(m.text) for m in request.messages)
        content = f"echo: {last}"
        out_tokens = min(request.max_output_tokens, _estimate(content))
        return ChatResponse(
            content=content,
            usage=Usage(input_tokens=prompt_tokens, output_tokens=out_tokens),
            model=request.model,
            finish_reason="stop",
        )
