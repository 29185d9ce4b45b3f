"""Thinking in the emulator: on by default where the catalogue says so, display, thinking tokens by
effort and ``[[think=N]]``, streaming (thinking_delta, one signature_delta), tool turns, and the round
trip: blocks sent back unchanged pass, altered / spliced / omitted blocks answer the API's 400.

Every test talks to the emulator with the real ``anthropic`` SDK (raw HTTP to read the SSE events).
"""
from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import httpx2
import pytest

from anthropic_emulator import Emulator, count_text_tokens, tool_directive
from _models import CATALOGUE

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
NEW = "claude-sonnet-5-5"
OLD = "claude-sonnet-4-6"
LOOKUP = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
MODIFIED = ("`thinking` or `redacted_thinking` blocks in the latest assistant message cannot be modified. "
            "These blocks must remain as they were in the original response.")


def _client(emulator: Emulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0, **kw)


def _ask(emulator: Emulator, text: str = "hello there", model: str = NEW, **extra: Any) -> anthropic.types.Message:
    params: dict[str, Any] = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]}
    params.update(extra)
    return _client(emulator).messages.create(**params)


def _error(emulator: Emulator, messages: list[dict[str, Any]], **kw: Any) -> str:
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.create(model=kw.pop("model", NEW), max_tokens=200, messages=messages, **kw)
    return str(info.value.body["error"]["message"])  # type: ignore[index]


def _turn(msg: anthropic.types.Message) -> dict[str, Any]:
    """The assistant turn to send back as plain dicts: the reply's content unchanged."""
    return {"role": "assistant", "content": [_block(b) for b in msg.content]}


def _block(block: Any) -> dict[str, Any]:
    return block.model_dump(exclude_none=True)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- replies


def test_thinking_is_on_by_default_on_5x_models(emulator: Emulator) -> None:
    assert CATALOGUE[NEW].thinking_default == "adaptive"
    msg = _ask(emulator)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    block = msg.content[0]
    assert block.type == "thinking" and block.thinking == "" and block.signature  # display omitted on 5.x
    assert msg.content[1].text == "Echo: hello there"  # type: ignore[union-attr]
    assert msg.usage.output_tokens_details is not None and msg.usage.output_tokens_details.thinking_tokens == 8
    assert msg.usage.output_tokens == 8 + 3  # high effort's 8 thinking tokens + three words
    assert msg.usage.input_tokens == count_text_tokens("hello there", NEW)
    again = _ask(emulator)
    assert again.content[0] == block  # deterministic signature for the same transcript


@pytest.mark.parametrize(("model", "effort", "tokens"), [
    (NEW, "low", 2), (NEW, "medium", 4), (NEW, None, 8), (NEW, "xhigh", 12), (NEW, "max", 16),
    ("claude-haiku-5-5", None, 4), ("claude-opus-5-5", None, 4),
])
def test_thinking_tokens_follow_effort(emulator: Emulator, model: str, effort: str | None, tokens: int) -> None:
    extra = {"output_config": {"effort": effort}} if effort else {}
    msg = _ask(emulator, "[[id=1]] x", model=model, **extra)
    assert msg.usage.output_tokens_details is not None
    assert msg.usage.output_tokens_details.thinking_tokens == tokens
    assert msg.usage.output_tokens == tokens + 2


def test_no_thinking_where_it_is_off(emulator: Emulator) -> None:
    old = _ask(emulator, model=OLD)
    assert [b.type for b in old.content] == ["text"] and old.usage.output_tokens == 3
    assert old.usage.output_tokens_details is not None and old.usage.output_tokens_details.thinking_tokens == 0
    off = _ask(emulator, model="claude-haiku-5-5", thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]


def test_display_defaults_and_overrides(emulator: Emulator) -> None:
    summarized = _ask(emulator, model=OLD, thinking={"type": "adaptive"})
    assert summarized.content[0].type == "thinking"
    assert summarized.content[0].thinking.startswith("Considering the request: hello there")
    omitted = _ask(emulator, model=OLD, thinking={"type": "adaptive", "display": "omitted"})
    assert omitted.content[0].thinking == ""  # type: ignore[union-attr]
    shown = _ask(emulator, thinking={"type": "adaptive", "display": "summarized"})
    assert shown.content[0].thinking.startswith("Considering the request")  # type: ignore[union-attr]


def test_think_directive_can_use_all_of_max_tokens(emulator: Emulator) -> None:
    msg = _ask(emulator, "[[think=500]] a long problem", max_tokens=100)
    assert [b.type for b in msg.content] == ["thinking"]
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 100
    assert msg.usage.output_tokens_details is not None and msg.usage.output_tokens_details.thinking_tokens == 100
    some = _ask(emulator, "[[think=20]] one two three", max_tokens=23)
    assert some.content[1].text == "Echo: one two" and some.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert some.usage.output_tokens == 23


def test_thinking_counts_against_max_tokens(emulator: Emulator) -> None:
    msg = _ask(emulator, "one two three", max_tokens=10)  # 8 thinking tokens leave room for two words
    assert msg.content[1].text == "Echo: one" and msg.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert msg.usage.output_tokens == 10


def test_between_tools_thinks_only_with_tools(emulator: Emulator) -> None:
    plain = _ask(emulator, thinking={"type": "between_tools"})
    assert [b.type for b in plain.content] == ["text"]
    tooled = _ask(emulator, tool_directive("lookup", {"q": "x"}) + " go", thinking={"type": "between_tools"},
                  tools=[LOOKUP])
    assert [b.type for b in tooled.content] == ["thinking", "tool_use"]
    assert tooled.content[0].thinking  # type: ignore[union-attr]  # progress notes come summarized


# --------------------------------------------------------------------------- streaming


def _events(emulator: Emulator, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx2.stream("POST", emulator.base_url + "/v1/messages", json={**body, "stream": True},
                       headers={"x-api-key": KEY}, timeout=10) as resp:
        assert resp.status_code == 200
        return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]


def test_streamed_thinking_block_and_signature_delta(emulator: Emulator) -> None:
    body = {"model": NEW, "max_tokens": 100, "messages": [{"role": "user", "content": "a b"}]}
    events = [e for e in _events(emulator, body) if e["type"] != "ping"]
    kinds = [(e["type"], e.get("index"), (e.get("delta") or {}).get("type")) for e in events]
    assert kinds[:5] == [
        ("message_start", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
    ]
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[2]["delta"]["thinking"] == ""  # display omitted: no thinking text
    assert kinds[5] == ("content_block_start", 1, None) and events[5]["content_block"]["type"] == "text"
    assert {k[2] for k in kinds[6:-3]} == {"text_delta"} and kinds[-3] == ("content_block_stop", 1, None)
    delta = events[-2]
    assert delta["type"] == "message_delta" and delta["usage"]["output_tokens_details"] == {"thinking_tokens": 8}
    created = _client(emulator).messages.create(**body)
    assert events[3]["delta"]["signature"] == created.content[0].signature  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["a b c", tool_directive("lookup", {"q": "z"}) + " find", "[[think=500]] deep"])
def test_stream_final_message_equals_create(emulator: Emulator, text: str) -> None:
    params: dict[str, Any] = {"model": NEW, "max_tokens": 100, "tools": [LOOKUP],
                              "messages": [{"role": "user", "content": text}]}
    client = _client(emulator)
    created = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert created.content[0].type == "thinking"
    assert [_block(b) for b in final.content] == [_block(b) for b in created.content]
    assert final.usage == created.usage and final.stop_reason == created.stop_reason


# --------------------------------------------------------------------------- the round trip


def test_two_turns_sending_the_thinking_back_unchanged_pass(emulator: Emulator) -> None:
    client = _client(emulator)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "first question"}]
    first = client.messages.create(model=NEW, max_tokens=200, messages=messages)  # type: ignore[arg-type]
    messages += [first.to_param(), {"role": "user", "content": "second question"}]  # the SDK's own way
    second = client.messages.create(model=NEW, max_tokens=200, messages=messages)  # type: ignore[arg-type]
    assert second.content[1].text == "Echo: second question"  # type: ignore[union-attr]
    assert second.content[0].signature != first.content[0].signature  # type: ignore[union-attr]
    messages += [_turn(second), {"role": "user", "content": "third"}]
    third = client.messages.create(model=NEW, max_tokens=200, messages=messages)  # type: ignore[arg-type]
    assert third.stop_reason == "end_turn"
    # model_dump(exclude_none) instead of to_param, string user content, cache_control added: same transcript
    redone = [{"role": "user", "content": [{"type": "text", "text": "first question",
                                            "cache_control": {"type": "ephemeral"}}]},
              {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": "second question"}]
    assert client.messages.create(model=NEW, max_tokens=200, messages=redone).stop_reason == "end_turn"  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["thinking", "signature"])
def test_altered_thinking_block_is_a_400(emulator: Emulator, field: str) -> None:
    first = _ask(emulator, "question")
    turn = _turn(first)
    turn["content"][0][field] += "x"
    messages = [{"role": "user", "content": "question"}, turn, {"role": "user", "content": "next"}]
    assert _error(emulator, messages) == "messages.1.content.0: " + MODIFIED
    assert emulator.stats()["status_counts"] == {200: 1, 400: 1}


def test_altered_block_in_an_earlier_turn(emulator: Emulator) -> None:
    client = _client(emulator)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "one"}]
    first = client.messages.create(model=NEW, max_tokens=200, messages=messages)  # type: ignore[arg-type]
    messages += [_turn(first), {"role": "user", "content": "two"}]
    second = client.messages.create(model=NEW, max_tokens=200, messages=messages)  # type: ignore[arg-type]
    messages += [_turn(second), {"role": "user", "content": "three"}]
    messages[1]["content"][0]["signature"] = "EmuSig1forged"
    assert _error(emulator, messages) == "messages.1.content.0: Invalid `signature` in `thinking` block."


def test_omitted_thinking_block_is_a_400(emulator: Emulator) -> None:
    first = _ask(emulator, "question")
    text_only = {"role": "assistant", "content": [_block(b) for b in first.content if b.type == "text"]}
    messages = [{"role": "user", "content": "question"}, text_only, {"role": "user", "content": "next"}]
    message = _error(emulator, messages)
    assert message.startswith("messages.1.content: this assistant turn was returned with a `thinking` block")
    as_string = {"role": "assistant", "content": "Echo: question"}  # the text kept as a plain string
    assert _error(emulator, [messages[0], as_string, messages[2]]) == message


def test_hand_written_history_without_thinking_is_accepted(emulator: Emulator) -> None:
    client = _client(emulator)
    history = [{"role": "user", "content": "question"}, {"role": "assistant", "content": "An answer I wrote."},
               {"role": "user", "content": "next"}]
    assert client.messages.create(model=NEW, max_tokens=200, messages=history).stop_reason == "end_turn"  # type: ignore[arg-type]
    _ask(emulator, "question")  # issued with a different text: the hand-written turn still passes
    assert client.messages.create(model=NEW, max_tokens=200, messages=history).stop_reason == "end_turn"  # type: ignore[arg-type]


def test_block_from_another_conversation_is_a_400_unless_dropped(emulator: Emulator) -> None:
    other = _ask(emulator, "a different question")
    spliced = [{"role": "user", "content": "question"}, _turn(other), {"role": "user", "content": "next"}]
    message = _error(emulator, spliced)
    assert message.startswith("messages.1.content.0: Invalid `signature` in `thinking` block. The block is bound "
                              "to a different conversation.")
    assert "thinking-binding-controls-2026-08-01" in message
    beta = {"anthropic-beta": "thinking-binding-controls-2026-08-01"}
    thinking = {"type": "adaptive", "block_binding": {"prefix_mismatch_behavior": "drop_block"}}
    msg = _client(emulator).messages.create(model=NEW, max_tokens=200, messages=spliced,  # type: ignore[arg-type]
                                            extra_body={"thinking": thinking}, extra_headers=beta)
    assert msg.stop_reason == "end_turn"
    strict = {"type": "adaptive", "block_binding": {"prefix_mismatch_behavior": "error"}}
    message = _error(emulator, spliced, extra_body={"thinking": strict}, extra_headers=beta)
    assert "bound to a different conversation" in message and "anthropic-beta" not in message


def test_editing_an_earlier_turn_breaks_the_binding(emulator: Emulator) -> None:
    first = _ask(emulator, "question", system="be brief")
    messages = [{"role": "user", "content": "question"}, _turn(first), {"role": "user", "content": "next"}]
    assert _client(emulator).messages.create(model=NEW, max_tokens=200, system="be brief",  # type: ignore[arg-type]
                                             messages=messages).stop_reason == "end_turn"
    assert "bound to a different conversation" in _error(emulator, messages, system="be verbose")
    edited = copy.deepcopy(messages)
    edited[0]["content"] = "question, edited"
    assert "bound to a different conversation" in _error(emulator, edited, system="be brief")


def test_block_from_another_model_is_dropped(emulator: Emulator) -> None:
    first = _ask(emulator, "question")
    messages = [{"role": "user", "content": "question"}, _turn(first), {"role": "user", "content": "next"}]
    msg = _client(emulator).messages.create(model="claude-opus-5-5", max_tokens=200, messages=messages)  # type: ignore[arg-type]
    assert msg.stop_reason == "end_turn"
    without = [messages[0], {"role": "assistant", "content": "Echo: question"}, messages[2]]
    assert _client(emulator).messages.create(model="claude-opus-5-5", max_tokens=200,  # type: ignore[arg-type]
                                             messages=without).stop_reason == "end_turn"


def test_thinking_blocks_belong_to_assistant_turns(emulator: Emulator) -> None:
    first = _ask(emulator, "question")
    misplaced = [{"role": "user", "content": [_block(first.content[0]), {"type": "text", "text": "hi"}]}]
    assert _error(emulator, misplaced) == "messages.0.content.0: thinking blocks are only allowed in assistant messages"
    redacted = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "a"}]}, {"role": "user", "content": "n"}]
    assert _error(emulator, redacted) == "messages.1.content.0: " + MODIFIED


# --------------------------------------------------------------------------- tool turns


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_with_thinking_round_trip(emulator: Emulator, stream: bool) -> None:
    client = _client(emulator)
    messages: list[dict[str, Any]] = [{"role": "user", "content": tool_directive("lookup", {"q": "a"}) + " define"}]

    def call() -> anthropic.types.Message:
        params: dict[str, Any] = {"model": NEW, "max_tokens": 300, "tools": [LOOKUP], "messages": messages}
        if stream:
            with client.messages.stream(**params) as s:
                return s.get_final_message()
        return client.messages.create(**params)

    first = call()
    assert [b.type for b in first.content] == ["thinking", "tool_use"] and first.stop_reason == "tool_use"
    use = first.content[1]
    messages += [_turn(first), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use.id, "content": "a letter"}]}]  # type: ignore[union-attr]
    final = call()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == f"Echo tool results: {use.id}=a letter"  # type: ignore[union-attr]
    # the same loop with the tool turn's thinking left out is refused
    messages[1] = {"role": "assistant", "content": [_block(use)]}
    with pytest.raises(anthropic.BadRequestError, match="returned with a `thinking` block"):
        call()


def test_scripted_tool_use_begins_with_thinking(emulator: Emulator) -> None:
    emulator.script_tool_use("plan", [("lookup", {"q": "x"})], text="Let me check.")
    msg = _ask(emulator, "plan", tools=[LOOKUP])
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]


def test_batch_replies_think_too(emulator: Emulator) -> None:
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[  # type: ignore[list-item]
        {"custom_id": "a", "params": {"model": NEW, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}}])
    emulator.advance_clock(10)
    client.messages.batches.retrieve(batch.id)
    result = next(iter(client.messages.batches.results(batch.id))).result
    assert result.type == "succeeded"
    assert [b.type for b in result.message.content] == ["thinking", "text"]  # type: ignore[union-attr]
    assert result.message.usage.output_tokens_details.thinking_tokens == 8  # type: ignore[union-attr]
