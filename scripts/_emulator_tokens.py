"""The emulator's token counting and prompt-cache prefixes.

Tokens of a text are ``ceil(len(text) / 4)``; other blocks count their compact JSON. A request's
blocks are hashed in prefix order (tools -> system -> messages) so that every ``cache_control``
breakpoint names the prefix it closes. Private to :mod:`anthropic_emulator` (which re-exports
:func:`count_text_tokens`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

from _emulator_wire import _compact

_CACHE_TTLS = {"5m": 300.0, "1h": 3600.0}


def count_text_tokens(text: str) -> int:
    """The emulator's token rule for a text: ``ceil(len(text) / 4)``.

    >>> count_text_tokens("abcde")
    2
    """
    return (len(text) + 3) // 4


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


count_text_tokens.__module__ = "anthropic_emulator"
