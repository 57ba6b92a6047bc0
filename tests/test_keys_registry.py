"""The key registry is the pool's truth: clients and read-only commands never write it, an
empty one is seeded once from a keys file, a differing file is reported by key id, and only
an explicit `routerctl keys apply` / `routerctl worker --apply-keys` replaces it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

import cli.main
from cli.main import cli as routerctl
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import parse_keys
from router_jobs.capacity.redis_pool import RedisKeyPool
from router_jobs.client.router import Router
from router_jobs.errors import ConfigError
from router_jobs.settings import Settings
from tests.workerpool import fake_key


def keys_file(folder: Path, *keys: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "keys.json"
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def ids(pool: RedisKeyPool) -> list[str]:
    return sorted(pool.registry.current(force=True).keys)


def invoke(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(routerctl, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    return result


@pytest.fixture
def pool(r: redis.Redis, namespace: str) -> RedisKeyPool:
    return RedisKeyPool(r, RedisSchema(namespace))


@pytest.fixture
def live(tmp_path: Path, redis_url: str, namespace: str, pool: RedisKeyPool) -> dict[str, str]:
    """A pool in use: seeded from one file, then changed live by an operator."""
    path = keys_file(tmp_path / "pool", fake_key("live-1"), fake_key("live-2"))
    assert pool.check_file(path).outcome == "seeded"
    pool.disable("live-2")
    return {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace, "ROUTER_KEYS_FILE": str(path),
            "SECRET_STORE_TYPE": "env"}


def test_read_only_commands_elsewhere_never_replace_the_keys(live: dict[str, str], pool: RedisKeyPool,
                                                             tmp_path: Path) -> None:
    other = keys_file(tmp_path / "elsewhere", fake_key("stray-1"))
    before = pool.store.version()
    env = dict(live, ROUTER_KEYS_FILE=str(other))
    for args in (["queues"], ["keys"], ["health"], ["jobs", "list"]):
        CliRunner().invoke(routerctl, args, env=env, catch_exceptions=False)
    assert pool.store.version() == before
    assert ids(pool) == ["live-1", "live-2"]
    assert pool.key_status("live-2")["state"] == "disabled"


def test_a_router_never_writes_the_registry(redis_url: str, namespace: str, pool: RedisKeyPool,
                                            tmp_path: Path) -> None:
    path = keys_file(tmp_path, fake_key("k1", model="m1"))
    settings = Settings(redis_url=redis_url, namespace=namespace, keys_file=path)
    with Router(settings) as router:
        # nothing seeded the registry yet: the file's models are accepted, read only
        handle = router.submit("hi", model="m1")
        assert handle.job_id
        assert pool.store.version() == 0
        assert pool.check_file(path).outcome == "seeded"  # what the first worker does
        path.write_text(json.dumps({"keys": [fake_key("k9", model="m9")]}))
        router.pool.registry.current(force=True)
        assert router.served_models() == {"m1"}  # the registry wins over the edited file
    assert ids(pool) == ["k1"]


def test_a_differing_file_is_reported_by_key_id_and_not_applied(live: dict[str, str], pool: RedisKeyPool,
                                                                tmp_path: Path) -> None:
    cfg = fake_key("live-1", rpm=5)
    path = keys_file(tmp_path / "other", cfg, fake_key("new-1"))
    check = pool.check_file(path)
    assert check.outcome == "differs"
    assert (check.diff.added, check.diff.removed, check.diff.changed) == (["new-1"], ["live-2"], ["live-1"])
    msg = check.message()
    assert "new-1" in msg and "live-2" in msg and "live-1" in msg and "routerctl keys apply" in msg
    assert ids(pool) == ["live-1", "live-2"]
    assert pool.check_file(live["ROUTER_KEYS_FILE"]).outcome == "same"


def test_seeding_happens_once_even_when_racing(r: redis.Redis, namespace: str, tmp_path: Path) -> None:
    files = [keys_file(tmp_path / str(i), fake_key(f"k{i}")) for i in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(files))

    def seed(path: Path) -> None:
        client = redis.Redis(connection_pool=r.connection_pool)
        barrier.wait()
        outcomes.append(RedisKeyPool(client, RedisSchema(namespace)).check_file(path).outcome)

    threads = [threading.Thread(target=seed, args=(p,)) for p in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["differs"] * 5 + ["seeded"]
    assert len(ids(RedisKeyPool(r, RedisSchema(namespace)))) == 1


def test_keys_apply_replaces_on_request(live: dict[str, str], pool: RedisKeyPool, tmp_path: Path) -> None:
    path = keys_file(tmp_path / "new", fake_key("live-1"), fake_key("new-1"))
    out = json.loads(invoke(live, "keys", "apply", str(path), "--json").output)
    assert out["keys"] == ["live-1", "new-1"] and out["added"] == ["new-1"] and out["removed"] == ["live-2"]
    assert ids(pool) == ["live-1", "new-1"]
    missing = invoke(live, "keys", "apply", str(tmp_path / "nope.json"), code=2)
    assert "does not exist" in missing.output
    with pytest.raises(ConfigError):
        pool.check_file(tmp_path / "nope.json", apply=True)


def test_worker_reports_a_differing_file_and_applies_it_only_when_asked(
        live: dict[str, str], pool: RedisKeyPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool.client.hset(pool.ks.consumers(), "other-worker", str(time.time()))  # a pool in use
    started: list[list[str]] = []
    monkeypatch.setattr(cli.main, "supervise", lambda argv, env, restart=True: started.append(argv) or 0)
    path = keys_file(tmp_path / "second-worker", fake_key("live-1"), fake_key("other-1"))
    env = dict(live, ROUTER_KEYS_FILE=str(path))
    res = invoke(env, "worker", "--processes", "1")
    assert "differs from the key registry" in res.output and "other-1" in res.output and "live-2" in res.output
    assert ids(pool) == ["live-1", "live-2"] and len(started) == 1
    res = invoke(env, "worker", "--processes", "1", "--apply-keys")
    assert "applied" in res.output
    assert ids(pool) == ["live-1", "other-1"] and len(started) == 2


def test_an_idle_pool_takes_up_an_edited_file_but_keeps_live_edits(
        live: dict[str, str], pool: RedisKeyPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.main, "supervise", lambda argv, env, restart=True: 0)
    pool.remove_key("live-2")  # a live edit; the file is unchanged: a restart keeps the edit
    res = invoke(live, "worker")
    assert "differs" in res.output and ids(pool) == ["live-1"]
    path = Path(live["ROUTER_KEYS_FILE"])  # the operator edits keys.json and restarts the pool
    path.write_text(json.dumps({"keys": [fake_key("live-1"), fake_key("live-3")]}))
    res = invoke(live, "worker")
    assert "applied" in res.output and "no worker was running" in res.output and "live-3" in res.output
    assert ids(pool) == ["live-1", "live-3"]


def test_worker_seeds_an_empty_registry(redis_url: str, namespace: str, pool: RedisKeyPool, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.main, "supervise", lambda argv, env, restart=True: 0)
    path = keys_file(tmp_path, fake_key("first-1"))
    env = {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": namespace, "ROUTER_KEYS_FILE": str(path)}
    assert "seeded" in invoke(env, "worker").output
    assert ids(pool) == ["first-1"]
    assert parse_keys(json.loads(path.read_text())).keys == list(pool.keys_file().keys)


def test_an_idle_restart_never_undoes_an_explicit_apply_or_a_reported_file(
        live: dict[str, str], pool: RedisKeyPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.main, "supervise", lambda argv, env, restart=True: 0)
    newer = keys_file(tmp_path / "newer", fake_key("live-1"), fake_key("newer-1"))
    invoke(live, "keys", "apply", str(newer))
    res = invoke(live, "worker")  # the pool restarts with its usual (older) keys.json
    assert "differs" in res.output and ids(pool) == ["live-1", "newer-1"]
    # a second worker's differing file, reported while the pool ran ...
    other = keys_file(tmp_path / "other", fake_key("other-1"))
    pool.client.hset(pool.ks.consumers(), "busy-worker", str(time.time()))
    assert pool.check_file(other).outcome == "differs"
    pool.client.hdel(pool.ks.consumers(), "busy-worker")
    # ... is not taken up when that worker later starts a pool alone
    res = invoke(dict(live, ROUTER_KEYS_FILE=str(other)), "worker")
    assert "differs" in res.output and ids(pool) == ["live-1", "newer-1"]
