"""The one request builder: prompt and options -> a validated Messages request body.

Every path builds its body here (single calls, ``invoke_with_retry``, the parallel and managed
runs, conversations, batches), through :func:`assemble`, so the same prompt, system and options
give the same body everywhere. The canonical form:

* ``system``: the shared system blocks, then the prompt's own; sent as a plain string when that is
  one text block without ``cache_control``, else as a list of blocks;
* the user content: a plain string, or one text block carrying ``cache_control`` when cached;
* ``temperature``: never sent: the public ``temperature=`` keeps only its default 1.0 (API version
  2026-10-21 removed the parameter; any other value, and ``top_p`` / ``top_k``, raise);
* ``effort=`` -> ``output_config: {"effort": ...}``, merged with the ``format`` structured output
  adds (keys ``effort``, then ``format``);
* ``thinking=`` -> ``thinking``: a dict with keys ``type``, then ``budget_tokens``, ``display``
  (the shorthand ``"adaptive"`` is ``{"type": "adaptive"}``);
* keys in the order the SDK serializes them: ``max_tokens``, ``messages``, ``model``, then the other
  typed fields by name (``output_config``, ``system``, ``thinking``, ``tool_choice``, ``tools`` ...),
  so a batch request's params are the same bytes as the body of the equivalent message request.

Validation happens here, before anything is sent: wrong types raise ``TypeError``, bad values
``ValueError``, each naming the parameter; every body is checked against the request rules of its
model (:func:`_request_rules.check_request_rules`: sampling parameters, prefill, forced tool
choice, thinking and effort, max_tokens).

>>> body = single_request("Hi", model="claude-sonnet-5-5", system="Be brief.", max_tokens=200,
...                       temperature=1.0, cache_system=False, cache_prompt=False, messages=None,
...                       extra={}, effort="low", thinking="adaptive")
>>> list(body)
['max_tokens', 'messages', 'model', 'output_config', 'system', 'thinking']
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from _models import CATALOGUE, DEFAULT_MODEL
from _request_rules import (
    check_cache_control,
    check_effort,
    check_output_config,
    check_request_rules,
    content_block_types,
    message_keys,
    normalize_thinking,
)
from _validation import (
    check_bool,
    check_encodable,
    check_model,
    check_positive_int,
    check_temperature,
    check_text,
    is_mapping,
)

__all__ = [
    "AVAILABLE_MODELS",
    "DEFAULT_MODEL",
    "MAX_CACHE_BREAKPOINTS",
    "PROMPT_KEYS",
    "PromptSpec",
    "assemble",
    "check_request_rules",
    "prompt_specs",
    "single_request",
]

#: Current model ids (the catalogue's active and legacy models, without dated snapshots), in the
#: SDK's order; :data:`DEFAULT_MODEL` is among them.
AVAILABLE_MODELS: tuple[str, ...] = tuple(
    mid for mid, info in CATALOGUE.items() if info.lifecycle in ("active", "legacy") and info.alias_of is None
)

#: The API rejects a request with more cache_control blocks than this.
MAX_CACHE_BREAKPOINTS = 4

#: Keys a prompt dict of the parallel functions may carry.
PROMPT_KEYS = frozenset(
    {"prompt", "system", "temperature", "cache_system", "cache_prompt", "model", "max_tokens", "effort", "thinking"}
)

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
            if "cache_control" in block:
                check_cache_control(block["cache_control"], f"{name}[{i}]['cache_control']")
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
    """At most four breakpoints: ``cache_control`` in tools, system and messages, plus the top-level
    ``cache_control`` of automatic caching (which takes one of the four)."""
    count = sum(count_breakpoints(params.get(k)) for k in ("tools", "system", "messages"))
    count += params.get("cache_control") is not None
    if count > MAX_CACHE_BREAKPOINTS:
        raise ValueError(
            f"{where} carries {count} cache_control blocks; the API allows at most {MAX_CACHE_BREAKPOINTS}"
        )


def check_content(content: Any, name: str, role: Optional[str] = None) -> None:
    """A message content: a non-empty str or a non-empty list of content blocks: dicts whose
    ``type`` is one the SDK knows (text blocks non-empty: the API rejects empty ones), with a valid
    ``cache_control`` where they carry one. With ``role``, blocks must suit it: ``tool_use`` only
    from the assistant, ``tool_result`` only from the user, no ``document`` from the assistant,
    no ``citations`` on the user's text (API version 2026-10-21 refuses them)."""
    if isinstance(content, str):
        if not content:
            raise ValueError(f"{name} must not be empty")
        check_encodable(content, name)
        return
    if isinstance(content, (list, tuple)) and content:
        for i, block in enumerate(content):
            check_block(block, f"{name}[{i}]", role)
        return
    if not isinstance(content, (list, tuple)):
        raise TypeError(
            f"{name} must be a non-empty string or a non-empty list of content blocks, got {type(content).__name__}"
        )
    raise ValueError(f"{name} must be a non-empty string or a non-empty list of content blocks (empty)")


_ASSISTANT_ONLY = frozenset({"tool_use", "server_tool_use"})


def check_block(block: Any, name: str, role: Optional[str] = None) -> None:
    """One content block (see :func:`check_content`)."""
    if not is_mapping(block):
        raise TypeError(f"{name} must be a content block dict with a str 'type'")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise ValueError(f"{name} must be a content block dict with a str 'type'")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name}['text'] must be a non-empty str (the API rejects empty text blocks)")
        check_encodable(text, f"{name}['text']")
        if role == "user" and block.get("citations"):
            raise ValueError(f"{name}['citations']: the API refuses citations on text in user messages; drop them")
    elif kind not in content_block_types():
        known = sorted(content_block_types())
        raise ValueError(f"{name}['type'] is {kind!r}, not a content block type the API knows ({', '.join(known)})")
    if "cache_control" in block:
        check_cache_control(block["cache_control"], f"{name}['cache_control']")
    if role is not None:
        if kind in _ASSISTANT_ONLY and role != "assistant":
            raise ValueError(f"{name} is a {kind} block in a {role} message; only assistant messages carry them")
        if kind == "tool_result" and role != "user":
            raise ValueError(f"{name} is a tool_result block in a {role} message; only user messages carry them")
        if kind == "document" and role == "assistant":
            raise ValueError(f"{name} is a document block in an assistant message, which the API refuses")
    if kind == "tool_result" and isinstance(block.get("content"), (list, tuple)):
        for j, inner in enumerate(block["content"]):
            if is_mapping(inner) and "cache_control" in inner:
                check_cache_control(inner["cache_control"], f"{name}['content'][{j}]['cache_control']")


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
    """A validated deep copy of a ``messages`` list: each a ``{"role", "content"}`` dict (no other
    keys: the SDK's MessageParam), the first from the user, content blocks as
    :func:`check_content` checks them, and every ``tool_result`` answering a ``tool_use`` of the
    assistant message just before it (and every such ``tool_use`` answered)."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"{name} must be a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"{name} must be a non-empty list of {{'role', 'content'}} dicts")
    allowed = message_keys()
    msgs = []
    for i, msg in enumerate(messages):
        if not is_mapping(msg):
            raise TypeError(f"{name}[{i}] must be a dict with role 'user' or 'assistant' and a content")
        if msg.get("role") not in ("user", "assistant") or "content" not in msg:
            raise ValueError(f"{name}[{i}] must be a dict with role 'user' or 'assistant' and a content")
        unknown = sorted(str(k) for k in msg if k not in allowed)
        if unknown:
            raise ValueError(f"{name}[{i}] has unknown key {unknown[0]!r}; a message has only 'role' and 'content'")
        check_content(msg["content"], f"{name}[{i}]['content']", msg["role"])
        msgs.append(copy.deepcopy(dict(msg)))
    if msgs[0]["role"] != "user":
        raise ValueError(f"{name}[0] must have role 'user' (a conversation starts with the user)")
    check_tool_pairing(msgs, name)
    return msgs


def _blocks_of(message: Mapping, kind: str) -> list[Mapping]:
    content = message.get("content")
    if isinstance(content, str) or not isinstance(content, (list, tuple)):
        return []
    return [b for b in content if is_mapping(b) and b.get("type") == kind]


def check_tool_pairing(msgs: Sequence[Mapping], name: str = "messages") -> None:
    """Every ``tool_result`` answers a ``tool_use`` of the assistant message right before it, and
    every ``tool_use`` followed by a message is answered in it (the API's pairing rule)."""
    for i, msg in enumerate(msgs):
        results = _blocks_of(msg, "tool_result") if msg["role"] == "user" else []
        if not results:
            continue
        prev = msgs[i - 1] if i > 0 and msgs[i - 1]["role"] == "assistant" else None
        ids = {b.get("id") for b in _blocks_of(prev, "tool_use")} if prev is not None else set()
        for block in results:
            if block.get("tool_use_id") not in ids:
                raise ValueError(
                    f"{name}[{i}] has a tool_result for tool_use_id {block.get('tool_use_id')!r}, but the "
                    f"message before it has no tool_use with that id; each tool_result must answer a "
                    "tool_use of the previous assistant message"
                )
    for i, msg in enumerate(msgs):
        if msg["role"] == "assistant" and i + 1 < len(msgs):
            uses = [b.get("id") for b in _blocks_of(msg, "tool_use")]
            answered = {b.get("tool_use_id") for b in _blocks_of(msgs[i + 1], "tool_result")}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise ValueError(
                    f"{name}[{i + 1}] does not answer the tool_use {missing[0]!r} of {name}[{i}]; the message "
                    "after a tool_use must carry its tool_result"
                )


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


_REQUIRED_ORDER = {"max_tokens": 0, "messages": 1, "model": 2}


def _sdk_order(key: str) -> tuple:
    """The order the SDK serializes a body in: ``max_tokens``, ``messages``, ``model``, then its
    other typed fields by name, then what travels in ``extra_body``."""
    if key in _BODY_ONLY_FIELDS:
        return (2, _BODY_ONLY_FIELDS.index(key), key)
    first = _REQUIRED_ORDER.get(key)
    return (0, first, "") if first is not None else (1, 0, key)


def output_config(config: Any, effort: Optional[str], name: str = "output_config") -> Optional[dict]:
    """The body's ``output_config``: ``config`` (checked) with ``effort`` merged in, keys in the
    order ``effort``, ``format``; None when there is nothing to send."""
    given = None
    if config is not None:
        given = check_output_config(config, name)
    if effort is not None and given is not None and given != effort:
        raise ValueError(f"effort={effort!r} and {name}['effort']={given!r} disagree; give effort once")
    merged: dict[str, Any] = {}
    if effort is not None or given is not None:
        merged["effort"] = effort if effort is not None else given
    if config is not None and config.get("format") is not None:
        merged["format"] = copy.deepcopy(config["format"])
    return merged or None


def _single_extra(extra: Mapping[str, Any], effort: Any, thinking: Any) -> dict:
    """The SDK extras of a single call with ``effort`` / ``thinking`` folded in (they may also
    arrive as extras from a public function that has no such parameter)."""
    out = dict(extra)
    extra_effort, extra_thinking = out.pop("effort", None), out.pop("thinking", None)
    if (effort is not None and extra_effort is not None) or (thinking is not None and extra_thinking is not None):
        raise TypeError("got multiple values for effort / thinking (a parameter and an extra keyword)")
    effort = effort if effort is not None else extra_effort
    thinking = thinking if thinking is not None else extra_thinking
    if effort is not None:
        check_effort(effort)
    config = output_config(out.pop("output_config", None), effort)
    if config is not None:
        out["output_config"] = config
    if thinking is not None:
        out["thinking"] = normalize_thinking(thinking)
    if "cache_control" in out:
        check_cache_control(out["cache_control"], "cache_control")
    return out


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
    effort: Optional[str] = None,
    thinking: Any = None,
) -> dict:
    """The body of a single call (``invoke_claude``, ``invoke_with_retry``), checked against the
    request rules (:func:`check_request_rules`) before anything is sent.

    ``effort`` (``"low"`` .. ``"max"``) becomes ``output_config.effort``; ``thinking`` (a dict
    such as ``{"type": "adaptive"}`` or the shorthand ``"adaptive"`` / ``"disabled"`` /
    ``"between_tools"``) becomes the body's ``thinking``; None sends nothing (the model's default).

    >>> body = single_request("hi", model="claude-sonnet-5-5", system=None, max_tokens=100, temperature=None,
    ...                       cache_system=False, cache_prompt=False, messages=None, extra={}, effort="low")
    >>> body["output_config"]
    {'effort': 'low'}
    """
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
    if extra or effort is not None or thinking is not None:
        extra = _single_extra(extra, effort, thinking)
    if prompt is not None:
        msgs: list[dict] = [{"role": "user", "content": user_content(prompt, cache_prompt)}]
    else:
        msgs = check_messages(messages)
        if cache_prompt:  # the last *user* message (an assistant prefill may follow it)
            mark_user_messages(msgs, 1, 1)
    params = assemble(model, max_tokens, msgs, system_blocks(system, "system", cache_system), temperature, extra)
    if prompt is None or extra or not (system is None or isinstance(system, str)):
        check_breakpoints(params)  # else at most 2 (cache_system, cache_prompt): nothing to check
    check_request_rules(params)
    return params


def _prompt_thinking(item: Mapping, default: Optional[dict], where: str) -> Optional[dict]:
    value = item.get("thinking")
    return default if value is None else normalize_thinking(value, f"{where}['thinking']")


def prompt_specs(
    prompts: Any,
    *,
    shared_system: Any,
    cache_shared_system: bool,
    model: str,
    max_tokens: int,
    extra_keys: frozenset = frozenset(),
    effort: Optional[str] = None,
    thinking: Any = None,
    batch: bool = False,
) -> list[PromptSpec]:
    """Validate every prompt dict (before any request) and build its request body.

    System rule: ``shared_system`` block(s) first (cache_control on its last block when
    ``cache_shared_system``), then the prompt's own ``system`` as separate block(s)
    (cache_control on its last block when the prompt's ``cache_system``).

    ``effort`` / ``thinking`` apply to every prompt (as in :func:`single_request`); a prompt's own
    ``"effort"`` / ``"thinking"`` key overrides them (None there: the run's value). Every body is
    checked against the request rules (``batch=True``: the batch maximum of ``max_tokens``), once
    per distinct model, max_tokens, effort and thinking.

    >>> [s.params["output_config"] for s in prompt_specs([{"prompt": "a"}, {"prompt": "b", "effort": "max"}],
    ...     shared_system=None, cache_shared_system=False, model="claude-sonnet-5-5", max_tokens=100, effort="low")]
    [{'effort': 'low'}, {'effort': 'max'}]
    """
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of dicts, got {type(prompts).__name__}")
    check_model(model)
    check_positive_int(max_tokens, "max_tokens")
    check_bool(cache_shared_system, "cache_shared_system")
    check_bool(batch, "batch")
    if effort is not None:
        check_effort(effort)
    run_thinking = normalize_thinking(thinking) if thinking is not None else None
    shared = system_blocks(shared_system, "shared_system", cache_shared_system)
    shared_breakpoints = count_breakpoints(shared)
    extra_keys = frozenset(extra_keys)
    allowed = PROMPT_KEYS | extra_keys
    specs: list[PromptSpec] = []
    checked: set[tuple] = set()  # (model, max_tokens, effort, thinking) whose rules passed
    run_thinking_key = tuple(run_thinking.items()) if run_thinking is not None else None
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
        item_effort = item.get("effort")
        if item_effort is None:
            item_effort = effort
        elif item_effort is not effort:
            check_effort(item_effort, f"{where}['effort']")
        item_thinking, thinking_key = run_thinking, run_thinking_key
        if "thinking" in item:
            item_thinking = _prompt_thinking(item, run_thinking, where)
            thinking_key = tuple(item_thinking.items()) if item_thinking is not None else None
        body_extra: Optional[dict] = None
        if item_effort is not None or item_thinking is not None:
            body_extra = {}
            if item_effort is not None:
                body_extra["output_config"] = {"effort": item_effort}
            if item_thinking is not None:
                body_extra["thinking"] = dict(item_thinking)
        params = assemble(
            item_model,
            item_max_tokens,
            [{"role": "user", "content": content}],
            shared + own,
            temperature,
            body_extra,
        )
        # Same rule as check_breakpoints, counted from the parts just built.
        breakpoints = shared_breakpoints + (1 if cache_prompt else 0) + (count_breakpoints(own) if own else 0)
        if breakpoints > MAX_CACHE_BREAKPOINTS:
            check_breakpoints(params, where)
        key = (item_model, item_max_tokens, item_effort, thinking_key)
        if key not in checked:  # the rules depend on these alone for a one-message prompt
            check_request_rules(params, where, batch=batch)
            checked.add(key)
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
