"""The conversation, limit and budget scripts run unchanged on a Redis Cluster (one node,
every slot): the server refuses any command whose keys span slots (CROSSSLOT)."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from router_jobs.admission.budgets import Budgets
from router_jobs.admission.userlimits import UserLimiter
from router_jobs.backend.schema import RedisSchema
from router_jobs.conversations.store import ConversationStore
from router_jobs.models import ChatMessage
from router_jobs.settings import Settings


def test_the_cluster_refuses_cross_slot_scripts(cluster: RedisCluster) -> None:
    script = cluster.register_script("return redis.call('GET', KEYS[1])")
    with pytest.raises((ResponseError, RedisClusterException)):
        script(keys=["a:{one}", "b:{two}"], args=[])


def test_scripts_run_on_a_cluster(cluster: RedisCluster, namespace: str) -> None:
    ks = RedisSchema(namespace)
    store = ConversationStore(cluster, ks)  # type: ignore[arg-type]
    seq = store.next_turn_seq("c")
    assert store.turn_gate("c", seq)
    assert store.append_turn("c", [ChatMessage(role="user", content="q")], ChatMessage(role="assistant", content="a"),
                             tokens=1, model="m", key_id="k", provider="fake", job_id="j")
    assert store.finish_turn("c", seq) == 1
    assert store.truncate("c", 1) == 1
    assert store.history("c") == [ChatMessage(role="assistant", content="a")]

    limiter = UserLimiter(cluster, ks, Settings(user_burst_default=2))  # type: ignore[arg-type]
    assert [limiter.acquire("alice") for _ in range(3)][:2] == [0.0, 0.0]

    budgets = Budgets(cluster, ks)  # type: ignore[arg-type]
    budgets.set_cap("user:alice", 1.0)
    budgets.record("k", "m", "alice", 0.5)
    budgets.check("alice", "k", estimated_cost=0.5)
    assert budgets.report()["users"] == {"alice": pytest.approx(0.5)}
