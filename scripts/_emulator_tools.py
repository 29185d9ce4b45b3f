"""The emulator's replies: tool-use turns, pause turns, structured output and scripted replies.

:func:`_reply` decides what a request is answered (in order: a pause turn, a tool-call turn, a
structured-output instance, the echo of tool results, the scripted text, ``"Echo: " + prompt``).
Private to :mod:`anthropic_emulator` (which re-exports :func:`schema_instance`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from _emulator_directives import _Plan, _prompt_index, _text_of
from _emulator_validation import _TOOL_NAME_RE, _output_schema, _tool_uses
from _emulator_wire import _ApiError

_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


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
        items = schema["items"] if isinstance(schema.get("items"), dict) else {}
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


def _tool_result_echo(content: Any) -> str:
    """``Echo tool results: ID=TEXT; ID=TEXT (error)`` for the tool_result blocks of a user turn."""
    parts = []
    for b in _tool_uses(content, "tool_result"):
        inner = b.get("content")
        text = _text_of(inner) if inner is not None else ""
        parts.append(
            f"{b['tool_use_id']}={' '.join(text.split()) or '(empty)'}" + (" (error)" if b.get("is_error") else "")
        )
    return "Echo tool results: " + "; ".join(parts)


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


def _reply(
    body: dict[str, Any], prompt: str, plan: _Plan, scripts: dict[str, str | list[dict[str, Any]]]
) -> tuple[str, list[dict[str, Any]], str]:
    """Reply text, the tool blocks after it and the stop reason (call with the lock held).

    In order: a pause turn (``pause_turns``); a tool-call turn (scripted tool_use, ``tool=``, or a
    forced ``tool_choice``); structured output (``output_config.format``); the echo of the
    tool_result blocks of the last user turn; the scripted text; ``"Echo: " + prompt``.
    """
    messages = body["messages"]
    start = _prompt_index(body)
    later = messages[start + 1 :]
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
        result: Any = [
            {
                "type": "web_search_result",
                "url": f"https://example.com/{i}",
                "title": f"Result {i}",
                "encrypted_content": f"enc{i}",
                "page_age": None,
            }
            for i in (1, 2)
        ]
        if name != "web_search":
            result = {"type": f"{name}_result", "content": []}
        kind = "web_search_tool_result" if name == "web_search" else f"{name}_tool_result"
        return (
            "",
            [
                {"type": "server_tool_use", "id": sid, "name": name, "input": {"query": prompt or "emulator"}},
                {"type": kind, "tool_use_id": sid, "content": result},
            ],
            "pause_turn",
        )
    scripted = scripts.get(prompt)
    script_text = (
        scripted if isinstance(scripted, str) else " ".join(b["text"] for b in scripted or [] if b["type"] == "text")
    )
    choice = (body.get("tool_choice") or {}).get("type", "auto")
    result_turns = sum(1 for m in later if m["role"] == "user" and _tool_uses(m["content"], "tool_result"))
    calls: list[dict[str, Any]] = []
    if choice != "none" and result_turns < plan.tool_turns:
        if isinstance(scripted, list):
            calls = [b for b in scripted if b["type"] != "text"]
        for i, (name, tool_input) in enumerate(plan.tool_calls):
            calls.append({"type": "tool_use", "id": f"toolu_emu_{tag[:16]}{i:08d}", "name": name, "input": tool_input})
    if not calls and choice in ("any", "tool"):
        forced = (
            body["tool_choice"].get("name")
            if choice == "tool"
            else next((n for n, t in tools.items() if t.get("type", "custom") in ("custom", None)), None)
        )
        if forced is not None:
            schema = tools[forced].get("input_schema") or {}
            calls = [
                {
                    "type": "tool_use",
                    "id": f"toolu_emu_{tag[:24]}",
                    "name": forced,
                    "input": schema_instance(schema) if schema else {},
                }
            ]
    if calls:
        for b in calls:
            if b["type"] == "tool_use" and b["name"] not in tools:
                raise _ApiError(
                    400, f"tool {b['name']!r} is not in the request's tools ({', '.join(tools) or 'none given'})"
                )
        names = [b["name"] for b in calls if b["type"] == "tool_use"]
        text = script_text if isinstance(scripted, list) else (f"Calling {', '.join(names)}." if plan.preamble else "")
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


schema_instance.__module__ = "anthropic_emulator"
