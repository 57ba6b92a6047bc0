"""The Dramatiq side of router-jobs: ``dramatiq workers`` (or ``routerctl worker``) starts a pool.

Importing this package configures Dramatiq's broker from the environment (the way
``dramatiq`` expects a worker module to) and declares the actors.
"""

from router_jobs.worker import actors  # noqa: E402,F401  (declares the actors on the broker)
from router_jobs.worker.setup import broker

__all__ = ["broker", "actors"]
