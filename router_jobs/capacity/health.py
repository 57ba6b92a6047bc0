"""Key health: states (active, disabled, cooldown, exhausted, full, invalid), outcome
statistics, and the operator's one-screen status of a key.

States live in the pool's ``state`` hash and are changed only by ``keystate.lua``, which
reads the server clock and moves the key in the per-model free indexes at the same time:

==========  ==================================================  =======================
state       set by                                              ends
==========  ==================================================  =======================
disabled    operator (``disable``), or ``active: false`` in the  ``enable``
            keys file
cooldown    a 429 (its Retry-After) or the operator             its ``until``, ``clear``
exhausted   quota / daily limit gone (provider's reset time)     its ``until``, ``clear``
full        provider headers said 0 remaining until a reset      its ``until``, ``clear``
invalid     401/403; stores the fingerprint of the secret used   ``clear``, or
                                                                 ``revalidate`` with a
                                                                 different fingerprint
==========  ==================================================  =======================

Outcomes go through ``keystats.lua``: error-rate and latency EWMAs (read by reserve.lua for
the ``reliability`` and ``latency`` objectives), per-minute success/error counters and the
last latency samples (for p50 in :meth:`KeyHealth.status`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import KeyConfig
from router_jobs.capacity.registry import RegistryCache, compile_limits, group_provider

if TYPE_CHECKING:
    from router_jobs.capacity.redis_pool import CapacityScripts

SEP = "\x1f"
PACIFIC = ZoneInfo("America/Los_Angeles")
_UNIT_NAMES = ("requests", "tokens", "input_tokens", "output_tokens")


def server_ms(client: redis.Redis) -> int:
    """The Redis server's clock in epoch milliseconds."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def next_pacific_midnight_ms(now_ms: int) -> int:
    """Epoch ms of the next midnight in US/Pacific after ``now_ms`` (Gemini's daily reset)."""
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz=PACIFIC)
    tomorrow = (now + dt.timedelta(days=1)).date()
    midnight = dt.datetime.combine(tomorrow, dt.time(0, 0), tzinfo=PACIFIC)
    return int(midnight.timestamp() * 1000)


class KeyHealth:
    """State changes, outcome statistics and status reads of one pool's keys."""

    def __init__(
        self,
        client: redis.Redis,
        schema: RedisSchema,
        pool: str,
        cache: RegistryCache,
        scripts: CapacityScripts,
        *,
        ewma_alpha: float = 0.1,
        latency_samples: int = 200,
        margin_ms: int = 0,
    ) -> None:
        self.client = client
        self.ks = schema
        self.pool = pool
        self.cache = cache
        self.scripts = scripts
        self.ewma_alpha = ewma_alpha
        self.latency_samples = latency_samples
        self.margin_ms = margin_ms

    def change(self, op: str, key_id: str, *, number: float = 0, reason: str = "", fingerprint: str = "") -> str:
        """Run one ``keystate.lua`` operation; returns the key's state afterwards."""
        keys = [self.ks.pool_state(self.pool)]
        keys += [self.ks.pool_free(self.pool, m) for m in self.cache.models_of(key_id)]
        out = self.scripts.keystate(keys=keys, args=[op, key_id, repr(float(number)), reason, fingerprint])
        return out.decode() if isinstance(out, bytes) else str(out)

    def record(self, key_id: str, *, ok: bool, latency_ms: float | None) -> None:
        """Record one call's outcome on ``key_id``."""
        keys = [
            self.ks.pool_stats(self.pool),
            self.ks.key_counters(self.pool, key_id),
            self.ks.key_latency(self.pool, key_id),
        ]
        lat = -1.0 if latency_ms is None else max(0.0, latency_ms)
        self.scripts.keystats(
            keys=keys,
            args=[key_id, 1 if ok else 0, repr(lat), repr(self.ewma_alpha), self.latency_samples, 10],
        )

    # -- status
    def status(self, key_id: str) -> dict[str, Any]:
        """Everything an operator wants to know about one key (no secret, ever)."""
        cfg = self.cache.key(key_id)
        if cfg is None:
            raise KeyError(key_id)
        ks, pool = self.ks, self.pool
        now = server_ms(self.client)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(ks.pool_state(pool), key_id)
        pipe.hget(ks.pool_inflight(pool), f"k:{key_id}")
        pipe.hmget(ks.pool_stats(pool), [f"{key_id}{SEP}{s}" for s in ("ee", "le", "ovt", "ovn")])
        pipe.hgetall(ks.key_counters(pool, key_id))
        pipe.lrange(ks.key_latency(pool, key_id), 0, -1)
        raw_state, inflight, stats, counters, samples = pipe.execute()
        state, reason, until = self._state(cfg, raw_state, now)
        minute = now // 60000
        recent = {"ok": 0, "er": 0}
        for f, v in counters.items():
            kind, m = f.decode().split(":", 1)
            if int(m) > minute - 5:
                recent[kind] = recent.get(kind, 0) + int(v)
        lat = [float(x) for x in samples]
        ee, le, ovt, ovn = (None if v is None else float(v) for v in stats)
        limits = self._usage(f"k:{key_id}", compile_limits(cfg, cfg.provider), now)
        group = None
        if cfg.quota_group:
            grp = self.cache.current().groups.get(cfg.quota_group)
            if grp is not None:
                group = {
                    "name": grp.name,
                    "limits": self._usage(f"g:{grp.name}", compile_limits(
                        grp, group_provider(grp.name, self.cache.current().keys.values())), now),
                    "in_flight": int(self.client.hget(ks.pool_inflight(pool), f"g:{grp.name}") or 0),
                    "max_concurrency": grp.max_concurrency,
                }
        return {
            "key_id": key_id,
            "provider": cfg.provider,
            "models": cfg.served_models(),
            "base_url": cfg.base_url,
            "quota_group": cfg.quota_group,
            "state": state,
            "reason": reason,
            "until": until / 1000 if until else None,
            "limits": limits,
            "group": group,
            "in_flight": int(inflight or 0),
            "max_concurrency": cfg.max_concurrency,
            "successes_5m": recent["ok"],
            "errors_5m": recent["er"],
            "error_rate_ewma": ee,
            "latency_ewma_ms": le,
            "latency_p50_ms": statistics.median(lat) if lat else None,
            "overrun_tokens": int(ovt or 0),
            "overrun_calls": int(ovn or 0),
            "cost": cfg.cost.model_dump(),
            "weight": cfg.weight,
        }

    @staticmethod
    def _state(cfg: KeyConfig, raw: bytes | None, now: int) -> tuple[str, str | None, int | None]:
        if not cfg.active:
            return "disabled", "active is false in the keys file", None
        if raw is None:
            return "active", None, None
        st = json.loads(raw)
        until = st.get("u")
        if until is not None and until <= now:
            return "active", None, None
        return st["s"], st.get("r") or None, until

    def _usage(self, scope: str, compiled: list[list[int]], now: int) -> list[dict[str, Any]]:
        """Used-now vs limit for every window of a scope, read from the log (server clock)."""
        out: list[dict[str, Any]] = []
        log = self.ks.pool_log(self.pool)
        for row in compiled:
            ms = row[0]
            prefix = f"{scope}{SEP}{ms}{SEP}"
            margin = min(self.margin_ms, max(5, ms // 40))  # as windowlib.lua's wmargin
            lo = "[" + prefix + f"{max(0, now - ms - margin + 1):015d}"
            entries = self.client.zrangebylex(log, lo, "(" + prefix + "\xff")
            used = [0, 0, 0, 0]
            booked = [0, 0, 0, 0]
            for m in entries:
                text = m.decode() if isinstance(m, bytes) else str(m)
                ts = int(text[len(prefix) : len(prefix) + 15])
                weights = [int(x) for x in text.rsplit(SEP, 1)[1].split(",")]
                target = booked if ts > now else used
                for u in range(4):
                    target[u] += weights[u]
            paced = len(row) > 5 and row[5] == 1 and row[1] > 1 and (row[1] - 1) * ms / row[1] >= self.margin_ms
            if paced:
                # a bucket's request count: what it has still to refill (lua/bucketlib.lua's T),
                # less the admissions booked ahead (shown as booked)
                sums = (self.client.hget(self.ks.pool_sums(self.pool), prefix) or b"").split()
                tat = float(sums[5]) if len(sums) > 5 else 0.0
                owed = math.ceil(max(0.0, tat - now) * row[1] / ms - 1e-9)
                used[0] = max(0, min(row[1], owed - booked[0]))
            for u, name in enumerate(_UNIT_NAMES):
                if row[u + 1]:
                    out.append(
                        {"unit": name, "seconds": ms / 1000, "limit": row[u + 1], "used": used[u], "booked": booked[u]}
                    )
                    if u == 0 and paced:
                        out[-1]["mode"] = "bucket"
        return out
