"""Chat jobs: conversation turns that run one at a time, in order, through the queue.

At submit, a job with a ``conversation_id`` draws the conversation's next turn number. A
worker runs a turn only when every earlier turn has ended (the turn gate); an early turn is
sent back with a short delay instead of blocking a thread. The history is read when the
turn runs (trimmed to a token budget, oldest turns first, system prompt kept), and the turn
— the user's message(s) and the reply — is appended in one atomic step only when the job
succeeds. Every ending, success or not, opens the gate for the next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router_jobs.capacity.pool import Grant
from router_jobs.conversations.store import ConversationStore, trim_to_budget
from router_jobs.models import ChatMessage, JobSpec, Usage

#: how long a turn at the head of the gate may go without checking in before later turns
#: skip it (it was lost: e.g. dead-lettered). Longer than any call may legitimately take.
DEFAULT_STALL_SECONDS = 20 * 60.0


@dataclass
class ChatTurns:
    """The executor's view of conversations."""

    store: ConversationStore
    estimate_tokens: Callable[[list[ChatMessage], str], int]
    history_token_budget: int | None = None
    stall_seconds: float = DEFAULT_STALL_SECONDS

    def gate(self, spec: JobSpec) -> int:
        """0: the turn may run; n > 0: n earlier turns are still open; -1: it was skipped."""
        if spec.conversation_id is None or spec.turn_seq is None:
            return 0
        return self.store.turn_state(spec.conversation_id, spec.turn_seq, stall_seconds=self.stall_seconds)

    def messages(self, spec: JobSpec) -> list[ChatMessage]:
        """System prompt, history (trimmed to the budget) and this turn's own messages."""
        if spec.conversation_id is None:
            return spec.chat_messages()
        conv = spec.conversation_id
        system_text = spec.system_prompt or self.store.system_prompt(conv)
        system = ChatMessage(role="system", content=system_text) if system_text else None
        history = self.store.history(conv)
        new = spec.turn_messages()
        if self.history_token_budget:
            return trim_to_budget(system, history, new, self.history_token_budget,
                                  lambda msgs: self.estimate_tokens(msgs, spec.model))
        return ([system] if system else []) + history + new

    def record(self, job_id: str, spec: JobSpec, reply: ChatMessage, usage: Usage, grant: Grant) -> None:
        """Append the turn (idempotent per job id): the job's messages, then the reply (with
        its tool calls and any provider state to keep, see ``ChatResponse.message``)."""
        if spec.conversation_id is None:
            return
        self.store.append_turn(
            spec.conversation_id, spec.turn_messages(), reply,
            tokens=usage.total_tokens, model=grant.model, key_id=grant.key_id, provider=grant.provider,
            job_id=job_id,
        )

    def finish(self, spec: JobSpec) -> None:
        """The turn ended (any way): let the next one run."""
        if spec.conversation_id is not None and spec.turn_seq is not None:
            self.store.finish_turn(spec.conversation_id, spec.turn_seq)
