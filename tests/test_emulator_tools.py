"""The emulator's request validation of content, tool use (client and server tools, pause_turn),
scripted tool replies and structured output, through the real ``anthropic`` SDK over HTTP."""
from __future__ import annotations

import json
from typing import Any, Optional

import anthropic
import pydantic
import pytest

from anthropic_emulator import Emulator, count_text_tokens, schema_instance, tool_directive

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"
LOOKUP = {"name": "lookup", "description": "Look a word up.",
          "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
CLOCK = {"name": "clock", "input_schema": {"type": "object", "properties": {}}}
WEB = {"type": "web_search_20250305", "name": "web_search"}


def _client(emulator: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0)


def _params(content: Any, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": content}]}
    params.update(extra)
    return params


def _run_tool_loop(client: anthropic.Anthropic, prompt: str, tools: list[dict[str, Any]],
                   max_turns: int = 10, stream: bool = False) -> tuple[list[Any], Any]:
    """A minimal client tool loop: answers every tool_use with 'result of NAME(INPUT)'."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    replies = []
    for _ in range(max_turns):
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=500, tools=tools, messages=messages) as s:
                msg = s.get_final_message()
        else:
            msg = client.messages.create(model=MODEL, max_tokens=500, tools=tools, messages=messages)
        replies.append(msg)
        if msg.stop_reason != "tool_use":
            return replies, msg
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": b.id, "content": f"result of {b.name}({json.dumps(b.input)})"}
            for b in msg.content if b.type == "tool_use"]})
    return replies, None


# --------------------------------------------------------------------------- empty text and equivalence

@pytest.mark.parametrize("params", [
    _params(""),
    _params([{"type": "text", "text": ""}]),
    _params("hi", system=[{"type": "text", "text": ""}]),
    {"model": MODEL, "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": "again"}]},
    {"model": MODEL, "max_tokens": 10, "tools": [LOOKUP], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": ""}]}]}]},
])
def test_empty_text_is_a_400(emulator: Emulator, params: dict[str, Any]) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.create(**params)
    assert "must be non-empty" in info.value.message
    assert info.value.type == "invalid_request_error"  # type: ignore[attr-defined]


def test_string_and_block_forms_share_cache_and_tokens(emulator: Emulator) -> None:
    client = _client(emulator)
    doc = "Background material for the analysis. " * 150
    sys_text = "You are terse."

    def _body(as_blocks: bool, question: str) -> dict[str, Any]:
        first = [{"type": "text", "text": "hello"}] if as_blocks else "hello"
        reply = [{"type": "text", "text": "hi"}] if as_blocks else "hi"
        system: Any = [{"type": "text", "text": sys_text}] if as_blocks else sys_text
        return {"model": MODEL, "max_tokens": 20, "system": system, "messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": reply},
            {"role": "user", "content": [{"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}},
                                         {"type": "text", "text": question}]}]}

    written = client.messages.create(**_body(False, "q1"))
    assert written.usage.cache_creation_input_tokens > 1024
    read = client.messages.create(**_body(True, "q1"))
    assert read.usage.cache_read_input_tokens == written.usage.cache_creation_input_tokens
    assert read.usage.cache_creation_input_tokens == 0
    assert read.usage.input_tokens == written.usage.input_tokens
    counts = [client.messages.count_tokens(**{k: v for k, v in _body(b, "q").items() if k != "max_tokens"})
              for b in (False, True)]
    assert counts[0].input_tokens == counts[1].input_tokens


# --------------------------------------------------------------------------- tool validation

@pytest.mark.parametrize("tools,choice,fragment", [
    ([{"name": "x"}], None, "input_schema"),
    ([{"name": "x", "input_schema": {"type": "string"}}], None, "input_schema.type"),
    ([{"input_schema": {"type": "object"}}], None, "name"),
    ([LOOKUP, LOOKUP], None, "unique"),
    ([LOOKUP], {"type": "sometimes"}, "tool_choice"),
    ([LOOKUP], {"type": "tool", "name": "nope"}, "not found"),
])
def test_bad_tools_are_400(emulator: Emulator, tools: list[Any], choice: Any, fragment: str) -> None:
    extra: dict[str, Any] = {"tools": tools}
    if choice is not None:
        extra["tool_choice"] = choice
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.create(**_params("hi", **extra))
    assert fragment in info.value.message


def test_server_tools_and_tool_choice_are_accepted(emulator: Emulator) -> None:
    client = _client(emulator)
    for choice in ({"type": "auto"}, {"type": "none"}):
        msg = client.messages.create(**_params("plain", tools=[LOOKUP, WEB], tool_choice=choice))
        assert msg.content[0].text == "Echo: plain" and msg.stop_reason == "end_turn"  # type: ignore[union-attr]
    none = client.messages.create(**_params("x [[tool=lookup]]", tools=[LOOKUP], tool_choice={"type": "none"}))
    assert none.stop_reason == "end_turn"


def test_tool_directive_must_name_a_request_tool(emulator: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.create(**_params("x [[tool=missing]]", tools=[LOOKUP]))
    assert "missing" in info.value.message


# --------------------------------------------------------------------------- tool loops

def test_call_a_tool_then_answer(emulator: Emulator) -> None:
    client = _client(emulator)
    prompt = "define it " + tool_directive("lookup", {"q": "a b [c]"})
    replies, final = _run_tool_loop(client, prompt, [LOOKUP])
    first = replies[0]
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["tool_use"]
    use = first.content[0]
    assert use.id.startswith("toolu_") and use.name == "lookup" and use.input == {"q": "a b [c]"}
    assert first.usage.output_tokens == count_text_tokens(json.dumps(use.model_dump(exclude_none=True),
                                                                      separators=(",", ":"), sort_keys=True))
    assert final is not None and len(replies) == 2
    assert final.content[0].text == f'Echo tool results: {use.id}=result of lookup({{"q": "a b [c]"}})'
    assert final.stop_reason == "end_turn"
    # the second request counted the tool_use and tool_result blocks as input
    assert final.usage.input_tokens > first.usage.input_tokens + 10


def test_two_tools_in_one_turn_with_preamble(emulator: Emulator) -> None:
    client = _client(emulator)
    msg = client.messages.create(**_params("both [[tool=lookup,clock preamble=1]]", tools=[LOOKUP, CLOCK]))
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[0].text == "Calling lookup, clock."  # type: ignore[union-attr]
    assert [b.name for b in msg.content[1:]] == ["lookup", "clock"]  # type: ignore[union-attr]
    assert len({b.id for b in msg.content[1:]}) == 2  # type: ignore[union-attr]
    repeated = client.messages.create(**_params("two groups [[tool=lookup input={\"q\":\"x\"}]] [[tool=clock]]",
                                                tools=[LOOKUP, CLOCK]))
    assert [(b.name, b.input) for b in repeated.content] == [("lookup", {"q": "x"}), ("clock", {})]  # type: ignore


def test_three_tool_turns_then_answer_and_never_stop(emulator: Emulator) -> None:
    client = _client(emulator)
    replies, final = _run_tool_loop(client, "loop [[tool=clock tool_turns=3]]", [CLOCK])
    assert [r.stop_reason for r in replies] == ["tool_use"] * 3 + ["end_turn"]
    assert len({r.content[0].id for r in replies[:3]}) == 3
    assert final.content[0].text.startswith(f"Echo tool results: {replies[2].content[0].id}=result of clock")
    replies, final = _run_tool_loop(client, "forever [[tool=clock tool_turns=inf]]", [CLOCK], max_turns=6)
    assert final is None and len(replies) == 6


def test_each_agent_gets_its_own_results_and_errors_marked(emulator: Emulator) -> None:
    client = _client(emulator)
    first = client.messages.create(**_params("agent A [[tool=lookup,clock]]", tools=[LOOKUP, CLOCK]))
    ids = [b.id for b in first.content]  # type: ignore[union-attr]
    final = client.messages.create(model=MODEL, max_tokens=100, tools=[LOOKUP, CLOCK], messages=[
        {"role": "user", "content": "agent A [[tool=lookup,clock]]"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": ids[0], "content": [{"type": "text", "text": "alpha"}]},
            {"type": "tool_result", "tool_use_id": ids[1], "content": "boom", "is_error": True},
            {"type": "text", "text": "go on"}]}])
    assert final.content[0].text == f"Echo tool results: {ids[0]}=alpha; {ids[1]}=boom (error)"  # type: ignore


def test_tool_result_pairing_is_validated(emulator: Emulator) -> None:
    client = _client(emulator)
    use = {"type": "tool_use", "id": "toolu_a", "name": "lookup", "input": {"q": "x"}}
    use2 = {"type": "tool_use", "id": "toolu_b", "name": "lookup", "input": {"q": "y"}}

    def _send(assistant: list[Any], user: list[Any]) -> str:
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=MODEL, max_tokens=10, tools=[LOOKUP], messages=[
                {"role": "user", "content": "q"}, {"role": "assistant", "content": assistant},
                {"role": "user", "content": user}])
        return info.value.message

    assert "unexpected `tool_use_id`" in _send([use], [{"type": "tool_result", "tool_use_id": "toolu_zzz"}])
    assert "toolu_b" in _send([use, use2], [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "r"}])
    assert "come first" in _send([use], [{"type": "text", "text": "x"},
                                         {"type": "tool_result", "tool_use_id": "toolu_a", "content": "r"}])
    assert "without `tool_result`" in _send([use], [{"type": "text", "text": "no results"}])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "r"}]}])


def test_streamed_tool_use_is_reconstructed_by_the_sdk(emulator: Emulator) -> None:
    client = _client(emulator)
    tool_input = {"q": "streamed input", "n": [1, 2, 3], "nested": {"deep": True}}
    prompt = "stream it " + tool_directive("lookup", tool_input, preamble=1)
    raw_deltas: list[str] = []
    with client.messages.stream(**_params(prompt, tools=[LOOKUP])) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                raw_deltas.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert len(raw_deltas) >= 2
    assert json.loads("".join(raw_deltas)) == tool_input
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == tool_input  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    plain = client.messages.create(**_params(prompt, tools=[LOOKUP]))
    assert final.usage.output_tokens == plain.usage.output_tokens
    # a full streamed loop ends like the non-streamed one
    replies, last = _run_tool_loop(client, "s [[tool=clock tool_turns=2]]", [CLOCK], stream=True)
    assert [r.stop_reason for r in replies] == ["tool_use", "tool_use", "end_turn"]
    assert last.content[0].text.startswith("Echo tool results: toolu_")


@pytest.mark.parametrize("stream", [False, True])
def test_pause_turn_continues_until_final_text(emulator: Emulator, stream: bool) -> None:
    client = _client(emulator)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "search cats [[pause_turns=2]]"}]
    stops = []
    for _ in range(5):
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=500, tools=[WEB], messages=messages) as s:
                msg = s.get_final_message()
        else:
            msg = client.messages.create(model=MODEL, max_tokens=500, tools=[WEB], messages=messages)
        stops.append(msg.stop_reason)
        if msg.stop_reason != "pause_turn":
            break
        assert [b.type for b in msg.content] == ["server_tool_use", "web_search_tool_result"]
        use, result = msg.content
        assert use.id.startswith("srvtoolu_") and use.name == "web_search"  # type: ignore[union-attr]
        assert use.input == {"query": "search cats"}  # type: ignore[union-attr]
        assert result.tool_use_id == use.id  # type: ignore[union-attr]
        assert result.content[0].url.startswith("https://")  # type: ignore[union-attr,index]
        if stream and messages[-1]["role"] == "assistant":
            messages.pop()  # this client replaces the paused turn (the non-streaming one appends turns)
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
    assert stops == ["pause_turn", "pause_turn", "end_turn"]
    assert msg.content[0].text == "Echo: search cats"  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(**_params("no server tool [[pause_turns=1]]", tools=[LOOKUP]))


def test_forced_tool_choice_calls_the_tool_with_a_schema_instance(emulator: Emulator) -> None:
    msg = _client(emulator).messages.create(**_params("extract", tools=[CLOCK, LOOKUP],
                                                      tool_choice={"type": "tool", "name": "lookup"}))
    assert msg.stop_reason == "tool_use"
    assert (msg.content[0].name, msg.content[0].input) == ("lookup", {"q": "example"})  # type: ignore[union-attr]


# --------------------------------------------------------------------------- scripted replies

def test_scripted_tool_use_reply(emulator: Emulator) -> None:
    client = _client(emulator)
    emulator.script("weather?", [{"type": "text", "text": "Let me check."},
                                 {"type": "tool_use", "id": "toolu_fixed", "name": "lookup", "input": {"q": "w"}}])
    emulator.script_tool_use("two?", [("lookup", {"q": "1"}), ("clock", {})], text="Both.")
    replies, final = _run_tool_loop(client, "weather?", [LOOKUP])
    assert replies[0].content[0].text == "Let me check."
    assert replies[0].content[1].id == "toolu_fixed" and replies[0].stop_reason == "tool_use"
    assert final.content[0].text == 'Echo tool results: toolu_fixed=result of lookup({"q": "w"})'
    two = client.messages.create(**_params("two?", tools=[LOOKUP, CLOCK]))
    assert [b.type for b in two.content] == ["text", "tool_use", "tool_use"]
    assert two.content[2].id.startswith("toolu_emu_")  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError):  # the scripted tool is not in this request's tools
        client.messages.create(**_params("weather?", tools=[CLOCK]))
    emulator.script("weather?", "Sunny.")
    assert client.messages.create(**_params("weather?")).content[0].text == "Sunny."  # type: ignore[union-attr]


@pytest.mark.parametrize("reply", [
    [{"type": "tool_use", "name": "lookup", "input": {}}],
    [{"type": "tool_use", "id": "toolu_1", "input": {}}],
    [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": "q"}],
    [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}, {"type": "text", "text": "late"}],
    [{"type": "text", "text": ""}],
    [{"type": "image"}],
    [],
    42,
    {"type": "text", "text": "not a list"},
])
def test_bad_scripts_raise_value_error_at_once(emulator: Emulator, reply: Any) -> None:
    with pytest.raises(ValueError):
        emulator.script("p", reply)


# --------------------------------------------------------------------------- structured output

class Address(pydantic.BaseModel):
    city: str
    zip_code: Optional[str] = None


class Person(pydantic.BaseModel):
    name: str
    age: int
    score: float
    active: bool
    tags: list[str]
    kind: str = pydantic.Field(json_schema_extra={"enum": ["a", "b"]})
    home: Address
    other: Optional[Address] = None


def test_parse_returns_a_valid_instance(emulator: Emulator) -> None:
    client = _client(emulator)
    parsed = client.messages.parse(model=MODEL, max_tokens=500, output_format=Person,
                                   messages=[{"role": "user", "content": "who?"}])
    person = parsed.parsed_output
    assert isinstance(person, Person)
    assert person.kind == "a" and person.tags == ["example"] and person.home.city == "example"
    sent = emulator.message_requests()[-1].body
    assert sent is not None and sent["output_config"]["format"]["type"] == "json_schema"
    with client.messages.stream(model=MODEL, max_tokens=500, output_format=Person,
                                messages=[{"role": "user", "content": "who?"}]) as stream:
        assert stream.get_final_message().parsed_output == person


def test_invalid_output_then_repaired_and_twice(emulator: Emulator) -> None:
    client = _client(emulator)

    def _attempts(prompt: str, tries: int) -> list[bool]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        ok = []
        for _ in range(tries):
            msg = client.messages.create(model=MODEL, max_tokens=500, messages=messages, output_config={
                "format": {"type": "json_schema", "schema": Person.model_json_schema()}})
            text = msg.content[0].text  # type: ignore[union-attr]
            try:
                Person.model_validate_json(text)
                ok.append(True)
                break
            except pydantic.ValidationError:
                ok.append(False)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": "That did not match the schema; try again."}]
        return ok

    assert _attempts("p1 [[invalid_output=1]]", 3) == [False, True]
    assert _attempts("p2 [[invalid_output=2]]", 3) == [False, False, True]
    # identical retries count as tries too
    body = _params("p3 [[invalid_output=1]]", output_config={
        "format": {"type": "json_schema", "schema": Person.model_json_schema()}})
    with pytest.raises(pydantic.ValidationError):
        Person.model_validate_json(client.messages.create(**body).content[0].text)  # type: ignore[union-attr]
    Person.model_validate_json(client.messages.create(**body).content[0].text)  # type: ignore[union-attr]


@pytest.mark.parametrize("config", [
    {"format": {"type": "json", "schema": {}}},
    {"format": {"type": "json_schema"}},
    {"format": "json"},
    {"effort": "extreme"},
    {"surprise": 1},
])
def test_malformed_output_config_is_400(emulator: Emulator, config: Any) -> None:
    with pytest.raises(anthropic.BadRequestError):
        _client(emulator).messages.create(**_params("x", output_config=config))


def test_schema_instance_covers_refs_anyof_and_bounds() -> None:
    schema = {"type": "object", "$defs": {"Leaf": {"type": "object", "properties": {"v": {"const": 3}}}},
              "properties": {"leaf": {"$ref": "#/$defs/Leaf"},
                             "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]},
                             "list": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                             "when": {"type": "string", "format": "date"},
                             "long": {"type": "string", "minLength": 10}}}
    assert schema_instance(schema) == {"leaf": {"v": 3}, "maybe": 5, "list": [0, 0], "when": "2024-01-01",
                                       "long": "examplexxx"}
