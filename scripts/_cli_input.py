"""Reading the prompts of ``orchestrate``: arguments, ``--file`` (plain lines or JSONL), stdin,
``--perspectives`` material and the shared system prompt, all validated into prompt dicts.

Every problem is a :class:`_cli_common.UsageError` naming where it is (``file:line``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import IO, Any, Optional

from _cli_common import UsageError, isatty
from _cli_perspectives import perspective_prompts, perspective_system

__all__ = ["PROMPT_KEYS", "check_text", "collect_prompts", "read_path", "read_shared_system", "read_stdin"]

#: Keys a JSONL prompt line may carry.
PROMPT_KEYS = frozenset(
    {
        "prompt",
        "system",
        "task_id",
        "category",
        "model",
        "max_tokens",
        "temperature",
        "cache_system",
        "cache_prompt",
        "effort",
        "thinking",
    }
)


def read_stdin(stdin: Any) -> str:
    """All of stdin as text: bytes decoded strictly as UTF-8, newlines normalised to ``\\n``.

    A closed stdin (``<&-``: ``sys.stdin`` is None), one that cannot be read (opened write-only)
    or bytes that are not UTF-8 are usage errors, reported like an unreadable ``--file``.
    """
    if stdin is None:
        raise UsageError("stdin: not available (it is closed)")
    try:
        buffer = getattr(stdin, "buffer", None)
        data = buffer.read() if buffer is not None else stdin.read()
    except UnicodeDecodeError:
        raise UsageError("stdin: not UTF-8 text") from None
    except ValueError as exc:  # I/O operation on a closed file
        raise UsageError(f"stdin: cannot read: {exc}") from None
    except OSError as exc:
        raise UsageError(f"stdin: cannot read: {exc.strerror or exc}") from None
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("stdin: not UTF-8 text") from None
    if not isinstance(data, str):
        raise UsageError("stdin: cannot read: not a text stream")
    return data.replace("\r\n", "\n").replace("\r", "\n")


def check_text(value: Any, where: str) -> None:
    """Refuse text that cannot be sent as UTF-8 (lone surrogates, e.g. ``"\\ud800"`` in JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(
                f"{where}: not valid Unicode text (cannot be encoded as UTF-8: {exc.reason} at position {exc.start})"
            ) from None


_PATHLIKE_EXT = re.compile(r"\.[A-Za-z0-9_-]*[A-Za-z][A-Za-z0-9_-]*$")


def _looks_like_path(value: str) -> bool:
    """``--input``: one word with a path separator, or ending in a dotted extension (``x.py``)."""
    if not value or any(ch.isspace() for ch in value):
        return False
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in value for sep in seps) or bool(_PATHLIKE_EXT.search(value))


def read_path(path: str, what: str, stdin: IO[str]) -> str:
    """The UTF-8 text of ``path`` (``-``: stdin); ``what`` (the option) names it in errors."""
    if path == "-":
        return read_stdin(stdin)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what}: is a directory: {path}") from None
    except PermissionError:
        raise UsageError(f"{what}: permission denied: {path}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what}: not UTF-8 text: {path}") from None
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


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
                raise UsageError(
                    f"{name}:{lineno}: a JSON object line in a plain-text prompt file (the first line "
                    f"is text, so every line is a prompt); use JSON objects on every line or on none"
                )
            items.append({"prompt": line.strip(), "_where": f"{name}:{lineno}"})
        return items
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UsageError(
                f"{name}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}); this input is read "
                f"as JSONL because its first line starts with '{{'"
            ) from None
        if not isinstance(obj, dict):
            raise UsageError(
                f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__} "
                f"(this input is read as JSONL: every line must be a JSON object)"
            )
        unknown = sorted(set(obj) - PROMPT_KEYS)
        if unknown:
            raise UsageError(f"{name}:{lineno}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(PROMPT_KEYS))})")
        obj["_where"] = f"{name}:{lineno}"
        items.append(obj)
    return items


def _check_item(item: dict, where: str) -> dict:
    """Validate one prompt dict's types (values the library would reject are caught here too)."""
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{where}: 'prompt' must be a non-empty string")
    for key in ("system", "category", "model", "effort"):
        if key in item and item[key] is not None and not isinstance(item[key], str):
            raise UsageError(f"{where}: {key!r} must be a string")
    if "thinking" in item and not isinstance(item["thinking"], (str, dict)):
        raise UsageError(f"{where}: 'thinking' must be a string (e.g. \"adaptive\") or an object")
    if "task_id" in item:
        tid = item["task_id"]
        if isinstance(tid, bool) or not isinstance(tid, (str, int)) or str(tid) == "":
            raise UsageError(f"{where}: 'task_id' must be a non-empty string or an integer")
        item["task_id"] = str(tid)
    if "max_tokens" in item:
        mt = item["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise UsageError(f"{where}: 'max_tokens' must be an integer >= 1")
    if "temperature" in item:
        t = item["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise UsageError(f"{where}: 'temperature' must be a number in [0, 1]")
    for key in ("cache_system", "cache_prompt"):
        if key in item and not isinstance(item[key], bool):
            raise UsageError(f"{where}: {key!r} must be true or false")
    for key in ("prompt", "system", "task_id", "category", "model"):
        check_text(item.get(key), f"{where}: {key!r}")
    return item


def collect_prompts(args: argparse.Namespace, stdin: IO[str]) -> list[dict]:
    """Every prompt dict, in input order, validated; each has a unique ``task_id``.

    With ``--perspectives``, ``args.material`` is set to ``(text, source)`` of the material.
    """
    sources = sum(bool(x) for x in (args.prompts, args.file, args.perspectives))
    if sources > 1:
        raise UsageError("give prompts in one way only: arguments, --file, or --perspectives")
    if args.input is not None and not args.perspectives:
        raise UsageError("--input is only used with --perspectives")
    if args.perspectives:
        if args.input is None:
            raise UsageError("--perspectives needs --input FILE_OR_TEXT (the material to review)")
        inp = args.input
        if os.path.isdir(inp):
            raise UsageError(f"--input: is a directory: {inp} (give a file, '-' for stdin, or the text)")
        if inp == "-" or os.path.exists(inp):
            material = read_path(inp, "--input", stdin)
            source = "text" if inp == "-" else f"file ({os.path.basename(inp)})"
        elif _looks_like_path(inp):
            raise UsageError(
                f"--input: no such file: {inp} (a single word with a '/' or a .ext is taken as a "
                f"path; to review such text itself, pipe it in with --input -)"
            )
        else:
            material, source = inp, "text"
            check_text(material, "--input")
        if not material.strip():
            raise UsageError("--input: the material to review is empty")
        items = perspective_prompts(args.perspectives)
        args.material = (material, source)
    elif args.file:
        text = read_path(args.file, "--file", stdin)
        items = _parse_prompt_text(text, "<stdin>" if args.file == "-" else args.file)
    elif args.prompts:
        items = [{"prompt": p, "_where": f"argument {i + 1}"} for i, p in enumerate(args.prompts)]
    elif not isatty(stdin):
        items = _parse_prompt_text(read_stdin(stdin), "<stdin>")
    else:
        raise UsageError("no prompts: give them as arguments, with --file, or on stdin")
    if not items:
        raise UsageError("no prompts found in the input")
    wheres = [item.pop("_where", f"prompt {index}") for index, item in enumerate(items)]
    seen: dict[str, str] = {}  # explicit task_id -> where it is given
    for item, where in zip(items, wheres):
        _check_item(item, where)
        if "task_id" in item:
            if item["task_id"] in seen:
                raise UsageError(f"{where}: task_id {item['task_id']!r} is already used by {seen[item['task_id']]}")
            seen[item["task_id"]] = where
    _assign_default_task_ids(items, wheres, seen)
    for item in items:  # the run-wide options fill in what a prompt does not set itself
        for key in ("temperature", "effort", "thinking"):
            value = getattr(args, key, None)
            if value is not None and key not in item:
                item[key] = value
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


def read_shared_system(args: argparse.Namespace, stdin: IO[str]) -> Optional[str]:
    """The shared system prompt: ``--system`` or ``--system-file``, with the ``--perspectives``
    material appended (``args.material``, set by :func:`collect_prompts`); None when there is none."""
    shared_system = None
    if args.system_file:
        shared_system = read_path(args.system_file, "--system-file", stdin)
        if not shared_system.strip():
            raise UsageError(f"--system-file: {args.system_file} is empty")
    elif args.system is not None:
        shared_system = args.system
        check_text(shared_system, "--system")
    if getattr(args, "material", None):
        material, source = args.material
        shared_system = perspective_system(material, source, shared_system)
    if args.cache and not shared_system:
        raise UsageError("--cache caches the shared system prompt: give --system or --system-file")
    return shared_system
