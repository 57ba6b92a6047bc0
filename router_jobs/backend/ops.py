"""Redis round trips as values, so that one rule serves a sync and an asyncio client.

A component that both clients use describes each round trip as an :class:`Op`: ``send``
issues the command(s) on whatever client it is given (redis-py's sync and asyncio clients
share their command names; on the asyncio one ``send`` returns an awaitable) and ``parse``
turns the reply into a value. A rule of several round trips is a generator of ops
(:data:`Steps`) that receives each reply's parsed value; :func:`drive` runs it on a sync
client and :func:`adrive` on an asyncio one. The rule's logic is written once, with no I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: A rule of several round trips: yields ops, receives their parsed values, returns a T.
Steps = Generator["Op[Any]", Any, T]


def _same(reply: Any) -> Any:
    return reply


@dataclass(frozen=True)
class Op(Generic[T]):
    """One round trip: ``send(client)`` issues it, ``parse(reply)`` reads the reply."""

    send: Callable[[Any], Any]
    parse: Callable[[Any], T] = _same

    def steps(self) -> Steps[T]:
        """This op as a one-step rule (``value = yield from op.steps()``)."""
        value: T = yield self
        return value


def pipelined(client: Any, *calls: Callable[[Any], Any], transaction: bool = False) -> Any:
    """Queue ``calls`` (each given the pipeline) on one pipeline and execute it."""
    pipe = client.pipeline(transaction=transaction)
    for call in calls:
        call(pipe)
    return pipe.execute()


def run(client: Any, op: Op[T]) -> T:
    """One op on a sync client."""
    return op.parse(op.send(client))


async def arun(client: Any, op: Op[T]) -> T:
    """One op on an asyncio client."""
    reply = op.send(client)
    if inspect.isawaitable(reply):
        reply = await reply
    return op.parse(reply)


def drive(client: Any, steps: Steps[T]) -> T:
    """Run a rule to its end on a sync client; exceptions the rule raises pass through."""
    try:
        op = next(steps)
        while True:
            op = steps.send(run(client, op))
    except StopIteration as done:
        return done.value


async def adrive(client: Any, steps: Steps[T]) -> T:
    """Run a rule to its end on an asyncio client; exceptions the rule raises pass through."""
    try:
        op = next(steps)
        while True:
            op = steps.send(await arun(client, op))
    except StopIteration as done:
        return done.value
