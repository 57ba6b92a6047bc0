"""Conversation store against a real Redis: atomic idempotent turns, history, TTL, ordering."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.conversations.store import ConversationStore, trim_to_budget
from router_jobs.errors import JobValidationError
from router_jobs.models import ChatMessage
from router_jobs.settings import Settings


def U(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def A(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


@pytest.fixture
def store(r: redis.Redis, namespace: str) -> ConversationStore:
    return ConversationStore(r, RedisSchema(namespace), ttl_seconds=Settings().conversation_ttl_seconds)


def turn(store: ConversationStore, conv: str, i: int, **kw: object) -> bool:
    args = {"tokens": 10, "model": "gemini-2.5-flash", "key_id": "k1", "provider": "gemini"}
    args.update(kw)
    return store.append_turn(conv, [U(f"q{i}")], A(f"a{i}"), job_id=f"job-{i}", **args)  # type: ignore[arg-type]


def test_append_turn_writes_messages_and_metadata_together(store: ConversationStore) -> None:
    assert store.create("c1", metadata={"agent": "planner"}, system_prompt="Be brief.") is True
    assert turn(store, "c1", 1) is True
    assert turn(store, "c1", 2, model="gpt-4o", key_id="k2", provider="openai", tokens=5) is True
    assert store.history("c1") == [U("q1"), A("a1"), U("q2"), A("a2")]
    meta = store.metadata("c1")
    assert meta is not None
    assert meta["message_count"] == 4 and meta["total_tokens"] == 15
    assert (meta["last_model"], meta["last_key_id"], meta["last_provider"]) == ("gpt-4o", "k2", "openai")
    assert meta["system_prompt"] == "Be brief." and meta["metadata"] == {"agent": "planner"}
    assert meta["created_at"] <= meta["updated_at"]


def test_append_turn_is_idempotent_per_job(store: ConversationStore) -> None:
    assert turn(store, "c1", 1) is True
    assert turn(store, "c1", 1) is False  # the same job retried
    assert store.history("c1") == [U("q1"), A("a1")]
    assert store.metadata("c1")["total_tokens"] == 10  # type: ignore[index]


def test_concurrent_retries_of_one_job_append_once(store: ConversationStore) -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(turn(store, "c1", 7))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.history("c1") == [U("q7"), A("a7")]


def test_append_creates_conversation_and_multi_message_turn(store: ConversationStore) -> None:
    assert not store.exists("fresh")
    store.append_turn(
        "fresh", [U("part 1"), U("part 2")], A("both"), tokens=3, model="m", key_id="k", provider="fake",
        job_id="j",
    )
    assert store.exists("fresh")
    assert store.history("fresh") == [U("part 1"), U("part 2"), A("both")]
    assert store.metadata("fresh")["message_count"] == 3  # type: ignore[index]


def test_history_limit_truncate_and_counts(store: ConversationStore) -> None:
    for i in range(5):
        turn(store, "c", i)
    assert store.history("c", limit=3) == [A("a3"), U("q4"), A("a4")]
    assert store.history("c", limit=0) == []
    assert store.history("c", limit=100) == store.history("c")
    assert store.truncate("c", keep_last_n=4) == 6
    assert store.history("c") == [U("q3"), A("a3"), U("q4"), A("a4")]
    meta = store.metadata("c")
    assert meta is not None and meta["message_count"] == 4 and meta["total_tokens"] == 50
    assert store.truncate("c", keep_last_n=10) == 0
    assert store.truncate("c", keep_last_n=0) == 4
    assert store.history("c") == [] and store.exists("c")
    assert store.truncate("missing", 3) == 0 and not store.exists("missing")


def test_metadata_delete_and_missing(store: ConversationStore) -> None:
    assert store.metadata("nope") is None
    store.create("c")
    assert store.create("c", system_prompt="later") is False
    assert store.system_prompt("c") == "later"
    turn(store, "c", 1)
    assert store.delete("c") is True
    assert not store.exists("c") and store.history("c") == [] and store.metadata("c") is None
    assert store.delete("c") is False
    assert turn(store, "c", 1) is True  # a deleted conversation starts afresh


def test_list_scans_live_conversations(store: ConversationStore, r: redis.Redis, namespace: str) -> None:
    for name in ("planner_1", "planner_2", "coder_1"):
        store.create(name)
    other = ConversationStore(r, RedisSchema(namespace + "x"))
    other.create("planner_9")
    assert sorted(store.list()) == ["coder_1", "planner_1", "planner_2"]
    assert sorted(store.list("planner_*")) == ["planner_1", "planner_2"]
    assert len(store.list(limit=2)) == 2


def test_ttl_set_and_refreshed_on_use(r: redis.Redis, namespace: str) -> None:
    ks = RedisSchema(namespace)
    store = ConversationStore(r, ks, ttl_seconds=1000)
    turn(store, "c", 1)
    for key in (ks.conv_messages("c"), ks.conv_meta("c"), ks.conv_applied("c")):
        assert 990 < r.ttl(key) <= 1000
    r.expire(ks.conv_messages("c"), 5)
    r.expire(ks.conv_meta("c"), 5)
    store.history("c")
    assert r.ttl(ks.conv_messages("c")) > 990 and r.ttl(ks.conv_meta("c")) > 990
    r.expire(ks.conv_meta("c"), 5)
    store.metadata("c")
    assert r.ttl(ks.conv_meta("c")) > 990


def test_from_settings_uses_namespace_and_ttl(r: redis.Redis, namespace: str) -> None:
    store = ConversationStore.from_settings(r, Settings(namespace=namespace, conversation_ttl_seconds=123))
    store.create("c")
    assert 100 < r.ttl(RedisSchema(namespace).conv_meta("c")) <= 123


def test_expired_conversation_is_gone(r: redis.Redis, namespace: str) -> None:
    store = ConversationStore(r, RedisSchema(namespace), ttl_seconds=1)
    turn(store, "c", 1)
    for key in r.keys(f"{namespace}:*"):
        r.pexpire(key, 1)
    time.sleep(0.05)
    assert not store.exists("c") and store.history("c") == []


def test_provider_neutral_round_trip(store: ConversationStore, r: redis.Redis, namespace: str) -> None:
    store.create("c", system_prompt="You are terse.")
    store.append_turn("c", [U("hi ünïcode ✓")], A("hello"), tokens=4, model="gemini-2.5-flash",
                      key_id="g1", provider="gemini", job_id="j1")
    store.append_turn("c", [U("and now?")], A("still here"), tokens=4, model="claude-sonnet-4",
                      key_id="a1", provider="anthropic", job_id="j2")
    raw = r.lrange(RedisSchema(namespace).conv_messages("c"), 0, -1)
    assert all(set(__import__("json").loads(x)) == {"role", "content"} for x in raw)
    # a fresh store object (another worker) reads the same history for any provider
    again = ConversationStore(r, RedisSchema(namespace))
    assert again.history("c") == [U("hi ünïcode ✓"), A("hello"), U("and now?"), A("still here")]
    assert again.metadata("c")["last_provider"] == "anthropic"  # type: ignore[index]
    assert again.get_history("c", limit=1) == [{"role": "assistant", "content": "still here"}]


def test_bad_conversation_ids_are_refused(store: ConversationStore) -> None:
    for bad in ("", "a{b}", "with space", "star*"):
        with pytest.raises(JobValidationError):
            store.history(bad)


def words(messages: list[ChatMessage]) -> int:
    return sum(len(m.content.split()) for m in messages)


def test_trim_to_budget_keeps_system_and_newest() -> None:
    system = ChatMessage(role="system", content="one two")
    history = [U("a a"), A("b b"), U("c c"), A("d d"), U("e e"), A("f f")]
    new = [U("g g")]
    assert trim_to_budget(system, history, new, 100, words) == [system, *history, *new]
    assert trim_to_budget(system, history, new, 10, words) == [system, U("e e"), A("f f"), *new]
    assert trim_to_budget(system, history, new, 12, words) == [system, U("c c"), A("d d"), U("e e"), A("f f"), *new]
    assert trim_to_budget(system, history, new, 8, words) == [system, U("e e"), A("f f"), *new]
    assert trim_to_budget(system, history, new, 7, words) == [system, *new]
    assert trim_to_budget(system, history, new, 1, words) == [system, *new]  # never drops these
    assert trim_to_budget(None, history, new, 6, words) == [U("e e"), A("f f"), *new]
    assert trim_to_budget(None, [], new, 0, words) == new


def test_trim_to_budget_drops_whole_turns() -> None:
    history = [U("x"), A("y"), A("z z z"), U("w"), A("v")]
    assert trim_to_budget(None, history, [U("n")], 4, words) == [U("w"), A("v"), U("n")]


# -- turn ordering -----------------------------------------------------------------------


def test_turn_gate_in_order(store: ConversationStore) -> None:
    seqs = [store.next_turn_seq("c") for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert store.turn_state("c", 1) == 0
    assert store.turn_state("c", 2) == 1 and store.turn_state("c", 3) == 2
    assert not store.turn_gate("c", 2)
    assert store.finish_turn("c", 1) == 1
    assert store.turn_state("c", 1) == -1  # a redelivered finished turn must not run again
    assert store.turn_gate("c", 2)
    assert store.turn_info("c") == {"issued": 3, "done": 1, "running": 2, "skipped": 0}


def test_turn_finished_out_of_order_is_skipped_over(store: ConversationStore) -> None:
    for _ in range(4):
        store.next_turn_seq("c")
    assert store.finish_turn("c", 3) == 0  # turn 3 cancelled while queued
    assert store.turn_state("c", 3) == -1
    store.finish_turn("c", 1)
    store.finish_turn("c", 2)  # failed: the gate still advances
    assert store.turn_gate("c", 4)
    assert store.turn_info("c")["done"] == 3


def test_stalled_head_turn_is_skipped_after_stall_time(store: ConversationStore) -> None:
    store.next_turn_seq("c")
    store.next_turn_seq("c")
    assert store.turn_state("c", 2, stall_seconds=3600) == 1
    time.sleep(0.02)
    assert store.turn_state("c", 2, stall_seconds=0.001) == 0  # turn 1 was lost: skipped
    assert store.turn_state("c", 1) == -1
    assert store.turn_info("c")["skipped"] == 1


def test_turn_with_expired_sequence_is_due(store: ConversationStore, r: redis.Redis, namespace: str) -> None:
    store.next_turn_seq("c")
    store.next_turn_seq("c")
    r.delete(RedisSchema(namespace).conv_turn_seq("c"), RedisSchema(namespace).conv_turn_gate("c"))
    assert store.turn_gate("c", 2)
    assert store.next_turn_seq("c") == 1  # a new sequence starts cleanly


def test_twenty_turns_eight_threads_run_one_at_a_time_in_order(store: ConversationStore) -> None:
    seqs = [store.next_turn_seq("c") for _ in range(20)]
    pending = list(seqs)
    random.Random(5).shuffle(pending)
    lock = threading.Lock()
    ran: list[int] = []
    running = 0
    max_running = 0

    def worker() -> None:
        nonlocal running, max_running
        while True:
            with lock:
                if not pending:
                    return
                seq = pending.pop(0)
            if not store.turn_gate("c", seq):
                with lock:
                    pending.append(seq)  # "re-enqueue with a short delay"
                time.sleep(0.001)
                continue
            with lock:
                running += 1
                max_running = max(max_running, running)
                ran.append(seq)
            time.sleep(random.random() / 1000)
            with lock:
                running -= 1
            store.append_turn("c", [U(f"q{seq}")], A(f"a{seq}"), tokens=1, model="m", key_id="k",
                              provider="fake", job_id=f"job-{seq}")
            store.finish_turn("c", seq)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ran == list(range(1, 21))
    assert max_running == 1
    expected = [m for i in range(1, 21) for m in (U(f"q{i}"), A(f"a{i}"))]
    assert store.history("c") == expected
