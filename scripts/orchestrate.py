"""``orchestrate``: fan prompts out to many Claude calls from the command line.

Prompts come from the arguments, from ``--file`` (one per line, or JSONL with per-prompt keys)
or from stdin; ``--perspectives`` turns one document into a multi-perspective review. Results
go to stdout (or ``--output``) in input order, as JSONL records or text; live progress goes to
stderr (a table per agent on a terminal, plain lines otherwise). Without an API key and without
``ANTHROPIC_BASE_URL`` it runs offline against the bundled emulator.

Examples::

    orchestrate "Summarise the CAP theorem" "Explain Raft in two lines"
    orchestrate --file prompts.jsonl --workers 8 --format jsonl --output results.jsonl
    git diff | orchestrate --perspectives security,performance,correctness --input -
    python -m orchestrate --help

Exit status: 0 every prompt succeeded, 1 some failed, 2 bad usage (arguments, unreadable
input), 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (``timeout``, a CI cancel,
``docker stop``): either way requests in flight are aborted and completed results are written.

``--file`` (and prompts on stdin): the input is JSONL when the file name ends in ``.jsonl`` /
``.ndjson`` or its first non-blank line starts with ``{``, and then every non-blank line must be
a JSON object; otherwise every non-blank line is one prompt, and a later line that is a JSON
object is refused (exit 2, naming the line), because a mix of both is ambiguous.

Output that the output stream cannot encode (e.g. ``PYTHONIOENCODING=ascii``) is escaped, never
lost: JSONL uses ``\\uXXXX`` escapes (still valid JSON), text uses ``\\xNN``-style escapes.

Each JSONL record: ``index``, ``task_id``, ``category``, ``status`` (``ok`` / ``failed`` /
``interrupted``), ``text``, ``usage`` (input, output, cache write and cache read tokens),
``cost_usd``, ``stop_reason``, ``error_kind``, ``error``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Sequence

__all__ = ["main"]

_log = logging.getLogger(__name__)

PROG = "orchestrate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT
EXIT_TERMINATED = 143    # 128 + SIGTERM
#: Signals that stop a run like Ctrl-C: in-flight requests aborted, finished results written.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Keys a JSONL prompt line may carry.
PROMPT_KEYS = frozenset(
    {"prompt", "system", "task_id", "category", "model", "max_tokens", "temperature",
     "cache_system", "cache_prompt"}
)
#: Keys the CLI consumes itself; the rest are passed to the library as per-prompt keys.
_CLI_ONLY_KEYS = frozenset({"task_id", "category"})

#: Placeholder key sent to the in-process emulator in offline mode (not a secret).
OFFLINE_KEY = "sk-ant-offline-placeholder"

#: How long after Ctrl-C the CLI waits for the library to hand back its results before it
#: writes what it has and leaves anyway (the whole exit must stay within 2 s).
_INTERRUPT_GRACE_S = 1.2

_PERSPECTIVE_FOCUS = {
    "security": "vulnerabilities, injection, authentication and authorisation, secrets handling, "
                "unsafe input, and data exposure",
    "performance": "algorithmic complexity, needless work, I/O and memory use, contention, "
                   "and scalability limits",
    "correctness": "logic errors, edge cases, error handling, concurrency hazards, and broken "
                   "invariants",
    "readability": "naming, structure, comments, and how easily a newcomer can follow it",
    "maintainability": "coupling, duplication, testability, and how safely it can be changed",
    "testing": "missing tests, weak assertions, untested edge cases, and flaky patterns",
    "architecture": "module boundaries, responsibilities, dependencies, and extension points",
    "reliability": "failure modes, retries, timeouts, resource cleanup, and recovery",
    "accessibility": "barriers for users of assistive technology, contrast, semantics, and "
                     "keyboard use",
    "cost": "spend on compute, tokens, storage and network, and how to reduce it",
    "ux": "clarity, feedback, defaults, error messages, and the user's path to success",
    "documentation": "accuracy, completeness, examples, and what a reader still has to guess",
}


class _UsageError(Exception):
    """Bad command-line input: reported as one line on stderr, exit status 2."""


# ----------------------------------------------------------------------------- arguments


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` the text, then ``accept`` the value, else say what was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_temperature = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation tools)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fan prompts out to parallel Claude calls; results in input order on stdout, "
                    "live progress on stderr. Without an API key it runs offline against the "
                    "bundled emulator.",
        epilog="Exit status: 0 all ok, 1 some failed, 2 usage error, 130 interrupted (Ctrl-C), "
               "143 terminated (SIGTERM); when interrupted or terminated, finished results are "
               "still written.",
    )
    src = p.add_argument_group("input")
    src.add_argument("prompts", nargs="*", metavar="PROMPT",
                     help="prompts to run (else --file, --perspectives, or lines on stdin)")
    src.add_argument("-f", "--file", metavar="FILE",
                     help="prompts, one per line, or JSONL objects with keys prompt, system, "
                          "task_id, category, model, max_tokens, temperature ('-' for stdin). "
                          "The input is JSONL if FILE ends in .jsonl/.ndjson or its first non-blank "
                          "line starts with '{' (then every non-blank line must be a JSON object); "
                          "else each non-blank line is a prompt, and a line that is a JSON object "
                          "is an error (a mix of text and JSON lines is refused). Same rule for stdin.")
    src.add_argument("--perspectives", metavar="LIST",
                     help="comma-separated review perspectives (e.g. security,performance); "
                          "each becomes one prompt over --input")
    src.add_argument("--input", metavar="FILE_OR_TEXT",
                     help="with --perspectives: the file to review, '-' for stdin, or the text itself; "
                          "a single word containing '/' or ending in .ext (e.g. app.py) is taken as a "
                          "path and must exist, a directory is an error")
    run = p.add_argument_group("model and run")
    run.add_argument("-m", "--model", help="model for every prompt (default: the library's default)")
    run.add_argument("-w", "--workers", type=_positive_int, default=5,
                     help="prompts in flight at once (default 5)")
    run.add_argument("--max-tokens", type=_positive_int, default=4096, metavar="N",
                     help="maximum output tokens per prompt (default 4096)")
    run.add_argument("--temperature", type=_temperature, metavar="T",
                     help="sampling temperature for prompts that do not set one")
    sysg = run.add_mutually_exclusive_group()
    sysg.add_argument("--system", metavar="TEXT", help="system prompt shared by every prompt")
    sysg.add_argument("--system-file", metavar="FILE",
                      help="read the shared system prompt from FILE")
    run.add_argument("--cache", action="store_true",
                     help="prompt-cache the shared system prompt (one request warms the cache, "
                          "the rest read it)")
    run.add_argument("--retries", type=_non_negative_int, default=3, metavar="N",
                     help="retries per prompt after a transient failure (default 3)")
    run.add_argument("--stall-timeout", type=_positive_float, metavar="SECONDS",
                     help="abort and retry a stream that sends nothing for this long")
    run.add_argument("--offline", action="store_true",
                     help="run against the bundled emulator even when an API key is configured")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=("text", "jsonl"),
                     help="result format (default: text on a terminal, jsonl otherwise)")
    out.add_argument("-o", "--output", metavar="FILE", help="write results to FILE instead of stdout")
    out.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress and no notices on stderr (errors only)")
    return p


# ----------------------------------------------------------------------------- input


def _read_stdin(stdin: Any) -> str:
    """All of stdin as text: bytes decoded strictly as UTF-8, newlines normalised to ``\\n``.

    A closed stdin (``<&-``: ``sys.stdin`` is None), one that cannot be read (opened write-only)
    or bytes that are not UTF-8 are usage errors, reported like an unreadable ``--file``.
    """
    if stdin is None:
        raise _UsageError("stdin: not available (it is closed)")
    try:
        buffer = getattr(stdin, "buffer", None)
        data = buffer.read() if buffer is not None else stdin.read()
    except UnicodeDecodeError:
        raise _UsageError("stdin: not UTF-8 text") from None
    except ValueError as exc:  # I/O operation on a closed file
        raise _UsageError(f"stdin: cannot read: {exc}") from None
    except OSError as exc:
        raise _UsageError(f"stdin: cannot read: {exc.strerror or exc}") from None
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _UsageError("stdin: not UTF-8 text") from None
    if not isinstance(data, str):
        raise _UsageError("stdin: cannot read: not a text stream")
    return data.replace("\r\n", "\n").replace("\r", "\n")


def _check_text(value: Any, where: str) -> None:
    """Refuse text that cannot be sent as UTF-8 (lone surrogates, e.g. ``"\\ud800"`` in JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _UsageError(
                f"{where}: not valid Unicode text (cannot be encoded as UTF-8: {exc.reason} "
                f"at position {exc.start})"
            ) from None


_PATHLIKE_EXT = re.compile(r"\.[A-Za-z0-9_-]*[A-Za-z][A-Za-z0-9_-]*$")


def _looks_like_path(value: str) -> bool:
    """``--input``: one word with a path separator, or ending in a dotted extension (``x.py``)."""
    if not value or any(ch.isspace() for ch in value):
        return False
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in value for sep in seps) or bool(_PATHLIKE_EXT.search(value))


def _read_path(path: str, what: str, stdin: IO[str]) -> str:
    if path == "-":
        return _read_stdin(stdin)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise _UsageError(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise _UsageError(f"{what}: is a directory: {path}") from None
    except PermissionError:
        raise _UsageError(f"{what}: permission denied: {path}") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{what}: not UTF-8 text: {path}") from None
    except OSError as exc:
        raise _UsageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def _looks_jsonl(text: str, name: str) -> bool:
    """The ``--file`` rule: JSONL if ``name`` ends in .jsonl/.ndjson or the first non-blank line
    starts with ``{``; else plain text (one prompt per non-blank line)."""
    if name.endswith((".jsonl", ".ndjson")):
        return True
    for line in text.splitlines():
        if line.strip():
            return line.strip().startswith("{")
    return False


def _json_object(line: str) -> bool:
    """True when ``line`` is a JSON object (a JSONL prompt line)."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except ValueError:
        return False


def _parse_prompt_text(text: str, name: str = "<stdin>") -> list[dict]:
    """Prompts from file text: JSONL objects (one per line) or plain lines (blank lines skipped).

    JSONL when ``name`` ends in .jsonl/.ndjson or the first non-blank line starts with ``{``;
    then every non-blank line must be a JSON object. Otherwise plain text, and a line that is a
    JSON object is refused (a mix of text and JSONL is ambiguous). Each dict carries ``_where``
    (``name:line``) for error messages.

    >>> _parse_prompt_text('{"prompt": "hi", "task_id": "a"}\\n', "p.jsonl")
    [{'prompt': 'hi', 'task_id': 'a', '_where': 'p.jsonl:1'}]
    >>> [p["prompt"] for p in _parse_prompt_text("one\\n\\ntwo\\n")]
    ['one', 'two']
    """
    items: list[dict] = []
    if not _looks_jsonl(text, name):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if _json_object(line):
                raise _UsageError(
                    f"{name}:{lineno}: a JSON object line in a plain-text prompt file (the first line "
                    f"is text, so every line is a prompt); use JSON objects on every line or on none")
            items.append({"prompt": line.strip(), "_where": f"{name}:{lineno}"})
        return items
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise _UsageError(f"{name}:{lineno}: not valid JSON ({exc.msg}); this input is read as JSONL "
                              f"because its first line starts with '{{'") from None
        if not isinstance(obj, dict):
            raise _UsageError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__} "
                              f"(this input is read as JSONL: every line must be a JSON object)")
        unknown = sorted(set(obj) - PROMPT_KEYS)
        if unknown:
            raise _UsageError(
                f"{name}:{lineno}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(PROMPT_KEYS))})"
            )
        obj["_where"] = f"{name}:{lineno}"
        items.append(obj)
    return items


def _check_item(item: dict, where: str) -> dict:
    """Validate one prompt dict's types (values the library would reject are caught here too)."""
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _UsageError(f"{where}: 'prompt' must be a non-empty string")
    for key in ("system", "category", "model"):
        if key in item and item[key] is not None and not isinstance(item[key], str):
            raise _UsageError(f"{where}: {key!r} must be a string")
    if "task_id" in item:
        tid = item["task_id"]
        if isinstance(tid, bool) or not isinstance(tid, (str, int)) or str(tid) == "":
            raise _UsageError(f"{where}: 'task_id' must be a non-empty string or an integer")
        item["task_id"] = str(tid)
    if "max_tokens" in item:
        mt = item["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise _UsageError(f"{where}: 'max_tokens' must be an integer >= 1")
    if "temperature" in item:
        t = item["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise _UsageError(f"{where}: 'temperature' must be a number in [0, 1]")
    for key in ("cache_system", "cache_prompt"):
        if key in item and not isinstance(item[key], bool):
            raise _UsageError(f"{where}: {key!r} must be true or false")
    for key in ("prompt", "system", "task_id", "category", "model"):
        _check_text(item.get(key), f"{where}: {key!r}")
    return item


def _perspective_prompts(names: str) -> list[dict]:
    """One prompt per perspective; the material itself goes in the shared system prompt.

    Putting the material in the shared system (before each perspective's own system block)
    gives every request the same prefix, so ``--cache`` lets N-1 of them read it from the cache.
    """
    perspectives = [n.strip() for n in names.split(",") if n.strip()]
    if not perspectives:
        raise _UsageError("--perspectives: expected a comma-separated list, e.g. security,performance")
    seen: set[str] = set()
    items = []
    for name in perspectives:
        if name.lower() in seen:
            raise _UsageError(f"--perspectives: {name!r} is listed twice")
        seen.add(name.lower())
        focus = _PERSPECTIVE_FOCUS.get(name.lower(), f"everything that matters from the {name} point of view")
        system = (
            f"For this review you are an expert reviewer focused only on {name}. Look for {focus}. "
            f"Report concrete findings, most important first, each with where it is, why it "
            f"matters and a fix. Say plainly if you find nothing significant."
        )
        prompt = f"Review the material above from the {name} perspective."
        items.append({"prompt": prompt, "system": system, "task_id": name, "category": name})
    return items


def _perspective_system(material: str, source: str, user_system: Optional[str]) -> str:
    head = (user_system.rstrip() + "\n\n") if user_system else ""
    return (f"{head}You review material for one perspective at a time. The material to review "
            f"({source}):\n\n<material>\n{material}\n</material>")


def _collect_prompts(args: argparse.Namespace, stdin: IO[str]) -> list[dict]:
    """Every prompt dict, in input order, validated; each has a unique ``task_id``.

    With ``--perspectives``, ``args.material`` is set to ``(text, source)`` of the material.
    """
    sources = sum(bool(x) for x in (args.prompts, args.file, args.perspectives))
    if sources > 1:
        raise _UsageError("give prompts in one way only: arguments, --file, or --perspectives")
    if args.input is not None and not args.perspectives:
        raise _UsageError("--input is only used with --perspectives")
    if args.perspectives:
        if args.input is None:
            raise _UsageError("--perspectives needs --input FILE_OR_TEXT (the material to review)")
        inp = args.input
        if os.path.isdir(inp):
            raise _UsageError(f"--input: is a directory: {inp} (give a file, '-' for stdin, or the text)")
        if inp == "-" or os.path.exists(inp):
            material = _read_path(inp, "--input", stdin)
            source = "text" if inp == "-" else f"file ({os.path.basename(inp)})"
        elif _looks_like_path(inp):
            raise _UsageError(
                f"--input: no such file: {inp} (a single word with a '/' or a .ext is taken as a "
                f"path; to review such text itself, pipe it in with --input -)"
            )
        else:
            material, source = inp, "text"
            _check_text(material, "--input")
        if not material.strip():
            raise _UsageError("--input: the material to review is empty")
        items = _perspective_prompts(args.perspectives)
        args.material = (material, source)
    elif args.file:
        text = _read_path(args.file, "--file", stdin)
        items = _parse_prompt_text(text, "<stdin>" if args.file == "-" else args.file)
    elif args.prompts:
        items = [{"prompt": p, "_where": f"argument {i + 1}"} for i, p in enumerate(args.prompts)]
    elif not _isatty(stdin):
        items = _parse_prompt_text(_read_stdin(stdin), "<stdin>")
    else:
        raise _UsageError("no prompts: give them as arguments, with --file, or on stdin")
    if not items:
        raise _UsageError("no prompts found in the input")
    wheres = [item.pop("_where", f"prompt {index}") for index, item in enumerate(items)]
    seen: dict[str, str] = {}  # explicit task_id -> where it is given
    for item, where in zip(items, wheres):
        _check_item(item, where)
        if "task_id" in item:
            if item["task_id"] in seen:
                raise _UsageError(f"{where}: task_id {item['task_id']!r} is already used by {seen[item['task_id']]}")
            seen[item["task_id"]] = where
    _assign_default_task_ids(items, wheres, seen)
    for item in items:
        if args.temperature is not None and "temperature" not in item:
            item["temperature"] = args.temperature
    return items


def _assign_default_task_ids(items: list[dict], wheres: list[str], taken: dict[str, str]) -> None:
    """Give every prompt without a ``task_id`` its index as text, skipping ids already taken.

    Ids given explicitly win: when ``str(index)`` is one of them, the prompt gets the first free
    ``"<index>-<k>"`` (k = 1, 2, ...), so the result depends only on the input.

    >>> items = [{"task_id": "1"}, {}, {}]
    >>> _assign_default_task_ids(items, ["l1", "l2", "l3"], {"1": "l1"})
    >>> [it["task_id"] for it in items]
    ['1', '1-1', '2']
    """
    for index, (item, where) in enumerate(zip(items, wheres)):
        if "task_id" in item:
            continue
        candidate, k = str(index), 0
        while candidate in taken:
            k += 1
            candidate = f"{index}-{k}"
        item["task_id"] = candidate
        taken[candidate] = f"{where} (default task_id)"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ----------------------------------------------------------------------------- per-agent board


@dataclasses.dataclass
class _Agent:
    index: int
    task_id: str
    category: Optional[str]
    label: str = ""                  # the start of the prompt, for the live table
    state: str = "queued"            # queued, running, streaming, retrying, ok, failed, interrupted
    chars: int = 0                   # characters received in the current attempt
    output_tokens: Optional[int] = None
    attempts: int = 0
    started: Optional[float] = None
    ended: Optional[float] = None
    cost_usd: Optional[float] = 0.0   # None: the price of the model is unknown
    usage: Optional[dict] = None
    error: str = ""

    @property
    def tokens(self) -> int:
        """Output tokens: exact once finished, else estimated from the text so far."""
        if self.output_tokens is not None:
            return self.output_tokens
        return math.ceil(self.chars / 4)

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else now) - self.started


class _Board:
    """Per-agent progress, updated from worker threads and read by the display (one lock)."""

    TERMINAL = ("ok", "failed", "interrupted")

    def __init__(self, items: Sequence[dict], on_event: Optional[Callable[[str, _Agent], None]] = None):
        self._lock = threading.Lock()
        self.agents = [_Agent(i, it["task_id"], it.get("category"), " ".join(it["prompt"].split())[:60])
                       for i, it in enumerate(items)]
        self._on_event = on_event
        self.started = time.monotonic()
        self.interrupted = False
        self._ended = 0

    def _emit(self, kind: str, agent: _Agent) -> None:
        if self._on_event is not None:
            snap = dataclasses.replace(agent)
            try:
                self._on_event(kind, snap)
            except Exception:  # the display must never break a run
                _log.debug("progress display failed", exc_info=True)

    def running(self, index: int, attempt: Optional[int] = None) -> None:
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            new_attempt = attempt if attempt is not None else a.attempts + 1
            if a.state in ("running", "streaming") and new_attempt == a.attempts:
                return
            first = a.started is None
            if first:
                a.started = time.monotonic()
            a.state = "running"
            a.chars = 0
            a.attempts = new_attempt
            snap = a
        if first:
            self._emit("start", snap)

    def text(self, index: int, chunk: str) -> None:
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            first = a.started is None
            if first:
                a.started = time.monotonic()
                a.attempts = max(a.attempts, 1)
            a.state = "streaming"
            a.chars += len(chunk)
            snap = a
        if first:
            self._emit("start", snap)

    def retrying(self, index: int, error: str = "") -> None:
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL or a.state == "retrying":
                return
            a.state = "retrying"
            a.error = error
            snap = a
        self._emit("retry", snap)

    def finish(self, index: int, status: str, *, output_tokens: Optional[int] = None,
               cost_usd: Optional[float] = 0.0, usage: Optional[dict] = None, error: str = "") -> None:
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            a.state = status
            self._ended += 1
            a.ended = time.monotonic()
            if a.started is None:
                a.started = a.ended
            if output_tokens is not None:
                a.output_tokens = output_tokens
            a.cost_usd = cost_usd
            a.usage = usage
            a.error = error
            snap = a
        self._emit(status, snap)

    def ended_count(self) -> int:
        """How many agents have finished (ok, failed or interrupted)."""
        with self._lock:
            return self._ended

    def snapshot(self) -> list[_Agent]:
        with self._lock:
            return [dataclasses.replace(a) for a in self.agents]

    def is_finished(self, index: int) -> bool:
        with self._lock:
            return self.agents[index].state in self.TERMINAL


# ----------------------------------------------------------------------------- progress display


@dataclasses.dataclass(frozen=True)
class _Settled:
    """What :meth:`_progress.Progress.settled` reads from a successful prompt."""

    usage: Optional[dict]
    cost_usd: Optional[float]


_STATE_STYLE = {"queued": "dim", "running": "cyan", "streaming": "bold cyan", "retrying": "yellow",
                "ok": "green", "failed": "bold red", "interrupted": "magenta"}
_STATE_ORDER = {"streaming": 0, "running": 0, "retrying": 0, "failed": 1, "interrupted": 1, "ok": 2,
                "queued": 3}


class _Display:
    """The CLI's progress on stderr, drawn by :class:`_progress.Progress`.

    On a terminal (or in a notebook) a live bar with a line per agent; otherwise plain lines:
    one per finished (or retried) agent, plus the periodic totals of ``_progress``. Nothing
    with ``--quiet`` / ``--no-progress``.
    """

    def __init__(self, args: argparse.Namespace, stream: IO[str]):
        self.enabled = not (args.quiet or args.no_progress)
        self._stream = stream
        self._board: Optional[_Board] = None
        self.progress: Any = None  # a _progress.Progress between start() and stop()

    def start(self, board: _Board) -> None:
        from _progress import Progress

        self._board = board
        self.progress = Progress(len(board.agents), progress=self.enabled, label=PROG, stream=self._stream,
                                 detail=self._detail, summary=False)

    def stop(self) -> None:
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.close()

    def notice(self, text: str) -> None:
        """A line on stderr that leaves a live display intact."""
        line = f"{PROG}: {text}"
        progress = self.progress
        if progress is not None:
            progress.write(line)
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def event(self, kind: str, agent: _Agent) -> None:
        """Called by the board (from any thread) when an agent starts, retries or finishes."""
        progress = self.progress
        if progress is None:
            return
        if kind == "start":
            progress.started()
            return
        if kind in _Board.TERMINAL:
            progress.settled(_Settled(agent.usage, agent.cost_usd) if kind == "ok"
                             else KeyboardInterrupt() if kind == "interrupted" else None)
        if not self.enabled or progress.live:
            return
        board = self._board
        done = f"[{board.ended_count()}/{len(board.agents)}] " if board is not None else ""
        if kind == "retry":
            progress.write(f"{PROG}: {done}{agent.task_id} retrying after: {agent.error}")
            return
        detail = f"{agent.tokens} tokens, {agent.elapsed(time.monotonic()):.1f}s"
        if agent.cost_usd:
            detail += f", {_fmt_cost(agent.cost_usd)}"
        if kind == "failed" and agent.error:
            detail += f": {agent.error}"
        progress.write(f"{PROG}: {done}{agent.task_id} {kind} ({detail})")

    def _detail(self, room: int) -> Any:
        """The per-agent table of the live display (called by the render thread)."""
        from _progress import ProgressTable

        board = self._board
        if board is None:
            return None
        agents = board.snapshot()
        now = time.monotonic()
        shown = agents
        if len(agents) > room:
            ended = sorted((a for a in agents if a.state in _Board.TERMINAL), key=lambda a: -(a.ended or 0))
            active = [a for a in agents if a.state in ("running", "streaming", "retrying")]
            queued = [a for a in agents if a.state == "queued"]
            shown = sorted((active + ended + queued)[:room], key=lambda a: (_STATE_ORDER.get(a.state, 3), a.index))
        rows = [(str(a.index), a.task_id[:30], a.label, (a.state, _STATE_STYLE.get(a.state, "")), str(a.tokens),
                 f"{a.elapsed(now):.1f}s" if a.started is not None else "") for a in shown]
        return ProgressTable(columns=("#", "task", "prompt", "state", "tokens", "elapsed"), rows=rows,
                             right=frozenset({"#", "tokens", "elapsed"}), hidden=len(agents) - len(shown))


class _NoticeHandler(logging.Handler):
    """Routes the library's warnings through the progress display (so a live display stays intact)."""

    def __init__(self, display: _Display):
        super().__init__(logging.WARNING)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._display.notice(f"{record.levelname.lower()}: {_one_line(record.getMessage())}")
        except Exception:
            self.handleError(record)


# ----------------------------------------------------------------------------- output


def _usage_dict(usage: Any) -> Optional[dict]:
    if usage is None:
        return None
    if dataclasses.is_dataclass(usage):
        return {f.name: getattr(usage, f.name) for f in dataclasses.fields(usage)}
    return {k: getattr(usage, k, 0) for k in (
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}


@dataclasses.dataclass
class _Outcome:
    """What happened to one prompt (becomes one output record)."""

    status: str                      # ok, failed, interrupted
    text: Optional[str] = None
    usage: Optional[dict] = None
    cost_usd: Optional[float] = None
    stop_reason: Optional[str] = None
    error_kind: Optional[str] = None
    error: Optional[str] = None


def _outcome_ok(result: Any) -> _Outcome:
    cost = getattr(result, "cost_usd", None)
    return _Outcome("ok", text=str(result), usage=_usage_dict(getattr(result, "usage", None)),
                   cost_usd=float(cost) if cost is not None else None,
                   stop_reason=getattr(result, "stop_reason", None))


def _outcome_error(exc: BaseException) -> _Outcome:
    kind = getattr(exc, "kind", None)
    status = "interrupted" if kind == "interrupted" else "failed"
    return _Outcome(status, error_kind=kind or type(exc).__name__, error=_one_line(str(exc)))


def _fmt_cost(usd: float) -> str:
    """``$0.0123`` for cents and more, ``$0.000021`` below a cent (small runs stay visible)."""
    return f"${usd:.4f}" if usd >= 0.01 or usd == 0 else f"${usd:.6f}"


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_record(index: int, item: dict, outcome: _Outcome) -> dict:
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

    def __init__(self, out: IO[str]):
        self._out = out
        self._encoding = getattr(out, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        try:
            self._out.write(text)
        except UnicodeEncodeError:
            # TextIOWrapper encodes the whole string before writing any of it: nothing was written.
            self._out.write(text.encode(self._encoding, "backslashreplace").decode(self._encoding))

    def flush(self) -> None:
        self._out.flush()


def _write_records(records: Sequence[dict], fmt: str, out: IO[str]) -> None:
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
                head += f", {_fmt_cost(r['cost_usd'])}"
            w.write(head + " ===\n")
        if r["status"] == "ok":
            text = r["text"] or ""
            w.write(text + ("" if text.endswith("\n") else "\n"))
        else:
            w.write(f"[{r['status']}{': ' + r['error_kind'] if r['error_kind'] else ''}]"
                    f"{' ' + r['error'] if r['error'] else ''}\n")
        if not single:
            w.write("\n")
    w.flush()


# ----------------------------------------------------------------------------- credentials / offline


def _has_credentials() -> bool:
    """True when the library finds an API key (argument, environment or project folder).

    A key file that exists but cannot be used (empty, malformed) is an error, not "no key":
    the CLI must not silently run offline when the user meant to configure a key.
    """
    if os.environ.get("ANTHROPIC_API_KEY", "").strip():
        return True
    import claude_client

    try:
        claude_client.get_client()
    except claude_client.ClaudeInvocationError as exc:
        if getattr(exc, "kind", None) != "auth":
            raise
        if str(exc).startswith("No Anthropic API key found"):
            return False
        raise _UsageError(_one_line(str(exc))) from None
    return True


def _start_offline() -> Any:
    """Start the bundled emulator in-process (the run passes its URL to the library explicitly).

    ``os.environ`` and the library's shared client are left alone, so ``main()`` called inside a
    program does not redirect that program's later calls to a server that is gone.
    """
    try:
        from anthropic_emulator import Emulator
    except ImportError as exc:
        raise _UsageError(
            f"no API key found and the offline emulator cannot start ({exc}); set ANTHROPIC_API_KEY, "
            f"or install the emulator's server library: pip install aiohttp"
        ) from None
    # A little latency so the offline demo streams visibly; replies are the emulator's echo rule.
    emu = Emulator(ttft_ms=150, chunk_delay_ms=40)
    emu.start()
    return emu


# ----------------------------------------------------------------------------- execution


class _Execution:
    """Runs the prompts through the library on a worker thread; the main thread waits and draws.

    The run is :func:`orchestration.invoke_parallel_managed` with a :class:`task_state.TaskTracker`
    that the main thread polls (:meth:`sync`) for per-agent states, retries and completed results
    while the run is going.
    """

    def __init__(self, items: list[dict], args: argparse.Namespace, shared_system: Optional[str],
                 board: _Board, token: Any, connection: Optional[dict] = None):
        self.items = items
        self.connection = dict(connection or {})
        self.args = args
        self.shared_system = shared_system
        self.board = board
        self.token = token
        self.outcomes: Optional[list[_Outcome]] = None
        self.crash: Optional[BaseException] = None
        self.done = threading.Event()
        from task_state import TaskTracker

        self.tracker = TaskTracker(max_retries=args.retries)
        self._seen: dict[str, float] = {}
        self._index = {it["task_id"]: i for i, it in enumerate(items)}
        self._thread = threading.Thread(target=self._main, name="orchestrate-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            self.outcomes = self._run_managed()
        except BaseException as exc:  # reported by the main thread
            self.crash = exc
        finally:
            self.done.set()

    # -- the run ------------------------------------------------------------------------------

    def _callbacks(self) -> list[Callable[[str], None]]:
        board = self.board

        def make(i: int) -> Callable[[str], None]:
            def on_text(chunk: str) -> None:
                board.text(i, chunk)
            return on_text

        return [make(i) for i in range(len(self.items))]

    def _common(self) -> dict:
        import claude_client

        return dict(model=self.args.model or claude_client.DEFAULT_MODEL, max_tokens=self.args.max_tokens,
                    max_workers=self.args.workers, shared_system=self.shared_system,
                    cache_shared_system=self.args.cache, **self.connection)

    def _run_managed(self) -> list[_Outcome]:
        from orchestration import invoke_parallel_managed

        # return_exceptions: failures come back in their slots (a managed run never raises for them)
        results = invoke_parallel_managed(
            [dict(it) for it in self.items], max_retries=self.args.retries, stall_timeout=self.args.stall_timeout,
            interrupt_token=self.token, tracker=self.tracker, callbacks=self._callbacks(), return_exceptions=True,
            **self._common())
        outcomes = []
        for i, (item, res) in enumerate(zip(self.items, results)):
            oc = self._outcome_from_tracker(item["task_id"], res)
            _finish_on_board(self.board, i, oc)
            outcomes.append(oc)
        return outcomes

    # -- reading the tracker ------------------------------------------------------------------

    def _info(self, task_id: str) -> Any:
        try:
            return self.tracker.get(task_id)
        except (KeyError, LookupError, ValueError):
            return None

    def _outcome_from_tracker(self, task_id: str, result: Any = None) -> _Outcome:
        """_Outcome of one task from the run's result slot and its tracker record."""
        from task_state import TaskState, TerminalReason

        if isinstance(result, BaseException):
            return _outcome_error(result)
        if result is not None:
            return _outcome_ok(result)
        info = self._info(task_id)
        if info is None:
            return _interrupted_outcome() if self.token.is_interrupted() else _Outcome(
                "failed", error_kind="unknown", error="the task did not run")
        if info.state is TaskState.COMPLETED and info.result is not None:
            return _outcome_ok(info.result)
        reason = info.terminal_reason
        if reason is TerminalReason.INTERRUPTED or (reason is None and self.token.is_interrupted()) \
                or (reason is TerminalReason.CANCELLED and self.token.is_interrupted()):
            return _interrupted_outcome()
        if info.error is not None:
            oc = _outcome_error(info.error)
            if oc.status == "failed" and reason is TerminalReason.RETRIES_EXHAUSTED:
                oc.error = f"{oc.error} (after {info.attempts} attempts)"
            return oc
        return _Outcome("failed", error_kind=str(reason) if reason else "unknown",
                       error=f"task ended: {reason or info.state}")

    def sync(self) -> None:
        """Copy what the tracker knows onto the board (called by the main thread)."""
        from task_state import TaskState

        try:
            infos = self.tracker.all()
        except Exception:  # never let the display break the run
            return
        index = self._index
        for info in infos:
            if self._seen.get(info.task_id) == info.updated_at:
                continue
            self._seen[info.task_id] = info.updated_at
            i = index.get(info.task_id)
            if i is None or self.board.is_finished(i):
                continue
            state = info.state
            if state is TaskState.RUNNING:
                self.board.running(i, attempt=info.attempts)
            elif state is TaskState.RETRY_QUEUED or (state is TaskState.FAILED and info.terminal_reason is None):
                self.board.retrying(i, _one_line(str(info.error), 160) if info.error else "")
            elif info.terminal_reason is not None:
                if state is TaskState.COMPLETED and info.result is None:
                    continue  # the result list will tell
                _finish_on_board(self.board, i, self._outcome_from_tracker(info.task_id))

    def partial_outcomes(self) -> list[_Outcome]:
        """After an abandoned interrupt: completed tasks from the tracker, the rest interrupted."""
        from task_state import TaskState

        outcomes = []
        for it in self.items:
            oc = _interrupted_outcome()
            info = self._info(it["task_id"])
            if info is not None and info.state is TaskState.COMPLETED and info.result is not None:
                oc = _outcome_ok(info.result)
            outcomes.append(oc)
        return outcomes


def _interrupted_outcome() -> _Outcome:
    return _Outcome("interrupted", error_kind="interrupted", error="interrupted before it finished")


def _library_items(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in it.items() if k not in _CLI_ONLY_KEYS} for it in items]


def _validate_with_library(items: list[dict], args: argparse.Namespace, shared_system: Optional[str]) -> None:
    """Let the library validate every prompt before any request is sent (ValueError -> usage)."""
    from _requests import DEFAULT_MODEL, prompt_specs  # the library's one request builder

    try:
        prompt_specs(
            _library_items(items), shared_system=shared_system, cache_shared_system=args.cache,
            model=args.model or DEFAULT_MODEL, max_tokens=args.max_tokens)
    except (ValueError, TypeError) as exc:
        raise _UsageError(_one_line(str(exc))) from None


def _finish_on_board(board: _Board, i: int, oc: _Outcome) -> None:
    board.finish(i, oc.status, output_tokens=(oc.usage or {}).get("output_tokens"),
                 cost_usd=oc.cost_usd if oc.status == "ok" else 0.0, usage=oc.usage, error=oc.error or "")


# ----------------------------------------------------------------------------- main


def _open_output(path: Optional[str], stdout: IO[str]) -> IO[str]:
    if not path or path == "-":
        return stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise _UsageError(f"--output: cannot write {path}: {exc.strerror or exc}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failures, 2 usage, 130 SIGINT, 143 SIGTERM).

    >>> import orchestrate
    >>> orchestrate.main(["--help"])  # doctest: +SKIP
    """
    stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)  # exits 2 on bad arguments
    try:
        return _main(args, stdin, stdout, stderr)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        except OSError:
            pass
        return EXIT_FAILED
    except _UsageError as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
        stderr.flush()
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    items = _collect_prompts(args, stdin)
    shared_system = None
    if args.system_file:
        shared_system = _read_path(args.system_file, "--system-file", stdin)
        if not shared_system.strip():
            raise _UsageError(f"--system-file: {args.system_file} is empty")
    elif args.system is not None:
        shared_system = args.system
        _check_text(shared_system, "--system")
    if getattr(args, "material", None):
        shared_system = _perspective_system(*args.material, shared_system)
    if args.cache and not shared_system:
        raise _UsageError("--cache caches the shared system prompt: give --system or --system-file")
    fmt = args.format or ("text" if (not args.output and _isatty(stdout)) else "jsonl")

    import claude_client

    display = _Display(args, stderr)
    root = logging.getLogger()
    handler: Optional[logging.Handler] = None
    if not root.handlers and not args.quiet:
        handler = _NoticeHandler(display)
        root.addHandler(handler)
    try:
        return _run_main(args, items, shared_system, fmt, display, stdout, stderr)
    finally:
        if handler is not None:
            root.removeHandler(handler)


def _run_main(args: argparse.Namespace, items: list[dict], shared_system: Optional[str], fmt: str,
              display: _Display, stdout: IO[str], stderr: IO[str]) -> int:
    notice = (lambda text: None) if args.quiet else display.notice

    emulator = None
    connection: dict[str, str] = {}  # api_key / base_url passed to the library for this run only
    if args.offline or (not os.environ.get("ANTHROPIC_BASE_URL") and not _has_credentials()):
        emulator = _start_offline()
        connection = {"base_url": emulator.base_url, "api_key": OFFLINE_KEY}
        if args.offline:
            notice(f"--offline: running against the bundled Messages API emulator at {emulator.base_url} "
                   f"(replies are canned echoes)")
        else:
            notice(f"no API key found: running offline against the bundled Messages API emulator at "
                   f"{emulator.base_url} (replies are canned echoes; set ANTHROPIC_API_KEY for real answers)")
    elif os.environ.get("ANTHROPIC_BASE_URL") and not _has_credentials():
        connection = {"api_key": OFFLINE_KEY}
    try:
        _validate_with_library(items, args, shared_system)
        out = _open_output(args.output, stdout)
        try:
            return _execute(items, args, shared_system, display, fmt, out, stderr, connection)
        finally:
            if out is not stdout:
                out.close()
    finally:
        if emulator is not None:
            emulator.stop()


def _execute(items: list[dict], args: argparse.Namespace, shared_system: Optional[str],
             display: _Display, fmt: str, out: IO[str], stderr: IO[str],
             connection: Optional[dict] = None) -> int:
    import claude_client

    token = claude_client.InterruptToken()
    board = _Board(items, on_event=display.event)
    run = _Execution(items, args, shared_system, board, token, connection)
    interrupted_at: list[float] = []
    # Appended to by the signal handler and nothing else: list.append takes no lock a worker
    # thread may hold. The wait loop below notices it within ~0.05 s and does the interrupting.
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals_seen.append(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS} if in_main_thread else {}
    sync_every = 0.05 if len(items) <= 200 else 0.25
    display.start(board)
    try:
        run.start()
        last_sync = 0.0
        while not run.done.wait(0.05):
            if signals_seen and not interrupted_at:
                interrupted_at.append(time.monotonic())
                board.interrupted = True
                token.interrupt()
            now = time.monotonic()
            if now - last_sync >= sync_every:
                run.sync()
                last_sync = now
            if interrupted_at and (len(signals_seen) > 1  # a second signal: stop waiting for the library
                                   or time.monotonic() - interrupted_at[0] > _INTERRUPT_GRACE_S):
                break
        run.sync()
    finally:
        display.stop()
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
    exit_interrupted = 128 + signals_seen[0] if signals_seen else EXIT_INTERRUPTED
    if signals_seen and not interrupted_at:  # the signal came as the run finished
        interrupted_at.append(time.monotonic())

    if run.crash is not None and run.outcomes is None and not interrupted_at:
        exc = run.crash
        if isinstance(exc, (ValueError, TypeError)):
            raise _UsageError(_one_line(str(exc)))
        stderr.write(f"{PROG}: error: {_one_line(f'{type(exc).__name__}: {exc}')}\n")
        return EXIT_FAILED
    outcomes = run.outcomes
    abandoned = outcomes is None
    if outcomes is None:
        # Ctrl-C and the library did not hand its results back in time: completed results come
        # from the tracker, the rest are reported as interrupted.
        outcomes = run.partial_outcomes()
    records = [_make_record(i, it, oc) for i, (it, oc) in enumerate(zip(items, outcomes))]
    _write_records(records, fmt, out)
    ok = sum(r["status"] == "ok" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    interrupted = sum(r["status"] == "interrupted" for r in records)
    cost = sum(r["cost_usd"] or 0.0 for r in records)
    if not args.quiet:
        stderr.write(f"{PROG}: {ok} ok, {failed} failed"
                     f"{f', {interrupted} interrupted' if interrupted else ''}, "
                     f"{_fmt_cost(cost)}, {time.monotonic() - board.started:.1f}s\n")
        stderr.flush()
    if interrupted_at:
        if abandoned:
            # Worker threads may still be unwinding: leave now, the results are written.
            try:
                out.flush()
                stderr.flush()
            finally:
                os._exit(exit_interrupted)
        return exit_interrupted
    return EXIT_OK if failed == 0 and interrupted == 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
