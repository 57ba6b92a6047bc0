"""``routerctl demo``: placeholder until the demo lands."""

from __future__ import annotations

COMMANDS: list[object] = []
