"""The key registry of a pool, kept in Redis so that every worker sees operator changes.

Redis holds, per pool (all under the pool's hash tag, see :mod:`router_jobs.capacity.redis_pool`):

- ``reg``/``greg``: each :class:`~router_jobs.capacity.config.KeyConfig` / quota group as JSON (no
  secrets exist in a keys file, so none reach Redis);
- ``spec``/``gspec``: the same limits compiled to the compact form the Lua scripts read
  (:func:`compile_limits`);
- ``free:<model>``: per model, the keys that serve it scored by the earliest time each may
  have room (reserve.lua keeps it true); ``cost:<model>``: the same keys by list price;
- ``models``: every model with such an index; ``ver``: bumped on every change.

:class:`RegistryCache` is the in-process copy a worker uses to fill in a grant (provider,
base URL, timeout) and to name the model indexes of a key; it re-reads Redis only when
``ver`` changed, and checks ``ver`` at most once per ``refresh_interval``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis

from router_jobs.backend.ops import Op, Steps, drive, pipelined, run
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import KeyConfig, KeysFile, Limits, QuotaGroup, parse_keys
from router_jobs.errors import ConfigError

_UNITS = ("requests", "tokens", "input_tokens", "output_tokens")


def compile_limits(limits: Limits, provider: str | None = None) -> list[list[int]]:
    """Limits as ``[[window_ms, requests, tokens, input, output], ...]`` (0 = no limit),
    paced as the scope's enforcement model (or the provider's default) requires.

    Windows of equal length share one log; when two limits name the same unit and length,
    the smaller wins. Under a bucket model each row but a daily one carries a sixth field,
    1: its request count is a bucket of ``requests`` refilled over ``window_ms``, paced by
    its theoretical arrival time (``lua/bucketlib.lua``) instead of by its log.
    """
    bucket = limits.enforcement_model(provider).mode == "bucket"
    by_ms: dict[int, list[int]] = {}
    for w in limits.enforced_windows(provider):
        ms = int(round(w.seconds * 1000))
        row = by_ms.setdefault(ms, [ms, 0, 0, 0, 0])
        i = 1 + _UNITS.index(w.unit)
        row[i] = w.limit if row[i] == 0 else min(row[i], w.limit)
    rows = [by_ms[ms] for ms in sorted(by_ms)]
    return [row + [1] if bucket and row[0] < 86_400_000 else row for row in rows]


def key_spec(cfg: KeyConfig) -> dict[str, Any]:
    """The compact JSON object reserve.lua reads for one key."""
    return {
        "g": cfg.quota_group or "",
        "a": 1 if cfg.active else 0,
        "c": cfg.max_concurrency or 0,
        "to": int(cfg.timeout * 1000),
        "ci": cfg.cost.input,
        "co": cfg.cost.output,
        "wt": cfg.weight,
        "L": compile_limits(cfg, cfg.provider),
    }


def group_provider(group: str, keys: Iterable[KeyConfig]) -> str | None:
    """The provider of every key naming ``group`` when they share one (a provider project):
    its enforcement model is the group's default too. None when they do not (or none does)."""
    providers = {k.provider for k in keys if k.quota_group == group}
    return providers.pop() if len(providers) == 1 else None


def group_spec(group: QuotaGroup, provider: str | None = None) -> dict[str, Any]:
    """The compact JSON object reserve.lua reads for one quota group (``provider``: the one
    its keys share, whose enforcement model the group then takes unless it names its own)."""
    return {"c": group.max_concurrency or 0, "L": compile_limits(group, provider)}


def _dump(model: Any) -> str:
    return json.dumps(model.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)


class RegistryStore:
    """Reads and writes one pool's key registry in Redis."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, pool: str) -> None:
        self.client = client
        self.ks = schema
        self.pool = pool

    # -- reading
    def version_op(self) -> Op[int]:
        """The registry's version (bumped by every write)."""
        return Op(lambda c: c.get(self.ks.pool_version(self.pool)), lambda raw: int(raw or 0))

    def version(self) -> int:
        return run(self.client, self.version_op())

    def read_op(self) -> Op[tuple[int, dict[str, KeyConfig], dict[str, QuotaGroup]]]:
        """(version, keys by id, groups by name) as stored now."""
        ks, pool = self.ks, self.pool

        def parse(replies: Any) -> tuple[int, dict[str, KeyConfig], dict[str, QuotaGroup]]:
            ver, raw_keys, raw_groups = replies
            keys = {k.decode(): KeyConfig.model_validate_json(v) for k, v in raw_keys.items()}
            groups = {k.decode(): QuotaGroup.model_validate_json(v) for k, v in raw_groups.items()}
            return int(ver or 0), keys, groups

        return Op(lambda c: pipelined(c, lambda p: p.get(ks.pool_version(pool)),
                                      lambda p: p.hgetall(ks.pool_registry(pool)),
                                      lambda p: p.hgetall(ks.pool_groups(pool))), parse)

    def read(self) -> tuple[int, dict[str, KeyConfig], dict[str, QuotaGroup]]:
        """(version, keys by id, groups by name) as stored now."""
        return run(self.client, self.read_op())

    # -- writing
    def remember_file(self, digest: str) -> bool:
        """Note that a worker started with a keys file of this content (``digest``); True when
        none had before (one entry per distinct content ever used: a handful)."""
        return bool(self.client.sadd(self.ks.pool_part(self.pool, "files"), digest))

    def replace(self, keys_file: KeysFile, *, only_if_empty: bool = False) -> bool:
        """Make the stored registry exactly ``keys_file`` (key states and usage logs stay).

        With ``only_if_empty`` the registry is written only if it was never written (version
        0), atomically: of several processes seeding at once exactly one writes. Returns
        whether it wrote.
        """
        ks, pool = self.ks, self.pool
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(ks.pool_version(pool))
                    if only_if_empty and int(pipe.get(ks.pool_version(pool)) or 0) != 0:
                        return False
                    _, old_keys, old_groups = self.read()
                    old_models = {_str(m) for m in pipe.smembers(ks.pool_models(pool))}
                    pipe.multi()
                    self._write_all(pipe, keys_file, old_keys, old_groups, old_models)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # another writer bumped the version meanwhile: look again

    def _write_all(self, pipe: Any, keys_file: KeysFile, old_keys: dict[str, KeyConfig],
                   old_groups: dict[str, QuotaGroup], old_models: set[str]) -> None:
        ks, pool = self.ks, self.pool
        new_models = keys_file.models() | {m for k in keys_file.keys for m in k.served_models()}
        for gone in set(old_keys) - {k.key_id for k in keys_file.keys}:
            pipe.hdel(ks.pool_registry(pool), gone)
            pipe.hdel(ks.pool_spec(pool), gone)
        for gone in set(old_groups) - {g.name for g in keys_file.quota_groups}:
            pipe.hdel(ks.pool_groups(pool), gone)
            pipe.hdel(ks.pool_group_spec(pool), gone)
        for group in keys_file.quota_groups:
            self._write_group(pipe, group, group_provider(group.name, keys_file.keys))
        for cfg in keys_file.keys:
            self._write_key(pipe, cfg)
        for model in old_models | new_models:
            members = {k.key_id for k in keys_file.keys if model in k.served_models()}
            stale = {k for k, cfg in old_keys.items() if model in cfg.served_models()} - members
            if stale:
                pipe.zrem(ks.pool_free(pool, model), *stale)
                pipe.zrem(ks.pool_cost(pool, model), *stale)
        pipe.delete(ks.pool_models(pool))
        if new_models:
            pipe.sadd(ks.pool_models(pool), *new_models)
        pipe.incr(ks.pool_version(pool))

    def add(self, cfg: KeyConfig, *, groups: Iterable[str]) -> None:
        """Add or replace one key. Its ``quota_group`` must already be defined."""
        if cfg.quota_group is not None and cfg.quota_group not in set(groups):
            raise ConfigError(
                f"key {cfg.key_id!r} field quota_group: {cfg.quota_group!r} is not defined",
                key_id=cfg.key_id,
                field="quota_group",
            )
        ks, pool = self.ks, self.pool
        _, old_keys, _ = self.read()
        pipe = self.client.pipeline(transaction=True)
        old = old_keys.get(cfg.key_id)
        if old is not None:
            for model in set(old.served_models()) - set(cfg.served_models()):
                pipe.zrem(ks.pool_free(pool, model), cfg.key_id)
                pipe.zrem(ks.pool_cost(pool, model), cfg.key_id)
        self._write_key(pipe, cfg)
        pipe.sadd(ks.pool_models(pool), *cfg.served_models())
        pipe.incr(ks.pool_version(pool))
        pipe.execute()

    def remove(self, key_id: str) -> bool:
        """Take a key out of the registry. Returns False when it was not there."""
        ks, pool = self.ks, self.pool
        _, old_keys, _ = self.read()
        old = old_keys.get(key_id)
        if old is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(ks.pool_registry(pool), key_id)
        pipe.hdel(ks.pool_spec(pool), key_id)
        for model in old.served_models():
            pipe.zrem(ks.pool_free(pool, model), key_id)
            pipe.zrem(ks.pool_cost(pool, model), key_id)
        pipe.incr(ks.pool_version(pool))
        pipe.execute()
        return True

    def _write_group(self, pipe: Any, group: QuotaGroup, provider: str | None) -> None:
        pipe.hset(self.ks.pool_groups(self.pool), group.name, _dump(group))
        pipe.hset(self.ks.pool_group_spec(self.pool), group.name, json.dumps(group_spec(group, provider)))

    def _write_key(self, pipe: Any, cfg: KeyConfig) -> None:
        ks, pool = self.ks, self.pool
        pipe.hset(ks.pool_registry(pool), cfg.key_id, _dump(cfg))
        pipe.hset(ks.pool_spec(pool), cfg.key_id, json.dumps(key_spec(cfg)))
        price = cfg.cost.input + cfg.cost.output
        for model in cfg.served_models():
            # a new key starts free (score 0); a known one keeps its score
            pipe.zadd(ks.pool_free(pool, model), {cfg.key_id: 0}, nx=True)
            pipe.zadd(ks.pool_cost(pool, model), {cfg.key_id: price})


def _str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RegistryCache:
    """A process's copy of the registry, refreshed when the stored version changes (checked
    at most every ``refresh_interval`` s once it holds keys; on every call while empty)."""

    def __init__(self, store: RegistryStore, refresh_interval: float = 1.0) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._version = -1
        self._checked = 0.0
        self.keys: dict[str, KeyConfig] = {}
        self.groups: dict[str, QuotaGroup] = {}

    def refresh_steps(self, *, force: bool = False) -> Steps[RegistryCache]:
        """Refresh when due (or forced) and return self, on a sync or an asyncio client."""
        mono = time.monotonic()
        if not force and self.keys and mono - self._checked < self.refresh_interval:
            return self
        version = yield self.store.version_op()
        if version != self._version or force:
            self._version, self.keys, self.groups = yield self.store.read_op()
        # marked only once read: a concurrent first caller (another coroutine) reads too,
        # instead of taking the empty cache for the registry
        self._checked = mono
        return self

    def current(self, *, force: bool = False) -> RegistryCache:
        """Refresh when due (or forced) and return self."""
        # an empty registry is read again on every call: it is the state before a worker
        # seeded it, and a producer started first must see the keys the moment they exist
        if not force and self.keys and time.monotonic() - self._checked < self.refresh_interval:
            return self
        with self._lock:
            return drive(self.store.client, self.refresh_steps(force=force))

    def served_models(self) -> set[str]:
        """Every model that at least one active key serves, as last read."""
        return {m for k in self.keys.values() if k.active for m in k.served_models()}

    @property
    def version(self) -> int:
        """The registry version last read (0: never written, -1: not read yet)."""
        return self._version

    def providers_by_model(self) -> dict[str, set[str]]:
        """For every model an active key serves: the providers of those keys, as last read."""
        out: dict[str, set[str]] = {}
        for k in self.keys.values():
            if k.active:
                for m in k.served_models():
                    out.setdefault(m, set()).add(k.provider)
        return out

    def key(self, key_id: str) -> KeyConfig | None:
        """The config of ``key_id``; re-reads Redis once when it is not known."""
        cfg = self.current().keys.get(key_id)
        if cfg is None:
            cfg = self.current(force=True).keys.get(key_id)
        return cfg

    def models_of(self, key_id: str) -> list[str]:
        cfg = self.key(key_id)
        return cfg.served_models() if cfg else []

    def keys_file(self) -> KeysFile:
        """The stored registry as a :class:`KeysFile`."""
        cur = self.current(force=True)
        return parse_keys(
            {
                "keys": [k.model_dump(mode="json") for k in cur.keys.values()],
                "quota_groups": [g.model_dump(mode="json") for g in cur.groups.values()],
            },
            source="stored registry",
        )
