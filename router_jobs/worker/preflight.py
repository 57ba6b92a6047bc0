"""Checks a worker makes before it consumes anything: a worker that cannot run jobs must not
take them. A failed check raises :class:`~router_jobs.errors.ConfigError` naming the problem;
``routerctl worker`` prints it as one line and exits 2, and a Dramatiq worker process exits 2
before its broker registers a consumer.
"""

from __future__ import annotations

import sys
from pathlib import Path

from router_jobs.capacity.config import load_keys
from router_jobs.errors import ConfigError
from router_jobs.settings import Settings

#: Exit code of a worker that refuses to start (Dramatiq's own code for a failed import).
REFUSED = 2


def check_worker_config(settings: Settings) -> None:
    """Raise ConfigError when the keys file exists but is invalid (a missing file is fine:
    the key registry in Redis may already hold the keys)."""
    path = Path(settings.keys_file)
    if path.exists():
        load_keys(path)


def refuse_unless_valid(settings: Settings) -> None:
    """In a worker process: on an invalid configuration, print one line and exit 2."""
    try:
        check_worker_config(settings)
    except ConfigError as exc:
        print(f"router-jobs worker: refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(REFUSED) from None
