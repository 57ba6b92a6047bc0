"""The shipped example configuration is valid and names only settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router_jobs.capacity.config import load_keys, parse_keys
from router_jobs.errors import ConfigError
from router_jobs.settings import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_example_keys_file_loads_and_ignores_comments() -> None:
    keys = load_keys(ROOT / "config" / "keys.example.json")
    assert {k.key_id for k in keys.keys} == {"gemini-flash-01", "openai-main", "claude-1", "local-vllm"}
    assert keys.group("openai-org").rpm == 500
    assert "llama-3.1-8b" not in keys.models()  # inactive key


def test_env_example_names_are_settings() -> None:
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / "config" / ".env.example").read_text(), re.M)
    assert names
    unknown = [n for n in names if n not in ENV_NAMES and not n.startswith("API_KEY_")]
    assert unknown == []


def test_bad_keys_name_key_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys({"keys": [{"key_id": "k1", "model_name": "m", "provider": "openai", "rpm": -1}]})
    assert info.value.key_id == "k1" and info.value.field == "rpm"
    with pytest.raises(ConfigError) as info2:
        parse_keys({"keys": [{"key_id": "k2", "model_name": "m", "provider": "nope"}]})
    assert info2.value.key_id == "k2" and info2.value.field == "provider"


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ROUTER_MAX_ATTEMPTS": "0"})
    assert "ROUTER_MAX_ATTEMPTS" in str(info.value)


@pytest.mark.parametrize(("raw", "weights"), [
    ("tenant-a=4,alice=2", {"tenant-a": 4.0, "alice": 2.0}),
    (" tenant-a = 4 , alice=0.5, ", {"tenant-a": 4.0, "alice": 0.5}),
    ('{"tenant-a": 4, "batch 7": 1.5}', {"tenant-a": 4.0, "batch 7": 1.5}),
    ("", {}),
])
def test_fairness_weights_are_read(raw: str, weights: dict[str, float]) -> None:
    assert Settings.from_env({"ROUTER_FAIRNESS_WEIGHTS": raw}).fairness_weights == weights


def test_fairness_weights_default_to_none_named() -> None:
    assert Settings.from_env({}).fairness_weights == {}
    assert Settings(fairness_weights={"a": 2}).fairness_weights == {"a": 2.0}


@pytest.mark.parametrize(("raw", "reason"), [
    ("alice", "'alice' is not fairness-key=weight"),
    ("=3", "'=3' is not fairness-key=weight"),
    ("alice=x", "weight of 'alice' must be a number above 0"),
    ("alice=0", "weight of 'alice' must be a number above 0"),
    ("alice=-1", "weight of 'alice' must be a number above 0"),
    ("alice=nan", "weight of 'alice' must be a number above 0"),
    ("alice=2000000", "at most 1000000"),
    ("alice=1,alice=2", "'alice' is given twice"),
    ('{"alice": true}', "weight of 'alice' must be a number above 0"),
    ('{"alice": 2', "not a valid JSON object"),
    ("[1, 2]", "is not fairness-key=weight"),
])
def test_bad_fairness_weights_name_the_setting_and_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ROUTER_FAIRNESS_WEIGHTS": raw})
    assert info.value.field == "fairness_weights"
    assert "ROUTER_FAIRNESS_WEIGHTS" in str(info.value) and reason in str(info.value)


def test_the_interactive_reserve_setting_takes_three_values() -> None:
    assert Settings.from_env({}).interactive_reserve == "auto"
    assert Settings.from_env({"ROUTER_INTERACTIVE_RESERVE": "always"}).interactive_reserve == "always"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ROUTER_INTERACTIVE_RESERVE": "sometimes"})
    assert "ROUTER_INTERACTIVE_RESERVE" in str(info.value) and "'always'" in str(info.value)
