"""Errors in OpenAI's envelope, so that an OpenAI SDK raises its own typed exceptions.

Every refusal the gateway answers is an :class:`ApiError`: an HTTP status, OpenAI's error
``type`` and ``code``, the offending ``param`` when there is one, and extra headers (a
``Retry-After`` on 429). The body is always::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": null}}

:func:`from_library_error` turns the library's typed errors (refusals at submit, a failed job)
into the matching answer. A 429 only ever means the caller's own rate limit or budget: a full
key pool makes requests wait in the queue instead.
"""

from __future__ import annotations

import math
from typing import Any

from router_jobs.errors import (
    BudgetExceeded,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobTimeout,
    JobValidationError,
    RouterJobsError,
    SubmitRateLimited,
)


class ApiError(RouterJobsError):
    """One answer in OpenAI's error envelope (status, type, code, param, headers)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400 invalid_request_error."""
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str | None = None) -> ApiError:
    """404 invalid_request_error."""
    return ApiError(404, message, code=code)


def unauthorized(message: str) -> ApiError:
    """401: missing, unknown or revoked token."""
    return ApiError(401, message, code="invalid_api_key")


def rate_limited(message: str, retry_after: float, code: str = "rate_limit_exceeded") -> ApiError:
    """429 with a ``Retry-After`` in whole seconds (at least 1)."""
    seconds = 86400 if not math.isfinite(retry_after) else max(1, math.ceil(retry_after))
    return ApiError(429, message, type="requests", code=code, headers={"Retry-After": str(seconds)})


#: a failed job's error_type -> (status, OpenAI type, code)
_FAILED: dict[str, tuple[int, str, str | None]] = {
    "bad_request": (400, "invalid_request_error", None),
    "invalid_request": (400, "invalid_request_error", None),
    "request_too_large": (400, "invalid_request_error", "context_length_exceeded"),
    "content_blocked": (400, "invalid_request_error", "content_filter"),
    "cancelled": (499, "invalid_request_error", "cancelled"),
    "expired": (504, "timeout", "expired"),
}


def from_library_error(exc: RouterJobsError) -> ApiError:
    """The answer for a library error raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, JobValidationError):
        code = "model_not_found" if exc.field in ("model", "fallback_models") and "serves" in exc.reason else None
        status = 404 if code else 400
        return ApiError(status, str(exc), param=exc.field, code=code)
    if isinstance(exc, SubmitRateLimited):
        return rate_limited(f"rate limit of {exc.scope} reached; retry after {exc.retry_after:.1f}s", exc.retry_after)
    if isinstance(exc, BudgetExceeded):
        return rate_limited(f"daily budget reached: {exc}", _seconds_to_utc_midnight(), code="insufficient_quota")
    if isinstance(exc, JobFailed):
        status, kind, code = _FAILED.get(exc.error_type, (502, "upstream_error", exc.error_type))
        return ApiError(status, exc.error_message or str(exc), type=kind, code=code)
    if isinstance(exc, JobCancelled):
        return ApiError(499, str(exc), code="cancelled")
    if isinstance(exc, JobTimeout | JobExpired):
        return ApiError(504, str(exc), type="timeout", code="timeout")
    return ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error")


def _seconds_to_utc_midnight() -> float:
    import time

    return 86400 - (time.time() % 86400)
