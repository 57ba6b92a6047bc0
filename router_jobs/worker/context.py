"""Per-process worker state, built once on first use: key pool, secrets, adapters, stores."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware

from router_jobs.admission.budgets import Budgets
from router_jobs.broker.streams import StreamsBroker
from router_jobs.capacity.config import Cost
from router_jobs.capacity.joining import JoiningSweeper
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.capacity.scheduler import AdmissionTimer, Scheduler
from router_jobs.conversations.store import ConversationStore
from router_jobs.conversations.turns import ChatTurns
from router_jobs.errors import ConfigError, SecretStoreError
from router_jobs.jobs.records import JobStore
from router_jobs.observability.logs import configure_logging
from router_jobs.observability.metrics import MetricsObserver
from router_jobs.providers import get_adapter
from router_jobs.providers.base import KeyCredentials
from router_jobs.secrets.redaction import install_log_redaction
from router_jobs.secrets.stores import build_secret_store
from router_jobs.streaming.log import EventLog
from router_jobs.tokens import estimate_tokens, exact_available
from router_jobs.worker.endings import JobEndings
from router_jobs.worker.executor import Executor
from router_jobs.worker.middleware import install_worker_metrics
from router_jobs.worker.setup import broker, settings

_lock = threading.Lock()
_executor: Executor | None = None

install_worker_metrics(broker, settings)  # multiprocess folder, in-progress gauge, exporter fork
if settings.log_json:
    configure_logging(json=True)
# one INFO line per provider request from the SDKs' HTTP client, each run through the secret
# redaction filters, cost the workers CPU at hundreds of calls a second and said nothing the
# job's own log lines do not; their warnings and errors still show
for _name in ("httpx", "httpx2", "httpcore", "httpcore2"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class _PoolCosts(Mapping[str, Cost]):
    """Key id -> price, read from the pool's registry (keys added at run time included)."""

    def __init__(self, pool: RedisKeyPool) -> None:
        self.pool = pool

    def __getitem__(self, key_id: str) -> Cost:
        cfg = self.pool.registry.current().key(key_id)
        if cfg is None:
            raise KeyError(key_id)
        return cfg.cost

    def __iter__(self) -> Iterator[str]:
        return iter(self.pool.key_ids())

    def __len__(self) -> int:
        return len(self.pool.key_ids())


def build_executor() -> Executor:
    """Everything one worker process needs to run jobs, from the settings."""
    client, ks = broker.client, broker.schema
    pool = RedisKeyPool(client, ks, margin_ms=settings.pool_margin_ms, late_ms=settings.pool_late_ms)
    check = pool.check_file(settings.keys_file)  # seeds an empty registry; never replaces one
    if check.outcome == "differs":
        logging.getLogger("router_jobs.worker").warning(check.message())
    costs = _PoolCosts(pool)
    scheduler = Scheduler.from_settings(pool, settings)
    # consumers admit waiting jobs when room is due, and put in line those a dead producer left
    broker.admission = AdmissionTimer(scheduler, sweep=JoiningSweeper(scheduler))
    secrets = build_secret_store(settings)
    # secrets read by this process are redacted from every log record it writes
    install_log_redaction(secrets.redactor, logging.getLogger())
    broker.redact = secrets.redactor.redact  # and from dead-letter reasons stored in Redis
    return Executor(
        jobs=JobStore(client, ks, settings.job_ttl_seconds),
        pool=pool,
        secrets=secrets,
        adapter_for=get_adapter,
        estimate_tokens=estimate_tokens,
        max_attempts=settings.max_attempts,
        observer=MetricsObserver(costs=costs),
        chat=ChatTurns(ConversationStore.from_settings(client, settings), estimate_tokens,
                       settings.history_token_budget),
        budgets=Budgets(client, ks),
        key_cost=costs.get,
        scheduler=scheduler,
        events=EventLog(client, ks, ttl_seconds=settings.stream_ttl_seconds, maxlen=settings.stream_maxlen),
    )


def warm_up() -> None:
    """Build the executor and load every configured provider's SDK before the first job, so
    that the first call a worker makes costs what any other call costs."""
    ex = executor()
    exact_available()  # every job's tokens are estimated: load the encoding now, not in the first job
    if not isinstance(ex.pool, RedisKeyPool):
        return
    log = logging.getLogger("router_jobs.worker")
    for cfg in ex.pool.registry.current().keys.values():
        try:
            adapter = get_adapter(cfg.provider)
            creds = KeyCredentials(key_id=cfg.key_id, api_key=ex.secrets.get(cfg.key_id),
                                   base_url=cfg.base_url, timeout=cfg.timeout)
        except ConfigError as exc:  # a missing optional SDK fails that provider's jobs, not the worker
            log.warning("provider %s unavailable: %s", cfg.provider, exc)
            continue
        except SecretStoreError:
            continue  # no secret (yet): the key's first call builds its client
        prepare = getattr(adapter, "prepare", None)
        if prepare is not None:
            prepare(creds)


class WarmUp(Middleware):
    """Dramatiq middleware: warm the worker process up when it boots."""

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        warm_up()
        if isinstance(broker, StreamsBroker):  # announce the process as ready for work
            broker.client.hset(broker.schema.workers(), broker.consumer_name, str(time.time()))

    def before_worker_shutdown(self, broker: Broker, worker: object) -> None:
        if isinstance(broker, StreamsBroker):
            broker.client.hdel(broker.schema.workers(), broker.consumer_name)


def executor() -> Executor:
    """The process's executor, built on first use."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = build_executor()
        return _executor


broker.add_middleware(WarmUp())
broker.add_middleware(JobEndings(lambda: executor().abandon, lambda: executor().has_ended))
