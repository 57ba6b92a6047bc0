"""The seed system's request-router calls, as functions over an explicit :class:`Router`.

``send_one_shot``, ``send_chat`` and ``health_check`` return the seed's dict shapes
(``success``, ``content``, ``model``, ``tokens``, ``key_id``, ``error``, ``error_type`` …), but
every call goes through the queue: a full key pool makes a call wait for room instead of
failing. :class:`~router_jobs.client.router.Router` exposes them as methods of the same names;
the seed's key manager and process-wide conveniences live in :mod:`router_jobs.seed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.errors import (
    BudgetExceeded,
    JobError,
    JobFailed,
    JobTimeout,
    JobValidationError,
    SubmitRateLimited,
)
from router_jobs.models import JobResult
from router_jobs.ops.health import health
from router_jobs.ops.workers import live_workers, stale_after

if TYPE_CHECKING:
    from router_jobs.client.router import Router

#: error_type values of the seed's response dicts for ours
SEED_ERROR_TYPES = {"no_capacity": "all_keys_exhausted"}
#: seconds ``send_one_shot`` / ``send_chat`` wait for the result
SEED_TIMEOUT = 300.0


def seed_response(result: JobResult | None, *, error: str | None = None, error_type: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The seed's response dict for a result (or for a refusal, with ``error``)."""
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
            None if ok or result is None else SEED_ERROR_TYPES.get(result.error_type or "", result.error_type)),
        "job_id": result.job_id if result is not None else None,
        "usage": result.usage.model_dump() if result is not None else None,
        "latency": (result.finished_at - result.queued_at)
        if result is not None and result.finished_at and result.queued_at else None,
    }
    out.update(extra)
    return out


def default_model(router: Router) -> str:
    """The model used when a caller names none: the first (sorted) served model."""
    models = sorted(router.served_models())
    if not models:
        raise JobValidationError("model", "no active key serves any model")
    return models[0]


def send(router: Router, timeout: float = SEED_TIMEOUT, **fields: Any) -> dict[str, Any]:
    """Submit one job and wait for it; every outcome becomes the seed's dict, never a raise."""
    extra = {"conv_id": fields["conversation_id"]} if fields.get("conversation_id") else {}
    try:
        job = router.submit(**fields)
        return seed_response(router.await_result(job, timeout=timeout), **extra)
    except JobFailed as exc:
        failed = exc.result if isinstance(exc.result, JobResult) else None
        return seed_response(failed, error=exc.error_message,
                             error_type=SEED_ERROR_TYPES.get(exc.error_type, exc.error_type), **extra)
    except JobTimeout as exc:
        return seed_response(None, error=str(exc), error_type="timeout", **extra)
    except SubmitRateLimited as exc:
        return seed_response(None, error=str(exc), error_type="rate_limited", retry_after=exc.retry_after, **extra)
    except BudgetExceeded as exc:
        return seed_response(None, error=str(exc), error_type="budget_exceeded", **extra)
    except JobValidationError as exc:
        return seed_response(None, error=str(exc), error_type="invalid_request", **extra)
    except JobError as exc:
        return seed_response(None, error=str(exc), error_type=type(exc).__name__.lower(), **extra)


def keys_health(pool: RedisKeyPool) -> dict[str, Any]:
    """The seed key manager's health shape: totals and each key's state."""
    statuses = pool.key_statuses()
    available = [s["key_id"] for s in statuses if s.get("state") == "active"]
    return {"healthy": bool(available), "total_keys": len(statuses), "available_keys": len(available),
            "states": {s["key_id"]: s.get("state") for s in statuses}}


def health_check(router: Router) -> dict[str, Any]:
    """The seed's health shape (``healthy`` plus redis, key_manager, conversation_store and
    workers), computed by the one health check operators use (:func:`router_jobs.ops.health.health`)."""
    stale = stale_after(router.settings)
    report = health(router.client, router.schema, router.pool, stale=stale)
    checks = {c["name"]: c for c in report["checks"]}
    if not checks["redis"]["ok"]:
        down = {"healthy": False}
        return {"healthy": False, "redis": {"healthy": False, "error": checks["redis"]["detail"]},
                "key_manager": down, "conversation_store": down, "workers": down}
    keys = keys_health(router.pool)
    alive = live_workers(router.client, router.schema, stale)
    workers = {"healthy": alive > 0, "alive": alive, "known": len(router.client.hkeys(router.schema.consumers()))}
    convs = router.conversations.health_check()
    return {
        "healthy": bool(keys["healthy"] and workers["healthy"] and convs.get("healthy")),
        "redis": {"healthy": True},
        "key_manager": keys,
        "conversation_store": convs,
        "workers": workers,
    }
