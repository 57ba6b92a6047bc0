"""The key pool's interface: reserve capacity on a key before a call, settle it after.

The worker asks ``reserve`` for room for one request and its token estimate among the keys
that serve the job's models. The answer is either a :class:`Grant` (use this key now) or a
:class:`Wait` (no key has room; try again in exactly ``wait_ms``). After the call the worker
``settle``-s the grant with the usage the provider reported and reports the outcome so that
key health (cooldowns, invalid keys, exhausted quotas, error rates) stays true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router_jobs.errors import ProviderError
from router_jobs.models import Usage
from router_jobs.providers.base import RateLimitInfo


@dataclass(frozen=True)
class ReserveRequest:
    """What one attempt of a job needs from the pool."""

    reservation_id: str
    models: Sequence[str]
    input_tokens: int
    max_output_tokens: int
    objective: str = "fairness"
    exclude_keys: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Grant:
    """Room was reserved on ``key_id`` for ``model``; the call may go ahead now."""

    key_id: str
    provider: str
    model: str
    reservation_id: str
    input_tokens: int
    output_tokens: int
    base_url: str | None = None
    timeout: float = 120.0
    #: fingerprint (e.g. a short hash) of the secret used for the call, set by the worker with
    #: ``dataclasses.replace`` so that a key marked invalid can come back when its secret changes
    secret_fingerprint: str | None = None
    #: seconds to wait before starting the call: the scheduler admitted the job this much
    #: ahead of the moment its room exists (the reservation is stamped with that moment)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Wait:
    """No key has room now. ``wait_ms`` is this job's own time to try again.

    ``retryable`` is False when no key could ever serve the request (every candidate key is
    invalid or disabled, or the request is larger than any key's limit): the job fails with
    ``reason`` instead of waiting.
    """

    wait_ms: int
    reason: str
    retryable: bool = True


class KeyPool(Protocol):
    """What the worker needs from the key pool."""

    def models(self) -> set[str]:
        """Every model that at least one active key serves."""
        ...

    def reserve(self, request: ReserveRequest) -> Grant | Wait:
        """Atomically reserve room for one request on one key, or say how long to wait."""
        ...

    def settle(self, grant: Grant, usage: Usage | None, *, sent_ago_ms: int | None = None) -> None:
        """Replace the reservation's estimate with real usage (``None``: the call never
        happened or the provider did not count it; refund the tokens). ``sent_ago_ms``: how
        long ago the request left (the provider counted it then, not when it answered)."""
        ...

    def sent(self, grant: Grant) -> None:
        """The granted request has just left: its window entries are stamped with this moment."""
        ...

    def report_success(self, grant: Grant, *, latency: float, rate_limit: RateLimitInfo | None) -> None:
        """Record a successful call (latency EWMA, provider-reported remaining room)."""
        ...

    def report_error(self, grant: Grant, error: ProviderError, *, secret_fingerprint: str | None = None) -> None:
        """Record a failed call and change the key's state as the error class says.

        ``secret_fingerprint`` (a non-reversible digest of the secret used) lets an invalid
        key come back once its secret changes (see ``revalidate``)."""
        ...

    def release(self, reservation_id: str) -> bool:
        """Give back a booked slot the job will not use (it ended or changed its plan)."""
        ...

    def revalidate(self, fingerprints: Mapping[str, str]) -> list[str]:
        """Put invalid keys whose secret fingerprint changed back in rotation; their ids."""
        ...

    def key_ids(self) -> list[str]:
        """Every key id in the registry."""
        ...
