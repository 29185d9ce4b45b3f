"""Send one request: the shared clients, the abort handle, the one send path and retry loop.

:func:`send` is the only place that calls the SDK's ``messages.create`` / ``messages.stream``.
It runs every attempt through :func:`_retry.run` with the policy its caller passes (the SDK's own
retries are always off, so attempts never multiply and every wait can be interrupted), and
translates SDK and transport exceptions once, through :func:`_errors.translate`.

Abort: each attempt has an abort handle (:class:`_Call`), tied to the thread that sends it. The
clients the library builds carry a network backend that hands every socket the attempt uses (from
the moment it is created, before ``connect``) to that handle, so ``abort()`` shuts the socket down
whatever the phase: TCP connect, TLS handshake, waiting for the headers, or reading the body.
The blocked call returns at once and the server sees the disconnect. A request is streamed only
when something needs the stream (text callbacks, a stall timeout, the cache pilot's release);
otherwise it is a plain ``messages.create``, which the same mechanism aborts.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import weakref
from typing import Any, Callable, Optional

import anthropic
import httpcore2
import httpx2

import _tracing
from _admission import Budget, controller_for
from _credentials import on_change, resolve_api_key, resolve_base_url, settings
from _errors import ABORT_MESSAGES, ClaudeInvocationError, translate
from _interrupt import InterruptToken, subscribe, unsubscribe
from _requests import sdk_kwargs
from _results import ClaudeResponse, response_from_message
from _retry import RetryPolicy, run, sdk_policy
from _stall import stall_watch

_SyncStream: Any
try:  # the SDK's own socket stream class, to wrap sockets this module connects itself
    from httpcore2._backends.sync import SyncStream as _SyncStream
except ImportError:  # pragma: no cover - another httpcore2 layout: connect through the default backend
    _SyncStream = None

logger = logging.getLogger("claude_client._transport")

# The SDK's ValueError (raised before sending) for a non-streaming request whose max_tokens
# may take longer than its 10-minute non-streaming limit.
_STREAMING_REQUIRED = "Streaming is required"

_DEFAULT: Any = object()

# Per thread: the abort handle of the attempt this thread is sending.
_tls = threading.local()


class _RequestAborted(Exception):
    """Raised inside the network layer to stop an attempt that was aborted."""


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


class _Call:
    """Abort handle of one attempt; ``abort()`` is safe from any thread (not a signal handler)."""

    __slots__ = ("_lock", "reason", "sock", "stream", "stall", "started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: Optional[str] = None
        self.sock: Any = None
        self.stream: Any = None
        self.stall: Optional[tuple] = None
        self.started = False  # the reply has begun (its stream is open)

    def attach_socket(self, sock: Any) -> None:
        with self._lock:
            if self.reason is not None:
                raise _RequestAborted(f"request stopped: the call was {self.reason}")
            self.sock = sock

    def attach_stream(self, stream: Any) -> bool:
        """Record the open stream; False when the call was aborted meanwhile."""
        with self._lock:
            self.stream = stream
            self.started = True
            return self.reason is None

    def detach(self) -> None:
        """Forget the socket and stream (the attempt ended): a later ``abort()`` must not shut
        down a connection that is back in the pool, maybe serving another request."""
        with self._lock:
            self.sock = None
            self.stream = None

    def heartbeat(self) -> None:
        stall = self.stall
        if stall is not None:
            stall[0].heartbeat(stall[1])

    def abort(self, reason: str) -> None:
        """Shut the connection down so the sending thread's blocked call returns at once."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            stream = self.stream
            shut = _shutdown_socket(self.sock)
        if not shut and stream is not None:  # no socket of ours (an injected client): close the stream
            try:
                stream.close()
            except Exception:
                logger.debug("closing an aborted stream failed", exc_info=True)


# ------------------------------------------------------------------------------ network layer
class _AbortableStream(httpcore2.NetworkStream):
    """A network stream that hands its socket to the abort handle of the attempt using it."""

    def __init__(self, inner: httpcore2.NetworkStream, sock: Any) -> None:
        self._inner = inner
        self._sock = sock

    def _claim(self) -> None:
        call = getattr(_tls, "call", None)
        if call is not None and call.sock is not self._sock:
            call.attach_socket(self._sock)

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        self._claim()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._claim()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> Any:
        self._claim()
        if _SyncStream is None or isinstance(self._sock, ssl.SSLSocket):  # TLS in TLS (a proxy): as httpcore does
            inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
            return _AbortableStream(inner, inner.get_extra_info("socket"))
        # The handshake runs on the new TLS socket: hand that one to the abort handle first.
        try:
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
            call = getattr(_tls, "call", None)
            if call is not None:
                call.attach_socket(tls)
            tls.settimeout(timeout)
            tls.do_handshake()
        except TimeoutError as exc:
            self._sock.close()
            raise httpcore2.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            self._sock.close()
            raise httpcore2.ConnectError(str(exc)) from exc
        return _AbortableStream(_SyncStream(tls), tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AbortableBackend(httpcore2.NetworkBackend):
    """The pool's network backend, creating sockets so that an abort can reach them at once."""

    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Any = None,
    ) -> httpcore2.NetworkStream:
        if _SyncStream is None:  # pragma: no cover
            stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
            return _AbortableStream(stream, stream.get_extra_info("socket"))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        last: Optional[BaseException] = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                call = getattr(_tls, "call", None)
                if call is not None:
                    call.attach_socket(sock)  # from now on an abort shuts it down
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if local_address is not None:
                    sock.bind((local_address, 0))
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _AbortableStream(_SyncStream(sock), sock)
            except TimeoutError as exc:
                sock.close()
                raise httpcore2.ConnectTimeout(str(exc)) from exc
            except _RequestAborted:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last = exc
        raise httpcore2.ConnectError(str(last))

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None, socket_options: Any = None) -> Any:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AbortableStream(stream, stream.get_extra_info("socket"))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# ------------------------------------------------------------------------------ clients
class _HttpClient(anthropic.DefaultHttpxClient):
    """The SDK's default httpx client with the abortable network backend, closed when
    garbage-collected (:func:`configure` drops shared clients without closing them: calls in
    flight may still use them; every ``with_options`` copy shares this object)."""

    def __init__(self) -> None:
        super().__init__(event_hooks={"response": [_note_response]})
        pool = getattr(getattr(self, "_transport", None), "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        self.abortable = backend is not None
        if backend is not None:
            pool._network_backend = _AbortableBackend(backend)  # type: ignore[union-attr]
        else:  # pragma: no cover - another httpx2 layout: aborts close the stream instead
            logger.warning("cannot install the abortable network backend; interrupts act at the next event")

    def __del__(self) -> None:
        try:
            if not self.is_closed:
                self.close()
        except Exception:  # pragma: no cover - best effort, possibly at interpreter exit
            pass


_clients_lock = threading.Lock()
_clients: dict[tuple, anthropic.Anthropic] = {}
_views: dict[int, tuple[anthropic.Anthropic, anthropic.Anthropic]] = {}
_abortable: weakref.WeakSet[anthropic.Anthropic] = weakref.WeakSet()


def get_client(*, api_key: Optional[str] = None, base_url: Optional[str] = None) -> anthropic.Anthropic:
    """The shared SDK client (created on first use; one per key, base URL and settings).

    >>> client = get_client()
    >>> client.messages.count_tokens(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
    """
    generation, config = settings()
    injected = config.get("client")
    if injected is not None and api_key is None and base_url is None:
        return injected
    key = resolve_api_key(api_key)
    url = resolve_base_url(base_url)
    timeout, retries = config.get("timeout"), config.get("max_retries")
    telemetry = _tracing.client_option()
    slot = (key, url, timeout, retries, _telemetry_key(telemetry))
    with _clients_lock:
        client = _clients.get(slot) if generation == _generation_seen else None
        if client is None:
            http_client = _HttpClient()
            kwargs: dict[str, Any] = {"api_key": key, "base_url": url, "http_client": http_client}
            if timeout is not None:
                kwargs["timeout"] = timeout
            if retries is not None:
                kwargs["max_retries"] = retries
            if telemetry is not None:  # the library's own provider (else: the SDK's defaults)
                kwargs["open_telemetry"] = telemetry
            client = anthropic.Anthropic(**kwargs)
            if generation == _generation_seen:  # else configure() ran meanwhile: do not keep it
                _clients[slot] = client
            if http_client.abortable:
                _abortable.add(client)
        return client


def _telemetry_key(option: Optional[dict[str, Any]]) -> Optional[tuple]:
    """The client-cache key of an ``open_telemetry=`` option: its provider's identity and switches
    (a client lives as long as its slot, and keeps its provider alive, so the id stays unique)."""
    if option is None:
        return None
    traces = tuple(sorted(option.get("traces", {}).items()))
    return (id(option["tracer_provider"]), traces, option.get("propagation", True))


def _forget_clients() -> None:
    """After configure() / reset_client(): forget the shared clients without closing them (calls
    on other threads may still use them; a pool closes when its client is garbage-collected)."""
    global _generation_seen
    with _clients_lock:
        _clients.clear()
        _views.clear()
        _generation_seen = settings()[0]


_generation_seen = settings()[0]
on_change(_forget_clients)


def no_retry_client(client: anthropic.Anthropic) -> anthropic.Anthropic:
    """``client`` with the SDK's retries off (the library's loop retries), made once per client;
    the copy shares the client's connection pool."""
    if client.max_retries == 0:
        return client
    entry = _views.get(id(client))  # the hot path: no lock (a dict read is atomic)
    if entry is not None and entry[0] is client:
        return entry[1]
    with _clients_lock:
        entry = _views.get(id(client))
        if entry is None or entry[0] is not client:
            view = client.with_options(max_retries=0)
            if client in _abortable:
                _abortable.add(view)
            entry = _views[id(client)] = (client, view)
        return entry[1]


def default_policy(client: anthropic.Anthropic) -> RetryPolicy:
    """The retries of a plain call: the client's ``max_retries`` with the SDK's rules."""
    return sdk_policy(client.max_retries)


# ------------------------------------------------------------------------------ sending
def send(
    params: dict,
    *,
    client: anthropic.Anthropic,
    policy: Optional[RetryPolicy] = None,
    stream: bool = False,
    on_text: Optional[Callable[[str], Any]] = None,
    on_start: Optional[Callable[[], Any]] = None,
    interrupt: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    budget: Optional[Budget] = None,
    admission: Any = _DEFAULT,
) -> ClaudeResponse:
    """Send one request (its attempts, under ``policy``) and return the reply.

    Streamed when asked, or when ``on_text`` / ``on_start`` / ``stall_timeout`` need the stream
    (or an interrupt must reach a client whose sockets this module does not own); else
    ``messages.create``. ``on_start()`` runs once at message_start, ``on_text(chunk)`` for every text
    delta, both on this thread; a callback that raises aborts the request (kind ``callback``).
    ``interrupt`` / ``stall_timeout`` abort it (kinds ``interrupted`` / ``stalled``).

    Before each attempt, ``budget`` (a run's spend cap) reserves its worst-case cost and the
    admission controller of (key, base URL, model) waits until it fits the rate limits; after
    it, both learn what it really used (usage and the ``anthropic-ratelimit-*`` headers).

    A reply that is not an answer raises (after it is accounted as paid), never retried: kinds
    ``refusal``, ``max_tokens`` (no text: the output, thinking included, used all of max_tokens)
    and ``context_overflow`` (see :func:`reply_error`).
    """
    if policy is None:
        policy = default_policy(client)
    if admission is _DEFAULT:
        admission = controller_for(client, str(params.get("model", "")))
    view = no_retry_client(client)
    streamed = (
        stream
        or on_text is not None
        or on_start is not None
        or stall_timeout is not None
        or (interrupt is not None and view not in _abortable)
    )

    def attempt(_number: int) -> ClaudeResponse:
        if interrupt is not None and interrupt.is_interrupted():
            raise ClaudeInvocationError(ABORT_MESSAGES["interrupted"] + " before it was sent", kind="interrupted")
        reservation = budget.reserve(params) if budget is not None else None
        ticket = None
        call = _Call()
        handle = None
        reply: Optional[ClaudeResponse] = None
        error: Optional[ClaudeInvocationError] = None
        sending = False
        try:
            if admission is not None:
                ticket = admission.admit(params, interrupt)
            if interrupt is not None:
                handle = subscribe(interrupt, lambda: call.abort("interrupted"))
            sending = True
            if not streamed:
                try:
                    reply = _create(params, view, call)
                except ValueError as exc:
                    if _STREAMING_REQUIRED not in str(exc):
                        raise
                    logger.debug("max_tokens=%s needs streaming: sending it as a stream", params.get("max_tokens"))
            if reply is None:
                reply = _stream(
                    params, view, call, on_text, on_start, stall_timeout, None if ticket is None else ticket.started
                )
        except ClaudeInvocationError as exc:
            error = exc
            raise
        finally:
            if handle is not None:
                unsubscribe(interrupt, handle)  # type: ignore[arg-type]
            # Settled whatever ended the attempt (a programming error or Ctrl-C included), so no
            # admission charge or spend reservation is left behind.
            if ticket is not None:
                if reply is not None:
                    ticket.finish(reply.headers, reply.usage, None)
                else:
                    ticket.finish(None if error is None else error.headers, None, error)
            if reservation is not None:
                if reply is not None:
                    reservation.settle(reply.cost_usd)
                elif not sending or (error is not None and error.status_code is not None and not call.started):
                    reservation.settle(0.0)  # never sent, or refused by the API before a reply: nothing billed
                else:
                    reservation.settle(None)  # unknown: the worst case stays spent
        not_an_answer = reply_error(reply)
        if not_an_answer is not None:  # settled above as the paid reply it is; never retried
            raise not_an_answer
        return reply

    return run(attempt, policy, interrupt=interrupt)


def _failure(exc: BaseException, call: _Call) -> ClaudeInvocationError:
    """The library error for an attempt that raised ``exc`` (the one translation point, which
    also sanitises ``exc``: it is chained as the cause)."""
    error = translate(exc)
    if call.reason in ABORT_MESSAGES:
        error = ClaudeInvocationError(ABORT_MESSAGES[call.reason or ""], kind=call.reason)
    else:
        error.headers = getattr(getattr(exc, "response", None), "headers", None)
    error.mid_response = call.started
    return error


# ------------------------------------------------------------------------------ replies
def _stop_details(message: Any) -> Optional[dict]:
    details = getattr(message, "stop_details", None)
    if details is None:
        return None
    if hasattr(details, "model_dump"):
        return details.model_dump(mode="json")
    return dict(details) if isinstance(details, dict) else {"value": details}


def _has_answer(reply: ClaudeResponse) -> bool:
    """The reply has text or asks for a tool (thinking blocks alone are no answer)."""
    return bool(str.__str__(reply).strip()) or any(
        b.get("type") in ("tool_use", "server_tool_use") for b in reply.content
    )


def reply_error(reply: ClaudeResponse) -> Optional[ClaudeInvocationError]:
    """The error for an HTTP 200 reply that is not an answer (None for an answer): a refusal
    (kind ``refusal``), a reply whose output hit ``max_tokens`` before any text or tool call
    (``max_tokens``), a stop at the context window (``context_overflow``). Each carries the
    reply's ``usage``, ``cost_usd``, ``request_id`` and ``stop_details``; none is ever retried."""
    stop = reply.stop_reason
    if stop not in ("refusal", "max_tokens", "model_context_window_exceeded"):
        return None
    if stop == "max_tokens" and _has_answer(reply):
        return None  # a cut reply with text: the caller reads stop_reason
    details: Optional[dict] = getattr(reply, "stop_details", None)
    usage = reply.usage
    where = f"{reply.model or 'the model'}, request {reply.request_id or 'unknown'}"
    if stop == "refusal":
        category = (details or {}).get("category")
        explanation = (details or {}).get("explanation")
        why = f": {str(explanation).rstrip('. ')}" if explanation else ""
        message = (
            f"Claude declined the request (stop_reason refusal{f', category {category}' if category else ''}; "
            f"{where}){why}. Sending the same request again gives the same answer: rephrase it"
        )
        kind = "refusal"
    elif stop == "max_tokens":
        thinking = getattr(usage, "thinking_tokens", None)
        spent = f"{usage.output_tokens} output tokens" + (f", {thinking} of them thinking" if thinking else "")
        message = (
            f"The reply has no text: its output reached max_tokens ({spent}; {where}). Raise max_tokens "
            "or lower effort= (less thinking)"
        )
        kind = "max_tokens"
    else:
        message = (
            f"The reply stopped at the model's context window (stop_reason model_context_window_exceeded; {where})"
            ": shorten the prompt or the history, or lower max_tokens"
        )
        kind = "context_overflow"
    error = ClaudeInvocationError(
        message,
        details={"stop_reason": stop, "text": str.__str__(reply), "content": reply.content},
        kind=kind,
        request_id=reply.request_id,
        usage=usage,
        cost_usd=reply.cost_usd,
        stop_details=details,
    )
    error.headers = reply.headers
    return error


_SENDING_ERRORS = (anthropic.APIError, httpx2.HTTPError, OSError, _RequestAborted)


def _note_response(response: httpx2.Response) -> None:
    """httpx response hook of the library's clients: the headers, for the thread that sent it."""
    _tls.headers = response.headers


def _create(params: dict, client: anthropic.Anthropic, call: _Call) -> ClaudeResponse:
    previous = getattr(_tls, "call", None)
    _tls.call = call
    _tls.headers = None
    try:
        if client in _abortable:  # our client: its response hook keeps the headers
            message = client.messages.create(**sdk_kwargs(params))
            headers = _tls.headers
        else:
            raw = client.messages.with_raw_response.create(**sdk_kwargs(params))
            message, headers = raw.parse(), raw.headers
    except _SENDING_ERRORS as exc:
        raise _failure(exc, call) from exc
    finally:
        _tls.call = previous
        call.detach()
    request_id = headers.get("request-id") if headers is not None else getattr(message, "_request_id", None)
    return _reply(message, request_id, params, headers)


def _reply(message: Any, request_id: Optional[str], params: dict, headers: Any) -> ClaudeResponse:
    reply = response_from_message(message, request_id, str(params.get("model", "")))
    reply.headers = headers
    details = _stop_details(message)
    if details is not None:  # a refusal's category and explanation
        reply.stop_details = details  # type: ignore[attr-defined]
    return reply


def _stream(
    params: dict,
    client: anthropic.Anthropic,
    call: _Call,
    on_text: Optional[Callable[[str], Any]],
    on_start: Optional[Callable[[], Any]],
    stall_timeout: Optional[float],
    on_open: Optional[Callable[[Any], None]] = None,
) -> ClaudeResponse:
    previous = getattr(_tls, "call", None)
    _tls.call = call
    watched = stall_timeout is not None
    if watched:
        stall_watch.watch(call, stall_timeout)  # type: ignore[arg-type]
    completed = False
    try:
        with client.messages.stream(**sdk_kwargs(params)) as stream:
            if not call.attach_stream(stream):
                raise ClaudeInvocationError(ABORT_MESSAGES[call.reason or "interrupted"], kind=call.reason)
            if on_open is not None:  # the response headers, fresh at the start of a stream
                on_open(stream.response.headers)
            for event in stream:  # the SDK's MessageStream: pings are already skipped
                if watched:
                    call.heartbeat()
                etype = event.type
                if etype == "text":
                    if on_text is not None:
                        _run_user_callback(call, on_text, event.text, "on_text")  # type: ignore[union-attr]
                elif etype == "message_start":
                    if on_start is not None:
                        _run_user_callback(call, on_start, None, "on_start")
                elif etype == "message_stop":
                    completed = True
                if call.reason is not None and not completed:
                    break
            _tls.call = previous  # nothing more of this attempt may claim a socket
            call.detach()  # an abort from now on has nothing to shut down
            if not completed:
                if call.reason is not None:
                    raise ClaudeInvocationError(
                        ABORT_MESSAGES.get(call.reason, "The request was aborted"),
                        kind=call.reason if call.reason in ABORT_MESSAGES else "connection",
                    )
                raise ClaudeInvocationError("The stream ended before message_stop", kind="connection")
            message = stream.get_final_message()
            headers = stream.response.headers
    except ClaudeInvocationError as error:
        if error.kind != "callback":
            error.mid_response = call.started
        raise
    except _SENDING_ERRORS as exc:
        raise _failure(exc, call) from exc
    finally:
        _tls.call = previous
        call.detach()
        if watched:
            stall_watch.unwatch(call)
    return _reply(message, headers.get("request-id"), params, headers)


def _run_user_callback(call: _Call, fn: Callable, arg: Any, name: str) -> None:
    try:
        if name == "on_start":
            fn()
        else:
            fn(arg)
    except Exception as exc:
        call.abort("callback")
        error = ClaudeInvocationError(
            f"The {name} callback raised {type(exc).__name__}: {exc}; the stream was aborted", kind="callback"
        )
        raise error from exc
