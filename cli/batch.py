"""``routerctl batch run|status``: a JSONL file of requests through the pool, resumable."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import FAILED, echo_json, fail, json_option, router
from router_jobs.batch.runner import BatchProgress, BatchRunner, batch_status
from router_jobs.ops import views

INTERRUPTED = 130


class ProgressLine:
    """A one-line progress bar on stderr (done, failed, rate, ETA), redrawn in place."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.drawn = False

    def __call__(self, p: BatchProgress) -> None:
        if not self.enabled:
            return
        finished = p.done + p.failed
        width = 30
        frac = finished / p.total if p.total else 0.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = views.age(p.eta) if p.eta is not None else "?"
        sys.stderr.write(f"\r[{bar}] {finished}/{p.total or '?'}  done {p.done}  failed {p.failed}  "
                         f"in flight {p.in_flight}  {p.rate:.1f}/s  ETA {eta}   ")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


@click.group()
def batch() -> None:
    """Run a JSONL file of prompts through the pool; see the progress of a run."""


@batch.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="results JSONL (appended to; lines already there are skipped on a rerun)")
@click.option("--model", help="model for lines that name none")
@click.option("--fallback-model", "fallback_models", multiple=True, help="fallback model (repeat)")
@click.option("--priority", type=click.Choice(["batch", "interactive"]), default="batch", show_default=True)
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True,
              help="lines between submit and output, at most")
@click.option("--ordered", is_flag=True, help="write output in input order")
@click.option("--batch-id", help="id of the run (default: derived from the input and output paths)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@json_option
def run(input_path: Path, out_path: Path, model: str | None, fallback_models: tuple[str, ...], priority: str,
        max_in_flight: int, ordered: bool, batch_id: str | None, quiet: bool, as_json: bool) -> None:
    """Run INPUT (OpenAI Batch API lines, cookbook request bodies, or {"prompt": ...}) and write
    one result or failure per line to --out. Exit 1 when some lines failed, 130 when
    interrupted: run the same command again to finish."""
    r = router()
    bar = ProgressLine(enabled=not quiet and sys.stderr.isatty())
    runner = BatchRunner(r, input_path, out_path, batch_id=batch_id, model=model,
                         fallback_models=list(fallback_models), priority=priority, max_in_flight=max_in_flight,
                         ordered=ordered, on_progress=bar)
    try:
        progress = runner.run()
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted; run the same command again to resume (batch {runner.batch_id})", err=True)
        raise click.exceptions.Exit(INTERRUPTED) from None
    bar.close()
    if as_json:
        echo_json({**progress.as_dict(), "output": str(out_path)})
    else:
        click.echo(f"batch {progress.batch_id}: {progress.done} succeeded, {progress.failed} failed "
                   f"({progress.skipped} already done before this run) -> {out_path}")
    if progress.failed:
        raise click.exceptions.Exit(FAILED)


@batch.command("status")
@click.argument("batch_id")
@json_option
def status(batch_id: str, as_json: bool) -> None:
    """Done / failed / pending counts of a batch run (exit 1 if unknown)."""
    rec = batch_status(router(), batch_id)
    if rec is None:
        fail(f"no batch {batch_id!r} (unknown or expired)")
    assert rec is not None
    if as_json:
        echo_json(rec)
    else:
        click.echo(f"batch {batch_id} [{rec.get('state')}]: {rec['done']} done, {rec['failed']} failed, "
                   f"{rec['pending']} pending of {rec['total']}  ({rec.get('input')} -> {rec.get('output')})")


COMMANDS = [batch]
