"""claude_client core: credentials, the pooled client, invoke_claude(_streaming), errors, usage."""
from __future__ import annotations

import copy
import gc
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback
import weakref
from pathlib import Path

import anthropic
import httpx2
import pytest

import claude_client as cc
import _errors
import _requests
import _transport
from claude_client import ClaudeInvocationError, ClaudeResponse, InterruptToken, Usage

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


# ------------------------------------------------------------------ calls and metadata


def test_invoke_claude_returns_str_with_metadata(client_env):
    reply = cc.invoke_claude("hello there")
    assert reply == "Echo: hello there"
    assert isinstance(reply, str) and isinstance(reply, ClaudeResponse)
    assert type(str(reply)) is str and str(reply) == "Echo: hello there"
    assert json.loads(json.dumps({"r": reply})) == {"r": "Echo: hello there"}
    assert reply.stop_reason == "end_turn"
    assert reply.model == cc.DEFAULT_MODEL
    assert reply.id.startswith("msg_")
    assert reply.request_id.startswith("req_")
    assert reply.usage.output_tokens == 3 + 8  # the text, and the default model's thinking at high effort
    assert reply.usage.thinking_tokens == 8
    assert reply.usage.input_tokens >= 1
    thinking, text = reply.content  # thinking on by default: its block first, empty (display omitted)
    assert text == {"type": "text", "text": "Echo: hello there"}
    assert thinking["type"] == "thinking" and thinking["thinking"] == "" and thinking["signature"]
    assert reply.cost_usd == pytest.approx(cc.estimate_cost(reply.usage, cc.DEFAULT_MODEL))
    assert reply.cost_usd > 0
    clone = pickle.loads(pickle.dumps(reply))
    assert clone == reply and clone.usage == reply.usage and clone.request_id == reply.request_id
    record = client_env.message_requests()[0]
    assert record.stream is False and record.body["model"] == cc.DEFAULT_MODEL


def test_streaming_callback_gets_chunks_in_order(client_env):
    chunks: list[str] = []
    reply = cc.invoke_claude_streaming("one two three [[words=12]]", callback=chunks.append)
    assert "".join(chunks) == reply  # only the text: thinking never reaches the callback
    assert len(chunks) == 12 and reply.usage.output_tokens == 12 + 8 and reply.usage.thinking_tokens == 8
    assert client_env.message_requests()[0].stream is True
    # invoke_claude(streaming=True) streams internally and returns the same text
    again = cc.invoke_claude("one two three [[words=12]]", streaming=True)
    assert again == reply and client_env.message_requests()[-1].stream is True


def test_streaming_callback_that_raises_aborts_and_chains(client_env):
    seen: list[str] = []

    def callback(chunk: str) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            raise KeyError("boom")

    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("x [[words=200 delay_ms=5]]", callback=callback)
    assert info.value.kind == "callback" and not info.value.transient
    assert isinstance(info.value.__cause__, KeyError)
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)


def test_max_tokens_truncation_is_visible_and_logged(client_env, caplog):
    caplog.set_level(logging.WARNING, logger="claude_client")
    reply = cc.invoke_claude("a b c [[words=20]]", max_tokens=5, effort="low")  # 2 thinking + 3 text tokens
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 5 and reply.usage.thinking_tokens == 2
    assert reply == "Echo: a b"
    assert any("max_tokens" in r.getMessage() for r in caplog.records if r.name.startswith("claude_client"))
    # thinking that uses all of max_tokens leaves no text: an error that says what to change
    with pytest.raises(ClaudeInvocationError, match="max_tokens") as info:
        cc.invoke_claude("a b c [[think=500]]", max_tokens=100)
    assert info.value.kind == "max_tokens" and not info.value.transient and "effort" in str(info.value)
    assert len(client_env.message_requests()) == 2  # not retried


def test_cache_flags_and_no_caller_mutation(client_env):
    system = [{"type": "text", "text": "rules"}, {"type": "text", "text": "more rules"}]
    system_before = copy.deepcopy(system)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    messages_before = copy.deepcopy(messages)
    cc.invoke_claude(messages=messages, system=system, cache_system=True, cache_prompt=True)
    assert system == system_before and messages == messages_before
    body = client_env.message_requests()[0].body
    assert "cache_control" not in body["system"][0]
    assert body["system"][1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    cc.invoke_claude("plain", system="string system", cache_system=True, cache_prompt=True)
    body = client_env.message_requests()[1].body
    assert body["system"] == [{"type": "text", "text": "string system", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "plain", "cache_control": {"type": "ephemeral"}}]


def test_kwargs_pass_through(client_env):
    cc.invoke_claude("hi", temperature=1.0, stop_sequences=["END"], metadata={"user_id": "u1"}, effort="medium")
    body = client_env.message_requests()[0].body
    assert "temperature" not in body  # the seed default 1.0 is accepted and not sent
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u1"}
    assert body["output_config"] == {"effort": "medium"}


@pytest.mark.parametrize("kwargs", [{"temperature": 0.3}, {"top_p": 0.9}, {"top_k": 5}, {"temperature": 0.0}])
def test_sampling_parameters_are_refused_before_sending(client_env, kwargs):
    """API version 2026-10-21 removed them: the library says so (and points to effort=) instead of a 400."""
    for call in (cc.invoke_claude, cc.invoke_claude_streaming, cc.invoke_claude_json):
        with pytest.raises(ValueError, match=rf"{next(iter(kwargs))}.*effort=") as info:
            call("hi", **kwargs) if call is not cc.invoke_claude_streaming else call("hi", print, **kwargs)
        assert "removed" in str(info.value)
    assert client_env.requests == []


def test_effort_and_thinking_reach_the_body_and_bad_ones_are_refused(client_env):
    reply = cc.invoke_claude("hi", effort="low", thinking="adaptive")
    body = client_env.message_requests()[0].body
    assert body["output_config"] == {"effort": "low"} and body["thinking"] == {"type": "adaptive"}
    assert reply.usage.thinking_tokens == 2
    streamed = cc.invoke_claude_streaming("hi", lambda chunk: None, effort="max", thinking={"type": "adaptive"})
    assert streamed.usage.thinking_tokens == 16
    assert client_env.message_requests()[1].body["output_config"] == {"effort": "max"}
    haiku = cc.invoke_claude("hi", model="claude-haiku-5-5", thinking="disabled", effort="high")
    assert [b["type"] for b in haiku.content] == ["text"] and haiku.usage.thinking_tokens == 0
    sent = len(client_env.message_requests())
    for kwargs, error in [
        ({"effort": "extreme"}, ValueError),
        ({"effort": 3}, TypeError),
        ({"thinking": "sometimes"}, ValueError),
        ({"thinking": "disabled"}, ValueError),  # Sonnet 5.5 refuses it (between_tools instead)
        ({"thinking": "between_tools", "effort": "max"}, ValueError),  # between_tools up to high only
        ({"model": "claude-haiku-4-5", "effort": "low"}, ValueError),  # no effort parameter
        ({"model": "claude-opus-4-6", "effort": "xhigh"}, ValueError),  # four levels, no xhigh
    ]:
        with pytest.raises(error):
            cc.invoke_claude("hi", **kwargs)
    assert len(client_env.message_requests()) == sent


def _five_breakpoints() -> dict:
    blocks = [{"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}} for i in range(4)]
    return {"system": blocks, "cache_prompt": True}


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"prompt": ""}, ValueError),
        ({"prompt": "   "}, ValueError),
        ({"prompt": None}, ValueError),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, ValueError),
        ({"prompt": 12}, TypeError),
        ({"prompt": "a", "max_tokens": 0}, ValueError),
        ({"prompt": "a", "max_tokens": 1.5}, TypeError),
        ({"prompt": "a", "max_tokens": True}, TypeError),
        ({"prompt": "a", "temperature": 1.5}, ValueError),
        ({"prompt": "a", "temperature": -0.1}, ValueError),
        ({"prompt": "a", "temperature": "hot"}, TypeError),
        ({"prompt": "a", "model": ""}, ValueError),
        ({"prompt": "a", "system": 5}, TypeError),
        ({"prompt": "a", "system": [{"text": "no type"}]}, ValueError),
        ({"prompt": "a", "cache_system": "yes"}, TypeError),
        ({"prompt": "a", "streaming": 1}, TypeError),
        ({"prompt": "a", "stall_timeout": 0}, ValueError),
        ({"prompt": "a", "interrupt_token": "stop"}, TypeError),
        ({"messages": []}, ValueError),
        ({"messages": [{"role": "assistant", "content": "x"}]}, ValueError),
        ({"messages": [{"role": "robot", "content": "x"}]}, ValueError),
        ({"messages": [{"role": "user", "content": None}]}, TypeError),  # a wrong type: TypeError
        ({"messages": [{"role": "user", "content": 42}]}, TypeError),
        ({"messages": [{"role": "user", "content": ""}]}, ValueError),
        ({"messages": [{"role": "user", "content": []}]}, ValueError),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, ValueError),
        ({"messages": [{"role": "user", "content": [{"type": 1, "text": "x"}]}]}, ValueError),
        ({"messages": [{"role": "user", "content": ["just a str"]}]}, TypeError),
        ({"prompt": "a", "stream": True}, TypeError),
        ({"prompt": "a", **_five_breakpoints()}, ValueError),
    ],
)
def test_validation_fails_fast_and_sends_nothing(client_env, kwargs, exc):
    with pytest.raises(exc):
        cc.invoke_claude(**kwargs)
    if "streaming" not in kwargs:
        with pytest.raises(exc):
            cc.invoke_claude_streaming(**kwargs)
    assert client_env.requests == []


def test_validation_messages_name_the_parameter(client_env):
    with pytest.raises(ValueError, match="max_tokens"):
        cc.invoke_claude("a", max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        cc.invoke_claude("a", temperature=2)
    with pytest.raises(ValueError, match="cache_control"):
        cc.invoke_claude("a", **_five_breakpoints())
    question = {"role": "user", "content": "q"}
    for content, match, error in [
        (42, r"messages\[1\]\['content'\] must be a non-empty string or a non-empty list", TypeError),
        (None, r"messages\[1\]\['content'\] must be a non-empty string", TypeError),
        ("", r"messages\[1\]\['content'\] must not be empty", ValueError),
        ([{"type": "text", "text": "ok"}, {"text": "x"}], r"messages\[1\]\['content'\]\[1\] must be a content block",
         ValueError),
    ]:
        with pytest.raises(error, match=match):
            cc.invoke_claude(messages=[question, {"role": "assistant", "content": content}])
    assert client_env.requests == []


def test_cache_prompt_marks_the_last_user_message_not_a_prefill(client_env):
    messages = [
        {"role": "user", "content": "Long document ... question?"},
        {"role": "assistant", "content": "Answer:"},
    ]
    before = copy.deepcopy(messages)
    with pytest.raises(ValueError, match="prefill"):  # the default model (every 5.x model) refuses a prefill
        cc.invoke_claude(messages=messages, cache_prompt=True, max_tokens=10)
    assert client_env.requests == []
    cc.invoke_claude(messages=messages, cache_prompt=True, max_tokens=10, model="claude-haiku-4-5")
    assert messages == before
    sent = client_env.message_requests()[0].body["messages"]
    assert sent[0]["content"] == [
        {"type": "text", "text": "Long document ... question?", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent[1] == {"role": "assistant", "content": "Answer:"}
    # a longer history: only the last user message is marked
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
               {"role": "user", "content": [{"type": "text", "text": "c"}]}, {"role": "assistant", "content": "d"}]
    cc.invoke_claude_streaming(messages=history, cache_prompt=True, max_tokens=10, model="claude-haiku-4-5")
    sent = client_env.message_requests()[1].body["messages"]
    assert [_requests.count_breakpoints(m) for m in sent] == [0, 0, 1, 0]
    assert sent[2]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_large_max_tokens_falls_back_to_streaming(client_env):
    # The SDK refuses a non-streaming request this long (ValueError before sending): the library streams it.
    reply = cc.invoke_claude("hi", max_tokens=64000)
    assert reply == "Echo: hi" and reply.stop_reason == "end_turn" and reply.usage.output_tokens == 2 + 8
    record = client_env.message_requests()[-1]
    assert record.stream is True and record.body["max_tokens"] == 64000
    client_env.script("json please", '{"ok": true}')
    assert cc.invoke_claude_json("json please", max_tokens=64000) == {"ok": True}
    assert client_env.message_requests()[-1].stream is True
    assert cc.invoke_claude("small", max_tokens=4096) == "Echo: small"
    assert client_env.message_requests()[-1].stream is False  # the usual non-streaming request
    assert len(client_env.message_requests()) == 3  # no failed attempt was sent


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, "bad_request"),
        (401, "auth"),
        (403, "auth"),
        (404, "bad_request"),
        (408, "timeout"),
        (409, "server"),
        (413, "bad_request"),
        (429, "rate_limit"),
        (500, "server"),
        (503, "server"),
        (529, "overloaded"),
    ],
)
def test_error_kinds(client_env, status, kind):
    cc.configure(max_retries=0)
    for fn in (cc.invoke_claude, cc.invoke_claude_streaming):
        with pytest.raises(ClaudeInvocationError) as info:
            fn(f"x [[fail={status}]] [[id={fn.__name__}]]")
        err = info.value
        assert err.kind == kind and err.status_code == status
        assert err.transient == (kind in cc.TRANSIENT_KINDS)
        assert err.request_id and err.request_id.startswith("req_")
        assert isinstance(err.__cause__, anthropic.APIStatusError)
    assert len(client_env.message_requests()) == 2


def test_retry_after_is_the_larger_header(client_env):
    cc.configure(max_retries=0)
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("x [[fail=429 retry_after=3 retry_after_ms=5500]]")
    assert info.value.retry_after == pytest.approx(5.5)
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("y [[fail=429 retry_after=4 retry_after_ms=100]]")
    assert info.value.retry_after == pytest.approx(4.0)


def test_mid_stream_overloaded_error(client_env):
    chunks: list[str] = []
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("x [[words=10 error_after=3]]", callback=chunks.append)
    assert info.value.kind == "overloaded" and info.value.transient
    assert info.value.status_code == 200
    assert len(chunks) == 3


def test_sdk_retries_still_apply_by_default(client_env):
    reply = cc.invoke_claude("x [[fail=529 times=1]]")
    assert reply == "Echo: x"
    assert [r.status for r in client_env.message_requests()] == [529, 200]


def _status_error(status: int, message: str, etype: str = "invalid_request_error") -> anthropic.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://127.0.0.1/v1/messages"))
    body = {"type": "error", "error": {"type": etype, "message": message}}
    cls = {400: anthropic.BadRequestError, 422: anthropic.UnprocessableEntityError}.get(status, anthropic.APIStatusError)
    return cls(message, response=response, body=body)


def test_error_from_classification_table():
    assert _errors.translate(_status_error(400, "prompt is too long: 210000 tokens > 200000 maximum")).kind == "context_overflow"
    assert _errors.translate(_status_error(400, "input length and `max_tokens` exceed context limit")).kind == "context_overflow"
    assert _errors.translate(_status_error(400, "messages: field required")).kind == "bad_request"
    assert _errors.translate(_status_error(422, "unprocessable")).kind == "bad_request"
    overloaded_mid_stream = _status_error(200, "Overloaded", "overloaded_error")
    assert _errors.translate(overloaded_mid_stream).kind == "overloaded"
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    assert _errors.translate(anthropic.APITimeoutError(request=request)).kind == "timeout"
    assert _errors.translate(anthropic.APIConnectionError(request=request)).kind == "connection"
    assert _errors.translate(httpx2.RemoteProtocolError("peer closed")).kind == "connection"
    plain = _errors.translate(ValueError("x"))
    assert plain.kind is None and not plain.transient
    same = ClaudeInvocationError("y", kind="stalled")
    assert _errors.translate(same) is same and same.transient
    assert cc.TRANSIENT_KINDS == frozenset({"rate_limit", "overloaded", "server", "connection", "timeout", "stalled"})


def test_error_pickles_with_its_attributes():
    err = ClaudeInvocationError("m", 429, {"a": 1}, kind="rate_limit", request_id="req_1", retry_after=2.0)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.kind, clone.status_code, clone.details, clone.request_id, clone.retry_after) == (
        "rate_limit", 429, {"a": 1}, "req_1", 2.0)
    assert clone.transient and str(clone) == "m"


# ------------------------------------------------------------------ credentials and client


def test_missing_key_lists_every_place(client_env, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    cc.reset_client()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("hi")
    msg = str(info.value)
    assert info.value.kind == "auth"
    for place in ("ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY.txt", "API_CREDENTIALS.json", "anthropic_api_key",
                  cc.PROJECT_DIR_ENV):
        assert place in msg
    assert client_env.requests == []


def test_key_sources_and_precedence(client_env, monkeypatch, tmp_path):
    project = Path(os.environ[cc.PROJECT_DIR_ENV])
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (project / "API_CREDENTIALS.json").write_text(json.dumps({"anthropic_api_key": "sk-from-json"}))
    cc.reset_client()
    assert cc.get_client().api_key == "sk-from-json"
    (project / "ANTHROPIC_API_KEY.txt").write_text("  sk-from-txt\n")
    assert cc.get_client().api_key == "sk-from-json"  # resolved once and cached
    cc.reset_client()
    assert cc.get_client().api_key == "sk-from-txt"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    cc.reset_client()
    assert cc.get_client().api_key == "sk-from-env"
    assert cc.get_client(api_key="sk-explicit").api_key == "sk-explicit"
    assert cc.invoke_claude("hi", api_key="sk-explicit2") == "Echo: hi"


def test_empty_key_file_and_bad_json_name_the_file(client_env, monkeypatch):
    project = Path(os.environ[cc.PROJECT_DIR_ENV])
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (project / "ANTHROPIC_API_KEY.txt").write_text("\n")
    cc.reset_client()
    with pytest.raises(ClaudeInvocationError, match="ANTHROPIC_API_KEY.txt.*empty"):
        cc.invoke_claude("hi")
    (project / "ANTHROPIC_API_KEY.txt").unlink()
    (project / "API_CREDENTIALS.json").write_text('{"anthropic_api_key": "sk-ant-half')
    cc.reset_client()
    with pytest.raises(ClaudeInvocationError, match="API_CREDENTIALS.json") as info:
        cc.invoke_claude("hi")
    assert "sk-ant-half" not in str(info.value)
    (project / "API_CREDENTIALS.json").write_text('{"other": 1}')
    cc.reset_client()
    with pytest.raises(ClaudeInvocationError, match="anthropic_api_key"):
        cc.invoke_claude("hi")
    assert client_env.requests == []


def test_one_shared_client_and_pooled_connections(client_env):
    first = cc.get_client()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(cc.get_client())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c is first for c in seen)
    assert _transport.no_retry_client(first) is _transport.no_retry_client(first)
    assert _transport.no_retry_client(first)._client is first._client  # same connection pool
    for i in range(200):
        assert cc.invoke_claude(f"n{i}") == f"Echo: n{i}"
    assert client_env.connection_count <= 3
    cc.reset_client()
    assert cc.get_client() is not first


def test_configure_injected_client_and_base_url(client_env, monkeypatch):
    mine = anthropic.Anthropic(api_key="sk-mine", base_url=client_env.base_url)
    cc.configure(client=mine)
    assert cc.get_client() is mine
    assert cc.invoke_claude("hi") == "Echo: hi"
    cc.reset_client()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    assert cc.invoke_claude("hi", base_url=client_env.base_url) == "Echo: hi"
    cc.configure(base_url=client_env.base_url)
    assert cc.invoke_claude("again") == "Echo: again"
    with pytest.raises(TypeError):
        cc.configure(client="not a client")
    with pytest.raises(ValueError):
        cc.configure(timeout=-1)


def test_configure_and_reset_do_not_break_calls_in_flight(client_env):
    # Calls running on other threads keep the client they started with (it is not closed).
    timers = [threading.Timer(0.2, lambda: cc.configure(timeout=120)), threading.Timer(0.5, cc.reset_client)]
    for timer in timers:
        timer.start()
    prompts = [{"prompt": f"[[delay_ms=40 words=10]] p{i}"} for i in range(8)]
    results = cc.invoke_parallel(prompts, max_workers=2)
    for timer in timers:
        timer.join()
    assert [r.split()[:2] for r in results] == [["Echo:", f"p{i}"] for i in range(8)]
    assert client_env.stats()["status_counts"] == {200: 8}
    # a dropped client is not kept alive by the library (its pool closes when collected)
    old = cc.get_client()
    ref = weakref.ref(old._client)
    cc.reset_client()
    del old
    gc.collect()
    assert ref() is None
    assert cc.invoke_claude("after") == "Echo: after"


def test_interrupted_token_sends_nothing(client_env):
    token = InterruptToken()
    token.interrupt()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("hi", interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert client_env.requests == []


def test_interrupt_aborts_streaming_call(client_env):
    token = InterruptToken()
    chunks: list[str] = []

    def callback(chunk: str) -> None:
        chunks.append(chunk)
        if len(chunks) == 3:
            threading.Thread(target=token.interrupt).start()

    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("x [[words=100000 delay_ms=10]]", callback=callback, interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)


def test_interrupt_before_response_headers(client_env):
    token = InterruptToken()
    timer = threading.Timer(0.3, token.interrupt)
    timer.start()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("slow [[ttft_ms=30000]]", interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)
    assert len(client_env.message_requests()) == 1  # the SDK did not resend after the abort


def test_usage_and_cost():
    u = Usage(10, 20, 30, 40) + Usage(1, 2, 3, 4)
    assert (u.input_tokens, u.output_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens) == (11, 22, 33, 44)
    assert u.total_input_tokens == 11 + 33 + 44
    assert sum([Usage(1), Usage(2)], Usage()) == Usage(3)
    assert cc.estimate_cost(Usage(1_000_000, 1_000_000), "claude-sonnet-4-6") == pytest.approx(18.0)
    assert cc.estimate_cost(Usage(0, 0, 1_000_000, 1_000_000), "claude-haiku-4-5") == pytest.approx(1.25 + 0.1)
    one_hour = Usage(0, 0, 1_000_000, 0, cache_creation_1h_input_tokens=1_000_000)
    assert cc.estimate_cost(one_hour, "claude-opus-4-6") == pytest.approx(10.0)
    assert cc.estimate_cost(Usage(1_000_000), "claude-opus-4-6-20260101") == pytest.approx(5.0)  # longest prefix
    assert cc.estimate_cost(Usage(1_000_000, service_tier="batch"), "claude-sonnet-4-6") == pytest.approx(1.5)
    assert cc.estimate_cost(Usage(1_000_000), "claude-sonnet-4-6", batch=True) == pytest.approx(1.5)


def test_unknown_model_cost_is_none_and_warned_once(client_env, caplog):
    caplog.set_level(logging.WARNING, logger="claude_client")
    with pytest.raises(ClaudeInvocationError) as info:  # an id the API does not know: its 404, not retried
        cc.invoke_claude("hi", model="mystery-model-x0")
    assert info.value.status_code == 404 and "mystery-model-x0" in str(info.value)
    client_env.configure(extra_models={"mystery-model-x1": "claude-sonnet-5-5"})  # the server knows it
    a = cc.invoke_claude("hi", model="mystery-model-x1")
    first = [r for r in caplog.records if "mystery-model-x1" in r.getMessage()]
    b = cc.invoke_claude("hi again", model="mystery-model-x1")
    assert a.cost_usd is None and b.cost_usd is None and a == "Echo: hi"
    warnings = [r for r in caplog.records if "mystery-model-x1" in r.getMessage()]
    assert first and warnings == first  # warned on first use (no price, not catalogued), never again
    assert len({r.getMessage() for r in warnings}) == len(warnings)


# ------------------------------------------------------------------ the key never leaks

SENTINEL = "sk-ant-SENTINEL-7c1f0e9d2b"


def _texts_of(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))] + [
        repr(getattr(exc, name, None)) for name in ("details", "errors", "results")
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sentinel_key_never_leaks(client_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    project = Path(os.environ[cc.PROJECT_DIR_ENV])
    failures: list[BaseException] = []

    def expect_failure(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - collected for inspection
            failures.append(exc)
        else:
            raise AssertionError(f"{fn.__name__}{args} did not fail")

    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
    cc.reset_client()
    cc.configure(max_retries=0)
    client_env.configure(api_key="sk-ant-the-right-one")
    expect_failure(cc.invoke_claude, "hi")  # 401
    expect_failure(cc.invoke_claude_streaming, "hi")
    expect_failure(cc.invoke_parallel, [{"prompt": "a"}, {"prompt": "b"}])
    client_env.configure(api_key=None)
    for status in (400, 403, 429, 500, 529):
        expect_failure(cc.invoke_claude, f"x [[fail={status}]]")
    expect_failure(cc.invoke_claude_streaming, "x [[error_after=1]]")
    expect_failure(cc.invoke_claude_streaming, "x [[stall_after=1]]", stall_timeout=0.2)
    token = InterruptToken()
    token.interrupt()
    expect_failure(cc.invoke_claude_streaming, "x", interrupt_token=token)
    expect_failure(cc.invoke_claude_streaming, "x", callback=lambda c: 1 / 0)
    expect_failure(cc.invoke_claude, "a", max_tokens=0)
    expect_failure(cc.invoke_claude, "x", base_url=f"http://127.0.0.1:{_free_port()}")  # connection refused
    expect_failure(cc.invoke_claude, "x", api_key=SENTINEL, base_url=f"http://127.0.0.1:{_free_port()}")
    # key files: malformed JSON and an empty file
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (project / "API_CREDENTIALS.json").write_text('{"anthropic_api_key": "' + SENTINEL + '",,}')
    cc.reset_client()
    expect_failure(cc.invoke_claude, "hi")
    (project / "API_CREDENTIALS.json").write_text(json.dumps({"anthropic_api_key": 5, "x": SENTINEL}))
    cc.reset_client()
    expect_failure(cc.invoke_claude, "hi")
    (project / "ANTHROPIC_API_KEY.txt").write_text("")
    cc.reset_client()
    expect_failure(cc.invoke_claude, "hi")
    # the seed-compatible entry points and the seed's claude.env file
    (project / "ANTHROPIC_API_KEY.txt").unlink()
    (project / "API_CREDENTIALS.json").unlink()
    (project / "claude.env").write_text(f"SECRET={SENTINEL}\nAPI_KEY\n{SENTINEL}\n")  # no usable API_KEY= line
    cc.reset_client()
    expect_failure(cc.get_anthropic_api_key)
    expect_failure(cc.invoke_claude_json, "hi")
    (project / "claude.env").write_bytes(b"API_KEY=" + SENTINEL.encode() + b"\xff\xfe")  # not UTF-8
    cc.reset_client()
    expect_failure(cc.get_anthropic_api_key)
    (project / "claude.env").unlink()
    cc.reset_client()
    expect_failure(cc.get_anthropic_api_key)  # nothing anywhere
    # keys that cannot be sent as an HTTP header (httpx would quote the header in its error):
    # refused before any request, naming the source and the problem, never the key
    sent_before = len(client_env.requests)

    def expect_unsendable(source, problem, fn, *args, **kwargs):
        cc.reset_client()
        with pytest.raises(cc.MissingAPIKeyError) as info:
            fn(*args, **kwargs)
        assert info.value.kind == "auth" and source in str(info.value) and problem in str(info.value)
        failures.append(info.value)

    (project / "ANTHROPIC_API_KEY.txt").write_text(SENTINEL + "\nrotated 2025-01-01\n")
    expect_unsendable(f"{project / 'ANTHROPIC_API_KEY.txt'}", "a line break", cc.invoke_claude, "hi")
    (project / "ANTHROPIC_API_KEY.txt").unlink()
    (project / "API_CREDENTIALS.json").write_text(json.dumps({"anthropic_api_key": SENTINEL + "\u00e9"}))
    expect_unsendable("API_CREDENTIALS.json (field 'anthropic_api_key')", "a non-ASCII character",
                      cc.invoke_claude_streaming, "hi")
    (project / "API_CREDENTIALS.json").unlink()
    (project / "claude.env").write_text(f"# creds\nAPI_KEY={SENTINEL}\x07\n")
    expect_unsendable("claude.env (line 2)", "a control character", cc.invoke_parallel, [{"prompt": "a"}])
    (project / "claude.env").unlink()
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL + "\r\nX-Injected: 1")
    expect_unsendable("the ANTHROPIC_API_KEY environment variable", "a line break", cc.invoke_claude_json, "hi")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    expect_unsendable("the api_key= argument", "whitespace",
                      cc.ConversationThread(api_key=f"{SENTINEL} extra").send, "hi")
    expect_unsendable("configure(api_key=...)", "whitespace", cc.configure, api_key=f"{SENTINEL}\tx")
    assert len(client_env.requests) == sent_before  # nothing was sent
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
    cc.reset_client()
    client_env.configure(api_key="sk-ant-the-right-one")
    expect_failure(cc.invoke_claude_json, "hi")  # 401 through the JSON helper
    client_env.configure(api_key=None)
    client_env.script("json please", "this is not JSON")
    expect_failure(cc.invoke_claude_json, "json please")  # a reply that is not JSON (decode error)
    assert len(failures) == 30
    kinds = {getattr(f, "kind", None) for f in failures}
    assert {"auth", "bad_request", "rate_limit", "server", "overloaded", "stalled", "interrupted", "callback",
            "connection"} <= kinds
    for exc in failures:
        for text in _texts_of(exc):
            assert SENTINEL not in text, f"key leaked via {type(exc).__name__}"
        cause = exc.__cause__
        while cause is not None:
            assert SENTINEL not in str(cause) and SENTINEL not in repr(cause)
            cause = cause.__cause__
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()
        if record.exc_info:
            assert SENTINEL not in "".join(traceback.format_exception(*record.exc_info))
    for obj in (cc.get_client(api_key=SENTINEL), InterruptToken(), cc.ConversationThread(api_key=SENTINEL)):
        assert SENTINEL not in repr(obj)


def test_error_messages_redact_a_key_the_transport_quotes(client_env):
    # Defence in depth: an injected client is not validated by the library; httpx refuses its
    # header and quotes it, and the library's error message must not repeat the key.
    mine = anthropic.Anthropic(api_key=SENTINEL + "\nnote", base_url=client_env.base_url, max_retries=0)
    cc.configure(client=mine)
    try:
        for call in (lambda: cc.invoke_claude("hi"), lambda: cc.invoke_claude_streaming("hi")):
            with pytest.raises(ClaudeInvocationError) as info:
                call()
            assert info.value.kind == "connection"
            assert "[redacted API key]" in str(info.value)
            assert SENTINEL not in str(info.value) and SENTINEL not in repr(info.value)
            assert SENTINEL not in "".join(traceback.format_exception_only(info.value))
    finally:
        mine.close()
    assert client_env.requests == []


def test_import_with_sys_path_only(tmp_path):
    code = (
        "import sys; sys.path.append(sys.argv[1]); import claude_client as c; "
        "from claude_client import invoke_parallel, ConversationThread, StallDetector; "
        "print(c.__file__); print(c.DEFAULT_MODEL)"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(SCRIPTS)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    path, model = out.stdout.split()
    assert Path(path).resolve() == (SCRIPTS / "claude_client.py").resolve()
    assert model == cc.DEFAULT_MODEL
