"""Run many prompts through the Message Batches API, with a durable journal and resume.

The Message Batches API processes requests asynchronously at half the standard price and in
its own rate-limit pool. :func:`invoke_batch` takes the same prompt dicts as
``invoke_parallel``, submits them as one or more batches, polls until they end, and returns the
replies in input order::

    from claude_client import invoke_batch

    prompts = [{"prompt": f"Summarise chapter {i}"} for i in range(5000)]
    replies = invoke_batch(prompts, journal="chapters.journal.json", poll_interval=60)
    print(replies[0], replies.cost_usd)

With ``journal=`` the batch ids are written to a JSON file *before* any waiting, so a crashed
script or a re-run notebook cell resumes polling the same batches instead of paying twice, and
a re-run after completion returns the stored results without sending a single request.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Dict, List, Optional, Union

import anthropic
import httpx2

import claude_client as _cc
from claude_client import DEFAULT_MODEL, ClaudeInvocationError, ParallelResults

__all__ = [
    "invoke_batch",
    "BatchProgress",
    "BatchStatus",
    "MAX_BATCH_REQUESTS",
    "MAX_BATCH_BYTES",
]

logger = logging.getLogger(__name__)

#: API limits for one message batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_JOURNAL_FORMAT = "orchestrating-agents/batch-journal"
_JOURNAL_VERSION = 1
_ON_INTERRUPT = ("cancel", "leave")
# Bytes of ``{"requests": [`` + ``]}`` plus slack; each request adds its JSON and ", ".
_BODY_OVERHEAD = 64
# Right after create a retrieve can answer 404 for a short while: retry with these delays.
_NOT_FOUND_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0)
# Create is not idempotent: retry only answers that prove the batch was not created.
_CREATE_DELAYS = (1.0, 2.0, 4.0, 8.0)
_CREATE_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})

ProgressCallback = Callable[["BatchProgress"], None]


# --------------------------------------------------------------------------- progress snapshots


@dataclass(frozen=True)
class BatchStatus:
    """One batch of a job, as last seen: ``id`` is None until the batch is created.

    ``processing_status`` is ``"pending"`` (not created yet), ``"in_progress"``,
    ``"canceling"`` or ``"ended"``; the request indexes it covers are ``range(start, end)``.
    """

    id: Optional[str]
    start: int
    end: int
    processing_status: str
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    results_fetched: bool


@dataclass(frozen=True)
class BatchProgress:
    """What ``on_progress`` receives after every poll: counts per batch and in total.

    >>> def show(p: BatchProgress) -> None:
    ...     print(f"{p.done}/{p.total} done, {p.succeeded} ok, {p.errored} errored")
    """

    batches: tuple[BatchStatus, ...]
    total: int
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    elapsed_s: float

    @property
    def done(self) -> int:
        """Requests no longer processing (succeeded, errored, canceled or expired)."""
        return self.total - self.processing

    @property
    def batch_ids(self) -> List[str]:
        return [b.id for b in self.batches if b.id]


# --------------------------------------------------------------------------- request preparation


@dataclass
class _Request:
    index: int
    custom_id: str
    digest: str
    params: Dict[str, Any]
    size: int  # bytes of {"custom_id":..., "params":...} as JSON (an upper bound)


def _with_long_ttl(obj: Any) -> Any:
    """Copy of ``obj`` where every ephemeral ``cache_control`` without a TTL gets ``"1h"``.

    Only containers on the way to a changed ``cache_control`` are copied; nothing is mutated.
    """
    if isinstance(obj, dict):
        out: Optional[Dict[str, Any]] = None
        for key, value in obj.items():
            if key == "cache_control" and isinstance(value, Mapping):
                new = value if "ttl" in value else {**value, "ttl": "1h"}
            else:
                new = _with_long_ttl(value)
            if new is not value:
                if out is None:
                    out = dict(obj)
                out[key] = new
        return obj if out is None else out
    if isinstance(obj, list):
        items = [_with_long_ttl(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj)) else items
    return obj


def _prepare(specs: Sequence[Any]) -> List[_Request]:
    requests: List[_Request] = []
    for spec in specs:
        params = {k: v for k, v in spec.params.items() if k != "stream"}
        params = _with_long_ttl(params)
        try:
            canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"prompts[{spec.index}]: the request is not JSON-serialisable: {exc}") from None
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        custom_id = f"req-{spec.index}-{digest[:10]}"
        # ensure_ascii JSON with default separators is never shorter than what the SDK sends.
        size = len(json.dumps({"custom_id": custom_id, "params": params})) + 2
        requests.append(_Request(spec.index, custom_id, digest, params, size))
    return requests


def _fingerprint(requests: Sequence[_Request]) -> str:
    h = hashlib.sha256(f"{_JOURNAL_FORMAT}/{len(requests)}\n".encode())
    for r in requests:
        h.update(r.digest.encode())
    return h.hexdigest()


def _plan(requests: Sequence[_Request], max_requests: int, max_bytes: int) -> List[tuple]:
    """Split into ``(start, end)`` ranges of at most ``max_requests`` requests and ``max_bytes``."""
    budget = max_bytes - _BODY_OVERHEAD
    ranges: List[tuple] = []
    start, size = 0, 0
    for r in requests:
        if r.size > budget:
            raise ValueError(
                f"prompts[{r.index}]: the request is {r.size} bytes as JSON, more than "
                f"max_batch_bytes={max_bytes} allows for one batch"
            )
        if r.index - start >= max_requests or size + r.size > budget:
            ranges.append((start, r.index))
            start, size = r.index, 0
        size += r.size
    if requests:
        ranges.append((start, len(requests)))
    return ranges


# --------------------------------------------------------------------------- journal


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Journal:
    """The job's durable state. Saved atomically (temp file + ``os.replace``) when ``path`` is set.

    Layout (JSON)::

        {"format": ..., "version": 1, "fingerprint": sha256 of every request, "requests": N,
         "state": "submitting" | "running" | "ended", "created_at", "updated_at",
         "batches": [{"id", "start", "end", "first_custom_id", "last_custom_id", "status",
                      "request_counts", "seen", "cancel_requested", "results_fetched",
                      "create_started_at", "adopted"}],
         "foreign_batches": [ids of adopted batches that turned out to hold none of this job's requests],
         "results": {custom_id: <the API's result object: succeeded / errored / canceled / expired>}}
    """

    def __init__(self, path: Optional[Path], data: Dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @property
    def batches(self) -> List[Dict[str, Any]]:
        return self.data["batches"]

    @property
    def results(self) -> Dict[str, Any]:
        return self.data["results"]

    @classmethod
    def open(
        cls,
        path: Optional[Path],
        fingerprint: str,
        requests: Sequence[_Request],
        ranges: Sequence[tuple],
        model: str,
    ) -> "_Journal":
        if path is not None and path.exists() and not cls._is_empty(path):
            data = cls._load(path)
            if data.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"journal: {str(path)!r} belongs to a different job (its prompts or parameters "
                    f"differ from this call's: {data.get('requests')} requests, fingerprint "
                    f"{str(data.get('fingerprint'))[:12]}; this call: {len(requests)} requests, "
                    f"fingerprint {fingerprint[:12]}). Pass another journal path, or delete the file "
                    f"if that job's batches are no longer needed."
                )
            cls._check_plan(path, data, len(requests))
            logger.info("invoke_batch: resuming from journal %s (%d batches)", path, len(data["batches"]))
            return cls(path, data)
        data = {
            "format": _JOURNAL_FORMAT,
            "version": _JOURNAL_VERSION,
            "fingerprint": fingerprint,
            "requests": len(requests),
            "model": model,
            "state": "submitting",
            "created_at": _now_iso(),
            "updated_at": _now_iso(),
            "batches": [
                {
                    "id": None,
                    "start": start,
                    "end": end,
                    "first_custom_id": requests[start].custom_id,
                    "last_custom_id": requests[end - 1].custom_id,
                    "status": "pending",
                    "request_counts": None,
                    "seen": False,
                    "cancel_requested": False,
                    "results_fetched": False,
                    "create_started_at": None,
                }
                for start, end in ranges
            ],
            "results": {},
        }
        journal = cls(path, data)
        journal.save()  # fails here, before any request, when the path is not writable
        return journal

    @staticmethod
    def _is_empty(path: Path) -> bool:
        """A 0-byte file (e.g. made by ``tempfile.mkstemp``) is a new journal, not a damaged one."""
        try:
            return path.is_file() and path.stat().st_size == 0
        except OSError:
            return False

    @staticmethod
    def _load(path: Path) -> Dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"journal: {str(path)!r} exists but is not a readable batch journal ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != _JOURNAL_FORMAT:
            raise ValueError(f"journal: {str(path)!r} exists but is not an invoke_batch journal")
        if data.get("version") != _JOURNAL_VERSION:
            raise ValueError(
                f"journal: {str(path)!r} has version {data.get('version')!r}; this library reads version "
                f"{_JOURNAL_VERSION}"
            )
        return data

    @staticmethod
    def _check_plan(path: Path, data: Dict[str, Any], n: int) -> None:
        batches = data.get("batches")
        ok = isinstance(batches, list) and isinstance(data.get("results"), dict)
        expected = 0
        for b in batches if ok else ():
            if not isinstance(b, dict) or b.get("start") != expected or not isinstance(b.get("end"), int):
                ok = False
                break
            expected = b["end"]
        if not ok or expected != n:
            raise ValueError(f"journal: {str(path)!r} is damaged (its batch ranges do not cover the job)")

    def save(self) -> None:
        if self.path is None:
            return
        self.data["updated_at"] = _now_iso()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.data, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise


# --------------------------------------------------------------------------- the run


class _Interrupted(Exception):
    """Internal: the interrupt token fired."""


def _counts_of(batch: Dict[str, Any]) -> Dict[str, int]:
    size = batch["end"] - batch["start"]
    counts = batch.get("request_counts") or {}
    return {
        "processing": int(counts.get("processing", size if batch["status"] != "ended" else 0)),
        "succeeded": int(counts.get("succeeded", 0)),
        "errored": int(counts.get("errored", 0)),
        "canceled": int(counts.get("canceled", 0)),
        "expired": int(counts.get("expired", 0)),
    }


class _BatchRun:
    def __init__(
        self,
        *,
        client: anthropic.Anthropic,
        create_client: anthropic.Anthropic,
        requests: List[_Request],
        journal: _Journal,
        poll_interval: float,
        on_progress: Optional[ProgressCallback],
        timeout: Optional[float],
        interrupt_token: Any,
        on_interrupt: str,
    ) -> None:
        self.client = client
        self.create_client = create_client
        self.requests = requests
        self.journal = journal
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self.timeout = timeout
        self.token = interrupt_token
        self.on_interrupt = on_interrupt
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.index_of = {r.custom_id: r.index for r in requests}

    # -- waiting and interrupts

    def _interrupted(self) -> bool:
        return self.token is not None and bool(self.token.is_interrupted())

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early (raising ``_Interrupted``) when the token fires."""
        if seconds <= 0:
            if self._interrupted():
                raise _Interrupted()
            return
        if self.token is None:
            time.sleep(seconds)
            return
        wait = getattr(self.token, "wait", None)
        end = time.monotonic() + seconds
        while True:
            if self.token.is_interrupted():
                raise _Interrupted()
            left = end - time.monotonic()
            if left <= 0:
                return
            if callable(wait):
                wait(min(left, 1.0))
            else:
                time.sleep(min(left, 0.05))

    # -- API calls

    def _create(self, batch: Dict[str, Any]) -> None:
        chunk = self.requests[batch["start"] : batch["end"]]
        body = [{"custom_id": r.custom_id, "params": r.params} for r in chunk]
        for delay in (*_CREATE_DELAYS, None):
            if self._interrupted():
                raise _Interrupted()
            # Journaled before sending: a crash inside the call makes the next run look for the batch.
            batch["create_started_at"] = time.time()
            self.journal.save()
            try:
                created = self.create_client.messages.batches.create(requests=body)
                break
            except anthropic.APIStatusError as exc:
                retryable = exc.status_code in _CREATE_RETRY_STATUS
                err = exc
            except anthropic.APIConnectionError as exc:
                # Only a refused/failed connection proves nothing reached the server.
                retryable = isinstance(exc.__cause__, httpx2.ConnectError) and not isinstance(
                    exc, anthropic.APITimeoutError
                )
                err = exc
            if isinstance(err, anthropic.APIStatusError) or retryable:
                batch["create_started_at"] = None  # the server answered or was never reached: no batch
            if not retryable or delay is None:
                error = _cc._error_from(err)
                ambiguous = batch["create_started_at"] is not None
                self.journal.save()
                raise ClaudeInvocationError(
                    f"invoke_batch: creating the batch for requests {batch['start']}..{batch['end'] - 1} "
                    f"failed: {error}"
                    + (
                        " (the connection failed after the request was sent, so the batch may exist; a re-run "
                        "with the same journal looks for it before submitting again)"
                        if ambiguous
                        else ""
                    )
                    + self._running_hint(),
                    kind=error.kind,
                    status_code=error.status_code,
                    details=error.details,
                    request_id=error.request_id,
                ) from err
            wait = delay
            retry_after = getattr(_cc._error_from(err), "retry_after", None)
            if retry_after:
                wait = max(wait, float(retry_after))
            logger.warning("invoke_batch: batch create failed (%s); retrying in %.1fs", err.__class__.__name__, wait)
            self._sleep(wait)
        batch["id"] = created.id
        batch["status"] = created.processing_status
        batch["request_counts"] = created.request_counts.model_dump()
        self.journal.data["state"] = "running"
        self.journal.save()
        logger.info(
            "invoke_batch: created %s for requests %d..%d", created.id, batch["start"], batch["end"] - 1
        )

    def _find_created(self, batch: Dict[str, Any], slack: float) -> tuple:
        """Batches the interrupted create call for ``batch`` may have made: ``(candidates, listed)``.

        Candidates have the batch's size, were created at most ``slack`` seconds before the
        create started (clock skew), and are neither in the journal nor known to be foreign.
        ``listed`` is False when the batches could not be listed.
        """
        size = batch["end"] - batch["start"]
        since = float(batch["create_started_at"]) - slack
        known = {b["id"] for b in self.journal.batches if b["id"]}
        known.update(self.journal.data.get("foreign_batches") or ())
        try:
            page = self.client.messages.batches.list(limit=100)
            listed = list(page.data)
        except Exception as exc:
            logger.warning("invoke_batch: could not list batches to recover an interrupted create: %s",
                           _cc._error_from(exc))
            return [], False
        found = [
            b
            for b in listed
            if b.id not in known
            and b.created_at.timestamp() >= since
            and sum(b.request_counts.model_dump().values()) == size
        ]
        return found, True

    def _take_over(self, batch: Dict[str, Any], info: Any) -> None:
        """Record ``info`` (found by :meth:`_find_created`) as the batch of this journal entry.

        It is marked ``adopted``: when its results hold none of the entry's custom_ids it was
        another job's batch, and :meth:`_fetch_results` resets the entry to submit it again.
        """
        batch["id"] = info.id
        batch["status"] = info.processing_status
        batch["request_counts"] = info.request_counts.model_dump()
        batch["seen"] = True
        batch["adopted"] = True
        self.journal.data["state"] = "running"
        self.journal.save()

    def _adopt(self, batch: Dict[str, Any]) -> bool:
        """After a crash during create: find the batch that call may have created.

        The journal says a create started but recorded no id. A batch of the same size created
        since then (and not already in the journal) is taken over instead of paying twice. Its
        results are matched by custom_id; if they hold none of this entry's requests it was
        another job's batch and the entry is submitted again (see :meth:`_fetch_results`).
        Returns False when there is no single candidate (the create is sent again).
        """
        found, _ = self._find_created(batch, slack=120.0)
        if len(found) != 1:
            logger.warning(
                "invoke_batch: the previous run stopped while creating the batch for requests %d..%d and "
                "%s; submitting them again",
                batch["start"],
                batch["end"] - 1,
                "no such batch exists" if not found else f"{len(found)} batches could be it",
            )
            return False
        info = found[0]
        self._take_over(batch, info)
        logger.warning(
            "invoke_batch: the previous run stopped while creating the batch for requests %d..%d; "
            "resuming %s (created at %s) instead of submitting again",
            batch["start"],
            batch["end"] - 1,
            info.id,
            info.created_at.isoformat(),
        )
        return True

    def _reset_foreign(self, batch: Dict[str, Any]) -> None:
        """An adopted batch held none of this entry's requests: forget it and submit again."""
        foreign = batch["id"]
        self.journal.data.setdefault("foreign_batches", []).append(foreign)
        batch.update(id=None, status="pending", request_counts=None, seen=False, cancel_requested=False,
                     results_fetched=False, create_started_at=None, adopted=False)
        self.journal.save()
        logger.warning(
            "invoke_batch: %s, taken over after an interrupted create, holds none of requests %d..%d (it "
            "belongs to another job); submitting them again",
            foreign,
            batch["start"],
            batch["end"] - 1,
        )

    def _retrieve(self, batch: Dict[str, Any]) -> None:
        delays = iter(_NOT_FOUND_DELAYS if not batch.get("seen") else ())
        while True:
            try:
                info = self.client.messages.batches.retrieve(batch["id"])
                break
            except anthropic.NotFoundError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ClaudeInvocationError(
                        f"invoke_batch: batch {batch['id']} was not found (requests "
                        f"{batch['start']}..{batch['end'] - 1}); it may have been deleted or belong to "
                        f"another workspace or API key",
                        kind="bad_request",
                        status_code=404,
                    ) from exc
                logger.debug("invoke_batch: %s not visible yet (404); retrying in %.1fs", batch["id"], delay)
                self._sleep(delay)
        changed = (not batch.get("seen")) or info.processing_status != batch["status"]
        batch["seen"] = True
        batch["status"] = info.processing_status
        batch["request_counts"] = info.request_counts.model_dump()
        if changed:
            self.journal.save()

    def _fetch_results(self, batch: Dict[str, Any]) -> None:
        fetched: Dict[str, Any] = {}
        unknown = 0
        # The raw JSONL lines: the journal stores the API's result objects as they came, and
        # skipping the SDK's typed models halves the parsing time of large batches.
        with self.client.messages.batches.with_streaming_response.results(batch["id"]) as response:
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                custom_id = line.get("custom_id") if isinstance(line, dict) else None
                result = line.get("result") if isinstance(line, dict) else None
                if custom_id not in self.index_of or not isinstance(result, dict):
                    unknown += 1
                    continue
                fetched[custom_id] = result
        if batch.get("adopted") and not any(
            r.custom_id in fetched for r in self.requests[batch["start"] : batch["end"]]
        ):
            self._reset_foreign(batch)
            return
        if unknown:
            logger.warning("invoke_batch: ignored %d result lines of %s with an unknown custom_id", unknown, batch["id"])
        missing = 0
        for r in self.requests[batch["start"] : batch["end"]]:
            if r.custom_id not in fetched:
                missing += 1
                fetched[r.custom_id] = {"type": "missing"}
        if missing:
            logger.warning("invoke_batch: %s returned no result for %d requests", batch["id"], missing)
        self.journal.results.update(fetched)
        batch["results_fetched"] = True
        if all(b["results_fetched"] for b in self.journal.batches):
            self.journal.data["state"] = "ended"
        self.journal.save()
        logger.info("invoke_batch: fetched %d results of %s", len(fetched), batch["id"])

    def _cancel_all(self) -> Dict[str, List[str]]:
        """Cancel every unfinished batch; returns the ids by outcome.

        ``canceled``: cancel accepted (now or by an earlier run); ``failed``: the cancel call
        failed, so the batch is still running; ``ended``: it had already ended (nothing to cancel).
        """
        outcome: Dict[str, List[str]] = {"canceled": [], "failed": [], "ended": []}
        for batch in self.journal.batches:
            if not batch["id"] or batch["results_fetched"]:
                continue
            if batch["status"] == "ended":
                outcome["ended"].append(batch["id"])
                continue
            if batch["cancel_requested"]:
                outcome["canceled"].append(batch["id"])
                continue
            try:
                info = self.client.messages.batches.cancel(batch["id"])
            except Exception as exc:  # best effort: report, keep canceling the others
                logger.warning("invoke_batch: could not cancel %s: %s", batch["id"], _cc._error_from(exc))
                outcome["failed"].append(batch["id"])
                continue
            batch["status"] = info.processing_status
            batch["request_counts"] = info.request_counts.model_dump()
            if info.processing_status == "ended":
                outcome["ended"].append(batch["id"])
                continue
            batch["cancel_requested"] = True
            outcome["canceled"].append(batch["id"])
            logger.info("invoke_batch: canceled %s", batch["id"])
        self.journal.save()
        return outcome

    def _find_interrupted_creates(self) -> List[Dict[str, Any]]:
        """After Ctrl-C: look up batches a create call cut short may have made (journaled if found).

        Returns the entries whose batch may exist but could not be identified.
        """
        unknown = []
        for batch in self.journal.batches:
            if batch["id"] or not batch.get("create_started_at"):
                continue
            # The create started moments ago in this process: a short window for clock skew.
            found, listed = self._find_created(batch, slack=30.0)
            if len(found) == 1:
                self._take_over(batch, found[0])
                logger.warning(
                    "invoke_batch: the create call for requests %d..%d was interrupted after the server "
                    "created %s",
                    batch["start"],
                    batch["end"] - 1,
                    found[0].id,
                )
            elif found or not listed:
                unknown.append(batch)
        return unknown

    def _running_hint(self) -> str:
        running = [b["id"] for b in self.journal.batches if b["id"] and not b["results_fetched"]]
        if not running:
            return ""
        return f"; batches {', '.join(running)} are running: {_resume_hint(self.journal)}"

    # -- progress

    def snapshot(self) -> BatchProgress:
        rows = []
        totals = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
        for b in self.journal.batches:
            counts = _counts_of(b)
            if b["results_fetched"]:
                counts = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
                for r in self.requests[b["start"] : b["end"]]:
                    kind = self.journal.results.get(r.custom_id, {}).get("type")
                    counts[kind if kind in counts else "errored"] += 1
            for key in totals:
                totals[key] += counts[key]
            rows.append(BatchStatus(b["id"], b["start"], b["end"], b["status"], results_fetched=b["results_fetched"], **counts))
        return BatchProgress(tuple(rows), len(self.requests), elapsed_s=time.monotonic() - self.started, **totals)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(self.snapshot())
        except Exception:
            logger.exception("invoke_batch: on_progress raised; polling continues")

    # -- main loop

    def run(self) -> None:
        """Create missing batches, poll until every batch's results are fetched."""
        journal = self.journal
        while True:
            # Every pass: an entry reset after adopting another job's batch is submitted again.
            for batch in journal.batches:
                if batch["id"] is None:
                    if batch.get("create_started_at") and self._adopt(batch):
                        continue
                    self._create(batch)
            if self._interrupted():
                raise _Interrupted()
            for batch in journal.batches:
                if batch["results_fetched"]:
                    continue
                try:
                    if batch["status"] != "ended":
                        self._retrieve(batch)
                    if batch["status"] == "ended":
                        self._fetch_results(batch)
                except (anthropic.APIError, httpx2.TransportError) as exc:
                    error = _cc._error_from(exc)
                    if not error.transient:
                        raise ClaudeInvocationError(
                            f"invoke_batch: polling {batch['id']} failed: {error}{self._running_hint()}",
                            kind=error.kind,
                            status_code=error.status_code,
                            details=error.details,
                            request_id=error.request_id,
                        ) from exc
                    logger.warning("invoke_batch: polling %s failed (%s); will retry", batch["id"], error)
            self._report()
            if all(b["results_fetched"] for b in journal.batches):
                return
            wait = self.poll_interval
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise _TimedOut()
                wait = min(wait, left)
            self._sleep(wait)


class _TimedOut(Exception):
    """Internal: ``timeout`` elapsed."""




# --------------------------------------------------------------------------- results


def _item_error(result: Mapping[str, Any], request: _Request, batch_id: Optional[str]) -> ClaudeInvocationError:
    kind = result.get("type")
    where = f"prompts[{request.index}] ({request.custom_id} in {batch_id})"
    if kind == "errored":
        body = result.get("error")
        body = body if isinstance(body, Mapping) else {}
        inner = body.get("error")
        inner = inner if isinstance(inner, Mapping) else {}
        err_type = inner.get("type", "api_error")
        text = inner.get("message") or ""
        return ClaudeInvocationError(
            f"{where}: the batch request errored: {err_type}" + (f": {text}" if text else ""),
            kind="batch_errored",
            details=dict(body) or None,
            request_id=body.get("request_id"),
        )
    if kind == "expired":
        return ClaudeInvocationError(
            f"{where}: the batch request expired (the batch did not reach it within 24 hours)", kind="batch_expired"
        )
    if kind == "canceled":
        return ClaudeInvocationError(f"{where}: the batch request was canceled", kind="batch_canceled")
    return ClaudeInvocationError(f"{where}: the batch returned no result for this request", kind="batch_errored")


def _response(message: Mapping[str, Any], model_hint: str) -> Any:
    """A ClaudeResponse from the message of a ``succeeded`` result (a dict), batch-priced."""
    blocks = [_cc._block_dict(b) for b in message.get("content") or () if isinstance(b, Mapping)]
    usage = _cc.Usage.from_sdk(message.get("usage"))
    model = message.get("model") or model_hint
    return _cc.ClaudeResponse(
        "".join(b.get("text", "") for b in blocks if b.get("type") == "text"),
        usage=usage,
        stop_reason=message.get("stop_reason"),
        model=model,
        id=message.get("id"),
        cost_usd=_cc.estimate_cost(usage, model, batch=True),
        content=blocks,
    )


def _collect(
    requests: Sequence[_Request], journal: _Journal, *, return_exceptions: bool, raise_errors: bool
) -> ParallelResults:
    """Results in input order from the journal; None where there is no result yet.

    With ``raise_errors`` and failed items (and not ``return_exceptions``), raise one
    ``ClaudeInvocationError`` carrying ``.results`` and ``.errors``, as ``invoke_parallel`` does.
    """
    batch_of: Dict[int, Optional[str]] = {}
    for b in journal.batches:
        for i in range(b["start"], b["end"]):
            batch_of[i] = b["id"]
    values: List[Any] = [None] * len(requests)
    errors: Dict[int, BaseException] = {}
    truncated: List[int] = []
    for r in requests:
        result = journal.results.get(r.custom_id)
        if result is None:
            continue
        if result.get("type") == "succeeded" and isinstance(result.get("message"), Mapping):
            response = _response(result["message"], r.params.get("model", ""))
            if response.stop_reason == "max_tokens":
                truncated.append(r.index)
            values[r.index] = response
        else:
            errors[r.index] = _item_error(result, r, batch_of.get(r.index))
            if return_exceptions:
                values[r.index] = errors[r.index]
    if truncated:
        logger.warning(
            "invoke_batch: %d replies were cut at max_tokens (prompts %s%s); raise max_tokens for the full text",
            len(truncated),
            ", ".join(map(str, truncated[:10])),
            ", ..." if len(truncated) > 10 else "",
        )
    usage, cost = _cc._totals(values)
    results = ParallelResults(values, usage=usage, cost_usd=cost, errors=errors)
    if errors and raise_errors and not return_exceptions:
        first = min(errors)
        kinds: Dict[str, int] = {}
        for e in errors.values():
            k = getattr(e, "kind", None) or type(e).__name__
            kinds[k] = kinds.get(k, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        ok = sum(1 for v in values if v is not None)
        raise ClaudeInvocationError(
            f"{len(errors)} of {len(requests)} batch requests failed ({summary}; {ok} succeeded); "
            f"first failure, {errors[first]}",
            kind=getattr(errors[first], "kind", None),
            results=results,
            errors=errors,
        ) from errors[first]
    return results


# --------------------------------------------------------------------------- public API


def _check_number(value: Any, name: str, *, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds{' or None' if allow_none else ''}, got {value!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _check_limit(value: Any, name: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high} ({what}), got {value!r}")
    return value


def _journal_path(journal: Any) -> Optional[Path]:
    if journal is None:
        return None
    if not isinstance(journal, (str, os.PathLike)) or not str(journal):
        raise TypeError(f"journal must be None or a file path (str or os.PathLike), got {journal!r}")
    path = Path(journal).expanduser()
    if path.is_dir():
        raise ValueError(f"journal must be a file path; {str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"journal: the directory {str(path.parent)!r} does not exist")
    return path


def _resume_hint(journal: _Journal) -> str:
    ids = [b["id"] for b in journal.batches if b["id"] and not b["results_fetched"]]
    if journal.path is not None:
        return (
            f"call invoke_batch again with the same prompts and journal={str(journal.path)!r} to resume "
            f"(nothing is submitted twice)"
        )
    return (
        f"no journal was given, so invoke_batch cannot resume them ({', '.join(ids) or 'none'}); their "
        f"results can be read with get_client().messages.batches.results(id); pass journal=PATH next time"
    )


def invoke_batch(
    prompts: Sequence[Mapping[str, Any]],
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    shared_system: Union[str, Sequence[Mapping[str, Any]], None] = None,
    cache_shared_system: bool = False,
    journal: Union[str, "os.PathLike[str]", None] = None,
    poll_interval: float = 30.0,
    on_progress: Optional[ProgressCallback] = None,
    timeout: Optional[float] = None,
    return_exceptions: bool = False,
    *,
    interrupt_token: Optional[_cc.InterruptToken] = None,
    on_interrupt: str = "cancel",
    max_batch_requests: int = MAX_BATCH_REQUESTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
) -> ParallelResults:
    """Run ``prompts`` through the Message Batches API (half price); replies in input order.

    ``prompts`` are the dicts of ``invoke_parallel`` (``prompt`` plus optional ``system``,
    ``temperature``, ``cache_system``, ``cache_prompt``, ``model``, ``max_tokens``), validated
    the same way before anything is sent. Each becomes one batch request with the custom_id
    ``req-<index>-<hash of its parameters>``; the job is split into several batches past
    ``max_batch_requests`` requests or ``max_batch_bytes`` bytes of JSON. Prompt caching uses
    the 1-hour TTL (a batch can take longer than 5 minutes).

    ``journal`` (a file path) makes the job durable: the batch ids are written to it before any
    waiting, so calling again with the same prompts and journal after a crash, a timeout or an
    interrupt resumes polling the same batches, and after completion returns the stored results
    without any request. A journal written for other prompts is refused (ValueError).

    ``on_progress(BatchProgress)`` is called after every poll (in the calling thread). ``timeout``
    (seconds) raises ``ClaudeInvocationError`` (kind ``timeout``) and leaves the batches running.
    ``interrupt_token.interrupt()`` (from any thread) or Ctrl-C cancels the unfinished batches
    (``on_interrupt="cancel"``) or leaves them running (``"leave"``); with the token the call then
    returns the results fetched so far with None elsewhere (like ``invoke_parallel``), Ctrl-C
    re-raises KeyboardInterrupt; both log how to resume.

    Failures are per request, as in ``invoke_parallel``: a failed request never discards the
    others; by default one ``ClaudeInvocationError`` carries ``.results`` (None where failed)
    and ``.errors`` (index -> error of kind ``batch_errored``, ``batch_expired`` or
    ``batch_canceled``); with ``return_exceptions=True`` the errors are returned in their slots.
    The list has ``.usage``, ``.cost_usd`` (batch-priced: half the standard price) and ``.errors``.

    >>> replies = invoke_batch([{"prompt": "2+2?"}, {"prompt": "3+3?"}], journal="math.json", poll_interval=10)
    >>> replies[0], replies.cost_usd
    """
    specs = _cc._normalize_prompts(
        prompts, shared_system=shared_system, cache_shared_system=cache_shared_system, model=model, max_tokens=max_tokens
    )
    _cc._check_bool(return_exceptions, "return_exceptions")
    _cc._validate_token(interrupt_token)
    poll = _check_number(poll_interval, "poll_interval")
    limit = _check_number(timeout, "timeout", allow_none=True)
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be a callable taking a BatchProgress, got {type(on_progress).__name__}")
    if on_interrupt not in _ON_INTERRUPT:
        raise ValueError(f"on_interrupt must be 'cancel' or 'leave', got {on_interrupt!r}")
    _check_limit(max_batch_requests, "max_batch_requests", 1, MAX_BATCH_REQUESTS, "the API allows 100,000")
    _check_limit(max_batch_bytes, "max_batch_bytes", 4 * _BODY_OVERHEAD, MAX_BATCH_BYTES, "the API allows 256 MB")
    path = _journal_path(journal)
    requests = _prepare(specs)
    if not requests:
        return ParallelResults([], usage=_cc.Usage(), cost_usd=0.0)
    ranges = _plan(requests, max_batch_requests, max_batch_bytes)
    state = _Journal.open(path, _fingerprint(requests), requests, ranges, model)

    if all(b["results_fetched"] for b in state.batches):
        logger.info("invoke_batch: every result is in the journal %s; no request sent", path)
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True)
    if interrupt_token is not None and interrupt_token.is_interrupted():
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=False)

    run = _BatchRun(
        client=_cc._client_for(api_key=api_key, base_url=base_url),
        create_client=_cc._client_for(0, api_key=api_key, base_url=base_url),
        requests=requests,
        journal=state,
        poll_interval=poll,
        on_progress=on_progress,
        timeout=limit,
        interrupt_token=interrupt_token,
        on_interrupt=on_interrupt,
    )
    try:
        run.run()
    except _TimedOut:
        snap = run.snapshot()
        raise ClaudeInvocationError(
            f"invoke_batch: timed out after {timeout}s with {snap.done} of {snap.total} requests done; the "
            f"batches keep running (and are billed){run._running_hint()}",
            kind="timeout",
            results=_collect(requests, state, return_exceptions=return_exceptions, raise_errors=False),
            errors={},
        ) from None
    except _Interrupted:
        logger.warning("invoke_batch: interrupted; %s", _after_interrupt(run))
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True)
    except KeyboardInterrupt:
        logger.warning("invoke_batch: KeyboardInterrupt; %s", _after_interrupt(run))
        raise
    return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True)


def _after_interrupt(run: _BatchRun) -> str:
    """Cancel (or leave) the unfinished batches; returns what happened and how to resume.

    A create call cut short by Ctrl-C may have created a batch whose id was never returned: it
    is looked up (and then canceled or left like the others) before anything is reported.
    """
    state = run.journal
    try:
        maybe = run._find_interrupted_creates()
    except Exception as exc:  # never let the lookup hide the interrupt
        logger.warning("invoke_batch: could not look for a batch created by the interrupted call: %s", exc)
        maybe = [b for b in state.batches if not b["id"] and b.get("create_started_at")]
    open_batches = [b for b in state.batches if b["id"] and not b["results_fetched"]]
    parts: List[str] = []
    if run.on_interrupt == "cancel":
        outcome = run._cancel_all()
        if outcome["canceled"]:
            parts.append(
                f"canceled batches {', '.join(outcome['canceled'])} (the requests they had already "
                f"finished are billed)"
            )
        if outcome["failed"]:
            parts.append(f"batches {', '.join(outcome['failed'])} are still running (cancel failed) and billed")
        if outcome["ended"]:
            parts.append(f"batches {', '.join(outcome['ended'])} had already ended (results not fetched yet)")
    else:
        state.save()
        running = [b["id"] for b in open_batches if b["status"] != "ended"]
        ended = [b["id"] for b in open_batches if b["status"] == "ended"]
        if running:
            parts.append(f"batches {', '.join(running)} are left running (and billed)")
        if ended:
            parts.append(f"batches {', '.join(ended)} have ended (results not fetched yet)")
    for b in maybe:
        parts.append(
            f"the create call for requests {b['start']}..{b['end'] - 1} was interrupted, so a batch may be "
            f"running that could not be identified (check get_client().messages.batches.list())"
        )
    if not parts:
        return "no batch was running"
    return "; ".join(parts) + f"; to collect the results, {_resume_hint(state)}"
