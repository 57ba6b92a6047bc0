"""``routerctl demo`` end to end (shortened), and the arithmetic behind its summary."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.demo.plan import DemoKey, DemoPlan, percentile, theoretical_min_seconds
from cli.main import cli


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
