"""When a provider call's request left this process.

A provider counts a request against its rate limits when the request reaches it, which is
somewhere between the moment the call started and the moment its answer came back: for an
LLM call seconds apart. The key pool needs that moment to keep its window logs true to the
provider's: stamped too early, a window could admit more than the provider allows; stamped
at the answer (the safe default when nothing better is known), every entry stays in the
window for the whole length of the call, which on a per-second limit costs most of the key.

The SDKs run on httpx (``httpx`` or ``httpx2``, whichever the installation resolved), whose
transport reports each step of a request to a ``trace`` callback. :func:`transport` wraps the
default transport so that the moment the request's body was written (or, failing that, the
moment the answer's headers began to arrive) is kept per thread: :func:`begin` before a call
(with a hook run at that moment), :func:`sent_at` after it (``time.monotonic()``, or None
when the request never left).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

_local = threading.local()

_SENT_EVENTS = ("send_request_body.complete", "receive_response_headers.started")


def http_module() -> ModuleType:
    """The httpx flavour the SDKs use here (``httpx2`` when installed, else ``httpx``)."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:  # pragma: no cover - depends on the environment
            continue
    raise ImportError("neither httpx2 nor httpx is installed")  # pragma: no cover


def begin(on_sent: Callable[[], None] | None = None) -> None:
    """Forget the last call's moment (call before each provider call, on its thread).
    ``on_sent`` runs once, on this thread, the moment the request has left (while the
    provider works on it): the pool stamps its window entries then."""
    _local.sent = None
    _local.on_sent = on_sent


def sent_at() -> float | None:
    """``time.monotonic()`` when this thread's last request left, if it did."""
    return getattr(_local, "sent", None)


def _trace(event: str, info: dict[str, Any]) -> None:
    if event.endswith(_SENT_EVENTS) and getattr(_local, "sent", None) is None:
        _local.sent = time.monotonic()
        hook = getattr(_local, "on_sent", None)
        _local.on_sent = None
        if hook is not None:
            hook()


def _chain(previous: Any) -> Any:
    if previous is None:
        return _trace

    def both(event: str, info: dict[str, Any]) -> Any:
        _trace(event, info)
        return previous(event, info)

    return both


def transport(**kwargs: Any) -> Any:
    """A synchronous httpx transport (``HTTPTransport(**kwargs)``) that records when each
    request left; pass it as ``transport=`` to the client an SDK is given."""
    httpx = http_module()

    class _Traced(httpx.HTTPTransport):  # type: ignore[name-defined]
        def handle_request(self, request: Any) -> Any:
            request.extensions["trace"] = _chain(request.extensions.get("trace"))
            return super().handle_request(request)

    return _Traced(**kwargs)


__all__ = ["begin", "http_module", "sent_at", "transport"]
