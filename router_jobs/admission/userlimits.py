"""Submit limits: a token bucket per user and one global bucket, checked in one Lua step.

Rates are per minute and the burst is the bucket's size (``USER_RPM_DEFAULT``,
``USER_BURST_DEFAULT``, ``GLOBAL_RPM_MAX``, ``GLOBAL_BURST_MAX``). A job is admitted only
when both the user's bucket and the global bucket hold ``cost`` tokens; then both are charged
in the same atomic step, and when either refuses neither is charged. The script reads the
server clock (``TIME``), so producers on many machines agree.

Per-user overrides live in Redis (``set_user_limit``) so every producer sees them at once.

Cluster note: the global bucket, every user bucket and the overrides share the hash tag
``{limits}`` (one slot), because one script touches the user's bucket and the global one
together. That slot takes every submit's check; at the rates submit limits are meant for
(thousands per second) a single slot is far from its ceiling.

These buckets allow ``burst`` at once and then ``rpm`` per minute, so within one rolling
minute up to ``burst + rpm`` submissions pass. They shape producers; the exact provider limits
are the key pool's sliding windows, not these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis

from router_jobs.backend.ops import Op, run
from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.errors import JobValidationError, SubmitRateLimited
from router_jobs.settings import Settings


@dataclass(frozen=True)
class Decision:
    """What the bucket script said: admitted, or the wait and which bucket refused."""

    admitted: bool
    retry_after: float
    scope: str  # "" when admitted, else "user" or "global"
    server_time: float  # epoch seconds of the decision, by the Redis clock
    global_tokens: float
    user_tokens: float | None
    user_rpm: float | None
    user_burst: float | None

class AdmissionScripts(ScriptSet):
    """The Lua scripts in ``admission/lua/``."""

    token_bucket = lua("token_bucket")



def _check_user(user_id: str) -> str:
    if not user_id or len(user_id) > 200 or any(c.isspace() for c in user_id):
        raise JobValidationError("user_id", "must be a non-empty string of at most 200 characters, no whitespace")
    return user_id


def _num(raw: Any) -> float:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return math.inf if text == "inf" else float(text)


class UserLimiter:
    """Per-user and global token buckets in Redis."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, settings: Settings) -> None:
        self.client = client
        self.schema = schema
        self.user_rpm = float(settings.user_rpm_default)
        self.user_burst = float(settings.user_burst_default)
        self.global_rpm = float(settings.global_rpm_max)
        self.global_burst = float(settings.global_burst_max)
        self._scripts = AdmissionScripts(client)

    def decide(self, user_id: str | None, cost: float = 1, *, take: bool = True) -> Decision:
        """Run the bucket script; ``take=False`` only looks (nothing is charged)."""
        return run(self.client, self.decide_op(user_id, cost, take=take))

    def decide_op(self, user_id: str | None, cost: float = 1, *, take: bool = True) -> Op[Decision]:
        """:meth:`decide` as an op (for the asyncio client)."""
        if cost < 0:
            raise JobValidationError("cost", "must be >= 0")
        keys = [self.schema.limits_global(), self.schema.limits_overrides()]
        if user_id is not None:
            keys.append(self.schema.limits_user(_check_user(user_id)))
        args = [
            "take" if take else "peek", repr(float(cost)),
            repr(self.global_rpm), repr(self.global_burst),
            repr(self.user_rpm), repr(self.user_burst), user_id or "",
        ]
        has_user = user_id is not None

        def parse(out: Any) -> Decision:
            scope = out[2].decode() if isinstance(out[2], bytes) else str(out[2])
            user_tokens = _num(out[5])
            return Decision(
                admitted=int(out[0]) == 1,
                retry_after=_num(out[1]),
                scope=scope,
                server_time=_num(out[3]) / 1_000_000,
                global_tokens=_num(out[4]),
                user_tokens=user_tokens if has_user else None,
                user_rpm=_num(out[6]) if has_user else None,
                user_burst=_num(out[7]) if has_user else None,
            )

        return Op(lambda c: AdmissionScripts.on(c).token_bucket(keys=keys, args=args), parse)

    def acquire(self, user_id: str | None, cost: float = 1) -> float:
        """Take ``cost`` tokens from the user's and the global bucket at once.

        Returns 0.0 when admitted, else the seconds to wait before both buckets have room
        (``math.inf`` when ``cost`` is larger than a bucket's burst). Nothing is charged
        when refused. ``user_id=None`` checks the global bucket only.
        """
        decision = self.decide(user_id, cost)
        return 0.0 if decision.admitted else decision.retry_after

    def check(self, user_id: str | None, cost: float = 1) -> None:
        """Like :meth:`acquire`, but raise :class:`SubmitRateLimited` (scope, retry_after)."""
        decision = self.decide(user_id, cost)
        if not decision.admitted:
            scope = f"user {user_id}" if decision.scope == "user" else "global"
            raise SubmitRateLimited(scope, decision.retry_after)

    def check_rate_limit(self, user_id: str | None, cost: float = 1) -> bool:
        """Seed-style check: True (and charged) when admitted, False when refused."""
        return self.decide(user_id, cost).admitted

    def peek(self, user_id: str | None = None) -> dict[str, Any]:
        """For operators: the buckets' current levels and limits, charging nothing."""
        d = self.decide(user_id, 0, take=False)
        out: dict[str, Any] = {
            "global": {"tokens": d.global_tokens, "rpm": self.global_rpm, "burst": self.global_burst},
        }
        if user_id is not None:
            out["user"] = {
                "user_id": user_id, "tokens": d.user_tokens, "rpm": d.user_rpm, "burst": d.user_burst,
                "override": self.get_user_limit(user_id) is not None,
            }
        return out

    # -- per-user overrides
    def set_user_limit(self, user_id: str, rpm: float, burst: float) -> None:
        """Give ``user_id`` its own rate (per minute) and burst instead of the defaults."""
        if not (rpm > 0 and burst > 0 and math.isfinite(rpm) and math.isfinite(burst)):
            raise JobValidationError("rpm/burst", "must be positive finite numbers")
        self.client.hset(self.schema.limits_overrides(), _check_user(user_id), f"{float(rpm)!r}:{float(burst)!r}")

    def clear_user_limit(self, user_id: str) -> bool:
        """Back to the defaults; True when an override was removed."""
        return bool(self.client.hdel(self.schema.limits_overrides(), _check_user(user_id)))

    def get_user_limit(self, user_id: str) -> tuple[float, float] | None:
        """``(rpm, burst)`` of the user's override, or None."""
        raw = self.client.hget(self.schema.limits_overrides(), _check_user(user_id))
        if raw is None:
            return None
        rpm, burst = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(":")
        return float(rpm), float(burst)

    def user_limits(self) -> dict[str, tuple[float, float]]:
        """Every per-user override, by user id."""
        out: dict[str, tuple[float, float]] = {}
        for k, v in self.client.hgetall(self.schema.limits_overrides()).items():
            user = k.decode() if isinstance(k, bytes) else str(k)
            rpm, burst = (v.decode() if isinstance(v, bytes) else str(v)).split(":")
            out[user] = (float(rpm), float(burst))
        return out

    def reset(self, user_id: str | None = None) -> None:
        """Refill a user's bucket (or, with no user, the global one) to its burst."""
        key = self.schema.limits_user(_check_user(user_id)) if user_id else self.schema.limits_global()
        self.client.delete(key)
