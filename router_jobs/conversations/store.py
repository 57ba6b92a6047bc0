"""Conversation history in Redis, provider-neutral, shared by every worker.

A conversation is a list of ``{"role", "content"}`` JSON messages and a metadata hash, both
under the hash tag ``{conv:<id>}`` so every multi-key step runs on one Redis Cluster slot.
Nothing provider-specific is stored: a conversation begun on Gemini continues on OpenAI or
Anthropic with the same history and system prompt. Every key expires ``ttl_seconds`` after
the conversation was last used (created, appended, read, truncated or ordered).

A chat job appends its turn with :meth:`ConversationStore.append_turn` only when it
succeeded: one Lua step pushes the job's messages and the reply, updates the metadata and
remembers the job id, so a retried job never appends twice and a failed job leaves nothing.

Turn ordering (many workers, one conversation)::

    seq = store.next_turn_seq(conv_id)          # at submit, in submission order
    ...
    state = store.turn_state(conv_id, seq)     # in the worker, before reading history
    if state > 0:   re-enqueue the job with a short delay (do not block the thread)
    if state < 0:   the turn already finished or was skipped: do not run it
    if state == 0:  run; then, on EVERY terminal outcome (succeeded, failed, cancelled,
                    expired, dead-lettered), call store.finish_turn(conv_id, seq)

``finish_turn`` may be called for a later turn before an earlier one (a turn cancelled while
queued): the gate remembers it and skips over it when the earlier turns finish. If a job is
lost without ever reaching a terminal outcome, ``turn_state(..., stall_seconds=S)`` marks the
head turn skipped once it has neither checked in nor finished for ``S`` seconds; choose ``S``
above the longest a turn can legitimately run. The gate's keys expire with the conversation;
a turn whose sequence expired is simply due.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator
from typing import Any

import redis

from router_jobs.backend.ops import Op, Steps, drive, pipelined, run
from router_jobs.backend.schema import RedisSchema
from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.errors import JobValidationError
from router_jobs.models import ChatMessage
from router_jobs.settings import Settings

_INT_FIELDS = ("message_count", "total_tokens")
_FLOAT_FIELDS = ("created_at", "updated_at")
_STR_FIELDS = ("last_model", "last_key_id", "last_provider", "system_prompt")

class ConversationScripts(ScriptSet):
    """The Lua scripts in ``conversations/lua/``."""

    conv_append = lua("conv_append")
    conv_truncate = lua("conv_truncate")
    turn_finish = lua("turn_finish")
    turn_gate = lua("turn_gate")
    turn_next = lua("turn_next")



def check_conv_id(conv_id: str) -> str:
    """Validate a conversation id: non-empty, at most 200 chars, no braces or whitespace."""
    if not isinstance(conv_id, str) or not conv_id or len(conv_id) > 200:
        raise JobValidationError("conversation_id", "must be a non-empty string of at most 200 characters")
    if any(c in conv_id for c in "{}*?[]") or any(c.isspace() for c in conv_id):
        raise JobValidationError("conversation_id", "must not contain braces, glob characters or whitespace")
    return conv_id


def _dump(message: ChatMessage) -> str:
    """A message as stored: ``role`` and ``content`` always, tool fields only when set."""
    data = message.model_dump(mode="json", exclude_none=True)
    if not data.get("tool_calls"):
        data.pop("tool_calls", None)
    if not data.get("is_error"):
        data.pop("is_error", None)
    return json.dumps(data, ensure_ascii=False)


def _load(raw: bytes | str) -> ChatMessage:
    return ChatMessage.model_validate_json(raw)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class ConversationStore:
    """Conversations in Redis. ``client`` must be a synchronous ``redis.Redis``."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, ttl_seconds: int = 86400) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.client = client
        self.schema = schema
        self.ttl_seconds = int(ttl_seconds)
        self._scripts = ConversationScripts(client)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ConversationStore:
        """A store under ``settings.namespace`` with ``CONVERSATION_TTL_SECONDS``."""
        return cls(client, RedisSchema(settings.namespace), ttl_seconds=settings.conversation_ttl_seconds)

    # -- keys
    def _keys(self, conv_id: str) -> list[str]:
        ks = self.schema
        return [ks.conv_messages(conv_id), ks.conv_meta(conv_id), ks.conv_applied(conv_id)]

    def _turn_keys(self, conv_id: str) -> list[str]:
        ks = self.schema
        return [ks.conv_turn_seq(conv_id), ks.conv_turn_gate(conv_id), ks.conv_turn_finished(conv_id)]

    def _touch(self, pipe: Any, conv_id: str) -> None:
        for key in self._keys(conv_id) + self._turn_keys(conv_id):
            pipe.expire(key, self.ttl_seconds)

    # -- lifecycle
    def create(
        self, conv_id: str, metadata: dict[str, Any] | None = None, system_prompt: str | None = None
    ) -> bool:
        """Create the conversation (True), or update metadata/system prompt of an existing one
        (False; given values replace the stored ones, history is kept)."""
        return drive(self.client, self.create_steps(conv_id, metadata, system_prompt))

    def create_steps(self, conv_id: str, metadata: dict[str, Any] | None = None,
                     system_prompt: str | None = None) -> Steps[bool]:
        """:meth:`create` as a rule (for the asyncio client)."""
        check_conv_id(conv_id)
        meta_key = self.schema.conv_meta(conv_id)
        now = yield Op(lambda c: c.time(), lambda t: f"{t[0]}.{t[1]:06d}")
        fields: dict[str, str] = {"updated_at": now}
        if metadata is not None:
            fields["metadata"] = json.dumps(metadata, ensure_ascii=False, default=str)
        if system_prompt is not None:
            fields["system_prompt"] = system_prompt
        replies = yield Op(lambda c: pipelined(
            c, lambda p: p.hsetnx(meta_key, "created_at", now), lambda p: p.hsetnx(meta_key, "message_count", 0),
            lambda p: p.hsetnx(meta_key, "total_tokens", 0), lambda p: p.hset(meta_key, mapping=fields),
            lambda p: self._touch(p, conv_id), transaction=True))
        return bool(replies[0])

    def exists(self, conv_id: str) -> bool:
        """Whether the conversation exists (created or appended to, and not expired)."""
        return run(self.client, self.exists_op(conv_id))

    def exists_op(self, conv_id: str) -> Op[bool]:
        """:meth:`exists` as an op (for the asyncio client)."""
        key = self.schema.conv_meta(check_conv_id(conv_id))
        return Op(lambda c: c.exists(key), bool)

    def delete(self, conv_id: str) -> bool:
        """Delete history and metadata. The turn-ordering keys are left to expire so that
        turns still queued for this id keep their order. True when something was deleted."""
        return bool(self.client.delete(*self._keys(check_conv_id(conv_id))))

    # -- turns
    def append_turn(
        self,
        conv_id: str,
        messages: list[ChatMessage],
        reply: ChatMessage,
        *,
        tokens: int,
        model: str,
        key_id: str,
        provider: str,
        job_id: str,
    ) -> bool:
        """Atomically append ``messages`` then ``reply`` and update the metadata.

        Idempotent per ``job_id``: returns False (and changes nothing but the TTL) when this
        job's turn is already in the history. Creates the conversation if needed.
        """
        check_conv_id(conv_id)
        if not job_id:
            raise JobValidationError("job_id", "must not be empty")
        payload = [_dump(m) for m in [*messages, reply]]
        args: list[Any] = [job_id, self.ttl_seconds, int(tokens), model, key_id, provider, *payload]
        keys = self._keys(conv_id) + self._turn_keys(conv_id)
        return bool(self._scripts.conv_append(keys=keys, args=args))

    def append_messages(self, conv_id: str, messages: list[ChatMessage], *, job_id: str) -> bool:
        """Append messages without a reply (e.g. an imported transcript); idempotent per job_id."""
        if not messages:
            return False
        *head, last = messages
        return self.append_turn(
            conv_id, head, last, tokens=0, model="", key_id="", provider="", job_id=job_id
        )

    def history(self, conv_id: str, limit: int | None = None) -> list[ChatMessage]:
        """The messages in order (the last ``limit`` when given); refreshes the TTL."""
        check_conv_id(conv_id)
        if limit is not None and limit <= 0:
            return []
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(self.schema.conv_messages(conv_id), -limit if limit else 0, -1)
        self._touch(pipe, conv_id)
        return [_load(raw) for raw in pipe.execute()[0]]

    def truncate(self, conv_id: str, keep_last_n: int) -> int:
        """Keep only the last ``keep_last_n`` messages; returns how many were removed (0 when
        the conversation does not exist). ``message_count`` follows; ``total_tokens`` is kept."""
        check_conv_id(conv_id)
        if keep_last_n < 0:
            raise JobValidationError("keep_last_n", "must be >= 0")
        keys = [self.schema.conv_messages(conv_id), self.schema.conv_meta(conv_id)]
        removed = int(self._scripts.conv_truncate(keys=keys, args=[int(keep_last_n), self.ttl_seconds]))
        return max(removed, 0)

    def metadata(self, conv_id: str) -> dict[str, Any] | None:
        """``created_at``/``updated_at`` (epoch s), ``message_count``, ``total_tokens``,
        ``last_model``, ``last_key_id``, ``last_provider``, ``system_prompt``, ``metadata``
        (the caller's dict); None when the conversation does not exist. Refreshes the TTL."""
        check_conv_id(conv_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.schema.conv_meta(conv_id))
        self._touch(pipe, conv_id)
        raw = pipe.execute()[0]
        if not raw:
            return None
        data: dict[str, str] = {_text(k) or "": _text(v) or "" for k, v in raw.items()}
        out: dict[str, Any] = {"conversation_id": conv_id}
        for f in _FLOAT_FIELDS:
            value = data.get(f)
            out[f] = float(value) if value else None
        for f in _INT_FIELDS:
            out[f] = int(data.get(f) or 0)
        for f in _STR_FIELDS:
            out[f] = data.get(f) or None
        user_meta = data.get("metadata")
        out["metadata"] = json.loads(user_meta) if user_meta else {}
        return out

    def system_prompt(self, conv_id: str) -> str | None:
        """The conversation's stored system prompt, if any."""
        value = self.client.hget(self.schema.conv_meta(check_conv_id(conv_id)), "system_prompt")
        return _text(value) or None

    def list(self, pattern: str = "*", limit: int | None = None) -> list[str]:
        """Ids of live conversations matching the glob ``pattern`` (SCAN; on a Redis Cluster
        this sees the node the client talks to)."""
        return list(self.iter_ids(pattern, limit))

    def iter_ids(self, pattern: str = "*", limit: int | None = None) -> Iterator[str]:
        """Like :meth:`list`, lazily."""
        prefix = self.schema.conv_meta_pattern("")
        head, tail = prefix.split("}", 1)
        tail = "}" + tail
        count = 0
        for key in self.client.scan_iter(match=self.schema.conv_meta_pattern(pattern), count=500):
            name = _text(key) or ""
            if not (name.startswith(head) and name.endswith(tail)):
                continue
            yield name[len(head) : len(name) - len(tail)]
            count += 1
            if limit is not None and count >= limit:
                return

    # -- turn ordering
    def next_turn_seq(self, conv_id: str) -> int:
        """The next turn number of the conversation (1, 2, ...); call at submit time."""
        return run(self.client, self.next_turn_seq_op(conv_id))

    def next_turn_seq_op(self, conv_id: str) -> Op[int]:
        """:meth:`next_turn_seq` as an op (for the asyncio client)."""
        keys = self._turn_keys(check_conv_id(conv_id))
        return Op(lambda c: ConversationScripts.on(c).turn_next(keys=keys, args=[self.ttl_seconds]), int)

    def turn_state(self, conv_id: str, seq: int, *, stall_seconds: float | None = None) -> int:
        """0: turn ``seq`` may run now; n > 0: n earlier turns have not finished yet;
        -1: this turn already finished or was skipped (do not run it)."""
        stall_ms = int(stall_seconds * 1000) if stall_seconds else 0
        keys = self._turn_keys(check_conv_id(conv_id))
        return int(self._scripts.turn_gate(keys=keys, args=[int(seq), self.ttl_seconds, stall_ms]))

    def turn_gate(self, conv_id: str, seq: int, *, stall_seconds: float | None = None) -> bool:
        """Whether turn ``seq`` may run now (every earlier turn finished). See :meth:`turn_state`."""
        return self.turn_state(conv_id, seq, stall_seconds=stall_seconds) == 0

    def finish_turn(self, conv_id: str, seq: int) -> int:
        """Mark turn ``seq`` finished, whatever its outcome (also cancelled/expired/skipped);
        returns the gate position (every turn up to it has finished)."""
        return run(self.client, self.finish_turn_op(conv_id, seq))

    def finish_turn_op(self, conv_id: str, seq: int) -> Op[int]:
        """:meth:`finish_turn` as an op (for the asyncio client)."""
        keys = self._turn_keys(check_conv_id(conv_id))
        args = [int(seq), self.ttl_seconds]
        return Op(lambda c: ConversationScripts.on(c).turn_finish(keys=keys, args=args), int)

    def turn_info(self, conv_id: str) -> dict[str, int]:
        """For operators: ``issued`` (last seq handed out), ``done``, ``running``, ``skipped``."""
        seq_key, gate_key, _ = self._turn_keys(check_conv_id(conv_id))
        pipe = self.client.pipeline(transaction=False)
        pipe.get(seq_key)
        pipe.hmget(gate_key, ["done", "running", "skipped"])
        issued, (done, running, skipped) = pipe.execute()
        return {
            "issued": int(issued or 0),
            "done": int(done or 0),
            "running": int(running or 0),
            "skipped": int(skipped or 0),
        }

    # -- seed-compatible names
    def create_conversation(self, conv_id: str, metadata: dict[str, Any] | None = None) -> bool:
        """Seed name of :meth:`create`."""
        return self.create(conv_id, metadata=metadata)

    def get_history(self, conv_id: str, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """Seed name of :meth:`history`, returning ``{"role", "content"}`` dicts (and the tool
        fields of tool turns, as :meth:`history` holds them)."""
        return [json.loads(_dump(m)) for m in self.history(conv_id, limit)]

    def truncate_history(self, conv_id: str, keep_last_n: int = 20) -> int:
        """Seed name of :meth:`truncate`."""
        return self.truncate(conv_id, keep_last_n)

    def get_metadata(self, conv_id: str) -> dict[str, Any] | None:
        """Seed name of :meth:`metadata`."""
        return self.metadata(conv_id)

    def delete_conversation(self, conv_id: str) -> bool:
        """Seed-style name of :meth:`delete`."""
        return self.delete(conv_id)

    def health_check(self) -> dict[str, Any]:
        """``{"healthy": bool, "error": str | None}`` after a PING."""
        try:
            return {"healthy": bool(self.client.ping()), "error": None}
        except redis.RedisError as exc:
            return {"healthy": False, "error": type(exc).__name__}


def _turn_groups(history: list[ChatMessage]) -> list[list[ChatMessage]]:
    """Split history into turns: each starts at a user message with the replies after it."""
    groups: list[list[ChatMessage]] = []
    for m in history:
        if m.role == "user" or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    return groups


def trim_to_budget(
    system: ChatMessage | None,
    history: list[ChatMessage],
    new: list[ChatMessage],
    budget_tokens: int,
    estimate: Callable[[list[ChatMessage]], int],
) -> list[ChatMessage]:
    """The messages to send: ``system``, as much recent history as fits, then ``new``.

    Whole turns (a user message and the replies after it) are dropped oldest first until
    ``estimate(messages) <= budget_tokens``. The system prompt and the new turn are always
    kept, even when they alone are over budget (the pool then refuses the request as too
    large). ``estimate`` must grow with the messages; it is called O(log turns) times.
    """
    head = [system] if system is not None else []
    groups = _turn_groups(history)

    def build(drop: int) -> list[ChatMessage]:
        return head + [m for g in groups[drop:] for m in g] + list(new)

    full = build(0)
    if estimate(full) <= budget_tokens:
        return full
    lo, hi = 1, len(groups)  # find the fewest dropped turns that fit; dropping all always "fits"
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(build(mid)) <= budget_tokens:
            hi = mid
        else:
            lo = mid + 1
    return build(lo)
