"""Shared fixtures: each test session gets its own Redis; each test its own namespace."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for the run, or ``TEST_REDIS_URL`` when given (never cleared)."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    pytest.fail("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of one node holding every slot: it refuses any command or script whose
    keys span slots (CROSSSLOT), exactly as a many-node cluster does."""
    server = RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", port=_cluster_port())
    try:
        plain = redis.Redis(port=server.port)
        plain.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in plain.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                pytest.fail("single-node cluster did not come up")
            time.sleep(0.05)
        client = RedisCluster(host="127.0.0.1", port=server.port)
        yield client
        client.close()
    finally:
        server.stop()
