"""Warm a worker process before its first job: ``routerctl worker --preload warmup``.

A provider SDK costs its first caller a second or more (the import, lazily loaded resource
modules, then an HTTP client per key, built under the client cache's lock so that other
threads wait too). The key pool stamps a request when it reserves it; a first call that
reaches the provider that much later than its stamp eats into the pool's safety margin, and
the provider may count one window's requests more tightly than the pool did. Importing this
module at worker start does that work up front: it imports the SDK of every provider in the
keys file and builds the client of every key whose secret the secret store can read. It is
best-effort: a key without a readable secret (or an unknown provider) is skipped, silently.
"""

from __future__ import annotations

import logging

from .errors import ConfigError, SecretStoreError
from .keys import load_keys
from .providers import get_adapter
from .providers.base import KeyCredentials
from .secrets import build_secret_store
from .settings import Settings

log = logging.getLogger("router_jobs.worker")


def warm(settings: Settings) -> int:
    """Build the SDK client of every key of the keys file; returns how many were built."""
    try:
        keys = load_keys(settings.keys_file).keys
        store = build_secret_store(settings)
    except ConfigError as exc:
        log.info("warm-up skipped: %s", exc)
        return 0
    built = 0
    for cfg in keys:
        try:
            adapter = get_adapter(cfg.provider)
            creds = KeyCredentials(key_id=cfg.key_id, api_key=store.get(cfg.key_id), base_url=cfg.base_url,
                                   timeout=cfg.timeout)
        except (ConfigError, SecretStoreError):
            continue
        cache = getattr(adapter, "_clients", None)
        if cache is None:
            continue
        client = cache.get(creds)
        resource = getattr(client, "chat", None) or getattr(client, "messages", None)
        getattr(resource, "completions", None)  # openai loads its chat resources lazily
        built += 1
    return built


warm(Settings.from_env())
