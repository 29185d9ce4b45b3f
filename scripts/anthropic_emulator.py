"""A local, deterministic emulator of the Anthropic Messages API, for tests and benchmarks.

It speaks the same HTTP the official ``anthropic`` SDK speaks (JSON and server-sent-event
streaming on ``POST /v1/messages``, ``POST /v1/messages/count_tokens`` and the Message Batches
endpoints), so code under test runs unmodified with ``base_url`` pointed at it::

    import anthropic
    from anthropic_emulator import Emulator

    with Emulator(chunk_delay_ms=5) as emu:
        client = anthropic.Anthropic(api_key="sk-ant-test-key", base_url=emu.base_url)
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                     messages=[{"role": "user", "content": "hello"}])
        assert msg.content[0].text == "Echo: hello"
        assert emu.message_requests()[0].status == 200

Behaviour is driven globally through settings (constructor keywords, :meth:`Emulator.configure`,
command line flags) and per request through *directives* written in the text of the last user
message, e.g. ``"[[fail=529 times=2]] summarise this"`` (see :data:`DIRECTIVE_KEYS`).

Replies and token counts are a documented, deterministic function of the request:

* prompt = text of the last user message, directive groups removed, whitespace collapsed;
* reply = the scripted reply for the prompt (:meth:`Emulator.script`) or ``"Echo: " + prompt``;
  ``words=N`` (or the ``reply_words`` setting) cycles the reply's words to exactly N words;
  the reply is cut to ``max_tokens`` words (``stop_reason="max_tokens"``);
* one ``content_block_delta`` per word; output tokens = words sent;
* tokens of a text = ``ceil(len(text) / 4)``; input tokens = tools + system + message blocks (other
  blocks, tool_use / tool_result included, count their compact JSON); output tokens = words sent + the
  compact JSON of tool blocks. ``"x"`` and ``[{"type": "text", "text": "x"}]`` are the same tokens and
  the same cache prefix (content or system).

Tool use: ``tool=NAME input=JSON`` directives (see :func:`tool_directive`) ask for client tools
(``stop_reason="tool_use"``, streamed as ``input_json_delta`` fragments) while the conversation holds
fewer than ``tool_turns`` tool_result turns; a last user turn of tool_result blocks is answered
``"Echo tool results: ID=TEXT; ID=TEXT (error)"``; ``pause_turns=N`` returns server-tool turns with
``stop_reason="pause_turn"``. Requests are validated like the API (tools, tool_choice, tool_use /
tool_result pairing, non-empty text). ``output_config.format`` (json_schema) replies with a minimal
instance of the schema (:func:`schema_instance`); ``invalid_output=N`` breaks the first N tries.

Rate limits: ``rate_limit_requests`` / ``rate_limit_window_s`` (one global request bucket) and per
model ``rate_limit_rpm`` / ``rate_limit_itpm`` / ``rate_limit_otpm`` buckets holding one "minute"
(``rate_limit_minute_s`` seconds, default 60) of their limit, refilled continuously on the emulator
clock; ITPM charges input + cache-write tokens (not cache reads), OTPM charges ``max_tokens`` at
admission and refunds down to the real output at the end; a 429 carries ``retry-after``.

Run standalone with ``python -m anthropic_emulator --port 8080`` (``--help`` lists the flags).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from aiohttp import web

__all__ = ["Emulator", "RequestRecord", "DEFAULT_SETTINGS", "DIRECTIVE_KEYS", "count_text_tokens", "main"]

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "api_key": None,
    "ttft_ms": 0,
    "chunk_delay_ms": 0,
    "reply_words": None,
    "ping_every": 0,
    "rate_limit_requests": None,
    "rate_limit_window_s": 60.0,
    "max_concurrent": None,
    "directives": "",
    "cache_min_tokens": None,
    "batch_seconds_per_request": 0.01,
    "batch_retrieve_404_times": 0,
    "batch_create_delay_ms": 0,
    "rate_limit_rpm": None,
    "rate_limit_itpm": None,
    "rate_limit_otpm": None,
    "rate_limit_minute_s": 60.0,
}
"""Every setting with its default (constructor keywords, ``configure()``, CLI flags)."""

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
}
"""Directive keys understood inside ``[[key=value ...]]`` groups."""

# Keys of a group that ``times=M`` limits to the first M attempts of the same request.
_TIMED_KEYS = frozenset({"fail", "retry_after", "retry_after_ms", "should_retry", "error_after", "stall_after",
                         "stall_pings", "ttft_ms", "delay_ms"})
_INT_KEYS = frozenset({"fail", "error_after", "stall_after", "stall_pings", "words", "times", "preamble",
                       "pause_turns", "invalid_output"})
_FLOAT_KEYS = frozenset({"ttft_ms", "delay_ms", "retry_after", "retry_after_ms"})
_GROUP_RE = re.compile(r"\[\[([^\[\]]*)\]\]")
_TOKEN_RE = re.compile(r"^([a-z_]+)=(\S+)$")
_CUSTOM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    408: ("timeout_error", "Request timed out."),
    409: ("invalid_request_error", "Conflict."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}

_CACHE_TTLS = {"5m": 300.0, "1h": 3600.0}
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_NOMINAL_TOKEN_LIMIT = 10_000_000
_BATCH_MAX_REQUESTS = 100_000
_BATCH_LIFETIME_S = 24 * 3600.0


def count_text_tokens(text: str) -> int:
    """The emulator's token rule for a text: ``ceil(len(text) / 4)``.

    >>> count_text_tokens("abcde")
    2
    """
    return (len(text) + 3) // 4


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass
class RequestRecord:
    """One HTTP request seen by the emulator (a read-only snapshot when you get it).

    ``started_at`` / ``ended_at`` are ``time.monotonic()`` values (``ended_at`` is None while the
    request runs); ``attempt`` counts identical bodies (ignoring ``stream``) on /v1/messages;
    ``aborted`` is True when the client left before the end, ``emitted_text`` holds the text
    sent until then.
    """

    seq: int
    method: str
    path: str
    body: dict[str, Any] | None = None
    stream: bool = False
    model: str | None = None
    status: int | None = None
    error_type: str | None = None
    attempt: int = 1
    retry_count_header: str | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    aborted: bool = False
    emitted_text: str = ""
    usage: dict[str, Any] | None = None
    prompt: str = ""


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


@dataclass
class _CacheEntry:
    expires: float
    ttl: float
    tokens: int


@dataclass
class _Computed:
    """Reply, usage and pending cache writes of one admitted message request."""

    words: list[str]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]
    pending_writes: list[tuple[str, float, int]]
    read_tokens: int
    creation_tokens: int
    blocks: list[dict[str, Any]] = field(default_factory=list)  # non-text content blocks after the text
    hit_key: str | None = None
    otpm: _Bucket | None = None  # the OTPM bucket charged max_tokens at admission (refunded at the end)
    otpm_charged: int = 0


@dataclass
class _BatchItem:
    custom_id: str
    params: Any
    result: dict[str, Any] | None = None


@dataclass
class _Batch:
    id: str
    created: float  # emulator clock (monotonic based)
    created_wall: float
    items: list[_BatchItem]
    spr: float
    cancel_at: float | None = None
    cancel_wall: float | None = None
    ended_at: float | None = None
    retrieves: int = 0
    done: int = 0
    results_base: str = ""
    counts: dict[str, int] = field(default_factory=lambda: {
        "processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})


_REC_KEY: Any = web.RequestKey("emulator_record", RequestRecord) if hasattr(web, "RequestKey") else "emulator_record"
_RID_KEY: Any = web.RequestKey("emulator_request_id", str) if hasattr(web, "RequestKey") else "emulator_request_id"


class _ApiError(Exception):
    """Raised inside handlers to answer an API error body."""

    def __init__(self, status: int, message: str | None = None, *, headers: dict[str, str] | None = None,
                 error_type: str | None = None) -> None:
        etype, default_message = _ERROR_TYPES.get(status, ("api_error" if status >= 500 else "invalid_request_error",
                                                           "Error"))
        super().__init__(message or default_message)
        self.status = status
        self.error_type = error_type or etype
        self.message = message or default_message
        self.headers = headers or {}


class _Bucket:
    """Token bucket: ``capacity`` units per ``window_s`` seconds, refilled continuously.

    A charge larger than the capacity is admitted once the bucket is full (the bucket then goes
    negative and refills from there), so a request bigger than a limit is slow, not impossible.
    """

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / window_s
        self.tokens = float(capacity)
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(float(self.capacity), self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` fits (0.0 when it fits now); takes nothing."""
        self._refill(now)
        need = min(float(amount), float(self.capacity))
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / self.rate

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount``; return 0.0 on success, else the seconds until it fits (taking nothing)."""
        wait = self.wait(now, amount)
        if wait == 0.0:
            self.tokens -= amount
        return wait

    def give(self, now: float, amount: float) -> None:
        """Return ``amount`` (a refund), never above the capacity."""
        self._refill(now)
        self.tokens = min(float(self.capacity), self.tokens + amount)

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, int(self.tokens))

    def seconds_to_full(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.tokens) / self.rate


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content
                        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _parse_group(text: str) -> dict[str, str] | None:
    """``"fail=529 times=2"`` -> dict, or None when the text is not a directive group."""
    tokens = text.split()
    if not tokens:
        return None
    out: dict[str, str] = {}
    for tok in tokens:
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
    plan = _Plan(ttft_ms=float(settings["ttft_ms"] or 0), delay_ms=float(settings["chunk_delay_ms"] or 0),
                 words=settings["reply_words"])
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


def _model_min_tokens(model: str) -> int:
    m = model.lower()
    if any(k in m for k in ("opus-4-5", "opus-4-6", "haiku-4")):
        return 4096
    if "haiku-3" in m:
        return 2048
    return 1024


def _block_tokens(block: Any) -> int:
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
        return count_text_tokens(block["text"])
    if isinstance(block, dict):
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return count_text_tokens(_compact(block))


def _iter_blocks(body: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """Yield (tag, canonical block, cache_control) in prefix order tools -> system -> messages."""
    for tool in body.get("tools") or []:
        cc = tool.get("cache_control") if isinstance(tool, dict) else None
        yield "t", tool, cc
    system = body.get("system")
    if isinstance(system, str):
        yield "s", {"type": "text", "text": system}, None
    elif isinstance(system, list):
        for b in system:
            yield "s", b, b.get("cache_control") if isinstance(b, dict) else None
    for i, msg in enumerate(body.get("messages") or []):
        content = msg.get("content")
        tag = f"m{i}{msg.get('role')}"
        if isinstance(content, str):
            yield tag, {"type": "text", "text": content}, None
        elif isinstance(content, list):
            for b in content:
                yield tag, b, b.get("cache_control") if isinstance(b, dict) else None


def _breakpoints(body: dict[str, Any], model: str) -> tuple[int, list[tuple[str, int, float]]]:
    """Return total input tokens and the breakpoints as (prefix key, prefix tokens, ttl seconds)."""
    h = hashlib.sha256(model.encode())
    total = 0
    bps: list[tuple[str, int, float]] = []
    for tag, block, cc in _iter_blocks(body):
        total += _block_tokens(block)
        canon = {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block
        h.update(tag.encode())
        h.update(_compact(canon).encode())
        h.update(b"\x00")
        if cc is not None:
            ttl = _CACHE_TTLS.get(cc.get("ttl", "5m"), 300.0) if isinstance(cc, dict) else 300.0
            bps.append((h.copy().hexdigest(), total, ttl))
    return max(total, 1), bps


def _count_cache_controls(body: dict[str, Any]) -> int:
    return sum(1 for _tag, _b, cc in _iter_blocks(body) if cc is not None)


def _validate_messages_body(body: Any, *, require_max_tokens: bool = True) -> None:
    """Raise _ApiError(400) naming the field, like the API's validation."""
    if not isinstance(body, dict):
        raise _ApiError(400, "body: Input should be a valid dictionary")
    model = body.get("model")
    if "model" not in body:
        raise _ApiError(400, "model: Field required")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "model: Input should be a non-empty string")
    if require_max_tokens:
        if "max_tokens" not in body:
            raise _ApiError(400, "max_tokens: Field required")
        mt = body["max_tokens"]
        if not isinstance(mt, int) or isinstance(mt, bool):
            raise _ApiError(400, "max_tokens: Input should be a valid integer")
        if mt < 1:
            raise _ApiError(400, "max_tokens: Input should be greater than or equal to 1")
    if "messages" not in body:
        raise _ApiError(400, "messages: Field required")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _ApiError(400, "messages: Input should be a valid list")
    if not messages:
        raise _ApiError(400, "messages: at least one message is required")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _ApiError(400, f"messages.{i}: Input should be a valid dictionary")
        if msg.get("role") not in ("user", "assistant"):
            raise _ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            raise _ApiError(400, f"messages.{i}.content: Field required")
        content = msg["content"]
        if isinstance(content, list):
            _validate_blocks(content, f"messages.{i}.content", msg["role"])
        elif isinstance(content, str):
            if not content:
                raise _ApiError(400, f"messages.{i}.content: messages: text content blocks must be non-empty")
        else:
            raise _ApiError(400, f"messages.{i}.content: Input should be a valid string or list of content blocks")
    if messages[0]["role"] != "user":
        raise _ApiError(400, 'messages.0.role: first message must use the "user" role')
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                    raise _ApiError(400, f"system.{j}: Input should be a text block with a string 'text'")
                if not block["text"]:
                    raise _ApiError(400, f"system.{j}.text: system: text content blocks must be non-empty")
        elif not isinstance(system, str):
            raise _ApiError(400, "system: Input should be a valid string or list of text blocks")
    for name in ("temperature", "top_p"):
        if name in body and body[name] is not None:
            v = body[name]
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise _ApiError(400, f"{name}: Input should be a valid number")
            if v < 0:
                raise _ApiError(400, f"{name}: Input should be greater than or equal to 0")
            if v > 1:
                raise _ApiError(400, f"{name}: Input should be less than or equal to 1")
    if "top_k" in body and body["top_k"] is not None:
        v = body["top_k"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _ApiError(400, "top_k: Input should be an integer greater than or equal to 0")
    if "stop_sequences" in body and body["stop_sequences"] is not None:
        ss = body["stop_sequences"]
        if not isinstance(ss, list) or not all(isinstance(s, str) for s in ss):
            raise _ApiError(400, "stop_sequences: Input should be a valid list of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _ApiError(400, "stream: Input should be a valid boolean")
    _validate_tools(body)
    _validate_tool_pairing(messages)
    _output_schema(body)
    for _tag, _block, cc in _iter_blocks(body):
        if cc is None:
            continue
        if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
            raise _ApiError(400, "cache_control.type: Input should be 'ephemeral'")
        if cc.get("ttl", "5m") not in _CACHE_TTLS:
            raise _ApiError(400, "cache_control.ttl: Input should be '5m' or '1h'")
    n = _count_cache_controls(body)
    if n > 4:
        raise _ApiError(400, f"A maximum of 4 blocks with cache_control may be provided. Found {n}.")


def _validate_blocks(blocks: list[Any], where: str, role: str) -> None:
    """Content blocks of one message (or of a tool_result): shapes, non-empty text, tool_result first."""
    seen_other = False
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _ApiError(400, f"{at}.type: Field required")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _ApiError(400, f"{at}.text: Input should be a valid string")
            if not block["text"]:
                raise _ApiError(400, f"{at}.text: messages: text content blocks must be non-empty")
        elif kind in ("tool_use", "server_tool_use"):
            if role != "assistant":
                raise _ApiError(400, f"{at}: {kind} blocks are only allowed in assistant messages")
            for key, typ in (("id", str), ("name", str), ("input", dict)):
                if not isinstance(block.get(key), typ):
                    raise _ApiError(400, f"{at}.{key}: Field required")
        elif kind == "tool_result":
            if role != "user":
                raise _ApiError(400, f"{at}: tool_result blocks are only allowed in user messages")
            if seen_other:
                raise _ApiError(400, f"{at}: tool_result blocks must come first in the user message, "
                                     "before any other content")
            if not isinstance(block.get("tool_use_id"), str):
                raise _ApiError(400, f"{at}.tool_use_id: Field required")
            inner = block.get("content")
            if isinstance(inner, list):
                _validate_blocks(inner, f"{at}.content", "tool_result")
            elif inner is not None and not isinstance(inner, str):
                raise _ApiError(400, f"{at}.content: Input should be a valid string or list of content blocks")
            if "is_error" in block and not isinstance(block["is_error"], bool):
                raise _ApiError(400, f"{at}.is_error: Input should be a valid boolean")
        if kind != "tool_result":
            seen_other = True


def _tool_uses(content: Any, kind: str = "tool_use") -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _validate_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Every tool_use of an assistant turn is answered by a tool_result in the next user turn, and back."""
    for i, msg in enumerate(messages):
        results = _tool_uses(msg["content"], "tool_result") if msg["role"] == "user" else []
        prev = messages[i - 1] if i > 0 else None
        expected = [b["id"] for b in _tool_uses(prev["content"])] if prev and prev["role"] == "assistant" else []
        got = [b["tool_use_id"] for b in results]
        unexpected = [t for t in got if t not in expected]
        if unexpected:
            raise _ApiError(400, f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                                 f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                                 "`tool_use` block in the previous message.")
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            ids = [b["id"] for b in _tool_uses(msg["content"])]
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            answered = {b["tool_use_id"] for b in _tool_uses(nxt["content"], "tool_result")} \
                if nxt and nxt["role"] == "user" else set()
            missing = [t for t in ids if t not in answered]
            if missing:
                raise _ApiError(400, f"messages.{i + 1 if nxt else i}: `tool_use` ids were found without "
                                     f"`tool_result` blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                                     "block must have a corresponding `tool_result` block in the next message.")


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _ApiError(400, "tools: Input should be a valid list")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _ApiError(400, f"tools.{j}: Input should be a valid dictionary")
            kind = tool.get("type", "custom")
            if kind is None:
                kind = "custom"
            if not isinstance(kind, str):
                raise _ApiError(400, f"tools.{j}.type: Input should be a valid string")
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
                raise _ApiError(400, f"tools.{j}.name: Field required (1-128 characters of [a-zA-Z0-9_-])")
            if kind == "custom":
                schema = tool.get("input_schema")
                if schema is None:
                    raise _ApiError(400, f"tools.{j}.custom.input_schema: Field required")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise _ApiError(400, f"tools.{j}.custom.input_schema.type: Input should be 'object'")
            if name in names:
                raise _ApiError(400, f"tools: Tool names must be unique. Duplicate: {name!r}")
            names.append(name)
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
            raise _ApiError(400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and choice.get("name") not in names:
            raise _ApiError(400, f"tool_choice.name: Tool {choice.get('name')!r} not found in tools")
        if choice["type"] in ("any", "tool") and not tools:
            raise _ApiError(400, "tool_choice: tools must be provided when tool_choice is 'any' or 'tool'")
        dp = choice.get("disable_parallel_tool_use")
        if dp is not None and not isinstance(dp, bool):
            raise _ApiError(400, "tool_choice.disable_parallel_tool_use: Input should be a valid boolean")


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of ``output_config.format`` (or the deprecated ``output_format``); 400 when malformed."""
    fmt: Any = None
    where = "output_config.format"
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            raise _ApiError(400, "output_config: Input should be a valid dictionary")
        unknown = sorted(set(config) - {"format", "effort"})
        if unknown:
            raise _ApiError(400, f"output_config.{unknown[0]}: Extra inputs are not permitted")
        if config.get("effort") is not None and config["effort"] not in _EFFORTS:
            raise _ApiError(400, f"output_config.effort: Input should be one of {sorted(_EFFORTS)}")
        fmt = config.get("format")
    if fmt is None and body.get("output_format") is not None:
        fmt, where = body["output_format"], "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _ApiError(400, f"{where}.type: Input should be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _ApiError(400, f"{where}.schema: Field required (a JSON schema object)")
    return schema


_STRING_FORMATS = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00",
                   "email": "user@example.com", "uri": "https://example.com", "uuid":
                   "00000000-0000-4000-8000-000000000000", "ipv4": "127.0.0.1", "hostname": "example.com"}


def schema_instance(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A minimal, deterministic JSON instance of ``schema`` (the emulator's structured-output reply).

    Objects hold every property (required or not); strings are ``"example"`` (or a sample of their
    ``format``), numbers their minimum or 0, booleans false, arrays ``minItems`` (at least one) items,
    enums and ``anyOf``/``oneOf`` take their first (non-null) option, ``$ref`` follows ``$defs``.

    >>> schema_instance({"type": "object", "properties": {"n": {"type": "integer"}, "tags": {"type": "array",
    ...     "items": {"enum": ["a", "b"]}}}})
    {'n': 0, 'tags': ['a']}
    """
    root = schema if root is None else root
    if depth > 32:
        raise _ApiError(400, "output_config.format.schema: too deeply nested (or recursive without a way out)")
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        for part in ref.lstrip("#/").split("/") if ref.startswith("#/") else []:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise _ApiError(400, f"output_config.format.schema: unresolvable $ref {ref!r}")
        return schema_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            if depth > 8 and len(non_null) < len(options):
                return None  # deep recursion through an optional field: stop here
            return schema_instance(non_null[0] if non_null else options[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                value = schema_instance(part, root, depth + 1)
                if isinstance(value, dict):
                    merged.setdefault("_values", {}).update(value)
        if "_values" in merged:
            return merged["_values"]
        return schema_instance(schema["allOf"][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: schema_instance(sub, root, depth + 1) for name, sub in props.items() if isinstance(sub, dict)}
    if kind == "array":
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        count = max(int(schema.get("minItems", 1)), 1)
        if schema.get("maxItems") == 0 or (depth > 8 and not schema.get("minItems")):
            count = 0
        return [schema_instance(items, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else low
        if "maximum" in schema and value > schema["maximum"]:
            value = schema["maximum"]
        return int(math.ceil(value)) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = _STRING_FORMATS.get(str(schema.get("format")), "example")
    min_len = int(schema.get("minLength", 0))
    return text + "x" * max(0, min_len - len(text))


def _invalid_instance(schema: dict[str, Any], instance: Any) -> str:
    """Reply text that fails validation against ``schema``: a required field dropped, else a wrong type."""
    target = schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
    required = target.get("required") if isinstance(target, dict) else None
    if isinstance(instance, dict) and isinstance(required, list) and required:
        broken = {k: v for k, v in instance.items() if k != required[0]}
        return json.dumps(broken)
    return json.dumps({"unexpected": "shape"}) if not isinstance(instance, dict) else '{"truncated": '


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
        if not isinstance(content, list) or any(isinstance(b, dict) and b.get("type") != "tool_result"
                                                for b in content):
            return i
    return max(last_user, 0)


def _prompt_and_groups(body: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    messages = body.get("messages") or []
    text = _text_of(messages[_prompt_index(body)].get("content")) if messages else ""
    groups, stripped = _split_directives(text)
    return " ".join(stripped.split()), groups


def _tool_result_echo(content: Any) -> str:
    """``Echo tool results: ID=TEXT; ID=TEXT (error)`` for the tool_result blocks of a user turn."""
    parts = []
    for b in _tool_uses(content, "tool_result"):
        inner = b.get("content")
        text = _text_of(inner) if inner is not None else ""
        parts.append(f"{b['tool_use_id']}={' '.join(text.split()) or '(empty)'}"
                     + (" (error)" if b.get("is_error") else ""))
    return "Echo tool results: " + "; ".join(parts)


def _json_fragments(value: Any) -> list[str]:
    """The compact JSON of ``value`` cut in three (at least two) ``input_json_delta`` fragments."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    cuts = sorted({max(1, len(text) // 3), max(1, 2 * len(text) // 3)})
    pieces, prev = [], 0
    for c in cuts + [len(text)]:
        if c > prev:
            pieces.append(text[prev:c])
            prev = c
    return pieces


def _check_script(reply: Any) -> list[dict[str, Any]] | str | None:
    """Validate a scripted reply (str, None, or content blocks: text first, then tool blocks)."""
    if reply is None or isinstance(reply, str):
        return reply
    if not isinstance(reply, list) or not reply:
        raise ValueError(f"reply: expected a string, None or a non-empty list of content blocks, got {reply!r}")
    seen_other = False
    out = []
    for j, block in enumerate(reply):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ValueError(f"reply[{j}]: expected a content block dict with a 'type', got {block!r}")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"].strip():
                raise ValueError(f"reply[{j}]: a text block needs a non-empty 'text' string")
            if seen_other:
                raise ValueError(f"reply[{j}]: text blocks must come before the tool blocks")
        elif kind in ("tool_use", "server_tool_use"):
            if not isinstance(block.get("id"), str) or not block["id"]:
                raise ValueError(f"reply[{j}]: a {kind} block needs a non-empty string 'id'")
            if not isinstance(block.get("name"), str) or not _TOOL_NAME_RE.match(block["name"]):
                raise ValueError(f"reply[{j}]: a {kind} block needs a tool 'name'")
            if not isinstance(block.get("input"), dict):
                raise ValueError(f"reply[{j}]: a {kind} block needs an 'input' dict")
            seen_other = True
        elif kind.endswith("_tool_result"):
            if not isinstance(block.get("tool_use_id"), str):
                raise ValueError(f"reply[{j}]: a {kind} block needs a string 'tool_use_id'")
            seen_other = True
        else:
            raise ValueError(f"reply[{j}]: unsupported block type {kind!r}")
        out.append(json.loads(json.dumps(block)))  # a private deep copy; also proves it is JSON
    return out


def _invalid_output(body: dict[str, Any], global_groups: list[dict[str, str]], attempt: int) -> int:
    """1 when ``invalid_output=N`` (from any user message or the global directives) covers this try."""
    n = 0
    for g in global_groups + [g for m in body["messages"] if m["role"] == "user"
                              for g in _split_directives(_text_of(m["content"]))[0]]:
        if "invalid_output" in g:
            try:
                n = int(g["invalid_output"])
            except ValueError:
                raise _ApiError(400, f"directive invalid_output: expected an integer, got {g['invalid_output']!r}") \
                    from None
    tries = attempt + sum(1 for m in body["messages"] if m["role"] == "assistant")
    return 1 if tries <= n else 0


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Emulator:
    """The Anthropic Messages API on 127.0.0.1, on its own thread and event loop.

    Use as a context manager (or ``start()`` / ``stop()``)::

        with Emulator(ttft_ms=50) as emu:
            emu.configure(max_concurrent=10)
            emu.script("hello", "Hi there")
            ...  # point anthropic.Anthropic(base_url=emu.base_url) at it
            assert emu.wait_idle(timeout=5.0)
            print(emu.stats()["peak_concurrency"])

    Every public method is thread-safe and returns snapshots.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.host = host
        self.port = port
        self._initial = dict(DEFAULT_SETTINGS)
        self._initial.update(self._checked_settings(settings))
        _global_groups(self._initial["directives"])  # fail fast on a malformed spec
        self._settings = dict(self._initial)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clock_offset = 0.0
        self._clear_state()

    # ------------------------------------------------------------------ settings and state

    @staticmethod
    def _checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise TypeError(f"unknown emulator setting(s) {unknown}; expected some of {sorted(DEFAULT_SETTINGS)}")
        for name in ("ttft_ms", "chunk_delay_ms", "ping_every", "batch_seconds_per_request",
                     "batch_retrieve_404_times", "batch_create_delay_ms"):
            if name in settings and (not isinstance(settings[name], (int, float)) or settings[name] < 0):
                raise ValueError(f"{name}: expected a number >= 0, got {settings[name]!r}")
        for name in ("reply_words", "rate_limit_requests", "max_concurrent", "cache_min_tokens"):
            v = settings.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name}: expected None or an integer >= 0, got {v!r}")
        for name in ("rate_limit_rpm", "rate_limit_itpm", "rate_limit_otpm"):
            v = settings.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}: expected None or an integer >= 1, got {v!r}")
        for name in ("rate_limit_window_s", "rate_limit_minute_s"):
            if name in settings:
                v = settings[name]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"{name}: expected a number > 0, got {v!r}")
        if "api_key" in settings and settings["api_key"] is not None and not isinstance(settings["api_key"], str):
            raise ValueError("api_key: expected None or a string")
        if "directives" in settings and not isinstance(settings["directives"], str):
            raise ValueError(f"directives: expected a string, got {type(settings['directives']).__name__}")
        return settings

    def _clear_state(self) -> None:
        self._records: list[RequestRecord] = []
        self._seq = 0
        self._attempts: dict[str, int] = {}
        self._scripts: dict[str, str | list[dict[str, Any]]] = {}
        self._cache: dict[str, _CacheEntry] = {}
        self._cache_counts = {"writes": 0, "reads": 0, "write_tokens": 0, "read_tokens": 0}
        self._active: set[int] = set()  # seq of admitted in-flight /v1/messages requests
        self._inflight: int = 0  # requests on any path being handled
        self._peak = 0
        self._rate_limited = 0
        self._connections = 0
        self._seen_transports: weakref.WeakSet[Any] = weakref.WeakSet()
        self._bucket: _Bucket | None = None
        self._bucket_key: tuple[Any, Any] | None = None
        # (model, "rpm" | "itpm" | "otpm") -> (limit, minute_s, bucket)
        self._model_buckets: dict[tuple[str, str], tuple[int, float, _Bucket]] = {}
        self._batches: dict[str, _Batch] = {}
        self._global_groups_cache: tuple[str, list[dict[str, str]]] = ("", [])

    def configure(self, **settings: Any) -> None:
        """Change settings at run time, e.g. ``emu.configure(chunk_delay_ms=5, max_concurrent=10)``."""
        checked = self._checked_settings(settings)
        if "directives" in checked:
            _global_groups(checked["directives"])
        with self._lock:
            self._settings.update(checked)

    @property
    def settings(self) -> dict[str, Any]:
        """A copy of the current settings."""
        with self._lock:
            return dict(self._settings)

    def script(self, prompt: str, reply: str | list[dict[str, Any]] | None) -> None:
        """Answer ``reply`` to the exact (directive-stripped, whitespace-collapsed) ``prompt``; None removes it.

        ``reply`` is a text, or a list of content blocks: optional ``{"type": "text", "text": ...}`` blocks
        first (joined into one text block), then ``tool_use`` / ``server_tool_use`` blocks (``id``, ``name``,
        ``input`` dict) and server-tool result blocks (``type`` ending in ``_tool_result``). A reply holding
        tool_use blocks stops with ``tool_use`` while the conversation has fewer tool_result turns than
        ``tool_turns`` (default 1); after that the tool results are echoed. A malformed reply raises
        ValueError here. Tool names are checked against each request's ``tools`` (400 when absent).
        """
        checked = _check_script(reply)
        key = " ".join(_split_directives(prompt)[1].split())
        with self._lock:
            if checked is None:
                self._scripts.pop(key, None)
            else:
                self._scripts[key] = checked

    def script_tool_use(self, prompt: str, calls: list[tuple[str, dict[str, Any]]], *, text: str | None = None) -> None:
        """Script a tool-call turn for ``prompt``: one tool_use block per ``(name, input)``, after ``text``.

        Ids are deterministic (``toolu_emu_`` + a hash of the prompt, position and name).
        """
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for i, call in enumerate(calls):
            if not isinstance(call, tuple) or len(call) != 2:
                raise ValueError(f"calls[{i}]: expected a (name, input) tuple, got {call!r}")
            name, tool_input = call
            digest = hashlib.sha256(f"{prompt}|{i}|{name}".encode()).hexdigest()[:24]
            blocks.append({"type": "tool_use", "id": f"toolu_emu_{digest}", "name": name, "input": tool_input})
        self.script(prompt, blocks)

    def reset(self) -> None:
        """Clear logs, stats, cache, attempts, rate-limit state, scripts, batches and the clock offset;
        settings go back to their construction values."""
        with self._lock:
            active = set(self._active)
            inflight = self._inflight
            self._clear_state()
            self._active = active
            self._inflight = inflight
            self._peak = len(active)
            self._settings = dict(self._initial)
            self._clock_offset = 0.0

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward (cache TTLs, rate-limit windows, batch processing)."""
        if seconds < 0:
            raise ValueError(f"seconds: expected a number >= 0, got {seconds!r}")
        with self._lock:
            self._clock_offset += seconds

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _wall(self) -> float:
        return time.time() + self._clock_offset

    # ------------------------------------------------------------------ introspection

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` once started."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request on every path, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def message_requests(self) -> list[RequestRecord]:
        """Snapshot of the ``POST /v1/messages`` records only."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records
                    if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def peak_concurrency(self) -> int:
        """Most admitted /v1/messages requests in flight at once since reset."""
        with self._lock:
            return self._peak

    @property
    def active_requests(self) -> int:
        """Admitted /v1/messages requests in flight now."""
        with self._lock:
            return len(self._active)

    @property
    def connection_count(self) -> int:
        """Distinct TCP connections that carried a request since reset."""
        with self._lock:
            return self._connections

    def cache_stats(self) -> dict[str, int]:
        """``{"writes", "reads", "write_tokens", "read_tokens"}`` since reset (counted when responses begin)."""
        with self._lock:
            return dict(self._cache_counts)

    def stats(self) -> dict[str, Any]:
        """Counters since reset: requests, messages, active, peak_concurrency, aborted, connections,
        status_counts, rate_limited, cache_writes, cache_reads, cache_write_tokens, cache_read_tokens."""
        with self._lock:
            status_counts: dict[int, int] = {}
            messages = aborted = 0
            for r in self._records:
                if r.status is not None:
                    status_counts[r.status] = status_counts.get(r.status, 0) + 1
                if r.method == "POST" and r.path == "/v1/messages":
                    messages += 1
                if r.aborted:
                    aborted += 1
            return {
                "requests": len(self._records),
                "messages": messages,
                "active": len(self._active),
                "peak_concurrency": self._peak,
                "aborted": aborted,
                "connections": self._connections,
                "status_counts": status_counts,
                "rate_limited": self._rate_limited,
                "cache_writes": self._cache_counts["writes"],
                "cache_reads": self._cache_counts["reads"],
                "cache_write_tokens": self._cache_counts["write_tokens"],
                "cache_read_tokens": self._cache_counts["read_tokens"],
            }

    def batches(self) -> list[dict[str, Any]]:
        """Snapshot of every message batch created since reset (API objects, oldest first)."""
        with self._lock:
            now, wall = self._now(), self._wall()
            out = []
            for b in self._batches.values():
                self._advance_batch(b, now)
                out.append(self._batch_json(b, wall))
            return out

    def wait_for(self, predicate: Callable[[Emulator], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true; return False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Return True once no request is in flight (False after ``timeout`` seconds)."""
        def _idle(e: Emulator) -> bool:
            with e._lock:
                return e._inflight == 0 and not e._active
        return self.wait_for(_idle, timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Start listening (blocks until ready); returns self."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def _run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=_run, name="anthropic-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failure[0]
        log.debug("anthropic emulator listening on %s", self.base_url)
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._h_messages)
        app.router.add_post("/v1/messages/count_tokens", self._h_count_tokens)
        app.router.add_post("/v1/messages/batches", self._h_batch_create)
        app.router.add_get("/v1/messages/batches", self._h_batch_list)
        app.router.add_get("/v1/messages/batches/{id}", self._h_batch_retrieve)
        app.router.add_delete("/v1/messages/batches/{id}", self._h_batch_delete)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._h_batch_cancel)
        app.router.add_get("/v1/messages/batches/{id}/results", self._h_batch_results)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=2048, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    def stop(self) -> None:
        """Close open streams and stop the server (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("emulator shutdown error", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._runner = None

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"http://{self.host}:{self.port}" if self._runner is not None else "stopped"
        return f"<Emulator {where}>"

    # ------------------------------------------------------------------ HTTP plumbing

    def _ratelimit_headers(self, model: str | None = None) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers for ``model`` (call with the lock held).

        Honest for every configured bucket: ``limit`` is the per-minute limit, ``remaining`` what the
        bucket holds now (token figures rounded down to the nearest thousand, as the API rounds them),
        ``reset`` the RFC 3339 time at which the bucket would be full again. ``tokens-*`` repeats the
        token bucket with the least remaining. Unset limits keep nominal figures.
        """
        now, wall = self._now(), self._wall()
        bucket = self._current_bucket(now)
        if bucket is None and model is not None:
            bucket = self._model_bucket(model, "rpm", now)
        if bucket is not None:
            limit, remaining = bucket.capacity, bucket.remaining(now)
            reset = _rfc3339(wall + bucket.seconds_to_full(now))
        else:
            limit, remaining, reset = 1_000_000, 1_000_000, _rfc3339(wall)
        h = {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset,
        }
        tightest: tuple[int, int, str] | None = None
        for kind, key in (("input-tokens", "itpm"), ("output-tokens", "otpm")):
            tb = self._model_bucket(model, key, now) if model is not None else None
            if tb is None:
                figures = (_NOMINAL_TOKEN_LIMIT, _NOMINAL_TOKEN_LIMIT, _rfc3339(wall))
            else:
                figures = (tb.capacity, tb.remaining(now) // 1000 * 1000,
                           _rfc3339(wall + math.ceil(tb.seconds_to_full(now))))
                if tightest is None or figures[1] < tightest[1]:
                    tightest = figures
            h[f"anthropic-ratelimit-{kind}-limit"] = str(figures[0])
            h[f"anthropic-ratelimit-{kind}-remaining"] = str(figures[1])
            h[f"anthropic-ratelimit-{kind}-reset"] = figures[2]
        if tightest is None:
            tightest = (_NOMINAL_TOKEN_LIMIT, _NOMINAL_TOKEN_LIMIT, _rfc3339(wall))
        h["anthropic-ratelimit-tokens-limit"] = str(tightest[0])
        h["anthropic-ratelimit-tokens-remaining"] = str(tightest[1])
        h["anthropic-ratelimit-tokens-reset"] = tightest[2]
        return h

    def _current_bucket(self, now: float) -> _Bucket | None:
        n, window = self._settings["rate_limit_requests"], self._settings["rate_limit_window_s"]
        if n is None:
            return None
        if self._bucket is None or self._bucket_key != (n, window):
            self._bucket = _Bucket(n, float(window), now)
            self._bucket_key = (n, window)
        return self._bucket

    def _model_bucket(self, model: str, kind: str, now: float) -> _Bucket | None:
        """The per-model ``rpm`` / ``itpm`` / ``otpm`` bucket, None when that limit is unset (lock held).

        A bucket holds one "minute" (``rate_limit_minute_s`` seconds) of its limit and refills at
        limit / minute continuously; changing the limit or the minute starts a full new bucket.
        """
        limit = self._settings[f"rate_limit_{kind}"]
        if limit is None:
            return None
        minute = float(self._settings["rate_limit_minute_s"])
        cur = self._model_buckets.get((model, kind))
        if cur is None or cur[0] != limit or cur[1] != minute:
            cur = (limit, minute, _Bucket(limit, minute, now))
            self._model_buckets[(model, kind)] = cur
        return cur[2]

    def _base_headers(self, request: web.Request) -> dict[str, str]:
        rec: RequestRecord = request[_REC_KEY]
        with self._lock:
            h = self._ratelimit_headers(rec.model)
        h["request-id"] = request[_RID_KEY]
        return h

    def _error_response(self, request: web.Request, err: _ApiError) -> web.Response:
        rec: RequestRecord = request[_REC_KEY]
        with self._lock:
            rec.status = err.status
            rec.error_type = err.error_type
        headers = self._base_headers(request)
        headers.update(err.headers)
        body = {"type": "error", "error": {"type": err.error_type, "message": err.message},
                "request_id": request[_RID_KEY]}
        return web.json_response(body, status=err.status, headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        with self._lock:
            self._seq += 1
            rec = RequestRecord(seq=self._seq, method=request.method, path=request.path,
                                retry_count_header=request.headers.get("x-stainless-retry-count"),
                                started_at=time.monotonic())
            self._records.append(rec)
            self._inflight += 1
            transport = request.transport
            if transport is not None and transport not in self._seen_transports:
                self._seen_transports.add(transport)
                self._connections += 1
        request[_REC_KEY] = rec
        request[_RID_KEY] = _new_id("req_emu_")
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                self._check_auth(request)
                resp = await handler(request)
            except _ApiError as err:
                return self._error_response(request, err)
            except web.HTTPException as exc:
                status = exc.status if exc.status >= 400 else 404
                return self._error_response(request, _ApiError(status, exc.reason or None))
            with self._lock:
                if rec.status is None:
                    rec.status = resp.status
            return resp
        except asyncio.CancelledError:
            with self._lock:
                rec.aborted = True
            raise
        except ConnectionResetError:
            # The client left while we wrote: same outcome as a cancelled handler, without aiohttp's
            # "Error handling request" log.
            with self._lock:
                rec.aborted = True
            raise asyncio.CancelledError() from None
        finally:
            with self._lock:
                rec.ended_at = time.monotonic()
                self._inflight -= 1
                self._active.discard(rec.seq)
            if task is not None:
                self._tasks.discard(task)

    def _check_auth(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if not key:
            raise _ApiError(401, "x-api-key header is required")
        required = self._settings["api_key"]
        if required is not None and key != required:
            raise _ApiError(401, "invalid x-api-key")

    async def _json_body(self, request: web.Request) -> Any:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(400, "body: There was an error parsing the body as JSON") from None
        rec: RequestRecord = request[_REC_KEY]
        if isinstance(body, dict):
            with self._lock:
                rec.body = body
                rec.model = body.get("model") if isinstance(body.get("model"), str) else None
                rec.stream = body.get("stream") is True
        return body

    # ------------------------------------------------------------------ /v1/messages

    def _compute(self, body: dict[str, Any], prompt: str, plan: _Plan, *, service_tier: str = "standard",
                 default_ttl: float | None = None) -> _Computed:
        """Reply words, usage and the cache lookup (call with the lock held)."""
        reply, blocks, stop_reason = self._reply(body, prompt, plan)
        words = reply.split()
        if plan.words is not None and not blocks:
            words = [words[i % len(words)] for i in range(plan.words)] if words else []
        stop_sequence = None
        stops = [seq for seq in body.get("stop_sequences") or [] if seq]
        if stops and words:
            text = " ".join(words)
            hits = [(text.find(seq), seq) for seq in stops if seq in text]
            if hits:
                idx, stop_sequence = min(hits)
                words = text[:idx].split()
                stop_reason = "stop_sequence"
        if len(words) > body["max_tokens"]:
            words, blocks = words[: body["max_tokens"]], []
            stop_reason, stop_sequence = "max_tokens", None
        out_tokens = len(words)
        for i, block in enumerate(blocks):
            out_tokens += _block_tokens(block)
            if out_tokens > body["max_tokens"]:  # a tool block that does not fit is cut with the rest
                out_tokens -= _block_tokens(block)
                blocks = blocks[:i]
                stop_reason, stop_sequence = "max_tokens", None
                break
        model = body["model"]
        total, bps = _breakpoints(body, model)
        now = self._now()
        read_tokens = 0
        read_idx = -1
        for i in range(len(bps) - 1, -1, -1):
            entry = self._cache.get(bps[i][0])
            if entry is not None and entry.expires > now:  # refreshed by _commit_cache once admitted
                read_tokens, read_idx = entry.tokens, i
                break
        minimum = self._settings["cache_min_tokens"]
        if minimum is None:
            minimum = _model_min_tokens(model)
        writes = [bp for bp in bps[read_idx + 1:] if bp[1] >= minimum and bp[1] > read_tokens]
        split = {300.0: 0, 3600.0: 0}
        prev = read_tokens
        for _key, tokens, ttl in writes:
            split[ttl] = split.get(ttl, 0) + tokens - prev
            prev = tokens
        creation = prev - read_tokens
        usage = {
            "input_tokens": total - read_tokens - creation,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": split[300.0], "ephemeral_1h_input_tokens": split[3600.0]},
            "service_tier": service_tier,
        }
        return _Computed(words=words, stop_reason=stop_reason, stop_sequence=stop_sequence, usage=usage,
                         pending_writes=[(k, ttl, t) for k, t, ttl in writes],
                         read_tokens=read_tokens, creation_tokens=creation, blocks=blocks,
                         hit_key=bps[read_idx][0] if read_idx >= 0 else None)

    def _reply(self, body: dict[str, Any], prompt: str, plan: _Plan) -> tuple[str, list[dict[str, Any]], str]:
        """Reply text, the tool blocks after it and the stop reason (call with the lock held).

        In order: a pause turn (``pause_turns``); a tool-call turn (scripted tool_use, ``tool=``, or a
        forced ``tool_choice``); structured output (``output_config.format``); the echo of the
        tool_result blocks of the last user turn; the scripted text; ``"Echo: " + prompt``.
        """
        messages = body["messages"]
        start = _prompt_index(body)
        later = messages[start + 1:]
        tools = {t["name"]: t for t in body.get("tools") or []}
        tag = hashlib.sha256(f"{prompt}|{len(messages)}".encode()).hexdigest()
        # Pauses so far: server_tool_use blocks after the prompt, or the number in our ids ("..._K"), so that
        # a client may append each paused turn or replace the last one.
        done = [b["id"] for m in later if m["role"] == "assistant" for b in _tool_uses(m["content"], "server_tool_use")]
        pauses = max([len(done)] + [int(d.rsplit("_", 1)[1]) for d in done if re.fullmatch(r"srvtoolu_emu_\w+_\d+", d)])
        if pauses < plan.pause_turns:
            server = [t for t in tools.values() if t.get("type", "custom") not in ("custom", None)]
            if not server:
                raise _ApiError(400, "directive pause_turns: the request has no server tool in tools")
            name, sid = server[0]["name"], f"srvtoolu_emu_{tag[:20]}_{pauses + 1}"
            result: Any = [{"type": "web_search_result", "url": f"https://example.com/{i}", "title": f"Result {i}",
                            "encrypted_content": f"enc{i}", "page_age": None} for i in (1, 2)]
            if name != "web_search":
                result = {"type": f"{name}_result", "content": []}
            kind = "web_search_tool_result" if name == "web_search" else f"{name}_tool_result"
            return "", [{"type": "server_tool_use", "id": sid, "name": name, "input": {"query": prompt or "emulator"}},
                        {"type": kind, "tool_use_id": sid, "content": result}], "pause_turn"
        scripted = self._scripts.get(prompt)
        script_text = scripted if isinstance(scripted, str) else \
            " ".join(b["text"] for b in scripted or [] if b["type"] == "text")
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        result_turns = sum(1 for m in later if m["role"] == "user" and _tool_uses(m["content"], "tool_result"))
        calls: list[dict[str, Any]] = []
        if choice != "none" and result_turns < plan.tool_turns:
            if isinstance(scripted, list):
                calls = [b for b in scripted if b["type"] != "text"]
            for i, (name, tool_input) in enumerate(plan.tool_calls):
                calls.append({"type": "tool_use", "id": f"toolu_emu_{tag[:16]}{i:08d}", "name": name,
                              "input": tool_input})
        if not calls and choice in ("any", "tool"):
            forced = body["tool_choice"].get("name") if choice == "tool" else \
                next((n for n, t in tools.items() if t.get("type", "custom") in ("custom", None)), None)
            if forced is not None:
                schema = tools[forced].get("input_schema") or {}
                calls = [{"type": "tool_use", "id": f"toolu_emu_{tag[:24]}", "name": forced,
                          "input": schema_instance(schema) if schema else {}}]
        if calls:
            for b in calls:
                if b["type"] == "tool_use" and b["name"] not in tools:
                    raise _ApiError(400, f"tool {b['name']!r} is not in the request's tools "
                                         f"({', '.join(tools) or 'none given'})")
            names = [b["name"] for b in calls if b["type"] == "tool_use"]
            text = script_text if isinstance(scripted, list) else \
                (f"Calling {', '.join(names)}." if plan.preamble else "")
            return text, calls, "tool_use" if names else "end_turn"
        schema = _output_schema(body)
        if schema is not None:
            instance = schema_instance(schema)
            if plan.invalid_output:
                return _invalid_instance(schema, instance), [], "end_turn"
            return json.dumps(instance, ensure_ascii=False), [], "end_turn"
        if messages[-1]["role"] == "user" and _tool_uses(messages[-1]["content"], "tool_result"):
            return _tool_result_echo(messages[-1]["content"]), [], "end_turn"
        if script_text:
            return script_text, [], "end_turn"
        return (f"Echo: {prompt}" if prompt else "Echo:"), [], "end_turn"

    def _commit_cache(self, comp: _Computed) -> None:
        """The response began: the request's cache writes become readable (call with the lock held)."""
        now = self._now()
        hit = self._cache.get(comp.hit_key) if comp.hit_key is not None else None
        if hit is not None and hit.expires > now:
            hit.expires = max(hit.expires, now + hit.ttl)
        for key, ttl, tokens in comp.pending_writes:
            entry = self._cache.get(key)
            if entry is not None and entry.expires > now:
                entry.expires = max(entry.expires, now + ttl)
                entry.ttl = max(entry.ttl, ttl)
            else:
                self._cache[key] = _CacheEntry(expires=now + ttl, ttl=ttl, tokens=tokens)
        if comp.creation_tokens:
            self._cache_counts["writes"] += 1
            self._cache_counts["write_tokens"] += comp.creation_tokens
        if comp.read_tokens:
            self._cache_counts["reads"] += 1
            self._cache_counts["read_tokens"] += comp.read_tokens

    def _rate_limit_check(self, model: str, comp: _Computed, max_tokens: int) -> _ApiError | None:
        """Admission control (call with the lock held): concurrency, then every bucket at once.

        ITPM is charged ``input_tokens + cache_creation_input_tokens`` (cache reads are free), OTPM
        ``max_tokens`` (refunded to the real output by :meth:`_settle`); nothing is taken unless all fit.
        """
        max_conc = self._settings["max_concurrent"]
        if max_conc is not None and len(self._active) >= max_conc:
            self._rate_limited += 1
            return _ApiError(429, f"Number of concurrent requests has exceeded your limit of {max_conc}.",
                             headers={"retry-after": "1"})
        now = self._now()
        minute = float(self._settings["rate_limit_minute_s"])
        per = "minute" if minute == 60 else f"{minute:g} seconds"
        itpm = comp.usage["input_tokens"] + comp.usage["cache_creation_input_tokens"]
        checks: list[tuple[_Bucket, int, str]] = []
        bucket = self._current_bucket(now)
        if bucket is not None:
            checks.append((bucket, 1, f"{bucket.capacity} requests per "
                                      f"{self._settings['rate_limit_window_s']:g} seconds"))
        for kind, amount, what in (("rpm", 1, "requests"), ("itpm", itpm, "input tokens"),
                                   ("otpm", max_tokens, "output tokens")):
            mb = self._model_bucket(model, kind, now)
            if mb is not None:
                checks.append((mb, amount, f"{mb.capacity:,} {what} per {per} (model {model})"))
        waits = [(b.wait(now, amount), what) for b, amount, what in checks]
        late = [(w, what) for w, what in waits if w > 0]
        if late:
            self._rate_limited += 1
            wait = max(w for w, _ in late)
            return _ApiError(429, f"This request would exceed your organization's rate limit of {late[0][1]}.",
                             headers={"retry-after": str(max(1, math.ceil(wait)))})
        for b, amount, _what in checks:
            b.take(now, amount)
        comp.otpm = self._model_bucket(model, "otpm", now)
        comp.otpm_charged = max_tokens if comp.otpm is not None else 0
        return None

    def _settle(self, comp: _Computed, output_tokens: int) -> None:
        """Refund the OTPM charge down to the real output (idempotent; call with the lock held)."""
        if comp.otpm is not None and comp.otpm_charged > output_tokens:
            comp.otpm.give(self._now(), comp.otpm_charged - output_tokens)
        comp.otpm, comp.otpm_charged = None, 0

    async def _h_messages(self, request: web.Request) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        body = await self._json_body(request)
        _validate_messages_body(body)
        prompt, groups = _prompt_and_groups(body)
        fp = _fingerprint(body)
        with self._lock:
            attempt = self._attempts.get(fp, 0) + 1
            self._attempts[fp] = attempt
            rec.attempt = attempt
            rec.prompt = prompt
            spec = self._settings["directives"]
            if self._global_groups_cache[0] != spec:
                self._global_groups_cache = (spec, _global_groups(spec))
            plan = _build_plan(self._global_groups_cache[1] + groups, attempt, self._settings)
            plan.invalid_output = _invalid_output(body, self._global_groups_cache[1], attempt)
            ping_every = int(self._settings["ping_every"] or 0)
        if plan.fail is not None:
            headers: dict[str, str] = {}
            if plan.fail == 429:
                headers["retry-after"] = plan.retry_after or "1"
            elif plan.retry_after is not None:
                headers["retry-after"] = plan.retry_after
            if plan.retry_after_ms is not None:
                headers["retry-after-ms"] = plan.retry_after_ms
            if plan.should_retry is not None:
                headers["x-should-retry"] = plan.should_retry
            raise _ApiError(plan.fail, headers=headers)
        with self._lock:
            comp = self._compute(body, prompt, plan)
            limited = self._rate_limit_check(body["model"], comp, body["max_tokens"])
            if limited is None:
                self._active.add(rec.seq)
                self._peak = max(self._peak, len(self._active))
        if limited is not None:
            raise limited
        if plan.ttft_ms > 0:
            await asyncio.sleep(plan.ttft_ms / 1000)
        if body.get("stream") is True:
            return await self._stream(request, body, plan, comp, ping_every)
        return await self._non_stream(request, body, plan, comp)

    def _message_json(self, body: dict[str, Any], comp: _Computed, msg_id: str) -> dict[str, Any]:
        text = [{"type": "text", "text": " ".join(comp.words)}] if comp.words or not comp.blocks else []
        return {
            "id": msg_id, "type": "message", "role": "assistant", "model": body["model"],
            "content": text + [dict(b) for b in comp.blocks],
            "stop_reason": comp.stop_reason, "stop_sequence": comp.stop_sequence, "usage": comp.usage,
        }

    async def _non_stream(self, request: web.Request, body: dict[str, Any], plan: _Plan,
                          comp: _Computed) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        try:
            if plan.stall_after is not None:
                await asyncio.Event().wait()  # until the client leaves (the task is cancelled)
            if plan.error_after is not None:
                raise _ApiError(529)
            if plan.delay_ms > 0 and comp.words:
                await asyncio.sleep(plan.delay_ms * len(comp.words) / 1000)
            msg = self._message_json(body, comp, _new_id("msg_emu_"))
            with self._lock:
                self._commit_cache(comp)
                self._settle(comp, comp.usage["output_tokens"])
                rec.usage = comp.usage
                rec.emitted_text = " ".join(comp.words)
                rec.status = 200
            return web.json_response(msg, headers=self._base_headers(request))
        finally:
            with self._lock:
                self._settle(comp, 0)

    async def _stream(self, request: web.Request, body: dict[str, Any], plan: _Plan, comp: _Computed,
                      ping_every: int) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        headers = self._base_headers(request)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        with self._lock:
            rec.status = 200
        await resp.prepare(request)
        start_usage = dict(comp.usage)
        start_usage["output_tokens"] = 1 if comp.words or comp.blocks else 0
        start_usage["cache_creation"] = dict(comp.usage["cache_creation"])
        msg_id = _new_id("msg_emu_")
        await resp.write(_sse("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}))
        with self._lock:
            self._commit_cache(comp)
        has_text = bool(comp.words) or not comp.blocks
        if has_text:
            await resp.write(
                _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
                + _sse("ping", {"type": "ping"}))
        else:
            await resp.write(_sse("ping", {"type": "ping"}))
        words = comp.words
        n = len(words)
        sent = 0
        delay = plan.delay_ms / 1000
        try:
            for i, word in enumerate(words):
                if plan.stall_after is not None and i >= plan.stall_after:
                    await self._stall(resp, plan)
                if plan.error_after is not None and i >= plan.error_after:
                    await self._stream_error(resp, rec)
                    return resp
                if delay > 0:
                    await asyncio.sleep(delay)
                text = word if i == n - 1 else word + " "
                chunk = _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": text}})
                if ping_every and (i + 1) % ping_every == 0:
                    chunk += _sse("ping", {"type": "ping"})
                await resp.write(chunk)
                sent += 1
                with self._lock:
                    rec.emitted_text += text
            if plan.stall_after is not None and plan.stall_after >= n:
                await self._stall(resp, plan)
            if plan.error_after is not None and plan.error_after >= n:
                await self._stream_error(resp, rec)
                return resp
            final = dict(comp.usage)
            tail = _sse("content_block_stop", {"type": "content_block_stop", "index": 0}) if has_text else b""
            for index, block in enumerate(comp.blocks, start=1 if has_text else 0):
                tail += self._block_events(index, block)
                sent += _block_tokens(block)
            with self._lock:  # recorded before the client can see message_stop and read the log
                rec.usage = final
                self._settle(comp, final["output_tokens"])
            await resp.write(
                tail
                + _sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": comp.stop_reason,
                                                   "stop_sequence": comp.stop_sequence},
                                         "usage": {"input_tokens": final["input_tokens"],
                                                   "cache_creation_input_tokens": final["cache_creation_input_tokens"],
                                                   "cache_read_input_tokens": final["cache_read_input_tokens"],
                                                   "output_tokens": final["output_tokens"]}})
                + _sse("message_stop", {"type": "message_stop"}))
            await resp.write_eof()
            return resp
        finally:
            with self._lock:
                self._settle(comp, sent)
                if rec.usage is None:
                    partial = dict(comp.usage)
                    partial["output_tokens"] = sent
                    rec.usage = partial

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> bytes:
        """SSE events of one non-text block: tool inputs arrive as input_json_delta fragments."""
        if block["type"] in ("tool_use", "server_tool_use"):
            out = _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {**block, "input": {}}})
            for piece in _json_fragments(block["input"]):
                out += _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": piece}})
        else:
            out = _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        return out + _sse("content_block_stop", {"type": "content_block_stop", "index": index})

    async def _stall(self, resp: web.StreamResponse, plan: _Plan) -> None:
        """Keep the connection open without progress until the client leaves (the task is cancelled)."""
        if plan.stall_pings:
            while True:
                await asyncio.sleep(plan.stall_pings / 1000)
                await resp.write(_sse("ping", {"type": "ping"}))
        await asyncio.Event().wait()

    async def _stream_error(self, resp: web.StreamResponse, rec: RequestRecord) -> None:
        with self._lock:
            rec.error_type = "overloaded_error"
        await resp.write(_sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        await resp.write_eof()

    async def _h_count_tokens(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        _validate_messages_body(body, require_max_tokens=False)
        total, _bps = _breakpoints(body, body["model"])
        return web.json_response({"input_tokens": total}, headers=self._base_headers(request))

    # ------------------------------------------------------------------ message batches

    def _batch_json(self, b: _Batch, wall: float) -> dict[str, Any]:
        if b.ended_at is not None:
            status = "ended"
        elif b.cancel_at is not None:
            status = "canceling"
        else:
            status = "in_progress"
        ended_wall = None if b.ended_at is None else b.created_wall + (b.ended_at - b.created)
        return {
            "id": b.id, "type": "message_batch", "processing_status": status,
            "request_counts": dict(b.counts),
            "created_at": _rfc3339(b.created_wall),
            "expires_at": _rfc3339(b.created_wall + _BATCH_LIFETIME_S),
            "ended_at": None if ended_wall is None else _rfc3339(ended_wall),
            "cancel_initiated_at": None if b.cancel_wall is None else _rfc3339(b.cancel_wall),
            "archived_at": None,
            "results_url": f"{b.results_base}/v1/messages/batches/{b.id}/results" if status == "ended" else None,
        }

    def _batch_item_result(self, item: _BatchItem) -> dict[str, Any]:
        """Process one batch request (call with the lock held)."""
        params = item.params
        try:
            _validate_messages_body(params)
            if params.get("stream") is True:
                raise _ApiError(400, "stream: streaming is not supported in message batches")
            prompt, groups = _prompt_and_groups(params)
            plan = _build_plan(groups, 1, {**self._settings, "ttft_ms": 0, "chunk_delay_ms": 0})
            plan.invalid_output = _invalid_output(params, [], 1)
            comp = self._compute(params, prompt, plan, service_tier="batch")
        except _ApiError as err:
            return {"type": "errored", "error": {"type": "error", "error": {"type": err.error_type,
                                                                           "message": err.message}}}
        if plan.batch == "expired":
            return {"type": "expired"}
        if plan.batch == "errored" or plan.fail is not None:
            err = _ApiError(plan.fail if plan.fail is not None else 500)
            return {"type": "errored", "error": {"type": "error", "error": {"type": err.error_type,
                                                                           "message": err.message}}}
        self._commit_cache(comp)
        return {"type": "succeeded", "message": self._message_json(params, comp, _new_id("msg_emu_"))}

    def _advance_batch(self, b: _Batch, now: float) -> None:
        """Bring a batch up to the emulator clock ``now`` (call with the lock held)."""
        if b.ended_at is not None:
            return
        n = len(b.items)
        cancel_done = None if b.cancel_at is None else b.cancel_at + b.spr
        expiry = b.created + _BATCH_LIFETIME_S
        while b.done < n:
            due = b.created + (b.done + 1) * b.spr
            if due > now or due > expiry or (cancel_done is not None and due > cancel_done):
                break
            item = b.items[b.done]
            item.result = self._batch_item_result(item)
            b.counts["processing"] -= 1
            b.counts[item.result["type"]] += 1
            b.done += 1
        if b.done == n:
            b.ended_at = min(now, b.created + n * b.spr)
            return
        for limit, kind in ((cancel_done, "canceled"), (expiry, "expired")):
            if limit is not None and now >= limit:
                for item in b.items[b.done:]:
                    item.result = {"type": kind}
                    b.counts["processing"] -= 1
                    b.counts[kind] += 1
                b.done = n
                b.ended_at = limit
                return

    def _get_batch(self, request: web.Request) -> _Batch:
        b = self._batches.get(request.match_info["id"])
        if b is None:
            raise _ApiError(404, f"Message batch {request.match_info['id']!r} not found")
        return b

    async def _h_batch_create(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise _ApiError(400, "body: Input should be a valid dictionary")
        reqs = body.get("requests")
        if "requests" not in body:
            raise _ApiError(400, "requests: Field required")
        if not isinstance(reqs, list) or not reqs:
            raise _ApiError(400, "requests: at least one request is required")
        if len(reqs) > _BATCH_MAX_REQUESTS:
            raise _ApiError(400, f"requests: at most {_BATCH_MAX_REQUESTS} requests are allowed, got {len(reqs)}")
        seen: set[str] = set()
        items: list[_BatchItem] = []
        for i, r in enumerate(reqs):
            if not isinstance(r, dict):
                raise _ApiError(400, f"requests.{i}: Input should be a valid dictionary")
            cid = r.get("custom_id")
            if not isinstance(cid, str) or not _CUSTOM_ID_RE.match(cid):
                raise _ApiError(400, f"requests.{i}.custom_id: expected 1-64 characters of [A-Za-z0-9_-], got {cid!r}")
            if cid in seen:
                raise _ApiError(400, f"requests.{i}.custom_id: duplicate custom_id {cid!r}; "
                                     "custom_id must be unique within the batch")
            seen.add(cid)
            if not isinstance(r.get("params"), dict):
                raise _ApiError(400, f"requests.{i}.params: Field required")
            items.append(_BatchItem(custom_id=cid, params=r["params"]))
        with self._lock:
            b = _Batch(id=_new_id("msgbatch_emu_"), created=self._now(), created_wall=self._wall(), items=items,
                       spr=float(self._settings["batch_seconds_per_request"]),
                       results_base=f"{request.scheme}://{request.host}")
            b.counts["processing"] = len(items)
            self._batches[b.id] = b
            out = self._batch_json(b, self._wall())
            delay_ms = float(self._settings["batch_create_delay_ms"])
        if delay_ms > 0:  # the batch exists; the answer is late (a client cut off here never learns its id)
            await asyncio.sleep(delay_ms / 1000)
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_retrieve(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            b.retrieves += 1
            if b.retrieves <= int(self._settings["batch_retrieve_404_times"]):
                raise _ApiError(404, f"Message batch {b.id!r} not found")
            self._advance_batch(b, self._now())
            out = self._batch_json(b, self._wall())
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_list(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise _ApiError(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _ApiError(400, "limit: Input should be between 1 and 1000")
        with self._lock:
            now, wall = self._now(), self._wall()
            ordered = list(reversed(list(self._batches.values())))  # newest first
            ids = [b.id for b in ordered]
            if q.get("after_id"):
                if q["after_id"] not in ids:
                    raise _ApiError(400, "after_id: unknown batch id")
                ordered = ordered[ids.index(q["after_id"]) + 1:]
                page = ordered[:limit]
                has_more = len(ordered) > limit
            elif q.get("before_id"):
                if q["before_id"] not in ids:
                    raise _ApiError(400, "before_id: unknown batch id")
                ordered = ordered[: ids.index(q["before_id"])]
                page = ordered[-limit:]
                has_more = len(ordered) > limit
            else:
                page = ordered[:limit]
                has_more = len(ordered) > limit
            data = []
            for b in page:
                self._advance_batch(b, now)
                data.append(self._batch_json(b, wall))
        out = {"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
               "last_id": data[-1]["id"] if data else None}
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_cancel(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            now = self._now()
            self._advance_batch(b, now)
            if b.ended_at is None and b.cancel_at is None:
                b.cancel_at = now
                b.cancel_wall = self._wall()
            out = self._batch_json(b, self._wall())
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_delete(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            self._advance_batch(b, self._now())
            if b.ended_at is None:
                raise _ApiError(400, "Message batch must have ended before it can be deleted; cancel it first.")
            del self._batches[b.id]
        return web.json_response({"id": b.id, "type": "message_batch_deleted"}, headers=self._base_headers(request))

    async def _h_batch_results(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            self._advance_batch(b, self._now())
            if b.ended_at is None:
                raise _ApiError(404, f"Results of message batch {b.id!r} are not available until it has ended")
            # A deterministic order that differs from the submission order.
            items = sorted(b.items, key=lambda it: hashlib.sha256(it.custom_id.encode()).hexdigest())
            lines = [json.dumps({"custom_id": it.custom_id, "result": it.result}, separators=(",", ":"))
                     for it in items]
        headers = self._base_headers(request)
        return web.Response(body=("\n".join(lines) + "\n").encode(), headers=headers,
                            content_type="application/binary")


# ---------------------------------------------------------------------- command line

def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anthropic_emulator",
                                description="Run the local Anthropic Messages API emulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    p.add_argument("--log-level", default="WARNING")

    def _opt_int(v: str) -> int | None:
        return None if v.lower() in ("none", "") else int(v)

    def _opt_str(v: str) -> str | None:
        return None if v == "" else v

    types: dict[str, Callable[[str], Any]] = {
        "api_key": _opt_str, "ttft_ms": float, "chunk_delay_ms": float, "reply_words": _opt_int,
        "ping_every": int, "rate_limit_requests": _opt_int, "rate_limit_window_s": float,
        "max_concurrent": _opt_int, "directives": str, "cache_min_tokens": _opt_int,
        "batch_seconds_per_request": float, "batch_retrieve_404_times": int,
        "batch_create_delay_ms": float, "rate_limit_rpm": _opt_int, "rate_limit_itpm": _opt_int,
        "rate_limit_otpm": _opt_int, "rate_limit_minute_s": float,
    }
    for name, default in DEFAULT_SETTINGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=types[name], default=default,
                       help=f"(default: {default!r})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``python -m anthropic_emulator --port 8080 --ttft-ms 50``."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    settings = {name: getattr(args, name) for name in DEFAULT_SETTINGS}
    emu = Emulator(host=args.host, port=args.port, **settings)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    emu.start()
    sys.stdout.write(f"anthropic_emulator listening on {emu.base_url}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
