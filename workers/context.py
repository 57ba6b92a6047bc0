"""Per-process worker state, built once on first use: key pool, secrets, adapters, stores."""

from __future__ import annotations

import logging
import threading

from router_jobs.budgets import Budgets
from router_jobs.capacity import RedisKeyPool
from router_jobs.chat import ChatTurns
from router_jobs.conversations import ConversationStore
from router_jobs.executor import Executor
from router_jobs.jobstore import JobStore
from router_jobs.keys import Cost
from router_jobs.providers import get_adapter
from router_jobs.redaction import install_log_redaction
from router_jobs.secrets import build_secret_store
from router_jobs.tokens import estimate_tokens

from .setup import broker, settings

_lock = threading.Lock()
_executor: Executor | None = None


def build_executor() -> Executor:
    """Everything one worker process needs to run jobs, from the settings."""
    client, ks = broker.client, broker.keyspace
    pool = RedisKeyPool(client, ks)
    pool.sync_file(settings.keys_file)

    def key_cost(key_id: str) -> Cost | None:
        cfg = pool.registry.current().key(key_id)
        return cfg.cost if cfg is not None else None

    secrets = build_secret_store(settings)
    # secrets read by this process are redacted from every log record it writes
    install_log_redaction(secrets.redactor, logging.getLogger())
    return Executor(
        jobs=JobStore(client, ks, settings.job_ttl_seconds),
        pool=pool,
        secrets=secrets,
        adapter_for=get_adapter,
        estimate_tokens=estimate_tokens,
        max_attempts=settings.max_attempts,
        chat=ChatTurns(ConversationStore.from_settings(client, settings), estimate_tokens,
                       settings.history_token_budget),
        budgets=Budgets(client, ks),
        key_cost=key_cost,
    )


def executor() -> Executor:
    """The process's executor, built on first use."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = build_executor()
        return _executor
