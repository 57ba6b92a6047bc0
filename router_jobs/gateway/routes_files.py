"""/v1/files: upload (multipart, size and purpose checked first), list, get, content, delete."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router_jobs.gateway.errors import invalid
from router_jobs.gateway.files import too_large
from router_jobs.gateway.state import caller, gateway_of

#: multipart overhead allowed on top of the file size limit
_FORM_SLACK = 64 * 1024


async def upload(request: Request) -> Response:
    """POST /v1/files: ``file`` and ``purpose`` as multipart form fields."""
    gw = gateway_of(request)
    key = caller(request)
    limit = gw.files.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _FORM_SLACK:
        raise too_large(int(declared), limit)
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise invalid(f"the body is not a valid multipart form: {exc.message}") from None
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str):
        raise invalid("purpose is required", param="purpose")
    if not isinstance(upload, UploadFile):
        raise invalid("file is required (a multipart file field)", param="file")
    content = await upload.read(limit + 1)
    gw.files.check_upload(len(content), purpose)
    obj = gw.files.create(content, filename=upload.filename or "upload.jsonl", purpose=purpose, owner=key.user_id)
    return JSONResponse(obj.public())


async def list_files(request: Request) -> Response:
    """GET /v1/files (``purpose``, ``limit``)."""
    gw = gateway_of(request)
    key = caller(request)
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise invalid("limit must be an integer", param="limit") from None
    files = gw.files.owned(key.user_id, purpose=request.query_params.get("purpose"), limit=max(1, min(limit, 10000)))
    data = [f.public() for f in files]
    return JSONResponse({"object": "list", "data": data, "has_more": False,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


async def get_file(request: Request) -> Response:
    """GET /v1/files/{file_id}."""
    gw = gateway_of(request)
    return JSONResponse(gw.files.get(request.path_params["file_id"], caller(request).user_id).public())


async def file_content(request: Request) -> Response:
    """GET /v1/files/{file_id}/content: the bytes."""
    gw = gateway_of(request)
    data = gw.files.content(request.path_params["file_id"], caller(request).user_id)
    return Response(data, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    """DELETE /v1/files/{file_id}."""
    gw = gateway_of(request)
    file_id = request.path_params["file_id"]
    deleted = gw.files.delete(file_id, caller(request).user_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": deleted})


ROUTES = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
