"""One SDK client per key, built once and reused by every call on that key (thread-safe).

Clients are cached by ``(key_id, base_url, timeout, fingerprint of the secret)``: a rotated
secret or a changed endpoint builds a new client, and the stale one for that key is dropped.
The cache key holds a digest of the secret, never the secret itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from router_jobs.providers.base import KeyCredentials
from router_jobs.secrets.stores import secret_fingerprint

C = TypeVar("C")


class ClientCache(Generic[C]):
    """Builds a client with ``factory(creds)`` on first use of a key, then hands it back."""

    def __init__(self, factory: Callable[[KeyCredentials], C]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[tuple[str | None, float, str], C]] = {}

    def get(self, creds: KeyCredentials) -> C:
        """The client for ``creds``; built (and any stale one for the key replaced) if needed."""
        ident = (creds.base_url, creds.timeout, secret_fingerprint(creds.api_key))
        with self._lock:
            held = self._clients.get(creds.key_id)
            if held is not None and held[0] == ident:
                return held[1]
            client = self._factory(creds)
            self._clients[creds.key_id] = (ident, client)
            return client

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)
