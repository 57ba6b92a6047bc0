"""Every ``routerctl`` operator command through click's CliRunner, ``--json`` parsed, exit codes
checked, against the private Redis with a namespace per test (no worker processes here)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from cli.main import cli
from router_jobs.backend.schema import RedisSchema
from router_jobs.jobs.records import job_message
from router_jobs.models import ChatMessage
from tests.workerpool import fake_key

SECRET_1 = "sk-test-secret-value-0001"
SECRET_2 = "sk-test-secret-value-0002"


@pytest.fixture
def env(redis_url: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [fake_key("fake-1", rpm=100), fake_key("fake-2", rpm=50, rpd=1000)]}))
    env = {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace, "ROUTER_KEYS_FILE": str(keys),
           "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": SECRET_1, "API_KEY_FAKE_2": SECRET_2,
           "ROUTER_STATE_DIR": str(tmp_path / "state")}
    run(env, "keys", "apply", str(keys))  # what a worker does with an empty registry
    return env


def run(env: dict[str, str], *args: str, code: int | None = 0, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, (args, result.exit_code, result.output)
    assert SECRET_1 not in result.output and SECRET_2 not in result.output
    return result


def js(env: dict[str, str], *args: str, code: int = 0) -> Any:
    return json.loads(run(env, *args, "--json", code=code).stdout)


def test_help_documents_exit_codes(env: dict[str, str]) -> None:
    out = run(env, "--help").output
    assert "Exit codes" in out and "usage or configuration error" in out
    for name in ("queues", "keys", "submit", "jobs", "conv", "dlq", "health", "scan", "batch", "worker", "metrics"):
        assert name in out
    assert run(env, "nosuchcommand", code=2).exit_code == 2


def test_queues_after_submits(env: dict[str, str]) -> None:
    ids = [js(env, "submit", f"hello {i}")["job_id"] for i in range(3)]
    js(env, "submit", "later", "--priority", "batch")
    rows = {r["queue"]: r for r in js(env, "queues")}
    assert rows["interactive"]["ready"] == 3 and rows["batch"]["ready"] == 1
    assert rows["interactive"]["in_flight"] == 0 and rows["interactive"]["dead"] == 0
    assert rows["interactive"]["consumers_alive"] == 0
    assert rows["interactive"]["oldest_ready_age"] >= 0
    assert rows["interactive"]["completed_last_minute"] == 0
    assert len(set(ids)) == 3
    # interactive jobs just arrived and were most of the admissions: batch work leaves the most free
    assert rows["batch"]["held_share"] == 0.2 and rows["interactive"]["held_share"] == 0.0
    table = run(env, "queues").output
    assert "interactive" in table and "OLDEST READY" in table
    assert "held from batch work for interactive jobs: 20.0% of each key's limits" in table


def test_submit_refusals_exit_2(env: dict[str, str]) -> None:
    res = run(env, "submit", "hi", "--model", "nope", code=2)
    assert "no active key serves model 'nope'" in res.output
    bad = dict(env, ROUTER_KEYS_FILE=str(Path(env["ROUTER_KEYS_FILE"]).with_name("bad.json")))
    Path(bad["ROUTER_KEYS_FILE"]).write_text('{"keys": [{"key_id": "x"}]}')
    assert "field" in run(bad, "keys", "apply", bad["ROUTER_KEYS_FILE"], code=2).output
    run(bad, "queues")  # a read-only command never reads (or applies) the keys file


def test_keys_listing_and_live_changes(env: dict[str, str]) -> None:
    rows = {r["key_id"]: r for r in js(env, "keys")}
    assert set(rows) == {"fake-1", "fake-2"}
    k2 = rows["fake-2"]
    assert k2["provider"] == "fake" and k2["models"] == ["fake-model"] and k2["state"] == "active"
    assert {(w["unit"], w["seconds"], w["limit"]) for w in k2["limits"]} == {("requests", 60.0, 50),
                                                                          ("requests", 86400.0, 1000)}
    assert k2["in_flight"] == 0 and k2["successes_5m"] == 0 and k2["spend_today_usd"] == 0.0
    assert "fake-2" in run(env, "keys").output

    assert js(env, "keys", "disable", "fake-1", "--reason", "rotating")["state"] == "disabled"
    assert js(env, "keys", "enable", "fake-1")["state"] == "active"
    assert js(env, "keys", "cooldown", "fake-1", "30", "--reason", "provider trouble")["state"] == "cooldown"
    cooled = {r["key_id"]: r for r in js(env, "keys")}["fake-1"]
    assert cooled["reason"] == "provider trouble" and cooled["until"] > time.time() + 20
    assert "cooldown (provider trouble" in run(env, "keys").output
    assert js(env, "keys", "clear", "fake-1")["state"] == "active"

    added = js(env, "keys", "add", json.dumps(fake_key("fake-3", rpm=7)))
    assert added["added"] == "fake-3"
    js(env, "keys", "add", "--key-id", "fake-4", "--provider", "fake", "--model", "fake-model", "--rpm", "9")
    assert {r["key_id"] for r in js(env, "keys")} == {"fake-1", "fake-2", "fake-3", "fake-4"}
    assert js(env, "keys", "remove", "fake-3") == {"removed": "fake-3"}
    run(env, "keys", "remove", "fake-3", code=1)
    run(env, "keys", "enable", "ghost", code=1)
    run(env, "keys", "cooldown", "ghost", "5", code=1)
    run(env, "keys", "add", '{"key_id": "bad"}', code=2)
    run(env, "keys", "add", "not json", code=2)
    assert js(env, "keys", "reload")["keys"] == ["fake-1", "fake-2"]


def test_jobs_show_list_cancel(env: dict[str, str]) -> None:
    a = js(env, "submit", "first", "--system", "be brief")["job_id"]
    b = js(env, "submit", "second", "--priority", "batch")["job_id"]
    shown = js(env, "jobs", "show", a)
    assert shown["status"] == "queued" and shown["queue"] == "interactive"
    assert shown["spec"]["system_prompt"] == "be brief"
    listed = js(env, "jobs", "list")
    assert [j["job_id"] for j in listed] == [b, a]
    assert js(env, "jobs", "cancel", b) == {"job_id": b, "cancelled": True, "status": "cancelled"}
    assert [j["job_id"] for j in js(env, "jobs", "list", "--status", "cancelled")] == [b]
    assert js(env, "jobs", "cancel", b, code=1)["cancelled"] is False
    run(env, "jobs", "show", "0" * 32, code=1)
    assert b in run(env, "jobs", "list").output


def test_conversations(env: dict[str, str], redis_url: str, namespace: str) -> None:
    from router_jobs.conversations.store import ConversationStore

    store = ConversationStore(redis.Redis.from_url(redis_url), RedisSchema(namespace))
    for i in range(3):
        store.append_turn("c-1", [ChatMessage(role="user", content=f"q{i}")],
                          ChatMessage(role="assistant", content=f"a{i}"), tokens=5, model="fake-model",
                          key_id="fake-1", provider="fake", job_id=f"j{i}")
    shown = js(env, "conv", "show", "c-1")
    assert shown["metadata"]["message_count"] == 6
    assert [m["content"] for m in shown["messages"]][:2] == ["q0", "a0"]
    assert js(env, "conv", "list") == ["c-1"]
    assert js(env, "conv", "truncate", "c-1", "--keep", "2")["removed"] == 4
    assert [m["content"] for m in js(env, "conv", "show", "c-1")["messages"]] == ["q2", "a2"]
    assert js(env, "conv", "delete", "c-1")["deleted"] is True
    run(env, "conv", "show", "c-1", code=1)
    run(env, "conv", "delete", "c-1", "--json", code=1)


def test_queues_and_job_show_tell_jobs_waiting_in_the_pool(env: dict[str, str], tmp_path: Path) -> None:
    keys = tmp_path / "one.json"
    keys.write_text(json.dumps({"keys": [fake_key("fake-1", rpm=2)]}))
    small = {**env, "ROUTER_KEYS_FILE": str(keys)}
    run(small, "keys", "apply", str(keys))  # what a worker does with an empty registry
    ids = [js(small, "submit", f"hello {i}", "--priority", "batch")["job_id"] for i in range(5)]
    rows = {r["queue"]: r for r in js(small, "queues")}
    # two went to the queue (the key had room), three wait in the pool for the next minute
    assert rows["batch"]["ready"] == 2 and rows["batch"]["waiting_in_pool"] == 3
    assert "waiting in the key pool" in run(small, "queues").output
    shown = js(small, "jobs", "show", ids[3])
    # next room in about a minute, then one place per 30 s at 2 per minute (a linear estimate)
    assert shown["place_in_line"] == 1 and 80 < shown["estimated_start_in"] <= 91


def test_dead_letters_list_replay_purge(env: dict[str, str], redis_url: str, namespace: str) -> None:
    client, ks = redis.Redis.from_url(redis_url), RedisSchema(namespace)
    client.sadd(ks.queues(), "interactive")
    for i in range(3):
        client.xadd(ks.dead("interactive"), {"m": job_message(f"job{i}", "interactive"),
                                             "reason": "started 3 times without an ack", "deliveries": 3, "at": 1})
    rows = js(env, "dlq", "list")
    assert [d["job_id"] for d in rows] == ["job0", "job1", "job2"]
    assert rows[0]["reason"] == "started 3 times without an ack"
    assert js(env, "dlq", "replay", "interactive", "--limit", "1") == {"queue": "interactive", "replayed": 1,
                                                                         "refused": {}}
    assert client.xlen(ks.stream("interactive")) == 1
    assert {r["queue"]: r for r in js(env, "queues")}["interactive"]["ready"] == 1
    run(env, "dlq", "replay", "interactive", "--id", "0-1", code=1)
    assert js(env, "dlq", "purge", "interactive", "--yes")["purged"] == 2
    assert js(env, "dlq", "list") == []
    assert "no dead letters" in run(env, "dlq", "list").output


def test_health_reasons_and_exit_codes(env: dict[str, str], redis_url: str, namespace: str) -> None:
    report = js(env, "health", code=1)
    assert report["healthy"] is False and any("no worker heartbeat" in r for r in report["reasons"])
    client, ks = redis.Redis.from_url(redis_url), RedisSchema(namespace)
    client.hset(ks.consumers(), "host-1-abc", str(time.time()))
    assert js(env, "health")["healthy"] is True
    run(env, "keys", "disable", "fake-1")
    run(env, "keys", "disable", "fake-2")
    report = js(env, "health", code=1)
    assert any("no usable key" in r for r in report["reasons"])
    assert "unhealthy" in run(env, "health", code=1).output
    down = js(dict(env, REDIS_URL="redis://127.0.0.1:1/0"), "health", code=1)
    assert "redis did not answer PING" in down["reasons"][0]


def test_scan_finds_configured_values_never_prints_them(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "clean.py").write_text("print('nothing here')\n")
    assert js(env, "scan", str(src), "--no-detect-secrets", "--fail-on-found")["count"] == 0
    (src / "leak.py").write_text(f"x = 1\nKEY = '{SECRET_2}'\n")
    found = js(env, "scan", str(src), "--no-detect-secrets", "--fail-on-found", code=1)
    assert found["findings"] == [{"file": str(src / "leak.py"), "line": 2, "kind": "configured API key value"}]
    assert found["known_values_checked"] == 2
    assert js(env, "scan", str(src), "--no-detect-secrets")["count"] == 1  # reported, exit 0


def test_batch_status_unknown_and_bad_input(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "batch", "status", "nope", code=1)
    run(env, "batch", "run", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl"), code=2)
