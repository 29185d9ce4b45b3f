"""The emulator's model rules: which model a request names, and what that model accepts.

Every fact comes from the model catalogue (:mod:`_models`): the 404 for an id it does not know,
``max_tokens`` above the model's limit, the thinking types and effort levels it accepts, assistant
prefill and forced ``tool_choice`` on the models that refuse them, ``budget_tokens`` against
``max_tokens``. The texts are the API's where they are published (references/emulator.md lists
them). Also the thinking mode a request runs with (:func:`thinking_mode`) and its thinking tokens.
Private to :mod:`anthropic_emulator`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from _emulator_wire import _ApiError
from _models import CATALOGUE, THINKING_TYPES, ModelInfo

#: Thinking tokens of one reply by effort (the ``think=N`` directive overrides).
THINKING_TOKENS: dict[str, int] = {"low": 2, "medium": 4, "high": 8, "xhigh": 12, "max": 16}
#: Thinking tokens when the model has no effort parameter (extended thinking on Haiku / Opus 4.5).
_NO_EFFORT_THINKING_TOKENS = THINKING_TOKENS["high"]
_DISPLAYS = ("summarized", "omitted")
_THINKING_KEYS: dict[str, frozenset[str]] = {
    "adaptive": frozenset({"type", "display"}),
    "enabled": frozenset({"type", "budget_tokens", "display"}),
    "disabled": frozenset({"type"}),
    "between_tools": frozenset({"type"}),
}
_MIN_BUDGET = 1024
BINDING_BETA = "thinking-binding-controls-2026-08-01"

_USE_ADAPTIVE = 'Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
_PREFILL = "This model does not support assistant message prefill. The conversation must end with a user message."
_FORCED_TOOL = 'tool_choice: type "tool" and "any" are not supported for this model.'
_NO_EFFORT = "This model does not support the effort parameter."
_BUDGET = (
    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"
)


def resolve_model(model: str, extra_models: Mapping[str, str]) -> ModelInfo:
    """The catalogue entry of ``model`` (or of the id ``extra_models`` maps it to); 404 ``model: <id>``.

    A retired model answers the same 404 as an unknown id.
    """
    info = CATALOGUE.get(model)
    if info is None and model in extra_models:
        info = dataclasses.replace(CATALOGUE[extra_models[model]], id=model, alias_of=extra_models[model])
    if info is None or info.lifecycle == "retired":
        raise _ApiError(404, f"model: {model}")
    return info


def model_tag(info: ModelInfo) -> str:
    """The model a thinking block is bound to (a dated snapshot is its alias's model)."""
    return info.alias_of or info.id


def effort_of(body: dict[str, Any], info: ModelInfo) -> Optional[str]:
    """The request's ``output_config.effort``, else the model's default (None: no effort parameter)."""
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return effort if isinstance(effort, str) else info.default_effort


@dataclass(frozen=True)
class ThinkingMode:
    """How a request thinks: the display of its thinking block and its thinking tokens."""

    display: str  # summarized | omitted
    tokens: int


def thinking_mode(body: dict[str, Any], info: ModelInfo, override: Optional[int] = None) -> Optional[ThinkingMode]:
    """The thinking of a (valid) request, None when it does not think.

    No ``thinking`` field: the model's default (on where ``thinking_default == "adaptive"``);
    ``adaptive`` / ``enabled``: on; ``between_tools``: on when the request has tools (progress
    notes, summarized); ``disabled``: off. A forced ``tool_choice`` turns it off. Display: the
    request's ``display``, else ``omitted`` on new-tokenizer models (4.7+, 5.x), ``summarized``
    before. Tokens: ``override`` (the ``think=N`` directive), else by effort.
    """
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return None
    cfg = body.get("thinking")
    kind = cfg.get("type") if isinstance(cfg, dict) else info.thinking_default
    if kind is None or kind == "disabled" or (kind == "between_tools" and not body.get("tools")):
        return None
    default_display = "omitted" if info.tokenizer == "new" else "summarized"
    display = cfg.get("display") if isinstance(cfg, dict) else None
    if kind == "between_tools":
        display = "summarized"
    effort = effort_of(body, info)
    tokens = THINKING_TOKENS.get(effort or "", _NO_EFFORT_THINKING_TOKENS)
    return ThinkingMode(display=display or default_display, tokens=tokens if override is None else override)


def binding_behaviour(body: dict[str, Any]) -> str:
    """``thinking.block_binding.prefix_mismatch_behavior`` (``error`` unless the request says ``drop_block``)."""
    cfg = body.get("thinking")
    binding = cfg.get("block_binding") if isinstance(cfg, dict) else None
    value = binding.get("prefix_mismatch_behavior") if isinstance(binding, dict) else None
    return "drop_block" if value == "drop_block" else "error"


def check_model_rules(
    body: dict[str, Any], info: ModelInfo, *, betas: str = "", batch: bool = False, count_tokens: bool = False
) -> None:
    """Raise the API's 400 for what ``info``'s model does not accept (the body's shape is already valid).

    ``batch``: the batch ``max_tokens`` ceiling applies; ``count_tokens``: no ``max_tokens`` rules.
    """
    if not count_tokens:
        limit = info.batch_max_output if batch else info.max_output
        if body["max_tokens"] > limit:
            raise _ApiError(
                400,
                f"max_tokens: {body['max_tokens']} > {limit}, which is the maximum allowed number of output "
                f"tokens for {body['model']}",
            )
    effort = _check_effort(body, info)
    _check_thinking(body, info, effort, betas=betas, count_tokens=count_tokens)
    messages = body["messages"]
    if info.rejects_prefill and messages[-1]["role"] == "assistant" and not _is_paused_turn(messages[-1]):
        raise _ApiError(400, _PREFILL)
    choice = body.get("tool_choice")
    if info.rejects_forced_tool_choice and isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _ApiError(400, _FORCED_TOOL)


def _is_paused_turn(message: dict[str, Any]) -> bool:
    """A paused server-tool turn sent back to continue it (``pause_turn``) is not a prefill."""
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and str(b.get("type", "")).startswith("server_tool_use") for b in content
    )


def _check_effort(body: dict[str, Any], info: ModelInfo) -> Optional[str]:
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is None:
        return info.default_effort
    if not info.efforts:
        raise _ApiError(400, _NO_EFFORT)
    if effort not in info.efforts:
        raise _ApiError(
            400,
            f'output_config.effort: "{effort}" is not supported for this model. '
            f"Supported values: {', '.join(info.efforts)}.",
        )
    return str(effort)


def _check_thinking(
    body: dict[str, Any], info: ModelInfo, effort: Optional[str], *, betas: str, count_tokens: bool
) -> None:
    cfg = body.get("thinking")
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise _ApiError(400, "thinking: Input should be a valid dictionary")
    kind = cfg.get("type")
    if kind not in THINKING_TYPES:
        raise _ApiError(400, "thinking.type: Input should be " + " or ".join(repr(t) for t in THINKING_TYPES))
    allowed = _THINKING_KEYS[kind] | ({"block_binding"} if BINDING_BETA in betas else set())
    for key in cfg:
        if key not in allowed:
            raise _ApiError(400, f"thinking.{kind}.{key}: Extra inputs are not permitted")
    if cfg.get("display") is not None and cfg["display"] not in _DISPLAYS:
        raise _ApiError(400, f"thinking.{kind}.display: Input should be 'summarized' or 'omitted'")
    binding = cfg.get("block_binding")
    if binding is not None and (
        not isinstance(binding, dict) or binding.get("prefix_mismatch_behavior") not in ("error", "drop_block")
    ):
        raise _ApiError(
            400, f"thinking.{kind}.block_binding.prefix_mismatch_behavior: Input should be 'error' or 'drop_block'"
        )
    if kind == "enabled":
        budget = cfg.get("budget_tokens")
        if "budget_tokens" not in cfg:
            raise _ApiError(400, "thinking.enabled.budget_tokens: Field required")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise _ApiError(400, "thinking.enabled.budget_tokens: Input should be a valid integer")
        if budget < _MIN_BUDGET:
            raise _ApiError(
                400, f"thinking.enabled.budget_tokens: Input should be greater than or equal to {_MIN_BUDGET}"
            )
    if not info.accepts_thinking(kind, effort):
        raise _ApiError(400, _thinking_refusal(info, kind, effort))
    if kind == "enabled" and not count_tokens and cfg["budget_tokens"] >= body["max_tokens"]:
        raise _ApiError(400, _BUDGET)


def _thinking_refusal(info: ModelInfo, kind: str, effort: Optional[str]) -> str:
    """The 400 text for a ``thinking.type`` the model does not accept (at this effort)."""
    types = info.thinking_types
    if kind in types:  # accepted only up to some effort
        cap = info.thinking_max_effort.get(kind, "")
        return (
            f'"thinking.type.{kind}" is not supported with "output_config.effort" "{effort}" on this model. '
            f'Use an effort up to "{cap}", or "thinking.type.adaptive".'
        )
    if kind == "adaptive":
        return "adaptive thinking is not supported on this model"
    if kind == "disabled" and "between_tools" in types:
        return (
            '"thinking.type.disabled" is not supported for this model. Use "thinking.type.between_tools" to turn '
            'off up-front thinking, or "thinking.type.adaptive" and "output_config.effort" to control thinking '
            "behavior."
        )
    if kind == "disabled" and "enabled" in types:
        return (
            '"thinking.type.disabled" is not supported for this model. Thinking defaults to adaptive mode when not '
            'specified; use "thinking.type.enabled" with "budget_tokens" for extended thinking.'
        )
    if kind == "between_tools" and "disabled" in types:
        return '"thinking.type.between_tools" is not supported for this model. Use "thinking.type.disabled" instead.'
    if "adaptive" not in types:
        return f'"thinking.type.{kind}" is not supported for this model.'
    return f'"thinking.type.{kind}" is not supported for this model. {_USE_ADAPTIVE}'


def check_extra_models(value: Any) -> dict[str, str]:
    """The ``extra_models`` setting: a dict of ids the catalogue lacks -> the catalogued id each behaves like."""
    if not isinstance(value, dict):
        raise TypeError(f"extra_models: expected a dict of model id -> catalogued model id, got {type(value).__name__}")
    out: dict[str, str] = {}
    for key, target in value.items():
        if not isinstance(key, str) or not key or not isinstance(target, str):
            raise TypeError(f"extra_models: expected non-empty string ids, got {key!r}: {target!r}")
        if key in CATALOGUE:
            raise ValueError(f"extra_models: {key!r} is already in the model catalogue")
        if target not in CATALOGUE:
            raise ValueError(f"extra_models: {key!r} maps to {target!r}, which is not in the model catalogue")
        out[key] = target
    return out
