"""Files for /v1/files: stored in Redis with their owner, a size limit and an expiry.

The gateway keeps no state outside Redis, so several gateway processes behind a load
balancer see the same files. A file is one hash (metadata fields and the ``content``) that
expires on its own; uploads are checked for size and purpose before anything is stored.
Output and error files of batches are written here too (purpose ``batch_output``).

A file belongs to the user of the token that uploaded it (batch outputs to the batch's
user); others get 404, as if it did not exist.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from pydantic import BaseModel

from router_jobs.backend.schema import RedisSchema
from router_jobs.gateway.errors import ApiError, invalid

#: purposes a client may upload with
UPLOAD_PURPOSES = ("batch", "user_data")
#: purposes of files the gateway writes itself
OUTPUT_PURPOSES = ("batch_output",)


class FileObject(BaseModel):
    """OpenAI's file object (plus the owner, which is never shown)."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str = "processed"
    owner: str = ""

    def public(self) -> dict[str, Any]:
        """The object as the API shows it."""
        return self.model_dump(exclude={"owner"})


class FileStore:
    """Files in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, *, max_bytes: int, ttl_seconds: int) -> None:
        self.client = client
        self.schema = schema
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds

    def check_upload(self, size: int, purpose: str) -> None:
        """Refuse an upload before it is stored: size (413) and purpose (400)."""
        if purpose not in UPLOAD_PURPOSES:
            raise invalid(f"purpose {purpose!r} is not supported here; use one of {', '.join(UPLOAD_PURPOSES)}",
                          param="purpose")
        if size > self.max_bytes:
            raise too_large(size, self.max_bytes)
        if size == 0:
            raise invalid("the file is empty", param="file")

    def create(self, content: bytes, *, filename: str, purpose: str, owner: str,
               ttl_seconds: int | None = None) -> FileObject:
        """Store a file; returns its object. Uploads are checked with ``check_upload`` first."""
        now = int(time.time())
        ttl = ttl_seconds or self.ttl_seconds
        obj = FileObject(id="file-" + uuid.uuid4().hex[:24], bytes=len(content), created_at=now,
                         expires_at=now + ttl, filename=filename[:255] or "upload.jsonl", purpose=purpose,
                         owner=owner)
        key = self.schema.gw_file(obj.id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"meta": obj.model_dump_json(), "content": content})
        pipe.expire(key, ttl)
        pipe.zadd(self.schema.gw_files(), {obj.id: now})
        pipe.execute()
        return obj

    def get(self, file_id: str, owner: str | None) -> FileObject:
        """The file's object; 404 when unknown, expired or someone else's (``owner=None``: anyone's)."""
        raw = self.client.hget(self.schema.gw_file(file_id), "meta")
        if raw is None:
            raise missing(file_id)
        obj = FileObject.model_validate_json(raw)
        if owner is not None and obj.owner != owner:
            raise missing(file_id)
        return obj

    def content(self, file_id: str, owner: str | None) -> bytes:
        """The file's bytes (same 404 rules as ``get``)."""
        self.get(file_id, owner)
        raw = self.client.hget(self.schema.gw_file(file_id), "content")
        if raw is None:
            raise missing(file_id)
        return raw if isinstance(raw, bytes) else str(raw).encode()

    def delete(self, file_id: str, owner: str | None) -> bool:
        """Delete the file; 404 as ``get``."""
        self.get(file_id, owner)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.schema.gw_file(file_id))
        pipe.zrem(self.schema.gw_files(), file_id)
        return bool(pipe.execute()[0])

    def owned(self, owner: str, *, purpose: str | None = None, limit: int = 100) -> list[FileObject]:
        """The owner's files, newest first; ids whose record expired are dropped from the index."""
        ids = [i.decode() if isinstance(i, bytes) else str(i)
               for i in self.client.zrevrange(self.schema.gw_files(), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(self.schema.gw_file(i), "meta")
        out: list[FileObject] = []
        gone: list[str] = []
        for i, raw in zip(ids, pipe.execute(), strict=True):
            if raw is None:
                gone.append(i)
                continue
            obj = FileObject.model_validate_json(raw)
            if obj.owner == owner and (purpose is None or obj.purpose == purpose) and len(out) < limit:
                out.append(obj)
        if gone:
            self.client.zrem(self.schema.gw_files(), *gone)
        return out


def missing(file_id: str) -> ApiError:
    """404 for a file that does not exist (for this caller)."""
    return ApiError(404, f"No such File object: {file_id}", param="id", code="file_not_found")


def too_large(size: int, limit: int) -> ApiError:
    """413 for an upload over the size limit."""
    return ApiError(413, f"file of {size} bytes is over the {limit}-byte limit", param="file",
                    code="file_too_large")
