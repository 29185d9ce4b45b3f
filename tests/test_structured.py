"""Structured output (``_structured``): the request body mirrors the SDK's ``messages.parse``, the
reply is validated, an invalid reply is retried once; through the real SDK against the emulator."""
from __future__ import annotations

from typing import Any, Optional

import anthropic
import pydantic
import pytest

from anthropic_emulator import Emulator, tool_directive

import _transport
from _errors import ClaudeInvocationError
from _results import ClaudeResponse, Usage
from _structured import OutputSpec, send_structured
from _tools import ToolSet, run_tool_loop

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-4-6"
TEST_KEY = "sk-ant-test-key"


class Address(pydantic.BaseModel):
    city: str
    zip_code: Optional[str] = None


class Person(pydantic.BaseModel):
    """A person."""

    name: str
    age: int
    tags: list[str]
    home: Address


PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def _params(prompt: str) -> dict:
    return {"model": MODEL, "max_tokens": 500, "messages": [{"role": "user", "content": prompt}]}


def _send_once(params: dict, replies: Optional[list] = None) -> Any:
    client = _transport.get_client()

    def send_once() -> ClaudeResponse:
        reply = _transport.send(params, client=client)
        if replies is not None:
            replies.append(reply)
        return reply

    return send_once


def test_the_body_is_what_messages_parse_sends(client_env: Emulator) -> None:
    spec = OutputSpec.from_user(Person)
    assert spec is not None
    params = spec.apply(_params("who?"))
    reply = send_structured(_send_once(params), spec)
    sdk = anthropic.Anthropic(api_key=TEST_KEY, base_url=client_env.base_url)
    parsed = sdk.messages.parse(model=MODEL, max_tokens=500, output_format=Person,
                                messages=[{"role": "user", "content": "who?"}])
    ours, theirs = (r.body for r in client_env.message_requests())
    assert ours["output_config"] == theirs["output_config"]
    assert list(ours["output_config"]["format"]) == list(theirs["output_config"]["format"])  # same key order too
    assert isinstance(reply.parsed, Person) and reply.parsed == parsed.parsed_output
    assert reply.usage == Usage.from_sdk(client_env.message_requests()[0].usage)


def test_apply_keeps_other_output_config_keys_and_the_callers_params() -> None:
    spec = OutputSpec.from_user(PERSON_SCHEMA)
    assert spec is not None
    params = {**_params("x"), "output_config": {"effort": "low"}}
    new = spec.apply(params)
    assert new["output_config"] == {"effort": "low", "format": {"schema": PERSON_SCHEMA, "type": "json_schema"}}
    assert params["output_config"] == {"effort": "low"}


def test_a_json_schema_dict_gives_the_decoded_value(client_env: Emulator) -> None:
    spec = OutputSpec.from_user(PERSON_SCHEMA)
    assert spec is not None
    reply = send_structured(_send_once(spec.apply(_params("who?"))), spec)
    assert isinstance(reply.parsed, dict) and set(reply.parsed) == {"name", "age", "tags"}
    assert client_env.message_requests()[0].body["output_config"]["format"]["schema"] == PERSON_SCHEMA


@pytest.mark.parametrize("schema", [Person, PERSON_SCHEMA])
def test_invalid_then_repaired(client_env: Emulator, schema: Any) -> None:
    spec = OutputSpec.from_user(schema)
    assert spec is not None
    replies: list[ClaudeResponse] = []
    first_usage: list[Usage] = []
    send_once = _send_once(spec.apply(_params("who? [[invalid_output=1]]")), replies)

    def counted() -> ClaudeResponse:
        reply = send_once()
        first_usage.append(reply.usage)
        return reply

    reply = send_structured(counted, spec)
    assert len(client_env.message_requests()) == 2
    assert reply.parsed is not None
    assert reply.usage == first_usage[0] + first_usage[1] == sum(
        (Usage.from_sdk(r.usage) for r in client_env.message_requests()), Usage())
    assert reply.cost_usd is not None and reply.cost_usd > 0


@pytest.mark.parametrize("schema", [Person, PERSON_SCHEMA])
def test_invalid_twice_raises_with_the_raw_text(client_env: Emulator, schema: Any) -> None:
    spec = OutputSpec.from_user(schema)
    assert spec is not None
    with pytest.raises(ClaudeInvocationError) as info:
        send_structured(_send_once(spec.apply(_params("who? [[invalid_output=2]]"))), spec)
    error = info.value
    assert error.kind == "invalid_output"
    assert len(client_env.message_requests()) == 2
    assert error.details["texts"][1] == error.details["text"] and error.details["text"].startswith("{")
    assert len(error.details["texts"]) == 2 and error.details["errors"]
    assert error.details["usage"] == sum((Usage.from_sdk(r.usage) for r in client_env.message_requests()), Usage())
    assert str(error).startswith("Twice, the reply does not match output_schema")


def test_parse_reports_what_is_wrong() -> None:
    spec = OutputSpec.from_user(PERSON_SCHEMA)
    assert spec is not None
    with pytest.raises(ClaudeInvocationError) as info:
        spec.parse(ClaudeResponse('{"name": 1, "age": -2, "extra": true}', stop_reason="max_tokens"))
    details = info.value.details
    assert info.value.kind == "invalid_output" and "max_tokens" in str(info.value)
    assert details["text"] == '{"name": 1, "age": -2, "extra": true}'
    assert sorted(details["errors"]) == sorted([
        "$: missing required property 'tags'", "$.name: expected string, got int",
        "$.age: less than the minimum 0", "$: unexpected property 'extra'"])
    with pytest.raises(ClaudeInvocationError, match="not JSON"):
        spec.parse(ClaudeResponse("Sure! Here it is"))
    model = OutputSpec.from_user(Person)
    assert model is not None
    with pytest.raises(ClaudeInvocationError, match="home: Field required"):
        model.parse(ClaudeResponse('{"name": "a", "age": 1, "tags": []}'))


def test_the_schema_checker_covers_the_common_keywords() -> None:
    schema = {"$defs": {"Leaf": {"type": "object", "properties": {"v": {"const": 3}}, "required": ["v"]}},
              "type": "object",
              "properties": {"leaf": {"$ref": "#/$defs/Leaf"},
                             "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]},
                             "pick": {"enum": ["a", "b"]},
                             "list": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3},
                             "code": {"type": "string", "pattern": "^[A-Z]{2}$", "maxLength": 2}}}
    spec = OutputSpec.from_user(schema)
    assert spec is not None
    good = '{"leaf": {"v": 3}, "maybe": null, "pick": "a", "list": [1, 2.5], "code": "FR"}'
    assert spec.parse(ClaudeResponse(good))["code"] == "FR"
    bad = '{"leaf": {"v": 4}, "maybe": 2, "pick": "c", "list": [true], "code": "fra"}'
    with pytest.raises(ClaudeInvocationError) as info:
        spec.parse(ClaudeResponse(bad))
    errors = info.value.details["errors"]
    assert len(errors) == 7, errors
    assert any("$.leaf.v" in e for e in errors) and any("anyOf" in e for e in errors)


def test_output_schema_inputs() -> None:
    assert OutputSpec.from_user(None) is None
    spec = OutputSpec.from_user(Person)
    assert OutputSpec.from_user(spec) is spec
    with pytest.raises(TypeError, match="output_schema must be a Pydantic model class or a JSON-schema dict"):
        OutputSpec.from_user(42)
    with pytest.raises(TypeError, match="answer_schema"):
        OutputSpec.from_user(Person(name="a", age=1, tags=[], home=Address(city="x")), name="answer_schema")
    with pytest.raises(ValueError, match="output_schema must be a JSON schema"):
        OutputSpec.from_user({"properties": {}})
    with pytest.raises(ValueError, match="JSON-serializable"):
        OutputSpec.from_user({"type": "object", "default": object()})
    with pytest.raises(TypeError, match="send_once"):
        send_structured(None, spec)  # type: ignore[arg-type]


def test_structured_output_after_a_tool_loop(client_env: Emulator) -> None:
    def lookup(q: str) -> str:
        """Look a word up."""
        return f"def of {q}"

    spec = OutputSpec.from_user(Person)
    toolset = ToolSet.from_user([lookup])
    assert spec is not None and toolset is not None
    client = _transport.get_client()
    params = spec.apply(_params("who? " + tool_directive("lookup", {"q": "x"})))
    reply = send_structured(lambda: run_tool_loop(params, toolset=toolset,
                                                  send_turn=lambda p: _transport.send(p, client=client)), spec)
    assert isinstance(reply.parsed, Person)
    assert reply.tool_calls[0].output == "def of x" and len(reply.messages) == 4
    assert all("output_config" in r.body for r in client_env.message_requests())
    assert reply.usage == sum((Usage.from_sdk(r.usage) for r in client_env.message_requests()), Usage())


# --------------------------------------------------------------------------- the schema itself, before sending
@pytest.mark.parametrize("schema, path, what", [
    ({"type": "object", "required": "a"}, "$.required", "list of property names"),
    ({"type": "object", "required": ["a", "a"]}, "$.required", "twice"),
    ({"type": "objekt"}, "$.type", "unknown type 'objekt'"),
    ({"type": ["string", "bogus"]}, "$.type", "'bogus'"),
    ({"type": []}, "$.type", "non-empty"),
    ({"type": "object", "properties": []}, "$.properties", "dict of schemas"),
    ({"type": "object", "properties": {"a": 5}}, "$.properties.a", "a schema must be a dict"),
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": -1}}}, "$.properties.a.minLength",
     "int >= 0"),
    ({"type": "array", "items": {"type": "integer", "maximum": "ten"}}, "$.items.maximum", "a number"),
    ({"type": "array", "maxItems": 2.5}, "$.maxItems", "int >= 0"),
    ({"type": "number", "multipleOf": 0}, "$.multipleOf", "> 0"),
    ({"anyOf": []}, "$.anyOf", "non-empty list"),
    ({"oneOf": [{"type": "string"}, "x"]}, "$.oneOf[1]", "a schema must be a dict"),
    ({"type": "string", "enum": "abc"}, "$.enum", "list of values"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}}, "$.properties.a.$ref", "does not resolve"),
    ({"$ref": "https://example.com/schema.json"}, "$.$ref", "only local references"),
    ({"type": "object", "additionalProperties": "no"}, "$.additionalProperties", "a schema must be a dict"),
    ({"type": "string", "description": 5}, "$.description", "a str"),
    ({"type": "object", "$defs": {"X": {"type": "strin"}}}, "$.$defs.X.type", "unknown type"),
])
def test_an_invalid_json_schema_is_refused_naming_the_path(client_env: Emulator, schema: dict, path: str,
                                                           what: str) -> None:
    import claude_client as cc

    with pytest.raises(ValueError) as info:
        OutputSpec.from_user(schema)
    message = str(info.value)
    assert message.startswith("output_schema is not a valid JSON schema") and path in message and what in message
    with pytest.raises(ValueError, match="output_schema"):
        cc.invoke_claude("x", output_schema=schema)
    with pytest.raises(ValueError, match=r"output_config\['format'\]\['schema'\]"):
        cc.invoke_claude("x", output_config={"format": {"type": "json_schema", "schema": schema}})
    assert client_env.requests == []


def test_valid_schemas_pass_the_check_and_are_sent_as_given(client_env: Emulator) -> None:
    import claude_client as cc

    recursive = {"$defs": {"Node": {"type": "object", "properties": {"kids": {"type": "array",
                                                                            "items": {"$ref": "#/$defs/Node"}}}}},
                 "$ref": "#/$defs/Node"}
    for schema in (PERSON_SCHEMA, recursive, {"type": ["string", "null"]}, {"enum": [1, "a", None]},
                   {"type": "object", "properties": {"a": True, "b": {"not": {"type": "null"}}},
                    "patternProperties": {"^x": {"type": "integer", "exclusiveMinimum": 0}}}):
        assert OutputSpec.from_user(schema) is not None
    for model in (Person, Address, list[int]):  # a Pydantic model, or a type pydantic can build a schema for
        assert OutputSpec.from_user(model) is not None
    reply = cc.invoke_claude("who?", output_schema=PERSON_SCHEMA)
    assert set(reply.parsed) == {"name", "age", "tags"}
    assert client_env.message_requests()[0].body["output_config"]["format"]["schema"] == PERSON_SCHEMA
