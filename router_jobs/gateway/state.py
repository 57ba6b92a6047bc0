"""What every route needs: the gateway's configuration, its library objects, and the caller.

:class:`GatewayConfig` is built by ``routerctl serve`` (or a test) and passed in; nothing here
reads the environment. :class:`Gateway` holds one Router (sync, for the small admission
scripts and the batch driver's thread) and its async twin for the request paths.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis
from starlette.requests import Request

from router_jobs.client.async_router import AsyncRouter
from router_jobs.client.router import Router
from router_jobs.gateway.batches import BatchStore
from router_jobs.gateway.driver import BatchDriver
from router_jobs.gateway.errors import ApiError, invalid, unauthorized
from router_jobs.gateway.files import FileStore
from router_jobs.gateway.metrics import GatewayMetrics
from router_jobs.gateway.streaming import EventSource, JobStreamEvents
from router_jobs.gateway.tokens import TokenStore, VirtualKey
from router_jobs.settings import Settings

log = logging.getLogger(__name__)

@dataclass
class GatewayConfig:
    """The gateway's own knobs (the library's come from :class:`~router_jobs.settings.Settings`)."""

    max_file_bytes: int = 100 * 1024 * 1024
    file_ttl_seconds: int = 30 * 86400
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0
    batch_max_in_flight: int = 64
    run_batches: bool = True
    #: Redis connections of the request paths: each waiting completion or open stream holds one
    max_connections: int = 2000
    #: say every ``announce_every`` s that an interactive client serves (Scheduler.announce_interactive):
    #: under the default ``auto`` reserve the least interactive share is then held from the
    #: start, so the first chat request beside a batch does not wait for its window (0: never)
    announce_every: float = 10.0


class Gateway:
    """The library objects behind the routes."""

    def __init__(self, settings: Settings, config: GatewayConfig, router: Router | None = None) -> None:
        self.settings = settings
        self.config = config
        self.router = router or Router(settings)
        # read the pool's registry once before requests run in threads: the registry cache's
        # first read must not race (a concurrent first reader saw it still empty)
        self.router.pool.registry.current(force=True)
        self.arouter = AsyncRouter(self.router, max_connections=config.max_connections)
        self.tokens = TokenStore(self.router.client, self.router.schema, self.router.limiter, self.router.budgets)
        self.files = FileStore(self.router.client, self.router.schema, max_bytes=config.max_file_bytes,
                               ttl_seconds=config.file_ttl_seconds)
        self.batches = BatchStore(self.router.client, self.router.schema, self.files)
        self.driver = BatchDriver(self.router, self.batches, self.files, max_in_flight=config.batch_max_in_flight)
        self.metrics = GatewayMetrics()
        self.events: EventSource = JobStreamEvents(self.arouter, config.request_timeout)
        self._stop_announcing = threading.Event()
        self._announcer: threading.Thread | None = None

    def start(self) -> None:
        """Start the batch driver (when this process runs batches) and the announcement that
        an interactive client serves."""
        if self.config.run_batches:
            self.driver.start()
        if self.config.announce_every > 0:
            self._announcer = threading.Thread(target=self._announce, name="interactive-announce", daemon=True)
            self._announcer.start()

    def _announce(self) -> None:
        # each announcement lasts three periods: a gateway that stops (or dies) lets it lapse
        every = self.config.announce_every
        while True:
            try:
                self.router.scheduler.announce_interactive(3 * every)
            except redis.RedisError as exc:  # Redis away for a moment: the next period tries again
                log.warning("interactive announcement failed: %s: %s", type(exc).__name__, exc)
            if self._stop_announcing.wait(every):
                return

    async def close(self) -> None:
        """Stop the driver and the announcement, and release connections."""
        self._stop_announcing.set()
        if self._announcer is not None:
            self._announcer.join(5.0)
        self.driver.stop()
        await self.arouter.aclose()


def gateway_of(request: Request) -> Gateway:
    """The gateway serving this request."""
    gw: Gateway = request.app.state.gateway
    return gw


def caller(request: Request) -> VirtualKey:
    """The virtual key of the request's bearer token; 401 when missing, unknown or revoked."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    key = gateway_of(request).tokens.authenticate(token.strip())
    if key is None:
        raise unauthorized("incorrect, unknown or revoked API key")
    return key


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; 413 over ``limit`` bytes, 400 when not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is over the {limit}-byte limit", code="request_too_large")
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, f"request body is over the {limit}-byte limit", code="request_too_large")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body
