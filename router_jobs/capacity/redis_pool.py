"""Exact multi-key capacity: :class:`RedisKeyPool`, the Redis implementation of ``KeyPool``.

How a reservation is decided (``lua/reserve.lua``, one atomic call)
-------------------------------------------------------------------
Every limit of a key or quota group is a **sliding-window log**: one entry per reservation,
stamped with the server's ``TIME`` and carrying its weights (1 request, input + max output
tokens, input tokens, output tokens). Limits of equal window length share one log (rpm, tpm,
itpm, otpm share the 60 s log; rpd and tpd the 86,400 s log). An entry stops counting
``window + margin_ms`` after its stamp, so no rolling window ever holds more than a limit
(``margin_ms`` also absorbs the gap between our stamp and the provider's receipt). A key in a
quota group is checked and charged in its own logs and in the group's.

Logs are **append-only in time**: a new entry is never stamped before the newest entry of the
logs it goes into. That makes "when could this request fit?" exact with one walk from the
oldest entry, and it makes the waiting line fair (see below).

Keys are found through ``free:<model>``, a sorted set per model scoring each key by the
earliest time it may have room for the smallest request (a lower bound; ``+inf`` for a key out
of rotation). A call reads the first few keys of each requested model in that order, checks
them exactly (trimming their logs lazily), and stops as soon as no further key can beat what
it has: so a call costs a handful of key checks whether the pool has 10 keys or 1,000. Each
key it checks is rescored; a granted key's score becomes ``now``, which sends it behind keys
idle for longer (load spreads). Models are tried in the order given: a later model is used
only when no key of an earlier one has room now.

Objectives pick among the keys with room: ``fairness`` (default; most headroom × weight among
the first 4 found), ``cost`` (cheapest for this request among up to 16, the cheapest keys by
list price looked at first), ``reliability`` (lowest error-rate EWMA among up to 16),
``latency`` (lowest latency EWMA among up to 16). For pools of up to 16 keys with room the
choice is exact.

Backpressure without a thundering herd: booked slots
-----------------------------------------------------
When no key has room, the call **books this reservation's own future slot**: the earliest
time some key can take it, given every entry already in the logs, including slots booked for
earlier waiters. The entry is written at that future time and the answer is
``Wait(wait_ms=slot - now)``. The next waiter therefore gets the next slot, and so on: waiting
jobs wake one by one, each at the moment its own room exists, instead of all at one shared
"try again at T". Retried with the **same reservation id**, the call turns the booking into a
grant with no further check of the limits (the room was reserved). A waiter that comes back
more than ``late_ms`` after its slot gives the slot up and is placed again (an entry must
never be stamped far before the request really goes out). A booking whose key went out of
rotation (cooldown, invalid, disabled) is given up the same way. ``release(reservation_id)``
gives a booked slot back (job cancelled, or its ``max_wait`` ran out).

Idempotency: a reservation id that was granted answers the same grant and charges nothing
more; one that is settled answers ``Wait(retryable=False)`` (a new attempt needs a new id).

``Wait(retryable=False, reason=...)`` means no candidate key could ever serve the request:
every key is disabled, invalid, excluded, or has a limit smaller than this one request.

Settling (``lua/settle.lua``)
-----------------------------
``settle(grant, usage)`` rewrites the reservation's entries with the real token usage at the
same stamp: a refund frees room at once; an overrun is charged and counted
(``overrun_tokens``/``overrun_calls`` in :meth:`RedisKeyPool.key_status`). ``settle(grant,
None)`` refunds every token but **keeps the request counted**: the HTTP request may have
reached the provider (a timeout, a dropped connection), and the provider's request counter
does not refund. Settling releases the concurrency lease; a lease not released (a worker
died) expires by itself ``timeout + lease_grace`` after the grant. Settling twice is a no-op.

Redis keys and Redis Cluster
----------------------------
Everything of one pool lives under one hash tag, ``<ns>:{pool:<name>}:...`` (names built by
:class:`~router_jobs.backend.schema.RedisSchema` ``pool_*`` methods), so every script's keys share one
Cluster slot; the scripts receive every key they touch in KEYS. Window logs of all keys and
groups share one lexicographic sorted set (``log``), their running sums one hash (``sums``):
that keeps a reserve call's KEYS list fixed while it examines any key of the pool. One pool
is therefore one slot; run several pools (``pool=``) to spread very large deployments.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from router_jobs.backend.ops import Op, Steps, drive
from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.capacity.config import KeyConfig, KeysFile
from router_jobs.capacity.health import SEP, KeyHealth, next_pacific_midnight_ms, server_ms
from router_jobs.capacity.keysync import KeysFileCheck, check_keys_file
from router_jobs.capacity.pool import Grant, ReserveRequest, Wait
from router_jobs.capacity.registry import RegistryCache, RegistryStore
from router_jobs.errors import KeyInvalid, ProviderError, ProviderRateLimited, QuotaExhausted
from router_jobs.models import Usage
from router_jobs.providers.base import RateLimitInfo

OBJECTIVES = ("fairness", "cost", "reliability", "latency")

class CapacityScripts(ScriptSet):
    """The Lua scripts in ``capacity/lua/``."""

    reserve = lua("reserve")
    settle = lua("settle")
    keystate = lua("keystate")
    keystats = lua("keystats")



class RedisKeyPool:
    """The key pool of one deployment, with Redis as the source of truth.

    ``keys``, when given, seeds the registry only if the pool has none yet (so that a worker
    started with a keys file never undoes an operator's live changes); use :meth:`load` or
    :meth:`reload` to replace the stored registry on purpose.
    """

    def __init__(
        self,
        client: redis.Redis,
        schema: RedisSchema,
        keys: KeysFile | None = None,
        *,
        pool: str = "default",
        margin_ms: int = 1000,
        late_ms: int = 500,
        lease_grace: float = 30.0,
        record_keep: float = 600.0,
        concurrency_poll_ms: int = 200,
        refresh_interval: float = 1.0,
        default_cooldown: float = 1.0,
        max_cooldown: float = 600.0,
        default_exhausted: float = 3600.0,
    ) -> None:
        self.client = client
        self.ks = schema
        self.pool = pool
        self.margin_ms = int(margin_ms)
        self.late_ms = int(late_ms)
        self.lease_grace_ms = int(lease_grace * 1000)
        self.record_keep_ms = int(record_keep * 1000)
        self.concurrency_poll_ms = int(concurrency_poll_ms)
        self.default_cooldown = default_cooldown
        self.max_cooldown = max_cooldown
        self.default_exhausted = default_exhausted
        self.scripts = CapacityScripts(client)
        self.store = RegistryStore(client, schema, pool)
        self.registry = RegistryCache(self.store, refresh_interval)
        self.health = KeyHealth(client, schema, pool, self.registry, self.scripts, margin_ms=self.margin_ms)
        if keys is not None and self.store.replace(keys, only_if_empty=True):
            self.registry.current(force=True)

    # ------------------------------------------------------------------ registry
    def load(self, keys_file: KeysFile) -> None:
        """Write ``keys_file`` as the pool's registry (replacing it; states and logs stay)."""
        self.store.replace(keys_file)
        self.registry.current(force=True)

    reload = load

    def check_file(self, path: str | Path, *, apply: bool = False, pool_idle: bool = False) -> KeysFileCheck:
        """Seed an empty registry from the keys file at ``path``, or report how the file differs
        from the registry; replace the registry with it when ``apply`` (or, with ``pool_idle``,
        when the file changed since last applied; see :mod:`router_jobs.capacity.keysync`)."""
        return check_keys_file(self, path, apply=apply, pool_idle=pool_idle)

    def add_key(self, cfg: KeyConfig) -> None:
        """Add a key (or replace the config of one with the same ``key_id``) at run time."""
        self.store.add(cfg, groups=self.registry.current(force=True).groups)
        self.registry.current(force=True)

    def remove_key(self, key_id: str) -> bool:
        """Take a key out of the pool at run time. False when it was not there."""
        done = self.store.remove(key_id)
        self.registry.current(force=True)
        return done

    def keys_file(self) -> KeysFile:
        """The registry as stored in Redis now."""
        return self.registry.keys_file()

    def key_ids(self) -> list[str]:
        """Every key id in the registry."""
        return sorted(self.registry.current().keys)

    def models(self) -> set[str]:
        """Every model that at least one key marked active in the registry serves."""
        return self.registry.current().served_models()

    def models_steps(self) -> Steps[set[str]]:
        """:meth:`models` as a rule (for the asyncio client)."""
        registry = yield from self.registry.refresh_steps()
        return registry.served_models()

    def providers_by_model(self) -> dict[str, set[str]]:
        """For every model an active key serves: the providers of those keys."""
        return self.registry.current().providers_by_model()

    def providers_steps(self) -> Steps[dict[str, set[str]]]:
        """:meth:`providers_by_model` as a rule (for the asyncio client)."""
        registry = yield from self.registry.refresh_steps()
        return registry.providers_by_model()

    # ------------------------------------------------------------------ reserve / settle
    def _ms_args(self) -> list[int]:
        return [self.margin_ms, self.lease_grace_ms, self.record_keep_ms, self.concurrency_poll_ms, self.late_ms]

    def reserve(self, request: ReserveRequest) -> Grant | Wait:
        """Reserve room for one request on one key, book a future slot, or refuse for good."""
        models = list(dict.fromkeys(request.models))
        if not models:
            return Wait(0, "no model requested", retryable=False)
        if request.objective not in OBJECTIVES:
            return Wait(0, f"unknown objective {request.objective!r}", retryable=False)
        ks, pool = self.ks, self.pool
        keys = [
            ks.pool_spec(pool), ks.pool_group_spec(pool), ks.pool_state(pool), ks.pool_log(pool),
            ks.pool_sums(pool), ks.pool_reservations(pool), ks.pool_reservation_expiry(pool),
            ks.pool_leases(pool), ks.pool_inflight(pool), ks.pool_stats(pool),
        ]
        for m in models:
            keys += [ks.pool_free(pool, m), ks.pool_cost(pool, m)]
        margin, grace, keep, cpoll, late = self._ms_args()
        args: list[Any] = [
            request.reservation_id, max(0, int(request.input_tokens)), max(0, int(request.max_output_tokens)),
            request.objective, margin, grace, keep, cpoll, late, SEP.join(sorted(request.exclude_keys)), *models,
        ]
        out = self.scripts.reserve(keys=keys, args=args)
        kind = _text(out[0])
        if kind == "w":
            return Wait(int(out[1]), _text(out[2]), retryable=bool(int(out[3])))
        key_id, model = _text(out[1]), _text(out[2])
        cfg = self.registry.key(key_id)
        if cfg is None:  # removed between the script and this line: give the room back
            self.release(request.reservation_id)
            return Wait(0, f"key {key_id} was removed", retryable=True)
        return Grant(
            key_id=key_id, provider=cfg.provider, model=model, reservation_id=request.reservation_id,
            input_tokens=int(request.input_tokens), output_tokens=int(request.max_output_tokens),
            base_url=cfg.base_url, timeout=cfg.timeout,
        )

    def _settle_steps(self, reservation_id: str, key_id: str | None, mode: str, usage: Usage | None,
                      sent_ago_ms: int | None = None) -> Steps[bool]:
        ks, pool = self.ks, self.pool
        if key_id is None:
            raw = yield Op(lambda c: c.hget(ks.pool_reservations(pool), reservation_id))
            if raw is None:
                return False
            key_id = _record_key(raw)
        registry = yield from self.registry.refresh_steps()
        cfg = registry.keys.get(key_id)
        if cfg is None:  # added since the last read
            registry = yield from self.registry.refresh_steps(force=True)
            cfg = registry.keys.get(key_id)
        keys = [
            ks.pool_reservations(pool), ks.pool_log(pool), ks.pool_sums(pool), ks.pool_leases(pool),
            ks.pool_inflight(pool), ks.pool_stats(pool),
        ]
        keys += [ks.pool_free(pool, m) for m in (cfg.served_models() if cfg else [])]
        args: list[Any] = [reservation_id, mode]
        if usage is not None:
            args += [max(0, usage.input_tokens), max(0, usage.output_tokens)]
        else:
            args += [0, 0]
        args.append(-1 if sent_ago_ms is None else max(0, int(sent_ago_ms)))
        settled = yield Op(lambda c: CapacityScripts.on(c).settle(keys=keys, args=args), bool)
        return settled

    def _settle(self, reservation_id: str, key_id: str | None, mode: str, usage: Usage | None,
                sent_ago_ms: int | None = None) -> bool:
        return drive(self.client, self._settle_steps(reservation_id, key_id, mode, usage, sent_ago_ms))

    def settle(self, grant: Grant, usage: Usage | None, *, sent_ago_ms: int | None = None) -> None:
        """Replace the estimate with ``usage`` (``None``: refund the tokens, keep the request).
        The request's window entries are stamped again with the moment it left (``sent_ago_ms``
        before now), or, when that is not known, with now (the provider had it by then)."""
        self._settle(grant.reservation_id, grant.key_id, "usage" if usage is not None else "refund", usage,
                     sent_ago_ms)

    def sent(self, grant: Grant) -> None:
        """The granted request has just left the worker: stamp its window entries now, while
        the call goes on (the provider counts it from about now; settling stamps it again)."""
        self._settle(grant.reservation_id, grant.key_id, "sent", None)

    def release(self, reservation_id: str) -> bool:
        """Give back a booked slot (or refund an unused grant's tokens). False if unknown/settled."""
        return self._settle(reservation_id, None, "release", None)

    def release_steps(self, reservation_id: str) -> Steps[bool]:
        """:meth:`release` as a rule (for the asyncio client)."""
        return self._settle_steps(reservation_id, None, "release", None)

    # ------------------------------------------------------------------ outcomes
    def report_success(self, grant: Grant, *, latency: float, rate_limit: RateLimitInfo | None) -> None:
        """Record a success (latency in seconds); provider headers saying 0 left mark the key
        full until their reset (they win over our log: the key may be used elsewhere too, and
        the provider's window may run a little behind ours). A booked slot that falls due
        just before such a reset waits for it (up to ``late_ms``) instead of losing its turn."""
        self.health.record(grant.key_id, ok=True, latency_ms=latency * 1000)
        if rate_limit is None:
            return
        until = 0.0
        if rate_limit.remaining_requests == 0:
            cfg = self.registry.current().keys.get(grant.key_id)
            if cfg is not None and cfg.bucket_refill_s(cfg.provider) is not None:
                # a bucket paced by its refill runs near empty by design: "0 requests left"
                # says only that, and its reset (when it is full again) is no moment to wait for
                rate_limit = RateLimitInfo(remaining_tokens=rate_limit.remaining_tokens,
                                           reset_tokens_at=rate_limit.reset_tokens_at)
        if rate_limit.remaining_requests == 0:
            until = max(until, rate_limit.reset_requests_at or 0.0)
        if rate_limit.remaining_tokens == 0:
            until = max(until, rate_limit.reset_tokens_at or 0.0)
        if (rate_limit.remaining_requests == 0 or rate_limit.remaining_tokens == 0) and until == 0.0:
            self.health.change("cooldown", grant.key_id, number=self.default_cooldown, reason="provider: 0 remaining")
        elif until > 0:
            self.health.change("full", grant.key_id, number=int(until * 1000), reason="provider: 0 remaining")

    def report_error(self, grant: Grant, error: ProviderError, *, secret_fingerprint: str | None = None) -> None:
        """Record a failure and change the key's state as the error class says."""
        key_id = grant.key_id
        if error.key_fault or error.retryable:
            self.health.record(key_id, ok=False, latency_ms=None)
        if isinstance(error, ProviderRateLimited):
            wait = error.retry_after if error.retry_after is not None else self.default_cooldown
            self.cooldown(key_id, min(max(wait, 0.05), self.max_cooldown), f"429 ({error.kind})")
        elif isinstance(error, QuotaExhausted):
            if error.reset_at is not None:
                until_ms = int(error.reset_at * 1000)
            elif grant.provider == "gemini":
                until_ms = next_pacific_midnight_ms(server_ms(self.client))
            else:
                until_ms = server_ms(self.client) + int(self.default_exhausted * 1000)
            self.health.change("exhausted", key_id, number=until_ms, reason=f"quota exhausted: {error.error_type}")
        elif isinstance(error, KeyInvalid):
            fp = secret_fingerprint or grant.secret_fingerprint or ""
            self.health.change("invalid", key_id, reason=f"key refused (status {error.status})", fingerprint=fp)

    # ------------------------------------------------------------------ operator
    def disable(self, key_id: str, reason: str = "disabled by operator") -> str:
        """Take a key out of rotation until :meth:`enable`."""
        return self.health.change("disable", key_id, reason=reason)

    def enable(self, key_id: str) -> str:
        """Undo :meth:`disable` (other states stay)."""
        return self.health.change("enable", key_id)

    def cooldown(self, key_id: str, seconds: float, reason: str = "cooldown by operator") -> str:
        """Keep a key out of rotation for ``seconds`` (server clock)."""
        return self.health.change("cooldown", key_id, number=seconds, reason=reason)

    def clear(self, key_id: str) -> str:
        """End a cooldown, exhausted, full or invalid state (not an operator's disable)."""
        return self.health.change("clear", key_id)

    def revalidate(self, fingerprints: Mapping[str, str]) -> list[str]:
        """Return to rotation every invalid key whose secret fingerprint changed; their ids."""
        back = []
        for key_id, fp in fingerprints.items():
            before = self.key_status(key_id)["state"] if key_id in self.registry.current().keys else None
            if before == "invalid" and self.health.change("revalidate", key_id, fingerprint=fp) == "active":
                back.append(key_id)
        return back

    def key_status(self, key_id: str) -> dict[str, Any]:
        """One key's state, limits used vs allowed, in-flight count and health figures."""
        return self.health.status(key_id)

    def key_statuses(self) -> list[dict[str, Any]]:
        """:meth:`key_status` of every key, sorted by key id."""
        return [self.health.status(k) for k in sorted(self.registry.current(force=True).keys)]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _record_key(raw: bytes | str) -> str:
    return str(json.loads(raw)["k"])


def wait_seconds(wait: Wait) -> float:
    """``wait.wait_ms`` in seconds, rounded up to the millisecond."""
    return math.ceil(wait.wait_ms) / 1000


__all__: Sequence[str] = ("OBJECTIVES", "RedisKeyPool", "wait_seconds")
