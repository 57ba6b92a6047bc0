"""Runs gateway batches: whichever gateway process holds a batch's lease drives it.

Every gateway process runs one :class:`BatchDriver` thread. It looks at the active batches
(``RedisSchema.gw_batches_active``) and takes the lease of any that nobody drives (``SET NX``
with an expiry); while it drives a batch it renews the lease, so when the process dies the
lease runs out and another process (or the same one restarted) takes over. Driving is:

1. ``validating``: check every input line (:func:`~router_jobs.gateway.batches.validate_input`);
   errors with line numbers fail the batch.
2. ``in_progress``: the library's :class:`~router_jobs.batch.runner.BatchRunner` over a
   :class:`RedisLines` source and a :class:`RedisResults` sink. Job ids come from the batch id
   and the line number and each result is written as it arrives, so a resumed run submits
   nothing twice and skips what is written. A thread renews the lease meanwhile; ``stop_check`` stops the
   run when the batch is cancelled or its completion window ends.
3. ``finalizing``: the output and error files, in input order, in OpenAI's line format;
   then ``completed`` / ``cancelled`` / ``expired``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from router_jobs.backend.scripts import ScriptSet, lua
from router_jobs.batch.runner import BatchProgress, BatchRunner, _Bitmap
from router_jobs.client.router import Router
from router_jobs.errors import RouterJobsError
from router_jobs.gateway import openai_format as fmt
from router_jobs.gateway.batches import TERMINAL, BatchStore, validate_input
from router_jobs.gateway.errors import ApiError
from router_jobs.gateway.files import FileStore
from router_jobs.models import JobResult

log = logging.getLogger(__name__)

#: how long a lease lasts unless renewed, and how often drivers look for work
LEASE_MS = 10_000
POLL_SECONDS = 0.5

#: a failed job's error_type -> the HTTP status its request would have had
_STATUS = {"bad_request": 400, "invalid_request": 400, "request_too_large": 400, "content_blocked": 400,
           "invalid_json": 400, "unsupported": 400, "cancelled": 499, "expired": 504}


def succeeded(row: dict[str, Any]) -> bool:
    """Whether an output line is a success (it goes to the output file, not the error file)."""
    return row.get("error") is None and (row.get("response") or {}).get("status_code") == 200


class LeaseLost(RouterJobsError):
    """This process no longer drives ``batch_id`` (another took it over, or this one stops)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"lost the lease of batch {batch_id}")
        self.batch_id = batch_id


class LeaseScripts(ScriptSet):
    """The Lua scripts in ``gateway/lua/``."""

    lease = lua("lease")


class RedisLines:
    """The batch's input file, from the file store."""

    def __init__(self, files: FileStore, file_id: str) -> None:
        self.files = files
        self.file_id = file_id
        self._text: list[str] | None = None

    def _all(self) -> list[str]:
        if self._text is None:
            self._text = self.files.content(self.file_id, None).decode("utf-8", errors="replace").splitlines()
        return self._text

    def lines(self) -> Iterator[tuple[int, str]]:
        yield from enumerate(self._all(), 1)

    def count(self) -> int:
        return sum(1 for t in self._all() if t.strip())

    def describe(self) -> str:
        return f"file:{self.file_id}"


class RedisResults:
    """Output lines in a Redis hash, line number -> OpenAI output or error line."""

    def __init__(self, router: Router, batch_id: str, model: str) -> None:
        self.client = router.client
        self.key = router.schema.gw_batch_results(batch_id)
        self.model = model
        #: why the run was stopped early (``cancelled``/``expired``): names its cancelled lines
        self.stop_reason: str | None = None

    def scan(self) -> tuple[_Bitmap, int, int]:
        seen, ok, bad = _Bitmap(), 0, 0
        for line, raw in self.client.hgetall(self.key).items():
            seen.add(int(line))
            if succeeded(json.loads(raw)):
                ok += 1
            else:
                bad += 1
        return seen, ok, bad

    def write(self, rec: dict[str, Any], result: JobResult | None) -> None:
        line, custom_id = int(rec["line"]), rec.get("custom_id")
        if result is not None and result.ok:
            out = fmt.batch_output_line(custom_id, line, result, result.model or self.model)
        else:
            err = rec.get("error") or {}
            kind = str(err.get("type") or "error")
            code = f"batch_{self.stop_reason or 'cancelled'}" if kind == "cancelled" else kind
            never_ran = kind == "cancelled" or kind.startswith("batch_")
            status = None if never_ran else _STATUS.get(kind, 500)
            out = fmt.batch_error_line(custom_id, line, code, str(err.get("message") or ""),
                                       job_id=rec.get("job_id"), status_code=status)
        self.client.hset(self.key, str(line), json.dumps(out))

    def flush(self) -> None:
        """Each line is written to Redis as it comes: nothing to flush."""

    def describe(self) -> str:
        return f"redis:{self.key}"

    def ordered(self) -> list[dict[str, Any]]:
        """Every written line, in input order."""
        rows = sorted(((int(k), json.loads(v)) for k, v in self.client.hgetall(self.key).items()),
                      key=lambda kv: kv[0])
        return [v for _k, v in rows]


class BatchDriver:
    """Drives the batches it can lease (see the module docstring). ``start()`` / ``stop()``."""

    def __init__(self, router: Router, batches: BatchStore, files: FileStore, *, max_in_flight: int = 64,
                 lease_ms: int = LEASE_MS, poll: float = POLL_SECONDS) -> None:
        self.router = router
        self.batches = batches
        self.files = files
        self.max_in_flight = max_in_flight
        self.lease_ms = lease_ms
        self.poll = poll
        self.holder = f"gw-{uuid.uuid4().hex[:12]}"
        self.scripts = LeaseScripts(router.client)
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lost: dict[str, threading.Event] = {}
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        """Start looking for batches in a thread of its own."""
        self._loop = threading.Thread(target=self._run, name="batch-driver", daemon=True)
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: running batches are left where they are (their leases lapse for a successor)."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout)
        for t in list(self._threads.values()):
            t.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.tick()
            except redis.RedisError as exc:  # Redis away for a moment: the next pass tries again
                log.warning("batch driver pass failed: %s: %s", type(exc).__name__, exc)

    def tick(self) -> None:
        """One pass: take the lease of every active batch nobody drives, and drive it."""
        for raw in self.router.client.zrange(self.router.schema.gw_batches_active(), 0, -1):
            batch_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            t = self._threads.get(batch_id)
            if t is not None and t.is_alive():
                continue
            lease = self.router.schema.gw_batch_lease(batch_id)
            if self.router.client.set(lease, self.holder, nx=True, px=self.lease_ms):
                t = threading.Thread(target=self._drive_leased, args=(batch_id,), name=f"batch-{batch_id}",
                                     daemon=True)
                self._threads[batch_id] = t
                t.start()

    def _keep_lease(self, batch_id: str, done: threading.Event, lost: threading.Event) -> None:
        """Renew the lease every third of its length until ``done``; set ``lost`` if another
        process holds it now."""
        key = self.router.schema.gw_batch_lease(batch_id)
        while not done.wait(self.lease_ms / 3000):
            try:
                if not int(self.scripts.lease(keys=[key], args=[self.holder, "renew", self.lease_ms])):
                    lost.set()
                    return
            except redis.RedisError as exc:  # try again; the lease lasts three renewal periods
                log.warning("renewing the lease of batch %s failed: %s", batch_id, exc)

    def _drive_leased(self, batch_id: str) -> None:
        done, self._lost[batch_id] = threading.Event(), threading.Event()
        renewer = threading.Thread(target=self._keep_lease, args=(batch_id, done, self._lost[batch_id]),
                                   name=f"lease-{batch_id}", daemon=True)
        renewer.start()
        try:
            self.drive(batch_id)
        except LeaseLost:
            log.warning("lost the lease of batch %s; another gateway drives it now", batch_id)
        except (redis.RedisError, RouterJobsError) as exc:  # the batch is resumed from its results
            log.warning("driving batch %s stopped (%s: %s); it will be resumed", batch_id, type(exc).__name__, exc)
        finally:
            done.set()
            renewer.join()
            self._lost.pop(batch_id, None)
            self.scripts.lease(keys=[self.router.schema.gw_batch_lease(batch_id)],
                               args=[self.holder, "release", 0])

    def _check_lease(self, batch_id: str) -> None:
        """Raise LeaseLost when this process must stop driving the batch."""
        lost = self._lost.get(batch_id)
        if self._stop.is_set() or (lost is not None and lost.is_set()):
            raise LeaseLost(batch_id)

    # -- one batch ---------------------------------------------------------------------------
    def drive(self, batch_id: str) -> None:
        """Take one batch (whose lease this process holds) as far as it goes."""
        found = self.batches.load(batch_id)
        if found is None:
            self.router.client.zrem(self.router.schema.gw_batches_active(), batch_id)
            return
        obj, owner = found
        if obj["status"] in TERMINAL:
            self.router.client.zrem(self.router.schema.gw_batches_active(), batch_id)
            return
        if obj["status"] == "validating":
            try:
                content = self.files.content(obj["input_file_id"], None)
            except ApiError as exc:
                self._fail(batch_id, [{"code": "file_not_found", "message": exc.message, "param": "input_file_id",
                                       "line": None}])
                return
            total, errors = validate_input(content, obj["endpoint"], self.batches.allowed_models(batch_id))
            if errors:
                self._fail(batch_id, errors, total)
                return
            obj = self.batches.update(batch_id, status="in_progress", in_progress_at=int(time.time()),
                                      request_counts={"total": total, "completed": 0, "failed": 0})
        sink = RedisResults(self.router, batch_id, model="")
        stopped: str | None = None
        if obj["status"] in ("in_progress", "cancelling"):
            stopped = self._run_lines(batch_id, obj, sink)
        elif obj["status"] == "finalizing":
            stopped = obj.get("_stopped")
            sink.stop_reason = stopped
        self._finalize(batch_id, owner, sink, stopped)

    def _run_lines(self, batch_id: str, obj: dict[str, Any], sink: RedisResults) -> str | None:
        expires_at = float(obj["expires_at"])

        def stop_check() -> str | None:
            self._check_lease(batch_id)  # stopping, or another process took over: leave it
            if self.batches.cancel_requested(batch_id):
                sink.stop_reason = "cancelled"
            elif time.time() >= expires_at:
                sink.stop_reason = "expired"
            return sink.stop_reason

        def on_progress(p: BatchProgress) -> None:
            self.batches.update(batch_id, request_counts={"total": p.total or 0, "completed": p.done,
                                                          "failed": p.failed})

        runner = BatchRunner(self.router, batch_id=f"gw-{batch_id}", source=RedisLines(self.files, obj["input_file_id"]),
                             sink=sink, priority="batch", max_in_flight=self.max_in_flight, stop_check=stop_check,
                             on_progress=on_progress, progress_every=0.5)
        runner.run()
        self.batches.update(batch_id, status="finalizing", finalizing_at=int(time.time()), _stopped=runner.stopped)
        return runner.stopped

    def _finalize(self, batch_id: str, owner: str, sink: RedisResults, stopped: str | None) -> None:
        self._check_lease(batch_id)
        ok_lines: list[str] = []
        bad_lines: list[str] = []
        for row in sink.ordered():
            (ok_lines if succeeded(row) else bad_lines).append(json.dumps(row, ensure_ascii=False))
        changes: dict[str, Any] = {"request_counts": {"total": 0, "completed": len(ok_lines),
                                                      "failed": len(bad_lines)}}
        found = self.batches.load(batch_id)
        assert found is not None
        changes["request_counts"]["total"] = found[0]["request_counts"].get("total", 0)
        for name, rows in (("output_file_id", ok_lines), ("error_file_id", bad_lines)):
            if rows:
                f = self.files.create(("\n".join(rows) + "\n").encode(), filename=f"{batch_id}_{name[:-8]}.jsonl",
                                      purpose="batch_output", owner=owner)
                changes[name] = f.id
        now = int(time.time())
        status = {"cancelled": "cancelled", "expired": "expired"}.get(stopped or "", "completed")
        changes["status"] = status
        changes[f"{status}_at"] = now
        obj = self.batches.update(batch_id, **changes)
        obj.pop("_stopped", None)
        self.batches.save(obj)
        self.router.client.zrem(self.router.schema.gw_batches_active(), batch_id)

    def _fail(self, batch_id: str, errors: list[dict[str, Any]], total: int = 0) -> None:
        self.batches.update(batch_id, status="failed", failed_at=int(time.time()),
                            errors={"object": "list", "data": errors},
                            request_counts={"total": total, "completed": 0, "failed": 0})
        self.router.client.zrem(self.router.schema.gw_batches_active(), batch_id)
