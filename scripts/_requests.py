"""The one request builder: prompt and options -> a validated Messages request body.

Every path builds its body here (single calls, ``invoke_with_retry``, the parallel and managed
runs, conversations, batches), through :func:`assemble`, so the same prompt, system and options
give the same body everywhere. The canonical form:

* ``system``: the shared system blocks, then the prompt's own; sent as a plain string when that is
  one text block without ``cache_control``, else as a list of blocks;
* the user content: a plain string, or one text block carrying ``cache_control`` when cached;
* ``temperature``: sent only when it differs from the API default 1.0;
* keys in the order the SDK serializes them (typed fields by name, then ``temperature`` /
  ``top_p`` / ``top_k``, which travel in ``extra_body``), so a batch request's params are the
  same bytes as the body of the equivalent message request.

Validation happens here, before anything is sent: wrong types raise ``TypeError``, bad values
``ValueError``, each naming the parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from _validation import (
    check_bool,
    check_encodable,
    check_model,
    check_positive_int,
    check_temperature,
    check_text,
    is_mapping,
)

#: Current model ids, newest first within each family.
AVAILABLE_MODELS: tuple[str, ...] = (
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-sonnet-4-0",
    "claude-opus-4-0",
)

#: The API rejects a request with more cache_control blocks than this.
MAX_CACHE_BREAKPOINTS = 4

#: Keys a prompt dict of the parallel functions may carry.
PROMPT_KEYS = frozenset({"prompt", "system", "temperature", "cache_system", "cache_prompt", "model", "max_tokens"})

# Keyword arguments of the single-call functions that are not SDK extras.
_RESERVED_KWARGS = frozenset({"model", "system", "max_tokens", "temperature", "messages", "stream", "prompt"})

# Body fields that the installed SDK's typed ``messages.create/stream`` no longer accept as
# keywords; they are sent through ``extra_body``.
_BODY_ONLY_FIELDS = ("temperature", "top_p", "top_k")

_EPHEMERAL = {"type": "ephemeral"}


@dataclass
class PromptSpec:
    """One validated prompt of a parallel run: its input index, request body and extra keys."""

    index: int
    params: dict
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ blocks
def with_cache_control(block: dict) -> dict:
    if "cache_control" in block:
        return block
    new = dict(block)
    new["cache_control"] = dict(_EPHEMERAL)
    return new


def system_blocks(system: Any, name: str, cache: bool) -> list[dict]:
    """``system`` (str or list of text blocks) as a fresh list of block dicts."""
    if system is None:
        return []
    if isinstance(system, str):
        if not system:
            return []
        check_encodable(system, name)
        blocks = [{"type": "text", "text": system}]
    elif isinstance(system, (list, tuple)):
        blocks = []
        for i, block in enumerate(system):
            if not is_mapping(block):
                raise TypeError(f"{name}[{i}] must be a text block {{'type': 'text', 'text': str}}")
            if block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise ValueError(f"{name}[{i}] must be a text block {{'type': 'text', 'text': str}}")
            if not block["text"]:
                raise ValueError(f"{name}[{i}]['text'] must not be empty (the API rejects empty text blocks)")
            check_encodable(block["text"], f"{name}[{i}]['text']")
            blocks.append(copy.deepcopy(dict(block)))
    else:
        raise TypeError(f"{name} must be a str or a list of text blocks, got {type(system).__name__}")
    if cache and blocks:
        blocks[-1] = with_cache_control(blocks[-1])
    return blocks


def count_breakpoints(value: Any) -> int:
    """Number of ``cache_control`` entries in a nested structure of dicts and lists."""
    kind = type(value)
    if kind is str or value is None:
        return 0
    if kind is dict or isinstance(value, Mapping):
        count = 1 if value.get("cache_control") is not None else 0
        for key, item in value.items():
            if key != "cache_control" and not isinstance(item, (str, int, float)):
                count += count_breakpoints(item)
        return count
    if kind is list or isinstance(value, (list, tuple)):
        return sum(count_breakpoints(item) for item in value)
    return 0


def check_breakpoints(params: Mapping, where: str = "the request") -> None:
    count = sum(count_breakpoints(params.get(k)) for k in ("tools", "system", "messages"))
    if count > MAX_CACHE_BREAKPOINTS:
        raise ValueError(
            f"{where} carries {count} cache_control blocks; the API allows at most {MAX_CACHE_BREAKPOINTS}"
        )


def check_content(content: Any, name: str) -> None:
    """A message content: a non-empty str or a non-empty list of dicts with a str ``type``
    (text blocks non-empty: the API rejects empty ones)."""
    if isinstance(content, str):
        if not content:
            raise ValueError(f"{name} must not be empty")
        check_encodable(content, name)
        return
    if isinstance(content, (list, tuple)) and content:
        for i, block in enumerate(content):
            if not is_mapping(block):
                raise TypeError(f"{name}[{i}] must be a content block dict with a str 'type'")
            if not isinstance(block.get("type"), str):
                raise ValueError(f"{name}[{i}] must be a content block dict with a str 'type'")
            if block["type"] == "text":
                text = block.get("text")
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{name}[{i}]['text'] must be a non-empty str (the API rejects empty text blocks)")
                check_encodable(text, f"{name}[{i}]['text']")
        return
    if not isinstance(content, (list, tuple)):
        raise TypeError(
            f"{name} must be a non-empty string or a non-empty list of content blocks, got {type(content).__name__}"
        )
    raise ValueError(f"{name} must be a non-empty string or a non-empty list of content blocks (empty)")


def content_blocks(content: Any, name: str) -> list[dict]:
    """``content`` (checked by :func:`check_content`) as a fresh list of block dicts."""
    check_content(content, name)
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [copy.deepcopy(dict(block)) for block in content]


def user_content(prompt: Any, cache: bool, name: str = "prompt") -> Union[str, list[dict]]:
    """The user content of a prompt: the string, or one cached text block."""
    if type(prompt) is not str or not prompt.strip() or not prompt.isascii():
        check_text(prompt, name)
    if cache:
        return [{"type": "text", "text": prompt, "cache_control": dict(_EPHEMERAL)}]
    return prompt


def check_messages(messages: Any, name: str = "messages") -> list[dict]:
    """A validated deep copy of a ``messages`` list."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"{name} must be a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"{name} must be a non-empty list of {{'role', 'content'}} dicts")
    msgs = []
    for i, msg in enumerate(messages):
        if not is_mapping(msg):
            raise TypeError(f"{name}[{i}] must be a dict with role 'user' or 'assistant' and a content")
        if msg.get("role") not in ("user", "assistant") or "content" not in msg:
            raise ValueError(f"{name}[{i}] must be a dict with role 'user' or 'assistant' and a content")
        check_content(msg["content"], f"{name}[{i}]['content']")
        msgs.append(copy.deepcopy(dict(msg)))
    if msgs[0]["role"] != "user":
        raise ValueError(f"{name}[0] must have role 'user'")
    return msgs


def mark_user_messages(msgs: list[dict], count: int, budget: int) -> None:
    """Put a cache breakpoint on the last ``count`` user messages (newest first), using at most
    ``budget`` new breakpoints; a message already marked counts without using the budget."""
    marked = 0
    for msg in reversed(msgs):
        if marked >= count or budget <= 0:
            break
        if msg["role"] != "user":
            continue
        content = msg["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        else:
            content = list(content)
        if "cache_control" not in content[-1]:
            content[-1] = with_cache_control(content[-1])
            budget -= 1
        msg["content"] = content
        marked += 1


# ------------------------------------------------------------------------------ the body
def assemble(
    model: str,
    max_tokens: int,
    messages: list,
    system: list[dict],
    temperature: Optional[float] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The request body from validated parts, in the canonical form (see the module docstring)."""
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        if len(system) == 1 and len(system[0]) == 2 and "cache_control" not in system[0]:
            params["system"] = system[0]["text"]
        else:
            params["system"] = system
    if temperature is not None and temperature != 1.0:  # 1.0 is the API default: not sent
        params["temperature"] = temperature
    if extra:
        for key, value in extra.items():
            params[key] = copy.deepcopy(value) if key == "tools" else value
    if len(params) > 3 or extra:  # the SDK's order, so a batch request's params match a message's bytes
        params = {key: params[key] for key in sorted(params, key=_sdk_order)}
    return params


def _sdk_order(key: str) -> tuple:
    """The order the SDK serializes a body in: its typed fields by name, then ``extra_body``."""
    return (key in _BODY_ONLY_FIELDS, _BODY_ONLY_FIELDS.index(key) if key in _BODY_ONLY_FIELDS else 0, key)


def single_request(
    prompt: Optional[str],
    *,
    model: str,
    system: Any,
    max_tokens: int,
    temperature: Optional[float],
    cache_system: bool,
    cache_prompt: bool,
    messages: Any,
    extra: Mapping[str, Any],
) -> dict:
    """The body of a single call (``invoke_claude``, ``invoke_with_retry``)."""
    check_model(model)
    check_positive_int(max_tokens, "max_tokens")
    if temperature is not None:
        check_temperature(temperature)
    check_bool(cache_system, "cache_system")
    check_bool(cache_prompt, "cache_prompt")
    clash = _RESERVED_KWARGS.intersection(extra)
    if clash:
        raise TypeError(f"unexpected keyword argument(s) {sorted(clash)}")
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt (a non-empty string) and messages (a list of messages)")
    if prompt is not None:
        msgs: list[dict] = [{"role": "user", "content": user_content(prompt, cache_prompt)}]
    else:
        msgs = check_messages(messages)
        if cache_prompt:  # the last *user* message (an assistant prefill may follow it)
            mark_user_messages(msgs, 1, 1)
    params = assemble(model, max_tokens, msgs, system_blocks(system, "system", cache_system), temperature, extra)
    if prompt is None or extra or not (system is None or isinstance(system, str)):
        check_breakpoints(params)  # else at most 2 (cache_system, cache_prompt): nothing to check
    return params


def prompt_specs(
    prompts: Any,
    *,
    shared_system: Any,
    cache_shared_system: bool,
    model: str,
    max_tokens: int,
    extra_keys: frozenset = frozenset(),
) -> list[PromptSpec]:
    """Validate every prompt dict (before any request) and build its request body.

    System rule: ``shared_system`` block(s) first (cache_control on its last block when
    ``cache_shared_system``), then the prompt's own ``system`` as separate block(s)
    (cache_control on its last block when the prompt's ``cache_system``).
    """
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of dicts, got {type(prompts).__name__}")
    check_model(model)
    check_positive_int(max_tokens, "max_tokens")
    check_bool(cache_shared_system, "cache_shared_system")
    shared = system_blocks(shared_system, "shared_system", cache_shared_system)
    shared_breakpoints = count_breakpoints(shared)
    extra_keys = frozenset(extra_keys)
    allowed = PROMPT_KEYS | extra_keys
    specs: list[PromptSpec] = []
    # Hot loop (10,000s of prompts): the common cases are checked without building messages;
    # the check_* helpers (which name the parameter) run only for values off the fast path.
    for index, item in enumerate(prompts):
        where = f"prompts[{index}]"
        if not is_mapping(item):
            raise TypeError(f"{where} must be a dict with a 'prompt' key, got {type(item).__name__}")
        if not allowed.issuperset(item):
            unknown = sorted(set(item) - allowed)
            raise ValueError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {sorted(allowed)}")
        if "prompt" not in item:
            raise ValueError(f"{where} is missing the required key 'prompt'")
        cache_prompt = item.get("cache_prompt", False)
        if cache_prompt is not False and cache_prompt is not True:
            check_bool(cache_prompt, f"{where}['cache_prompt']")
        cache_system = item.get("cache_system", False)
        if cache_system is not False and cache_system is not True:
            check_bool(cache_system, f"{where}['cache_system']")
        content = user_content(item["prompt"], cache_prompt, f"{where}['prompt']")
        item_model = item.get("model", model)
        if item_model is not model:
            check_model(item_model, f"{where}['model']")
        item_max_tokens = item.get("max_tokens", max_tokens)
        if item_max_tokens is not max_tokens:
            check_positive_int(item_max_tokens, f"{where}['max_tokens']")
        own_system = item.get("system")
        own = system_blocks(own_system, f"{where}['system']", cache_system) if own_system is not None else []
        temperature = item.get("temperature")
        if temperature is not None:
            check_temperature(temperature, f"{where}['temperature']")
        params = assemble(
            item_model,
            item_max_tokens,
            [{"role": "user", "content": content}],
            shared + own,
            temperature,
        )
        # Same rule as check_breakpoints, counted from the parts just built.
        breakpoints = shared_breakpoints + (1 if cache_prompt else 0) + (count_breakpoints(own) if own else 0)
        if breakpoints > MAX_CACHE_BREAKPOINTS:
            check_breakpoints(params, where)
        specs.append(PromptSpec(index, params, {k: item[k] for k in item if k in extra_keys} if extra_keys else {}))
    return specs


def sdk_kwargs(params: Mapping[str, Any]) -> dict:
    """``params`` (a Messages request body) as keyword arguments for ``messages.create/stream``."""
    moved = {k: params[k] for k in _BODY_ONLY_FIELDS if k in params}
    if not moved:
        return dict(params)
    kwargs = {k: v for k, v in params.items() if k not in moved}
    extra_body = dict(kwargs.get("extra_body") or {})
    extra_body.update(moved)
    kwargs["extra_body"] = extra_body
    return kwargs
