"""No API key survives on a raised error (issue 19, item 8).

The SDK puts the key in every exception it raises: ``err.__cause__.request.headers``
(``Authorization: Bearer ...``), and in ``err.__cause__.response`` (text, body, headers) when a
server echoes it. The library's one translation sanitises the whole chain. These tests walk
everything reachable from a raised error (attributes, ``__dict__``, ``__cause__`` /
``__context__``, ``args``, requests and responses with their headers and content, containers;
bounded) for several failure kinds and assert the key's text is nowhere, nor in ``str``,
``repr`` or a formatted traceback.
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import traceback
import types
from typing import Any, Iterator

import httpx2
import pytest

from anthropic_emulator import Emulator

import claude_client as cc
from claude_client import ClaudeInvocationError
from orchestration import invoke_parallel_managed, invoke_with_retry

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"  # conftest's TEST_KEY, sent by the client_env clients
OTHER_KEY = "sk-ant-unregistered-secret-0123456789"  # never resolved by the library's credentials

_SKIP = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.FrameType,
    types.TracebackType,
    type,
    type(threading.Lock()),
    threading.Thread,
    threading.Event,
    threading.Condition,
)


def _leaks(root: Any, secret: str, max_depth: int = 14) -> list[str]:
    """Paths from ``root`` to every text holding ``secret``."""
    found: list[str] = []
    seen: set[int] = set()
    raw = secret.encode()

    def visit(obj: Any, path: str, depth: int) -> None:
        if obj is None or isinstance(obj, (bool, int, float)) or depth > max_depth:
            return
        if isinstance(obj, str):
            if secret in obj:
                found.append(path)
            return
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if raw in bytes(obj):
                found.append(path)
            return
        if id(obj) in seen or isinstance(obj, _SKIP):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                visit(k, f"{path}[key]", depth + 1)
                visit(v, f"{path}[{k!r}]", depth + 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for i, v in enumerate(list(obj)):
                visit(v, f"{path}[{i}]", depth + 1)
            return
        if isinstance(obj, httpx2.Headers):
            visit(list(obj.raw), f"{path}.raw", depth + 1)
            visit(obj.multi_items(), f"{path}.items", depth + 1)
        if isinstance(obj, httpx2.Request):
            visit(str(obj.url), f"{path}.url", depth + 1)
            visit(obj.headers, f"{path}.headers", depth + 1)
        if isinstance(obj, httpx2.Response):
            visit(obj.headers, f"{path}.headers", depth + 1)
            try:
                visit(obj.text, f"{path}.text", depth + 1)
            except Exception:  # a stream not read: nothing to show
                pass
            try:
                visit(obj.request, f"{path}.request", depth + 1)
            except RuntimeError:
                pass
        if isinstance(obj, BaseException):
            visit(obj.args, f"{path}.args", depth + 1)
            visit(obj.__cause__, f"{path}.__cause__", depth + 1)
            visit(obj.__context__, f"{path}.__context__", depth + 1)
            for name in ("request", "response", "body", "message"):
                try:
                    visit(getattr(obj, name, None), f"{path}.{name}", depth + 1)
                except Exception:
                    pass
        dump = getattr(obj, "model_dump", None)
        if callable(dump) and not isinstance(obj, type):
            try:
                visit(dump(), f"{path}.model_dump()", depth + 1)
            except Exception:
                pass
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            visit(attrs, f"{path}.__dict__", depth + 1)
        for name in getattr(type(obj), "__slots__", ()) or ():
            if isinstance(name, str) and hasattr(obj, name):
                visit(getattr(obj, name), f"{path}.{name}", depth + 1)

    visit(root, "error", 0)
    return found


def _assert_clean(error: BaseException, secret: str = KEY) -> None:
    assert _leaks(error, secret) == []
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert secret not in text and secret not in str(error) and secret not in repr(error)


def _sdk_cause(error: BaseException) -> Any:
    cause = error.__cause__
    while isinstance(cause, ClaudeInvocationError):
        cause = cause.__cause__
    return cause


def _assert_sdk_cause(error: BaseException) -> None:
    """The check walks something real: the SDK exception and its request are still chained."""
    cause = _sdk_cause(error)
    assert cause is not None and type(cause).__module__.startswith(("anthropic", "httpx2", "httpcore"))
    request = getattr(cause, "request", None)
    assert isinstance(request, httpx2.Request) and "authorization" in request.headers


# --------------------------------------------------------------------------- through the emulator
@pytest.mark.parametrize(
    "prompt, kind",
    [
        ("[[fail=429 retry_after=0]] limited", "rate_limit"),
        ("[[fail=500]] broken", "server"),
        ("[[fail=400]] refused", "bad_request"),
        ("[[fail=529]] busy", "overloaded"),
    ],
)
def test_http_failures_carry_no_key(client_env: Emulator, prompt: str, kind: str) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry(prompt, max_retries=0)
    assert info.value.kind == kind
    _assert_sdk_cause(info.value)
    _assert_clean(info.value)


def test_a_rejected_key_is_not_shown(client_env: Emulator) -> None:
    client_env.configure(api_key="sk-ant-the-only-accepted-key")
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("hi")
    assert info.value.kind == "auth" and info.value.status_code == 401
    _assert_sdk_cause(info.value)
    _assert_clean(info.value)


def test_a_stream_cut_by_an_error_event_carries_no_key(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("[[error_after=2 words=10]] cut short", callback=lambda _c: None)
    assert info.value.kind == "overloaded" and info.value.mid_response
    _assert_clean(info.value)


def test_parallel_and_managed_errors_carry_no_key(client_env: Emulator) -> None:
    prompts = [{"prompt": "fine"}, {"prompt": "[[fail=500]] broken"}]
    results = cc.invoke_parallel(prompts, return_exceptions=True)
    assert isinstance(results[1], ClaudeInvocationError)
    _assert_clean(results[1])
    managed = invoke_parallel_managed(prompts, max_retries=1, base_delay_ms=1, max_delay_ms=2)
    assert managed.errors[1].kind == "server"
    _assert_clean(managed.errors[1])
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_parallel(prompts)
    _assert_clean(info.value)  # the run's error, with .results and .errors


# --------------------------------------------------------------------------- no server
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_connection_error_carries_no_key(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry("hi", max_retries=0, api_key=OTHER_KEY, base_url=f"http://127.0.0.1:{_closed_port()}")
    assert info.value.kind == "connection"
    _assert_sdk_cause(info.value)
    _assert_clean(info.value, OTHER_KEY)


# --------------------------------------------------------------------------- a server that echoes the key
class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every POST with an error that quotes the request's Authorization header, in the
    body and in a header, as a misconfigured proxy might."""

    status = 401

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization", "")
        body = json.dumps(
            {"type": "error", "error": {"type": "authentication_error", "message": f"invalid credentials: {auth}"},
             "request_id": "req_echo"}
        ).encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo-auth", auth)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_a_server_echoing_the_key_in_its_error_leaks_nothing(client_env: Emulator, echo_server: str, key: str) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry("hi", max_retries=0, api_key=key, base_url=echo_server)
    error = info.value
    assert error.kind == "auth" and error.status_code == 401
    _assert_sdk_cause(error)
    # the echo is there, redacted: the body and the response text were read, not dropped
    assert "[redacted API key]" in error.message and "[redacted API key]" in _sdk_cause(error).response.text
    _assert_clean(error, key)


def test_an_injected_client_with_an_unregistered_key_leaks_nothing(client_env: Emulator, echo_server: str) -> None:
    import anthropic

    client = anthropic.Anthropic(api_key=OTHER_KEY + "-injected", base_url=echo_server, max_retries=0)
    cc.configure(client=client)
    try:
        with pytest.raises(ClaudeInvocationError) as info:
            cc.invoke_claude("hi")
    finally:
        cc.reset_client()
    _assert_clean(info.value, OTHER_KEY + "-injected")
