"""routerctl entry point: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click
import redis

from cli.common import FAILED, USAGE, router
from router_jobs.backend.connection import resolve_redis_url
from router_jobs.errors import ConfigError, JobValidationError, RouterJobsError
from router_jobs.ops.workers import live_workers, stale_after
from router_jobs.settings import Settings
from router_jobs.worker.lifeline import die_with_parent, launch_argv
from router_jobs.worker.preflight import REFUSED, check_worker_config


class RouterGroup(click.Group):
    """The root group: library errors become one clear line and a documented exit code."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        """Refuse arguments that are not valid UTF-8 up front (one line, exit 2), before any
        of them reaches Redis, a file name or a job."""
        argv = list(sys.argv[1:] if args is None else args)
        for n, arg in enumerate(argv, 1):
            if isinstance(arg, str) and not _is_utf8(arg):
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                click.echo(f"error: argument {n} ({shown!r}) is not valid UTF-8", err=True)
                sys.exit(USAGE)
        return super().main(argv, *a, **kw)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, JobValidationError) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(USAGE)
        except RouterJobsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(FAILED)
        except redis.RedisError as exc:
            click.echo(f"error: redis: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(FAILED)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


@click.group(cls=RouterGroup)
@click.version_option(package_name="router-jobs")
def cli() -> None:
    """Operate router-jobs: workers, queues, keys, jobs, conversations, batches, a demo.

    Configuration comes from the environment (REDIS_URL, ROUTER_KEYS_FILE, ROUTER_NAMESPACE,
    SECRET_STORE_TYPE, API_KEY_<KEY_ID> ...); without REDIS_URL an embedded Redis is used.
    Every listing takes --json. API key values are never printed.

    \b
    Exit codes:
      0  success
      1  unhealthy, not found, or failed items (a failed job, failed batch lines,
         a leak found with --fail-on-found, Redis unreachable)
      2  usage or configuration error (bad option, invalid keys file or job)
      130 interrupted (a batch run stopped with Ctrl-C can be resumed)
    """


@cli.command()
@click.option("--processes", "-p", type=int, default=2, show_default=True, help="worker processes")
@click.option("--threads", "-t", type=int, default=8, show_default=True, help="threads per process")
@click.option("--queues", "-Q", multiple=True, help="queues to consume (default: all)")
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="start the pool again when a worker process dies")
@click.option("--apply-keys", is_flag=True,
              help="replace the key registry with the keys file (ROUTER_KEYS_FILE) before starting")
def worker(processes: int, threads: int, queues: tuple[str, ...], restart: bool, apply_keys: bool) -> None:
    """Start a pool of worker processes (runs `dramatiq workers`).

    The key registry in Redis is the pool's truth: an empty one is seeded from the keys file;
    a file that differs from a registry in use (some worker alive) is reported with the
    differing key ids, not applied, unless --apply-keys is given. With no worker alive, a
    keys file whose content no worker used before (an edit) is applied (the line says so).

    Each worker process warms up before it takes work: it loads the SDK of every configured
    provider and builds every key's client, so a first call costs what any call costs."""
    settings = Settings.from_env()
    check_worker_config(settings)  # an invalid keys file: one line, exit 2, no pool started
    env = dict(os.environ)
    env["REDIS_URL"] = resolve_redis_url(settings)  # workers find the same (embedded) server
    r = router()
    idle = live_workers(r.client, r.schema, stale_after(settings)) == 0
    check = r.pool.check_file(settings.keys_file, apply=apply_keys, pool_idle=idle)
    if check.outcome != "same":
        click.echo(f"routerctl: {check.message()}", err=True)
    argv = [sys.executable, "-m", "dramatiq", "workers", "--processes", str(processes),
            "--threads", str(threads)]
    if queues:
        argv += ["--queues", *queues]
    sys.exit(supervise(argv, env, restart=restart))


def supervise(argv: list[str], env: dict[str, str], *, restart: bool = True) -> int:
    """Run the Dramatiq pool in its own session; forward stop signals once; restart on crash.

    Dramatiq's main process already forwards signals to its worker processes; a signal sent
    to our whole process group would reach each worker twice and turn a graceful stop (which
    hands prefetched messages back) into a kill, so the pool gets its own session. Dramatiq
    stops the whole pool when one worker process dies; we start it again (after a short
    pause) so that the work goes on and a job that keeps crashing workers reaches the
    dead-letter stream by its delivery count. A pool that exits 2 refused to start (invalid
    configuration): starting it again would not help, so that code is returned at once.
    The pool gets SIGTERM when this process dies, even by SIGKILL (``lifeline.py``).
    """
    stopping = False
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM if not stopping else signal.SIGKILL)
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    supervisor = os.getpid()
    launch = launch_argv(argv, supervisor)
    while True:
        if launch is not None:
            proc = subprocess.Popen(launch, env=env, start_new_session=True)
        else:  # no parent-death signal: a watchdog thread, started before exec
            proc = subprocess.Popen(argv, env=env, start_new_session=True,
                                    preexec_fn=lambda: die_with_parent(signal.SIGTERM, supervisor))
        code = proc.wait()
        if stopping or not restart or code in (0, REFUSED):
            return code
        click.echo(f"routerctl: worker pool exited with code {code}; restarting in 1s", err=True)
        time.sleep(1.0)


def main() -> None:
    """Console-script entry point."""
    cli(standalone_mode=True)


from cli import batch as _batch  # noqa: E402
from cli import demo as _demo  # noqa: E402
from cli import jobs as _jobs  # noqa: E402
from cli import keys as _keys  # noqa: E402
from cli import ops as _ops  # noqa: E402
from cli import serve as _serve  # noqa: E402
from cli import tokens as _tokens  # noqa: E402
from cli.metrics_cmd import metrics  # noqa: E402

cli.add_command(metrics)
for _module in (_ops, _keys, _jobs, _batch, _demo, _serve, _tokens):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

if __name__ == "__main__":
    main()
