"""Shared plumbing of the ``routerctl`` commands: settings, a Router per invocation, output."""

from __future__ import annotations

import json
from typing import Any

import click
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.client.router import Router
from router_jobs.settings import Settings

#: exit codes (documented in ``routerctl --help``)
OK, FAILED, USAGE = 0, 1, 2

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def settings() -> Settings:
    """The settings of this invocation (environment; ConfigError on a bad value)."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        root.obj["settings"] = Settings.from_env()
    s: Settings = root.obj["settings"]
    return s


def router() -> Router:
    """A Router for this invocation (closed when the command ends). Fails fast when Redis is
    unreachable instead of retrying for long."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    if "router" not in root.obj:
        s = settings()
        client = connect(resolve_redis_url(s), socket_connect_timeout=3,
                         retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        r = Router(s, client=client, redis_budget=0)
        root.obj["router"] = r
        root.call_on_close(r.close)
    found: Router = root.obj["router"]
    return found


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (datetimes and other objects as strings)."""
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def fail(message: str, code: int = FAILED) -> None:
    """Print ``error: message`` on stderr and end the command with ``code``."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)
