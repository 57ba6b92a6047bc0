"""What ``routerctl demo`` sets up, and the arithmetic of its summary.

The demo's keys and the fake provider servers enforce the *same* limits: each
:class:`DemoKey` becomes one entry of the keys file (``rpm``/``tpm`` for 60-s windows, an
extra ``windows`` entry otherwise) and one :class:`~fakeproviders.KeyLimit` of its
fake server. :func:`theoretical_min_seconds` is the best any scheduler could do under those
limits; :func:`window_checks` reads the fake servers' own records to prove no window on any
key ever held more than its limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from fakeproviders import KeyLimit, ProcessFakeServer

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"


@dataclass(frozen=True)
class DemoKey:
    """One demo key: ``requests`` per ``window`` seconds (and optionally ``tokens``)."""

    key_id: str
    provider: str
    model: str
    requests: int
    window: float
    tokens: int | None = None
    cost_in: float = 0.15
    cost_out: float = 0.6

    def config(self, base_url: str) -> dict[str, Any]:
        """The key's entry in the keys file (limits identical to the fake server's)."""
        cfg: dict[str, Any] = {"key_id": self.key_id, "model_name": self.model, "provider": self.provider,
                               "base_url": base_url, "active": True, "tags": {"demo": True},
                               "cost": {"input": self.cost_in, "output": self.cost_out},
                               # the demo's fake servers enforce rolling windows, whatever the provider
                               "enforcement": {"mode": "rolling"}}
        if self.window == 60:
            cfg["rpm"] = self.requests
            if self.tokens:
                cfg["tpm"] = self.tokens
        else:
            cfg["windows"] = [{"limit": self.requests, "seconds": self.window, "unit": "requests"}]
            if self.tokens:
                cfg["windows"].append({"limit": self.tokens, "seconds": self.window, "unit": "tokens"})
        return cfg

    def server_limit(self) -> KeyLimit:
        """The same limit, as the fake server enforces it."""
        return KeyLimit(requests=self.requests, tokens=self.tokens, window=self.window)

    @property
    def label(self) -> str:
        return f"{self.requests} req/{self.window:g}s"


@dataclass
class DemoPlan:
    """Sizes and limits of one demo run."""

    prompts: int = 1000
    conversations: int = 4
    turns: int = 3
    turn_gap: float = 6.0
    chat_start: float = 4.0
    keys: list[DemoKey] = field(default_factory=list)
    workers: int = 2
    threads: int = 4
    max_in_flight: int = 8
    refresh: float = 2.0
    latency: float = 0.05
    max_tokens: int = 64

    @classmethod
    def standard(cls, prompts: int = 1000) -> DemoPlan:
        """Two OpenAI keys with 60-s windows (150 req/min) and two Anthropic keys with 10-s
        windows (30 req/10 s): about a minute for 1,000 prompts, with visible backpressure."""
        return cls(prompts=prompts, keys=[
            DemoKey("demo-openai-1", "openai", OPENAI_MODEL, 150, 60.0, tokens=100_000),
            DemoKey("demo-openai-2", "openai", OPENAI_MODEL, 150, 60.0, tokens=100_000),
            DemoKey("demo-anthropic-1", "anthropic", ANTHROPIC_MODEL, 30, 10.0, cost_in=0.8, cost_out=4.0),
            DemoKey("demo-anthropic-2", "anthropic", ANTHROPIC_MODEL, 30, 10.0, cost_in=0.8, cost_out=4.0),
        ])

    @classmethod
    def fast(cls, prompts: int = 100) -> DemoPlan:
        """The same shape with windows of seconds (for tests): a few seconds per 100 prompts.

        Windows stay several times longer than the pool's 1 s margin on window ends."""
        return cls(prompts=prompts, conversations=2, turns=2, turn_gap=0.5, chat_start=0.5, refresh=0.5,
                   keys=[
                       DemoKey("demo-openai-1", "openai", OPENAI_MODEL, 20, 5.0),
                       DemoKey("demo-openai-2", "openai", OPENAI_MODEL, 20, 5.0),
                       DemoKey("demo-anthropic-1", "anthropic", ANTHROPIC_MODEL, 10, 5.0),
                       DemoKey("demo-anthropic-2", "anthropic", ANTHROPIC_MODEL, 10, 5.0),
                   ])

    def keys_document(self, base_urls: dict[str, str]) -> dict[str, Any]:
        """The keys file for the fake servers at ``base_urls`` (provider -> base URL)."""
        return {"keys": [k.config(base_urls[k.provider]) for k in self.keys]}

    def sustained_rate(self) -> float:
        """Requests per second the pool can keep up over long runs."""
        return sum(k.requests / k.window for k in self.keys)

    def prompt_lines(self) -> list[str]:
        """The batch input: cookbook-form request bodies, one per line."""
        return [json.dumps({"model": OPENAI_MODEL, "max_tokens": self.max_tokens, "temperature": 0.2,
                            "messages": [{"role": "user", "content": f"Summarize ticket #{i} in one line."}],
                            "metadata": {"ticket": i}}) for i in range(1, self.prompts + 1)]


def theoretical_min_seconds(keys: list[DemoKey], requests: int) -> float:
    """Time from the first to the last admission of ``requests`` requests, all ready at 0,
    spread over ``keys`` by the best scheduler (each goes to the key with the earliest room)."""
    admitted: list[list[float]] = [[] for _ in keys]
    last = 0.0
    for _ in range(requests):
        best_i, best_t = 0, math.inf
        for i, k in enumerate(keys):
            log = admitted[i]
            t = log[-k.requests] + k.window if len(log) >= k.requests else 0.0
            if t < best_t:
                best_i, best_t = i, t
        admitted[best_i].append(best_t)
        last = max(last, best_t)
    return last


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def window_checks(keys: list[DemoKey], servers: dict[str, ProcessFakeServer]) -> dict[str, dict[str, Any]]:
    """Per key, from the fake servers' records: admitted requests, 429s, the most admitted in
    any window of the key's length, and whether that stayed within the limit."""
    out: dict[str, dict[str, Any]] = {}
    total = sum(1 for k in keys for r in servers[k.provider].received(k.key_id) if r.status == 200) or 1
    for k in keys:
        recs = servers[k.provider].received(k.key_id)
        ok = sum(1 for r in recs if r.status == 200)
        peak = servers[k.provider].max_in_window(k.key_id, k.window)
        out[k.key_id] = {"provider": k.provider, "limit": k.label, "requests": ok,
                         "share": round(100 * ok / total, 1), "http_429": sum(1 for r in recs if r.status == 429),
                         "max_in_window": peak, "within_limit": peak <= k.requests}
    return out


def rate_limit_findings(keys: list[DemoKey], servers: dict[str, ProcessFakeServer]) -> list[str]:
    """One line per key that drew 429s from its fake server: which window, how many, when
    (seconds since the server's first request), and what the server had admitted in that
    window just before: the operator's answer to "why did the demo fail?"."""
    lines: list[str] = []
    for k in keys:
        recs = servers[k.provider].received(k.key_id)
        hits = [r for r in recs if r.status == 429]
        if not hits:
            continue
        start = recs[0].time if recs else 0.0
        first = hits[0]
        admitted = sum(1 for r in recs if r.status == 200 and first.time - k.window < r.time <= first.time)
        kinds = sorted({r.scenario.replace("rate_limit_", "") for r in hits})
        lines.append(
            f"key {k.key_id} ({k.provider}) drew {len(hits)} x 429 on its {k.label} window "
            f"({'/'.join(kinds)} limit), the first {first.time - start:.1f}s into the run, when the server had "
            f"admitted {admitted} of {k.requests} in the {k.window:g}s before it (the server saw more requests "
            f"in that window than the pool meant to send)"
        )
    return lines


def failure_findings(summary: dict[str, Any], rate_limits: list[str]) -> list[str]:
    """Every reason the run was not clean, one line each (empty: it was clean)."""
    out = list(rate_limits)
    for key_id, k in summary["per_key"].items():
        if not k["within_limit"]:
            out.append(f"key {key_id} admitted {k['max_in_window']} requests in one window, over its {k['limit']}")
    if summary["failed"]:
        out.append(f"{summary['failed']} batch line(s) failed" + (f" (first: {summary['first_failure']})"
                                                                   if summary.get("first_failure") else ""))
    if summary["completed"] + summary["failed"] != summary["submitted"]:
        out.append(f"only {summary['completed'] + summary['failed']} of {summary['submitted']} batch lines ended")
    inter = summary["interactive"]
    if inter["failed"]:
        out.append(f"{inter['failed']} chat turn(s) failed" + (f" (first: {inter['first_failure']})"
                                                             if inter.get("first_failure") else ""))
    return out
