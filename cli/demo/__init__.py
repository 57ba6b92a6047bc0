"""``routerctl demo``: the whole system on one machine, with fake providers (not part of the library)."""

from cli.demo.command import COMMANDS

__all__ = ["COMMANDS"]
