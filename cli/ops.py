"""``routerctl queues``, ``health`` and ``scan``."""

from __future__ import annotations

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli.common import FAILED, echo_json, json_option, router, settings
from router_jobs.backend.connection import connect, resolve_redis_url
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import load_keys
from router_jobs.ops import reads as ops
from router_jobs.ops import views
from router_jobs.ops.health import health as health_report
from router_jobs.ops.workers import stale_after
from router_jobs.secrets.scan import scan_paths


@click.command()
@json_option
def queues(as_json: bool) -> None:
    """Per queue: ready, delayed, in flight, dead-lettered, consumers, oldest ready, done in 1 min;
    per model: jobs waiting in the key pool for room; the share of each key held from batch work."""
    r = router()
    rows = ops.queue_stats(r.client, r.schema, stale=stale_after(r.settings))
    lines = r.scheduler.lines()
    held = r.scheduler.held_share()
    for row in rows:  # jobs of this queue's class waiting in the key pool for room
        row["waiting_in_pool"] = sum(n.get(row["queue"], 0) for n in lines.values())
        # share of each key's limits this queue's jobs may not use now (held for interactive work)
        row["held_share"] = 0.0 if row["queue"] == "interactive" else round(held, 4)
    if as_json:
        echo_json(rows)
    else:
        click.echo(views.queues_table(rows))
        click.echo(f"\nheld from batch work for interactive jobs: {held:.1%} of each key's limits")
        waiting = [[m, n["interactive"], n["batch"]] for m, n in lines.items() if n["interactive"] or n["batch"]]
        if waiting:
            click.echo("\nwaiting in the key pool for room (delivered once admitted):")
            click.echo(views.table(["MODEL", "INTERACTIVE", "BATCH"], waiting))


@click.command()
@json_option
def health(as_json: bool) -> None:
    """Check Redis, worker heartbeats and keys; exit 1 with the reason when unhealthy."""
    s = settings()
    client = connect(resolve_redis_url(s), socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        try:
            up = bool(client.ping())
        except redis.RedisError:
            up = False
        pool = router().pool if up else None
        report = health_report(client, RedisSchema(s.namespace), pool, stale=stale_after(s))
    finally:
        client.close()
    if as_json:
        echo_json(report)
    else:
        for c in report["checks"]:
            click.echo(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
        click.echo("healthy" if report["healthy"] else "unhealthy: " + "; ".join(report["reasons"]))
    if not report["healthy"]:
        raise click.exceptions.Exit(FAILED)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--fail-on-found", is_flag=True, help="exit 1 when something is found")
@click.option("--no-detect-secrets", is_flag=True, help="only exact matches of the configured keys' values")
@json_option
def scan(paths: tuple[str, ...], fail_on_found: bool, no_detect_secrets: bool, as_json: bool) -> None:
    """Scan files for leaked credentials: secret-like strings and the configured keys' real
    values (read from the secret store when it can). Prints file, line and kind, never the value."""
    s = settings()
    if s.keys_file.exists():
        key_ids = [k.key_id for k in load_keys(s.keys_file).keys]
    else:
        key_ids = router().pool.key_ids()
    known = ops.configured_secret_values(s, key_ids)
    findings = scan_paths(paths or ["."], known, use_detect_secrets=not no_detect_secrets)
    if as_json:
        echo_json({"findings": [{"file": f.file, "line": f.line, "kind": f.kind} for f in findings],
                   "count": len(findings), "known_values_checked": len(known)})
    else:
        for f in findings:
            click.echo(str(f))
        click.echo(f"{len(findings)} finding(s); {len(known)} configured key value(s) checked", err=True)
    if fail_on_found and findings:
        raise click.exceptions.Exit(FAILED)


COMMANDS = [queues, health, scan]
