"""The emulator's Models API: ``GET /v1/models`` and ``GET /v1/models/{model_id}``, from the catalogue.

Each catalogued id (dated snapshots included, in the SDK's order) is a ``ModelInfo`` object whose
``capabilities`` come from :mod:`_models`: thinking types, effort levels; batch and structured
outputs are supported by every catalogued model. ``extra_models`` ids are listed after them,
with the facts of the model each behaves like. :class:`_ModelsMixin` is mixed into
:class:`anthropic_emulator.Emulator`. Private to :mod:`anthropic_emulator`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any

from aiohttp import web

from _emulator_wire import _ApiError
from _models import CATALOGUE, EFFORT_LEVELS, THINKING_TYPES, ModelInfo

_LIFECYCLES = ("active", "deprecated", "retired")
_DEFAULT_LIFECYCLES = ("active", "deprecated")
_EPOCH = "1970-01-01T00:00:00Z"


def _date(iso: str | None) -> str | None:
    return f"{iso}T00:00:00Z" if iso else None


def _flag(value: bool) -> dict[str, bool]:
    return {"supported": bool(value)}


def capabilities(info: ModelInfo) -> dict[str, Any]:
    """The ``capabilities`` object of one model (every leaf ``{"supported": bool}``)."""
    effort = {level: _flag(level in info.efforts) for level in EFFORT_LEVELS}
    effort["supported"] = bool(info.efforts)  # type: ignore[assignment]
    thinks = bool(info.thinking_types - {"disabled"})
    return {
        "batch": _flag(True),
        "citations": _flag(True),
        "code_execution": _flag(True),
        "context_management": {
            "supported": True,
            "clear_thinking_20251015": _flag(thinks),
            "clear_tool_uses_20250919": _flag(True),
            "compact_20260112": _flag(True),
        },
        "effort": effort,
        "image_input": _flag(True),
        "pdf_input": _flag(True),
        "server_tools": {"supported": True, "code_execution": _flag(True), "web_search": _flag(True)},
        "structured_outputs": _flag(True),
        "thinking": {
            "supported": thinks,
            "types": {
                kind: _flag(kind in info.thinking_types or (kind == "disabled" and not thinks))
                for kind in THINKING_TYPES
            },
        },
    }


def model_json(info: ModelInfo) -> dict[str, Any]:
    """One model as the Models API returns it (SDK ``types.ModelInfo``)."""
    lifecycle = info.api_lifecycle
    return {
        "id": info.id,
        "type": "model",
        "display_name": info.display_name,
        "created_at": _date(info.released) or _EPOCH,
        "lifecycle": lifecycle,
        "deprecated_at": _date(getattr(info, "deprecated", None)) if lifecycle != "active" else None,
        "retires_at": _date(info.retires) if lifecycle != "active" else None,
        "line": info.line or None,
        "max_input_tokens": info.context_window,
        "max_tokens": info.max_output,
        "capabilities": capabilities(info),
    }


class _ModelsMixin:
    """The Models API handlers of :class:`anthropic_emulator.Emulator` (its lock and settings)."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _settings: dict[str, Any]

        def _base_headers(self, request: web.Request) -> dict[str, str]: ...

    def _model_table(self) -> dict[str, ModelInfo]:
        """Every model the emulator serves: the catalogue, then the ``extra_models`` ids."""
        with self._lock:
            extra = dict(self._settings["extra_models"])
        table = dict(CATALOGUE)
        for mid, target in extra.items():
            table[mid] = dataclasses.replace(CATALOGUE[target], id=mid, display_name=mid, alias_of=None)
        return table

    async def _h_models_list(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise _ApiError(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _ApiError(400, "limit: Input should be between 1 and 1000")
        wanted = q.getall("lifecycle[]", []) + q.getall("lifecycle", [])
        for value in wanted:
            if value not in _LIFECYCLES:
                raise _ApiError(400, "lifecycle: Input should be 'active', 'deprecated' or 'retired'")
        if len(wanted) > 3:
            raise _ApiError(400, "lifecycle: List should have at most 3 items")
        keep = set(wanted or _DEFAULT_LIFECYCLES)
        models = [model_json(info) for info in self._model_table().values() if info.api_lifecycle in keep]
        ids = [m["id"] for m in models]
        for key in ("after_id", "before_id"):
            if q.get(key) and q[key] not in ids:
                raise _ApiError(400, f"{key}: unknown model id {q[key]!r}")
        if q.get("after_id"):
            rest = models[ids.index(q["after_id"]) + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif q.get("before_id"):
            rest = models[: ids.index(q["before_id"])]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = models[:limit], len(models) > limit
        out = {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_models_retrieve(self, request: web.Request) -> web.Response:
        mid = request.match_info["model_id"]
        info = self._model_table().get(mid)
        if info is None:
            raise _ApiError(404, f"model: {mid}")
        return web.json_response(model_json(info), headers=self._base_headers(request))
