"""The batch pipeline: a JSONL file of requests in, a JSONL file of results out.

:class:`BatchRunner` reads the input lazily, keeps at most ``max_in_flight`` lines between
submit and output, and writes one output line per input line (blank lines aside)::

    {"line": 7, "custom_id": "r7", "job_id": "...", "status": "succeeded", "content": "...",
     "model": "...", "provider": "...", "key_id": "...", "usage": {...}, "attempts": 1,
     "metadata": {...}}
    {"line": 8, "custom_id": "r8", "job_id": null, "status": "failed",
     "error": {"type": "invalid_json", "message": "..."}, "metadata": {}}

**Resumable.** Each line's job has an id derived from the batch id and the line number and is
submitted with the matching idempotency key, so submitting a line again maps to the same
job; a job that already ended is just collected. On start the runner reads the output file
(cutting off a half-written last line) and skips every line already there: the same command
run again after Ctrl-C, a crash or a reboot finishes the rest with no duplicate output.
Without ``batch_id`` the id is derived from the input and output paths, so "the same
command" is enough. ``ordered=True`` writes output in input order.

Input forms: see :mod:`router_jobs.batch.lines`. A small record of every batch run
(``RedisSchema.batch``) lets ``routerctl batch status`` report progress from anywhere.

**Where lines come from and go to.** The runner reads a :class:`LineSource` and writes to a
:class:`ResultSink`; by default the input and output files (:class:`FileSource`,
:class:`FileSink`). A server that keeps its files in Redis gives its own pair, and a
``stop_check`` that ends the run early (a cancelled or expired batch): the runner then stops
taking lines, cancels its jobs that have not started, and collects the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from router_jobs.batch.lines import BatchRequest, LineError, parse_line
from router_jobs.client.router import Router, validate_spec
from router_jobs.client.waiting import JobWaiter
from router_jobs.errors import ConfigError, JobValidationError
from router_jobs.models import JobResult

#: how long a batch record stays in Redis after its last update
RECORD_TTL = 7 * 86400
#: re-read every pending job this often even without notifications (a missed message)
RECHECK_EVERY = 2.0


def default_batch_id(input_path: str | Path, out_path: str | Path) -> str:
    """The id of "the same command": derived from the absolute input and output paths."""
    key = f"{Path(input_path).resolve()}\n{Path(out_path).resolve()}"
    return "b" + hashlib.sha256(key.encode()).hexdigest()[:15]


def line_job_id(namespace: str, batch_id: str, line: int) -> str:
    """The job id of one line of one batch (32 hex chars, stable across runs)."""
    return hashlib.sha256(f"{namespace}\x1f{batch_id}\x1f{line}".encode()).hexdigest()[:32]


@dataclass
class BatchProgress:
    """Where a run stands; ``done``/``failed`` include lines found in the output at start."""

    batch_id: str
    total: int | None
    done: int = 0
    failed: int = 0
    skipped: int = 0  # lines already in the output when this run started
    in_flight: int = 0
    elapsed: float = 0.0
    finished_this_run: int = 0
    #: requests per second the key pool admits for the batch's model in the long run (0: unknown)
    pool_rate: float = 0.0

    @property
    def rate(self) -> float:
        """Lines finished per second in this run."""
        return self.finished_this_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, never faster than the key pool admits (a batch's
        first window runs at once; the rest at the pool's long-run rate). None when unknown."""
        rate = self.rate
        if self.pool_rate > 0:
            rate = min(rate, self.pool_rate) if rate > 0 else self.pool_rate
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done - self.failed) / rate

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "total": self.total, "done": self.done, "failed": self.failed,
                "skipped": self.skipped, "in_flight": self.in_flight, "elapsed": round(self.elapsed, 3),
                "rate": round(self.rate, 3), "eta": None if self.eta is None else round(self.eta, 1)}


class _Bitmap:
    """A growable set of line numbers, one bit each (resume state of huge files)."""

    def __init__(self) -> None:
        self.bits = bytearray()

    def add(self, n: int) -> None:
        i = n >> 3
        if i >= len(self.bits):
            self.bits.extend(b"\0" * (i + 1 - len(self.bits) + 4096))
        self.bits[i] |= 1 << (n & 7)

    def __contains__(self, n: int) -> bool:
        i = n >> 3
        return i < len(self.bits) and bool(self.bits[i] & (1 << (n & 7)))


def scan_output(path: Path) -> tuple[_Bitmap, int, int]:
    """Lines already written to ``path`` (and how many succeeded / failed). A half-written
    last line (a crash mid-write) is cut off so that appending continues cleanly."""
    seen, ok, bad = _Bitmap(), 0, 0
    if not path.exists():
        return seen, ok, bad
    good_end = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            good_end += len(raw)
            try:
                rec = json.loads(raw)
                n = int(rec["line"])
            except (ValueError, KeyError, TypeError):
                continue
            if n in seen:
                continue
            seen.add(n)
            if rec.get("status") == "succeeded":
                ok += 1
            else:
                bad += 1
    if path.stat().st_size != good_end:
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return seen, ok, bad


def count_lines(path: Path) -> int:
    """Non-blank lines of ``path``, read as a stream."""
    n = 0
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                n += 1
    return n


def output_record(req_line: int, custom_id: str | None, metadata: dict[str, Any],
                  result: JobResult | None = None, error: tuple[str, str] | None = None) -> dict[str, Any]:
    """The output line of one input line: its result, or its failure with the reason."""
    rec: dict[str, Any] = {"line": req_line, "custom_id": custom_id}
    if result is not None:
        rec["job_id"] = result.job_id
        rec["status"] = result.status.value
        if result.ok:
            rec.update(content=result.content, model=result.model, provider=result.provider, key_id=result.key_id,
                       usage=result.usage.model_dump(), attempts=result.attempts, finish_reason=result.finish_reason)
            if result.tool_calls:
                rec["tool_calls"] = [c.model_dump() for c in result.tool_calls]
            if result.refusal is not None:
                rec["refusal"] = result.refusal
        else:
            rec["error"] = {"type": result.error_type or result.status.value, "message": result.error_message or ""}
    else:
        kind, message = error or ("error", "")
        rec.update(job_id=None, status="failed", error={"type": kind, "message": message})
    rec["metadata"] = metadata
    return rec


class LineSource(Protocol):
    """Numbered input lines (1-based, blank ones included) of one batch."""

    def lines(self) -> Iterator[tuple[int, str]]:
        """Every line with its number, in input order."""
        ...

    def count(self) -> int:
        """Non-blank lines."""
        ...

    def describe(self) -> str:
        """Where the lines come from (for the run's record)."""
        ...


class ResultSink(Protocol):
    """Where output lines go; it knows which lines a previous run already wrote."""

    def scan(self) -> tuple[_Bitmap, int, int]:
        """Lines already written, and how many of them succeeded / failed."""
        ...

    def write(self, rec: dict[str, Any], result: JobResult | None) -> None:
        """Write one output line (``result`` is None for a line that never became a job)."""
        ...

    def flush(self) -> None:
        """Make what was written durable."""
        ...

    def describe(self) -> str:
        """Where the lines go (for the run's record)."""
        ...


class FileSource:
    """The lines of a local JSONL file, read lazily."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"input file {self.path} does not exist", field="input")

    def lines(self) -> Iterator[tuple[int, str]]:
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            yield from enumerate(fh, 1)

    def count(self) -> int:
        return count_lines(self.path)

    def describe(self) -> str:
        return str(self.path.resolve())


class FileSink:
    """A local JSONL file, appended to; ``open()`` before writing, ``close()`` after."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._out: IO[str] | None = None

    def scan(self) -> tuple[_Bitmap, int, int]:
        return scan_output(self.path)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("a", encoding="utf-8", newline="\n")

    def write(self, rec: dict[str, Any], result: JobResult | None) -> None:
        assert self._out is not None
        self._out.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None

    def describe(self) -> str:
        return str(self.path.resolve())


@dataclass
class _Pending:
    line: int
    custom_id: str | None
    metadata: dict[str, Any]


@dataclass
class BatchRunner:
    """Runs one batch; see the module docstring. ``run()`` returns the final progress."""

    router: Router
    input_path: Path | None = None
    out_path: Path | None = None
    batch_id: str | None = None
    model: str | None = None
    fallback_models: list[str] = field(default_factory=list)
    priority: str = "batch"
    max_in_flight: int = 64
    ordered: bool = False
    on_progress: Callable[[BatchProgress], None] | None = None
    progress_every: float = 0.2
    source: LineSource | None = None  # default: FileSource(input_path)
    sink: ResultSink | None = None  # default: FileSink(out_path)
    #: asked once per loop turn; a reason ("cancelled", "expired") ends the run early
    stop_check: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        if self.source is None:
            if self.input_path is None:
                raise ConfigError("give an input file or a line source", field="input")
            self.source = FileSource(Path(self.input_path))
        if self.sink is None:
            if self.out_path is None:
                raise ConfigError("give an output file or a result sink", field="out")
            self.sink = FileSink(Path(self.out_path))
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1", field="max_in_flight")
        if self.batch_id is None:
            if self.input_path is None or self.out_path is None:
                raise ConfigError("give a batch id", field="batch_id")
            self.batch_id = default_batch_id(self.input_path, self.out_path)
        self.stopped: str | None = None
        if self.model is None:  # lines naming no model use the pool's only model, if it has one
            models = sorted(self.router.served_models())
            self.model = models[0] if len(models) == 1 else None
        self.record_key = self.router.schema.batch(self.batch_id)
        self._pending: dict[str, _Pending] = {}
        self._order: deque[int] = deque()  # ordered mode: lines not yet written, input order
        self._ready: dict[int, tuple[dict[str, Any], JobResult | None]] = {}

    # -- reading -----------------------------------------------------------------------------
    def _lines(self, skip: _Bitmap) -> Iterator[tuple[int, str]]:
        assert self.source is not None
        for n, text in self.source.lines():
            if text.strip() and n not in skip:
                yield n, text

    def _fields(self, req: BatchRequest) -> dict[str, Any]:
        f = dict(req.fields)
        if not f.get("model"):
            if self.model is None:
                raise JobValidationError("model", "the line names no model; give --model")
            f["model"] = self.model
        if self.fallback_models and not f.get("fallback_models"):
            f["fallback_models"] = list(self.fallback_models)
        f["priority"] = self.priority
        f["idempotency_key"] = f"batch:{self.batch_id}:{req.line}"
        f["metadata"] = {**req.metadata, "batch_id": self.batch_id, "line": req.line,
                         **({"custom_id": req.custom_id} if req.custom_id is not None else {})}
        return f

    # -- writing -----------------------------------------------------------------------------
    def _emit(self, line: int, rec: dict[str, Any], progress: BatchProgress,
              result: JobResult | None = None) -> None:
        if rec.get("status") == "succeeded":
            progress.done += 1
        else:
            progress.failed += 1
        progress.finished_this_run += 1
        if not self.ordered:
            assert self.sink is not None
            self.sink.write(rec, result)
            return
        self._ready[line] = (rec, result)
        self._drain_ordered()

    def _drain_ordered(self) -> None:
        assert self.sink is not None
        while self._order and self._order[0] in self._ready:
            self.sink.write(*self._ready.pop(self._order.popleft()))

    def _outstanding(self) -> int:
        return len(self._order) if self.ordered else len(self._pending)

    def _save(self, progress: BatchProgress, state: str) -> None:
        assert self.source is not None and self.sink is not None
        fields = {"batch_id": progress.batch_id, "input": self.source.describe(),
                  "output": self.sink.describe(), "state": state, "total": progress.total or 0,
                  "done": progress.done, "failed": progress.failed, "in_flight": progress.in_flight,
                  "updated_at": time.time()}
        pipe = self.router.client.pipeline(transaction=False)
        pipe.hsetnx(self.record_key, "created_at", time.time())
        pipe.hset(self.record_key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(self.record_key, RECORD_TTL)
        pipe.execute()

    # -- collecting --------------------------------------------------------------------------
    def _check(self, job_ids: list[str], progress: BatchProgress, waiter: JobWaiter) -> None:
        for result in waiter.collect(job_ids):
            p = self._pending.pop(result.job_id)
            self._emit(p.line, output_record(p.line, p.custom_id, p.metadata, result), progress, result)

    def _submit(self, n: int, text: str, progress: BatchProgress, waiter: JobWaiter) -> str | None:
        custom_id: str | None = None
        metadata: dict[str, Any] = {}
        try:
            req = parse_line(n, text)
            custom_id, metadata = req.custom_id, req.metadata
            spec = validate_spec(self._fields(req), self.router.settings, self.router.served_providers())
        except LineError as exc:
            self._emit(n, output_record(n, exc.custom_id, metadata, error=(exc.kind, exc.message)), progress)
            return None
        except JobValidationError as exc:
            self._emit(n, output_record(n, custom_id, metadata, error=("invalid_request", str(exc))), progress)
            return None
        job_id = line_job_id(self.router.schema.ns, str(self.batch_id), n)
        waiter.watch([job_id])  # before submit: no missed wake-up
        handle = self.router.submit_spec(spec, job_id=job_id)
        if progress.pool_rate == 0:
            progress.pool_rate = self.router.scheduler.admission_rate(spec.model)
        self._pending[handle.job_id] = _Pending(n, custom_id, metadata)
        return handle.job_id

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> BatchProgress:
        """Run (or resume) the batch to its end; KeyboardInterrupt leaves it resumable.

        When ``stop_check`` names a reason, the run stops early: ``self.stopped`` holds the
        reason and the record's state is ``stopped:<reason>``."""
        assert self.source is not None and self.sink is not None
        skip, ok, bad = self.sink.scan()
        total = self.source.count()
        progress = BatchProgress(str(self.batch_id), total, done=ok, failed=bad, skipped=ok + bad)
        started = time.monotonic()
        state = "interrupted"
        waiter = JobWaiter(self.router.client, self.router.schema)
        lines = self._lines(skip)
        exhausted = False
        last_report = last_save = last_recheck = 0.0
        try:
            if isinstance(self.sink, FileSink):
                self.sink.open()
            self._save(progress, "running")
            while True:
                if self.stop_check is not None and self.stopped is None:
                    self.stopped = self.stop_check()
                    if self.stopped is not None:
                        self._cancel_pending()
                fresh: list[str] = []
                while not exhausted and self._outstanding() < self.max_in_flight:
                    nxt = next(lines, None)
                    if nxt is None:
                        exhausted = True
                        break
                    if self.ordered:
                        self._order.append(nxt[0])
                    if self.stopped is not None:
                        job_id = self._adopt(nxt[0], nxt[1], progress, waiter)
                    else:
                        job_id = self._submit(nxt[0], nxt[1], progress, waiter)
                    if job_id is not None:
                        fresh.append(job_id)
                self._check(fresh, progress, waiter)
                if exhausted and not self._pending:
                    break
                woke = waiter.poll(0.25) if self._pending else []
                now = time.monotonic()
                if now - last_recheck >= RECHECK_EVERY:
                    woke, last_recheck = list(self._pending), now
                self._check(woke, progress, waiter)
                self.sink.flush()
                progress.in_flight, progress.elapsed = len(self._pending), now - started
                if self.on_progress is not None and now - last_report >= self.progress_every:
                    self.on_progress(progress)
                    last_report = now
                if now - last_save >= 1.0:
                    self._save(progress, "running")
                    last_save = now
            self.sink.flush()
            state = "finished" if self.stopped is None else f"stopped:{self.stopped}"
        finally:
            if isinstance(self.sink, FileSink):
                self.sink.close()
            waiter.close()
            progress.in_flight, progress.elapsed = len(self._pending), time.monotonic() - started
            self._save(progress, state)
            if self.on_progress is not None:
                self.on_progress(progress)
        return progress

    def _cancel_pending(self) -> None:
        """Cancel every job of this run that has not started; running ones finish."""
        for job_id in list(self._pending):
            self.router.cancel(job_id)

    def _adopt(self, n: int, text: str, progress: BatchProgress, waiter: JobWaiter) -> str | None:
        """A line met after the run was stopped: its job (submitted by an earlier run) is
        cancelled if it has not started and collected; a line that never became a job is
        written as ``batch_expired`` when the run expired and left out otherwise."""
        try:
            req: BatchRequest | None = parse_line(n, text)
        except LineError:
            req = None
        custom_id = req.custom_id if req is not None else None
        metadata = req.metadata if req is not None else {}
        job_id = line_job_id(self.router.schema.ns, str(self.batch_id), n)
        if not self.router.client.exists(self.router.schema.job(job_id)):
            if self.stopped == "expired":
                self._emit(n, output_record(n, custom_id, metadata, error=(
                    "batch_expired", "the batch's completion window ended before this line ran")), progress)
            elif self.ordered:
                self._order.remove(n)
                self._drain_ordered()
            return None
        waiter.watch([job_id])
        self.router.cancel(job_id)
        self._pending[job_id] = _Pending(n, custom_id, metadata)
        return job_id


def batch_status(router: Router, batch_id: str) -> dict[str, Any] | None:
    """The stored record of a batch run (counts, state, paths), or None if unknown/expired."""
    raw = router.client.hgetall(router.schema.batch(batch_id))
    if not raw:
        return None
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in raw.items()}
    out: dict[str, Any] = dict(f)
    for name in ("total", "done", "failed", "in_flight"):
        out[name] = int(f.get(name, 0) or 0)
    for name in ("created_at", "updated_at"):
        out[name] = float(f[name]) if f.get(name) else None
    out["pending"] = max(0, out["total"] - out["done"] - out["failed"])
    return out
