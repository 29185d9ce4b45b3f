"""The plan and the journal of a batch job (for ``message_batches``): the requests with their
custom_ids, how they are split into batches, and the durable JSON journal that lets a crashed or
interrupted job resume without paying twice."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from _journal import BATCH_FORMAT, JournalLock, unreadable
from _journal import FORMAT as RUN_FORMAT

logger = logging.getLogger("message_batches._batch_journal")

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_JOURNAL_FORMAT = BATCH_FORMAT
_JOURNAL_VERSION = 1
# A journal that records a retry batch is written as version 2, so that a library which does not
# know about retry batches refuses it instead of returning the stale failures they replace.
_RETRY_JOURNAL_VERSION = 2
# A journal whose entries carry create nonces is version 3: a library that does not add the
# nonces to the custom_ids it matches would find none of its results.
_NONCE_JOURNAL_VERSION = 3
_READABLE_VERSIONS = (_JOURNAL_VERSION, _RETRY_JOURNAL_VERSION, _NONCE_JOURNAL_VERSION)
# Result types that ``retry_failed`` submits again ("missing": the batch returned no line for it).
_RETRYABLE = frozenset({"errored", "expired", "canceled", "missing"})
# Bytes of ``{"requests": [`` + ``]}`` plus slack; each request adds its JSON and ", ".
BODY_OVERHEAD = 64


@dataclass
class Request:
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


def prepare(specs: Sequence[Any]) -> List[Request]:
    requests: List[Request] = []
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
        requests.append(Request(spec.index, custom_id, digest, params, size))
    return requests


def fingerprint(requests: Sequence[Request]) -> str:
    h = hashlib.sha256(f"{_JOURNAL_FORMAT}/{len(requests)}\n".encode())
    for r in requests:
        h.update(r.digest.encode())
    return h.hexdigest()


def chunks(requests: Sequence[Request], max_requests: int, max_bytes: int) -> List[List[Request]]:
    """Split ``requests`` (in order) into batches of at most ``max_requests`` and ``max_bytes``."""
    budget = max_bytes - BODY_OVERHEAD
    chunks: List[List[Request]] = []
    chunk: List[Request] = []
    size = 0
    for r in requests:
        if r.size > budget:
            raise ValueError(
                f"prompts[{r.index}]: the request is {r.size} bytes as JSON, more than "
                f"max_batch_bytes={max_bytes} allows for one batch"
            )
        if len(chunk) >= max_requests or size + r.size > budget:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(r)
        size += r.size
    if chunk:
        chunks.append(chunk)
    return chunks


def plan(requests: Sequence[Request], max_requests: int, max_bytes: int) -> List[tuple]:
    """Split into ``(start, end)`` ranges of at most ``max_requests`` requests and ``max_bytes``."""
    return [(c[0].index, c[-1].index + 1) for c in chunks(requests, max_requests, max_bytes)]


def members(entry: Mapping[str, Any], requests: Sequence[Request]) -> List[Request]:
    """The requests a journal batch entry covers: its ``indexes`` (a retry) or ``start..end``."""
    indexes = entry.get("indexes")
    if indexes is not None:
        return [requests[i] for i in indexes]
    return list(requests[entry["start"] : entry["end"]])


def size(entry: Mapping[str, Any]) -> int:
    indexes = entry.get("indexes")
    return len(indexes) if indexes is not None else entry["end"] - entry["start"]


def label(entry: Mapping[str, Any]) -> str:
    """``requests 0..9`` for a planned batch; the re-sent indexes for a retry batch."""
    indexes = entry.get("indexes")
    if indexes is None:
        return f"requests {entry['start']}..{entry['end'] - 1}"
    shown = ", ".join(map(str, indexes[:10])) + (", ..." if len(indexes) > 10 else "")
    return f"retry {entry.get('round', 1)} of {len(indexes)} requests ({shown})"


def failed(requests: Sequence[Request], results: Mapping[str, Any]) -> List[Request]:
    """The requests whose journaled result is errored, expired, canceled or missing."""
    out = []
    for r in requests:
        result = results.get(r.custom_id)
        if isinstance(result, Mapping) and result.get("type") in _RETRYABLE:
            out.append(r)
    return out


# --------------------------------------------------------------------------- wire custom_ids


def wire_id(request: Request, entry: Mapping[str, Any]) -> str:
    """The custom_id ``request`` carries in the batch of ``entry``: its own custom_id followed by
    the entry's nonce (``req-3-0123456789_<nonce>``), so a batch's results name the journal entry
    that made it. Entries journaled before nonces existed send the plain custom_id."""
    nonce = entry.get("nonce")
    return f"{request.custom_id}_{nonce}" if nonce else request.custom_id


def wire_ids(entry: Mapping[str, Any], requests: Sequence[Request]) -> Dict[str, str]:
    """``{custom_id as sent: the request's own custom_id}`` for the requests of ``entry``."""
    return {wire_id(r, entry): r.custom_id for r in members(entry, requests)}


def new_nonce() -> str:
    """16 random hex digits: the id of one create call, journaled before it is sent."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- journal


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _entry(chunk: Sequence[Request], **fields: Any) -> Dict[str, Any]:
    """A journal entry for a batch not created yet (``fields``: its range or retry indexes)."""
    return {
        "id": None,
        **fields,
        "first_custom_id": chunk[0].custom_id,
        "last_custom_id": chunk[-1].custom_id,
        "status": "pending",
        "request_counts": None,
        "seen": False,
        "cancel_requested": False,
        "results_fetched": False,
        "create_started_at": None,
        "nonce": None,
    }


def _run_journal(path: Path) -> ValueError:
    return ValueError(
        f"journal: {str(path)!r} is a run journal of invoke_parallel, not an invoke_batch journal; it was "
        "left unchanged. Pass another journal path"
    )


class Journal:
    """The job's durable state. Saved atomically when ``path`` is set: written to a temp file
    which is fsynced, renamed over the journal with ``os.replace``, then the directory is fsynced
    so the rename itself survives a power loss. While open it holds the journal's lock
    (``_journal.JournalLock``): one process at a time.

    Layout (JSON)::

        {"format": ..., "version": 3 (1 and 2: journals of earlier versions),
         "fingerprint": sha256 of every request, "requests": N,
         "state": "submitting" | "running" | "ended", "created_at", "updated_at",
         "batches": [{"id", "start", "end", "first_custom_id", "last_custom_id", "status",
                      "request_counts", "seen", "cancel_requested", "results_fetched",
                      "create_started_at", "nonce", "candidates", "adopted", "result_counts"}],
         "retries": [{"id", "round", "indexes": [request indexes re-sent], "first_custom_id",
                      "last_custom_id", "status", ... the same fields as a planned batch}],
         "foreign_batches": [ids of batches found to hold none of this job's requests],
         "results": {custom_id: <the API's result object: succeeded / errored / canceled / expired>}}

    ``batches`` is the job's plan: its ranges cover every request once. ``retries`` are the
    batches ``retry_failed`` made (optional: absent in journals that never retried); each holds
    the failed requests of one round, with the same custom_ids, and its results replace theirs
    in ``results`` when fetched. ``result_counts`` is what an ended batch itself returned, by
    type (recorded when its results are fetched).

    ``nonce`` is written (with ``create_started_at``) before the create call is sent, and every
    request of that batch carries it in its custom_id (:func:`wire_id`): after a crash inside the
    call, a batch is this entry's only if its results carry the nonce. ``candidates`` are the
    batches that may be it, watched until they end and their results tell. Version 3 marks the
    nonces (a library that does not know them refuses the journal); versions 1 and 2 are read.
    """

    def __init__(self, path: Optional[Path], data: Dict[str, Any], lock: Optional[JournalLock] = None) -> None:
        self.path = path
        self.data = data
        self._lock = lock

    @property
    def batches(self) -> List[Dict[str, Any]]:
        return self.data["batches"]

    @property
    def results(self) -> Dict[str, Any]:
        return self.data["results"]

    @property
    def retries(self) -> List[Dict[str, Any]]:
        """The batches ``retry_failed`` made, oldest first (absent until the first retry)."""
        return self.data.get("retries") or []

    @property
    def entries(self) -> List[Dict[str, Any]]:
        """Every batch of the job: the planned ones, then the retries (oldest first)."""
        return self.batches + self.retries

    @property
    def foreign(self) -> List[str]:
        """Ids of batches found to belong to another job (never taken, never canceled)."""
        return self.data.setdefault("foreign_batches", [])

    def all_fetched(self) -> bool:
        return all(b["results_fetched"] for b in self.entries)

    def arm(self, entry: Dict[str, Any]) -> None:
        """Give ``entry`` a nonce before its create call (the journal becomes version 3)."""
        if not entry.get("nonce"):
            entry["nonce"] = new_nonce()
        self.data["version"] = max(int(self.data.get("version", _JOURNAL_VERSION)), _NONCE_JOURNAL_VERSION)

    def add_retry(self, chunks: Sequence[Sequence[Request]]) -> List[Dict[str, Any]]:
        """Journal a retry round (one entry per chunk of failed requests) before creating it."""
        round_no = 1 + max((int(e.get("round", 1)) for e in self.retries), default=0)
        added = [_entry(chunk, round=round_no, indexes=[r.index for r in chunk]) for chunk in chunks]
        self.data.setdefault("retries", []).extend(added)
        self.data["version"] = max(int(self.data.get("version", _JOURNAL_VERSION)), _RETRY_JOURNAL_VERSION)
        self.data["state"] = "submitting"
        self.save()
        return added

    @classmethod
    def open(
        cls,
        path: Optional[Path],
        fingerprint: str,
        requests: Sequence[Request],
        ranges: Sequence[tuple],
        model: str,
    ) -> Journal:
        """The journal at ``path`` (None: in memory only), locked for this process until
        :meth:`close`. A file that is not a batch journal of this job is refused (``ValueError``)
        and left unchanged; nothing is sent before this returns."""
        if path is None:
            return cls(None, cls._new_data(fingerprint, requests, ranges, model))
        cls._check(path, cls._read(path), fingerprint, len(requests))  # before a lock file is made
        lock = JournalLock.acquire(path)
        try:
            data = cls._read(path)  # again, under the lock: the one that counts
            if data is not None:
                cls._check(path, data, fingerprint, len(requests))
                logger.info("invoke_batch: resuming from journal %s (%d batches)", path, len(data["batches"]))
                return cls(path, data, lock)
            journal = cls(path, cls._new_data(fingerprint, requests, ranges, model), lock)
            try:
                journal.save()  # fails here, before any request, when the path is not writable
            except OSError as exc:
                raise unreadable(path, exc, "write") from None
            return journal
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        """Release the journal's lock (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @staticmethod
    def _new_data(fingerprint: str, requests: Sequence[Request], ranges: Sequence[tuple], model: str) -> Dict[str, Any]:
        return {
            "format": _JOURNAL_FORMAT,
            "version": _NONCE_JOURNAL_VERSION,
            "fingerprint": fingerprint,
            "requests": len(requests),
            "model": model,
            "state": "submitting",
            "created_at": _now_iso(),
            "updated_at": _now_iso(),
            "batches": [_entry(requests[start:end], start=start, end=end) for start, end in ranges],
            "results": {},
        }

    @classmethod
    def _check(cls, path: Path, data: Optional[Dict[str, Any]], fingerprint: str, n: int) -> None:
        if data is None:
            return
        if data.get("fingerprint") != fingerprint:
            raise ValueError(
                f"journal: {str(path)!r} belongs to a different job (its prompts or parameters "
                f"differ from this call's: {data.get('requests')} requests, fingerprint "
                f"{str(data.get('fingerprint'))[:12]}; this call: {n} requests, "
                f"fingerprint {fingerprint[:12]}). Pass another journal path, or delete the file "
                f"if that job's batches are no longer needed."
            )
        cls._check_plan(path, data, n)

    @staticmethod
    def _read(path: Path) -> Optional[Dict[str, Any]]:
        """The journal's data; None for a new journal (no file, or a 0-byte one such as
        ``tempfile.mkstemp`` makes). Anything else that is not a batch journal is refused."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unreadable(path, exc) from None
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            first = raw.split(b"\n", 1)[0]
            try:
                head = json.loads(first)
            except ValueError:
                head = None
            if isinstance(head, dict) and head.get("format") == RUN_FORMAT:
                raise _run_journal(path) from None
            raise ValueError(
                f"journal: {str(path)!r} exists but is not a readable batch journal ({exc}); it was left unchanged"
            ) from None
        if isinstance(data, dict) and data.get("format") == RUN_FORMAT:
            raise _run_journal(path)
        if not isinstance(data, dict) or data.get("format") != _JOURNAL_FORMAT:
            raise ValueError(f"journal: {str(path)!r} exists but is not an invoke_batch journal; it was left unchanged")
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"journal: {str(path)!r} has version {data.get('version')!r}; this library reads versions "
                f"{', '.join(map(str, _READABLE_VERSIONS))}"
            )
        return data

    @staticmethod
    def _check_plan(path: Path, data: Dict[str, Any], n: int) -> None:
        batches = data.get("batches")
        ok = isinstance(batches, list) and isinstance(data.get("results"), dict)
        expected = 0
        for b in batches if ok and isinstance(batches, list) else []:
            if not isinstance(b, dict) or b.get("start") != expected or not isinstance(b.get("end"), int):
                ok = False
                break
            expected = b["end"]
        if not ok or expected != n:
            raise ValueError(f"journal: {str(path)!r} is damaged (its batch ranges do not cover the job)")
        retries = data.get("retries", [])
        ok = isinstance(retries, list)
        for e in retries if ok else ():
            indexes = e.get("indexes") if isinstance(e, dict) else None
            if (
                not isinstance(indexes, list)
                or not indexes
                or not all(type(i) is int and 0 <= i < n for i in indexes)
                or sorted(set(indexes)) != indexes
            ):
                ok = False
                break
        if not ok:
            raise ValueError(f"journal: {str(path)!r} is damaged (a retry batch lists invalid request indexes)")

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
        fsync_dir(self.path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable: fsync the directory itself.

    Best effort: some platforms cannot open a directory (Windows) or fsync one (some network
    and FUSE file systems answer EINVAL); the rename has happened either way.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError as exc:
        logger.debug("invoke_batch: cannot open the journal directory %s to fsync it: %s", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("invoke_batch: cannot fsync the journal directory %s: %s", directory, exc)
    finally:
        os.close(fd)
