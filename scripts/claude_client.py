"""Call Claude from Python: single calls, streaming, parallel fan-out, conversations.

Everything goes through one pooled :class:`anthropic.Anthropic` client per (key, base URL,
timeout), created lazily and shared by every call and thread of the process.

Quick start::

    from claude_client import invoke_claude, invoke_parallel

    answer = invoke_claude("Name three prime numbers.")
    print(answer, answer.usage.output_tokens, answer.cost_usd)

    results = invoke_parallel(
        [{"prompt": "Review the security of ..."}, {"prompt": "Review the performance of ..."}],
        shared_system="You are a senior reviewer.",
    )
    print(results.usage, results.cost_usd)

Credentials, first match wins: ``api_key=`` > ``ANTHROPIC_API_KEY`` >
``<dir>/ANTHROPIC_API_KEY.txt`` > ``<dir>/API_CREDENTIALS.json`` (field ``anthropic_api_key``) >
``<dir>/claude.env`` (a line ``API_KEY=...``, the seed's file), where ``<dir>`` is ``$ORCHESTRATING_AGENTS_PROJECT_DIR`` or ``/mnt/project``. The base URL is
``base_url=`` > ``ANTHROPIC_BASE_URL`` > the SDK default. The key is never logged, printed or put
into an exception message or repr.

Errors are :class:`ClaudeInvocationError` with a ``kind`` (see :data:`TRANSIENT_KINDS`); bad input
raises ``ValueError`` / ``TypeError`` before anything is sent.

Threading: every public function is thread-safe. Streaming callbacks run on the thread that reads
the stream (a worker thread in the parallel functions).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterable, Optional, Union

import anthropic
import httpx2

__all__ = [
    "DEFAULT_MODEL",
    "ERROR_KINDS",
    "PRICES",
    "TRANSIENT_KINDS",
    "ClaudeInvocationError",
    "ClaudeResponse",
    "ConversationThread",
    "InterruptToken",
    "MissingAPIKeyError",
    "ParallelResults",
    "StallDetector",
    "Usage",
    "configure",
    "estimate_cost",
    "get_anthropic_api_key",
    "get_available_models",
    "get_client",
    "invoke_batch",
    "invoke_claude",
    "invoke_claude_json",
    "invoke_claude_streaming",
    "invoke_parallel",
    "invoke_parallel_interruptible",
    "invoke_parallel_streaming",
    "parse_json_response",
    "reset_client",
]

logger = logging.getLogger(__name__)

#: The model used when none is given (the one place it is defined).
DEFAULT_MODEL = "claude-sonnet-4-6"

#: Current model ids, newest first within each family (see :func:`get_available_models`).
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

#: Environment variable naming the project-knowledge folder searched for key files.
PROJECT_DIR_ENV = "ORCHESTRATING_AGENTS_PROJECT_DIR"
DEFAULT_PROJECT_DIR = "/mnt/project"
KEY_FILE_NAME = "ANTHROPIC_API_KEY.txt"
CREDENTIALS_FILE_NAME = "API_CREDENTIALS.json"
CREDENTIALS_FIELD = "anthropic_api_key"
#: The seed's env-style key file (a line ``API_KEY=...``), the last fallback.
ENV_FILE_NAME = "claude.env"
ENV_FILE_FIELDS = ("API_KEY", "ANTHROPIC_API_KEY")

#: The API rejects a request with more cache_control blocks than this.
MAX_CACHE_BREAKPOINTS = 4

ERROR_KINDS = frozenset(
    {
        "auth",
        "rate_limit",
        "overloaded",
        "server",
        "connection",
        "timeout",
        "bad_request",
        "context_overflow",
        "interrupted",
        "stalled",
        "callback",
        # message batches (scripts/message_batches.py): per-item outcomes, never transient
        "batch_errored",
        "batch_expired",
        "batch_canceled",
    }
)

#: Kinds worth retrying; the one classification used by every retry path of the library.
TRANSIENT_KINDS = frozenset({"rate_limit", "overloaded", "server", "connection", "timeout", "stalled"})

#: USD per million tokens, (input, output), keyed by model-name prefix; the longest prefix wins.
#: Override or extend at run time: ``PRICES["claude-sonnet-4"] = (3.0, 15.0)``.
PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
}

_EPHEMERAL = {"type": "ephemeral"}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ClaudeInvocationError(Exception):
    """A call to Claude failed.

    ``kind`` is one of ``auth, rate_limit, overloaded, server, connection, timeout, bad_request,
    context_overflow, interrupted, stalled, callback`` (None for a failure that is not an API
    failure), or for one request of a message batch (:func:`invoke_batch`) ``batch_errored``
    (the item's result was ``errored``; ``details`` is the API's error body), ``batch_expired``
    or ``batch_canceled``; the full set is :data:`ERROR_KINDS`. ``transient`` says whether a retry may succeed; ``retry_after`` is the server's
    requested wait in seconds (or None). Parallel runs attach ``results`` (input order, None where
    failed) and ``errors`` (index -> exception). The SDK exception, if any, is the ``__cause__``.

    >>> try:
    ...     invoke_claude("hi")
    ... except ClaudeInvocationError as e:
    ...     print(e.kind, e.transient, e.status_code)
    """

    def __init__(
        self,
        message: str,
        status_code: Optional[int] = None,
        details: Any = None,
        *,
        kind: Optional[str] = None,
        request_id: Optional[str] = None,
        results: Optional[list] = None,
        errors: Optional[dict[int, BaseException]] = None,
        attempts: Optional[int] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        if kind is not None and kind not in ERROR_KINDS:
            raise ValueError(f"kind must be one of {sorted(ERROR_KINDS)} or None, got {kind!r}")
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.details = details
        self.kind = kind
        self.request_id = request_id
        self.results = results
        self.errors = errors
        self.attempts = attempts
        self.retry_after = retry_after
        # The server's ``x-should-retry`` header (True / False), when it sent one.
        self._server_says_retry: Optional[bool] = None

    @property
    def transient(self) -> bool:
        """True when the failure is worth retrying: ``kind in TRANSIENT_KINDS``, unless the server
        said otherwise with an ``x-should-retry: true|false`` header (as the SDK obeys it)."""
        if self._server_says_retry is not None:
            return self._server_says_retry
        return self.kind in TRANSIENT_KINDS

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, status_code={self.status_code!r}, message={self.message!r})"

    def __reduce__(self) -> Any:
        return (type(self), (self.message, self.status_code, self.details), dict(self.__dict__))


class MissingAPIKeyError(ClaudeInvocationError, ValueError):
    """No usable API key: none found, or a key file that is unreadable, empty or malformed.

    A :class:`ClaudeInvocationError` with ``kind == "auth"`` and also a ``ValueError``, so
    callers of the seed skill that caught ``ValueError`` keep working. The message says where
    the library looked; it never contains a key.

    >>> try:
    ...     key = get_anthropic_api_key()
    ... except ValueError as e:      # or: except ClaudeInvocationError
    ...     print(e.kind, e)         # auth No Anthropic API key found. Looked in: ...
    """

    def __init__(self, message: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("kind", "auth")
        super().__init__(message, *args, **kwargs)


def _header_float(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        number = when.timestamp() - time.time()
    if math.isnan(number) or math.isinf(number):
        return None
    return max(0.0, number)


def _retry_after_from(headers: Any) -> Optional[float]:
    """The larger of ``retry-after`` (seconds or HTTP date) and ``retry-after-ms`` / 1000."""
    if headers is None:
        return None
    seconds = _header_float(headers.get("retry-after"))
    millis = _header_float(headers.get("retry-after-ms"))
    candidates = [v for v in (seconds, None if millis is None else millis / 1000.0) if v is not None]
    return max(candidates) if candidates else None


_CONTEXT_OVERFLOW_MARKERS = (
    "prompt is too long",
    "context window",
    "context length",
    "exceed context limit",
    "exceeds the context",
    "too many tokens",
)


def _error_from(exc: BaseException) -> ClaudeInvocationError:
    """Classify any exception as a :class:`ClaudeInvocationError` (returned, not raised).

    The caller chains it: ``raise _error_from(e) from e``. A ClaudeInvocationError is returned as is.
    Any API key the library knows of (or that the failed request carried) is redacted from the
    message: transport errors may quote a header.
    """
    if isinstance(exc, ClaudeInvocationError):
        return exc
    error = _classify_error(exc)
    secrets = _secrets_for(exc)
    if secrets:
        message = _redact(error.message, secrets)
        if message != error.message:
            error.message = message
            error.args = (message,)
    return error


_REDACTED = "[redacted API key]"


def _secrets_for(exc: BaseException) -> list[str]:
    """The keys to redact from an error message about ``exc`` (longest first)."""
    with _state_lock:
        found = set(_known_keys)
        found.update(k for k in (_resolved_key, _config.get("api_key")) if k)
    try:
        request = getattr(exc, "request", None)  # httpx raises RuntimeError when it is not set
    except Exception:
        request = None
    headers = getattr(request, "headers", None)
    if headers is not None:
        for name in ("x-api-key", "authorization"):
            try:
                value = headers.get(name)
            except Exception:  # pragma: no cover - a header that cannot be decoded
                value = None
            if isinstance(value, str) and value.strip():
                found.add(value.strip())
                if value.lower().startswith("bearer "):
                    found.add(value[len("bearer "):].strip())
    variants: set[str] = set()
    for key in found:
        if not isinstance(key, str) or len(key) < 8:  # too short to be a key; would over-redact
            continue
        variants.add(key)
        variants.add(repr(key)[1:-1])  # as quoted in a str repr (escaped line breaks)
        variants.add(repr(key.encode("utf-8", "backslashreplace"))[2:-1])  # ... or a bytes repr
    return sorted(variants, key=len, reverse=True)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _classify_error(exc: BaseException) -> ClaudeInvocationError:
    """The body of :func:`_error_from` (no redaction)."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        etype = getattr(exc, "type", None)
        api_message = getattr(exc, "api_message", None) or exc.message
        if etype == "overloaded_error" or isinstance(exc, anthropic.OverloadedError) or status == 529:
            kind = "overloaded"
        elif isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)) or status in (401, 403):
            kind = "auth"
        elif isinstance(exc, anthropic.RateLimitError) or status == 429 or etype == "rate_limit_error":
            kind = "rate_limit"
        elif status == 408:
            kind = "timeout"
        elif status == 409 or status >= 500 or etype == "api_error":
            kind = "server"
        elif status == 400 or etype == "invalid_request_error":
            lowered = str(api_message).lower()
            kind = "context_overflow" if any(m in lowered for m in _CONTEXT_OVERFLOW_MARKERS) else "bad_request"
        elif 400 <= status < 500:
            kind = "bad_request"
        else:  # a mid-stream error event of an unknown type on a 200 response
            kind = "server"
        where = f"HTTP {status}" + (f" {etype}" if etype else "")
        headers = getattr(exc.response, "headers", None)
        error = ClaudeInvocationError(
            f"Claude API error ({kind}, {where}): {api_message}",
            status_code=status,
            details=exc.body,
            kind=kind,
            request_id=getattr(exc, "request_id", None),
            retry_after=_retry_after_from(headers),
        )
        should_retry = headers.get("x-should-retry") if headers is not None else None
        if should_retry in ("true", "false"):
            error._server_says_retry = should_retry == "true"
        return error
    if isinstance(exc, anthropic.APITimeoutError) or isinstance(exc, (httpx2.TimeoutException, socket.timeout)):
        return ClaudeInvocationError(f"Claude API request timed out: {type(exc).__name__}", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return ClaudeInvocationError(f"Could not reach the Claude API: {exc.message}{detail}", kind="connection")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return ClaudeInvocationError(
            f"Connection to the Claude API failed mid-response: {type(exc).__name__}: {exc}", kind="connection"
        )
    return ClaudeInvocationError(f"Claude call failed: {type(exc).__name__}: {exc}", kind=None)


# --------------------------------------------------------------------------------------------
# Usage, cost, responses
# --------------------------------------------------------------------------------------------


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if _is_mapping(obj):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _merge_tier(a: Optional[str], b: Optional[str]) -> Optional[str]:
    if a is None or b is None:
        return a if b is None else b
    return a if a == b else "mixed"


@dataclass(frozen=True)
class Usage:
    """Token usage of one call or a sum of calls (``a + b``).

    ``input_tokens`` counts only uncached input; :attr:`total_input_tokens` adds cache writes and
    reads. ``cache_creation_1h_input_tokens`` is the part of the writes made with the one-hour TTL.

    >>> r = invoke_claude("hi"); r.usage.output_tokens
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    service_tier: Optional[str] = None

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def __add__(self, other: "Usage") -> "Usage":
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_1h_input_tokens + other.cache_creation_1h_input_tokens,
            _merge_tier(self.service_tier, other.service_tier),
        )

    def __radd__(self, other: Any) -> "Usage":
        if other == 0:  # sum()
            return self
        return NotImplemented

    @classmethod
    def from_sdk(cls, u: Any) -> "Usage":
        """Build from an SDK ``Usage`` object or a usage dict (None gives zeros)."""
        if u is None:
            return cls()
        return cls(
            int(_field(u, "input_tokens", 0) or 0),
            int(_field(u, "output_tokens", 0) or 0),
            int(_field(u, "cache_creation_input_tokens", 0) or 0),
            int(_field(u, "cache_read_input_tokens", 0) or 0),
            int(_field(_field(u, "cache_creation"), "ephemeral_1h_input_tokens", 0) or 0),
            _field(u, "service_tier"),
        )


_price_lock = threading.Lock()
_unknown_models: set[str] = set()


# model -> price, valid while PRICES equals the snapshot it was computed from (PRICES may be
# edited at run time; comparing two small dicts is cheaper than the prefix search).
_price_cache: dict[str, Optional[tuple[float, float]]] = {}
_price_snapshot: dict[str, tuple[float, float]] = {}


def _price_for(model: str) -> Optional[tuple[float, float]]:
    global _price_snapshot
    if PRICES == _price_snapshot:
        try:
            return _price_cache[model]
        except KeyError:
            pass
    prices = dict(PRICES)
    best = None
    for prefix, price in prices.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    with _price_lock:
        if prices != _price_snapshot:
            _price_cache.clear()
            _price_snapshot = prices
        if len(_price_cache) < 1024:
            _price_cache[model] = None if best is None else best[1]
    return None if best is None else best[1]


def estimate_cost(usage: Usage, model: str, *, batch: bool = False) -> Optional[float]:
    """USD cost of ``usage`` on ``model`` from :data:`PRICES` (None for an unknown model).

    Cache writes cost 1.25x the input price (2x with the one-hour TTL), reads 0.1x; the batch
    tier (``batch=True`` or ``usage.service_tier == "batch"``) halves everything.

    >>> estimate_cost(Usage(input_tokens=1_000_000), "claude-sonnet-4-6")
    3.0
    """
    if not isinstance(usage, Usage):
        raise TypeError(f"usage must be a Usage, got {type(usage).__name__}")
    price = _price_for(model or "")
    if price is None:
        with _price_lock:
            first = model not in _unknown_models
            _unknown_models.add(model)
        if first:
            logger.warning("No price known for model %r; cost_usd is None (add it to claude_client.PRICES)", model)
        return None
    per_in, per_out = price[0] / 1e6, price[1] / 1e6
    write_1h = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    write_5m = usage.cache_creation_input_tokens - write_1h
    cost = (
        usage.input_tokens * per_in
        + write_5m * 1.25 * per_in
        + write_1h * 2.0 * per_in
        + usage.cache_read_input_tokens * 0.1 * per_in
        + usage.output_tokens * per_out
    )
    if batch or usage.service_tier == "batch":
        cost *= 0.5
    return cost


class ClaudeResponse(str):
    """The text of a reply: a real ``str`` that also carries the call's metadata.

    Attributes: ``usage`` (:class:`Usage`), ``stop_reason``, ``model``, ``id``, ``request_id``,
    ``cost_usd`` (None for an unknown model) and ``content`` (the content blocks as dicts).
    ``str(r)`` gives a plain ``str``; ``json.dumps``, ``==`` and pickling work as for ``str``.

    >>> r = invoke_claude("hi")
    >>> isinstance(r, str), r.stop_reason, r.usage.input_tokens
    """

    usage: Usage
    stop_reason: Optional[str]
    model: Optional[str]
    id: Optional[str]
    request_id: Optional[str]
    cost_usd: Optional[float]
    content: list[dict]

    def __new__(
        cls,
        text: str = "",
        *,
        usage: Optional[Usage] = None,
        stop_reason: Optional[str] = None,
        model: Optional[str] = None,
        id: Optional[str] = None,
        request_id: Optional[str] = None,
        cost_usd: Optional[float] = None,
        content: Optional[list[dict]] = None,
    ) -> "ClaudeResponse":
        obj = super().__new__(cls, text)
        obj.usage = usage if usage is not None else Usage()
        obj.stop_reason = stop_reason
        obj.model = model
        obj.id = id
        obj.request_id = request_id
        obj.cost_usd = cost_usd
        obj.content = content if content is not None else []
        return obj

    def __str__(self) -> str:
        return str.__str__(self)

    def __reduce__(self) -> Any:
        return (_rebuild_response, (str.__str__(self), dict(self.__dict__)))


def _rebuild_response(text: str, state: dict) -> ClaudeResponse:
    obj = ClaudeResponse(text)
    obj.__dict__.update(state)
    return obj


def _block_dict(block: Any) -> dict:
    if getattr(block, "type", None) == "text" and not getattr(block, "citations", None):
        return {"type": "text", "text": block.text}  # the common case, without pydantic's serializer
    data = block.model_dump(mode="json", exclude_none=True) if hasattr(block, "model_dump") else dict(block)
    data.pop("parsed_output", None)
    if data.get("type") == "text" and not data.get("citations"):
        data.pop("citations", None)
    return data


def _response_from_message(message: Any, request_id: Optional[str], model_hint: str) -> ClaudeResponse:
    return _build_response(
        [_block_dict(b) for b in message.content],
        Usage.from_sdk(message.usage),
        getattr(message, "stop_reason", None),
        getattr(message, "model", None) or model_hint,
        getattr(message, "id", None),
        request_id,
    )


def _build_response(
    content: list[dict],
    usage: Usage,
    stop_reason: Optional[str],
    model: str,
    message_id: Optional[str],
    request_id: Optional[str],
) -> ClaudeResponse:
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    if stop_reason == "max_tokens":
        logger.warning(
            "Reply from %s was cut at max_tokens (%d output tokens); raise max_tokens for the full text",
            model,
            usage.output_tokens,
        )
    return ClaudeResponse(
        text,
        usage=usage,
        stop_reason=stop_reason,
        model=model,
        id=message_id,
        request_id=request_id,
        cost_usd=estimate_cost(usage, model),
        content=content,
    )


def _totals(responses: Iterable[Any]) -> tuple[Usage, Optional[float]]:
    """Summed usage and cost of the :class:`ClaudeResponse` items of ``responses`` (other items,
    errors or None, are skipped); the cost is None once any response has no known price."""
    usage = Usage()
    cost: Optional[float] = 0.0
    for response in responses:
        if isinstance(response, ClaudeResponse):
            usage = usage + response.usage
            cost = None if (cost is None or response.cost_usd is None) else cost + response.cost_usd
    return usage, cost


class ParallelResults(list):
    """The list returned by the parallel functions (input order), plus the run's totals.

    ``usage`` (summed :class:`Usage` of every successful request, the cache pilot included),
    ``cost_usd`` (summed; None if a model has no known price) and ``errors`` (index -> exception).

    >>> results = invoke_parallel([{"prompt": "a"}, {"prompt": "b"}])
    >>> results[0], results.usage.output_tokens, results.cost_usd, results.errors
    """

    def __init__(
        self,
        items: Iterable[Any] = (),
        *,
        usage: Optional[Usage] = None,
        cost_usd: Optional[float] = None,
        errors: Optional[dict[int, BaseException]] = None,
    ) -> None:
        super().__init__(items)
        self.usage = usage if usage is not None else Usage()
        self.cost_usd = cost_usd
        self.errors = errors if errors is not None else {}


# --------------------------------------------------------------------------------------------
# Credentials and the shared client
# --------------------------------------------------------------------------------------------

_state_lock = threading.RLock()
_resolved_key: Optional[str] = None
_clients: dict[tuple, anthropic.Anthropic] = {}
_derived: dict[tuple, anthropic.Anthropic] = {}
_config: dict[str, Any] = {}
# Every key a client was made with (kept after reset_client: calls in flight may still fail);
# only used to redact error messages (_error_from).
_known_keys: set[str] = set()


def _project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or DEFAULT_PROJECT_DIR)


def _missing_key_error(directory: Path) -> MissingAPIKeyError:
    return MissingAPIKeyError(
        "No Anthropic API key found. Looked in: the api_key= argument / configure(api_key=...); "
        "the ANTHROPIC_API_KEY environment variable; "
        f"{directory / KEY_FILE_NAME}; {directory / CREDENTIALS_FILE_NAME} (field {CREDENTIALS_FIELD!r}); "
        f"{directory / ENV_FILE_NAME} (a line API_KEY=...). "
        f"Fix: export ANTHROPIC_API_KEY, or put the key in one of those files "
        f"(set {PROJECT_DIR_ENV} to use another folder).",
    )


def _check_key(key: str, source: str) -> str:
    """``key`` stripped, or :class:`MissingAPIKeyError` naming ``source`` (never the key).

    A key must be one line of printable ASCII without spaces: anything else cannot be sent as
    an HTTP header, and the transport error would quote the header (the key).
    """
    key = key.strip()
    if not key:
        raise MissingAPIKeyError(f"The API key from {source} is empty")
    for position, char in enumerate(key):
        if "!" <= char <= "~":
            continue
        if char in "\r\n":
            problem = "a line break"
        elif char.isspace():
            problem = "whitespace"
        elif ord(char) < 128 or not char.isprintable():
            problem = "a control character"
        else:
            problem = "a non-ASCII character"
        raise MissingAPIKeyError(
            f"The API key from {source} contains {problem} (at character {position + 1}); an API key is "
            f"one line of printable ASCII without spaces. Fix the key there"
            + (" (the file must hold only the key)" if " file " in source else "")
        )
    return key


def _read_key_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is not part of the key
    except (OSError, UnicodeDecodeError) as exc:
        raise MissingAPIKeyError(f"Could not read the {what} {path}: {type(exc).__name__}") from None


_INLINE_COMMENT = re.compile(r"\s#")


def _env_file_value(value: str) -> str:
    """The value of a ``claude.env`` line: quotes removed, or an inline `` # comment`` cut off."""
    value = value.strip()
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        if end > 0:
            rest = value[end + 1:].strip()
            if not rest or rest.startswith("#"):
                return value[1:end].strip()
        return value
    return _INLINE_COMMENT.split(value, 1)[0].strip()


def _key_from_env_file(env_file: Path) -> str:
    """The key of a ``claude.env`` file: the last ``API_KEY=...`` line.

    ``export``, quotes, ``#`` comment lines and inline `` # comments`` after the value are allowed.
    """
    key = None
    key_line = 0
    for number, line in enumerate(_read_key_file(env_file, "key file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        if not sep or name.strip() not in ENV_FILE_FIELDS:
            continue
        key = _env_file_value(value) or None
        key_line = number
    if key is None:
        # Never quote the file's lines: they may hold a key under another name.
        raise MissingAPIKeyError(
            f"The key file {env_file} has no non-empty line API_KEY=... (or ANTHROPIC_API_KEY=...)"
        )
    return _check_key(key, f"the key file {env_file} (line {key_line})")


def _key_from_files(directory: Path) -> Optional[str]:
    """The key from the project folder: ANTHROPIC_API_KEY.txt > API_CREDENTIALS.json > claude.env."""
    key_file = directory / KEY_FILE_NAME
    if key_file.is_file():
        return _check_key(_read_key_file(key_file, "API key file"), f"the API key file {key_file}")
    cred_file = directory / CREDENTIALS_FILE_NAME
    if cred_file.is_file():
        text = _read_key_file(cred_file, "credentials file")
        try:
            data = json.loads(text)
        except ValueError as exc:
            # `from None`: a JSONDecodeError holds the whole document (the key) in `.doc`.
            raise MissingAPIKeyError(
                f"Could not parse the credentials file {cred_file} as JSON ({type(exc).__name__})"
            ) from None
        value = data.get(CREDENTIALS_FIELD) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise MissingAPIKeyError(
                f"The credentials file {cred_file} has no non-empty string field {CREDENTIALS_FIELD!r}"
            )
        return _check_key(value, f"the credentials file {cred_file} (field {CREDENTIALS_FIELD!r})")
    env_file = directory / ENV_FILE_NAME
    if env_file.is_file():
        return _key_from_env_file(env_file)
    return None


def _resolve_api_key(explicit: Optional[str] = None) -> str:
    """The API key: explicit > configure() > env > key file > credentials JSON > claude.env (cached once)."""
    global _resolved_key
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ValueError("api_key must be a non-empty string")
        return _check_key(explicit, "the api_key= argument")
    with _state_lock:
        configured = _config.get("api_key")
        if configured:
            return configured
        if _resolved_key is not None:
            return _resolved_key
        env = os.environ.get("ANTHROPIC_API_KEY", "").strip()
        if env:
            env = _check_key(env, "the ANTHROPIC_API_KEY environment variable")
        directory = _project_dir()
        key = env or _key_from_files(directory)
        if not key:
            raise _missing_key_error(directory)
        _resolved_key = key
        return key


def get_anthropic_api_key() -> str:
    """The API key the library uses (same resolution order and cache as :func:`get_client`).

    Order: ``configure(api_key=...)`` > ``ANTHROPIC_API_KEY`` > ``<dir>/ANTHROPIC_API_KEY.txt`` >
    ``<dir>/API_CREDENTIALS.json`` (field ``anthropic_api_key``) > ``<dir>/claude.env`` (a line
    ``API_KEY=...``), where ``<dir>`` is ``$ORCHESTRATING_AGENTS_PROJECT_DIR`` or ``/mnt/project``.
    The first lookup is cached until :func:`reset_client`. Raises :class:`MissingAPIKeyError`
    (a ``ClaudeInvocationError`` of kind ``auth`` and a ``ValueError``) when there is none.

    >>> key = get_anthropic_api_key()
    >>> client = anthropic.Anthropic(api_key=key)   # e.g. for an SDK feature the library lacks
    """
    return _resolve_api_key()


def _resolve_base_url(explicit: Optional[str] = None) -> Optional[str]:
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ValueError("base_url must be a non-empty string")
        return explicit.strip()
    configured = _config.get("base_url")
    if configured:
        return configured
    return os.environ.get("ANTHROPIC_BASE_URL") or None


# Per-thread: the stream call whose HTTP attempts the request hook is watching.
_tls = threading.local()


class _RequestAborted(anthropic.AnthropicError):
    """Raised by the request hook to stop an attempt of an aborted call (the SDK does not retry it)."""


def _on_http_request(request: httpx2.Request) -> None:
    """httpx request hook: remembers the attempt of the current stream call, refuses aborted ones."""
    call = getattr(_tls, "call", None)
    if call is not None:
        call._attach_request(request)


def _abort_middleware(request: Any, call_next: Callable[[Any], Any]) -> Any:
    """SDK middleware (runs once per HTTP attempt, inside the SDK's retry loop).

    Once the current stream call is aborted (interrupt, stall), an attempt fails with
    :class:`_RequestAborted` raised ``from None``: the SDK neither sleeps nor retries.
    """
    call = getattr(_tls, "call", None)
    if call is None:
        return call_next(request)
    if call.reason is not None:
        raise _RequestAborted(f"request not sent: the call was {call.reason}")
    try:
        response = call_next(request)
    except _RequestAborted:
        raise
    except Exception:
        if call.reason is not None:
            raise _RequestAborted(f"request aborted: the call was {call.reason}") from None
        raise
    if call.reason is not None and not response.http_response.is_success:
        response.http_response.close()
        raise _RequestAborted(f"request aborted: the call was {call.reason}") from None
    return response


class _HttpClient(anthropic.DefaultHttpxClient):
    """The SDK's default httpx client, closed when garbage-collected.

    :func:`configure` / :func:`reset_client` drop shared clients without closing them (calls in
    flight may still use them); the connection pool is released once nothing refers to it
    (the SDK client and every ``with_options`` copy share this object).
    """

    def __del__(self) -> None:
        try:
            if not self.is_closed:
                self.close()
        except Exception:  # pragma: no cover - best effort, possibly at interpreter exit
            pass


def _new_client(key: str, base_url: Optional[str], timeout: Optional[float], max_retries: Optional[int]) -> anthropic.Anthropic:
    kwargs: dict[str, Any] = {
        "api_key": key,
        "base_url": base_url,
        "http_client": _HttpClient(event_hooks={"request": [_on_http_request]}),
        "middleware": [_abort_middleware],
    }
    if timeout is not None:
        kwargs["timeout"] = timeout
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    return anthropic.Anthropic(**kwargs)


def get_client(*, api_key: Optional[str] = None, base_url: Optional[str] = None) -> anthropic.Anthropic:
    """The shared SDK client (created on first use; one per key, base URL and timeout).

    >>> client = get_client()
    >>> client.messages.count_tokens(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
    """
    with _state_lock:
        injected = _config.get("client")
        if injected is not None and api_key is None and base_url is None:
            return injected
        key = _resolve_api_key(api_key)
        url = _resolve_base_url(base_url)
        timeout = _config.get("timeout")
        slot = (key, url, timeout)
        client = _clients.get(slot)
        if client is None:
            client = _new_client(key, url, timeout, _config.get("max_retries"))
            _clients[slot] = client
            _known_keys.add(key)
        return client


def _client_for(
    max_retries: Optional[int] = None, *, api_key: Optional[str] = None, base_url: Optional[str] = None
) -> anthropic.Anthropic:
    """The shared client, or a copy with ``max_retries`` that shares its connection pool."""
    shared = get_client(api_key=api_key, base_url=base_url)
    return shared if max_retries is None else _with_retries(shared, max_retries)


def _with_retries(client: anthropic.Anthropic, max_retries: int) -> anthropic.Anthropic:
    """``client`` with the SDK's ``max_retries`` set: ``client.with_options(max_retries=...)``,
    made once per (client, max_retries); the copy shares the client's connection pool."""
    if client.max_retries == max_retries:
        return client
    with _state_lock:
        slot = (id(client), max_retries)
        derived = _derived.get(slot)
        if derived is None or derived[0] is not client:
            derived = (client, client.with_options(max_retries=max_retries))
            _derived[slot] = derived
        return derived[1]


def configure(
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    timeout: Optional[float] = None,
    client: Optional[anthropic.Anthropic] = None,
    max_retries: Optional[int] = None,
) -> None:
    """Set process-wide defaults (each given value replaces the previous one).

    ``client=`` injects your own ``anthropic.Anthropic``, used by every call that passes no
    ``api_key=`` / ``base_url=``. ``timeout`` (seconds) and ``max_retries`` apply to the shared
    client created by the library. Calls that start afterwards use the new settings; calls
    already running (e.g. on other threads) finish with the client they started with, which is
    not closed (its connections are released when it is garbage-collected). An ``api_key``
    that is not one line of printable ASCII raises :class:`MissingAPIKeyError`.

    >>> configure(base_url="http://127.0.0.1:8080", max_retries=0)
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string")
    if api_key is not None:
        api_key = _check_key(api_key, "configure(api_key=...)")
    if base_url is not None and (not isinstance(base_url, str) or not base_url.strip()):
        raise ValueError("base_url must be a non-empty string")
    if timeout is not None:
        _check_seconds(timeout, "timeout")
    if client is not None and not isinstance(client, anthropic.Anthropic):
        raise TypeError(f"client must be an anthropic.Anthropic, got {type(client).__name__}")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0):
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    with _state_lock:
        for name, value in (
            ("api_key", api_key),
            ("base_url", None if base_url is None else base_url.strip()),
            ("timeout", timeout),
            ("client", client),
            ("max_retries", max_retries),
        ):
            if value is not None:
                _config[name] = value
        injected_key = getattr(client, "api_key", None)
        if isinstance(injected_key, str) and injected_key:
            _known_keys.add(injected_key)  # for redaction only
        _drop_clients()


def _drop_clients() -> None:
    """Forget the shared clients without closing them: calls on other threads may still use them.

    A dropped client's connection pool is closed when the client is garbage-collected.
    """
    _clients.clear()
    _derived.clear()


def reset_client() -> None:
    """Forget the cached key, every shared client and everything set by :func:`configure`.

    Calls that start afterwards resolve the key and create a new client; calls already running
    finish with the old client, which is not closed (it is released when garbage-collected).
    """
    global _resolved_key
    with _state_lock:
        _resolved_key = None
        _config.clear()
        _drop_clients()


# --------------------------------------------------------------------------------------------
# Interrupt
# --------------------------------------------------------------------------------------------


class InterruptToken:
    """A thread-safe flag that stops work in flight.

    Pass it to the parallel functions, :func:`invoke_claude_streaming` or
    :meth:`ConversationThread.send_streaming`; ``interrupt()`` from any thread aborts the
    requests in flight (their connections are shut down) and stops new ones from starting.

    >>> token = InterruptToken()
    >>> threading.Timer(5.0, token.interrupt).start()
    >>> results = invoke_parallel_interruptible(prompts, interrupt_token=token)  # None where stopped
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_handle = 0

    def interrupt(self) -> None:
        """Set the flag and run the abort callbacks of the work in flight (idempotent)."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            _run_callback(callback)

    def is_interrupted(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        """Clear the flag so the token can be used again."""
        with self._lock:
            self._event.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until interrupted (True) or until ``timeout`` seconds pass (False)."""
        return self._event.wait(timeout)

    def _add_callback(self, callback: Callable[[], None]) -> int:
        """Run ``callback`` when interrupted (at once if already); returns a handle for removal."""
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._callbacks[handle] = callback
            already = self._event.is_set()
        if already:
            _run_callback(callback)
        return handle

    def _remove_callback(self, handle: int) -> None:
        with self._lock:
            self._callbacks.pop(handle, None)

    def __repr__(self) -> str:
        return f"InterruptToken(interrupted={self.is_interrupted()})"


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("An interrupt callback raised")


# --------------------------------------------------------------------------------------------
# Stall detection
# --------------------------------------------------------------------------------------------


class StallDetector:
    """Watch tasks that should show progress and report the ones idle for longer than ``timeout``.

    ``on_stall(task_id, idle_seconds)`` is called once per stall episode: again only after a new
    heartbeat and a new stall. An exception inside it is logged; the monitor keeps running.

    >>> with StallDetector(timeout=30.0, on_stall=lambda tid, idle: print(tid, idle)) as d:
    ...     d.register("job-1")
    ...     for chunk in work():
    ...         d.heartbeat("job-1")
    ...     d.unregister("job-1")
    """

    def __init__(self, timeout: float = 60.0, on_stall: Optional[Callable[[str, float], Any]] = None) -> None:
        timeout = _check_seconds(timeout, "timeout")
        if on_stall is not None and not callable(on_stall):
            raise TypeError("on_stall must be callable or None")
        self.timeout = timeout
        self.on_stall = on_stall
        self._lock = threading.Lock()
        self._last: dict[Any, float] = {}
        self._reported: set[Any] = set()
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[threading.Event] = None

    def register(self, task_id: Any) -> None:
        """Start watching ``task_id`` (its clock starts now)."""
        with self._lock:
            self._last[task_id] = time.monotonic()
            self._reported.discard(task_id)

    def heartbeat(self, task_id: Any) -> None:
        """Record progress of ``task_id`` (ignored for a task that is not registered)."""
        with self._lock:
            if task_id in self._last:
                self._last[task_id] = time.monotonic()
                self._reported.discard(task_id)

    def unregister(self, task_id: Any) -> None:
        """Stop watching ``task_id`` (no error if unknown)."""
        with self._lock:
            self._last.pop(task_id, None)
            self._reported.discard(task_id)

    def check_stalled(self) -> list:
        """The ids idle for longer than ``timeout``; calls ``on_stall`` for each new episode."""
        now = time.monotonic()
        fire: list[tuple[Any, float]] = []
        stalled: list = []
        with self._lock:
            for task_id, last in self._last.items():
                idle = now - last
                if idle > self.timeout:
                    stalled.append(task_id)
                    if task_id not in self._reported:
                        self._reported.add(task_id)
                        fire.append((task_id, idle))
        if self.on_stall is not None:
            for task_id, idle in fire:
                try:
                    self.on_stall(task_id, idle)
                except Exception:
                    logger.exception("on_stall raised for task %r", task_id)
        return stalled

    def start_monitoring(self, poll_interval: float = 5.0) -> None:
        """Check every ``poll_interval`` seconds on a daemon thread until :meth:`stop_monitoring`."""
        poll_interval = _check_seconds(poll_interval, "poll_interval")
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("StallDetector is already monitoring; call stop_monitoring() first")
            stop = threading.Event()
            thread = threading.Thread(
                target=self._monitor, args=(stop, poll_interval), name="stall-detector", daemon=True
            )
            self._stop, self._thread = stop, thread
        thread.start()

    def stop_monitoring(self) -> None:
        """Stop the monitor thread and wait for it to end (no-op if not monitoring)."""
        with self._lock:
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def monitoring(self) -> bool:
        return self._thread is not None

    def _monitor(self, stop: threading.Event, poll_interval: float) -> None:
        while not stop.wait(poll_interval):
            try:
                self.check_stalled()
            except Exception:  # pragma: no cover - check_stalled already guards on_stall
                logger.exception("stall check failed")

    def __enter__(self) -> "StallDetector":
        self.start_monitoring(poll_interval=min(5.0, self.timeout / 4))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_monitoring()


class _StallWatch:
    """One shared StallDetector per stall_timeout value, watching the streams in flight.

    A detector polls every ``min(1.0, timeout / 4)`` seconds and stops (its thread joined) when
    its last stream ends, so no thread outlives the streams it watches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._detectors: dict[float, StallDetector] = {}
        self._calls: dict[float, dict[int, "_StreamCall"]] = {}
        self._next = 0

    def watch(self, call: "_StreamCall", timeout: float) -> None:
        with self._lock:
            detector = self._detectors.get(timeout)
            if detector is None:
                detector = StallDetector(timeout, on_stall=lambda tid, idle, t=timeout: self._on_stall(t, tid, idle))
                detector.start_monitoring(poll_interval=min(1.0, timeout / 4))
                self._detectors[timeout] = detector
                self._calls[timeout] = {}
            self._next += 1
            task_id = self._next
            self._calls[timeout][task_id] = call
            detector.register(task_id)
        call._stall = (detector, task_id, timeout)

    def unwatch(self, call: "_StreamCall") -> None:
        if call._stall is None:
            return
        detector, task_id, timeout = call._stall
        call._stall = None
        stop = None
        with self._lock:
            detector.unregister(task_id)
            calls = self._calls.get(timeout)
            if calls is not None:
                calls.pop(task_id, None)
                if not calls and self._detectors.get(timeout) is detector:
                    del self._detectors[timeout]
                    del self._calls[timeout]
                    stop = detector
        if stop is not None:
            stop.stop_monitoring()

    def _on_stall(self, timeout: float, task_id: int, idle: float) -> None:
        with self._lock:
            call = self._calls.get(timeout, {}).get(task_id)
        if call is not None:
            logger.warning("Stream stalled: no content event for %.1f s (stall_timeout=%s); aborting", idle, timeout)
            call.abort("stalled")


_stall_watch = _StallWatch()


# --------------------------------------------------------------------------------------------
# The streaming core
# --------------------------------------------------------------------------------------------


def _shutdown_socket(sock: Any) -> bool:
    if sock is None:
        return False
    try:
        # The base-class method: on an SSLSocket it shuts the TCP socket down without
        # touching the SSL object that the reading thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return True
    except OSError:
        return False


def _socket_of_response(response: Any) -> Any:
    stream = getattr(response, "extensions", {}).get("network_stream")
    return None if stream is None else stream.get_extra_info("socket")


def _socket_of_pending_request(client: Any, extensions: Any) -> Any:
    """Best effort, before the response headers arrive: find the connection the pool gave the
    request whose extensions dict is ``extensions`` (httpx and httpcore share that dict).

    Reaches into httpcore2's pool; any surprise returns None and the caller falls back to
    closing the stream once the headers arrive.
    """
    try:
        pool = client._client._transport._pool
        for pool_request in list(pool._requests):
            if pool_request.request.extensions is extensions and pool_request.connection is not None:
                inner = getattr(pool_request.connection, "_connection", None)
                stream = getattr(inner, "_network_stream", None)
                if stream is not None:
                    return stream.get_extra_info("socket")
    except Exception:
        logger.debug("could not locate the socket of a pending request", exc_info=True)
    return None


class _StreamCall:
    """Abort handle of one streaming request; ``abort()`` is safe from any thread."""

    __slots__ = ("_client", "_lock", "reason", "_stream", "_extensions", "_stall", "_aborted", "started")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.reason: Optional[str] = None
        self._stream: Any = None
        self._extensions: Any = None
        self._stall: Optional[tuple] = None
        self._aborted = threading.Event()
        self.started = False  # the response stream of the current attempt is open

    def wait_aborted(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True at once if the call is aborted meanwhile."""
        return self._aborted.wait(seconds)

    def detach(self) -> None:
        """Forget the attempt's request and stream (it ended): a later ``abort()`` must not shut
        down a connection that is back in the pool, maybe serving another request."""
        with self._lock:
            self._stream = None
            self._extensions = None

    def _attach_request(self, request: httpx2.Request) -> None:
        with self._lock:
            if self.reason is not None:
                raise _RequestAborted(f"request not sent: the call was {self.reason}")
            self._extensions = request.extensions

    def attach_stream(self, stream: Any) -> bool:
        """Record the open stream; returns False when the call was aborted meanwhile."""
        with self._lock:
            self._stream = stream
            self.started = True
            return self.reason is None

    def heartbeat(self) -> None:
        stall = self._stall
        if stall is not None:
            stall[0].heartbeat(stall[1])

    def abort(self, reason: str) -> None:
        """Shut the connection down so the reading thread's blocked read returns at once."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self._aborted.set()
            stream, extensions = self._stream, self._extensions
        sock = None
        if stream is not None:
            try:
                sock = _socket_of_response(stream.response)
            except Exception:
                sock = None
        elif extensions is not None:
            sock = _socket_of_pending_request(self._client, extensions)
        if not _shutdown_socket(sock) and stream is not None:
            # No socket to shut down: closing the response is the fallback.
            try:
                stream.close()
            except Exception:
                logger.debug("closing an aborted stream failed", exc_info=True)


_ABORT_MESSAGES = {
    "interrupted": "The request was interrupted (InterruptToken.interrupt())",
    "stalled": "The stream stalled: no content event within stall_timeout; the request was aborted",
}


def _validate_stall_timeout(stall_timeout: Any) -> Optional[float]:
    return None if stall_timeout is None else _check_seconds(stall_timeout, "stall_timeout", " or None")


def _validate_token(token: Any, name: str = "interrupt_token") -> None:
    if token is not None and not isinstance(token, InterruptToken):
        raise TypeError(f"{name} must be an InterruptToken or None, got {type(token).__name__}")


def _create_message(params: dict, client: anthropic.Anthropic) -> ClaudeResponse:
    """Run one request with the SDK's non-streaming ``messages.create`` (not abortable)."""
    try:
        message = client.messages.create(**_sdk_kwargs(params))
    except anthropic.APIError as exc:
        raise _error_from(exc) from exc
    return _response_from_message(message, getattr(message, "_request_id", None), str(params.get("model", "")))


def _stream_message(
    params: dict,
    *,
    client: Optional[anthropic.Anthropic] = None,
    on_text: Optional[Callable[[str], Any]] = None,
    on_start: Optional[Callable[[], Any]] = None,
    interrupt: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
) -> ClaudeResponse:
    """Run one request as a stream and return its :class:`ClaudeResponse`.

    ``on_start()`` runs once at message_start, ``on_text(chunk)`` for every text delta, both on
    this thread. ``interrupt`` / ``stall_timeout`` abort the request (kinds ``interrupted`` /
    ``stalled``); a callback that raises aborts it with kind ``callback`` chained from its error.

    With an ``interrupt`` or ``stall_timeout``, the client's retries (``client.max_retries``) are
    made here instead of inside the SDK, whose wait between attempts cannot be cut short: the wait
    ends at once on an interrupt, and the stall clock does not run during it.
    """
    if client is None:
        client = _client_for()
    call = _StreamCall(client)
    handle = None
    if interrupt is not None:
        if interrupt.is_interrupted():
            raise ClaudeInvocationError(_ABORT_MESSAGES["interrupted"] + " before it was sent", kind="interrupted")
        handle = interrupt._add_callback(lambda: call.abort("interrupted"))
    retries = client.max_retries if (interrupt is not None or stall_timeout is not None) else 0
    sdk_client = _with_retries(client, 0) if retries else client  # else the SDK retries as usual
    try:
        for attempt in range(1, retries + 2):
            if stall_timeout is not None:
                _stall_watch.watch(call, stall_timeout)
            try:
                return _stream_attempt(params, sdk_client, call, on_text, on_start, stall_timeout is not None)
            except ClaudeInvocationError as error:
                if attempt > retries or call.started or call.reason is not None or not error.transient:
                    raise
                last = error
            finally:
                if stall_timeout is not None:
                    _stall_watch.unwatch(call)
            delay = _attempt_policy(retries).delay_for(attempt, last)
            logger.info("attempt %d of %d failed (%s); retrying in %.3f s", attempt, retries + 1, last.kind, delay)
            if call.wait_aborted(delay):
                raise ClaudeInvocationError(
                    _ABORT_MESSAGES[call.reason or "interrupted"] + " while waiting to retry", kind=call.reason
                ) from last
            call.detach()
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if handle is not None:
            interrupt._remove_callback(handle)  # type: ignore[union-attr]


def _stream_attempt(
    params: dict,
    client: anthropic.Anthropic,
    call: "_StreamCall",
    on_text: Optional[Callable[[str], Any]],
    on_start: Optional[Callable[[], Any]],
    watched: bool,
) -> ClaudeResponse:
    """One HTTP attempt of :func:`_stream_message` (``call.started`` once the stream is open)."""
    previous = getattr(_tls, "call", None)
    _tls.call = call
    completed = False
    try:
        with client.messages.stream(**_sdk_kwargs(params)) as stream:
            _tls.call = previous
            if not call.attach_stream(stream):
                stream.close()
                raise ClaudeInvocationError(_ABORT_MESSAGES[call.reason or "interrupted"], kind=call.reason)
            for event in stream:  # the SDK's MessageStream: pings are already skipped
                if watched:
                    call.heartbeat()
                etype = event.type
                if etype == "text":
                    if on_text is not None:
                        _run_user_callback(call, stream, on_text, event.text, "on_text")
                elif etype == "message_start":
                    if on_start is not None:
                        _run_user_callback(call, stream, on_start, None, "on_start")
                elif etype == "message_stop":
                    completed = True
                if call.reason is not None and not completed:
                    break
            if not completed:
                stream.close()
                if call.reason is not None:
                    raise ClaudeInvocationError(_ABORT_MESSAGES[call.reason], kind=call.reason)
                raise ClaudeInvocationError("The stream ended before message_stop", kind="connection")
            call.detach()  # complete: an interrupt from now on has nothing to abort
            message = stream.get_final_message()
            request_id = stream.request_id
    except ClaudeInvocationError:
        raise
    except _RequestAborted as exc:
        raise ClaudeInvocationError(_ABORT_MESSAGES.get(call.reason or "", str(exc)), kind=call.reason) from exc
    except (anthropic.APIError, httpx2.HTTPError, OSError) as exc:
        if call.reason in _ABORT_MESSAGES:
            raise ClaudeInvocationError(_ABORT_MESSAGES[call.reason], kind=call.reason) from exc
        raise _error_from(exc) from exc
    finally:
        _tls.call = previous
    return _response_from_message(message, request_id, str(params.get("model", "")))


def _attempt_policy(retries: int) -> Any:
    """The library's one retry policy, with the SDK's backoff (0.5 s doubling to 8 s)."""
    from orchestration import RetryPolicy  # imported here: orchestration imports this module

    return RetryPolicy(max_retries=retries, base_delay_ms=500, max_delay_ms=8000, jitter="equal")


def _run_user_callback(call: _StreamCall, stream: Any, fn: Callable, arg: Any, name: str) -> None:
    try:
        if name == "on_start":
            fn()
        else:
            fn(arg)
    except Exception as exc:
        call.abort("callback")
        try:
            stream.close()
        except Exception:
            logger.debug("closing the stream after a callback error failed", exc_info=True)
        raise ClaudeInvocationError(
            f"The {name} callback raised {type(exc).__name__}: {exc}; the stream was aborted", kind="callback"
        ) from exc


# --------------------------------------------------------------------------------------------
# Building requests (validation happens here, before anything is sent)
# --------------------------------------------------------------------------------------------


def _check_seconds(value: Any, name: str, alternative: str = "") -> float:
    """``value`` as float seconds; ``ValueError`` naming ``name`` unless a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds{alternative}, got {value!r}")
    return float(value)


def _check_model(model: Any, name: str = "model") -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{name} must be a non-empty string, got {model!r}")
    return model


def _check_positive_int(value: Any, name: str) -> int:
    """``value`` if an int >= 1 (``TypeError`` / ``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def _check_temperature(temperature: Any, name: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(temperature).__name__}")
    if not 0.0 <= temperature <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {temperature}")
    return temperature


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _with_cache_control(block: dict) -> dict:
    if "cache_control" in block:
        return block
    new = dict(block)
    new["cache_control"] = dict(_EPHEMERAL)
    return new


def _system_blocks(system: Any, name: str, cache: bool) -> list[dict]:
    """``system`` (str or list of text blocks) as a fresh list of block dicts."""
    if system is None:
        return []
    if isinstance(system, str):
        if not system:
            return []
        blocks = [{"type": "text", "text": system}]
    elif isinstance(system, (list, tuple)):
        blocks = []
        for i, block in enumerate(system):
            if not _is_mapping(block) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise ValueError(f"{name}[{i}] must be a text block {{'type': 'text', 'text': str}}")
            blocks.append(copy.deepcopy(dict(block)))
    else:
        raise TypeError(f"{name} must be a str or a list of text blocks, got {type(system).__name__}")
    if cache and blocks:
        blocks[-1] = _with_cache_control(blocks[-1])
    return blocks


def _is_mapping(value: Any) -> bool:
    """``isinstance(value, Mapping)`` with a fast path for plain dicts (hot in validation)."""
    return type(value) is dict or isinstance(value, Mapping)


def _count_breakpoints(value: Any) -> int:
    """Number of ``cache_control`` entries in a nested structure of dicts and lists."""
    kind = type(value)
    if kind is str or value is None:
        return 0
    if kind is dict or isinstance(value, Mapping):
        count = 1 if value.get("cache_control") is not None else 0
        for key, item in value.items():
            if key != "cache_control" and not isinstance(item, (str, int, float)):
                count += _count_breakpoints(item)
        return count
    if kind is list or isinstance(value, (list, tuple)):
        count = 0
        for item in value:
            count += _count_breakpoints(item)
        return count
    return 0


def _check_breakpoints(params: Mapping, where: str = "the request") -> None:
    count = sum(_count_breakpoints(params.get(k)) for k in ("tools", "system", "messages"))
    if count > MAX_CACHE_BREAKPOINTS:
        raise ValueError(
            f"{where} carries {count} cache_control blocks; the API allows at most {MAX_CACHE_BREAKPOINTS}"
        )


def _check_content(content: Any, name: str) -> None:
    """A message content: a non-empty str or a non-empty list of dicts with a str ``type``."""
    if isinstance(content, str):
        if not content:
            raise ValueError(f"{name} must not be empty")
        return
    if isinstance(content, (list, tuple)) and content:
        for i, block in enumerate(content):
            if not _is_mapping(block) or not isinstance(block.get("type"), str):
                raise ValueError(f"{name}[{i}] must be a content block dict with a str 'type'")
        return
    raise ValueError(
        f"{name} must be a non-empty string or a non-empty list of content blocks, got {type(content).__name__}"
        + (" (empty)" if isinstance(content, (list, tuple)) else "")
    )


def _content_blocks(content: Any, name: str) -> list[dict]:
    """``content`` (checked by :func:`_check_content`) as a fresh list of block dicts."""
    _check_content(content, name)
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [copy.deepcopy(dict(block)) for block in content]


def _user_content(prompt: Any, cache: bool, name: str = "prompt") -> Union[str, list[dict]]:
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if cache:
        return [{"type": "text", "text": prompt, "cache_control": dict(_EPHEMERAL)}]
    return prompt


# Body fields that the installed SDK's typed ``messages.create/stream`` no longer accept as
# keywords; they are sent through ``extra_body``.
_BODY_ONLY_FIELDS = ("temperature", "top_p", "top_k")


def _sdk_kwargs(params: Mapping[str, Any]) -> dict:
    """``params`` (a Messages request body) as keyword arguments for ``messages.create/stream``."""
    moved = {k: params[k] for k in _BODY_ONLY_FIELDS if k in params}
    if not moved:
        return dict(params)
    kwargs = {k: v for k, v in params.items() if k not in moved}
    extra_body = dict(kwargs.get("extra_body") or {})
    extra_body.update(moved)
    kwargs["extra_body"] = extra_body
    return kwargs


_RESERVED_KWARGS = frozenset({"model", "system", "max_tokens", "temperature", "messages", "stream", "prompt"})


def _build_params(
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
    _check_model(model)
    _check_positive_int(max_tokens, "max_tokens")
    if temperature is not None:
        _check_temperature(temperature)
    _check_bool(cache_system, "cache_system")
    _check_bool(cache_prompt, "cache_prompt")
    clash = _RESERVED_KWARGS.intersection(extra)
    if clash:
        raise TypeError(f"unexpected keyword argument(s) {sorted(clash)}")
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt (a non-empty string) and messages (a list of messages)")
    if prompt is not None:
        msgs: list[dict] = [{"role": "user", "content": _user_content(prompt, cache_prompt)}]
    else:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        msgs = []
        for i, msg in enumerate(messages):
            if not _is_mapping(msg) or msg.get("role") not in ("user", "assistant") or "content" not in msg:
                raise ValueError(f"messages[{i}] must be a dict with role 'user' or 'assistant' and a content")
            _check_content(msg["content"], f"messages[{i}]['content']")
            msgs.append(copy.deepcopy(dict(msg)))
        if msgs[0]["role"] != "user":
            raise ValueError("messages[0] must have role 'user'")
        if cache_prompt:
            # The last *user* message (an assistant prefill may follow it).
            index = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            last = msgs[index]
            blocks = _content_blocks(last["content"], f"messages[{index}]['content']")
            blocks[-1] = _with_cache_control(blocks[-1])
            last["content"] = blocks
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": msgs}
    system_blocks = _system_blocks(system, "system", cache_system)
    if system_blocks:
        params["system"] = system_blocks if (cache_system or not isinstance(system, str)) else system
    if temperature is not None and temperature != 1.0:  # 1.0 is the API default: not sent
        params["temperature"] = temperature
    for key, value in extra.items():
        params[key] = copy.deepcopy(value) if key == "tools" else value
    if prompt is None or extra or not (system is None or isinstance(system, str)):
        _check_breakpoints(params)  # else at most 2 (cache_system, cache_prompt): nothing to check
    return params


@dataclass
class _PromptSpec:
    """One validated prompt of a parallel run: its input index, request params and extra keys."""

    index: int
    params: dict
    extra: dict = field(default_factory=dict)


_PROMPT_KEYS = frozenset({"prompt", "system", "temperature", "cache_system", "cache_prompt", "model", "max_tokens"})


def _normalize_prompts(
    prompts: Any,
    *,
    shared_system: Any,
    cache_shared_system: bool,
    model: str,
    max_tokens: int,
    extra_keys: frozenset = frozenset(),
) -> list[_PromptSpec]:
    """Validate every prompt dict (before any request) and build its request params.

    System rule: ``shared_system`` block(s) first (cache_control on its last block when
    ``cache_shared_system``), then the prompt's own ``system`` as separate block(s)
    (cache_control on its last block when the prompt's ``cache_system``).
    """
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of dicts, got {type(prompts).__name__}")
    _check_model(model)
    _check_positive_int(max_tokens, "max_tokens")
    _check_bool(cache_shared_system, "cache_shared_system")
    shared = _system_blocks(shared_system, "shared_system", cache_shared_system)
    shared_breakpoints = _count_breakpoints(shared)
    extra_keys = frozenset(extra_keys)
    allowed = _PROMPT_KEYS | extra_keys
    specs: list[_PromptSpec] = []
    # Hot loop (10,000s of prompts): the common cases are checked without building messages;
    # the _check_* helpers (which name the parameter) run only for values off the fast path.
    for index, item in enumerate(prompts):
        where = f"prompts[{index}]"
        if not _is_mapping(item):
            raise TypeError(f"{where} must be a dict with a 'prompt' key, got {type(item).__name__}")
        if not allowed.issuperset(item):
            unknown = sorted(set(item) - allowed)
            raise ValueError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {sorted(allowed)}")
        if "prompt" not in item:
            raise ValueError(f"{where} is missing the required key 'prompt'")
        cache_prompt = item.get("cache_prompt", False)
        if cache_prompt is not False and cache_prompt is not True:
            _check_bool(cache_prompt, f"{where}['cache_prompt']")
        cache_system = item.get("cache_system", False)
        if cache_system is not False and cache_system is not True:
            _check_bool(cache_system, f"{where}['cache_system']")
        content = _user_content(item["prompt"], cache_prompt, f"{where}['prompt']")
        item_model = item.get("model", model)
        if item_model is not model:
            _check_model(item_model, f"{where}['model']")
        item_max_tokens = item.get("max_tokens", max_tokens)
        if item_max_tokens is not max_tokens:
            _check_positive_int(item_max_tokens, f"{where}['max_tokens']")
        params: dict[str, Any] = {
            "model": item_model,
            "max_tokens": item_max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        own_system = item.get("system")
        own = _system_blocks(own_system, f"{where}['system']", cache_system) if own_system is not None else []
        if shared or own:
            params["system"] = shared + own
        temperature = item.get("temperature")
        if temperature is not None:
            params["temperature"] = _check_temperature(temperature, f"{where}['temperature']")
        # Same rule as _check_breakpoints, counted from the parts just built.
        breakpoints = shared_breakpoints + (1 if cache_prompt else 0) + (_count_breakpoints(own) if own else 0)
        if breakpoints > MAX_CACHE_BREAKPOINTS:
            _check_breakpoints(params, where)
        specs.append(_PromptSpec(index, params, {k: item[k] for k in item if k in extra_keys} if extra_keys else {}))
    return specs


# --------------------------------------------------------------------------------------------
# Single calls
# --------------------------------------------------------------------------------------------

# The SDK's ValueError (raised before sending) for a non-streaming request whose max_tokens
# may take longer than its 10-minute non-streaming limit.
_STREAMING_REQUIRED = "Streaming is required"


def _send_message(
    params: dict,
    client: anthropic.Anthropic,
    *,
    stream: bool = False,
    on_text: Optional[Callable[[str], Any]] = None,
    interrupt: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
) -> ClaudeResponse:
    """One request: streamed when asked or when it can be interrupted or stall-checked, else
    ``messages.create`` (streamed after all when the SDK refuses it as too long)."""
    if stream or interrupt is not None or stall_timeout is not None:
        return _stream_message(params, client=client, on_text=on_text, interrupt=interrupt, stall_timeout=stall_timeout)
    try:
        return _create_message(params, client)
    except ValueError as exc:
        if _STREAMING_REQUIRED not in str(exc):
            raise
    logger.debug("max_tokens=%s needs streaming: sending the request as a stream", params.get("max_tokens"))
    return _stream_message(params, client=client)


def invoke_claude(
    prompt: Optional[str] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    streaming: bool = False,
    cache_system: bool = False,
    cache_prompt: bool = False,
    messages: Optional[list] = None,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    **kwargs: Any,
) -> ClaudeResponse:
    """Send one request and return the reply text as a :class:`ClaudeResponse` (a ``str``).

    Give ``prompt`` or a full ``messages`` list (not both). ``cache_system`` / ``cache_prompt``
    put a cache breakpoint on the last system block / the last user block. ``streaming=True``
    (or an ``interrupt_token`` / ``stall_timeout``) streams internally; nothing is printed.
    A ``max_tokens`` so large that the SDK requires streaming (e.g. 64000) is streamed too.
    Other keyword arguments (``top_p``, ``stop_sequences``, ``tools``, ``metadata``...) go to the
    SDK call.

    >>> reply = invoke_claude("Summarise: ...", system="Be brief.", max_tokens=200)
    >>> reply.stop_reason, reply.usage.output_tokens, reply.cost_usd
    """
    _check_bool(streaming, "streaming")
    _validate_token(interrupt_token)
    stall = _validate_stall_timeout(stall_timeout)
    params = _build_params(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        extra=kwargs,
    )
    client = _client_for(api_key=api_key, base_url=base_url)
    return _send_message(params, client, stream=streaming, interrupt=interrupt_token, stall_timeout=stall)


def invoke_claude_streaming(
    prompt: Optional[str] = None,
    callback: Optional[Callable[[str], Any]] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    cache_system: bool = False,
    cache_prompt: bool = False,
    *,
    messages: Optional[list] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    **kwargs: Any,
) -> ClaudeResponse:
    """Stream a reply; ``callback(chunk)`` gets each text chunk in order, on this thread.

    The return value equals the joined chunks. If the callback raises, the stream is aborted and
    ``ClaudeInvocationError(kind="callback")`` is raised, chained from the callback's exception.
    ``stall_timeout`` (seconds) aborts a stream with no content event for that long
    (kind ``stalled``; pings do not count); ``interrupt_token`` aborts it from another thread.

    >>> chunks = []
    >>> text = invoke_claude_streaming("Write a haiku", callback=chunks.append, stall_timeout=60)
    >>> text == "".join(chunks)
    True
    """
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    _validate_token(interrupt_token)
    stall = _validate_stall_timeout(stall_timeout)
    params = _build_params(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        extra=kwargs,
    )
    client = _client_for(api_key=api_key, base_url=base_url)
    return _stream_message(params, client=client, on_text=callback, interrupt=interrupt_token, stall_timeout=stall)


def get_available_models() -> list[str]:
    """The current Claude model ids (a new list; :data:`DEFAULT_MODEL` is among them).

    A fixed list kept with the library (no request is sent); any model id the API accepts can
    be passed as ``model=``, listed here or not.

    >>> "claude-sonnet-4-6" in get_available_models()
    True
    >>> invoke_claude("hi", model=get_available_models()[0])
    """
    models = list(AVAILABLE_MODELS)
    if DEFAULT_MODEL not in models:
        models.append(DEFAULT_MODEL)
    return models


def _fence_body(text: str) -> Optional[str]:
    """The body of the first ```-fenced block of ``text`` (None if there is none).

    Multi-line blocks (```` ```json ```` line, body, ```` ``` ```` line) and one-line blocks
    (```` ```json {"a": 1} ``` ````, as when line breaks were lost) are both understood.
    """
    if text.startswith("```"):
        opening = 0
    else:
        opening = text.find("\n```")
        if opening == -1:
            return None
        opening += 1
    rest = text[opening + 3:]
    newline = rest.find("\n")
    first_line = rest if newline == -1 else rest[:newline]
    closing = first_line.find("```")
    if closing != -1:  # one line: an optional language tag, the body, the closing fence
        return _LANGUAGE_TAG.sub("", first_line[:closing], count=1)
    if newline == -1:
        return first_line
    body = rest[newline + 1:]
    closing = body.find("```") if body.startswith("```") else body.find("\n```")
    return body if closing == -1 else body[:closing]


_LANGUAGE_TAG = re.compile(r"^[A-Za-z][\w+.-]*\s+")


def parse_json_response(raw: str) -> Union[dict, list]:
    """Parse a reply that should be JSON: strips a ```` ``` ```` / ```` ```json ```` fence, then ``json.loads``.

    A reply with prose around one fenced block uses the block. Raises ``json.JSONDecodeError``
    (a ``ValueError``) naming the problem when the text is not JSON, ``ValueError`` when it is
    JSON but not an object or array, ``TypeError`` when ``raw`` is not a string.

    >>> parse_json_response('```json\n{"a": 1}\n```')
    {'a': 1}
    >>> parse_json_response('[1, 2]')
    [1, 2]
    """
    if not isinstance(raw, str):
        raise TypeError(f"raw must be a str, got {type(raw).__name__}")
    text = raw.strip()
    body = text
    if text.startswith("```"):
        body = (_fence_body(text) or "").strip()
    if not body:
        raise json.JSONDecodeError("parse_json_response: the reply is empty (no JSON found)", body, 0)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        # Prose around a fenced block: use the block.
        fenced = None if body is not text else _fence_body(text)
        try:
            if fenced is None or not fenced.strip():
                raise exc
            value = json.loads(fenced)
        except json.JSONDecodeError as error:
            raise json.JSONDecodeError(
                f"parse_json_response: the reply is not valid JSON ({error.msg}); it starts with {text[:60]!r}",
                error.doc,
                error.pos,
            ) from None
    if not isinstance(value, (dict, list)):
        raise ValueError(
            f"parse_json_response: expected a JSON object or array, got {type(value).__name__}: {text[:60]!r}"
        )
    return value


def invoke_claude_json(
    prompt: Optional[str] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    streaming: bool = False,
    cache_system: bool = False,
    cache_prompt: bool = False,
    messages: Optional[list] = None,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    **kwargs: Any,
) -> Union[dict, list]:
    """:func:`invoke_claude` (same parameters), then :func:`parse_json_response` of the reply.

    Ask for JSON in the prompt or system; a reply that is not JSON raises ``json.JSONDecodeError``
    (a ``ValueError``); API failures raise :class:`ClaudeInvocationError` as usual.

    >>> data = invoke_claude_json('List 3 colours as {"colours": [...]}', system="Reply with JSON only.")
    >>> data["colours"]
    """
    reply = invoke_claude(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        streaming=streaming,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        api_key=api_key,
        base_url=base_url,
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        **kwargs,
    )
    return parse_json_response(str(reply))


# --------------------------------------------------------------------------------------------
# Parallel fan-out
# --------------------------------------------------------------------------------------------


_NOT_RUN = object()


class _Countdown:
    """Sets ``event`` when ``count`` futures have finished."""

    def __init__(self, count: int, event: threading.Event) -> None:
        self._lock = threading.Lock()
        self._left = count
        self._event = event
        if count == 0:
            event.set()

    def done(self, _future: Future) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._event.set()


def _check_callbacks(callbacks: Any, n: int) -> None:
    """Validate a ``callbacks`` list: one callable (or None) per prompt."""
    if callbacks is None:
        return
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks must be a list (one per prompt) or None, got {type(callbacks).__name__}")
    if len(callbacks) != n:
        raise ValueError(f"callbacks has {len(callbacks)} entries but there are {n} prompts")
    for i, cb in enumerate(callbacks):
        if cb is not None and not callable(cb):
            raise TypeError(f"callbacks[{i}] must be callable or None")


def _run_parallel(
    prompts: Any,
    *,
    model: str,
    max_tokens: int,
    max_workers: int,
    shared_system: Any,
    cache_shared_system: bool,
    callbacks: Optional[Sequence[Optional[Callable[[str], Any]]]],
    return_exceptions: bool,
    interrupt_token: Optional[InterruptToken],
    cache_pilot: bool,
    stall_timeout: Optional[float],
    api_key: Optional[str],
    base_url: Optional[str],
) -> ParallelResults:
    _check_positive_int(max_workers, "max_workers")
    _check_bool(return_exceptions, "return_exceptions")
    _check_bool(cache_pilot, "cache_pilot")
    _validate_token(interrupt_token)
    stall = _validate_stall_timeout(stall_timeout)
    specs = _normalize_prompts(
        prompts, shared_system=shared_system, cache_shared_system=cache_shared_system, model=model, max_tokens=max_tokens
    )
    _check_callbacks(callbacks, len(specs))
    client = _client_for(api_key=api_key, base_url=base_url)
    n = len(specs)
    results: list[Any] = [None] * n
    if n == 0 or (interrupt_token is not None and interrupt_token.is_interrupted()):
        return ParallelResults(results, usage=Usage(), cost_usd=0.0)
    # The run's own token: the caller's token feeds it, and so does a KeyboardInterrupt (or any
    # other exception) in the waiting thread, so in-flight streams are aborted either way.
    token = InterruptToken()
    link = interrupt_token._add_callback(token.interrupt) if interrupt_token is not None else None

    def work(spec: _PromptSpec, on_start: Optional[Callable[[], Any]]) -> Any:
        if token.is_interrupted():
            return _NOT_RUN
        on_text = callbacks[spec.index] if callbacks is not None else None
        return _stream_message(
            spec.params, client=client, on_text=on_text, on_start=on_start, interrupt=token, stall_timeout=stall
        )

    wake = threading.Event()
    handle = token._add_callback(wake.set)
    executor = ThreadPoolExecutor(max_workers=min(max_workers, n), thread_name_prefix="claude-parallel")
    futures: list[Optional[Future]] = [None] * n
    countdown = _Countdown(n, wake)
    interrupted = False
    try:
        first = 0
        if cache_pilot and cache_shared_system and shared_system is not None and n > 1 and "system" in specs[0].params:
            released = threading.Event()
            pilot = executor.submit(work, specs[0], released.set)
            pilot.add_done_callback(lambda f: released.set())
            pilot.add_done_callback(countdown.done)
            futures[0] = pilot
            first = 1
            release_handle = token._add_callback(released.set)
            released.wait()
            token._remove_callback(release_handle)
        if not token.is_interrupted():
            for spec in specs[first:]:
                future = executor.submit(work, spec, None)
                future.add_done_callback(countdown.done)
                futures[spec.index] = future
        else:
            for _ in specs[first:]:
                countdown.done(None)  # type: ignore[arg-type]
        wake.wait()
        interrupted = token.is_interrupted()
    except BaseException:
        interrupted = True
        token.interrupt()  # e.g. Ctrl-C while waiting: abort what is in flight, then re-raise
        raise
    finally:
        token._remove_callback(handle)
        if link is not None:
            interrupt_token._remove_callback(link)  # type: ignore[union-attr]
        # On interrupt the in-flight workers had their sockets shut down and exit promptly;
        # do not wait for them here (queued ones are cancelled).
        executor.shutdown(wait=not interrupted, cancel_futures=True)

    errors: dict[int, BaseException] = {}
    for i, future in enumerate(futures):
        if future is None or not future.done() or future.cancelled():
            continue
        exc = future.exception()
        if exc is None:
            value = future.result()
            if value is _NOT_RUN:
                continue
            results[i] = value
        elif isinstance(exc, ClaudeInvocationError) and exc.kind == "interrupted":
            continue
        else:
            errors[i] = exc
            if return_exceptions:
                results[i] = exc
    usage, cost = _totals(results)
    if errors and not return_exceptions:
        first_index = min(errors)
        first_error = errors[first_index]
        ok = sum(1 for r in results if r is not None)
        kind = first_error.kind if isinstance(first_error, ClaudeInvocationError) else None
        raise ClaudeInvocationError(
            f"{len(errors)} of {n} parallel requests failed ({ok} succeeded); "
            f"first failure, prompts[{first_index}]: {first_error}",
            kind=kind,
            results=ParallelResults(results, usage=usage, cost_usd=cost, errors=errors),
            errors=errors,
            status_code=getattr(first_error, "status_code", None),
            retry_after=getattr(first_error, "retry_after", None),
        ) from first_error
    return ParallelResults(results, usage=usage, cost_usd=cost, errors=errors)


def invoke_parallel(
    prompts: list[dict],
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    interrupt_token: Optional[InterruptToken] = None,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
) -> ParallelResults:
    """Run many prompts concurrently; results in input order as a :class:`ParallelResults`.

    Each prompt is a dict: ``prompt`` (required), ``system``, ``temperature``, ``cache_system``,
    ``cache_prompt``, ``model``, ``max_tokens``. A request's system is ``shared_system`` first,
    then the prompt's own ``system``. ``max_workers`` is not capped (the old limit of 10 is
    lifted; mind your rate limits). With ``cache_shared_system=True`` one pilot request goes
    first and the rest start when its response begins, so they read the cache instead of
    writing it (``cache_pilot=False`` turns this off).

    Failures: by default, once every request has settled, one ``ClaudeInvocationError`` is raised
    carrying ``.results`` (None where failed) and ``.errors`` (index -> exception); with
    ``return_exceptions=True`` the exceptions are returned in their slots. With an
    ``interrupt_token`` that gets interrupted, the call returns at once with the finished results
    and None elsewhere.

    >>> results = invoke_parallel([{"prompt": "2+2?"}, {"prompt": "3+3?"}], max_tokens=50)
    >>> list(results), results.usage.output_tokens, results.cost_usd
    """
    return _run_parallel(
        prompts,
        model=model,
        max_tokens=max_tokens,
        max_workers=max_workers,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        callbacks=None,
        return_exceptions=return_exceptions,
        interrupt_token=interrupt_token,
        cache_pilot=cache_pilot,
        stall_timeout=stall_timeout,
        api_key=api_key,
        base_url=base_url,
    )


def invoke_parallel_streaming(
    prompts: list[dict],
    callbacks: Optional[list[Optional[Callable[[str], Any]]]] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    interrupt_token: Optional[InterruptToken] = None,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
) -> ParallelResults:
    """:func:`invoke_parallel` with one streaming callback per prompt (``callbacks[i](chunk)``).

    Each callback gets only its own prompt's chunks, in order, on a worker thread (make it
    thread-safe if callbacks share state). A callback that raises fails only its own prompt
    (kind ``callback``). ``stall_timeout`` aborts a stream with no content event for that long.

    >>> outs = [[], []]
    >>> invoke_parallel_streaming([{"prompt": "a"}, {"prompt": "b"}], callbacks=[outs[0].append, outs[1].append])
    """
    return _run_parallel(
        prompts,
        model=model,
        max_tokens=max_tokens,
        max_workers=max_workers,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        callbacks=callbacks,
        return_exceptions=return_exceptions,
        interrupt_token=interrupt_token,
        cache_pilot=cache_pilot,
        stall_timeout=stall_timeout,
        api_key=api_key,
        base_url=base_url,
    )


def invoke_parallel_interruptible(
    prompts: list[dict],
    interrupt_token: Optional[InterruptToken] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
) -> ParallelResults:
    """:func:`invoke_parallel` that can be stopped: ``interrupt_token.interrupt()`` from any thread.

    Prompts not yet started never start, requests in flight are aborted (their connections shut
    down), finished results are kept and interrupted slots are None. The call returns right
    after the interrupt, without waiting for the aborted requests.

    >>> token = InterruptToken()
    >>> threading.Timer(2.0, token.interrupt).start()
    >>> results = invoke_parallel_interruptible(prompts, interrupt_token=token)
    """
    return _run_parallel(
        prompts,
        model=model,
        max_tokens=max_tokens,
        max_workers=max_workers,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        callbacks=None,
        return_exceptions=return_exceptions,
        interrupt_token=interrupt_token,
        cache_pilot=cache_pilot,
        stall_timeout=stall_timeout,
        api_key=api_key,
        base_url=base_url,
    )


# --------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------

DEFAULT_CONTINUATION_PROMPT = "Continue from where you left off."


class ConversationThread:
    """A multi-turn conversation with prompt caching of the growing history.

    Each request carries cache breakpoints on the system prompt (``cache_system``), on the
    latest user message and on the previous user message, so turn n reads turns 1..n-1 from the
    cache (never more than 4 breakpoints). A failed send (error, interrupt, stall) leaves the
    history untouched, so the same message can be sent again. Concurrent sends on one object
    are serialized (a lock; each waits for the previous one). A send once ``max_turns`` turns
    are done raises ``RuntimeError`` before sending (the seed's behaviour) and keeps the
    history; ``clear()`` it or start a new thread to go on.

    ``len(thread)`` and ``turn_count`` are the number of completed turns (user + assistant
    pairs, ``len(messages) // 2``); ``messages`` is a copy of the history. The attributes
    ``system``, ``cache_system``, ``model``, ``max_tokens`` and ``temperature`` may be changed
    between sends: each request is built (and validated) from their current values.

    >>> chat = ConversationThread(system="You are a tutor.", max_turns=20)
    >>> chat.send("What is a monad?")
    >>> chat.send("Give an example in Python.")
    >>> chat.turn_count, len(chat), len(chat.messages)
    (2, 2, 4)
    """

    def __init__(
        self,
        system: Union[str, list, None] = None,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 4096,
        temperature: float = 1.0,
        cache_system: bool = True,
        max_turns: Optional[int] = None,
        continuation_prompt: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
    ) -> None:
        if max_turns is not None:
            if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
                raise ValueError(f"max_turns must be an int >= 1 or None, got {max_turns!r}")
        if continuation_prompt is not None and (not isinstance(continuation_prompt, str) or not continuation_prompt.strip()):
            raise ValueError("continuation_prompt must be a non-empty string or None")
        self.system = copy.deepcopy(system)
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cache_system = cache_system
        self._system_blocks()  # validates the settings now; they are checked again per request
        self.max_turns = max_turns
        self.continuation_prompt = continuation_prompt or DEFAULT_CONTINUATION_PROMPT
        self._api_key = api_key
        self._base_url = base_url
        self._messages: list[dict] = []
        self._lock = threading.Lock()
        self.usage = Usage()

    @property
    def turn_count(self) -> int:
        """Completed turns (user + assistant pairs), ``len(messages) // 2``."""
        return len(self._messages) // 2

    def __len__(self) -> int:
        """The number of completed turns (user + assistant pairs), like the seed's ``len(thread)``."""
        return self.turn_count

    @property
    def messages(self) -> list[dict]:
        """A deep copy of the history (read-only view; same as :meth:`get_messages`).

        >>> [m["role"] for m in chat.messages]
        ['user', 'assistant']
        """
        return self.get_messages()

    def get_messages(self) -> list[dict]:
        """A deep copy of the history (``[{"role", "content": [blocks]}]``)."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def clear(self) -> None:
        """Forget the history and the turn count."""
        with self._lock:
            self._messages = []

    def _system_blocks(self) -> list[dict]:
        """Check the current settings (they are public attributes and may have been changed)
        and return fresh system blocks (``self.system`` is never mutated)."""
        _check_model(self.model)
        _check_positive_int(self.max_tokens, "max_tokens")
        _check_temperature(self.temperature)
        _check_bool(self.cache_system, "cache_system")
        return _system_blocks(self.system, "system", self.cache_system)

    def _params(self, content: list[dict], cache_history: bool) -> dict:
        # From the current attributes: `chat.system = ...` / `chat.cache_system = ...` apply to
        # the next request (validated here, before anything is sent).
        system_blocks = self._system_blocks()
        messages = copy.deepcopy(self._messages)
        messages.append({"role": "user", "content": copy.deepcopy(content)})
        if cache_history:
            budget = MAX_CACHE_BREAKPOINTS - _count_breakpoints(system_blocks) - _count_breakpoints(messages)
            marked = 0
            for msg in reversed(messages):
                if marked >= 2 or budget <= 0:
                    break
                if msg["role"] == "user" and msg["content"]:
                    if "cache_control" not in msg["content"][-1]:
                        msg["content"][-1] = _with_cache_control(msg["content"][-1])
                        budget -= 1
                    marked += 1
        params: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "messages": messages}
        if self.temperature != 1.0:  # 1.0 is the API default: not sent
            params["temperature"] = self.temperature
        if system_blocks:
            params["system"] = system_blocks
        _check_breakpoints(params, "the conversation request")
        return params

    def _send(
        self,
        user_message: Any,
        cache_history: bool,
        *,
        callback: Optional[Callable[[str], Any]] = None,
        stream: bool = False,
        interrupt_token: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
    ) -> ClaudeResponse:
        _check_bool(cache_history, "cache_history")
        _validate_token(interrupt_token)
        stall = _validate_stall_timeout(stall_timeout)
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        if isinstance(user_message, str):
            if not user_message.strip():
                raise ValueError("user_message must be a non-empty string")
        content = _content_blocks(user_message, "user_message")
        with self._lock:
            if self.max_turns is not None and len(self._messages) // 2 >= self.max_turns:
                raise RuntimeError(
                    f"Maximum turns ({self.max_turns}) reached: this ConversationThread has max_turns="
                    f"{self.max_turns}; call clear() to start over or create a new ConversationThread "
                    f"(the history is kept)"
                )
            params = self._params(content, cache_history)
            client = _client_for(api_key=self._api_key, base_url=self._base_url)
            reply = _send_message(
                params, client, stream=stream, on_text=callback, interrupt=interrupt_token, stall_timeout=stall
            )
            # Only a successful reply changes the history.
            self._messages.append({"role": "user", "content": content})
            self._messages.append({"role": "assistant", "content": copy.deepcopy(reply.content)})
            self.usage = self.usage + reply.usage
            return reply

    def send(self, user_message: Union[str, list], cache_history: bool = True) -> ClaudeResponse:
        """Send a user message and return the reply (the history grows by two messages)."""
        return self._send(user_message, cache_history)

    def send_streaming(
        self,
        user_message: Union[str, list],
        callback: Optional[Callable[[str], Any]] = None,
        cache_history: bool = True,
        *,
        interrupt_token: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
    ) -> ClaudeResponse:
        """:meth:`send`, streaming each text chunk to ``callback`` (on this thread)."""
        return self._send(
            user_message,
            cache_history,
            callback=callback,
            stream=True,
            interrupt_token=interrupt_token,
            stall_timeout=stall_timeout,
        )

    def send_continuation(self, guidance: Optional[str] = None, cache_history: bool = True) -> ClaudeResponse:
        """Ask Claude to continue its last reply (e.g. after ``stop_reason == "max_tokens"``).

        Sends ``continuation_prompt`` (plus ``guidance`` on a new paragraph). Raises
        ``RuntimeError`` if nothing has been sent yet.
        """
        if guidance is not None and not isinstance(guidance, str):
            raise TypeError("guidance must be a str or None")
        if not self._messages:
            raise RuntimeError("send_continuation() needs a previous send(): the conversation is empty")
        text = self.continuation_prompt if not guidance else f"{self.continuation_prompt}\n\n{guidance}"
        return self._send(text, cache_history)

    def __repr__(self) -> str:
        return f"ConversationThread(model={self.model!r}, turns={len(self._messages) // 2}, messages={len(self._messages)})"


def __getattr__(name: str) -> Any:
    if name == "invoke_batch":
        from message_batches import invoke_batch

        return invoke_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
