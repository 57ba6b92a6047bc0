"""``routerctl tokens create|list|revoke``: the gateway's virtual keys."""

from __future__ import annotations

import click

from cli.common import echo_json, fail, json_option, router
from router_jobs.gateway.tokens import TokenStore, public_record


def _store() -> TokenStore:
    r = router()
    return TokenStore(r.client, r.schema, r.limiter, r.budgets)


@click.group()
def tokens() -> None:
    """Bearer tokens for the HTTP gateway (stored hashed; shown once at creation)."""


@tokens.command("create")
@click.option("--user", "user_id", required=True, help="the user the token acts for (limits, budget, files)")
@click.option("--team", help="team of the user (informational)")
@click.option("--name", default="", help="a label for listings")
@click.option("--model", "models", multiple=True, help="a model the token may use (repeat; default: all)")
@click.option("--priority", type=click.Choice(["interactive", "batch"]), default="interactive", show_default=True,
              help="queue of the token's chat completions")
@click.option("--rpm", type=float, help="the user's requests per minute (token bucket)")
@click.option("--burst", type=float, help="the user's burst (default: rpm)")
@click.option("--daily-budget", type=float, help="the user's daily spend cap in USD")
@json_option
def create(user_id: str, team: str | None, name: str, models: tuple[str, ...], priority: str, rpm: float | None,
           burst: float | None, daily_budget: float | None, as_json: bool) -> None:
    """Issue a token. It is printed once; only its hash is kept."""
    token, key = _store().create(user_id, name=name, team=team, models=list(models), priority=priority, rpm=rpm,
                                 burst=burst, daily_budget=daily_budget)
    if as_json:
        echo_json({"token": token, **public_record(key)})
    else:
        click.echo(token)
        click.echo(f"({key.token_id} for user {key.user_id}; store it now, it cannot be shown again)", err=True)


@tokens.command("list")
@json_option
def list_tokens(as_json: bool) -> None:
    """Every token's record (never the token itself)."""
    rows = [public_record(k) for k in _store().all()]
    if as_json:
        echo_json(rows)
        return
    for k in rows:
        state = "revoked" if k["revoked_at"] else "active"
        models = ",".join(k["models"]) or "*"
        click.echo(f"{k['token_id']}  {state:7}  user={k['user_id']}  team={k['team'] or '-'}  models={models}  "
                   f"priority={k['priority']}  rpm={k['rpm'] or '-'}  budget={k['daily_budget'] or '-'}  {k['name']}")


@tokens.command("revoke")
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Refuse a token from now on (exit 1 if unknown or already revoked)."""
    if not _store().revoke(token_id):
        fail(f"no active token {token_id!r}")
    click.echo(f"revoked {token_id}")


COMMANDS = [tokens]
