"""Per-process worker state, built once on first use: Redis, key pool, secrets, adapters."""

from __future__ import annotations

import os
import threading
from functools import cache

from router_jobs.errors import ConfigError, SecretStoreError
from router_jobs.executor import Executor
from router_jobs.jobstore import JobStore
from router_jobs.keys import load_keys
from router_jobs.logs import configure_logging
from router_jobs.metrics import MetricsObserver
from router_jobs.metrics_middleware import install_worker_metrics
from router_jobs.models import ChatMessage
from router_jobs.providers.base import ProviderAdapter
from router_jobs.providers.fake import FakeAdapter
from router_jobs.simplepool import SimplePool

from .setup import broker, settings

_lock = threading.Lock()
_executor: Executor | None = None

install_worker_metrics(broker, settings)  # multiprocess folder, in-progress gauge, exporter fork
if settings.log_json:
    configure_logging(json=True)


class _EnvSecrets:
    def get(self, key_id: str) -> str:
        for name in (f"API_KEY_{key_id.upper().replace('-', '_')}", f"API_KEY_{key_id}"):
            if os.environ.get(name):
                return os.environ[name]
        raise SecretStoreError(f"no secret for key {key_id!r}", key_id=key_id)


@cache
def _adapter(provider: str) -> ProviderAdapter:
    if provider == "fake":
        return FakeAdapter()
    raise ConfigError(f"provider {provider!r} is not available")


def _estimate(messages: list[ChatMessage], model: str) -> int:
    return sum(max(1, len(m.content) // 4) + 4 for m in messages)


def executor() -> Executor:
    """The process's executor, built on first use."""
    global _executor
    with _lock:
        if _executor is None:
            keys = load_keys(settings.keys_file)
            jobs = JobStore(broker.client, broker.keyspace, settings.job_ttl_seconds)
            _executor = Executor(
                jobs=jobs,
                pool=SimplePool(broker.client, broker.keyspace, keys),
                secrets=_EnvSecrets(),
                adapter_for=_adapter,
                estimate_tokens=_estimate,
                max_attempts=settings.max_attempts,
                observer=MetricsObserver(keys=keys),
            )
        return _executor
