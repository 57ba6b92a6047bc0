"""``routerctl serve``: the OpenAI-compatible HTTP gateway (uvicorn, one or more processes)."""

from __future__ import annotations

import dataclasses
import json
import os

import click
from starlette.applications import Starlette

from router_jobs.backend.connection import resolve_redis_url
from router_jobs.gateway.app import create_app
from router_jobs.gateway.state import GatewayConfig
from router_jobs.settings import Settings

#: how ``serve`` hands the gateway's options to its worker processes
CONFIG_ENV = "ROUTER_GATEWAY_CONFIG"


def app_factory() -> Starlette:
    """The app of one server process: settings from the environment, options from ``serve``."""
    raw = os.environ.get(CONFIG_ENV)
    config = GatewayConfig(**json.loads(raw)) if raw else GatewayConfig()
    return create_app(Settings.from_env(), config)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="ROUTER_GATEWAY_HOST")
@click.option("--port", default=8000, show_default=True, type=int, envvar="ROUTER_GATEWAY_PORT")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="server processes (all state is in Redis: any number, behind any load balancer)")
@click.option("--max-file-bytes", default=GatewayConfig.max_file_bytes, show_default=True, type=int,
              envvar="ROUTER_GATEWAY_MAX_FILE_BYTES", help="largest upload accepted (413 above)")
@click.option("--file-ttl", default=GatewayConfig.file_ttl_seconds, show_default=True, type=int,
              envvar="ROUTER_GATEWAY_FILE_TTL", help="seconds a stored file lives")
@click.option("--request-timeout", default=GatewayConfig.request_timeout, show_default=True, type=float,
              envvar="ROUTER_GATEWAY_REQUEST_TIMEOUT", help="seconds a chat completion may wait for its job")
@click.option("--batch-max-in-flight", default=GatewayConfig.batch_max_in_flight, show_default=True, type=int,
              help="lines of one batch between submit and result")
@click.option("--max-connections", default=GatewayConfig.max_connections, show_default=True, type=int,
              help="Redis connections per process; each waiting completion or open stream holds one")
@click.option("--batches/--no-batches", "run_batches", default=True, show_default=True,
              help="whether this gateway also drives batches (any gateway may resume any batch)")
@click.option("--keep-alive", default=75, show_default=True, type=int,
              help="seconds an idle client connection stays open (longer than a load balancer's idle timeout)")
@click.option("--log-level", default="warning", show_default=True)
def serve(host: str, port: int, workers: int, max_file_bytes: int, file_ttl: int, request_timeout: float,
          batch_max_in_flight: int, max_connections: int, run_batches: bool, keep_alive: int,
          log_level: str) -> None:
    """Serve the OpenAI HTTP API in front of the queue: /v1/chat/completions (stream too),
    /v1/models, /v1/files, /v1/batches; /healthz, /readyz, /metrics. Callers authenticate with
    tokens from `routerctl tokens create`."""
    import uvicorn

    config = GatewayConfig(max_file_bytes=max_file_bytes, file_ttl_seconds=file_ttl,
                           request_timeout=request_timeout, batch_max_in_flight=batch_max_in_flight,
                           max_connections=max_connections, run_batches=run_batches)
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    os.environ["REDIS_URL"] = resolve_redis_url(Settings.from_env())  # every process, one server
    uvicorn.run("cli.serve:app_factory", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, timeout_keep_alive=keep_alive)


COMMANDS = [serve]
