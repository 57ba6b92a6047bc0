"""Plain-text views of the operator reads in :mod:`router_jobs.ops.reads` (``routerctl`` and the
demo's live screen share them). Pure formatting: no Redis, no secrets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_num(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def age(seconds: float | None) -> str:
    """``-`` / ``850ms`` / ``12.3s`` / ``4m05s`` / ``2h10m``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def queues_table(rows: list[dict[str, Any]]) -> str:
    """``routerctl queues``."""
    if not rows:
        return "no queues yet (nothing was submitted and no worker started)"
    return table(
        ["QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "CONSUMERS", "OLDEST READY", "DONE/1m"],
        [[r["queue"], r["ready"], r["delayed"], r["in_flight"], r["dead"],
          f"{r['consumers_alive']} alive / {r['consumers_gone']} gone", age(r["oldest_ready_age"]),
          r["completed_last_minute"]] for r in rows],
    )


def _used(row: dict[str, Any], unit: str, seconds: float | None = None) -> str:
    best = None
    for w in row.get("limits") or []:
        if w.get("unit") != unit:
            continue
        s = float(w.get("seconds", 0))
        if seconds is not None and s != seconds:
            continue
        if seconds is None and s >= 86400:
            continue
        if best is None or s > float(best["seconds"]):
            best = w
    if best is None:
        return "-"
    suffix = "" if seconds is not None or float(best["seconds"]) == 60 else f"/{float(best['seconds']):g}s"
    return f"{best['used']}/{best['limit']}{suffix}"


def key_state(row: dict[str, Any], now: float | None = None) -> str:
    """``active`` or ``cooldown (429 …, 12.0s left)``."""
    state = str(row.get("state"))
    extra = []
    if row.get("reason") and state != "active":
        extra.append(str(row["reason"]))
    if row.get("until"):
        extra.append(f"{age(max(0.0, float(row['until']) - (now or time.time())))} left")
    return f"{state} ({', '.join(extra)})" if extra else state


def keys_table(rows: list[dict[str, Any]]) -> str:
    """``routerctl keys``: one line per key; requests/tokens used now against the limits."""
    if not rows:
        return "no keys configured"
    now = time.time()
    body = []
    for r in rows:
        p50 = r.get("latency_p50_ms")
        body.append([
            r["key_id"], r.get("provider"), ",".join(r.get("models") or []), r.get("quota_group") or "-",
            key_state(r, now), _used(r, "requests"), _used(r, "tokens"), _used(r, "requests", 86400.0),
            r.get("in_flight", 0), f"{r.get('successes_5m', 0)}/{r.get('errors_5m', 0)}",
            "-" if p50 is None else f"{p50:.0f}ms", f"${float(r.get('spend_today_usd') or 0):.4f}",
        ])
    return table(["KEY", "PROVIDER", "MODELS", "GROUP", "STATE", "REQUESTS", "TOKENS", "DAILY", "IN FLIGHT",
                  "OK/ERR 5m", "P50", "SPEND TODAY"], body)
