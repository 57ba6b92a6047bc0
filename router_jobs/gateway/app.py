"""The gateway's ASGI application: routes, errors in OpenAI's envelope, health and metrics.

``create_app(settings, config)`` builds a Starlette app; run it with any ASGI server
(``routerctl serve`` uses uvicorn, several processes behind any load balancer: every piece
of state is in Redis). Unauthenticated: ``/healthz``, ``/readyz``, ``/metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router_jobs.client.router import Router
from router_jobs.errors import RouterJobsError
from router_jobs.gateway import routes_batches, routes_chat, routes_files
from router_jobs.gateway.errors import ApiError, from_library_error
from router_jobs.gateway.metrics import MetricsMiddleware
from router_jobs.gateway.state import Gateway, GatewayConfig, gateway_of
from router_jobs.settings import Settings


def _answer(err: ApiError) -> Response:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _library_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterJobsError)
    return _answer(from_library_error(exc))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error"
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    return _answer(ApiError(exc.status_code, str(exc.detail), type=kind, code=code))


async def healthz(request: Request) -> Response:
    """200 when Redis answers, 503 otherwise."""
    try:
        gateway_of(request).router.client.ping()
    except redis.RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when Redis answers and the pool serves at least one model."""
    gw = gateway_of(request)
    try:
        models = sorted(gw.router.served_models())
    except redis.RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    if not models:
        return JSONResponse({"status": "no active key serves any model"}, status_code=503)
    return JSONResponse({"status": "ready", "models": models})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the gateway's metrics."""
    return Response(generate_latest(gateway_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, config: GatewayConfig | None = None, *, router: Router | None = None) -> Starlette:
    """The gateway app. ``router`` lets a caller share its Router (tests, embedding)."""
    gateway = Gateway(settings, config or GatewayConfig(), router=router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        *routes_chat.ROUTES, *routes_files.ROUTES, *routes_batches.ROUTES,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware, metrics=gateway.metrics)],
        exception_handlers={RouterJobsError: _library_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
