"""/v1/batches: batch records in Redis, validation of the input file, OpenAI's objects.

A batch is one hash (``RedisSchema.gw_batch``) holding OpenAI's batch object as JSON plus
its owner; the lines' results live beside it (``gw_batch_results``, line -> output line),
which is what lets any gateway process resume a batch where another stopped. Running the
lines is :mod:`router_jobs.gateway.driver`'s job (over the library's batch runner).

Lifecycle (OpenAI's): ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``;
``failed`` when the input does not validate (errors name their line); ``expired`` when the
completion window ends first; ``cancelling`` -> ``cancelled`` on request.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import redis

from router_jobs.backend.schema import RedisSchema
from router_jobs.batch.lines import LineError, parse_line
from router_jobs.gateway.errors import ApiError, invalid
from router_jobs.gateway.files import FileStore

ENDPOINTS = ("/v1/chat/completions",)
TERMINAL = ("completed", "failed", "expired", "cancelled")
_WINDOW = re.compile(r"^(\d+)([smh])$")
#: validation errors kept on a failed batch, at most
MAX_ERRORS = 100


def window_seconds(window: str) -> int:
    """Seconds of a completion window like ``24h`` (also ``30m``, ``90s``)."""
    m = _WINDOW.match(window or "")
    if not m or int(m.group(1)) <= 0:
        raise invalid(f"completion_window {window!r} is not supported; use e.g. '24h'", param="completion_window")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def validate_input(content: bytes, endpoint: str, models: list[str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Check every line of a batch input file; returns (lines, errors with line numbers).

    ``models``, when given, are the only models the batch's token may use."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for n, raw in enumerate(content.decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        total += 1
        if len(errors) >= MAX_ERRORS:
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(_err("invalid_json_line", f"line {n} is not valid JSON: {exc.msg}", n))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("body"), dict):
            errors.append(_err("invalid_request", "a line needs custom_id, method, url and body", n, "body"))
            continue
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_err("missing_required_parameter", "custom_id is required", n, "custom_id"))
        elif custom_id in seen:
            errors.append(_err("duplicate_custom_id", f"custom_id {custom_id!r} is used twice", n, "custom_id"))
        else:
            seen.add(custom_id)
        if obj.get("method", "POST") != "POST":
            errors.append(_err("invalid_method", "method must be POST", n, "method"))
        if obj.get("url") != endpoint:
            errors.append(_err("mismatched_endpoint", f"url must be the batch's endpoint {endpoint}", n, "url"))
            continue
        try:
            req = parse_line(n, raw)
        except LineError as exc:
            errors.append(_err(exc.kind, exc.message, n, "body"))
            continue
        model = req.fields.get("model")
        if models and model not in models:
            errors.append(_err("model_not_allowed", f"this token may not use model {model!r}", n, "body.model"))
    if total == 0:
        errors.append(_err("empty_file", "the input file has no requests", None))
    return total, errors[:MAX_ERRORS]


def _err(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


class BatchStore:
    """Batch records in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, schema: RedisSchema, files: FileStore) -> None:
        self.client = client
        self.schema = schema
        self.files = files

    # -- records -----------------------------------------------------------------------------
    def save(self, obj: dict[str, Any], owner: str | None = None) -> None:
        """Write the batch object (and, when given, its owner)."""
        mapping: dict[str, str] = {"object": json.dumps(obj)}
        if owner is not None:
            mapping["owner"] = owner
        self.client.hset(self.schema.gw_batch(obj["id"]), mapping=mapping)  # type: ignore[arg-type]

    def load(self, batch_id: str) -> tuple[dict[str, Any], str] | None:
        """``(object, owner)`` of a batch, or None."""
        raw = self.client.hmget(self.schema.gw_batch(batch_id), ["object", "owner"])
        if raw[0] is None:
            return None
        owner = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1] or "")
        return json.loads(raw[0]), owner

    def update(self, batch_id: str, **changes: Any) -> dict[str, Any]:
        """Change fields of the batch object; returns it."""
        found = self.load(batch_id)
        if found is None:
            raise missing(batch_id)
        obj = found[0]
        obj.update(changes)
        self.save(obj)
        return obj

    # -- the API -----------------------------------------------------------------------------
    def create(self, owner: str, *, input_file_id: str, endpoint: str, completion_window: str,
               metadata: dict[str, Any] | None, models: list[str] | None = None) -> dict[str, Any]:
        """A new batch in ``validating``; its driver picks it up from the active set."""
        if endpoint not in ENDPOINTS:
            raise invalid(f"endpoint {endpoint!r} is not supported; use {', '.join(ENDPOINTS)}", param="endpoint")
        seconds = window_seconds(completion_window)
        f = self.files.get(input_file_id, owner)
        if f.purpose != "batch":
            raise invalid(f"file {input_file_id} has purpose {f.purpose!r}; a batch needs purpose 'batch'",
                          param="input_file_id")
        if metadata is not None and not isinstance(metadata, dict):
            raise invalid("metadata must be an object", param="metadata")
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": "batch_" + uuid.uuid4().hex[:24], "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": completion_window, "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + seconds, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata or None,
        }
        self.save(obj, owner)
        self.client.hset(self.schema.gw_batch(obj["id"]), "models", json.dumps(models or []))
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.schema.gw_batches(), {obj["id"]: now})
        pipe.zadd(self.schema.gw_batches_active(), {obj["id"]: now})
        pipe.execute()
        return obj

    def get(self, batch_id: str, owner: str) -> dict[str, Any]:
        """The batch object; 404 when unknown or someone else's."""
        found = self.load(batch_id)
        if found is None or found[1] != owner:
            raise missing(batch_id)
        return found[0]

    def page(self, owner: str, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The owner's batches, newest first, after the id ``after``; and whether more exist."""
        ids = [i.decode() if isinstance(i, bytes) else str(i)
               for i in self.client.zrevrange(self.schema.gw_batches(), 0, -1)]
        if after is not None:
            ids = ids[ids.index(after) + 1:] if after in ids else []
        out: list[dict[str, Any]] = []
        for batch_id in ids:
            found = self.load(batch_id)
            if found is None or found[1] != owner:
                continue
            if len(out) == limit:
                return out, True
            out.append(found[0])
        return out, False

    def cancel(self, batch_id: str, owner: str) -> dict[str, Any]:
        """Ask the driver to cancel: ``cancelling`` now, ``cancelled`` once running lines ended."""
        obj = self.get(batch_id, owner)
        if obj["status"] in TERMINAL or obj["status"] == "cancelling":
            if obj["status"] in ("cancelled", "cancelling"):
                return obj
            raise ApiError(409, f"batch {batch_id} is {obj['status']} and cannot be cancelled",
                           code="batch_not_cancellable")
        # the request is its own field: a driver's concurrent update of the object cannot lose it
        self.client.hset(self.schema.gw_batch(batch_id), "cancel", "1")
        return self.update(batch_id, status="cancelling", cancelling_at=int(time.time()))

    def allowed_models(self, batch_id: str) -> list[str]:
        """The models the creating token may use (empty: all)."""
        raw = self.client.hget(self.schema.gw_batch(batch_id), "models")
        return list(json.loads(raw)) if raw else []

    def cancel_requested(self, batch_id: str) -> bool:
        """Whether someone asked to cancel the batch."""
        return bool(self.client.hexists(self.schema.gw_batch(batch_id), "cancel"))


def missing(batch_id: str) -> ApiError:
    """404 for an unknown batch."""
    return ApiError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
