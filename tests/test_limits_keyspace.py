"""Keys that one script touches together share a Redis Cluster slot."""

from __future__ import annotations

from redis.crc import key_slot

from router_jobs.backend.schema import RedisSchema


def slots(*keys: str) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_conversation_keys_share_a_slot() -> None:
    ks = RedisSchema("rj")
    for conv in ("planner_1", "a:b:c", "x"):
        assert len(slots(
            ks.conv_messages(conv), ks.conv_meta(conv), ks.conv_applied(conv),
            ks.conv_turn_seq(conv), ks.conv_turn_gate(conv), ks.conv_turn_finished(conv),
        )) == 1


def test_limit_buckets_share_a_slot_whatever_the_user_id() -> None:
    ks = RedisSchema("rj")
    users = ("alice", "b{o}b", "}weird{", "x" * 200)
    assert len(slots(ks.limits_global(), ks.limits_overrides(), *(ks.limits_user(u) for u in users))) == 1


def test_budget_keys_share_a_slot() -> None:
    ks = RedisSchema("rj")
    assert len(slots(ks.budget_caps(), ks.budget_spend("2025-01-01"), ks.budget_spend("2025-12-31"))) == 1
