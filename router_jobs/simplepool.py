"""A minimal key pool: one fixed per-minute request window per key, no token accounting.

It stands behind the :class:`~router_jobs.pool.KeyPool` interface until the exact
sliding-window pool replaces it.
"""

from __future__ import annotations

import itertools
import threading

import redis

from .errors import ProviderError
from .keys import KeysFile
from .keyspace import Keyspace
from .models import Usage
from .pool import Grant, ReserveRequest, Wait
from .providers.base import RateLimitInfo


class SimplePool:
    """Round-robin over active keys; ``rpm`` enforced per fixed minute (server clock)."""

    def __init__(self, client: redis.Redis, keyspace: Keyspace, keys: KeysFile) -> None:
        self.client = client
        self.keyspace = keyspace
        self.keys = keys
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def models(self) -> set[str]:
        return self.keys.models()

    def reserve(self, request: ReserveRequest) -> Grant | Wait:
        for model in request.models:
            cands = [k for k in self.keys.active_keys()
                     if model in k.served_models() and k.key_id not in request.exclude_keys]
            if not cands:
                continue
            with self._lock:
                start = next(self._rr)
            for i in range(len(cands)):
                k = cands[(start + i) % len(cands)]
                if k.rpm is not None:
                    sec, _ = self.client.time()
                    bucket = f"{self.keyspace.scope(k.key_id)}:rpm:{sec // 60}"
                    n = self.client.incr(bucket)
                    self.client.expire(bucket, 120)
                    if n > k.rpm:
                        continue
                return Grant(key_id=k.key_id, provider=k.provider, model=model,
                             reservation_id=request.reservation_id, input_tokens=request.input_tokens,
                             output_tokens=request.max_output_tokens, base_url=k.base_url, timeout=k.timeout)
            sec, _ = self.client.time()
            return Wait(wait_ms=(60 - sec % 60) * 1000, reason="every key is at its rpm")
        return Wait(wait_ms=0, reason=f"no active key serves {list(request.models)}", retryable=False)

    def settle(self, grant: Grant, usage: Usage | None) -> None:
        return None

    def report_success(self, grant: Grant, *, latency: float, rate_limit: RateLimitInfo | None) -> None:
        return None

    def report_error(self, grant: Grant, error: ProviderError) -> None:
        return None
