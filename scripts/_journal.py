"""The journal of a real-time run: every settled slot appended to a JSONL file as it lands.

A re-run with the same prompts and journal takes the journaled results without sending a
request and runs only the rest, so a run survives a crash, a kill or a Ctrl-C.

File format (one JSON object per line):

* line 1, the header: ``{"format": "orchestrating-agents/run-journal", "version": 1,
  "fingerprint": F, "count": N, "model": M}``; ``F`` hashes every request body in order, so a
  journal made for other prompts, options or model is refused, never silently reused;
* then one line per settled slot: ``{"i": index, "ok": true, "text", "content", "usage",
  "cost_usd", "stop_reason", "model", "id", "request_id"}`` for a reply, or
  ``{"i": index, "ok": false, "kind", "message", "status_code", "transient"}`` for a failure.

Each line is written with one ``write`` and flushed, so a killed process leaves at most a torn
last line; it is ignored on reading and cut off before the next append. Later lines for the same
slot replace earlier ones (a retried failure that then succeeds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

from _errors import ClaudeInvocationError
from _results import ClaudeResponse, Usage

logger = logging.getLogger("claude_client._journal")

FORMAT = "orchestrating-agents/run-journal"
VERSION = 1


def fingerprint(bodies: Sequence[dict]) -> str:
    """A hash of every request body, in order (any change of prompt, option or model changes it)."""
    digest = hashlib.sha256()
    for body in bodies:
        digest.update(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_path(journal: Any) -> Optional[Path]:
    if journal is None:
        return None
    if not isinstance(journal, (str, os.PathLike)):
        raise TypeError(f"journal must be a path (str or os.PathLike) or None, got {type(journal).__name__}")
    path = Path(journal)
    if path.is_dir():
        raise ValueError(f"journal must be a file path, got the directory {path}")
    return path


def _record_of(index: int, outcome: Any) -> dict:
    if isinstance(outcome, ClaudeResponse):
        return {
            "i": index,
            "ok": True,
            "text": str(outcome),
            "content": outcome.content,
            "usage": asdict(outcome.usage),
            "cost_usd": outcome.cost_usd,
            "stop_reason": outcome.stop_reason,
            "model": outcome.model,
            "id": outcome.id,
            "request_id": outcome.request_id,
        }
    return {
        "i": index,
        "ok": False,
        "kind": getattr(outcome, "kind", None),
        "message": str(outcome),
        "status_code": getattr(outcome, "status_code", None),
        "transient": bool(getattr(outcome, "transient", False)),
    }


def _outcome_of(record: dict) -> Any:
    if record.get("ok"):
        return ClaudeResponse(
            record.get("text", ""),
            usage=Usage(**record.get("usage") or {}),
            stop_reason=record.get("stop_reason"),
            model=record.get("model"),
            id=record.get("id"),
            request_id=record.get("request_id"),
            cost_usd=record.get("cost_usd"),
            content=record.get("content") or [],
        )
    error = ClaudeInvocationError(
        f"(from the journal) {record.get('message', 'failed')}",
        status_code=record.get("status_code"),
        kind=record.get("kind"),
        should_retry=bool(record.get("transient")),
    )
    return error


class RunJournal:
    """An open journal: :attr:`restored` holds the slots to take as they are; :meth:`append`
    records a settled slot (thread-safe: one lock, one ``write`` per line)."""

    def __init__(self, path: Path, handle: Any, restored: dict[int, Any]) -> None:
        self.path = path
        self._handle = handle
        self._lock = threading.Lock()
        self.restored = restored

    @classmethod
    def open(cls, path: Path, bodies: Sequence[dict], *, retry_failed: bool = False) -> RunJournal:
        """Open (or start) the journal at ``path`` for these request bodies.

        Restored: every journaled reply, and every failure that was not transient (unless
        ``retry_failed``). Transient failures and slots never settled run again.
        """
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": fingerprint(bodies),
            "count": len(bodies),
            "model": bodies[0].get("model") if bodies else None,
        }
        restored: dict[int, Any] = {}
        good_end = 0
        if path.exists() and path.stat().st_size > 0:
            data = path.read_bytes()
            lines = data.split(b"\n")
            records: list[dict] = []
            offset = 0
            for number, raw in enumerate(lines):
                end = offset + len(raw) + 1
                complete = end <= len(data)  # the last piece has no newline: possibly torn
                try:
                    item = json.loads(raw) if raw.strip() else None
                except ValueError:
                    item = None
                    if complete:
                        raise ValueError(
                            f"journal {path}: line {number + 1} is not JSON; it is not a run journal or it was edited"
                        ) from None
                if item is not None and complete:
                    records.append(item)
                    good_end = end
                elif raw.strip():
                    logger.warning("journal %s: ignoring a torn last line (%d bytes)", path, len(raw))
                offset = end
            if not records:
                good_end = 0
            else:
                head = records[0]
                if not isinstance(head, dict) or head.get("format") != FORMAT:
                    raise ValueError(f"journal {path} is not a run journal of this library")
                if head.get("fingerprint") != header["fingerprint"] or head.get("count") != header["count"]:
                    raise ValueError(
                        f"journal {path} was written for different prompts, options or model "
                        f"({head.get('count')} prompts, model {head.get('model')!r}); use a new journal path "
                        "or delete the file to start over"
                    )
                for record in records[1:]:
                    index = record.get("i")
                    if not isinstance(index, int) or not 0 <= index < len(bodies):
                        raise ValueError(f"journal {path}: a record names slot {index!r}, out of range")
                    outcome = _outcome_of(record)
                    if record.get("ok") or (not record.get("transient") and not retry_failed):
                        restored[index] = outcome
                    else:
                        restored.pop(index, None)
        handle = open(path, "r+b" if path.exists() else "w+b")
        handle.seek(good_end)
        handle.truncate()
        if good_end == 0:
            handle.write(json.dumps(header).encode("utf-8") + b"\n")
            handle.flush()
        journal = cls(path, handle, restored)
        if restored:
            logger.info("journal %s: %d of %d results restored; running the rest", path, len(restored), len(bodies))
        return journal

    def append(self, index: int, outcome: Any) -> None:
        if isinstance(outcome, ClaudeInvocationError) and outcome.kind == "interrupted":
            return  # not settled: runs again next time
        line = json.dumps(_record_of(index, outcome), ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        with self._lock:
            if self._handle is None:
                logger.warning("journal %s: slot %d settled after the run ended; not recorded", self.path, index)
                return
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
