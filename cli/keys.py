"""``routerctl keys``: the key pool at a glance, and live changes to it (no secret, ever)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.common import echo_json, fail, json_option, router
from router_jobs.capacity.keysync import KeysFileCheck
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.errors import ConfigError
from router_jobs.ops import reads as ops
from router_jobs.ops import views


def _pool() -> RedisKeyPool:
    return router().pool


def _known(key_id: str) -> RedisKeyPool:
    pool = _pool()
    try:
        ops.require_key(pool, key_id)
    except KeyError:
        fail(f"no key {key_id!r} in the pool")
    return pool


def _done(as_json: bool, key_id: str, state: str, verb: str) -> None:
    if as_json:
        echo_json({"key_id": key_id, "state": state})
    else:
        click.echo(f"{key_id}: {verb} (state: {state})")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def keys(ctx: click.Context, as_json: bool) -> None:
    """Per key: provider, models, quota group, state (reason, until), requests/tokens/daily used
    against the limits now, in flight, successes/errors in 5 min, latency p50, spend today."""
    if ctx.invoked_subcommand is not None:
        return
    r = router()
    rows = ops.key_rows(r.pool, r.budgets)
    if as_json:
        echo_json(rows)
    else:
        click.echo(views.keys_table(rows))


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """Same as `routerctl keys`."""
    r = router()
    rows = ops.key_rows(r.pool, r.budgets)
    echo_json(rows) if as_json else click.echo(views.keys_table(rows))


@keys.command()
@click.argument("config", required=False)
@click.option("--key-id")
@click.option("--provider", type=click.Choice(["openai", "anthropic", "gemini", "openai-compatible", "fake"]))
@click.option("--model", "models", multiple=True, help="a model the key serves (repeat for more)")
@click.option("--rpm", type=int)
@click.option("--tpm", type=int)
@click.option("--rpd", type=int)
@click.option("--tpd", type=int)
@click.option("--max-concurrency", type=int)
@click.option("--base-url")
@click.option("--quota-group")
@click.option("--inactive", is_flag=True, help="add it disabled (active: false)")
@json_option
def add(config: str | None, key_id: str | None, provider: str | None, models: tuple[str, ...], rpm: int | None,
        tpm: int | None, rpd: int | None, tpd: int | None, max_concurrency: int | None, base_url: str | None,
        quota_group: str | None, inactive: bool, as_json: bool) -> None:
    """Add (or replace) a key at run time, from flags or a JSON object (CONFIG, '-' for stdin),
    e.g. '{"key_id": "k3", "provider": "openai", "model_name": "gpt-4o-mini", "rpm": 500}'.
    The secret is not given here: it comes from the secret store by key id."""
    if config is not None:
        text = sys.stdin.read() if config == "-" else config
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CONFIG is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError("CONFIG must be a JSON object")
    else:
        data = {"key_id": key_id, "provider": provider, "models": list(models), "rpm": rpm, "tpm": tpm,
                "rpd": rpd, "tpd": tpd, "max_concurrency": max_concurrency, "base_url": base_url,
                "quota_group": quota_group, "active": not inactive}
        data = {k: v for k, v in data.items() if v is not None and v != []}
    cfg = ops.parse_key_config(data)
    _pool().add_key(cfg)
    if as_json:
        echo_json({"added": cfg.key_id, "config": cfg.model_dump(mode="json")})
    else:
        click.echo(f"{cfg.key_id}: added ({cfg.provider}, {', '.join(cfg.served_models())})")


@keys.command()
@click.argument("key_id")
@json_option
def remove(key_id: str, as_json: bool) -> None:
    """Take a key out of the pool (until the keys file changes or `keys reload`)."""
    if not _pool().remove_key(key_id):
        fail(f"no key {key_id!r} in the pool")
    echo_json({"removed": key_id}) if as_json else click.echo(f"{key_id}: removed")


@keys.command()
@click.argument("key_id")
@json_option
def enable(key_id: str, as_json: bool) -> None:
    """Put a disabled key back in rotation."""
    _done(as_json, key_id, _known(key_id).enable(key_id), "enabled")


@keys.command()
@click.argument("key_id")
@click.option("--reason", default="disabled by operator", show_default=True)
@json_option
def disable(key_id: str, reason: str, as_json: bool) -> None:
    """Take a key out of rotation until `keys enable`."""
    _done(as_json, key_id, _known(key_id).disable(key_id, reason), "disabled")


@keys.command()
@click.argument("key_id")
@click.argument("seconds", type=click.FloatRange(min=0, min_open=True))
@click.option("--reason", default="cooldown by operator", show_default=True)
@json_option
def cooldown(key_id: str, seconds: float, reason: str, as_json: bool) -> None:
    """Keep a key out of rotation for SECONDS."""
    _done(as_json, key_id, _known(key_id).cooldown(key_id, seconds, reason), f"cooling down for {seconds:g}s")


@keys.command()
@click.argument("key_id")
@json_option
def clear(key_id: str, as_json: bool) -> None:
    """End a cooldown, exhausted, full or invalid state (not a disable)."""
    _done(as_json, key_id, _known(key_id).clear(key_id), "cleared")


def _applied(check: KeysFileCheck, keys: list[str], as_json: bool) -> None:
    if as_json:
        d = check.diff
        echo_json({"applied": str(check.path), "keys": keys, "added": d.added, "removed": d.removed,
                   "changed": d.changed, "quota_groups_changed": d.groups})
    else:
        click.echo(check.message())


@keys.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def apply(file: Path, as_json: bool) -> None:
    """Replace the pool's keys with the keys file FILE (undoes live add/remove; key states and
    usage stay). The only command (with `worker --apply-keys`) that writes a keys file to a
    registry already in use."""
    pool = _pool()
    _applied(ops.apply_keys(pool, file), pool.key_ids(), as_json)


@keys.command()
@click.option("--file", "path", type=click.Path(path_type=Path), help="keys file (default: ROUTER_KEYS_FILE)")
@json_option
def reload(path: Path | None, as_json: bool) -> None:
    """Same as `keys apply`, with the configured keys file (ROUTER_KEYS_FILE) by default."""
    r = router()
    _applied(ops.apply_keys(r.pool, path or r.settings.keys_file), r.pool.key_ids(), as_json)


COMMANDS = [keys]
