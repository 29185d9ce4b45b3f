"""The library's errors, and the one place where SDK and transport exceptions become them.

:func:`translate` is the error boundary: the transport calls it around the one SDK call that can
raise, and everything above sees :class:`ClaudeInvocationError` only. It also owns the registry of
secrets (:func:`register_secret`): credential code registers every key it resolves, and every
error text that leaves this module, the chained SDK exceptions included, has them redacted.
"""

from __future__ import annotations

import copy
import math
import socket
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, Iterable, Optional

import anthropic
import httpx2

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
        # tool loops and structured output
        "tool_turns_exceeded",
        "invalid_output",
        # the run's spend cap (max_cost_usd) left no room for the request
        "budget",
        # an HTTP 200 reply the model declined (stop_reason "refusal"); never retried
        "refusal",
        # a reply with no text because thinking (or the reply) used the whole max_tokens
        "max_tokens",
        # message batches: per-item outcomes, never transient
        "batch_errored",
        "batch_expired",
        "batch_canceled",
    }
)

#: Kinds worth retrying; the one classification used by every retry path of the library.
TRANSIENT_KINDS = frozenset({"rate_limit", "overloaded", "server", "connection", "timeout", "stalled"})

#: Kinds of an HTTP 200 reply that is not an answer (a refusal, a reply with no text because the
#: output hit max_tokens, a stop at the context window). The reply was paid (the error carries its
#: ``usage`` / ``cost_usd``) and sending it again gives the same: never retried, whatever the
#: policy or the server's ``x-should-retry``.
REPLY_KINDS = frozenset({"refusal", "max_tokens", "context_overflow"})

#: What an abort reason (set on a request's abort handle) is reported as.
ABORT_MESSAGES = {
    "interrupted": "The request was interrupted (InterruptToken.interrupt())",
    "stalled": "The stream stalled: no content event within stall_timeout; the request was aborted",
}


class ClaudeInvocationError(Exception):
    """A call to Claude failed.

    ``kind`` is one of ``auth, rate_limit, overloaded, server, connection, timeout, bad_request,
    context_overflow, interrupted, stalled, callback, tool_turns_exceeded, invalid_output, budget``,
    ``refusal`` (the model declined: an HTTP 200 reply with ``stop_reason == "refusal"``),
    ``max_tokens`` (a reply with no text because its output, thinking included, used the whole
    ``max_tokens``) (None for a failure that is not an API failure), or for one request of a
    message batch (:func:`invoke_batch`) ``batch_errored`` (the item's result was ``errored``;
    ``details`` is the API's error body), ``batch_expired`` or ``batch_canceled``; the full set is
    :data:`ERROR_KINDS`. ``context_overflow`` is a 400 about the context window or a reply that
    stopped with ``model_context_window_exceeded``.

    ``transient`` says whether a retry may succeed (never for ``refusal``, ``max_tokens`` and
    ``context_overflow``); ``retry_after`` is the server's requested wait in seconds (or None).
    A failure that was paid carries ``usage`` (a :class:`Usage`) and ``cost_usd``: the reply of a
    refusal or truncated reply, a tool loop's turns so far; ``stop_details`` is the reply's
    ``stop_details`` as a dict (a refusal's ``category`` and ``explanation``), else None. Parallel
    runs attach ``results`` (input order, None where failed) and ``errors`` (index -> exception).
    The SDK exception, if any, is the ``__cause__``, sanitised: no API key in its text, body,
    request or response (headers and content).

    >>> try:
    ...     invoke_claude("hi")
    ... except ClaudeInvocationError as e:
    ...     print(e.kind, e.transient, e.status_code)
    >>> try:
    ...     invoke_claude("[[refuse]] a request the model declines")
    ... except ClaudeInvocationError as e:
    ...     print(e.kind, e.stop_details["category"], e.usage.input_tokens, e.cost_usd)
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
        should_retry: Optional[bool] = None,
        usage: Any = None,
        cost_usd: Optional[float] = None,
        stop_details: Optional[dict] = None,
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
        #: The server's ``x-should-retry`` verdict (True / False), when it sent one.
        self.should_retry = should_retry
        # Set by the transport: a failure after the response had begun (a mid-stream error), and
        # the HTTP response headers of the failed request, when there was a response.
        self.mid_response = False
        self.headers: Any = None
        # Set by batch create: the request certainly never reached the server (safe to resend).
        self.never_sent = False
        #: The reply's ``stop_details`` (a dict) for a reply that is not an answer, else None.
        self.stop_details = stop_details
        if usage is not None:  # present only on a paid failure (as tool loops attach them)
            self.usage = usage
            self.cost_usd = cost_usd

    @property
    def transient(self) -> bool:
        """True when the failure is worth retrying: ``kind in TRANSIENT_KINDS``, unless the server
        said otherwise with an ``x-should-retry: true|false`` header (as the SDK obeys it). A
        reply that is not an answer (:data:`REPLY_KINDS`) is never transient."""
        if self.kind in REPLY_KINDS:
            return False
        if self.should_retry is not None:
            return self.should_retry
        return self.kind in TRANSIENT_KINDS

    def derive(self, message: Optional[str] = None, **changes: Any) -> ClaudeInvocationError:
        """A new error of the same type with every field kept (``kind``, ``status_code``,
        ``details``, ``request_id``, ``retry_after``, ``attempts``, the ``x-should-retry`` verdict
        ...) except those given; the caller chains this one as its cause.

        >>> final = error.derive(f"failed after 3 attempts: {error}", attempts=3)
        """
        new = copy.copy(self)
        new.__dict__.update(changes)
        if message is not None:
            new.message = message
        new.args = (new.message,)
        new.__cause__ = new.__context__ = None
        new.__traceback__ = None
        return new

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, status_code={self.status_code!r}, message={self.message!r})"

    def __reduce__(self) -> Any:
        state = dict(self.__dict__)
        state["headers"] = None if self.headers is None else dict(self.headers)
        return (type(self), (self.message, self.status_code, self.details), state)


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


for _cls in (ClaudeInvocationError, MissingAPIKeyError):
    _cls.__module__ = "claude_client"


# ------------------------------------------------------------------------------------ secrets

_REDACTED = "[redacted API key]"
_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_variants: tuple[str, ...] = ()


def register_secret(key: Optional[str]) -> None:
    """Remember ``key`` so that no error text of the library ever shows it (kept for the life of
    the process: a call in flight may fail after the key was replaced)."""
    global _variants
    if not isinstance(key, str) or len(key) < 8 or key in _secrets:  # too short: would over-redact
        return
    with _secrets_lock:
        _secrets.add(key)
        _variants = _spellings(_secrets)


def _spellings(keys: Iterable[str]) -> tuple[str, ...]:
    found: set[str] = set()
    for key in keys:
        found.add(key)
        found.add(repr(key)[1:-1])  # as quoted in a str repr (escaped line breaks)
        found.add(repr(key.encode("utf-8", "backslashreplace"))[2:-1])  # ... or in a bytes repr
    return tuple(sorted(found, key=len, reverse=True))


#: Request / response headers whose value is a credential, whatever its text.
_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization"})


def _attr(obj: Any, name: str) -> Any:
    """``obj.name`` or None (httpx raises RuntimeError for a request that is not set)."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` and ``__context__``, once each."""
    seen: set[int] = set()
    out: list[BaseException] = []
    stack: list[Optional[BaseException]] = [exc]
    while stack and len(out) < 64:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        out.append(current)
        stack.extend((current.__context__, current.__cause__))
    return out


def _request_secrets(chain: Iterable[BaseException]) -> tuple[str, ...]:
    """The keys the failed requests carried (they may not be registered: e.g. an injected client)."""
    found = []
    for exc in chain:
        for request in (_attr(exc, "request"), _attr(_attr(exc, "response"), "request")):
            headers = _attr(request, "headers")
            for name in ("x-api-key", "authorization"):
                try:
                    value = headers.get(name) if headers is not None else None
                except Exception:  # pragma: no cover - a header that cannot be decoded
                    value = None
                if isinstance(value, str) and value.strip():
                    value = value.strip()
                    found.append(value[len("bearer ") :].strip() if value.lower().startswith("bearer ") else value)
    return _spellings(k for k in found if len(k) >= 8)


def redact(value: Any, secrets: Optional[tuple[str, ...]] = None) -> Any:
    """``value`` (a str or bytes, or dicts / lists of them) with every known key replaced."""
    secrets = _variants if secrets is None else secrets
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, _REDACTED)
        return value
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        for secret in secrets:
            raw = secret.encode("utf-8", "backslashreplace")
            if raw in data:
                data = data.replace(raw, _REDACTED.encode())
        return data
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value


def _clean_headers(headers: Any, secrets: tuple[str, ...], drop: frozenset[str] = frozenset()) -> list:
    items = headers.multi_items() if hasattr(headers, "multi_items") else list(dict(headers or {}).items())
    return [
        (name, _REDACTED if name.lower() in _AUTH_HEADERS else redact(value, secrets))
        for name, value in items
        if name.lower() not in drop
    ]


class _Sanitizer:
    """Replaces, in place, every request and response an exception chain holds by a copy without
    credentials (auth headers blanked, keys redacted from URLs, headers and bodies read so far),
    and redacts the exceptions' texts, bodies and other plain attributes."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self._done: dict[int, Any] = {}  # id(original) -> its clean copy (a request shared stays shared)

    def request(self, request: Any) -> Any:
        if not isinstance(request, httpx2.Request):
            return request
        if id(request) not in self._done:
            content = request.__dict__.get("_content")  # only a body already read (never a stream)
            self._done[id(request)] = httpx2.Request(
                request.method,
                redact(str(request.url), self.secrets),
                headers=_clean_headers(request.headers, self.secrets),
                content=redact(content, self.secrets) if isinstance(content, bytes) else b"",
            )
        return self._done[id(request)]

    def response(self, response: Any) -> Any:
        if not isinstance(response, httpx2.Response):
            return response
        if id(response) not in self._done:
            content = response.__dict__.get("_content")  # decoded already: the encoding headers go
            self._done[id(response)] = httpx2.Response(
                response.status_code,
                headers=_clean_headers(
                    response.headers, self.secrets, frozenset({"content-encoding", "content-length"})
                ),
                content=redact(content, self.secrets) if isinstance(content, bytes) else b"",
                request=self.request(_attr(response, "request")),
            )
        return self._done[id(response)]

    def value(self, value: Any) -> Any:
        if isinstance(value, httpx2.Request):
            return self.request(value)
        if isinstance(value, httpx2.Response):
            return self.response(value)
        if isinstance(value, (str, bytes, bytearray, dict, list, tuple)):
            return redact(value, self.secrets)
        dump = getattr(value, "model_dump", None)  # a pydantic object (the SDK's error details)
        if callable(dump) and not isinstance(value, type) and self.secrets:
            try:
                data = dump(mode="json")
                clean = redact(data, self.secrets)
                return value if clean == data else type(value).model_construct(**clean)
            except Exception:  # pragma: no cover - a model that cannot be dumped: drop it
                return None
        return value

    def exception(self, exc: BaseException) -> None:
        try:
            exc.args = tuple(self.value(a) for a in exc.args)
        except Exception:  # pragma: no cover - read-only args
            pass
        for name, value in list(vars(exc).items()):
            if name in ("__traceback__",):
                continue
            clean = self.value(value)
            if clean is not value:
                try:
                    setattr(exc, name, clean)
                except Exception:  # pragma: no cover - a read-only attribute
                    pass
        if isinstance(exc, httpx2.HTTPError) and "_request" not in vars(exc):
            request = _attr(exc, "request")  # a property over a private slot
            if request is not None:
                try:
                    exc.request = self.request(request)
                except Exception:  # pragma: no cover
                    pass


def sanitize(exc: BaseException, secrets: Optional[tuple[str, ...]] = None) -> None:
    """Make ``exc`` and its whole chain (``__cause__`` and ``__context__``) safe to show: no API
    key in any text, body, request or response (the credential headers are blanked whatever
    their value). In place; the SDK exceptions stay the same objects."""
    chain = _chain(exc)
    if secrets is None:
        secrets = tuple(sorted(set(_variants) | set(_request_secrets(chain)), key=len, reverse=True))
    sanitizer = _Sanitizer(secrets)
    for current in chain:
        sanitizer.exception(current)


# ------------------------------------------------------------------------------ classification


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


def retry_after_from(headers: Any) -> Optional[float]:
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


def translate(exc: BaseException) -> ClaudeInvocationError:
    """``exc`` as a :class:`ClaudeInvocationError` (returned, not raised); the caller chains it:
    ``raise translate(e) from e``. A ClaudeInvocationError is returned as is.

    Every known API key (and the one the failed request carried) is redacted from the new error
    and, in place, from ``exc`` and its whole chain (:func:`sanitize`): its texts and bodies, and
    the requests and responses it holds (credential headers blanked), so neither a printed
    traceback nor ``error.__cause__.request.headers`` shows a key.
    """
    if isinstance(exc, ClaudeInvocationError):
        return exc
    error = _classify(exc)
    secrets = tuple(sorted(set(_variants) | set(_request_secrets(_chain(exc))), key=len, reverse=True))
    sanitize(exc, secrets)
    if secrets:
        error.message = redact(error.message, secrets)
        error.args = (error.message,)
        error.details = redact(error.details, secrets)
    return error


def _classify(exc: BaseException) -> ClaudeInvocationError:
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
        verdict = headers.get("x-should-retry") if headers is not None else None
        return ClaudeInvocationError(
            f"Claude API error ({kind}, {where}): {api_message}",
            status_code=status,
            details=copy.deepcopy(exc.body),
            kind=kind,
            request_id=getattr(exc, "request_id", None),
            retry_after=retry_after_from(headers),
            should_retry=(verdict == "true") if verdict in ("true", "false") else None,
        )
    if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException, socket.timeout)):
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


def is_api_failure(exc: BaseException) -> bool:
    """True for the exceptions :func:`translate` classifies as API or transport failures."""
    return isinstance(exc, (ClaudeInvocationError, anthropic.APIError, httpx2.HTTPError, OSError))
