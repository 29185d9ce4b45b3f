"""The journal of a real-time run: every settled slot appended to a JSONL file as it lands.

A re-run with the same prompts and journal takes the journaled results without sending a
request and runs only the rest, so a run survives a crash, a kill or a Ctrl-C.

File format (one JSON object per line):

* line 1, the header: ``{"format": "orchestrating-agents/run-journal", "version": 1,
  "fingerprint": F, "count": N, "model": M}``; ``F`` hashes every request body in order, so a
  journal made for other prompts, options or model is refused, never silently reused;
* then one line per settled slot: ``{"i": index, "ok": true, "text", "content", "usage",
  "cost_usd", "stop_reason", "model", "id", "request_id"}`` for a reply, or
  ``{"i": index, "ok": false, "kind", "message", "status_code", "transient"}`` for a failure
  (plus ``usage``, ``cost_usd``, ``request_id``, ``stop_details`` when the failure paid for a reply,
  e.g. a refusal).

Each line is written with one ``write`` and flushed, so a killed process leaves at most a torn
last line; it is ignored on reading and cut off before the next append. Later lines for the same
slot replace earlier ones (a retried failure that then succeeds).

A file is taken for a journal only when its first line is the header of a run journal (or the
file is empty, or holds nothing but the start of this run's own header): any other file (a batch
journal, a JSON document, a text file) is refused with a ``ValueError`` and left as it is.

One process at a time: :class:`JournalLock` (``fcntl.flock`` on a ``<journal>.lock`` file next to
the journal; ``msvcrt`` on Windows) is taken before anything is read or sent and released when
the run ends, or by the OS when the process dies. The batch journal (``_batch_journal``) uses
the same lock.
"""

from __future__ import annotations

import errno
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

try:  # POSIX
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt as _msvcrt
except ImportError:
    _msvcrt = None  # type: ignore[assignment]

logger = logging.getLogger("claude_client._journal")

FORMAT = "orchestrating-agents/run-journal"
VERSION = 1
#: The ``format`` of a batch journal (``_batch_journal``), named here to tell the two apart.
BATCH_FORMAT = "orchestrating-agents/batch-journal"
# The header is one short line: a first line longer than this is not a run journal's header.
_HEAD_LIMIT = 64 * 1024
_LOCK_SUFFIX = ".lock"


def fingerprint(bodies: Sequence[dict]) -> str:
    """A hash of every request body, in order (any change of prompt, option or model changes it)."""
    digest = hashlib.sha256()
    for body in bodies:
        digest.update(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_path(journal: Any) -> Optional[Path]:
    """``journal`` as a Path (None stays None): a file path whose directory exists.

    >>> check_path("/no/such/dir/run.journal")  # ValueError: journal: the directory ... does not exist
    """
    if journal is None:
        return None
    if not isinstance(journal, (str, os.PathLike)) or not str(journal):
        raise TypeError(f"journal must be a path (str or os.PathLike) or None, got {type(journal).__name__}")
    path = Path(journal).expanduser()
    if path.is_dir():
        raise ValueError(f"journal must be a file path, got the directory {path}")
    if not path.parent.is_dir():
        raise ValueError(f"journal: the directory {str(path.parent)!r} of {str(path)!r} does not exist")
    return path


def unreadable(path: Path, exc: OSError, doing: str = "read") -> ValueError:
    """The error for a journal the OS will not let us ``doing`` (read, create, lock ...)."""
    reason = exc.strerror or type(exc).__name__
    return ValueError(f"journal: cannot {doing} {str(path)!r} ({reason}); pass a journal path this process can write")


# --------------------------------------------------------------------------- the lock


class JournalLock:
    """An OS-level lock that makes one process at a time the holder of a journal.

    The lock is ``fcntl.flock`` (``msvcrt.locking`` on Windows) on ``<journal>.lock`` next to the
    journal (its real path: symlinks resolved), which holds the holder's pid. It is released by
    :meth:`release` and by the OS when the holder dies; the lock file is removed on release. Where
    neither locking call exists the journal is used unlocked, with a warning.

    >>> lock = JournalLock.acquire(Path("run.journal"))  # ValueError if another process holds it
    >>> lock.release()
    """

    def __init__(self, path: Path, lock_path: Path, fd: Optional[int]) -> None:
        self.path = path
        self.lock_path = lock_path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> JournalLock:
        lock_path = Path(os.path.realpath(path))
        lock_path = lock_path.with_name(lock_path.name + _LOCK_SUFFIX)
        if _fcntl is None and _msvcrt is None:  # pragma: no cover - platforms without file locks
            logger.warning("journal %s: this platform has no file locks; do not use it from two processes", path)
            return cls(path, lock_path, None)
        for _ in range(20):  # a holder may remove the lock file between our open and our lock
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise unreadable(path, exc, f"create the lock file {str(lock_path)!r} of") from None
            try:
                _lock(fd)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                    raise unreadable(path, exc, "lock") from None
                raise ValueError(_busy_message(path, holder)) from None
            if _same_file(fd, lock_path):
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass  # the pid is only for the message a second process shows
                return cls(path, lock_path, fd)
            os.close(fd)  # the holder removed that file as we opened it: take the new one
        raise ValueError(f"journal: could not lock {str(path)!r}: its lock file keeps changing")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _fcntl is not None:  # on Windows an open file cannot be removed: it stays
                os.unlink(self.lock_path)
        except OSError:
            pass
        try:
            if _fcntl is None and _msvcrt is not None:  # pragma: no cover - Windows
                os.lseek(fd, 0, os.SEEK_SET)
                _msvcrt.locking(fd, _msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        os.close(fd)  # releases the flock

    def __enter__(self) -> JournalLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(fd: int) -> None:
    if _fcntl is not None:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _busy_message(path: Path, holder: Optional[int]) -> str:
    if holder == os.getpid():
        who = "another run in this process"
    elif holder is not None:
        who = f"another process (pid {holder})"
    else:
        who = "another process"
    return (
        f"journal: {str(path)!r} is in use by {who}; a journal is used by one run at a time. Wait for "
        "that run to end (or stop it), or pass another journal path"
    )


# --------------------------------------------------------------------------- records


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
    record = {
        "i": index,
        "ok": False,
        "kind": getattr(outcome, "kind", None),
        "message": str(outcome),
        "status_code": getattr(outcome, "status_code", None),
        "transient": bool(getattr(outcome, "transient", False)),
    }
    usage = getattr(outcome, "usage", None)
    if isinstance(usage, Usage):  # a failure that paid for a reply (a refusal, an invalid output ...)
        record["usage"] = asdict(usage)
        record["cost_usd"] = getattr(outcome, "cost_usd", None)
    for key in ("request_id", "stop_details"):
        if getattr(outcome, key, None) is not None:
            record[key] = getattr(outcome, key)
    return record


def _outcome_of(record: dict) -> Any:
    if record.get("ok"):
        return ClaudeResponse(
            record.get("text", ""),
            usage=Usage.from_sdk(record.get("usage")),
            stop_reason=record.get("stop_reason"),
            model=record.get("model"),
            id=record.get("id"),
            request_id=record.get("request_id"),
            cost_usd=record.get("cost_usd"),
            content=record.get("content") or [],
        )
    paid = record.get("usage")
    return ClaudeInvocationError(
        f"(from the journal) {record.get('message', 'failed')}",
        status_code=record.get("status_code"),
        kind=record.get("kind"),
        should_retry=bool(record.get("transient")),
        request_id=record.get("request_id"),
        usage=None if paid is None else Usage.from_sdk(paid),
        cost_usd=record.get("cost_usd"),
        stop_details=record.get("stop_details"),
    )


# --------------------------------------------------------------------------- reading


def _kind_of(item: Any) -> str:
    """What a first line that is not this run's header is, for the refusal message."""
    if isinstance(item, dict) and item.get("format") == BATCH_FORMAT:
        return "an invoke_batch journal (message batches), not a run journal of invoke_parallel"
    if isinstance(item, dict) and item.get("format") == FORMAT:
        return "a run journal"
    return "not a run journal of this library"


def _not_a_journal(path: Path, item: Any) -> ValueError:
    return ValueError(
        f"journal: {str(path)!r} is {_kind_of(item)}; it was left unchanged. Pass the path of a run "
        "journal, a new path, or an empty file"
    )


def _check_header(path: Path, head: Any, header: dict) -> None:
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise _not_a_journal(path, head)
    if head.get("version") != VERSION:
        raise ValueError(
            f"journal: {str(path)!r} is a run journal of version {head.get('version')!r}; this library reads "
            f"version {VERSION}. Pass a new journal path"
        )
    if head.get("fingerprint") != header["fingerprint"] or head.get("count") != header["count"]:
        raise ValueError(
            f"journal: {str(path)!r} was written for different prompts, options or model "
            f"({head.get('count')} prompts, model {head.get('model')!r}); use a new journal path "
            "or delete the file to start over"
        )


def _first_line(path: Path, data: bytes, header: dict, header_line: bytes) -> Optional[int]:
    """Check the start of ``data``: the end offset of a valid header line, or None when the file
    is empty or holds only the torn start of this run's own header (rewritten). Refuses the rest."""
    if not data:
        return None
    cut = data.find(b"\n")
    if cut < 0:
        if header_line.startswith(data):
            logger.warning("journal %s: only the start of its header was written; starting it again", path)
            return None
        try:
            item = json.loads(data)
        except ValueError:
            item = None
        if not isinstance(item, dict) or item.get("format") != FORMAT:
            raise _not_a_journal(path, item)
        _check_header(path, item, header)  # another run's header is refused as such
        return None  # this run's header without its newline, and no record: written again
    try:
        head = json.loads(data[:cut])
    except ValueError:
        head = None
    _check_header(path, head, header)
    return cut + 1


def _parse(path: Path, data: bytes, header: dict, header_line: bytes, n: int, retry_failed: bool) -> tuple:
    """``(restored, good_end)`` for a journal's bytes: the slots to take, and where the valid
    lines end (a torn last line after it is cut off)."""
    start = _first_line(path, data, header, header_line)
    if start is None:
        return {}, 0
    restored: dict[int, Any] = {}
    good_end = start
    offset = start
    number = 1
    while offset < len(data):
        number += 1
        cut = data.find(b"\n", offset)
        if cut < 0:  # the last piece has no newline: a torn write
            logger.warning("journal %s: ignoring a torn last line (%d bytes)", path, len(data) - offset)
            break
        raw = data[offset:cut]
        offset = good_end = cut + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        index = record.get("i") if isinstance(record, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(
                f"journal: {str(path)!r}: line {number} is not a record of a run journal; the file was "
                "edited or damaged (it was left unchanged)"
            )
        if not 0 <= index < n:
            raise ValueError(f"journal: {str(path)!r}: a record names slot {index!r}, out of range")
        if record.get("ok") or (not record.get("transient") and not retry_failed):
            restored[index] = _outcome_of(record)
        else:
            restored.pop(index, None)
    return restored, good_end


def _read_head(path: Path) -> bytes:
    """The first line (at most ``_HEAD_LIMIT`` bytes) of ``path``; empty when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(_HEAD_LIMIT)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise unreadable(path, exc) from None


class RunJournal:
    """An open journal: :attr:`restored` holds the slots to take as they are; :meth:`append`
    records a settled slot (thread-safe: one lock, one ``write`` per line)."""

    def __init__(self, path: Path, handle: Any, restored: dict[int, Any], lock: Optional[JournalLock] = None) -> None:
        self.path = path
        self._handle = handle
        self._lock = threading.Lock()
        self._file_lock = lock
        self.restored = restored

    @classmethod
    def open(cls, path: Path, bodies: Sequence[dict], *, retry_failed: bool = False) -> RunJournal:
        """Open (or start) the journal at ``path`` for these request bodies, holding its lock.

        Restored: every journaled reply, and every failure that was not transient (unless
        ``retry_failed``). Transient failures and slots never settled run again. A file that is
        not a run journal of these prompts is refused (``ValueError``) and left unchanged.
        """
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": fingerprint(bodies),
            "count": len(bodies),
            "model": bodies[0].get("model") if bodies else None,
        }
        header_line = json.dumps(header).encode("utf-8") + b"\n"
        # Refuse a file that is not a journal before making a lock file beside it.
        _first_line(path, _read_head(path), header, header_line)
        lock = JournalLock.acquire(path)
        handle = None
        try:
            try:
                handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
                data = handle.read()
            except OSError as exc:
                raise unreadable(path, exc) from None
            restored, good_end = _parse(path, data, header, header_line, len(bodies), retry_failed)
            if good_end < len(data):
                handle.seek(good_end)
                handle.truncate()
            handle.seek(good_end)
            if good_end == 0:
                handle.write(header_line)
                handle.flush()
        except BaseException:
            if handle is not None:
                handle.close()
            lock.release()
            raise
        journal = cls(path, handle, restored, lock)
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
            if self._file_lock is not None:
                self._file_lock.release()
                self._file_lock = None
