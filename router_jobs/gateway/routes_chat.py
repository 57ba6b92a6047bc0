"""POST /v1/chat/completions and GET /v1/models.

A completion is an interactive job of the token's user: it waits in the queue for room
(never a 429 for a full pool), and the answer is the job's result in OpenAI's shape, or,
with ``stream: true``, server-sent chunks from the job's events. The body becomes job fields
through the library's one converter (:func:`router_jobs.batch.lines.body_fields`).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router_jobs.batch.lines import LineError, body_fields
from router_jobs.errors import JobTimeout
from router_jobs.gateway import openai_format as fmt
from router_jobs.gateway.errors import ApiError, from_library_error, invalid
from router_jobs.gateway.state import caller, gateway_of, json_body
from router_jobs.gateway.streaming import sse_body

#: request fields the gateway reads itself and does not hand to the converter's checks
_UNSUPPORTED = {"n": 1, "logprobs": False}


def job_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Job fields of a chat-completions body; 400 naming the parameter when it cannot be one."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", param="model")
    for name, default in _UNSUPPORTED.items():
        if body.get(name) not in (None, default):
            raise invalid(f"{name}={body[name]!r} is not supported by this gateway", param=name)
    if "messages" not in body:
        raise invalid("messages is required", param="messages")
    try:
        return body_fields(body)
    except LineError as exc:
        raise invalid(exc.message, param="messages", code=exc.kind) from None


async def chat_completions(request: Request) -> Response:
    """Run one chat completion through the queue."""
    gw = gateway_of(request)
    key = caller(request)
    body = await json_body(request, gw.config.max_body_bytes)
    fields = job_fields(body)
    model = str(fields["model"])
    if not key.allows(model):
        raise ApiError(403, f"this API key may not use model {model!r}", type="permission_error",
                       param="model", code="model_not_allowed")
    stream = bool(body.get("stream"))
    raw_options = body.get("stream_options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    fields.update(user_id=key.user_id, priority=key.priority.value)
    if stream:
        fields["stream"] = True  # the worker writes the answer into the job's event stream
    # admission (the user's bucket, budget) and the submit are a few blocking Redis round
    # trips on the sync router: off the event loop, so that other requests go on meanwhile
    handle = await asyncio.to_thread(partial(gw.router.submit, **fields))
    if stream:
        source = sse_body(gw.events, handle.job_id, model, include_usage=bool(options.get("include_usage")))
        return StreamingResponse(source, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Job-Id": handle.job_id})
    try:
        result = await gw.arouter.await_result(handle, timeout=gw.config.request_timeout)
    except JobTimeout as exc:
        await gw.arouter.cancel(handle)
        raise from_library_error(exc) from None
    return JSONResponse(fmt.completion(result, model), headers={"X-Job-Id": handle.job_id})


def _models(request: Request) -> list[dict[str, Any]]:
    gw = gateway_of(request)
    key = caller(request)
    owners: dict[str, str] = {}
    for k in gw.router.pool.keys_file().keys:
        if k.active:
            for m in k.served_models():
                owners.setdefault(m, k.provider)
    return [{"id": m, "object": "model", "created": 0, "owned_by": owners[m]}
            for m in sorted(owners) if key.allows(m)]


async def list_models(request: Request) -> Response:
    """The models of the pool's registry this token may use."""
    return JSONResponse({"object": "list", "data": _models(request)})


async def get_model(request: Request) -> Response:
    """One model, 404 when the pool does not serve it (or the token may not use it)."""
    name = request.path_params["model"]
    for m in _models(request):
        if m["id"] == name:
            return JSONResponse(m)
    raise ApiError(404, f"The model {name!r} does not exist or you do not have access to it.",
                   param="model", code="model_not_found")


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
