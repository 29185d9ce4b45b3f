"""The emulator's request validation: a 400 naming the field, like the Messages API.

Covers the body (sampling parameters are refused at any value, as under API version 2026-10-21),
content blocks (thinking blocks included), tools and tool_choice, tool_use / tool_result pairing,
``cache_control`` and ``output_config``. The rules of the model a request names are in
:mod:`_emulator_rules`. Private to :mod:`anthropic_emulator`.
"""

from __future__ import annotations

import re
from typing import Any

from _emulator_tokens import _CACHE_TTLS, _count_cache_controls, _iter_blocks
from _emulator_wire import _ApiError
from _models import EFFORT_LEVELS

_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
#: Sampling parameters the API no longer accepts (any value answers 400 "<name>: Extra inputs are not permitted").
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")
_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


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
    for name in SAMPLING_PARAMS:  # removed in API version 2026-10-21, at any value
        if name in body:
            raise _ApiError(400, f"{name}: Extra inputs are not permitted")
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
        elif kind in ("thinking", "redacted_thinking"):
            if role != "assistant":
                raise _ApiError(400, f"{at}: {kind} blocks are only allowed in assistant messages")
            for key in ("thinking", "signature") if kind == "thinking" else ("data",):
                if not isinstance(block.get(key), str):
                    raise _ApiError(400, f"{at}.{kind}.{key}: Field required")
        elif kind == "tool_result":
            if role != "user":
                raise _ApiError(400, f"{at}: tool_result blocks are only allowed in user messages")
            if seen_other:
                raise _ApiError(
                    400, f"{at}: tool_result blocks must come first in the user message, before any other content"
                )
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
            raise _ApiError(
                400,
                f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message.",
            )
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            ids = [b["id"] for b in _tool_uses(msg["content"])]
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            answered = (
                {b["tool_use_id"] for b in _tool_uses(nxt["content"], "tool_result")}
                if nxt and nxt["role"] == "user"
                else set()
            )
            missing = [t for t in ids if t not in answered]
            if missing:
                raise _ApiError(
                    400,
                    f"messages.{i + 1 if nxt else i}: `tool_use` ids were found without "
                    f"`tool_result` blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                    "block must have a corresponding `tool_result` block in the next message.",
                )


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
        if config.get("effort") is not None and config["effort"] not in EFFORT_LEVELS:
            levels = ", ".join(repr(e) for e in EFFORT_LEVELS)
            raise _ApiError(400, f"output_config.effort: Input should be one of {levels}")
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
