"""The broker's wire format, in one place: which actor runs each queue's jobs, the Dramatiq
message that carries a job id, and the fields of a dead-lettered entry.

Producers (``submit.lua`` gets the encoded message from here), the worker's actors, the
broker's dead-letter path and the operators' dead-letter reader all use these names, so a
change to the format is a change to this module only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from dramatiq.message import Message

#: Actor that runs the jobs of each queue (one actor per queue, so each gets its own priority).
ACTOR_FOR_QUEUE = {"interactive": "run_interactive_job", "batch": "run_batch_job"}
#: Dramatiq runs lower numbers first when several messages wait for a free thread.
PRIORITY_FOR_QUEUE = {"interactive": 0, "batch": 100}


def job_message(job_id: str, queue: str) -> bytes:
    """The encoded Dramatiq message that makes a worker run ``job_id`` from ``queue``."""
    msg: Message[Any] = Message(
        queue_name=queue,
        actor_name=ACTOR_FOR_QUEUE[queue],
        args=(job_id,),
        kwargs={},
        options={"redis_message_id": uuid.uuid4().hex},
    )
    return msg.encode()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a queue's dead-letter stream."""

    queue: str
    id: str
    message_id: str | None
    actor: str | None
    args: list[Any]
    reason: str
    deliveries: int
    starts: int
    at: int

    @property
    def job_id(self) -> str | None:
        """The job the message would run (our actors take the job id as their only argument)."""
        return str(self.args[0]) if self.args else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``routerctl dlq list --json``)."""
        return {"queue": self.queue, "id": self.id, "job_id": self.job_id, "message_id": self.message_id,
                "actor": self.actor, "args": list(self.args), "reason": self.reason,
                "deliveries": self.deliveries, "starts": self.starts, "at": self.at}


def decode_dead_letter(queue: str, entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    """Parse one dead-letter stream entry (as XRANGE returns it)."""
    f = {_text(k): v for k, v in fields.items()}
    msg = Message.decode(f["m"]) if f.get("m") else None

    def number(name: str) -> int:
        raw = _text(f.get(name, b"0")) or "0"
        return int(raw) if raw.lstrip("-").isdigit() else 0

    return DeadLetter(
        queue=queue, id=_text(entry_id),
        message_id=msg.message_id if msg else None,
        actor=msg.actor_name if msg else None,
        args=list(msg.args) if msg else [],
        reason=_text(f.get("reason", b"")),
        deliveries=number("deliveries"), starts=number("starts"), at=number("at"),
    )
