"""The exception tree of router-jobs.

Every error the library raises derives from :class:`RouterJobsError`, and each class carries
the data a caller needs to act on it (a field name, a retry-after, a job id), never a secret::

    RouterJobsError
    ├── ConfigError                      settings or keys file invalid (names key and field)
    ├── BrokerError                      Redis unreachable or misbehaving after bounded retries
    ├── SecretStoreError                 a secret could not be read (names the key id only)
    ├── JobValidationError               submit refused: names the field and the reason
    ├── SubmitRateLimited                per-user or global submit limit hit (retry_after)
    ├── BudgetExceeded                   a spend cap would be broken
    ├── JobError                         raised by await_result / as_completed
    │   ├── JobFailed                    the job ended failed (error_type, message)
    │   ├── JobCancelled
    │   ├── JobExpired                   deadline passed before it could run, or record expired
    │   ├── JobTimeout                   the caller's wait ran out (the job may still finish)
    │   └── StreamTruncated              a job's event stream lost events (trimmed or expired)
    └── ProviderError                    a provider call failed; classified for the broker
        ├── ProviderRateLimited          429: cool the key down for retry_after seconds
        ├── QuotaExhausted               quota/spend/daily limit gone until reset_at
        ├── KeyInvalid                   401/403 or API_KEY_INVALID: out of rotation
        ├── RequestTooLarge              can never fit (context length, request too large)
        ├── BadRequest                   other 400s: fail the job with the reason
        ├── ContentBlocked               safety block: fail the job with the reason
        ├── ProviderOverloaded           529/503: retry with backoff on another key
        └── TransientProviderError       5xx, timeouts, connection errors: bounded retries

``ProviderError.retryable`` and ``ProviderError.key_fault`` tell the worker what to do.
"""

from __future__ import annotations

from typing import Any


class RouterJobsError(Exception):
    """Root of every error raised by router-jobs."""


class ConfigError(RouterJobsError):
    """Invalid settings or keys file. ``key_id`` and ``field`` name the culprit when known."""

    def __init__(self, message: str, *, key_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.field = field


class BrokerError(RouterJobsError):
    """Redis could not be reached (after bounded retries) or answered unexpectedly."""


class SecretStoreError(RouterJobsError):
    """A secret could not be read. The message names the key id, never a value."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class JobValidationError(RouterJobsError, ValueError):
    """``submit`` refused a job; nothing was enqueued. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SubmitRateLimited(RouterJobsError):
    """A per-user or global submit limit refused the job; try again after ``retry_after`` s."""

    def __init__(self, scope: str, retry_after: float) -> None:
        super().__init__(f"{scope} rate limit reached; retry after {retry_after:.3f}s")
        self.scope = scope
        self.retry_after = retry_after


class BudgetExceeded(RouterJobsError):
    """The job would break a daily spend cap of ``scope`` (``user:<id>`` or ``key:<id>``)."""

    def __init__(self, scope: str, cap: float, spent: float) -> None:
        super().__init__(f"daily budget of {scope} is {cap:.4f}, already spent {spent:.4f}")
        self.scope = scope
        self.cap = cap
        self.spent = spent


class JobError(RouterJobsError):
    """Base of errors about one job's outcome."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """The job ended in the failed state. ``error_type`` is a stable, machine-readable name."""

    def __init__(self, job_id: str, error_type: str, message: str, result: Any = None) -> None:
        super().__init__(job_id, f"job {job_id} failed ({error_type}): {message}")
        self.error_type = error_type
        self.error_message = message
        self.result = result


class JobCancelled(JobError):
    """The job was cancelled before it ran."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} was cancelled")


class JobExpired(JobError):
    """The job's deadline passed before it could run, or its record has expired."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(job_id, message or f"job {job_id} expired")


class JobTimeout(JobError, TimeoutError):
    """``await_result`` gave up waiting; the job itself may still complete later."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, f"job {job_id} did not finish within {timeout:.3f}s")
        self.timeout = timeout


class StreamTruncated(JobError):
    """Reading a job's event stream found a gap: event ``got`` came where ``expected`` was due
    (the stream was trimmed past its MAXLEN, or expired and began again)."""

    def __init__(self, job_id: str, expected: int, got: int) -> None:
        super().__init__(job_id, f"event stream of job {job_id} lost events: expected #{expected}, got #{got}")
        self.expected = expected
        self.got = got


class ProviderError(RouterJobsError):
    """A provider call failed. Subclasses say what the broker should do about it.

    Attributes:
      error_type: stable snake_case name stored in results (``rate_limited`` …).
      retryable: whether another attempt (maybe on another key) can succeed.
      key_fault: whether the key itself is to blame (cooldown / invalid / exhausted).
      status: the HTTP status when there was one.
      retry_after: seconds the provider asked us to wait, when it said.
    """

    error_type = "provider_error"
    retryable = False
    key_fault = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class ProviderRateLimited(ProviderError):
    """429 for requests or tokens: cool the key down for ``retry_after`` and try again."""

    error_type = "rate_limited"
    retryable = True
    key_fault = True

    def __init__(self, message: str, *, kind: str = "requests", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.kind = kind


class QuotaExhausted(ProviderError):
    """Quota, credit or a daily limit is gone; the key is unusable until ``reset_at`` (epoch s)."""

    error_type = "quota_exhausted"
    retryable = True
    key_fault = True

    def __init__(self, message: str, *, reset_at: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reset_at = reset_at


class KeyInvalid(ProviderError):
    """The key was refused (401/403, API_KEY_INVALID): out of rotation until fixed."""

    error_type = "key_invalid"
    retryable = True
    key_fault = True


class RequestTooLarge(ProviderError):
    """The request can never fit (context length or per-request token cap): fail, no retry."""

    error_type = "request_too_large"


class BadRequest(ProviderError):
    """The provider refused the request as malformed: fail the job with the reason."""

    error_type = "bad_request"


class ContentBlocked(ProviderError):
    """The provider blocked the prompt or the answer for safety reasons."""

    error_type = "content_blocked"


class ProviderOverloaded(ProviderError):
    """The provider is overloaded (Anthropic 529, Gemini 503): retry with backoff."""

    error_type = "overloaded"
    retryable = True


class TransientProviderError(ProviderError):
    """5xx, timeouts and connection errors: retry a bounded number of times."""

    error_type = "transient"
    retryable = True
