"""The one request pipeline: one builder, one retry loop, one error boundary, one send path.

Regression tests for the defects fixed when claude_client was split into layered modules. Every
behaviour test runs the real SDK over HTTP against the emulator (or, where a misbehaving server
is the point, against a tiny raw socket server in the test).
"""
from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import claude_client as cc
import orchestration
from claude_client import ClaudeInvocationError, ConversationThread, InterruptToken
from orchestration import RetryPolicy, invoke_parallel_managed, invoke_with_retry

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _body(record) -> str:
    body = dict(record.body)
    body.pop("stream", None)
    return json.dumps(body)  # key order included


# --------------------------------------------------------------------------- one builder
@pytest.mark.parametrize("cache", [False, True])
def test_every_path_builds_the_same_body(client_env, cache: bool) -> None:
    options = {"model": "claude-haiku-5-5", "max_tokens": 77, "effort": "low", "thinking": "adaptive"}
    prompt = "Same prompt [[id=builder]]"
    cc.invoke_claude(prompt, system="S.", cache_system=cache, cache_prompt=cache, **options)
    cc.invoke_claude_streaming(prompt, system="S.", cache_system=cache, cache_prompt=cache, **options)
    invoke_with_retry(prompt, system="S.", cache_system=cache, cache_prompt=cache, **options)
    item = {"prompt": prompt, "cache_prompt": cache, "effort": "low", "thinking": "adaptive"}
    cc.invoke_parallel([item], shared_system="S.", cache_shared_system=cache, model=options["model"],
                       max_tokens=77)
    invoke_parallel_managed([item], shared_system="S.", cache_shared_system=cache, model=options["model"],
                            max_tokens=77)
    chat = ConversationThread(system="S.", cache_system=cache, **options)
    chat.send(prompt, cache_history=cache)
    bodies = [_body(r) for r in client_env.message_requests()]
    assert len(bodies) == 6
    assert len(set(bodies)) == 1, "\n".join(bodies)
    sent = json.loads(bodies[0])
    assert sent["output_config"] == {"effort": "low"} and sent["thinking"] == {"type": "adaptive"}
    if not cache:
        assert sent["system"] == "S." and sent["messages"][0]["content"] == prompt
    # the batch path: the same params inside the batch request
    from message_batches import invoke_batch

    invoke_batch([item], shared_system="S.", cache_shared_system=cache, model=options["model"], max_tokens=77,
                 poll_interval=0.05)
    create = next(r for r in client_env.requests if r.path.endswith("/messages/batches") and r.method == "POST")
    params = json.dumps(create.body["requests"][0]["params"])
    if cache:  # batches cache with the one-hour TTL (a batch may take longer than 5 minutes)
        params = params.replace('"ephemeral", "ttl": "1h"', '"ephemeral"')
    assert params == bodies[0]


def test_temperature_one_is_the_api_default_and_not_sent(client_env) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\]\['temperature'\].*removed.*effort="):
        cc.invoke_parallel([{"prompt": "t1", "temperature": 1.0}, {"prompt": "t2", "temperature": 0.0}])
    assert client_env.requests == []  # refused before anything was sent: the API removed sampling parameters
    cc.invoke_parallel([{"prompt": "t1", "temperature": 1.0}, {"prompt": "t2"}], effort="high")
    by_prompt = {r.prompt: r.body for r in client_env.message_requests()}
    assert "temperature" not in by_prompt["t1"] and "temperature" not in by_prompt["t2"]
    assert by_prompt["t1"]["output_config"] == by_prompt["t2"]["output_config"] == {"effort": "high"}


# --------------------------------------------------------------------------- one retry loop
@pytest.mark.parametrize("setting", ["max_retries", "base_delay_ms", "max_delay_ms"])
def test_policy_and_retry_settings_together_are_refused(client_env, setting: str) -> None:
    with pytest.raises(ValueError, match=f"policy=.*{setting}="):
        invoke_parallel_managed([{"prompt": "x"}], policy=RetryPolicy(max_retries=1), **{setting: 5})
    with pytest.raises(ValueError, match=f"policy=.*{setting}="):
        invoke_with_retry("x", policy=RetryPolicy(max_retries=1), **{setting: 5})
    assert client_env.requests == []


@pytest.mark.parametrize("delays", [{"base_delay_ms": float("inf"), "max_delay_ms": float("inf")},
                                    {"max_delay_ms": float("nan")}])
def test_infinite_delays_are_refused_before_sending(client_env, delays: dict) -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        invoke_parallel_managed([{"prompt": "x"}], **delays)
    with pytest.raises(ValueError, match="delay_ms"):
        invoke_with_retry("x", **delays)
    assert client_env.requests == []


def test_server_saying_do_not_retry_is_kept_in_the_final_error(client_env) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry("[[fail=529 should_retry=false]] no", max_retries=3, base_delay_ms=1)
    assert len(client_env.message_requests()) == 1
    error = info.value
    assert error.kind == "overloaded" and error.transient is False and error.should_retry is False
    assert error.attempts == 1 and error.status_code == 529
    results = invoke_parallel_managed([{"prompt": "[[fail=529 should_retry=false]] managed"}], base_delay_ms=1)
    assert results.errors[0].transient is False and results.errors[0].status_code == 529
    assert len(client_env.message_requests()) == 2


def test_plain_calls_retry_with_the_sdk_rules_and_waits_end_on_interrupt(client_env) -> None:
    assert cc.invoke_claude("[[fail=503 times=2]] sdk rules") .startswith("Echo")
    assert len(client_env.message_requests()) == 3  # the client's 2 retries, made by the library
    token = InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    started = time.monotonic()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("[[fail=429 retry_after=30]] long wait", interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert time.monotonic() - started < 3.0  # not the 30 s the server asked for


def test_retry_after_has_one_cap() -> None:
    policy = RetryPolicy(max_retries=1, base_delay_ms=1, max_delay_ms=1, jitter="none")

    class Slow(Exception):
        retry_after = 3600.0

    assert policy.delay_for(1, Slow()) == orchestration.RetryPolicy().max_retry_after_s == 60.0


def test_policy_parts_compose() -> None:
    import _retry

    stop = _retry.stop_after_attempt(2) | _retry.stop_after_attempt(5)
    assert not stop(_retry.RetryState(1)) and stop(_retry.RetryState(2))
    wait = _retry.wait_fixed(0.5) | _retry.wait_retry_after(10)

    class Err(Exception):
        retry_after = 2.0

    assert wait(_retry.RetryState(1, Err())) == 2.0 and wait(_retry.RetryState(1, ValueError())) == 0.5
    policy = RetryPolicy(max_retries=2, base_delay_ms=10, jitter="none", retry_mid_response=False)
    cut = ClaudeInvocationError("cut", kind="overloaded")
    cut.mid_response = True
    assert not policy.should_retry(cut, 1) and RetryPolicy().should_retry(cut, 1)


# --------------------------------------------------------------------------- validation
def test_lone_surrogate_is_refused_before_anything_is_sent(client_env) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\]\['prompt'\].*surrogate"):
        cc.invoke_parallel([{"prompt": "fine"}, {"prompt": "hi \ud800"}])
    with pytest.raises(ValueError, match="surrogate"):
        cc.invoke_claude("hi \ud800")
    with pytest.raises(ValueError, match="system.*surrogate"):
        cc.invoke_claude("hi", system="bad \udfff")
    assert client_env.requests == []


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: cc.invoke_parallel([{"prompt": "x"}], max_workers="4"), TypeError),
        (lambda: cc.invoke_parallel([{"prompt": "x"}], max_workers=0), ValueError),
        (lambda: cc.invoke_claude("x", stall_timeout="5"), TypeError),
        (lambda: cc.invoke_claude("x", stall_timeout=-1), ValueError),
        (lambda: cc.invoke_claude("x", model=3), TypeError),
        (lambda: cc.invoke_claude("x", temperature="hot"), TypeError),
        (lambda: cc.invoke_claude("x", temperature=2), ValueError),
        (lambda: RetryPolicy(max_retries="3"), TypeError),
        (lambda: orchestration.ConcurrencyLimiter(global_limit=1.5), TypeError),
        (lambda: orchestration.ConcurrencyLimiter(global_limit=0), ValueError),
    ],
)
def test_wrong_type_is_type_error_bad_value_is_value_error(client_env, call, error) -> None:
    with pytest.raises(error):
        call()
    assert client_env.requests == []


# --------------------------------------------------------------------------- error boundary
def _quoting_server(status: int = 400) -> tuple[socket.socket, str]:
    """A server (a proxy gone wrong) whose error body quotes the request's Authorization header."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            auth = next((line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                         if line.lower().startswith(b"authorization:")), b"")
            body = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": f"bad header {auth.decode()}"}}).encode()
            conn.sendall(b"HTTP/1.1 %d Bad\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%s" % (status, len(body), body))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"


def test_a_key_quoted_by_the_server_is_redacted_everywhere(client_env) -> None:
    import traceback

    server, url = _quoting_server()
    key = "sk-ant-sentinel-0123456789"
    try:
        with pytest.raises(ClaudeInvocationError) as info:
            cc.invoke_claude("hi", api_key=key, base_url=url)
    finally:
        server.close()
    error = info.value
    shown = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert "redacted" in str(error)
    for text in (str(error), repr(error), json.dumps(error.details), shown, repr(error.__cause__.body)):
        assert key not in text


# --------------------------------------------------------------------------- send path
def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections and never answers (a TLS handshake or a response that never comes)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_interrupt_takes_effect_at_once_whatever_the_phase(client_env, scheme: str, stream: bool) -> None:
    # https: the TLS handshake never completes; http: the response headers never come.
    server, accepted = _silent_server()
    url = f"{scheme}://127.0.0.1:{server.getsockname()[1]}"
    token = InterruptToken()
    fired: list[float] = []

    def fire() -> None:
        fired.append(time.monotonic())
        token.interrupt()

    threading.Timer(0.4, fire).start()
    try:
        with pytest.raises(ClaudeInvocationError):
            cc.invoke_claude("never answered", base_url=url, interrupt_token=token, streaming=stream)
        latency = time.monotonic() - fired[0]
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert accepted, "the request never reached the server"
    # Target 0.2 s; 1 s is the bound for a loaded machine (without the socket abort the call
    # waits for the SDK's 10-minute read timeout).
    assert latency < 1.0, latency


def test_plain_parallel_requests_are_not_streamed_but_still_abortable(client_env) -> None:
    token = InterruptToken()
    threading.Timer(0.4, token.interrupt).start()
    started = time.monotonic()
    results = cc.invoke_parallel_interruptible(
        [{"prompt": "fast"}] + [{"prompt": f"slow {i} [[ttft_ms=20000]]"} for i in range(3)],
        interrupt_token=token, max_workers=4)
    assert time.monotonic() - started < 5.0
    assert results[0] == "Echo: fast" and results[1:] == [None, None, None]
    assert not any(r.stream for r in client_env.message_requests())
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 3, timeout=5)


# --------------------------------------------------------------------------- interrupt hand-off
def test_interrupt_runs_no_callback_on_the_calling_thread() -> None:
    import _interrupt

    lock = threading.Lock()
    token = InterruptToken()
    ran = threading.Event()

    def needs_the_lock() -> None:
        with lock:
            ran.set()

    _interrupt.subscribe(token, needs_the_lock)
    done = threading.Event()

    def holder() -> None:  # like a signal handler interrupting a thread that holds the lock
        with lock:
            token.interrupt()
            done.set()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert done.wait(2.0), "interrupt() blocked on a lock its callback needs (deadlock)"
    assert ran.wait(2.0) and token.is_interrupted() and token.wait(0)


def test_interrupt_is_safe_in_a_signal_handler(tmp_path) -> None:
    script = tmp_path / "sig.py"
    script.write_text(
        "import os, signal, sys, threading, time\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "import _interrupt\n"
        "from claude_client import InterruptToken\n"
        "token = InterruptToken()\n"
        "lock = threading.Lock()\n"
        "_interrupt.subscribe(token, lambda: lock.acquire() and lock.release())\n"
        "signal.signal(signal.SIGUSR1, lambda *a: token.interrupt())\n"
        "with lock:\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    time.sleep(0.05)\n"
        "print('ok' if token.wait(5) else 'no')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------- empty replies
def test_an_empty_reply_is_not_stored_in_the_conversation(client_env) -> None:
    chat = ConversationThread()
    reply = chat.send("say nothing [[words=0]]")
    assert reply == "" and chat.turn_count == 0 and chat.messages == []
    assert chat.send("now speak") == "Echo: now speak"
    assert chat.turn_count == 1
    assert all(b.get("text") for m in client_env.message_requests()[-1].body["messages"]
               for b in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))


# --------------------------------------------------------------------------- layering
_PRIVATE = sorted(p.stem for p in SCRIPTS.glob("_*.py"))
_PUBLIC = ["claude_client", "task_state", "orchestration", "message_batches", "anthropic_emulator", "orchestrate"]


def _imports(path: Path) -> set[str]:
    names = {p.stem for p in SCRIPTS.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # function-level imports too
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & names


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {p.stem: _imports(p) for p in SCRIPTS.glob("*.py")}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [name, dep]))
            if dep not in state:
                visit(dep, trail + [name])
        state[name] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert "claude_client" not in graph["message_batches"] | graph["orchestration"]


# Imports each project module in a process of its own that has loaded no other project module: a
# child forked per module from a parent that pre-loaded only third-party packages (the slow part
# of every import), so the check stays quick on a loaded machine.
_IMPORT_EACH = r"""
import importlib, importlib.util, os, sys
sys.path.insert(0, sys.argv[1])
for package in ("anthropic", "aiohttp"):
    if importlib.util.find_spec(package) is not None:
        importlib.import_module(package)
failed = []
for name in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            sys.stderr.write(f"{name}: {type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(" ".join(failed))
"""


def test_every_module_imports_alone_and_stays_small() -> None:
    names = _PRIVATE + _PUBLIC
    if hasattr(os, "fork"):
        proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, str(SCRIPTS), *names], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.split() == [], proc.stderr
    else:
        code = "import sys, importlib; sys.path.insert(0, sys.argv[1]); importlib.import_module(sys.argv[2])"
        for name in names:
            proc = subprocess.run([sys.executable, "-c", code, str(SCRIPTS), name], capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 0, f"{name}: {proc.stderr}"
    for path in SCRIPTS.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 1100, path.name  # "about 1,000"


def test_public_classes_name_their_public_module() -> None:
    for name in ("ClaudeInvocationError", "ClaudeResponse", "ConversationThread", "InterruptToken", "Usage",
                 "ParallelResults", "StallDetector", "MissingAPIKeyError", "RunInterrupted"):
        assert getattr(cc, name).__module__ == "claude_client", name
    for name in ("RetryPolicy", "ConcurrencyLimiter", "RateLimitGate", "LimiterTimeoutError"):
        assert getattr(orchestration, name).__module__ == "orchestration", name
    assert "invoke_batch" in dir(cc) and cc.invoke_batch.__module__ == "message_batches"


def test_every_module_is_packaged() -> None:
    """A regular ``pip install`` ships every module of scripts/ (pyproject's py-modules)."""
    import re

    text = (SCRIPTS.parent / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"py-modules = \[(.*?)\]", text, re.S)
    assert block
    listed = set(re.findall(r'"(\w+)"', block.group(1)))
    assert {p.stem for p in SCRIPTS.glob("*.py")} == listed
