"""What operators read is true: worker counts after restarts, the metrics exporter's warning,
the README's example keys against its secret variable names, Ctrl-C without tracebacks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from cli.demo.plan import DemoPlan
from cli.demo.run import Demo
from cli.main import cli
from fakeproviders import ProcessFakeServer
from router_jobs.backend.schema import RedisSchema
from router_jobs.broker.streams import GROUP
from router_jobs.ops import health as ophealth
from router_jobs.ops import reads as ops
from router_jobs.ops.workers import live_workers
from router_jobs.secrets.stores import env_names

ROOT = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_counts_are_right_after_a_restart(r: redis.Redis, namespace: str) -> None:
    import socket

    ks = RedisSchema(namespace)
    host, now = socket.gethostname(), time.time()
    killed = f"{host}-{dead_pid()}-aaaa0001"  # killed a moment ago: its heartbeat is still fresh
    killed_idle = f"{host}-{dead_pid()}-aaaa0002"
    restarted = f"{host}-{os.getpid()}-bbbb0001"  # the process that replaced it
    remote = "otherhost-4242-cccc0001"  # another host: its heartbeat is all we know
    remote_stale = "otherhost-4343-cccc0002"
    r.hset(ks.consumers(), mapping={killed: now - 1, killed_idle: now - 1, restarted: now, remote: now - 2,
                                    remote_stale: now - 3600})
    stream = ks.stream("interactive")
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    r.sadd(ks.queues(), "interactive")
    r.xadd(stream, {"m": "1"})
    r.xreadgroup(GROUP, killed, {stream: ">"}, count=1)  # the killed worker held one entry
    r.xgroup_createconsumer(stream, GROUP, killed_idle)  # and one that held nothing
    r.xgroup_createconsumer(stream, GROUP, remote_stale)
    assert live_workers(r, ks, stale=30.0) == 2
    row = {q["queue"]: q for q in ops.queue_stats(r, ks, stale=30.0)}["interactive"]
    assert (row["consumers_alive"], row["consumers_gone"]) == (2, 1)
    report = ophealth.health(r, ks, None, stale=30.0)  # type: ignore[arg-type]
    assert any("2 worker(s) alive" in str(c.get("detail")) for c in report["checks"])


def test_metrics_serve_says_when_the_multiprocess_folder_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    class StubServer:
        port = 9999

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def serve_forever(self) -> None:
            return None

    monkeypatch.setattr("cli.metrics_cmd.MetricsServer", StubServer)
    unset = CliRunner().invoke(cli, ["metrics", "serve", "--no-redis"], env={"PROMETHEUS_MULTIPROC_DIR": None})
    assert unset.exit_code == 0, unset.output
    assert "PROMETHEUS_MULTIPROC_DIR is unset" in unset.stderr
    folder = CliRunner().invoke(cli, ["metrics", "serve", "--no-redis"],
                                env={"PROMETHEUS_MULTIPROC_DIR": "/tmp/rj-metrics-test"})
    assert folder.exit_code == 0 and "PROMETHEUS_MULTIPROC_DIR" not in folder.stderr


def test_readme_example_keys_match_its_secret_variable_names() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```json\n(\{.*?\})\n```", text, re.S)
    assert block is not None
    key_ids = [k["key_id"] for k in json.loads(block.group(1))["keys"]]
    names = {n for k in key_ids for n in env_names(k)}
    mentioned = set(re.findall(r"\bAPI_KEY_[A-Z0-9_]+\b", text)) - {"API_KEY_"}
    assert mentioned, "the README names no secret variable"
    assert mentioned <= names, f"variables for keys the example does not have: {sorted(mentioned - names)}"


def test_a_fake_provider_process_survives_ctrl_c_for_its_parent_to_stop() -> None:
    server = ProcessFakeServer("openai", keys={"k": "secret-k"})
    server.start()
    try:
        pid = server._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group
        assert server.received("k") == []  # still answering: no KeyboardInterrupt traceback
    finally:
        server.stop()


def test_demo_chat_torn_down_by_ctrl_c_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = Demo(DemoPlan.fast())

    class ClosedRouter:
        def close(self) -> None:
            pass

        def submit(self, *args: Any, **kwargs: Any) -> None:
            raise redis.ConnectionError("Error 9: Bad file descriptor")

    monkeypatch.setattr(demo.plan, "chat_start", 0.0)
    demo.router = ClosedRouter()  # type: ignore[assignment]
    demo._chat(0)  # not torn down: a real failure, recorded
    assert demo.chat_failures == ["ConnectionError: Error 9: Bad file descriptor"]
    demo.stop()  # what Ctrl-C leads to
    demo._chat(1)  # must neither raise (a thread traceback) nor count a failure
    assert len(demo.chat_failures) == 1
