"""A keys file against the live registry: seed an empty registry, report a differing file,
apply one only when the operator asks.

The registry in Redis is the source of truth for a running pool: operators change it live
(``routerctl keys add/remove/disable``), and every worker reads it. A keys file is only an
input to it:

- a registry that was never written (a fresh deployment) is **seeded** from the file, once,
  atomically, whichever worker gets there first;
- a file that differs from a registry already in use is **reported** (the ids of the keys
  that differ), never silently applied: two workers started from different files, or a
  stale ``keys.json`` in another folder, cannot replace the pool's keys;
- the file replaces the registry on request: ``routerctl keys apply FILE``,
  ``routerctl worker --apply-keys``, or :func:`check_keys_file` with ``apply=True``;
- and when a pool starts with no worker alive (``pool_idle``: nobody else is using the
  registry) from a file whose content no worker has started with before: the
  edit-keys.json-and-restart routine. A file some worker already used (the pool's usual one
  after live edits or an explicit ``keys apply``, or a differing file that was reported
  once) is never taken up this way, so live edits survive restarts and two workers' files
  never take turns. Either way the line says which key ids changed.

Producers and read-only commands never call this with ``apply=True`` and never seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from router_jobs.capacity.config import KeyConfig, KeysFile, QuotaGroup, load_keys
from router_jobs.errors import ConfigError

if TYPE_CHECKING:
    from router_jobs.capacity.redis_pool import RedisKeyPool

Outcome = Literal["seeded", "applied", "same", "differs", "missing"]


@dataclass(frozen=True)
class KeysDiff:
    """How a keys file differs from the registry, by key id (and quota group name)."""

    added: list[str] = field(default_factory=list)  # in the file only
    removed: list[str] = field(default_factory=list)  # in the registry only
    changed: list[str] = field(default_factory=list)  # in both, with another configuration
    groups: list[str] = field(default_factory=list)  # quota groups added, removed or changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.groups)

    def describe(self) -> str:
        """``added: a, b; removed: c; changed: d`` (only the parts that are not empty)."""
        parts = [f"{name}: {', '.join(ids)}" for name, ids in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed),
            ("quota groups changed", self.groups)) if ids]
        return "; ".join(parts) or "no difference"


def diff_keys(keys_file: KeysFile, keys: dict[str, KeyConfig], groups: dict[str, QuotaGroup]) -> KeysDiff:
    """What applying ``keys_file`` would change in a registry holding ``keys`` and ``groups``."""
    new_keys = {k.key_id: k for k in keys_file.keys}
    new_groups = {g.name: g for g in keys_file.quota_groups}
    return KeysDiff(
        added=sorted(set(new_keys) - set(keys)),
        removed=sorted(set(keys) - set(new_keys)),
        changed=sorted(k for k in set(new_keys) & set(keys) if new_keys[k] != keys[k]),
        groups=sorted(g for g in set(new_groups) | set(groups) if new_groups.get(g) != groups.get(g)),
    )


@dataclass(frozen=True)
class KeysFileCheck:
    """What :func:`check_keys_file` found and did."""

    path: Path
    outcome: Outcome
    diff: KeysDiff = field(default_factory=KeysDiff)
    keys: int = 0  # keys in the file
    why: str = ""  # why an "applied" file was applied

    def message(self) -> str:
        """One line for an operator."""
        p = self.path
        if self.outcome == "missing":
            return f"keys file {p} not found; the registry is used as it is"
        if self.outcome == "seeded":
            return f"the key registry was empty: seeded it with {self.keys} key(s) from {p}"
        if self.outcome == "applied":
            why = f" {self.why}" if self.why else ""
            return f"applied {p} to the key registry{why} ({self.keys} key(s); {self.diff.describe()})"
        if self.outcome == "same":
            return f"keys file {p} matches the key registry"
        return (f"warning: keys file {p} differs from the key registry ({self.diff.describe()}); the registry "
                f"is kept. Apply the file with `routerctl keys apply {p}` or `routerctl worker --apply-keys`")


def check_keys_file(pool: RedisKeyPool, path: str | Path, *, apply: bool = False,
                    pool_idle: bool = False) -> KeysFileCheck:
    """Compare the keys file at ``path`` with the pool's registry; seed an empty registry from
    it; replace the registry with it when ``apply``, or when ``pool_idle`` (no worker alive)
    and no worker has started with a file of this content before.

    Raises ConfigError for a file that does not validate, or that is missing when ``apply``.
    """
    p = Path(path)
    if not p.is_file():
        if apply:
            raise ConfigError(f"keys file {p} does not exist", field="keys_file")
        return KeysFileCheck(p, "missing")
    raw = p.read_bytes()
    keys_file = load_keys(p)
    digest = hashlib.sha256(raw).hexdigest()
    n = len(keys_file.keys)
    new_content = pool.store.remember_file(digest)
    if not apply and pool.store.replace(keys_file, only_if_empty=True):
        pool.registry.current(force=True)
        return KeysFileCheck(p, "seeded", diff_keys(keys_file, {}, {}), n)
    _, keys, groups = pool.store.read()
    diff = diff_keys(keys_file, keys, groups)
    why = "on request" if apply else ""
    if not apply and not diff.empty and pool_idle and new_content:
        why = "(no worker was running, and no worker had used this file's content before)"
    if why:
        pool.store.replace(keys_file)
        pool.registry.current(force=True)
        return KeysFileCheck(p, "applied", diff, n, why)
    return KeysFileCheck(p, "same" if diff.empty else "differs", diff, n)
