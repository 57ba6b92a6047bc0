"""``routerctl demo``: the whole system on this machine, nothing to configure."""

from __future__ import annotations

import signal
import sys

import click

from cli.common import FAILED, echo_json
from cli.demo.plan import DemoPlan
from cli.demo.run import Demo

CLEAR = "\x1b[H\x1b[2J"


def _to_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--prompts", type=click.IntRange(min=1), default=None, help="batch size (default 1000; 100 with --fast)")
@click.option("--fast", is_flag=True, help="windows of seconds instead of minutes (a run of a few seconds)")
@click.option("--quiet", "-q", is_flag=True, help="no live view")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON (live view on stderr)")
def demo(prompts: int | None, fast: bool, quiet: bool, as_json: bool) -> None:
    """Run everything locally: embedded Redis, fake OpenAI and Anthropic servers with per-key
    limits, two worker pools, a batch of 1,000 prompts and a few chats, a live view of queues
    and keys, and a summary (throughput vs. capacity, 429s, per-key traffic, latency).
    Exit 1 when the run was not clean (failed jobs, 429s, a window over its limit), with one
    `demo failed:` line per reason on stderr (which key and window drew a 429, and when)."""
    plan = DemoPlan.fast(prompts or 100) if fast else DemoPlan.standard(prompts or 1000)
    out = sys.stderr if as_json else sys.stdout
    tty = out.isatty()

    def show(screen: str) -> None:
        if tty:
            out.write(CLEAR + screen)
            out.flush()

    signal.signal(signal.SIGTERM, _to_interrupt)
    if not quiet:
        click.echo(f"starting: embedded Redis, fake providers, {plan.workers} worker pools "
                   f"({len(plan.keys)} keys, {plan.prompts} prompts) ...", err=as_json)
    try:
        summary = Demo(plan, show=None if quiet else show).run()
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started was stopped", err=True)
        raise click.exceptions.Exit(130) from None
    if as_json:
        echo_json(summary)
    else:
        click.echo(render(summary))
    clean = (summary["failed"] == 0 and summary["completed"] == summary["submitted"]
             and summary["provider_429s"] == 0 and summary["windows_within_limits"]
             and summary["interactive"]["failed"] == 0)
    if not clean:
        for line in summary["failures"] or ["the run was not clean (see the summary above)"]:
            click.echo(f"demo failed: {line}", err=True)
        raise click.exceptions.Exit(FAILED)


def render(s: dict[str, object]) -> str:
    """The human summary."""
    from router_jobs.ops import views

    cap: dict[str, object] = s["capacity"]  # type: ignore[assignment]
    inter: dict[str, object] = s["interactive"]  # type: ignore[assignment]
    per_key: dict[str, dict[str, object]] = s["per_key"]  # type: ignore[assignment]
    lines = [
        "",
        f"batch: {s['completed']}/{s['submitted']} completed, {s['failed']} failed in {s['batch_seconds']}s "
        f"({s['throughput_rps']}/s)",
        f"capacity: theoretical minimum {cap['theoretical_min_seconds']}s for {cap['provider_requests']} requests "
        f"under the keys' limits (sustained {cap['sustained_rps']}/s); efficiency {cap['efficiency']}",
        f"429s received by the providers: {s['provider_429s']}; every window within its limit: "
        f"{s['windows_within_limits']}",
        f"interactive: {inter['succeeded']}/{inter['turns']} turns, p50 {inter['p50_ms']} ms, "
        f"p95 {inter['p95_ms']} ms",
        "",
        views.table(["KEY", "PROVIDER", "LIMIT", "REQUESTS", "SHARE %", "MAX IN A WINDOW", "429s", "OK"],
                    [[k, v["provider"], v["limit"], v["requests"], v["share"], v["max_in_window"], v["http_429"],
                      "yes" if v["within_limit"] else "NO"] for k, v in per_key.items()]),
        "",
        f"spend (list prices): ${s['spend_usd']}; wall time {s['wall_seconds']}s",
    ]
    return "\n".join(lines)


COMMANDS = [demo]
