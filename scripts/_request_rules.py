"""What the Messages API (version 2026-10-21) refuses, checked before anything is sent.

:func:`check_request_rules` reads the model catalogue (:mod:`_models`) and raises ``ValueError``
naming the parameter, the model and what to do instead, for:

* ``temperature`` / ``top_p`` / ``top_k`` (removed from the API: every model, any value);
* an assistant prefill (the last message from the assistant) on a model that refuses it;
* a forced ``tool_choice`` (``any`` / ``tool``) on a model that refuses it;
* a ``thinking`` type the model does not accept (or not at the request's effort), an ``effort``
  level it does not accept;
* ``max_tokens`` above the model's maximum output (its batch maximum with ``batch=True``).

A model the catalogue does not know gets only the checks of shape (the server decides the rest).
The same module holds the shape checks the builder shares: :func:`check_effort`,
:func:`normalize_thinking` (``"adaptive"`` -> ``{"type": "adaptive"}``), :func:`check_cache_control`,
:func:`content_block_types` (read from the installed SDK) and :func:`check_json_schema`.

>>> check_request_rules({"model": "claude-sonnet-5-5", "max_tokens": 100,
...                      "messages": [{"role": "user", "content": "hi"}], "output_config": {"effort": "low"}})
>>> normalize_thinking("adaptive")
{'type': 'adaptive'}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Optional

from _models import EFFORT_LEVELS, THINKING_TYPES, ModelInfo, model_info
from _validation import is_mapping, removed_sampling

#: Body fields API version 2026-10-21 removed (a 400 at any value, on every model).
SAMPLING_PARAMS: tuple[str, ...] = ("temperature", "top_p", "top_k")
#: ``thinking=`` strings and the dict each stands for (``{"type": s}``).
THINKING_SHORTHANDS: tuple[str, ...] = ("adaptive", "disabled", "between_tools")
#: ``thinking.display`` values of the GA API (the SDK's literal).
THINKING_DISPLAYS: tuple[str, ...] = ("summarized", "omitted")
#: ``thinking.budget_tokens`` floor (the SDK: "Must be >= 1024 and less than max_tokens").
MIN_BUDGET_TOKENS = 1024
#: ``cache_control.ttl`` values (the SDK's CacheControlEphemeralParam).
CACHE_TTLS: tuple[str, ...] = ("5m", "1h")
#: ``tool_choice.type`` values (the SDK's ToolChoiceParam); the forced ones.
TOOL_CHOICE_TYPES: tuple[str, ...] = ("auto", "any", "tool", "none")
FORCED_TOOL_CHOICES = frozenset({"any", "tool"})
#: A shape bound for models the catalogue does not know: no model writes more tokens than this.
MAX_TOKENS_CAP = 2**31 - 1

_THINKING_KEYS = {
    "adaptive": frozenset({"type", "display"}),
    "enabled": frozenset({"type", "budget_tokens", "display"}),
    "disabled": frozenset({"type"}),
    "between_tools": frozenset({"type"}),
}
_OUTPUT_CONFIG_KEYS = ("effort", "format")
_TOOL_CHOICE_KEYS = frozenset({"type", "name", "disable_parallel_tool_use"})


def _in(where: str) -> str:
    return "" if where == "the request" else f" ({where})"


def _names(values: Any) -> str:
    return ", ".join(repr(v) for v in values)


# ------------------------------------------------------------------------------ shapes
def check_effort(effort: Any, name: str = "effort") -> str:
    """``effort`` if one of the API's levels (``low`` .. ``max``)."""
    if not isinstance(effort, str):
        raise TypeError(f"{name} must be a str (one of {_names(EFFORT_LEVELS)}) or None, got {type(effort).__name__}")
    if effort not in EFFORT_LEVELS:
        raise ValueError(f"{name} must be one of {_names(EFFORT_LEVELS)}, got {effort!r}")
    return effort


def normalize_thinking(thinking: Any, name: str = "thinking") -> dict:
    """``thinking`` as the body's dict, checked against the SDK's ThinkingConfigParam shapes:
    ``{"type": "adaptive", "display"?}``, ``{"type": "enabled", "budget_tokens": >= 1024, "display"?}``,
    ``{"type": "disabled"}``, ``{"type": "between_tools"}``; a str shorthand
    (``"adaptive"``, ``"disabled"``, ``"between_tools"``) stands for ``{"type": s}``. Keys in the
    canonical order ``type``, ``budget_tokens``, ``display``.

    >>> normalize_thinking({"display": "summarized", "type": "adaptive"})
    {'type': 'adaptive', 'display': 'summarized'}
    """
    if isinstance(thinking, str):
        if thinking in THINKING_SHORTHANDS:
            return {"type": thinking}
        if thinking == "enabled":
            raise ValueError(
                f"{name}='enabled' needs a budget: pass {{'type': 'enabled', 'budget_tokens': N}} (N >= 1024), "
                "or thinking='adaptive' with effort="
            )
        raise ValueError(f"{name} must be one of {_names(THINKING_SHORTHANDS)} or a dict, got {thinking!r}")
    if not is_mapping(thinking):
        raise TypeError(
            f"{name} must be a dict such as {{'type': 'adaptive'}} or one of {_names(THINKING_SHORTHANDS)}, "
            f"got {type(thinking).__name__}"
        )
    kind = thinking.get("type")
    if kind not in _THINKING_KEYS:
        raise ValueError(f"{name}['type'] must be one of {_names(THINKING_TYPES)}, got {kind!r}")
    unknown = sorted(str(k) for k in thinking if k not in _THINKING_KEYS[kind])
    if unknown:
        allowed = sorted(_THINKING_KEYS[kind] - {"type"})
        raise ValueError(
            f"{name} of type {kind!r} takes no {unknown[0]!r}"
            + (f" (its keys: 'type', {_names(allowed)})" if allowed else " (only 'type')")
        )
    out: dict[str, Any] = {"type": kind}
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise TypeError(
                f"{name}['budget_tokens'] must be an int >= {MIN_BUDGET_TOKENS}, got {type(budget).__name__}"
            )
        if budget < MIN_BUDGET_TOKENS:
            raise ValueError(f"{name}['budget_tokens'] must be >= {MIN_BUDGET_TOKENS}, got {budget}")
        out["budget_tokens"] = budget
    if "display" in thinking:
        display = thinking["display"]
        if display is not None and display not in THINKING_DISPLAYS:
            raise ValueError(f"{name}['display'] must be one of {_names(THINKING_DISPLAYS)} or None, got {display!r}")
        out["display"] = display
    return out


def check_cache_control(value: Any, name: str) -> None:
    """A ``cache_control`` value: None (no breakpoint) or ``{"type": "ephemeral", "ttl"?: "5m"|"1h"}``."""
    if value is None:
        return
    if not is_mapping(value):
        raise TypeError(
            f"{name} must be a dict {{'type': 'ephemeral'}} (optionally with 'ttl': '5m' or '1h'), "
            f"got {type(value).__name__} {value!r}"[:300]
        )
    if value.get("type") != "ephemeral":
        raise ValueError(f"{name}['type'] must be 'ephemeral', got {value.get('type')!r}")
    if "ttl" in value and value["ttl"] not in CACHE_TTLS:
        raise ValueError(f"{name}['ttl'] must be '5m' or '1h', got {value['ttl']!r}")
    unknown = sorted(str(k) for k in value if k not in ("type", "ttl"))
    if unknown:
        raise ValueError(f"{name} takes only 'type' and 'ttl', got {unknown[0]!r}")


def check_tool_choice(choice: Any, name: str = "tool_choice") -> None:
    """The shape of ``tool_choice`` (the SDK's ToolChoiceParam)."""
    if not is_mapping(choice):
        raise TypeError(f"{name} must be a dict such as {{'type': 'auto'}}, got {type(choice).__name__}")
    kind = choice.get("type")
    if kind not in TOOL_CHOICE_TYPES:
        raise ValueError(f"{name}['type'] must be one of {_names(TOOL_CHOICE_TYPES)}, got {kind!r}")
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise ValueError(f"{name} of type 'tool' needs the tool's 'name' (a str)")
    unknown = sorted(str(k) for k in choice if k not in _TOOL_CHOICE_KEYS)
    if unknown:
        raise ValueError(f"{name} takes no {unknown[0]!r} (its keys: {_names(sorted(_TOOL_CHOICE_KEYS))})")


def check_output_config(config: Any, name: str = "output_config") -> Optional[str]:
    """The shape of ``output_config`` (``effort``, ``format``); returns its effort (or None)."""
    if not is_mapping(config):
        raise TypeError(f"{name} must be a dict with 'effort' and/or 'format', got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in _OUTPUT_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{name} takes only 'effort' and 'format', got {unknown[0]!r}")
    effort = config.get("effort")
    if effort is not None:
        check_effort(effort, "effort")
    fmt = config.get("format")
    if fmt is not None:
        if not is_mapping(fmt):
            raise TypeError(f"{name}['format'] must be a dict {{'type': 'json_schema', 'schema': {{...}}}}")
        if fmt.get("type") != "json_schema":
            raise ValueError(f"{name}['format']['type'] must be 'json_schema', got {fmt.get('type')!r}")
        check_json_schema(fmt.get("schema"), f"{name}['format']['schema']")
    return effort


@functools.lru_cache(maxsize=1)
def content_block_types() -> frozenset[str]:
    """The content-block ``type`` values a message may carry: those of the installed SDK's
    ``MessageContentParam`` (request blocks and the response blocks it takes back)."""
    import typing

    from anthropic.types.message_content_param import MessageContentParam

    found: set[str] = set()

    def visit(tp: Any) -> None:
        annotations = getattr(tp, "__annotations__", None)
        if isinstance(annotations, dict) and "type" in annotations:
            found.update(re.findall(r"Literal\[['\"]([a-z_0-9]+)['\"]", str(annotations["type"])))
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(MessageContentParam)
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def message_keys() -> frozenset[str]:
    """The keys a user / assistant message may carry (the SDK's MessageParam: role, content)."""
    from anthropic.types.assistant_message_param import AssistantMessageParam
    from anthropic.types.user_message_param import UserMessageParam

    return frozenset(UserMessageParam.__annotations__) | frozenset(AssistantMessageParam.__annotations__)


# ------------------------------------------------------------------------------ the rules
def check_request_rules(params: Mapping, where: str = "the request", *, batch: bool = False) -> None:
    """``ValueError`` (before sending) when the Messages API would refuse ``params`` for its
    model: see the module docstring. ``batch=True`` applies the batch maximum of ``max_tokens``.

    >>> check_request_rules({"model": "claude-opus-5-5", "max_tokens": 10, "tool_choice": {"type": "any"},
    ...                      "messages": [{"role": "user", "content": "hi"}]})
    Traceback (most recent call last):
    ValueError: tool_choice={'type': 'any'} forces a tool call, which claude-opus-5-5 refuses ...
    """
    if not is_mapping(params):
        raise TypeError(f"params must be a request body dict, got {type(params).__name__}")
    _check_sampling(params, where)
    effort = None
    config = params.get("output_config")
    if config is not None:
        effort = check_output_config(config)
    thinking = params.get("thinking")
    if thinking is not None:
        thinking = normalize_thinking(thinking)
    choice = params.get("tool_choice")
    if choice is not None:
        check_tool_choice(choice)
    if "cache_control" in params:
        check_cache_control(params["cache_control"], "cache_control")
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        max_tokens = None
    if thinking is not None and thinking["type"] == "enabled" and max_tokens is not None:
        if thinking["budget_tokens"] >= max_tokens:
            raise ValueError(
                f"thinking['budget_tokens']={thinking['budget_tokens']}{_in(where)} must be less than "
                f"max_tokens={max_tokens} (thinking tokens count toward max_tokens); raise max_tokens or "
                "lower the budget"
            )
    model = params.get("model")
    info = model_info(model) if isinstance(model, str) and model else None
    if info is None or not info.known:  # the server decides, past plain shape
        if max_tokens is not None and max_tokens > MAX_TOKENS_CAP:
            raise ValueError(
                f"max_tokens={max_tokens}{_in(where)} is not a token count any model can write (at most "
                f"{MAX_TOKENS_CAP}); give the reply's budget in tokens, e.g. 4096"
            )
        return
    _model_rules(info, params, max_tokens, effort, thinking, where, batch)


def _check_sampling(params: Mapping, where: str) -> None:
    extra_body = params.get("extra_body")
    sources: list[Mapping] = [params, extra_body] if isinstance(extra_body, Mapping) else [params]
    for source in sources:
        for param in SAMPLING_PARAMS:
            if param in source:
                raise removed_sampling(param, source[param], where=_in(where))


def _model_rules(
    info: ModelInfo,
    params: Mapping,
    max_tokens: Optional[int],
    effort: Optional[str],
    thinking: Optional[dict],
    where: str,
    batch: bool,
) -> None:
    model = info.id
    limit = info.batch_max_output if batch else info.max_output
    if max_tokens is not None and max_tokens > limit:
        raise ValueError(
            f"max_tokens={max_tokens}{_in(where)} is above the maximum output of {model} ({limit} tokens"
            f"{' in a batch' if batch else ''}); lower max_tokens to at most {limit}"
        )
    if effort is not None and effort not in info.efforts:
        if not info.efforts:
            raise ValueError(
                f"effort={effort!r}{_in(where)} (output_config.effort): {model} has no effort parameter "
                "(the API refuses it); leave effort unset"
            )
        raise ValueError(
            f"effort={effort!r}{_in(where)} (output_config.effort) is not accepted by {model}, which accepts "
            f"{_names(info.efforts)}"
        )
    if thinking is not None:
        _thinking_rule(info, thinking["type"], effort, where)
    messages = params.get("messages")
    if info.rejects_prefill and isinstance(messages, (list, tuple)) and messages:
        last = messages[-1]
        if is_mapping(last) and last.get("role") == "assistant":
            raise ValueError(
                f"messages{_in(where)} ends with an assistant message (a prefill), which {model} refuses "
                "(the API: 'This model does not support assistant message prefill'); end with a user "
                "message: put the instruction in the system prompt, or ask for JSON with output_schema="
            )
    choice = params.get("tool_choice")
    if info.rejects_forced_tool_choice and isinstance(choice, Mapping) and choice.get("type") in FORCED_TOOL_CHOICES:
        raise ValueError(
            f"tool_choice={dict(choice)!r}{_in(where)} forces a tool call, which {model} refuses (the API: "
            '\'tool_choice: type "tool" and "any" are not supported for this model\'); use '
            "tool_choice={'type': 'auto'} and say in the prompt which tool to call"
        )


def _thinking_rule(info: ModelInfo, kind: str, effort: Optional[str], where: str) -> None:
    model = info.id
    if kind not in info.thinking_types:
        accepted = []
        for t in THINKING_TYPES:
            if t in info.thinking_types:
                cap = info.thinking_max_effort.get(t)
                accepted.append(f"{t!r}" + (f" (up to effort {cap!r})" if cap else ""))
        default = info.thinking_default or "off"
        raise ValueError(
            f"thinking={{'type': {kind!r}}}{_in(where)} is not accepted by {model}, which accepts thinking types "
            f"{', '.join(accepted)}; use one of those, or leave thinking unset (the model's default: {default})"
        )
    if not info.accepts_thinking(kind, effort):
        cap = info.thinking_max_effort.get(kind)
        level = effort or info.default_effort
        given = f"effort={level!r}" + (" (the model's default)" if effort is None else "")
        raise ValueError(
            f"thinking={{'type': {kind!r}}}{_in(where)} is accepted by {model} only up to effort {cap!r}, and "
            f"this request has {given}; pass effort={cap!r} or lower, or thinking='adaptive'"
        )


# ------------------------------------------------------------------------------ JSON schema
_SCHEMA_TYPES: tuple[str, ...] = ("object", "array", "string", "integer", "number", "boolean", "null")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = (
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_COUNTS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_NUMBERS = ("minimum", "maximum", "multipleOf")
_EXCLUSIVE = ("exclusiveMinimum", "exclusiveMaximum")
_STRINGS = ("title", "description", "format", "pattern", "$comment", "$id", "$schema", "$anchor")
_MAX_DEPTH = 64


def check_json_schema(schema: Any, name: str = "output_schema") -> None:
    """``schema`` checked as a JSON Schema (draft 2020-12, the keywords' own shapes: ``type`` one
    of the seven types, ``required`` a list of str, ``properties`` a dict of schemas, ``items`` a
    schema, counts non-negative ints, local ``$ref`` that resolve ...). ``TypeError`` when it is
    not a dict, ``ValueError`` naming ``name`` and the JSON path of the first fault.

    >>> check_json_schema({"type": "object", "required": "a"})
    Traceback (most recent call last):
    ValueError: output_schema is not a valid JSON schema at $.required: 'required' must be a list of ...
    """
    if not is_mapping(schema):
        raise TypeError(f"{name} must be a JSON schema (a dict), got {type(schema).__name__}")
    _walk(schema, schema, "$", name, 0)


def _bad(name: str, path: str, what: str) -> ValueError:
    return ValueError(f"{name} is not a valid JSON schema at {path}: {what}"[:500])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _walk(node: Any, root: Mapping, path: str, name: str, depth: int) -> None:
    if node is True or node is False:
        return
    if not is_mapping(node):
        raise _bad(name, path, f"a schema must be a dict (or true/false), got {type(node).__name__}")
    if depth > _MAX_DEPTH:
        raise _bad(name, path, f"nested deeper than {_MAX_DEPTH} levels")
    for key in node:
        if not isinstance(key, str):
            raise _bad(name, path, f"keys must be str, got {key!r}")
    _check_type(node, path, name)
    _check_keywords(node, root, path, name)
    for key in _SCHEMA_MAPS:
        if key in node:
            value = node[key]
            if not is_mapping(value):
                raise _bad(name, f"{path}.{key}", f"{key!r} must be a dict of schemas, got {type(value).__name__}")
            for prop, sub in value.items():
                _walk(sub, root, f"{path}.{key}.{prop}", name, depth + 1)
    for key in _SCHEMA_ONE:
        if key in node:
            _walk(node[key], root, f"{path}.{key}", name, depth + 1)
    for key in _SCHEMA_LISTS:
        if key in node:
            value = node[key]
            if not isinstance(value, list) or not value:
                raise _bad(name, f"{path}.{key}", f"{key!r} must be a non-empty list of schemas, got {value!r}")
            for i, sub in enumerate(value):
                _walk(sub, root, f"{path}.{key}[{i}]", name, depth + 1)
    if "items" in node:
        items = node["items"]
        if isinstance(items, list):  # the tuple form of drafts 4-7
            for i, sub in enumerate(items):
                _walk(sub, root, f"{path}.items[{i}]", name, depth + 1)
        else:
            _walk(items, root, f"{path}.items", name, depth + 1)


def _check_type(node: Mapping, path: str, name: str) -> None:
    if "type" not in node:
        return
    kind = node["type"]
    kinds = kind if isinstance(kind, list) else [kind]
    if not kinds:
        raise _bad(name, f"{path}.type", "'type' must be a type name or a non-empty list of them")
    for k in kinds:
        if k not in _SCHEMA_TYPES:
            raise _bad(name, f"{path}.type", f"unknown type {k!r}; the types are {_names(_SCHEMA_TYPES)}")
    if len(set(kinds)) != len(kinds):
        raise _bad(name, f"{path}.type", f"'type' lists a type twice: {kinds!r}")


def _check_keywords(node: Mapping, root: Mapping, path: str, name: str) -> None:
    if "required" in node:
        required = node["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _bad(name, f"{path}.required", f"'required' must be a list of property names (str), got {required!r}")
        if len(set(required)) != len(required):
            raise _bad(name, f"{path}.required", f"'required' names a property twice: {required!r}")
    if "enum" in node and not isinstance(node["enum"], list):
        raise _bad(name, f"{path}.enum", f"'enum' must be a list of values, got {node['enum']!r}")
    for key in _COUNTS:
        if key in node and not _is_count(node[key]):
            raise _bad(name, f"{path}.{key}", f"{key!r} must be an int >= 0, got {node[key]!r}")
    for key in _NUMBERS:
        if key in node and not _is_number(node[key]):
            raise _bad(name, f"{path}.{key}", f"{key!r} must be a number, got {node[key]!r}")
    if "multipleOf" in node and not node["multipleOf"] > 0:
        raise _bad(name, f"{path}.multipleOf", f"'multipleOf' must be > 0, got {node['multipleOf']!r}")
    for key in _EXCLUSIVE:
        if key in node and not (_is_number(node[key]) or isinstance(node[key], bool)):
            raise _bad(name, f"{path}.{key}", f"{key!r} must be a number, got {node[key]!r}")
    for key in _STRINGS:
        if key in node and not isinstance(node[key], str):
            raise _bad(name, f"{path}.{key}", f"{key!r} must be a str, got {node[key]!r}")
    if "dependentRequired" in node:
        value = node["dependentRequired"]
        if not is_mapping(value) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value.values()
        ):
            raise _bad(name, f"{path}.dependentRequired", "'dependentRequired' must map names to lists of names")
    if "$ref" in node:
        _check_ref(node["$ref"], root, f"{path}.$ref", name)


def _check_ref(ref: Any, root: Mapping, path: str, name: str) -> None:
    if not isinstance(ref, str):
        raise _bad(name, path, f"'$ref' must be a str, got {ref!r}")
    if ref == "#":
        return
    if not ref.startswith("#/"):
        raise _bad(name, path, f"only local references ('#/...') are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not is_mapping(node) or part not in node:
            raise _bad(name, path, f"'$ref' {ref!r} does not resolve in the schema")
        node = node[part]
