"""The key pool as a scheduler: wait lines in the pool, admission at the moment room exists.

A job that cannot run at once does not hold a future calendar slot it may miss; it waits
*in the pool*, in the line of its model (``line:<model>``, a lexicographic sorted set under
the pool's hash tag), ordered by

1. priority class: every waiting interactive job before any waiting batch job;
2. among batch jobs, a weighted-fair virtual finish tag per fairness key (``user_id``, else
   ``metadata.tenant``, else ``metadata.batch_id``): a 100-line batch submitted after a
   100,000-line one is interleaved with it instead of waiting behind it;
3. arrival.

Admission (``lua/admit.lua``, one atomic step) takes heads of line in that order while some
candidate key has room under every limit, writes the grant (a reservation stamped with the
server's ``TIME``, a concurrency lease) and XADDs the job's message to its queue stream. It
runs wherever someone gets there first: at submit (an idle pool admits at once), in every
worker's consumer loop when the next room is due (the script answers that time), and right
after each settle. The step is idempotent; a waiting job is delivered once, when admitted.

Admission looks ``lead_ms`` ahead (``ROUTER_POOL_LEAD_MS``): a job whose room exists within
that time is admitted now, its reservation stamped with the moment the room exists, and the
worker starts the call then, so delivery latency does not make every window start late.

A worker that receives an admitted job claims it (``lua/claim.lua``): a claim before the
stamp keeps it; a later one is stamped again with the moment the call can start, if the key
has room within the lead. The moment the request leaves the worker, the entries are stamped
once more (``providers/sentclock.py``, ``RedisKeyPool.sent``), so the gap between our stamp
and the provider's arrival is the network's transit and the margin on every window can be
small (``ROUTER_POOL_MARGIN_MS``, at most 1/40 of a window). A claim that finds no room (it
came later than the window allowed, the key went into cooldown) puts the job back at the
head of its class in line; nothing is charged twice.

Interactive isolation: batch admission sees every limit of a key's long windows (over 1 s)
shrunk by a held share, so room for interactive work exists even while a batch saturates the
pool. The share adapts to demand: while interactive jobs have arrived within
``interactive_hold_ms``, twice their recent arrival rate (a count decayed with a half-life of
a quarter of the hold, corrected for how young the burst is) over the pool's request capacity,
at least ``interactive_share_min`` and at most ``interactive_share``. A batch burst does not
dilute it. Between bursts ``interactive_share_min`` stays held as a standing reserve as
``interactive_reserve`` says: ``auto`` within 30 hold times of an interactive arrival (a pool
that serves no interactive work holds nothing, so a batch runs at the pool's full limit),
``always`` from the start (the first chat turn beside a running batch finds room), ``off``
never (:meth:`Scheduler.held_share`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_jobs.backend.ops import Op, Steps, drive
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.capacity.config import KeyConfig
from router_jobs.capacity.pool import Grant
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.models import JobSpec
from router_jobs.settings import Settings

#: Fairness key used when a job names none.
SHARED = "-"


class SchedulerScripts(ScriptSet):
    """The scheduler's Lua scripts (``capacity/lua/admit.lua``, ``claim.lua``)."""

    admit = lua("admit")
    claim = lua("claim")
    announce = lua("announce")


@dataclass(frozen=True)
class Demand:
    """What a waiting job needs: everything admission decides on, and the message to send."""

    job_id: str
    queue: str  # "interactive" | "batch"
    models: Sequence[str]  # preference order; the first is the job's line
    input_tokens: int
    max_output_tokens: int
    message: bytes  # the encoded broker message XADDed at admission
    objective: str = "fairness"
    fairness_key: str = SHARED
    weight: float = 1.0
    max_wait_ms: int = -1  # fallbacks only after waiting this long (-1: at once)
    deadline_ms: int = -1  # epoch ms; past it the job is handed over to expire
    excluded: frozenset[str] = field(default_factory=frozenset)
    arrival_ms: int | None = None  # keep the original arrival when a job comes back

    @classmethod
    def for_spec(cls, job_id: str, queue: str, spec: JobSpec, input_tokens: int, message: bytes, *,
                 excluded: frozenset[str] = frozenset(), arrival_ms: int | None = None,
                 weights: Mapping[str, float] | None = None) -> Demand:
        """The demand of a job from its spec; ``weights`` maps fairness keys to their weight
        (``ROUTER_FAIRNESS_WEIGHTS``; a key not named weighs 1)."""
        key = fairness_key(spec)
        return cls(
            job_id=job_id, queue=queue, models=spec.models(), input_tokens=input_tokens,
            max_output_tokens=spec.max_output_tokens, message=message, objective=spec.objective,
            fairness_key=key, weight=(weights or {}).get(key, 1.0),
            max_wait_ms=-1 if spec.max_wait is None else int(spec.max_wait * 1000),
            deadline_ms=-1 if spec.deadline is None else int(spec.deadline * 1000), excluded=excluded,
            arrival_ms=arrival_ms,
        )

    def encode(self) -> str:
        d: dict[str, Any] = {
            "id": self.job_id, "q": self.queue, "c": 0 if self.queue == "interactive" else 1,
            "f": self.fairness_key or SHARED, "wt": self.weight, "l": self.models[0], "m": list(self.models),
            "mw": self.max_wait_ms, "ni": max(0, self.input_tokens), "no": max(0, self.max_output_tokens),
            "o": self.objective, "x": sorted(self.excluded), "dl": self.deadline_ms, "msg": self.message.decode(),
        }
        if self.arrival_ms is not None:
            d["at"] = self.arrival_ms
        return json.dumps(d, separators=(",", ":"))


@dataclass(frozen=True)
class Admission:
    """What one admission step did: jobs admitted, ms until the next one may succeed
    (-1: nothing waits), jobs still in line (-1: not counted, the step was not due)."""

    admitted: int
    next_ms: int
    waiting: int


@dataclass(frozen=True)
class Refused:
    """No key could ever serve the job (all disabled/invalid/excluded, or it exceeds a limit)."""

    reason: str


@dataclass(frozen=True)
class Lost:
    """The admission's room was gone when the worker started (late, key cooled down)."""

    reason: str


@dataclass(frozen=True)
class Position:
    """A waiting job's place in its line (0: next) and estimated start (epoch s)."""

    model: str
    place: int
    eta: float


class Scheduler:
    """Wait lines and admission over one :class:`RedisKeyPool` (same Redis, same pool tag)."""

    def __init__(self, pool: RedisKeyPool, *, interactive_share: float = 0.2, interactive_share_min: float = 0.02,
                 interactive_hold_ms: int = 120_000, interactive_reserve: str = "auto", max_admit: int = 256,
                 lead_ms: int = 250, fairness_weights: Mapping[str, float] | None = None) -> None:
        self.pool = pool
        self.lead_ms = max(0, int(lead_ms))
        self.client = pool.client
        self.ks = pool.ks
        self.interactive_share = min(max(interactive_share, 0.0), 0.9)
        self.interactive_share_min = min(max(interactive_share_min, 0.0), self.interactive_share)
        #: fairness key -> weight of its batch jobs (callers pass it to :meth:`Demand.for_spec`)
        self.fairness_weights: dict[str, float] = dict(fairness_weights or {})
        self.interactive_hold_ms = int(interactive_hold_ms)
        if interactive_reserve not in ("auto", "always", "off"):
            raise ValueError(f"interactive_reserve must be auto, always or off, not {interactive_reserve!r}")
        self.interactive_reserve = interactive_reserve
        self.max_admit = max(1, int(max_admit))
        self.scripts = SchedulerScripts(pool.client)

    @classmethod
    def from_settings(cls, pool: RedisKeyPool, settings: Settings) -> Scheduler:
        """The scheduler as configured by the environment (``ROUTER_INTERACTIVE_*``,
        ``ROUTER_POOL_LEAD_MS``, ``ROUTER_FAIRNESS_WEIGHTS``)."""
        return cls(pool, interactive_share=settings.interactive_share,
                   interactive_share_min=settings.interactive_share_min,
                   interactive_hold_ms=int(settings.interactive_hold_s * 1000),
                   interactive_reserve=settings.interactive_reserve, lead_ms=settings.pool_lead_ms,
                   fairness_weights=settings.fairness_weights)

    # -- key names ---------------------------------------------------------------------------
    def _part(self, part: str) -> str:
        return self.ks.pool_part(self.pool.pool, part)

    def joining_key(self) -> str:
        """Held jobs whose producer has not put them in line yet (see :mod:`.joining`)."""
        return self.ks.pool_joining(self.pool.pool)

    def line_key(self, model: str) -> str:
        """The wait line of ``model``."""
        return self._part(f"line:{model}")

    def lane_models(self) -> list[str]:
        """Every model some key of the registry serves (each has a line)."""
        keys = self.pool.registry.current().keys.values()
        return sorted({m for k in keys for m in k.served_models()})

    def _base_keys(self) -> list[str]:
        ks, p = self.ks, self.pool.pool
        return [
            ks.pool_spec(p), ks.pool_group_spec(p), ks.pool_state(p), ks.pool_log(p), ks.pool_sums(p),
            ks.pool_reservations(p), ks.pool_reservation_expiry(p), ks.pool_leases(p), ks.pool_inflight(p),
            ks.pool_stats(p),
        ]

    def _ms(self) -> list[int]:
        p = self.pool
        return [p.margin_ms, p.lease_grace_ms, p.record_keep_ms, p.concurrency_poll_ms]

    # -- admission ---------------------------------------------------------------------------
    def _run(self, op: str, payload: list[str]) -> Admission:
        return drive(self.client, self._run_steps(op, payload))

    def _run_steps(self, op: str, payload: list[str]) -> Steps[Admission]:
        registry = yield from self.pool.registry.refresh_steps()
        models = sorted({m for k in registry.keys.values() for m in k.served_models()})
        keys = self._base_keys() + [
            self._part("demand"), self._part("fair"), self._part("grants"), self._part("sched"),
            self.ks.stream("interactive"), self.ks.stream("batch"),
        ]
        for m in models:
            keys += [self.ks.pool_free(self.pool.pool, m), self.line_key(m)]
        keys.append(self.joining_key())
        args: list[Any] = [op, *self._ms(), self.interactive_share, self.interactive_hold_ms, self.max_admit,
                           self.lead_ms, self.interactive_share_min, self.interactive_reserve,
                           _capacity(registry.keys.values()), len(models), *models, *payload]
        out = yield Op(lambda c: SchedulerScripts.on(c).admit(keys=keys, args=args),
                       lambda r: Admission(int(r[0]), int(r[1]), int(r[2])))
        return out

    def enqueue(self, demands: Iterable[Demand], *, head: bool = False) -> Admission:
        """Put jobs in line (``head``: before every job of their class, e.g. after a 429) and
        admit what fits now. A job already waiting or admitted is left as it is."""
        return self._run("enqueue", ["1" if head else "0", *(d.encode() for d in demands)])

    def enqueue_steps(self, demands: Iterable[Demand], *, head: bool = False) -> Steps[Admission]:
        """:meth:`enqueue` as a rule (sync or asyncio client)."""
        return self._run_steps("enqueue", ["1" if head else "0", *(d.encode() for d in demands)])

    def remove_steps(self, job_ids: Iterable[str]) -> Steps[Admission]:
        """:meth:`remove` as a rule (sync or asyncio client)."""
        return self._run_steps("remove", list(job_ids))

    def settled(self, job_ids: Iterable[str]) -> Admission:
        """After a job's call was settled: forget its grant and admit what the freed room allows."""
        return self._run("settled", list(job_ids))

    def admit(self, *, force: bool = False) -> Admission:
        """Admit heads of line while keys have room. Without ``force`` the step returns at
        once when the last one said no room could exist yet."""
        return self._run("force" if force else "admit", [])

    def remove(self, job_ids: Iterable[str]) -> Admission:
        """Take jobs out of line (cancelled); an admission not yet claimed gives its room back."""
        return self._run("remove", list(job_ids))

    def claim(self, job_id: str) -> Grant | Refused | Lost | None:
        """The worker's side: the admission of ``job_id`` as a Grant stamped now, or why not
        (None: the job was not admitted; it must wait in line)."""
        keys = self._base_keys() + [self._part("grants")]
        keys += [self.ks.pool_free(self.pool.pool, m) for m in self.lane_models()]
        out = self.scripts.claim(keys=keys, args=[job_id, *self._ms(), self.lead_ms])
        kind = _text(out[0])
        if kind == "n":
            return None
        if kind == "x":
            return Refused(_text(out[1]))
        if kind == "l":
            return Lost(_text(out[1]))
        key_id, model, rid = _text(out[1]), _text(out[2]), _text(out[3])
        cfg = self.pool.registry.key(key_id)
        if cfg is None:
            self.pool.release(rid)
            return Lost(f"key {key_id} was removed")
        delay_ms = int(_text(out[4])) - int(_text(out[5])) if len(out) > 5 else 0
        return Grant(key_id=key_id, provider=cfg.provider, model=model, reservation_id=rid, input_tokens=0,
                     output_tokens=0, base_url=cfg.base_url, timeout=cfg.timeout,
                     delay_s=max(0, delay_ms) / 1000)

    # -- reading -----------------------------------------------------------------------------
    def position(self, job_id: str) -> Position | None:
        """Where a waiting job stands: place in its line and estimated start (None: not waiting)."""
        raw = self.client.hget(self._part("demand"), job_id)
        if raw is None:
            return None
        d = json.loads(raw)
        model = str(d["l"])
        rank = self.client.zrank(self.line_key(model), d["mem"])
        place = rank if isinstance(rank, int) else 0
        now = _server_s(self.client)
        due = float(self.client.hget(self._part("sched"), "due") or 0) / 1000
        rate = self.admission_rate(model)
        start = max(now, due)
        eta = start + (place / rate if rate > 0 else float("inf"))
        return Position(model=model, place=place, eta=eta)

    def held_share(self) -> float:
        """The share of each key's limits batch admission leaves free for interactive work now
        (as ``admit.lua`` computes it): while interactive jobs arrived within the hold time,
        twice their recent arrival rate over the pool's request capacity, between
        ``interactive_share_min`` and ``interactive_share``; else the standing reserve
        ``interactive_share_min`` if ``interactive_reserve`` keeps it (``always``; ``auto``:
        within 30 hold times of an interactive arrival, or while an interactive client
        announces itself: :meth:`announce_interactive`); else 0."""
        if self.interactive_share <= 0:
            return 0.0
        ia, start, di, dt, il = self.client.hmget(self._part("sched"), "ia", "is", "di", "dt", "il")
        now = _server_ms(self.client)
        hold = self.interactive_hold_ms
        if ia is not None and now - int(ia) < hold:
            capacity = _capacity(self.pool.registry.current().keys.values())
            if capacity <= 0:
                return self.interactive_share
            half = max(1.0, hold / 4)
            count = float(di or 0) * 2.0 ** (-max(0, now - int(dt or now)) / half)
            span = max(1000, now - int(start or now))
            rate = count / (half / 1000 / math.log(2) * (1 - 2.0 ** (-span / half)))
            return min(self.interactive_share, max(self.interactive_share_min, 2 * rate / capacity))
        recent = (ia is not None and now - int(ia) < 30 * hold) or (il is not None and int(il) > now)
        if self.interactive_reserve == "always" or (self.interactive_reserve == "auto" and recent):
            return self.interactive_share_min  # the standing reserve for the next interactive job
        return 0.0

    def announce_interactive(self, ttl_s: float = 30.0) -> None:
        """Say that an interactive client (a gateway, a chat service) is serving for the next
        ``ttl_s`` seconds (0: no longer): under ``interactive_reserve="auto"`` the least share
        (``interactive_share_min``) is then held before its first interactive job arrives, so
        that job does not wait for a batch's window to slide. Renew it while serving."""
        self.scripts.announce(keys=[self._part("sched")], args=[max(0, int(ttl_s * 1000))])

    def admission_rate(self, model: str) -> float:
        """Requests per second the active keys serving ``model`` admit in the long run."""
        keys = self.pool.registry.current().keys.values()
        return _capacity(cfg for cfg in keys if model in cfg.served_models())

    def lines(self) -> dict[str, dict[str, int]]:
        """Per model: jobs waiting per class."""
        out: dict[str, dict[str, int]] = {}
        for m in self.lane_models():
            key = self.line_key(m)
            pipe = self.client.pipeline(transaction=False)
            pipe.zlexcount(key, "[0\x1f", "(1\x1f")
            pipe.zlexcount(key, "[1\x1f", "(2\x1f")
            inter, batch = pipe.execute()
            out[m] = {"interactive": int(inter), "batch": int(batch)}
        return out


class AdmissionTimer:
    """The admission step as a worker's consumer loop runs it: when the last step said room
    is due, and at most ``recheck`` s apart (another process may have put a job in line).
    Every ``force_every`` s it looks at the lines even if nothing seemed due (an operator
    enabled a key, a cooldown was cleared), and every ``sweep_every`` s it runs ``sweep`` (the
    workers': :class:`~router_jobs.capacity.joining.JoiningSweeper`). Returns seconds until
    it wants to run again."""

    def __init__(self, scheduler: Scheduler, *, recheck: float = 0.1, force_every: float = 1.0,
                 sweep: Callable[[], object] | None = None, sweep_every: float = 5.0) -> None:
        self.scheduler = scheduler
        self.recheck = recheck
        self.force_every = force_every
        self._next_force = 0.0
        self.sweep = sweep
        self.sweep_every = sweep_every
        self._next_sweep = time.monotonic() + sweep_every

    def __call__(self) -> float:
        now = time.monotonic()
        force = now >= self._next_force
        if force:
            self._next_force = now + self.force_every
        if self.sweep is not None and now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every
            self.sweep()
        out = self.scheduler.admit(force=force)
        if out.next_ms < 0:
            return self.recheck
        return min(max(out.next_ms / 1000, 0.002), self.recheck)


def _capacity(keys: Iterable[KeyConfig]) -> float:
    """Requests per second the pool's active keys admit in the long run (0: none limits requests)."""
    total = 0.0
    for cfg in keys:
        rates = [w.limit / w.seconds for w in cfg.all_windows() if w.unit == "requests"] if cfg.active else []
        total += min(rates) if rates else 0.0
    return total


def fairness_key(spec: JobSpec) -> str:
    """Whose share a batch job counts against: its user, else its tenant, else its batch."""
    meta = spec.metadata or {}
    return str(spec.user_id or meta.get("tenant") or meta.get("batch_id") or SHARED)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _server_ms(client: Any) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _server_s(client: Any) -> float:
    sec, usec = client.time()
    return float(sec) + float(usec) / 1e6


__all__: Sequence[str] = ("Admission", "AdmissionTimer", "Demand", "Lost", "Position", "Refused", "Scheduler")
