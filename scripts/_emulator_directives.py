"""The emulator's directives: ``[[key=value ...]]`` groups in the prompt, merged into a per-request plan.

Also the prompt itself (the last user message holding more than tool_result blocks, groups
removed) and the attempt fingerprint that ``times=M`` counts. Private to :mod:`anthropic_emulator`
(which re-exports :data:`DIRECTIVE_KEYS` and :func:`tool_directive`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from _emulator_validation import _TOOL_NAME_RE
from _emulator_wire import _ApiError, _compact

DIRECTIVE_KEYS: dict[str, str] = {
    "fail": "answer this HTTP status with the API's error body before any response",
    "retry_after": "value of the retry-after header on the failure (429 default: 1)",
    "retry_after_ms": "value of the retry-after-ms header on the failure",
    "should_retry": "value of the x-should-retry header on the failure: true | false",
    "error_after": "streaming: event: error overloaded_error after K deltas; non-streaming: 529",
    "stall_after": "streaming: stop after K deltas and keep the connection open; non-streaming: never answer",
    "stall_pings": "during a stall, send a ping every MS milliseconds",
    "ttft_ms": "time to first token of this request (ms)",
    "delay_ms": "delay before each delta of this request (ms)",
    "words": "reply length in words",
    "batch": "outcome inside a message batch: errored | expired",
    "times": "limit the faults and delays of its own group to the first M attempts",
    "id": "ignored; makes otherwise identical prompts distinct",
    "tool": "ask for client tool NAME (comma list NAME,NAME: one tool_use block each); each group with tool= "
    "adds blocks, so repeated groups call several tools in one turn; the name must be in the request's tools",
    "input": "the tool input of its group's tool=: a JSON object, percent-encoded where it holds spaces or "
    "brackets (e.g. input=%7B%22q%22:%22a%20b%22%7D; see tool_directive()); default {}",
    "tool_turns": "ask for the tools while the conversation holds fewer than N tool_result turns after the "
    "prompt (default 1: call once, then answer); inf never stops",
    "preamble": "1: a tool-call turn starts with the text 'Calling NAME, NAME.' before its tool_use blocks",
    "pause_turns": "answer N turns with a server_tool_use + its result block and stop_reason pause_turn "
    "(needs a server tool in tools); sending the conversation back continues it",
    "invalid_output": "structured output: the reply misses a required field (invalid for the schema) on the first "
    "N tries; tries = attempt of the identical body + assistant turns in the conversation; "
    "read in every user message",
    "think": "thinking tokens of this reply when it thinks (default by effort: low 2, medium 4, high 8, xhigh 12, "
    "max 16); N >= max_tokens gives a reply of only the thinking block, stop_reason max_tokens",
    "refuse": "a bare flag ([[refuse]]): HTTP 200, content [], stop_reason refusal, stop_details "
    "{type: refusal, category, explanation}; input billed, no output",
    "category": "the refusal's category: cyber | bio | frontier_llm | reasoning_extraction | general_harms | "
    "none (null, the default)",
    "stop": "model_context_window_exceeded: stop with that stop_reason after the first half of the reply's words",
}
"""Directive keys understood inside ``[[key=value ...]]`` groups."""

# Keys of a group that ``times=M`` limits to the first M attempts of the same request.
_TIMED_KEYS = frozenset(
    {
        "fail",
        "retry_after",
        "retry_after_ms",
        "should_retry",
        "error_after",
        "stall_after",
        "stall_pings",
        "ttft_ms",
        "delay_ms",
        "refuse",
        "category",
        "stop",
    }
)
#: Keys that may stand alone in a group, as flags (``[[refuse]]`` means ``[[refuse=1]]``).
_FLAG_KEYS = frozenset({"refuse"})
#: ``category=`` values (the SDK's ``RefusalStopDetails.category``; ``none`` is null).
REFUSAL_CATEGORIES = ("cyber", "bio", "frontier_llm", "reasoning_extraction", "general_harms")
_STOP_REASONS = ("model_context_window_exceeded",)
_INT_KEYS = frozenset(
    {
        "fail",
        "error_after",
        "stall_after",
        "stall_pings",
        "words",
        "times",
        "preamble",
        "pause_turns",
        "invalid_output",
        "think",
        "refuse",
    }
)
_FLOAT_KEYS = frozenset({"ttft_ms", "delay_ms", "retry_after", "retry_after_ms"})
_GROUP_RE = re.compile(r"\[\[([^\[\]]*)\]\]")
_TOKEN_RE = re.compile(r"^([a-z_]+)=(\S+)$")


@dataclass
class _Plan:
    """Effective per-request behaviour after merging global and per-request directives."""

    fail: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    should_retry: str | None = None
    error_after: int | None = None
    stall_after: int | None = None
    stall_pings: int | None = None
    ttft_ms: float = 0.0
    delay_ms: float = 0.0
    words: int | None = None
    batch: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tool_turns: float = 1
    preamble: int = 0
    pause_turns: int = 0
    invalid_output: int = 0
    think: int | None = None
    refuse: int = 0
    category: str | None = None
    stop: str | None = None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            b.get("text", "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    return ""


def _parse_group(text: str) -> dict[str, str] | None:
    """``"fail=529 times=2"`` -> dict, or None when the text is not a directive group."""
    tokens = text.split()
    if not tokens:
        return None
    out: dict[str, str] = {}
    for tok in tokens:
        if tok in _FLAG_KEYS:
            out[tok] = "1"
            continue
        m = _TOKEN_RE.match(tok)
        if not m:
            return None
        out[m.group(1)] = m.group(2)
    return out


def _split_directives(text: str) -> tuple[list[dict[str, str]], str]:
    """Return the directive groups of ``text`` and the text with them removed."""
    groups: list[dict[str, str]] = []

    def _sub(m: re.Match[str]) -> str:
        g = _parse_group(m.group(1))
        if g is None:
            return m.group(0)
        groups.append(g)
        return " "

    stripped = _GROUP_RE.sub(_sub, text)
    return groups, stripped


def _global_groups(spec: str) -> list[dict[str, str]]:
    if not spec or not spec.strip():
        return []
    if "[[" in spec:
        return _split_directives(spec)[0]
    g = _parse_group(spec)
    if g is None:
        raise ValueError(f"directives: expected 'key=value ...' groups, got {spec!r}")
    return [g]


def _build_plan(groups: list[dict[str, str]], attempt: int, settings: dict[str, Any]) -> _Plan:
    plan = _Plan(
        ttft_ms=float(settings["ttft_ms"] or 0),
        delay_ms=float(settings["chunk_delay_ms"] or 0),
        words=settings["reply_words"],
    )
    for g in groups:
        times_raw = g.get("times")
        if times_raw is not None:
            try:
                times = int(times_raw)
            except ValueError:
                raise _ApiError(400, f"directive times: expected an integer, got {times_raw!r}") from None
            active = attempt <= times
        else:
            active = True
        if "tool" in g:
            tool_input = _directive_input(g.get("input", "{}"))
            for name in g["tool"].split(","):
                if not _TOOL_NAME_RE.match(name):
                    raise _ApiError(400, f"directive tool: expected tool names, got {g['tool']!r}")
                plan.tool_calls.append((name, tool_input))
        for key, raw in g.items():
            if key in ("times", "id", "tool", "input") or key not in DIRECTIVE_KEYS:
                continue
            if key == "tool_turns":
                try:
                    plan.tool_turns = math.inf if raw == "inf" else int(raw)
                except ValueError:
                    raise _ApiError(400, f"directive tool_turns: expected an integer or inf, got {raw!r}") from None
                continue
            if key in _TIMED_KEYS and not active:
                continue
            value: Any = raw
            try:
                if key in _INT_KEYS:
                    value = int(raw)
                elif key in _FLOAT_KEYS:
                    value = float(raw)
            except ValueError:
                raise _ApiError(400, f"directive {key}: expected a number, got {raw!r}") from None
            if key in ("retry_after", "retry_after_ms"):
                value = raw
            elif key == "should_retry" and raw not in ("true", "false"):
                raise _ApiError(400, f"directive should_retry: expected true or false, got {raw!r}")
            elif key == "category":
                if raw not in REFUSAL_CATEGORIES + ("none",):
                    raise _ApiError(400, f"directive category: expected one of {', '.join(REFUSAL_CATEGORIES)}, none")
                value = None if raw == "none" else raw
            elif key == "stop" and raw not in _STOP_REASONS:
                raise _ApiError(400, f"directive stop: expected {' or '.join(_STOP_REASONS)}, got {raw!r}")
            elif key == "think" and value < 0:
                raise _ApiError(400, f"directive think: expected an integer >= 0, got {raw!r}")
            setattr(plan, key, value)
    return plan


def _directive_input(raw: str) -> dict[str, Any]:
    """The ``input=`` of a tool directive: a (percent-encoded) JSON object."""
    try:
        value = json.loads(urllib.parse.unquote(raw))
    except ValueError:
        raise _ApiError(400, f"directive input: expected a JSON object, got {raw!r}") from None
    if not isinstance(value, dict):
        raise _ApiError(400, f"directive input: expected a JSON object, got {raw!r}")
    return value


def tool_directive(name: str, tool_input: dict[str, Any] | None = None, **keys: Any) -> str:
    """Build a tool directive group, percent-encoding the input so it survives the group syntax.

    >>> tool_directive("lookup", {"q": "a b"}, tool_turns=2)
    '[[tool=lookup input=%7B%22q%22%3A%22a%20b%22%7D tool_turns=2]]'
    """
    parts = [f"tool={name}"]
    if tool_input is not None:
        encoded = urllib.parse.quote(json.dumps(tool_input, separators=(",", ":")), safe="")
        parts.append(f"input={encoded}")
    parts.extend(f"{k}={v}" for k, v in keys.items())
    return "[[" + " ".join(parts) + "]]"


def _fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(_compact({k: v for k, v in body.items() if k != "stream"}).encode()).hexdigest()


def _prompt_index(body: dict[str, Any]) -> int:
    """Index of the prompt message: the last user message holding more than tool_result blocks."""
    messages = body.get("messages") or []
    last_user = -1
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if msg.get("role") != "user":
            continue
        if last_user < 0:
            last_user = i
        content = msg.get("content")
        if not isinstance(content, list) or any(
            isinstance(b, dict) and b.get("type") != "tool_result" for b in content
        ):
            return i
    return max(last_user, 0)


def _prompt_and_groups(body: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    messages = body.get("messages") or []
    text = _text_of(messages[_prompt_index(body)].get("content")) if messages else ""
    groups, stripped = _split_directives(text)
    return " ".join(stripped.split()), groups


def _invalid_output(body: dict[str, Any], global_groups: list[dict[str, str]], attempt: int) -> int:
    """1 when ``invalid_output=N`` (from any user message or the global directives) covers this try."""
    n = 0
    for g in global_groups + [
        g for m in body["messages"] if m["role"] == "user" for g in _split_directives(_text_of(m["content"]))[0]
    ]:
        if "invalid_output" in g:
            try:
                n = int(g["invalid_output"])
            except ValueError:
                raise _ApiError(
                    400, f"directive invalid_output: expected an integer, got {g['invalid_output']!r}"
                ) from None
    tries = attempt + sum(1 for m in body["messages"] if m["role"] == "assistant")
    return 1 if tries <= n else 0


tool_directive.__module__ = "anthropic_emulator"
