"""The plan and the journal of a batch job (for ``message_batches``): the requests with their
custom_ids, how they are split into batches, and the durable JSON journal that lets a crashed or
interrupted job resume without paying twice."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger("message_batches._batch_journal")

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_JOURNAL_FORMAT = "orchestrating-agents/batch-journal"
_JOURNAL_VERSION = 1
# A journal that records a retry batch is written as version 2, so that a library which does not
# know about retry batches refuses it instead of returning the stale failures they replace.
_RETRY_JOURNAL_VERSION = 2
_READABLE_VERSIONS = (_JOURNAL_VERSION, _RETRY_JOURNAL_VERSION)
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


# --------------------------------------------------------------------------- journal


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Journal:
    """The job's durable state. Saved atomically when ``path`` is set: written to a temp file
    which is fsynced, renamed over the journal with ``os.replace``, then the directory is fsynced
    so the rename itself survives a power loss.

    Layout (JSON)::

        {"format": ..., "version": 1 (2 once "retries" is not empty),
         "fingerprint": sha256 of every request, "requests": N,
         "state": "submitting" | "running" | "ended", "created_at", "updated_at",
         "batches": [{"id", "start", "end", "first_custom_id", "last_custom_id", "status",
                      "request_counts", "seen", "cancel_requested", "results_fetched",
                      "create_started_at", "adopted", "result_counts"}],
         "retries": [{"id", "round", "indexes": [request indexes re-sent], "first_custom_id",
                      "last_custom_id", "status", ... the same fields as a planned batch}],
         "foreign_batches": [ids of adopted batches that turned out to hold none of this job's requests],
         "results": {custom_id: <the API's result object: succeeded / errored / canceled / expired>}}

    ``batches`` is the job's plan: its ranges cover every request once. ``retries`` are the
    batches ``retry_failed`` made (optional: absent in journals that never retried); each holds
    the failed requests of one round, with the same custom_ids, and its results replace theirs
    in ``results`` when fetched. ``result_counts`` is what an ended batch itself returned, by
    type (recorded when its results are fetched).
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

    @property
    def retries(self) -> List[Dict[str, Any]]:
        """The batches ``retry_failed`` made, oldest first (absent until the first retry)."""
        return self.data.get("retries") or []

    @property
    def entries(self) -> List[Dict[str, Any]]:
        """Every batch of the job: the planned ones, then the retries (oldest first)."""
        return self.batches + self.retries

    def all_fetched(self) -> bool:
        return all(b["results_fetched"] for b in self.entries)

    def add_retry(self, chunks: Sequence[Sequence[Request]]) -> List[Dict[str, Any]]:
        """Journal a retry round (one entry per chunk of failed requests) before creating it."""
        round_no = 1 + max((int(e.get("round", 1)) for e in self.retries), default=0)
        added = [
            {
                "id": None,
                "round": round_no,
                "indexes": [r.index for r in chunk],
                "first_custom_id": chunk[0].custom_id,
                "last_custom_id": chunk[-1].custom_id,
                "status": "pending",
                "request_counts": None,
                "seen": False,
                "cancel_requested": False,
                "results_fetched": False,
                "create_started_at": None,
            }
            for chunk in chunks
        ]
        self.data.setdefault("retries", []).extend(added)
        self.data["version"] = _RETRY_JOURNAL_VERSION
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


# --------------------------------------------------------------------------- the run
