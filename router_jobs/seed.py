"""Drop-in names of the seed system, as a thin layer over the explicit objects.

The seed's callers use key operations on a key manager (``get_key_status``,
``get_all_key_statuses``, ``mark_key_unhealthy``, ``add_key``, ``remove_key``,
``reload_keys``), conversation operations on a store (``create_conversation``,
``get_history``, ``truncate_history``, ``get_metadata``: methods of
:class:`~router_jobs.conversations.store.ConversationStore`) and ``send_one_shot`` /
``send_chat`` / ``health_check`` on a request router (methods of
:class:`~router_jobs.client.router.Router`, see :mod:`router_jobs.client.seedcalls`).

``get_request_router()``, ``get_key_manager()``, ``get_redis_limiter()`` and
``get_conversation_store()`` keep one process-wide Router for drop-in use. Nothing inside the
library imports this module; it imports the library.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from router_jobs.capacity.config import KeyConfig
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.client.router import Router
from router_jobs.client.seedcalls import keys_health
from router_jobs.conversations.store import ConversationStore
from router_jobs.errors import RouterJobsError


class KeyManager:
    """The seed's key-manager names over a :class:`RedisKeyPool`."""

    def __init__(self, pool: RedisKeyPool, keys_file: str | Path | None = None) -> None:
        self.pool = pool
        self.keys_file = keys_file

    @staticmethod
    def _seed_status(status: dict[str, Any]) -> dict[str, Any]:
        def used(unit: str, seconds: float) -> int:
            return next((int(w["used"]) for w in status.get("limits", [])
                         if w["unit"] == unit and w["seconds"] == seconds), 0)

        return {
            **status,
            "in_cooldown": status.get("state") in ("cooldown", "exhausted"),
            "healthy": status.get("state") == "active",
            "rpm_usage": used("requests", 60.0),
            "tpm_usage": used("tokens", 60.0),
            "rpd_usage": used("requests", 86400.0),
        }

    def get_key_status(self, key_id: str) -> dict[str, Any]:
        """State, usage now against limits, cooldown, recent errors of one key."""
        return self._seed_status(self.pool.key_status(key_id))

    def get_all_key_statuses(self) -> list[dict[str, Any]]:
        return [self._seed_status(s) for s in self.pool.key_statuses()]

    def mark_key_unhealthy(self, key_id: str, cooldown_seconds: int, reason: str) -> None:
        """Take a key out of rotation for ``cooldown_seconds``."""
        self.pool.cooldown(key_id, float(cooldown_seconds), reason)

    def clear_cooldown(self, key_id: str) -> None:
        self.pool.clear(key_id)

    def add_key(self, key: KeyConfig | dict[str, Any]) -> None:
        self.pool.add_key(key if isinstance(key, KeyConfig) else KeyConfig.model_validate(key))

    def remove_key(self, key_id: str) -> bool:
        return self.pool.remove_key(key_id)

    def reload_keys(self, path: str | Path | None = None) -> bool:
        """Apply the keys file again (``path``, or the one this manager was built with)."""
        from router_jobs.capacity.config import load_keys

        target = path or self.keys_file
        if target is None:
            raise RouterJobsError("reload_keys needs the path of the keys file")
        self.pool.reload(load_keys(target))
        return True

    def health_check(self) -> dict[str, Any]:
        """Totals and each key's state; healthy while some key is active."""
        return keys_health(self.pool)


# -- thin conveniences for drop-in use (one shared instance per process) -------------------
_lock = threading.Lock()
_router: Router | None = None


def get_request_router(key_manager: KeyManager | None = None, **overrides: Any) -> Router:
    """A process-wide Router built from the environment on first use.

    ``key_manager`` (seed style) brings its keys file along; ``overrides`` are settings.
    """
    global _router
    with _lock:
        if _router is None:
            if key_manager is not None and key_manager.keys_file is not None:
                overrides.setdefault("keys_file", key_manager.keys_file)
            _router = Router.from_env(**overrides)
        return _router


def get_key_manager(key_store_path: str | Path | None = None, **overrides: Any) -> KeyManager:
    """The seed's key manager over the process-wide Router's key pool.

    ``key_store_path`` (seed style) names the keys file to use.
    """
    if key_store_path is not None:
        overrides["keys_file"] = Path(key_store_path)
    router = get_request_router(**overrides)
    return KeyManager(router.pool, router.settings.keys_file)


class RedisLimiterView:
    """The seed's ``get_redis_limiter()`` calls: usage now and cooldown clearing."""

    def __init__(self, pool: RedisKeyPool) -> None:
        self.manager = KeyManager(pool)

    def get_rpm_usage(self, key_id: str) -> dict[str, int]:
        return {"count": int(self.manager.get_key_status(key_id)["rpm_usage"])}

    def get_tpm_usage(self, key_id: str) -> dict[str, int]:
        return {"used": int(self.manager.get_key_status(key_id)["tpm_usage"])}

    def clear_cooldown(self, key_id: str) -> None:
        self.manager.clear_cooldown(key_id)


def get_redis_limiter(**overrides: Any) -> RedisLimiterView:
    """The process-wide Router's key usage and cooldowns, under the seed's names."""
    return RedisLimiterView(get_request_router(**overrides).pool)


def get_conversation_store(**overrides: Any) -> ConversationStore:
    """The process-wide Router's conversation store."""
    return get_request_router(**overrides).conversations


def reset_conveniences() -> None:
    """Forget the process-wide Router (tests, or after changing the environment)."""
    global _router
    with _lock:
        if _router is not None:
            _router.close()
        _router = None
