"""The emulator's token counting and prompt-cache prefixes.

Tokens of a text are ``ceil(len(text) / 4)`` on old-tokenizer models and ``ceil(len(text) / 4 * 1.3)``
on the new tokenizer (Opus 4.7 and later, every 5.x model: ``ModelInfo.tokenizer_factor``); other
blocks count their compact JSON. A request's
blocks are hashed in prefix order (tools -> system -> messages) so that every ``cache_control``
breakpoint names the prefix it closes. Private to :mod:`anthropic_emulator` (which re-exports
:func:`count_text_tokens`).
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Any, Iterator, Optional

from _emulator_wire import _compact
from _models import CATALOGUE, ModelInfo, unknown_model

_CACHE_TTLS = {"5m": 300.0, "1h": 3600.0}


_ONE = Fraction(1)


def count_text_tokens(text: str, model: Optional[str] = None) -> int:
    """The emulator's token rule for a text: ``ceil(len(text) / 4)``, times the tokenizer factor of
    ``model`` (None: the old tokenizer, factor 1; 1.3 on the new one; an id the catalogue lacks
    counts on the new tokenizer).

    >>> count_text_tokens("abcde"), count_text_tokens("a" * 40), count_text_tokens("a" * 40, "claude-sonnet-5-5")
    (2, 10, 13)
    """
    if model is None:
        return _text_tokens(text, _ONE)
    return _text_tokens(text, tokenizer_ratio(CATALOGUE.get(model) or unknown_model(model)))


def tokenizer_ratio(info: ModelInfo) -> Fraction:
    """Tokens per old-tokenizer token as an exact fraction (1 on the old tokenizer, 13/10 on the new)."""
    return Fraction(info.tokenizer_factor).limit_denominator(1000)


def _text_tokens(text: str, ratio: Fraction) -> int:
    """``ceil(len(text) / 4 * ratio)`` in exact integers (the old rule exactly when ratio is 1)."""
    num = len(text) * ratio.numerator
    den = 4 * ratio.denominator
    return -(-num // den)


def _block_tokens(block: Any, ratio: Fraction = _ONE) -> int:
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
        return _text_tokens(block["text"], ratio)
    if isinstance(block, dict):
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return _text_tokens(_compact(block), ratio)


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


def _breakpoints(body: dict[str, Any], model: str, ratio: Fraction = _ONE) -> tuple[int, list[tuple[str, int, float]]]:
    """Return total input tokens and the breakpoints as (prefix key, prefix tokens, ttl seconds)."""
    h = hashlib.sha256(model.encode())
    total = 0
    bps: list[tuple[str, int, float]] = []
    for tag, block, cc in _iter_blocks(body):
        total += _block_tokens(block, ratio)
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
