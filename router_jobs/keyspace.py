"""Every Redis key name router-jobs uses, built in one place.

Lua scripts never build key names: they get them in KEYS from here. Keys that one script
touches together share a hash tag (``{...}``) so that they land in one Redis Cluster slot.
See docs/architecture.md for the whole schema.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keyspace:
    """Key names under one namespace prefix (default ``rj``)."""

    ns: str = "rj"

    # -- broker: one hash tag per queue, so a queue's stream, delay set and DLQ share a slot
    def stream(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:stream"

    def delayed(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:delayed"

    def dead(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:dead"

    def completions(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:done"

    def queues(self) -> str:
        return f"{self.ns}:queues"

    def consumers(self) -> str:
        return f"{self.ns}:consumers"

    # -- jobs
    def job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def job_channel(self, job_id: str) -> str:
        return f"{self.ns}:done:{job_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.ns}:idem:{key}"

    # -- key pool (one hash tag per limit scope)
    def scope(self, scope_id: str) -> str:
        return f"{self.ns}:{{pool:{scope_id}}}"

    # -- conversations
    def conv_messages(self, conv_id: str) -> str:
        return f"{self.ns}:{{conv:{conv_id}}}:messages"

    def conv_meta(self, conv_id: str) -> str:
        return f"{self.ns}:{{conv:{conv_id}}}:meta"
