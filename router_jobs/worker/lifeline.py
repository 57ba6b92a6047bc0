"""Worker processes die with the process that started them.

``routerctl worker`` runs the Dramatiq pool as a child; if the supervisor is killed outright
(SIGKILL, OOM killer), nobody would watch the pool, yet it would go on consuming. On Linux
the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) sends the child a signal the
moment its parent dies; SIGTERM keeps the stop graceful (prefetched messages are handed
back). Elsewhere a watchdog thread polls the parent pid once a second to the same effect.

The supervisor sets it with :func:`launch_argv`: the child first runs a few lines of Python
that set the signal and then exec the pool (the setting survives ``execve``). Setting it in a
``preexec_fn`` instead ran Python code between ``fork`` and ``exec`` in a process that had
other threads (a Router's background loading of the token encoding): a lock one of them held
at the fork stays held forever in the child, and a supervisor restarting a crashed pool hung
in ``Popen`` that way (its pool never came back).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1

#: ``python -c`` source: argv[1] parent pid, argv[2] signal, argv[3:] the program to exec
_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(sys.argv[2]), 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[3], sys.argv[3:])
"""


def launch_argv(argv: list[str], parent_pid: int, sig: int = signal.SIGTERM) -> list[str] | None:
    """``argv`` run so that it gets ``sig`` when ``parent_pid`` dies (Linux: a launcher that sets
    the parent-death signal, then execs ``argv``; no Python runs between fork and exec). None
    where the kernel has no such signal (use :func:`die_with_parent` in a ``preexec_fn``)."""
    if not sys.platform.startswith("linux"):
        return None
    return [sys.executable, "-c", _LAUNCHER, str(parent_pid), str(int(sig)), *argv]


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> str:
    """Have ``sig`` sent to this process when its parent dies; returns the means used.

    ``parent_pid`` is the parent expected (default: the current one); if it is gone already
    (it died before this call), ``sig`` is sent at once. Safe in a ``preexec_fn``.
    """
    expected = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
        means = "pdeathsig"
    else:
        threading.Thread(target=_watch_parent, args=(expected, sig), daemon=True,
                         name="parent-watchdog").start()
        means = "watchdog"
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)
    return means


def _watch_parent(parent_pid: int, sig: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), sig)
