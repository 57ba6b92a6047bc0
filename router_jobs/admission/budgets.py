"""Spend per key, per user and per model per UTC day, and optional daily caps.

The worker records what each successful call cost (from the key's ``cost`` table, USD per
million input/output tokens, and the usage the provider reported). ``submit`` (or the worker,
before it calls) asks :meth:`Budgets.check` whether a job would break a user's or a key's
daily cap and gets :class:`~router_jobs.errors.BudgetExceeded` naming the scope if so.

Keys (hash tag ``{budget}``): one hash per UTC day, ``<ns>:{budget}:spend:<YYYY-MM-DD>``,
fields ``user:<id>``, ``key:<id>``, ``model:<name>`` and ``total``, expiring after
``retention_days``; and ``<ns>:{budget}:caps``, fields ``user:<id>`` / ``key:<id>`` -> USD.
The day is the Redis server's UTC day, so every process agrees on when it turns.

Caps are checked against what was recorded; jobs in flight at the same moment are not yet
recorded, so a cap can be overshot by at most the cost of the calls running concurrently.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import redis

from router_jobs.backend.ops import Op, Steps, drive, pipelined
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import Cost
from router_jobs.errors import BudgetExceeded, JobValidationError
from router_jobs.models import Usage

CAP_KINDS = ("user", "key")
SPEND_KINDS = ("user", "key", "model", "total")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def check_scope(scope: str, kinds: tuple[str, ...] = CAP_KINDS) -> str:
    """Validate ``"<kind>:<id>"`` (``total`` stands alone)."""
    kind, _, name = scope.partition(":")
    if scope == "total" and "total" in kinds:
        return scope
    if kind not in kinds or not name:
        raise JobValidationError("scope", f"must look like {' / '.join(k + ':<id>' for k in kinds if k != 'total')}")
    return scope


def cost_of(cost: Cost, usage: Usage) -> float:
    """USD of one call: the key's price table times the usage the provider reported."""
    return cost.of(usage.input_tokens, usage.output_tokens)


class Budgets:
    """Daily spend and caps in Redis."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, retention_days: int = 8) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be >= 1")
        self.client = client
        self.schema = schema
        self.retention_seconds = retention_days * 86400

    def today(self) -> str:
        """The current UTC day by the Redis server's clock, ``YYYY-MM-DD``."""
        sec, _ = self.client.time()
        return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d")

    # -- spend
    def record(self, key_id: str, model: str, user_id: str | None, cost_usd: float) -> None:
        """Add ``cost_usd`` to today's spend of the key, the model, the user and the total."""
        if not math.isfinite(cost_usd) or cost_usd < 0:
            raise JobValidationError("cost_usd", "must be a finite number >= 0")
        if cost_usd == 0:
            return
        key = self.schema.budget_spend(self.today())
        pipe = self.client.pipeline(transaction=True)
        fields = [f"key:{key_id}", f"model:{model}", "total"]
        if user_id:
            fields.append(f"user:{user_id}")
        for field in fields:
            pipe.hincrbyfloat(key, field, cost_usd)
        pipe.expire(key, self.retention_seconds)
        pipe.execute()

    def record_usage(self, cost: Cost, usage: Usage, *, key_id: str, model: str, user_id: str | None) -> float:
        """Price ``usage`` with the key's ``cost`` table, record it, return the USD."""
        usd = cost_of(cost, usage)
        self.record(key_id, model, user_id, usd)
        return usd

    def spend_today(self, scope: str) -> float:
        """USD spent today by ``user:<id>``, ``key:<id>``, ``model:<name>`` or ``total``."""
        return self.spend_on(self.today(), scope)

    def spend_on(self, day: str, scope: str) -> float:
        """USD spent on ``day`` (``YYYY-MM-DD``, UTC) by ``scope``."""
        raw = self.client.hget(self.schema.budget_spend(day), check_scope(scope, SPEND_KINDS))
        return float(raw) if raw is not None else 0.0

    # -- caps
    def set_cap(self, scope: str, usd: float) -> None:
        """Cap the daily spend of ``user:<id>`` or ``key:<id>`` at ``usd``."""
        if not math.isfinite(usd) or usd < 0:
            raise JobValidationError("usd", "must be a finite number >= 0")
        self.client.hset(self.schema.budget_caps(), check_scope(scope), repr(float(usd)))

    def clear_cap(self, scope: str) -> bool:
        """Remove a cap; True when there was one."""
        return bool(self.client.hdel(self.schema.budget_caps(), check_scope(scope)))

    def caps(self) -> dict[str, float]:
        """Every cap, by scope."""
        raw = self.client.hgetall(self.schema.budget_caps())
        return {_text(k): float(v) for k, v in raw.items()}

    def check(self, user_id: str | None, key_id: str | None = None, estimated_cost: float = 0.0) -> None:
        """Raise :class:`BudgetExceeded` when the user's or the key's cap is reached today or
        would be passed by ``estimated_cost`` more; return None otherwise."""
        drive(self.client, self.check_steps(user_id, key_id, estimated_cost))

    def check_steps(self, user_id: str | None, key_id: str | None = None,
                    estimated_cost: float = 0.0) -> Steps[None]:
        """:meth:`check` as a rule (for the asyncio client)."""
        scopes = [s for s in (f"user:{user_id}" if user_id else None, f"key:{key_id}" if key_id else None) if s]
        if not scopes:
            return
        day = yield Op(lambda c: c.time(), lambda t: datetime.fromtimestamp(t[0], UTC).strftime("%Y-%m-%d"))
        caps, spent = yield Op(lambda c: pipelined(c, lambda p: p.hmget(self.schema.budget_caps(), scopes),
                                                   lambda p: p.hmget(self.schema.budget_spend(day), scopes)))
        for scope, cap_raw, spent_raw in zip(scopes, caps, spent, strict=True):
            if cap_raw is None:
                continue
            cap = float(cap_raw)
            used = float(spent_raw) if spent_raw is not None else 0.0
            if used >= cap or used + max(estimated_cost, 0.0) > cap:
                raise BudgetExceeded(scope, cap, used)

    def remaining(self, scope: str) -> float | None:
        """USD left under ``scope``'s cap today (never negative); None when uncapped."""
        cap = self.client.hget(self.schema.budget_caps(), check_scope(scope))
        if cap is None:
            return None
        return max(float(cap) - self.spend_today(scope), 0.0)

    # -- operators
    def report(self, day: str | None = None) -> dict[str, Any]:
        """Everything spent on ``day`` (default today) and the caps, for ``routerctl``::

            {"day": "2025-01-31", "total": 1.23, "users": {...}, "keys": {...},
             "models": {...}, "caps": {"user:alice": 5.0, ...}}
        """
        day = day or self.today()
        out: dict[str, Any] = {"day": day, "total": 0.0, "users": {}, "keys": {}, "models": {}}
        for raw_field, raw_value in self.client.hgetall(self.schema.budget_spend(day)).items():
            field, value = _text(raw_field), float(raw_value)
            if field == "total":
                out["total"] = value
                continue
            kind, _, name = field.partition(":")
            bucket = {"user": "users", "key": "keys", "model": "models"}.get(kind)
            if bucket:
                out[bucket][name] = value
        out["caps"] = self.caps()
        return out
