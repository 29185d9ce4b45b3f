"""The results of an ``orchestrate`` run: one :class:`Outcome` per prompt, its JSONL record, and
writing the records (or a ``--dry-run`` estimate) as JSONL or text to stdout or ``--output``.

Text the output stream cannot encode is escaped, never lost: a paid-for result is always written.
"""

from __future__ import annotations

import dataclasses
import json
from typing import IO, Any, Optional, Sequence

from _cli_common import UsageError, fmt_cost, one_line

__all__ = [
    "ESTIMATE_FIELDS",
    "Outcome",
    "make_record",
    "open_output",
    "outcome_error",
    "outcome_ok",
    "write_estimate",
    "write_records",
]


def _usage_dict(usage: Any) -> Optional[dict]:
    """A reply's usage as a plain dict (None stays None)."""
    if usage is None:
        return None
    if dataclasses.is_dataclass(usage):
        return {f.name: getattr(usage, f.name) for f in dataclasses.fields(usage)}
    return {
        k: getattr(usage, k, 0)
        for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }


@dataclasses.dataclass
class Outcome:
    """What happened to one prompt (becomes one output record)."""

    status: str  # ok, failed, interrupted
    text: Optional[str] = None
    usage: Optional[dict] = None
    cost_usd: Optional[float] = None
    stop_reason: Optional[str] = None
    error_kind: Optional[str] = None
    error: Optional[str] = None


def outcome_ok(result: Any) -> Outcome:
    """The outcome of a reply (a :class:`claude_client.ClaudeResponse`)."""
    cost = getattr(result, "cost_usd", None)
    return Outcome(
        "ok",
        text=str(result),
        usage=_usage_dict(getattr(result, "usage", None)),
        cost_usd=float(cost) if cost is not None else None,
        stop_reason=getattr(result, "stop_reason", None),
    )


def outcome_error(exc: BaseException) -> Outcome:
    """The outcome of a failure: ``interrupted`` for kind ``interrupted``, else ``failed``."""
    kind = getattr(exc, "kind", None)
    status = "interrupted" if kind == "interrupted" else "failed"
    paid = _paid(exc)  # a failure after paid turns (tool loop, failed repair) still cost money
    cost = getattr(paid, "cost_usd", None)
    return Outcome(
        status,
        usage=_usage_dict(getattr(paid, "usage", None)),
        cost_usd=float(cost) if cost is not None else None,
        error_kind=kind or type(exc).__name__,
        error=one_line(str(exc)),
    )


def _paid(exc: BaseException) -> BaseException:
    """The error that carries what a failed prompt paid (tool turns, a failed repair), if any."""
    for err in (exc, exc.__cause__):
        if err is not None and getattr(err, "usage", None) is not None:
            return err
    return exc


def make_record(index: int, item: dict, outcome: Outcome) -> dict:
    """The JSONL record of one prompt."""
    return {
        "index": index,
        "task_id": item["task_id"],
        "category": item.get("category"),
        "status": outcome.status,
        "text": outcome.text,
        "usage": outcome.usage,
        "cost_usd": outcome.cost_usd,
        "stop_reason": outcome.stop_reason,
        "error_kind": outcome.error_kind,
        "error": outcome.error,
    }


def _encodes_all_text(out: IO[str]) -> bool:
    """True when ``out`` can take any text (a UTF codec, or an in-memory stream)."""
    encoding = getattr(out, "encoding", None)
    if not encoding:
        return True
    try:
        "\u00e9\u4e2d\U0001f600".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class _EscapingWriter:
    """Writes text to ``out``, escaping what its encoding cannot represent (``\\xe9``,
    ``\\u4e2d``) instead of failing: a paid-for result is never lost to an encoding error."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._encoding = getattr(out, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        """Write ``text``, escaping what the stream cannot encode."""
        try:
            self._out.write(text)
        except UnicodeEncodeError:
            # TextIOWrapper encodes the whole string before writing any of it: nothing was written.
            self._out.write(text.encode(self._encoding, "backslashreplace").decode(self._encoding))

    def flush(self) -> None:
        """Flush the stream."""
        self._out.flush()


def write_records(records: Sequence[dict], fmt: str, out: IO[str]) -> None:
    """Write every record in order, as JSONL or as readable text.

    Text the stream cannot encode is escaped: JSONL switches to ``\\uXXXX`` escapes (the same
    JSON values), text gets backslash escapes.
    """
    w = _EscapingWriter(out)
    if fmt == "jsonl":
        ensure_ascii = not _encodes_all_text(out)
        for r in records:
            w.write(json.dumps(r, ensure_ascii=ensure_ascii) + "\n")
        w.flush()
        return
    single = len(records) == 1
    for r in records:
        if not single:
            head = f"=== [{r['index']}] {r['task_id']}: {r['status']}"
            if r["usage"]:
                head += f", {r['usage'].get('output_tokens', 0)} output tokens"
            if r["cost_usd"]:
                head += f", {fmt_cost(r['cost_usd'])}"
            w.write(head + " ===\n")
        if r["status"] == "ok":
            text = r["text"] or ""
            w.write(text + ("" if text.endswith("\n") else "\n"))
        else:
            w.write(
                f"[{r['status']}{': ' + r['error_kind'] if r['error_kind'] else ''}]"
                f"{' ' + r['error'] if r['error'] else ''}\n"
            )
        if not single:
            w.write("\n")
    w.flush()


def open_output(path: Optional[str], stdout: IO[str]) -> IO[str]:
    """The stream for results: ``stdout`` (no path or ``-``), else ``path`` opened for writing."""
    if not path or path == "-":
        return stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output: cannot write {path}: {exc.strerror or exc}") from None


#: The fields of a ``--dry-run`` estimate, in output order (after ``prompts`` and ``model``).
ESTIMATE_FIELDS = ("input_tokens", "output_tokens_max", "low_usd", "high_usd", "method")


def write_estimate(estimate: Any, *, prompts: int, model: str, fmt: str, out: IO[str]) -> None:
    """Write a ``--dry-run`` estimate (a :class:`claude_client.CostEstimate`): one JSON object with
    ``fmt="jsonl"``, else one ``name: value`` line per field (costs also as ``$`` amounts)."""
    record: dict[str, Any] = {"dry_run": True, "prompts": prompts, "model": model}
    record.update((name, getattr(estimate, name)) for name in ESTIMATE_FIELDS)
    w = _EscapingWriter(out)
    if fmt == "jsonl":
        w.write(json.dumps(record, ensure_ascii=not _encodes_all_text(out)) + "\n")
    else:
        for name, value in record.items():
            if name == "dry_run":
                continue
            shown = f"{value:.6f} ({fmt_cost(value)})" if name.endswith("_usd") else str(value)
            w.write(f"{name}: {shown}\n")
    w.flush()
