"""The emulator's core: replies, streaming shapes, faults, directives, auth, validation, request log.

Every test talks to the emulator with the real ``anthropic`` SDK (or raw HTTP where the SDK would
refuse to send the request) over 127.0.0.1.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import anthropic
import httpx2
import pytest

from anthropic_emulator import Emulator, count_text_tokens

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"


def _client(emulator: Emulator, max_retries: int = 0, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=max_retries, **kw)


def _msg(text: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": text}]}
    params.update(extra)
    return params


def _post(emulator: Emulator, body: Any, headers: dict[str, str] | None = None,
          path: str = "/v1/messages") -> httpx2.Response:
    h = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    if headers is not None:
        h = headers
    return httpx2.post(emulator.base_url + path, json=body, headers=h, timeout=10)


# --------------------------------------------------------------------------- replies and shapes

def test_reply_is_echo_of_prompt_with_directives_stripped(emulator: Emulator) -> None:
    client = _client(emulator)
    msg = client.messages.create(**_msg("  hello \n  world [[id=1]] "))
    assert msg.content[0].text == "Echo: hello world"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 3
    assert msg.usage.input_tokens == count_text_tokens("  hello \n  world [[id=1]] ")
    assert msg.usage.service_tier == "standard"
    assert msg.id.startswith("msg_emu_")


def test_words_directive_cycles_and_max_tokens_cuts(emulator: Emulator) -> None:
    client = _client(emulator)
    msg = client.messages.create(**_msg("a b [[words=7]]"))
    assert msg.content[0].text == "Echo: a b Echo: a b Echo:"
    cut = client.messages.create(**_msg("a b [[words=7]]", max_tokens=2))
    assert cut.content[0].text == "Echo: a"
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 2


def test_stop_sequences_cut_the_reply(emulator: Emulator) -> None:
    client = _client(emulator)
    params = _msg("alpha beta STOP gamma", stop_sequences=["nothing", "STOP"])
    msg = client.messages.create(**params)
    assert msg.content[0].text == "Echo: alpha beta"
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence, final.usage) == ("stop_sequence", "STOP", msg.usage)


def test_empty_prompt_and_reply_words_setting(emulator: Emulator) -> None:
    client = _client(emulator)
    assert client.messages.create(**_msg("[[words=2]]")).content[0].text == "Echo: Echo:"
    emulator.configure(reply_words=4)
    assert client.messages.create(**_msg("x")).content[0].text == "Echo: x Echo: x"


def test_scripted_reply_and_text_of_block_content(emulator: Emulator) -> None:
    emulator.script("what is  2+2", "It is 4.")
    client = _client(emulator)
    content = [{"type": "text", "text": "what is"}, {"type": "text", "text": "2+2 [[id=7]]"}]
    msg = client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": content}])
    assert msg.content[0].text == "It is 4."
    # the last *user* message decides, assistant turns in between do not
    msg2 = client.messages.create(model=MODEL, max_tokens=50, messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"}])
    assert msg2.content[0].text == "Echo: second"
    assert msg2.usage.input_tokens == sum(count_text_tokens(t) for t in ("first", "ok", "second"))


@pytest.mark.parametrize("params", [
    _msg("one two three [[words=9]]"),
    _msg("cut me short [[words=30]]", max_tokens=5),
    _msg("with system", system=[{"type": "text", "text": "S" * 6000, "cache_control": {"type": "ephemeral"}}]),
    _msg("tools", tools=[{"name": "t", "description": "d", "input_schema": {"type": "object"}}]),
])
def test_create_equals_stream_final_message(emulator: Emulator, params: dict[str, Any]) -> None:
    client = _client(emulator)
    created = client.messages.create(**params)
    emulator.reset()  # same cache state for the streamed twin
    with client.messages.stream(**params) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == created.content[0].text
    assert final.model_dump(exclude={"id"}, exclude_none=True)["content"] == \
        created.model_dump(exclude={"id"}, exclude_none=True)["content"]
    assert final.usage == created.usage
    assert final.stop_reason == created.stop_reason
    assert final.model == created.model


def test_raw_event_sequence_and_headers(emulator: Emulator) -> None:
    with httpx2.stream("POST", emulator.base_url + "/v1/messages", json=_msg("a b", stream=True),
                       headers={"x-api-key": KEY}, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["request-id"].startswith("req_emu_")
        assert "anthropic-ratelimit-requests-remaining" in resp.headers
        raw = resp.read().decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    assert events == ["message_start", "content_block_start", "ping", "content_block_delta",
                      "content_block_delta", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]


def test_ping_every(emulator: Emulator) -> None:
    emulator.configure(ping_every=2)
    with httpx2.stream("POST", emulator.base_url + "/v1/messages", json=_msg("x [[words=4]]", stream=True),
                       headers={"x-api-key": KEY}, timeout=10) as resp:
        raw = resp.read().decode()
    assert raw.count("event: ping") == 1 + 2


# --------------------------------------------------------------------------- faults

@pytest.mark.parametrize(("status", "exc"), [
    (400, anthropic.BadRequestError),
    (401, anthropic.AuthenticationError),
    (403, anthropic.PermissionDeniedError),
    (404, anthropic.NotFoundError),
    (413, anthropic.APIStatusError),
    (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError),
    (529, anthropic.OverloadedError),
])
def test_fail_directive_maps_to_sdk_exception(emulator: Emulator, status: int, exc: type[Exception]) -> None:
    client = _client(emulator)
    with pytest.raises(exc) as info:
        client.messages.create(**_msg(f"boom [[fail={status}]]"))
    err = info.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == status
    assert err.request_id and err.request_id.startswith("req_emu_")
    assert isinstance(err.body, dict) and err.body["type"] == "error"
    rec = emulator.message_requests()[-1]
    assert rec.status == status and rec.error_type == err.body["error"]["type"]


def test_fail_applies_to_streaming_before_any_event(emulator: Emulator) -> None:
    client = _client(emulator)
    with pytest.raises(anthropic.OverloadedError):
        with client.messages.stream(**_msg("x [[fail=529]]")) as stream:
            stream.get_final_message()


def test_should_retry_directive_sets_the_header_the_sdk_obeys(emulator: Emulator) -> None:
    resp = _post(emulator, _msg("x [[fail=503 should_retry=false]]"))
    assert resp.status_code == 503 and resp.headers["x-should-retry"] == "false"
    assert _post(emulator, _msg("x [[should_retry=maybe]]")).status_code == 400
    client = _client(emulator, max_retries=2)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**_msg("once [[fail=503 should_retry=false]]"))
    assert [r.prompt for r in emulator.message_requests()].count("once") == 1  # the SDK did not retry


def test_times_limits_faults_to_first_attempts_and_sdk_retries(emulator: Emulator) -> None:
    client = _client(emulator, max_retries=2)
    msg = client.messages.create(**_msg("retry me [[fail=529 times=2 retry_after_ms=10]]"))
    assert msg.content[0].text == "Echo: retry me"
    recs = emulator.message_requests()
    assert [r.attempt for r in recs] == [1, 2, 3]
    assert [r.status for r in recs] == [529, 529, 200]
    assert [r.retry_count_header for r in recs] == ["0", "1", "2"]


def test_attempts_ignore_stream_flag(emulator: Emulator) -> None:
    client = _client(emulator)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**_msg("same [[fail=500 times=1]]"))
    with client.messages.stream(**_msg("same [[fail=500 times=1]]")) as stream:
        assert stream.get_final_message().content[0].text == "Echo: same"
    assert [r.attempt for r in emulator.message_requests()] == [1, 2]


def test_429_headers_and_sdk_honours_retry_after(emulator: Emulator) -> None:
    client = _client(emulator)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**_msg("x [[fail=429]]"))
    assert info.value.response.headers["retry-after"] == "1"
    assert "retry-after-ms" not in info.value.response.headers
    with pytest.raises(anthropic.RateLimitError) as info2:
        client.messages.create(**_msg("y [[fail=429 retry_after=3 retry_after_ms=2500]]"))
    assert info2.value.response.headers["retry-after"] == "3"
    assert info2.value.response.headers["retry-after-ms"] == "2500"

    emulator.reset()
    retrying = _client(emulator, max_retries=1)
    retrying.messages.create(**_msg("z [[fail=429 times=1]]"))
    first, second = emulator.message_requests()
    assert first.status == 429 and second.status == 200
    assert first.ended_at is not None
    assert second.started_at - first.ended_at >= 0.9  # the SDK waited retry-after: 1


def test_mid_stream_error_has_overloaded_type(emulator: Emulator) -> None:
    client = _client(emulator, max_retries=2)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(**_msg("a b c d [[error_after=2]]")) as stream:
            for text in stream.text_stream:
                got.append(text)
    assert info.value.type == "overloaded_error"
    assert info.value.status_code == 200
    assert got == ["Echo: ", "a "]
    recs = emulator.message_requests()
    assert len(recs) == 1  # the SDK does not retry after the 200
    assert recs[0].error_type == "overloaded_error"


def test_error_after_non_streaming_is_529(emulator: Emulator) -> None:
    with pytest.raises(anthropic.OverloadedError):
        _client(emulator).messages.create(**_msg("x [[error_after=1]]"))


def test_global_directives_setting(emulator: Emulator) -> None:
    emulator.configure(directives="fail=500 times=1")
    client = _client(emulator)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**_msg("g"))
    assert client.messages.create(**_msg("g")).content[0].text == "Echo: g"
    with pytest.raises(ValueError, match="directives"):
        emulator.configure(directives="not a directive")


# --------------------------------------------------------------------------- timing, stalls, aborts

def test_ttft_and_delay_directives(emulator: Emulator) -> None:
    client = _client(emulator)
    t0 = time.monotonic()
    client.messages.create(**_msg("slow [[ttft_ms=300]]"))
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    with client.messages.stream(**_msg("a b c [[delay_ms=100]]")) as stream:
        stream.get_final_message()
    assert time.monotonic() - t0 >= 0.4  # 4 words


def test_stall_then_client_abort_is_recorded(emulator: Emulator) -> None:
    client = _client(emulator)
    got: list[str] = []
    with client.messages.stream(**_msg("a b c d e [[stall_after=3]]")) as stream:
        for text in stream.text_stream:
            got.append(text)
            if len(got) == 3:
                break
    assert got == ["Echo: ", "a ", "b "]
    assert emulator.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)
    assert emulator.wait_idle(timeout=5)
    rec = emulator.message_requests()[0]
    assert rec.aborted and rec.emitted_text == "Echo: a b "
    assert rec.usage is not None and rec.usage["output_tokens"] == 3
    assert rec.ended_at is not None


def test_abort_mid_stream_stops_generation(emulator: Emulator) -> None:
    client = _client(emulator)
    with client.messages.stream(**_msg("x [[words=200 delay_ms=20]]")) as stream:
        for i, _text in enumerate(stream.text_stream):
            if i == 2:
                break
    assert emulator.wait_idle(timeout=5)
    rec = emulator.message_requests()[0]
    assert rec.aborted
    assert 3 <= len(rec.emitted_text.split()) < 200


def test_stall_pings_keep_coming(emulator: Emulator) -> None:
    with httpx2.stream("POST", emulator.base_url + "/v1/messages",
                       json=_msg("a b c [[stall_after=1 stall_pings=20]]", stream=True),
                       headers={"x-api-key": KEY}, timeout=10) as resp:
        pings = 0
        for line in resp.iter_lines():
            if line == "event: ping":
                pings += 1
            if pings >= 5:
                break
    assert pings >= 5
    assert emulator.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)


def test_non_streaming_stall_times_out_client_and_is_aborted(emulator: Emulator) -> None:
    client = _client(emulator, timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(**_msg("never [[stall_after=0]]"))
    assert emulator.wait_idle(timeout=5)
    assert emulator.message_requests()[0].aborted


def test_abort_while_waiting_for_first_token(emulator: Emulator) -> None:
    client = _client(emulator, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        with client.messages.stream(**_msg("late [[ttft_ms=3000]]")) as stream:
            stream.get_final_message()
    assert emulator.wait_idle(timeout=2)  # much sooner than the 3 s time to first token
    rec = emulator.message_requests()[0]
    assert rec.aborted and rec.emitted_text == ""


# --------------------------------------------------------------------------- auth and validation

def test_auth_sources(emulator: Emulator) -> None:
    assert _post(emulator, _msg("k"), headers={}).status_code == 401
    assert _post(emulator, _msg("k"), headers={"x-api-key": "anything"}).status_code == 200
    assert _post(emulator, _msg("k"), headers={"authorization": "Bearer anything"}).status_code == 200
    emulator.configure(api_key="sk-ant-right")
    with pytest.raises(anthropic.AuthenticationError) as info:
        _client(emulator).messages.create(**_msg("k"))
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    ok = anthropic.Anthropic(api_key="sk-ant-right", base_url=emulator.base_url, max_retries=0)
    assert ok.messages.create(**_msg("k")).content[0].text == "Echo: k"


def _five_breakpoints() -> dict[str, Any]:
    blocks = [{"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    return {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": blocks}]}


@pytest.mark.parametrize(("body", "message"), [
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model: Field required"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    ({"model": MODEL, "max_tokens": 10}, "messages: Field required"),
    ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages: at least one message is required"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "assistant", "content": "x"}]},
     'messages.0.role: first message must use the "user" role'),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
     "max_tokens: Input should be greater than or equal to 1"),
    ({"model": MODEL, "max_tokens": 10, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},
     "temperature: Extra inputs are not permitted"),
    ({"model": MODEL, "max_tokens": 10, "top_p": 0.9, "messages": [{"role": "user", "content": "x"}]},
     "top_p: Extra inputs are not permitted"),
    (_five_breakpoints(), "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    ([1, 2], "body"),
])
def test_validation_errors_name_the_field(emulator: Emulator, body: Any, message: str) -> None:
    resp = _post(emulator, body)
    assert resp.status_code == 400
    data = resp.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert message in data["error"]["message"]
    assert data["request_id"] == resp.headers["request-id"]


def test_validation_through_sdk_is_bad_request(emulator: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        _client(emulator).messages.create(**_msg("x"), extra_body={"temperature": 2})
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
        _client(emulator).messages.create(**_five_breakpoints())


def test_invalid_json_and_unknown_path(emulator: Emulator) -> None:
    r = httpx2.post(emulator.base_url + "/v1/messages", content=b"{nope", headers={"x-api-key": KEY})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx2.get(emulator.base_url + "/v1/nothing", headers={"x-api-key": KEY})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# --------------------------------------------------------------------------- introspection

def test_request_log_fields(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_msg("log me [[id=1]]"))
    with client.messages.stream(**_msg("log me too")) as stream:
        stream.get_final_message()
    assert emulator.wait_idle(timeout=5)  # the handler may still be finishing its bookkeeping
    a, b = emulator.requests
    assert (a.seq, b.seq) == (1, 2)
    assert a.method == "POST" and a.path == "/v1/messages"
    assert a.body is not None and a.body["messages"][0]["content"] == "log me [[id=1]]"
    assert a.stream is False and b.stream is True
    assert a.model == MODEL
    assert a.prompt == "log me" and b.prompt == "log me too"
    assert a.status == 200 and a.error_type is None and not a.aborted
    assert a.emitted_text == "Echo: log me" and b.emitted_text == "Echo: log me too"
    assert a.usage is not None and a.usage["output_tokens"] == 3
    assert a.ended_at is not None and a.started_at <= a.ended_at <= b.started_at
    stats = emulator.stats()
    assert stats["requests"] == 2 and stats["messages"] == 2 and stats["status_counts"] == {200: 2}
    assert stats["active"] == 0 and stats["peak_concurrency"] == 1
    assert emulator.connection_count == 1  # one pooled keep-alive connection


def test_active_and_peak_concurrency(emulator: Emulator) -> None:
    client = _client(emulator)
    threads = [threading.Thread(target=client.messages.create, kwargs=_msg(f"p{i} [[ttft_ms=1000]]"))
               for i in range(3)]
    for t in threads:
        t.start()
    assert emulator.wait_for(lambda e: e.active_requests == 3, timeout=5)
    for t in threads:
        t.join()
    assert emulator.peak_concurrency == 3
    assert emulator.active_requests == 0
    assert emulator.connection_count == 3


def test_reset_clears_everything_and_restores_settings(emulator: Emulator) -> None:
    emulator.configure(reply_words=2)
    emulator.script("q", "scripted")
    client = _client(emulator)
    client.messages.create(**_msg("q"))
    emulator.reset()
    assert emulator.requests == [] and emulator.stats()["requests"] == 0
    assert emulator.settings["reply_words"] is None
    assert client.messages.create(**_msg("q")).content[0].text == "Echo: q"
    assert emulator.message_requests()[0].attempt == 1


def test_configure_rejects_unknown_or_bad_settings(emulator: Emulator) -> None:
    with pytest.raises(TypeError, match="nonsense"):
        emulator.configure(nonsense=1)
    with pytest.raises(ValueError, match="ttft_ms"):
        emulator.configure(ttft_ms=-1)


def test_count_tokens_matches_create(emulator: Emulator) -> None:
    client = _client(emulator)
    system = "You are terse."
    counted = client.messages.count_tokens(model=MODEL, system=system,
                                           messages=[{"role": "user", "content": "count these words"}])
    created = client.messages.create(**_msg("count these words", system=system))
    assert counted.input_tokens == created.usage.input_tokens == count_text_tokens(system) + count_text_tokens(
        "count these words")
    assert emulator.requests[0].path == "/v1/messages/count_tokens"
