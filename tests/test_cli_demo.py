"""``routerctl demo`` end to end (shortened), and the arithmetic behind its summary."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.demo.plan import (
    DemoKey,
    DemoPlan,
    failure_findings,
    percentile,
    rate_limit_findings,
    theoretical_min_seconds,
)
from cli.main import cli
from fakeproviders.server import Record


@pytest.mark.e2e
@pytest.mark.slow
def test_short_demo_summary_is_consistent() -> None:
    result = CliRunner().invoke(cli, ["demo", "--fast", "--prompts", "60", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["submitted"] == s["prompts"] == 60
    assert s["completed"] == s["submitted"] == s["output_lines"] and s["failed"] == 0
    assert s["provider_429s"] == 0
    assert s["windows_within_limits"] is True
    keys = s["per_key"]
    assert set(keys) == {"demo-openai-1", "demo-openai-2", "demo-anthropic-1", "demo-anthropic-2"}
    limits = {k.key_id: k.requests for k in DemoPlan.fast().keys}
    for key_id, k in keys.items():
        assert k["max_in_window"] <= limits[key_id] and k["http_429"] == 0
    inter = s["interactive"]
    assert inter["failed"] == 0 and inter["succeeded"] == inter["turns"] == 4
    # every provider request is a batch line or a chat turn (no 429s, so no retries)
    assert s["capacity"]["provider_requests"] == s["completed"] + inter["succeeded"]
    assert all(n == 4 for n in inter["conversations"].values())  # 2 turns: 2 questions + 2 answers
    assert inter["p50_ms"] <= inter["p95_ms"]
    # nobody beats the limits: the batch took at least the theoretical minimum
    assert s["batch_seconds"] >= s["capacity"]["theoretical_min_seconds"]
    assert 0 < s["capacity"]["efficiency"] <= 1


def test_keys_file_and_fake_servers_agree() -> None:
    plan = DemoPlan.standard()
    doc = plan.keys_document({"openai": "http://o/v1", "anthropic": "http://a"})
    by_id = {k["key_id"]: k for k in doc["keys"]}
    for k in plan.keys:
        lim = k.server_limit()
        cfg = by_id[k.key_id]
        if k.window == 60:
            assert cfg["rpm"] == lim.requests and lim.window == 60
        else:
            assert cfg["windows"][0] == {"limit": lim.requests, "seconds": lim.window, "unit": "requests"}


def test_theoretical_minimum_and_percentiles() -> None:
    one = [DemoKey("k", "openai", "m", requests=10, window=60.0)]
    assert theoretical_min_seconds(one, 10) == 0.0
    assert theoretical_min_seconds(one, 11) == 60.0
    assert theoretical_min_seconds(one, 30) == 120.0
    two = one + [DemoKey("j", "anthropic", "n", requests=5, window=10.0)]
    # 10 + 5 at 0, 5 more at 10, 20, ... : the 31st request goes at 30 s
    assert theoretical_min_seconds(two, 30) == 30.0
    assert theoretical_min_seconds(DemoPlan.standard().keys, 1012) == 60.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0], 95) == 2.0


class _Server:
    """Stands in for a fake provider process: its records of one run."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def received(self, key: str | None = None) -> list[Record]:
        return [r for r in self.records if key is None or r.key == key]


def _rec(t: float, key: str, status: int = 200, scenario: str = "ok") -> Record:
    return Record(t, key, "m", 10, 5, status, scenario, "p")


def test_a_failed_demo_says_which_key_and_window_drew_429s(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = DemoPlan.fast()
    key = plan.keys[2]  # demo-anthropic-1: 10 requests per 5 s
    records = [_rec(100.0 + i * 0.1, key.key_id) for i in range(10)]
    records += [_rec(101.5, key.key_id, 429, "rate_limit_requests"), _rec(101.6, key.key_id, 429, "rate_limit_requests")]
    servers = {"openai": _Server([]), "anthropic": _Server(records)}
    found = rate_limit_findings(plan.keys, servers)  # type: ignore[arg-type]
    assert len(found) == 1
    assert found[0].startswith("key demo-anthropic-1 (anthropic) drew 2 x 429 on its 10 req/5s window (requests limit)")
    assert "1.5s into the run" in found[0] and "admitted 10 of 10 in the 5s before it" in found[0]

    summary = {"submitted": 60, "completed": 59, "failed": 1, "first_failure": "line 7: transient: gave up",
               "provider_429s": 2, "windows_within_limits": True,
               "per_key": {key.key_id: {"within_limit": True, "max_in_window": 10, "limit": key.label}},
               "interactive": {"failed": 0}}
    summary["failures"] = failure_findings(summary, found)

    class StubDemo:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def run(self) -> dict[str, object]:
            return summary

    monkeypatch.setattr("cli.demo.command.Demo", StubDemo)
    monkeypatch.setattr("cli.demo.command.render", lambda s: "(the summary table)")
    result = CliRunner().invoke(cli, ["demo", "--fast", "--quiet"])
    assert result.exit_code == 1
    reasons = [line for line in result.stderr.splitlines() if line.startswith("demo failed: ")]
    assert reasons[0].startswith("demo failed: key demo-anthropic-1 (anthropic) drew 2 x 429")
    assert reasons[1] == "demo failed: 1 batch line(s) failed (first: line 7: transient: gave up)"
