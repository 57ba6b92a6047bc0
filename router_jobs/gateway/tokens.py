"""Virtual keys: bearer tokens the gateway accepts, stored hashed in Redis.

A token (``rjk-`` + 43 random URL-safe characters) is shown once, when it is created; Redis
keeps only its SHA-256 (a token has 256 bits of entropy, so a plain hash cannot be reversed
by guessing) and the record it maps to: the user (and team) it acts for, the models it may
use (empty: all), the priority class of its jobs, and its user's rate limit and daily budget.
The limit and the budget are the library's own: the user's token bucket override
(:class:`~router_jobs.admission.userlimits.UserLimiter`) and daily cap
(:class:`~router_jobs.admission.budgets.Budgets`), so a 429 from the gateway means only the
caller's own limit or budget.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import redis
from pydantic import BaseModel, Field

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.schema import RedisSchema
from router_jobs.errors import JobValidationError
from router_jobs.models import Priority

TOKEN_PREFIX = "rjk-"


class VirtualKey(BaseModel):
    """What a token stands for. Never holds the token itself."""

    token_id: str
    name: str = ""
    user_id: str
    team: str | None = None
    models: list[str] = Field(default_factory=list)  # empty: every model of the pool
    priority: Priority = Priority.interactive
    rpm: float | None = None
    burst: float | None = None
    daily_budget: float | None = None
    created_at: float = Field(default_factory=time.time)
    revoked_at: float | None = None

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return not self.models or model in self.models


def token_hash(token: str) -> str:
    """The SHA-256 under which a token's record is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create, list, revoke and look up virtual keys."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, limiter: UserLimiter, budgets: Budgets) -> None:
        self.client = client
        self.schema = schema
        self.limiter = limiter
        self.budgets = budgets

    def create(self, user_id: str, *, name: str = "", team: str | None = None, models: list[str] | None = None,
               priority: str = "interactive", rpm: float | None = None, burst: float | None = None,
               daily_budget: float | None = None) -> tuple[str, VirtualKey]:
        """Issue a token; returns ``(token, record)``. The token is not stored: show it once."""
        if burst is not None and rpm is None:
            raise JobValidationError("rpm", "give rpm with burst")
        if rpm is not None and burst is None:
            burst = rpm
        if daily_budget is not None and daily_budget < 0:
            raise JobValidationError("daily_budget", "must be >= 0")
        key = VirtualKey(token_id="tok_" + uuid.uuid4().hex[:16], name=name, user_id=user_id, team=team,
                         models=list(models or []), priority=Priority(priority), rpm=rpm, burst=burst,
                         daily_budget=daily_budget)
        if rpm is not None and burst is not None:
            self.limiter.set_user_limit(user_id, rpm, burst)
        if daily_budget is not None:
            self.budgets.set_cap(f"user:{user_id}", daily_budget)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.schema.gw_tokens(), digest, key.model_dump_json())
        pipe.hset(self.schema.gw_token_ids(), key.token_id, digest)
        pipe.execute()
        return token, key

    def authenticate(self, token: str) -> VirtualKey | None:
        """The live record of ``token``; None when unknown or revoked."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        raw = self.client.hget(self.schema.gw_tokens(), token_hash(token))
        if raw is None:
            return None
        key = VirtualKey.model_validate_json(raw)
        return None if key.revoked_at is not None else key

    def all(self) -> list[VirtualKey]:
        """Every virtual key (revoked ones too), oldest first."""
        out = [VirtualKey.model_validate_json(v) for v in self.client.hgetall(self.schema.gw_tokens()).values()]
        return sorted(out, key=lambda k: k.created_at)

    def get(self, token_id: str) -> VirtualKey | None:
        """The record of one token id."""
        digest = self.client.hget(self.schema.gw_token_ids(), token_id)
        if digest is None:
            return None
        raw = self.client.hget(self.schema.gw_tokens(), digest)
        return None if raw is None else VirtualKey.model_validate_json(raw)

    def revoke(self, token_id: str) -> bool:
        """Refuse the token from now on (its record stays, marked revoked). False if unknown
        or already revoked."""
        digest = self.client.hget(self.schema.gw_token_ids(), token_id)
        if digest is None:
            return False
        raw = self.client.hget(self.schema.gw_tokens(), digest)
        if raw is None:
            return False
        key = VirtualKey.model_validate_json(raw)
        if key.revoked_at is not None:
            return False
        key.revoked_at = time.time()
        self.client.hset(self.schema.gw_tokens(), digest, key.model_dump_json())
        return True


def public_record(key: VirtualKey) -> dict[str, Any]:
    """A virtual key as listings show it (no token, no hash)."""
    return key.model_dump(mode="json")
