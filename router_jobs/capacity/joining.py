"""Jobs held for the key pool's line whose producer died before putting them in line.

``Router.submit`` writes a job's record (``submit.lua``, held: no message) and then puts the
job in its model's line (``admit.lua``): two steps, since a conversation turn or a model no
key serves yet takes another path between them. A producer that dies in between would leave
a ``queued`` job nobody ever delivers. So the record's step also notes the job in the pool's
``joining`` set, and joining the line takes it out again, atomically with the line's entry.
Workers sweep the set (:class:`JoiningSweeper`, from their admission timer): a job noted
there for longer than ``after_s`` whose record is still queued, never delivered, and
neither in line nor admitted, is put in line as its producer would have done; any other
entry (the job ran, was cancelled, expired) is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from pydantic import ValidationError

from router_jobs.capacity.scheduler import Demand, Scheduler, _text
from router_jobs.jobs.records import job_message
from router_jobs.models import JobSpec
from router_jobs.tokens import estimate_extra_tokens, estimate_tokens

log = logging.getLogger("router_jobs.scheduler")


def line_demand(job_id: str, spec: JobSpec, weights: Mapping[str, float] | None = None) -> Demand:
    """What the line needs to know about a job entering it from its producer."""
    queue = spec.priority.value
    tokens = estimate_tokens(spec.chat_messages(), spec.model) + estimate_extra_tokens(
        spec.tools, spec.output_format(), spec.model)
    return Demand.for_spec(job_id, queue, spec, tokens, job_message(job_id, queue), weights=weights)


class JoiningSweeper:
    """Puts in line the held jobs whose producer died before doing it; returns how many."""

    def __init__(self, scheduler: Scheduler, *, after_s: float = 15.0, batch: int = 100) -> None:
        self.scheduler = scheduler
        self.after_s = after_s
        self.batch = batch

    def __call__(self) -> int:
        client: redis.Redis = self.scheduler.client
        joining = self.scheduler.joining_key()
        secs, micros = client.time()
        before = int(secs) * 1000 + int(micros) // 1000 - int(self.after_s * 1000)
        ids = [_text(i) for i in client.zrangebyscore(joining, "-inf", before, start=0, num=self.batch)]
        if not ids:
            return 0
        ks = self.scheduler.ks
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(ks.job(job_id), "status", "deliveries", "spec")
            pipe.hexists(self.scheduler._part("demand"), job_id)
            pipe.hexists(self.scheduler._part("grants"), job_id)
        replies = pipe.execute()
        orphans: list[Demand] = []
        done: list[str] = []
        for n, job_id in enumerate(ids):
            (status, deliveries, raw), waiting, admitted = replies[3 * n:3 * n + 3]
            if _text(status) != "queued" or int(deliveries or 0) or waiting or admitted or not raw:
                done.append(job_id)  # it ran, was cancelled or expired, or is in line after all
                continue
            try:
                spec = JobSpec.model_validate_json(raw)
            except ValidationError as exc:
                log.error("job %s: held for the line with an unreadable spec, left queued: %s", job_id, exc)
                done.append(job_id)
                continue
            orphans.append(line_demand(job_id, spec, self.scheduler.fairness_weights))
        if done:
            client.zrem(joining, *done)
        if orphans:
            self.scheduler.enqueue(orphans)  # joining the line takes them out of the set
            log.warning("put %d job(s) in line whose producer died before doing it: %s", len(orphans),
                        ", ".join(d.job_id for d in orphans[:10]))
        return len(orphans)

