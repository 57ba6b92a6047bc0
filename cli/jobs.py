"""``routerctl submit``, ``jobs``, ``conv`` and ``dlq``."""

from __future__ import annotations

import time

import click

from cli.common import FAILED, echo_json, fail, json_option, router
from router_jobs.conversations.store import check_conv_id
from router_jobs.ops import deadletters, views
from router_jobs.ops import reads as ops


@click.command()
@click.argument("prompt")
@click.option("--model", help="model to use (default: the pool's only model)")
@click.option("--system", "system_prompt", help="system prompt")
@click.option("--conv", "conversation_id", help="conversation id: the turn joins its history")
@click.option("--priority", type=click.Choice(["interactive", "batch"]), default="interactive", show_default=True)
@click.option("--max-tokens", type=int, help="output token limit")
@click.option("--user", "user_id", help="user id (user rate limits and budget apply)")
@click.option("--wait", is_flag=True, help="wait for the result and print it")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait with --wait")
@json_option
def submit(prompt: str, model: str | None, system_prompt: str | None, conversation_id: str | None, priority: str,
           max_tokens: int | None, user_id: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Submit one prompt; print the job id, or with --wait the answer (exit 1 if the job failed)."""
    r = router()
    fields = {"system_prompt": system_prompt, "conversation_id": conversation_id, "priority": priority,
              "max_output_tokens": max_tokens, "user_id": user_id}
    handle = r.submit(prompt, model=model or ops.default_model(r.served_models()),
                      **{k: v for k, v in fields.items() if v is not None})
    if not wait:
        echo_json({"job_id": handle.job_id, "queue": handle.queue.value}) if as_json else click.echo(handle.job_id)
        return
    started = time.monotonic()
    result = r.await_result(handle, timeout=timeout, raise_on_error=False)
    if as_json:
        echo_json({**result.model_dump(mode="json"), "waited": round(time.monotonic() - started, 3)})
    elif result.ok:
        click.echo(result.content)
    if not result.ok:
        if not as_json:
            click.echo(f"error: job {result.job_id} {result.status.value}: {result.error_type}: {result.error_message}",
                       err=True)
        raise click.exceptions.Exit(FAILED)


# ------------------------------------------------------------------------------------ jobs
@click.group()
def jobs() -> None:
    """Look at and cancel jobs."""


@jobs.command("show")
@click.argument("job_id")
@json_option
def show_job(job_id: str, as_json: bool) -> None:
    """A job's status, result or error, attempts and deliveries (exit 1 if unknown)."""
    r = router()
    detail = ops.job_detail(r.client, r.schema, job_id)
    if detail is None:
        fail(f"no job {job_id} (unknown or expired)")
    assert detail is not None
    pos = r.position(job_id)
    if pos is not None:  # waiting in the pool's line
        detail = {**detail, "place_in_line": pos.place, "line": pos.model,
                  "estimated_start_in": round(max(0.0, pos.eta - time.time()), 1)}
    if as_json:
        echo_json(detail)
        return
    for name in ("job_id", "status", "queue", "model", "key_id", "provider", "attempts", "deliveries",
                 "place_in_line", "line", "estimated_start_in", "error_type", "error_message", "conversation_id"):
        if detail.get(name) is not None:
            click.echo(f"{name:16} {detail[name]}")
    if detail.get("content") is not None:
        click.echo(f"{'content':16} {detail['content']}")


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "expired"]))
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--scan-limit", type=int, default=10_000, show_default=True, help="job records looked at, at most")
@json_option
def list_jobs(status: str | None, limit: int, scan_limit: int, as_json: bool) -> None:
    """Recent jobs, newest first (looks at up to --scan-limit records)."""
    r = router()
    rows = ops.list_jobs(r.client, r.schema, status=status, limit=limit, scan_limit=scan_limit)
    if as_json:
        echo_json(rows)
        return
    now = time.time()
    click.echo(views.table(
        ["JOB", "STATUS", "QUEUE", "MODEL", "KEY", "ATTEMPTS", "AGE", "ERROR"],
        [[j["job_id"], j["status"], j["queue"], j["model"], j["key_id"] or "-", j["attempts"],
          views.age(now - j["queued_at"]) if j["queued_at"] else "-", j["error_type"] or ""] for j in rows]))


@jobs.command("cancel")
@click.argument("job_id")
@json_option
def cancel_job(job_id: str, as_json: bool) -> None:
    """Cancel a job that has not started (exit 1 when it could not be cancelled)."""
    r = router()
    done = r.cancel(job_id)
    current = r.status(job_id)
    state = current.status.value if current else "unknown"
    if as_json:
        echo_json({"job_id": job_id, "cancelled": done, "status": state})
    else:
        click.echo(f"{job_id}: {'cancelled' if done else 'not cancelled'} (status: {state})")
    if not done:
        raise click.exceptions.Exit(FAILED)


# ------------------------------------------------------------------------------------ conv
@click.group()
def conv() -> None:
    """Conversations: history, truncation, deletion."""


@conv.command("show")
@click.argument("conv_id")
@click.option("--limit", type=int, help="only the last N messages")
@json_option
def show_conv(conv_id: str, limit: int | None, as_json: bool) -> None:
    """A conversation's metadata and history (exit 1 if unknown)."""
    store = router().conversations
    meta = store.metadata(check_conv_id(conv_id))
    if meta is None:
        fail(f"no conversation {conv_id!r}")
    history = [m.model_dump() for m in store.history(conv_id, limit)]
    if as_json:
        echo_json({"metadata": meta, "messages": history})
        return
    assert meta is not None
    click.echo(f"{conv_id}: {meta['message_count']} message(s), {meta['total_tokens']} tokens, "
               f"last model {meta.get('last_model') or '-'}")
    for m in history:
        click.echo(f"[{m['role']}] {m['content']}")


@conv.command("truncate")
@click.argument("conv_id")
@click.option("--keep", type=click.IntRange(min=0), required=True, help="messages to keep (the last N)")
@json_option
def truncate_conv(conv_id: str, keep: int, as_json: bool) -> None:
    """Keep only the last --keep messages."""
    store = router().conversations
    if not store.exists(check_conv_id(conv_id)):
        fail(f"no conversation {conv_id!r}")
    removed = store.truncate(conv_id, keep)
    echo_json({"conversation_id": conv_id, "removed": removed}) if as_json else click.echo(f"removed {removed}")


@conv.command("delete")
@click.argument("conv_id")
@json_option
def delete_conv(conv_id: str, as_json: bool) -> None:
    """Delete a conversation's history and metadata (exit 1 if unknown)."""
    deleted = router().conversations.delete(check_conv_id(conv_id))
    echo_json({"conversation_id": conv_id, "deleted": deleted}) if as_json else click.echo(
        f"{conv_id}: {'deleted' if deleted else 'not found'}")
    if not deleted:
        raise click.exceptions.Exit(FAILED)


@conv.command("list")
@click.option("--pattern", default="*", show_default=True, help="glob over conversation ids")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def list_conv(pattern: str, limit: int, as_json: bool) -> None:
    """Live conversation ids."""
    ids = router().conversations.list(pattern, limit)
    echo_json(ids) if as_json else click.echo("\n".join(ids) if ids else "no conversations")


# ------------------------------------------------------------------------------------ dlq
@click.group()
def dlq() -> None:
    """Dead-lettered messages: list, replay onto their queue, purge."""


@dlq.command("list")
@click.option("--queue", "-Q", help="one queue (default: all)")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def list_dlq(queue: str | None, limit: int, as_json: bool) -> None:
    """Dead-lettered entries, oldest first, with their reasons."""
    r = router()
    rows = deadletters.dlq_list(r.client, r.schema, queue, limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no dead letters")
        return
    click.echo(views.table(["QUEUE", "ENTRY", "JOB", "DELIVERIES", "REASON"],
                           [[d["queue"], d["id"], d["job_id"], d["deliveries"], d["reason"][:80]] for d in rows]))


@dlq.command("replay")
@click.argument("queue")
@click.option("--id", "ids", multiple=True, help="an entry id (repeat; default: all)")
@click.option("--limit", type=int, help="replay only the N oldest")
@click.option("--max-replays", type=click.IntRange(min=0), default=deadletters.MAX_REPLAYS, show_default=True,
              help="refuse messages replayed this many times already")
@json_option
def replay_dlq(queue: str, ids: tuple[str, ...], limit: int | None, max_replays: int, as_json: bool) -> None:
    """Re-enqueue dead-lettered messages onto QUEUE and remove them from its dead letters.

    A job message's job is reopened. Exit code 1 when some message was refused (replayed too
    often already, or unreadable) or a given --id was not found."""
    r = router()
    out = deadletters.dlq_replay(r.client, r.schema, queue, ids or None, limit, max_replays=max_replays)
    if as_json:
        echo_json({"queue": queue, "replayed": out.replayed, "refused": out.refused})
    else:
        click.echo(f"replayed {out.replayed} message(s) onto {queue}")
        for entry_id, why in out.refused.items():
            click.echo(f"refused {entry_id}: {why}", err=True)
    if out.refused or (ids and out.replayed < len(ids)):
        raise click.exceptions.Exit(FAILED)


@dlq.command("purge")
@click.argument("queue")
@click.option("--id", "ids", multiple=True, help="an entry id (repeat; default: all)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@json_option
def purge_dlq(queue: str, ids: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Delete dead-lettered messages of QUEUE for good."""
    if not yes:
        click.confirm(f"delete {'these' if ids else 'all'} dead letters of {queue}?", abort=True)
    r = router()
    n = deadletters.dlq_purge(r.client, r.schema, queue, ids or None)
    echo_json({"queue": queue, "purged": n}) if as_json else click.echo(f"purged {n} dead letter(s) of {queue}")


COMMANDS = [submit, jobs, conv, dlq]
