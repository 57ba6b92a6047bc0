"""Conversations keep tool turns and content parts whole and provider-neutral."""

from __future__ import annotations

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.conversations.store import ConversationStore, trim_to_budget
from router_jobs.models import ChatMessage
from router_jobs.request import ImagePart, ProviderPart, TextPart, ToolCall
from router_jobs.tokens import estimate_tokens

CALL = ToolCall(id="call_9", name="lookup", arguments='{"q": "retry policy"}')


def tool_turn(n: int) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=f"question {n} " + "words " * 50),
            ChatMessage(role="assistant", tool_calls=[CALL.model_copy(update={"id": f"call_{n}"})]),
            ChatMessage(role="tool", tool_call_id=f"call_{n}", content=f"result {n}", is_error=n == 2),
            ChatMessage(role="assistant", content=f"answer {n}")]


def test_tool_turns_and_parts_survive_the_store(r: redis.Redis, namespace: str) -> None:
    store = ConversationStore(r, RedisSchema(namespace))
    user = ChatMessage(role="user", content=[TextPart(text="look"), ImagePart(data="iVBORw0KGgo=", media_type="image/png")])
    thinking = ProviderPart(provider="anthropic", data={"type": "thinking", "thinking": "hm", "signature": "s1"})
    reply = ChatMessage(role="assistant", content=[thinking], tool_calls=[CALL])
    store.append_turn("c-tools", [user], reply, tokens=10, model="m", key_id="k", provider="anthropic", job_id="j1")
    result = ChatMessage(role="tool", tool_call_id="call_9", content="found it", is_error=True)
    store.append_turn("c-tools", [result], ChatMessage(role="assistant", content="done"), tokens=5, model="m2",
                      key_id="k2", provider="gemini", job_id="j2")
    assert store.history("c-tools") == [user, reply, result, ChatMessage(role="assistant", content="done")]
    seed_view = store.get_history("c-tools")
    assert seed_view[1]["tool_calls"] == [CALL.model_dump()] and seed_view[2]["tool_call_id"] == "call_9"
    assert seed_view[3] == {"role": "assistant", "content": "done"}  # plain turns look as they always did


def test_trimming_drops_whole_turns_never_a_call_without_its_result() -> None:
    history = [m for n in range(1, 6) for m in tool_turn(n)]
    new = [ChatMessage(role="user", content="next")]
    kept = trim_to_budget(None, history, new, 250, lambda msgs: estimate_tokens(msgs, "gpt-4o"))
    assert len(kept) < len(history) + 1 and kept[-1] == new[0]
    calls = {c.id for m in kept for c in m.tool_calls}
    results = {m.tool_call_id for m in kept if m.role == "tool"}
    assert calls == results and kept[0].role == "user"
