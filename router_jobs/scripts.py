"""Lua scripts: read once from ``router_jobs/lua/*.lua`` (package data), registered per client.

redis-py's ``Script`` sends EVALSHA and falls back to loading the script on NOSCRIPT, so a
SCRIPT FLUSH or a Redis restart between calls is survived without any help from callers.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript, Script


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Scripts registered on one client, by name: ``scripts.reserve(keys=[...], args=[...])``."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._registered: dict[str, Script | AsyncScript] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._registered.get(name)
        if script is None:
            script = self._client.register_script(script_source(name))
            self._registered[name] = script
        return script
