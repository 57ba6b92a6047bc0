"""The executor reserves room for what a job really sends, tool definitions included."""

from __future__ import annotations

import time
from typing import Any

from router_jobs.capacity.pool import ReserveRequest, Wait
from router_jobs.jobs.records import StartedJob
from router_jobs.models import JobSpec, JobStatus
from router_jobs.request import Tool
from router_jobs.tokens import estimate_extra_tokens, estimate_tokens
from router_jobs.worker.executor import Executor

TOOL = Tool(name="search_docs", description="Search the documentation for a phrase and return passages",
            parameters={"type": "object", "properties": {"phrase": {"type": "string"}, "limit": {"type": "integer"}}})


class _Jobs:
    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def start(self, job_id: str) -> StartedJob:
        now = time.time()
        return StartedJob(job_id, JobStatus.queued, self.spec, now, now, now, 0, frozenset())

    def park(self, job_id: str, **kw: Any) -> None:
        return None


class _Pool:
    def __init__(self) -> None:
        self.asked: list[ReserveRequest] = []

    def key_ids(self) -> list[str]:
        return []

    def revalidate(self, prints: dict[str, str]) -> list[str]:
        return []

    def reserve(self, request: ReserveRequest) -> Wait:
        self.asked.append(request)
        return Wait(50, "full")


def reserved_tokens(spec: JobSpec) -> int:
    pool = _Pool()
    executor = Executor(jobs=_Jobs(spec), pool=pool, secrets=None, adapter_for=None,  # type: ignore[arg-type]
                        estimate_tokens=estimate_tokens)
    assert executor.run("j1", "interactive", lambda ms: None) == "deferred"
    return pool.asked[0].input_tokens


def test_the_reservation_counts_tool_definitions_and_answer_schemas() -> None:
    plain = JobSpec(model="claude-sonnet-4", prompt="find the retry policy")
    with_tools = plain.model_copy(update={"tools": [TOOL]})
    assert reserved_tokens(with_tools) - reserved_tokens(plain) == estimate_extra_tokens([TOOL], None, plain.model)
    assert reserved_tokens(with_tools) - reserved_tokens(plain) > 350  # Anthropic's tool prompt included
