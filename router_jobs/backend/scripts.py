"""Lua scripts: each concern keeps its scripts in its own ``lua/`` folder (package data).

A script may include a library of the same folder with a line ``--@include <name>`` (Lua
has no import inside Redis); the loader pastes the library in its place.

A concern declares the scripts it runs by name on a :class:`ScriptSet` subclass::

    class CapacityScripts(ScriptSet):
        reserve = lua("reserve")      # router_jobs/capacity/lua/reserve.lua
        settle = lua("settle")

The script is read once per process and registered once per client. redis-py's ``Script``
sends EVALSHA and falls back to loading the script on NOSCRIPT, so a SCRIPT FLUSH or a Redis
restart between calls is survived without any help from callers.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, TypeVar, overload

from redis.commands.core import AsyncScript, Script

S = TypeVar("S", bound="ScriptSet")


@cache
def script_source(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>.lua``."""
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def expand_includes(package: str, name: str, seen: set[str]) -> str:
    """``lua/<name>.lua`` with its ``--@include`` lines replaced by the libraries' text."""
    seen.add(name)
    out = []
    for line in script_source(package, name).splitlines():
        if line.startswith("--@include "):
            lib = line.split()[1]
            if lib not in seen:
                out.append(expand_includes(package, lib, seen).rstrip("\n"))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


class lua:  # noqa: N801  (reads as a declaration: ``reserve = lua("reserve")``)
    """A named script of the package that declares it; registered on the set's client on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.package = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.package = owner.__module__.rpartition(".")[0]
        self.attr = attr

    @property
    def source(self) -> str:
        """The script's text, each ``--@include <name>`` line replaced by ``lua/<name>.lua``
        of the same package (itself expanded; each library at most once)."""
        return expand_includes(self.package, self.name, set())

    @overload
    def __get__(self, obj: None, owner: type) -> lua: ...
    @overload
    def __get__(self, obj: ScriptSet, owner: type) -> Any: ...
    def __get__(self, obj: ScriptSet | None, owner: type) -> Any:
        if obj is None:
            return self
        script = obj._registered.get(self.name)
        if script is None:
            script = obj.client.register_script(self.source)
            obj._registered[self.name] = script
        return script


class ScriptSet:
    """The scripts of one concern, registered on one client (sync or asyncio)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._registered: dict[str, Script | AsyncScript] = {}

    @classmethod
    def on(cls: type[S], client: Any) -> S:
        """The set registered on ``client``, made once per client and kept with it."""
        sets: dict[type, ScriptSet] | None = getattr(client, "_router_jobs_scripts", None)
        if sets is None:
            sets = {}
            client._router_jobs_scripts = sets
        found = sets.get(cls)
        if found is None:
            found = sets[cls] = cls(client)
        return found  # type: ignore[return-value]
