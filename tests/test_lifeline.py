"""The supervisor's pool dies with it, and starting the pool runs no Python between fork and
exec (a ``preexec_fn`` in a process with other threads can deadlock the child, which hung a
supervisor's restart of a crashed pool)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from router_jobs.worker.lifeline import launch_argv

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not reaped by its new parent yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_launched_program_gets_sigterm_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         "from router_jobs.worker.lifeline import launch_argv\n"
         "p = subprocess.Popen(launch_argv(['/bin/sleep', '60'], os.getpid()))\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep":
        assert time.monotonic() < deadline  # the launcher has exec'd the program
        time.sleep(0.02)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_the_supervisor_starts_the_pool_without_a_preexec_fn(monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.main as cm

    calls: list[tuple[list[str], dict[str, Any]]] = []

    class Done:
        def __init__(self, args: list[str], **kw: Any) -> None:
            calls.append((args, kw))

        def wait(self) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(cm.subprocess, "Popen", Done)
    monkeypatch.setattr(cm.signal, "signal", lambda *_: None)  # keep this process's handlers
    assert cm.supervise(["/bin/true"], dict(os.environ)) == 0
    (args, kw), = calls
    assert "preexec_fn" not in kw and kw["start_new_session"] is True
    assert args == launch_argv(["/bin/true"], os.getpid())
