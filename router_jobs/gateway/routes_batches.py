"""/v1/batches: create, retrieve, list, cancel. Running them is the driver's job."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router_jobs.gateway.errors import invalid
from router_jobs.gateway.state import caller, gateway_of, json_body


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The batch object without the driver's private fields."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


async def create(request: Request) -> Response:
    """POST /v1/batches: ``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``."""
    gw = gateway_of(request)
    key = caller(request)
    body = await json_body(request, gw.config.max_body_bytes)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise invalid(f"{name} is required", param=name)
    obj = gw.batches.create(key.user_id, input_file_id=body["input_file_id"], endpoint=body["endpoint"],
                            completion_window=body["completion_window"], metadata=body.get("metadata"),
                            models=key.models)
    return JSONResponse(public(obj))


async def retrieve(request: Request) -> Response:
    """GET /v1/batches/{batch_id}."""
    gw = gateway_of(request)
    return JSONResponse(public(gw.batches.get(request.path_params["batch_id"], caller(request).user_id)))


async def list_batches(request: Request) -> Response:
    """GET /v1/batches (``after``, ``limit``), newest first."""
    gw = gateway_of(request)
    key = caller(request)
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise invalid("limit must be an integer", param="limit") from None
    rows, more = gw.batches.page(key.user_id, after=request.query_params.get("after"), limit=max(1, min(limit, 100)))
    data = [public(o) for o in rows]
    return JSONResponse({"object": "list", "data": data, "has_more": more,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


async def cancel(request: Request) -> Response:
    """POST /v1/batches/{batch_id}/cancel."""
    gw = gateway_of(request)
    return JSONResponse(public(gw.batches.cancel(request.path_params["batch_id"], caller(request).user_id)))


ROUTES = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
]
