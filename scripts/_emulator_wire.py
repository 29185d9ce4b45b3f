"""The emulator's HTTP wire: API error bodies, ids and timestamps, the request log record and SSE framing.

Private to :mod:`anthropic_emulator` (which re-exports :class:`RequestRecord`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

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


_REC_KEY: Any = web.RequestKey("emulator_record", RequestRecord) if hasattr(web, "RequestKey") else "emulator_record"
_RID_KEY: Any = web.RequestKey("emulator_request_id", str) if hasattr(web, "RequestKey") else "emulator_request_id"


class _ApiError(Exception):
    """Raised inside handlers to answer an API error body."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        etype, default_message = _ERROR_TYPES.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error")
        )
        super().__init__(message or default_message)
        self.status = status
        self.error_type = error_type or etype
        self.message = message or default_message
        self.headers = headers or {}


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


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


RequestRecord.__module__ = "anthropic_emulator"
