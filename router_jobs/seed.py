"""Drop-in names of the seed router, built on the explicit objects.

The seed system's callers use ``send_one_shot`` / ``send_chat`` / ``health_check`` on a
request router, key operations on a key manager (``get_key_status``,
``get_all_key_statuses``, ``mark_key_unhealthy``, ``add_key``, ``remove_key``,
``reload_keys``) and conversation operations on a store (``create_conversation``,
``get_history``, ``truncate_history``, ``get_metadata``). They keep working here, with the
same dict shapes, but every call goes through the queue: a full key pool makes a call wait
for room instead of failing.

``get_request_router()``, ``get_key_manager()`` and ``get_conversation_store()`` are thin
conveniences for drop-in use; nothing inside the library calls them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from router_jobs.capacity.config import KeyConfig
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.conversations.store import ConversationStore
from router_jobs.errors import (
    BudgetExceeded,
    JobError,
    JobFailed,
    JobTimeout,
    JobValidationError,
    RouterJobsError,
    SubmitRateLimited,
)
from router_jobs.models import JobResult

if TYPE_CHECKING:
    from router_jobs.backend.schema import RedisSchema
    from router_jobs.client.router import Router
    from router_jobs.models import JobHandle
    from router_jobs.settings import Settings

#: error_type values of the seed's response dicts for our error classes
_SEED_ERROR_TYPES = {"no_capacity": "all_keys_exhausted"}


def _response(result: JobResult | None, *, error: str | None = None, error_type: str | None = None,
              **extra: Any) -> dict[str, Any]:
    """The seed's response dict: success, content, model, tokens, key_id, error, error_type."""
    ok = result is not None and result.ok and error is None
    out: dict[str, Any] = {
        "success": ok,
        "content": result.content if result is not None else None,
        "model": result.model if result is not None else None,
        "tokens": result.usage.total_tokens if result is not None else 0,
        "key_id": result.key_id if result is not None else None,
        "provider": result.provider if result is not None else None,
        "error": error if error is not None else (None if ok or result is None else result.error_message),
        "error_type": error_type if error_type is not None else (
            None if ok or result is None else _SEED_ERROR_TYPES.get(result.error_type or "", result.error_type)),
        "job_id": result.job_id if result is not None else None,
        "usage": result.usage.model_dump() if result is not None else None,
        "latency": (result.finished_at - result.queued_at)
        if result is not None and result.finished_at and result.queued_at else None,
    }
    out.update(extra)
    return out


class SeedCompat:
    """Mixed into :class:`~router_jobs.client.router.Router`: the seed's request-router calls."""

    if TYPE_CHECKING:  # what the Router provides
        settings: Settings
        client: redis.Redis
        schema: RedisSchema
        pool: RedisKeyPool
        conversations: ConversationStore

        def served_models(self) -> set[str]: ...

        def submit(self, prompt: str | None = None, *, model: str, delay: float = 0.0,
                   on_rate_limit: str = "raise", **fields: Any) -> JobHandle: ...

        def await_result(self, job: JobHandle | str, timeout: float | None = 60.0, *,
                         raise_on_error: bool = True) -> JobResult: ...

    #: seconds ``send_one_shot`` / ``send_chat`` wait for the result
    compat_timeout: float = 300.0

    def default_model(self) -> str:
        """The model used when a caller names none: the first (sorted) served model."""
        models = sorted(self.served_models())
        if not models:
            raise JobValidationError("model", "no active key serves any model")
        return models[0]

    def _send(self, **fields: Any) -> dict[str, Any]:
        extra = {"conv_id": fields["conversation_id"]} if fields.get("conversation_id") else {}
        try:
            job = self.submit(**fields)
            result = self.await_result(job, timeout=self.compat_timeout)
            return _response(result, **extra)
        except JobFailed as exc:
            failed = exc.result if isinstance(exc.result, JobResult) else None
            return _response(failed, error=exc.error_message,
                             error_type=_SEED_ERROR_TYPES.get(exc.error_type, exc.error_type), **extra)
        except JobTimeout as exc:
            return _response(None, error=str(exc), error_type="timeout", **extra)
        except SubmitRateLimited as exc:
            return _response(None, error=str(exc), error_type="rate_limited", retry_after=exc.retry_after, **extra)
        except BudgetExceeded as exc:
            return _response(None, error=str(exc), error_type="budget_exceeded", **extra)
        except JobValidationError as exc:
            return _response(None, error=str(exc), error_type="invalid_request", **extra)
        except JobError as exc:
            return _response(None, error=str(exc), error_type=type(exc).__name__.lower(), **extra)

    def send_one_shot(
        self,
        prompt: str,
        model_preference: str | None = None,
        system_prompt: str | None = None,
        expected_completion_tokens: int = 512,
        max_output_tokens: int = 2048,
        temperature: float = 0.7,
        **fields: Any,
    ) -> dict[str, Any]:
        """One prompt, one answer, as the seed's dict. Waits for room instead of failing.

        ``expected_completion_tokens`` is accepted for compatibility; the reservation uses
        ``max_output_tokens`` and is settled to the real usage afterwards.
        """
        return self._send(prompt=prompt, model=model_preference or self.default_model(),
                          system_prompt=system_prompt, max_output_tokens=max_output_tokens,
                          temperature=temperature, **fields)

    def send_chat(
        self,
        conv_id: str,
        prompt: str,
        user_id: str | None = None,
        model_preference: str | None = None,
        expected_completion_tokens: int = 512,
        max_output_tokens: int = 2048,
        temperature: float = 0.7,
        system_prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One turn of a conversation: its history is sent along and the turn is appended
        (only when it succeeds), whichever key or provider serves it."""
        return self._send(prompt=prompt, model=model_preference or self.default_model(),
                          conversation_id=conv_id, user_id=user_id, system_prompt=system_prompt,
                          max_output_tokens=max_output_tokens, temperature=temperature,
                          metadata=metadata or {}, **fields)

    def truncate_conversation(self, conv_id: str, keep_last_n: int = 20) -> int:
        """Keep only the last ``keep_last_n`` messages of a conversation."""
        return self.conversations.truncate(conv_id, keep_last_n)

    def health_check(self) -> dict[str, Any]:
        """The seed's health shape: ``healthy`` plus the state of each part."""
        try:
            redis_ok = bool(self.client.ping())
        except redis.RedisError as exc:
            return {"healthy": False, "redis": {"healthy": False, "error": str(exc)},
                    "key_manager": {"healthy": False}, "conversation_store": {"healthy": False},
                    "workers": {"healthy": False}}
        keys = KeyManager(self.pool, self.settings.keys_file).health_check()
        heartbeats = self.client.hgetall(self.schema.consumers())
        fresh = max(5.0, 2 * self.settings.visibility_timeout_ms / 1000)
        now = time.time()
        alive = sum(1 for v in heartbeats.values() if now - float(v) < fresh)
        workers = {"healthy": alive > 0, "alive": alive, "known": len(heartbeats)}
        convs = self.conversations.health_check()
        return {
            "healthy": redis_ok and keys["healthy"] and workers["healthy"] and bool(convs.get("healthy")),
            "redis": {"healthy": redis_ok},
            "key_manager": keys,
            "conversation_store": convs,
            "workers": workers,
        }


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
        statuses = self.pool.key_statuses()
        available = [s["key_id"] for s in statuses if s.get("state") == "active"]
        return {"healthy": bool(available), "total_keys": len(statuses), "available_keys": len(available),
                "states": {s["key_id"]: s.get("state") for s in statuses}}


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
            from router_jobs.client.router import Router

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
