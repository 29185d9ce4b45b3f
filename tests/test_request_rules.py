"""The request rules of today's API, checked by the one builder before anything is sent
(``_request_rules.check_request_rules``): sampling parameters, prefill, forced tool choice,
thinking and effort per model, max_tokens per model. Every refusal is asserted through a public
entry point against the emulator: the exception type, the parameter and the model in the message,
and that no request reached the server. The positive cases check the body the emulator received.
"""
from __future__ import annotations

from typing import Any, Callable

import pydantic
import pytest

import claude_client as cc
from _models import CATALOGUE, DEFAULT_MODEL
from _request_rules import check_request_rules
from _requests import AVAILABLE_MODELS, prompt_specs
from claude_client import ClaudeInvocationError
from message_batches import invoke_batch
from orchestration import invoke_parallel_managed, invoke_with_retry

pytestmark = pytest.mark.timeout(60)

MODEL = DEFAULT_MODEL  # claude-sonnet-5-5
Q = [{"role": "user", "content": "Question?"}]
PREFILL = Q + [{"role": "assistant", "content": "The answer is"}]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def refused(emulator: Any, call: Callable[[], Any], *words: str, exc: type = ValueError) -> str:
    """``call()`` raises ``exc`` naming every one of ``words``, and nothing reaches the emulator."""
    before = len(emulator.requests)
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc, repr(info.value)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(emulator.requests) == before, "a request reached the emulator"
    return message


def last_body(emulator: Any) -> dict:
    body = dict(emulator.message_requests()[-1].body)
    body.pop("stream", None)
    return body


def batch(prompts: list, **kwargs: Any) -> Any:
    return invoke_batch(prompts, poll_interval=0.05, **kwargs)


# --------------------------------------------------------------------------- sampling parameters
SAMPLING = [
    pytest.param(lambda: cc.invoke_claude("x", temperature=0.5), "temperature", id="invoke_claude-temperature"),
    pytest.param(lambda: cc.invoke_claude("x", temperature=0.0), "temperature", id="invoke_claude-temperature-0"),
    pytest.param(lambda: cc.invoke_claude("x", top_p=0.9), "top_p", id="invoke_claude-top_p"),
    pytest.param(lambda: cc.invoke_claude("x", top_k=5), "top_k", id="invoke_claude-top_k"),
    pytest.param(lambda: cc.invoke_claude("x", extra_body={"temperature": 0.2}), "temperature", id="extra_body"),
    pytest.param(lambda: cc.invoke_claude_streaming("x", temperature=0.3), "temperature", id="streaming"),
    pytest.param(lambda: invoke_with_retry("x", temperature=0.7), "temperature", id="invoke_with_retry"),
    pytest.param(lambda: invoke_with_retry("x", top_p=0.5), "top_p", id="invoke_with_retry-top_p"),
    pytest.param(lambda: cc.invoke_parallel([{"prompt": "x", "temperature": 0.3}]), "prompts[0]['temperature']",
                 id="invoke_parallel"),
    pytest.param(lambda: invoke_parallel_managed([{"prompt": "a"}, {"prompt": "x", "temperature": 0.3}]),
                 "prompts[1]['temperature']", id="invoke_parallel_managed"),
    pytest.param(lambda: batch([{"prompt": "x", "temperature": 0.3}]), "prompts[0]['temperature']",
                 id="invoke_batch"),
    pytest.param(lambda: cc.ConversationThread(temperature=0.5), "temperature", id="ConversationThread"),
]


@pytest.mark.parametrize("call, name", SAMPLING)
def test_sampling_parameters_are_refused_on_every_model(client_env, call, name: str) -> None:
    message = refused(client_env, call, name, "removed from the Messages API", "effort=")
    assert "2026-10-21" in message


def test_temperature_one_is_the_default_and_is_not_sent(client_env) -> None:
    cc.invoke_claude("t1", temperature=1.0)
    cc.invoke_parallel([{"prompt": "t2", "temperature": 1.0}])
    bodies = [r.body for r in client_env.message_requests()]
    assert len(bodies) == 2 and all("temperature" not in b for b in bodies)


# --------------------------------------------------------------------------- prefill
@pytest.mark.parametrize("call", [
    pytest.param(lambda model: cc.invoke_claude(messages=PREFILL, model=model), id="invoke_claude"),
    pytest.param(lambda model: cc.invoke_claude_streaming(messages=PREFILL, model=model), id="streaming"),
    pytest.param(lambda model: invoke_with_retry(messages=PREFILL, model=model), id="invoke_with_retry"),
])
@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-opus-4-6", "claude-haiku-5-5"])
def test_prefill_is_refused_where_the_model_refuses_it(client_env, call, model: str) -> None:
    assert CATALOGUE[model].rejects_prefill
    refused(client_env, lambda: call(model), "messages", model, "user message", "output_schema=")


def test_prefill_is_sent_to_a_model_that_takes_it(client_env) -> None:
    assert not CATALOGUE["claude-haiku-4-5"].rejects_prefill
    cc.invoke_claude(messages=PREFILL, model="claude-haiku-4-5")
    assert last_body(client_env)["messages"][-1] == PREFILL[-1]


# --------------------------------------------------------------------------- forced tool choice
@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "add"}])
@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-opus-5-5", "claude-fable-5-1", "claude-mythos-5-2"])
def test_forced_tool_choice_is_refused_where_the_model_refuses_it(client_env, model: str, choice: dict) -> None:
    assert CATALOGUE[model].rejects_forced_tool_choice
    refused(client_env, lambda: cc.invoke_claude("x", model=model, tools=[add], tool_choice=choice),
            "tool_choice", model, "{'type': 'auto'}")
    refused(client_env, lambda: invoke_with_retry("x", model=model, tools=[add], tool_choice=choice),
            "tool_choice", model)


def test_forced_tool_choice_is_sent_to_a_model_that_takes_it(client_env) -> None:
    assert not CATALOGUE["claude-haiku-5-5"].rejects_forced_tool_choice
    try:  # the emulator may keep forcing the tool: one turn is enough to see the body
        cc.invoke_claude("x", model="claude-haiku-5-5", tools=[add], tool_choice={"type": "any"}, max_tool_turns=1)
    except ClaudeInvocationError as error:
        assert error.kind == "tool_turns_exceeded" or "max_tool_turns" in str(error)
    assert client_env.message_requests()[0].body["tool_choice"] == {"type": "any"}


# --------------------------------------------------------------------------- thinking
@pytest.mark.parametrize("model, thinking, accepted", [
    ("claude-sonnet-5-5", "disabled", ["'adaptive'", "'between_tools' (up to effort 'high')"]),
    ("claude-opus-5-5", "disabled", ["'adaptive'"]),
    ("claude-opus-5-5", {"type": "enabled", "budget_tokens": 2048}, ["'adaptive'"]),
    ("claude-fable-5-2", "between_tools", ["'adaptive'"]),
    ("claude-haiku-4-5", "adaptive", ["'enabled'", "'disabled'"]),
    ("claude-opus-4-7", {"type": "enabled", "budget_tokens": 2048}, ["'adaptive'", "'disabled'"]),
])
def test_a_thinking_type_the_model_does_not_take_is_refused(client_env, model, thinking, accepted) -> None:
    kind = thinking if isinstance(thinking, str) else thinking["type"]
    for call in (lambda: cc.invoke_claude("x", model=model, thinking=thinking),
                 lambda: invoke_with_retry("x", model=model, thinking=thinking)):
        refused(client_env, call, "thinking", repr(kind), model, *accepted)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: cc.invoke_parallel([{"prompt": "a"}, {"prompt": "x", "thinking": "disabled"}]),
                 id="invoke_parallel"),
    pytest.param(lambda: cc.invoke_parallel_streaming([{"prompt": "x", "thinking": "disabled"}]), id="streaming"),
    pytest.param(lambda: invoke_parallel_managed([{"prompt": "x", "thinking": {"type": "disabled"}}]), id="managed"),
    pytest.param(lambda: batch([{"prompt": "x", "thinking": "disabled"}]), id="invoke_batch"),
])
def test_a_prompts_own_thinking_is_checked_for_its_model(client_env, call) -> None:
    refused(client_env, call, "thinking", "'disabled'", MODEL, "prompts[")


@pytest.mark.parametrize("model, kind, effort, cap", [
    ("claude-sonnet-5-5", "between_tools", "xhigh", "high"),
    ("claude-sonnet-5-5", "between_tools", "max", "high"),
    ("claude-haiku-5-5", "disabled", "max", "high"),
    ("claude-opus-5", "disabled", "xhigh", "high"),
])
def test_a_thinking_type_past_its_effort_is_refused(client_env, model, kind, effort, cap) -> None:
    refused(client_env, lambda: cc.invoke_claude("x", model=model, thinking=kind, effort=effort),
            "thinking", model, f"effort={effort!r}", f"up to effort {cap!r}")
    refused(client_env, lambda: cc.invoke_parallel([{"prompt": "x", "model": model, "thinking": kind,
                                                     "effort": effort}]), "thinking", model, "prompts[0]")


def test_a_thinking_type_within_its_effort_is_sent(client_env) -> None:
    cc.invoke_claude("a", model="claude-sonnet-5-5", thinking="between_tools", effort="high")
    cc.invoke_claude("b", model="claude-haiku-5-5", thinking="disabled")  # its default effort: medium
    first, second = (r.body for r in client_env.message_requests())
    assert first["thinking"] == {"type": "between_tools"} and first["output_config"] == {"effort": "high"}
    assert second["thinking"] == {"type": "disabled"} and "output_config" not in second


# --------------------------------------------------------------------------- effort
@pytest.mark.parametrize("model, effort, words", [
    ("claude-opus-4-6", "xhigh", ["'low', 'medium', 'high', 'max'"]),
    ("claude-sonnet-4-6", "xhigh", ["'max'"]),
    ("claude-opus-4-5", "max", ["'low', 'medium', 'high'"]),
    ("claude-haiku-4-5", "low", ["no effort parameter"]),
])
def test_an_effort_the_model_does_not_take_is_refused(client_env, model, effort, words) -> None:
    for call in (lambda: cc.invoke_claude("x", model=model, effort=effort),
                 lambda: invoke_with_retry("x", model=model, effort=effort),
                 lambda: cc.invoke_parallel([{"prompt": "x", "effort": effort}], model=model),
                 lambda: invoke_parallel_managed([{"prompt": "x", "model": model, "effort": effort}]),
                 lambda: batch([{"prompt": "x", "effort": effort}], model=model)):
        refused(client_env, call, "effort", repr(effort), model, *words)


# --------------------------------------------------------------------------- max_tokens
@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-haiku-4-5", "claude-opus-4-5"])
def test_max_tokens_above_the_models_maximum_is_refused(client_env, model: str) -> None:
    limit = CATALOGUE[model].max_output
    for call in (lambda: cc.invoke_claude("x", model=model, max_tokens=limit + 1),
                 lambda: invoke_with_retry("x", model=model, max_tokens=limit + 1),
                 lambda: cc.invoke_parallel([{"prompt": "x"}], model=model, max_tokens=limit + 1),
                 lambda: cc.invoke_parallel([{"prompt": "x", "max_tokens": limit + 1}], model=model),
                 lambda: invoke_parallel_managed([{"prompt": "x", "model": model, "max_tokens": limit + 1}]),
                 lambda: cc.estimate_run_cost([{"prompt": "x"}], model=model, max_tokens=limit + 1)):
        refused(client_env, call, "max_tokens", model, str(limit))


def test_a_batch_is_held_to_the_batch_maximum(client_env) -> None:
    info = CATALOGUE[MODEL]
    over = info.batch_max_output + 1
    refused(client_env, lambda: batch([{"prompt": "x"}], max_tokens=over), "max_tokens", MODEL)
    # the builder's batch rule: above the message maximum, within the batch one
    between = info.max_output + 1
    assert info.max_output < between <= info.batch_max_output
    specs = prompt_specs([{"prompt": "x"}], shared_system=None, cache_shared_system=False, model=MODEL,
                         max_tokens=between, batch=True)
    assert specs[0].params["max_tokens"] == between
    with pytest.raises(ValueError, match="max_tokens"):
        prompt_specs([{"prompt": "x"}], shared_system=None, cache_shared_system=False, model=MODEL,
                     max_tokens=between)


def test_an_absurd_max_tokens_is_refused_whatever_the_model(client_env) -> None:
    refused(client_env, lambda: cc.invoke_claude("x", max_tokens=10**30), "max_tokens", MODEL)
    refused(client_env, lambda: cc.invoke_claude("x", model="claude-future-9", max_tokens=10**30), "max_tokens")


def test_a_model_the_catalogue_does_not_know_gets_no_model_rule(client_env) -> None:
    client_env.configure(extra_models={"claude-future-9": "claude-sonnet-5-5"})
    before = len(client_env.message_requests())
    try:  # the server decides (the emulator treats the id as Sonnet 5.5, which refuses this)
        cc.invoke_claude("x", model="claude-future-9", max_tokens=200_000, effort="xhigh", thinking="disabled",
                         streaming=True)
    except ClaudeInvocationError as error:
        assert error.status_code == 400
    assert len(client_env.message_requests()) == before + 1
    body = last_body(client_env)
    assert body["thinking"] == {"type": "disabled"} and body["output_config"] == {"effort": "xhigh"}


# --------------------------------------------------------------------------- what is sent
def test_effort_reaches_the_body_as_output_config(client_env) -> None:
    cc.invoke_claude("a", effort="low")
    assert last_body(client_env)["output_config"] == {"effort": "low"}
    invoke_with_retry("b", effort="medium")
    assert last_body(client_env)["output_config"] == {"effort": "medium"}
    cc.invoke_parallel([{"prompt": "c", "effort": "max"}])
    assert last_body(client_env)["output_config"] == {"effort": "max"}
    invoke_parallel_managed([{"prompt": "d", "effort": "xhigh"}])
    assert last_body(client_env)["output_config"] == {"effort": "xhigh"}
    cc.invoke_claude("e")
    assert "output_config" not in last_body(client_env) and "thinking" not in last_body(client_env)


@pytest.mark.parametrize("thinking, sent", [
    ("adaptive", {"type": "adaptive"}),
    ({"type": "adaptive"}, {"type": "adaptive"}),
    ({"display": "summarized", "type": "adaptive"}, {"type": "adaptive", "display": "summarized"}),
    ("between_tools", {"type": "between_tools"}),
])
def test_thinking_reaches_the_body(client_env, thinking: Any, sent: dict) -> None:
    cc.invoke_claude("x", thinking=thinking)
    body = last_body(client_env)
    assert body["thinking"] == sent and list(body["thinking"]) == list(sent)
    cc.invoke_parallel([{"prompt": "y", "thinking": thinking}])
    assert last_body(client_env)["thinking"] == sent


def test_enabled_thinking_with_a_budget_is_sent_where_the_model_takes_it(client_env) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    cc.invoke_claude("x", model="claude-sonnet-4-6", max_tokens=4096, thinking=thinking)
    assert last_body(client_env)["thinking"] == thinking


def test_effort_and_structured_output_share_output_config(client_env) -> None:
    class Answer(pydantic.BaseModel):
        value: int

    reply = cc.invoke_claude("x", effort="low", output_schema=Answer)
    assert isinstance(reply.parsed, Answer)
    config = last_body(client_env)["output_config"]
    assert list(config) == ["effort", "format"] and config["effort"] == "low"
    assert config["format"]["type"] == "json_schema"


def test_the_body_keeps_the_sdk_key_order(client_env) -> None:
    cc.invoke_claude("x", system="S.", effort="low", thinking="adaptive", metadata={"user_id": "u"})
    assert list(last_body(client_env)) == [
        "max_tokens", "messages", "model", "metadata", "output_config", "system", "thinking"]


def test_a_prompts_own_effort_and_thinking_override_the_runs(client_env) -> None:
    specs = prompt_specs([{"prompt": "a"}, {"prompt": "b", "effort": "high", "thinking": "between_tools"},
                          {"prompt": "c", "effort": None}], shared_system=None, cache_shared_system=False,
                         model=MODEL, max_tokens=100, effort="low", thinking="adaptive")
    assert [s.params["output_config"] for s in specs] == [{"effort": "low"}, {"effort": "high"}, {"effort": "low"}]
    assert [s.params["thinking"]["type"] for s in specs] == ["adaptive", "between_tools", "adaptive"]
    assert client_env.requests == []


def test_the_rules_are_checked_once_per_distinct_setting_and_stay_fast() -> None:
    import time

    prompts = [{"prompt": f"p{i}", "effort": "low" if i % 2 else None} for i in range(10_000)]
    started = time.perf_counter()
    specs = prompt_specs(prompts, shared_system="S.", cache_shared_system=True, model=MODEL, max_tokens=100)
    assert len(specs) == 10_000 and specs[1].params["output_config"] == {"effort": "low"}
    assert time.perf_counter() - started < 5.0  # generous: about 0.1 s on a laptop
    with pytest.raises(ValueError, match=r"prompts\[9999\]"):
        prompt_specs(prompts[:-1] + [{"prompt": "x", "effort": "bogus"}], shared_system=None,
                     cache_shared_system=False, model=MODEL, max_tokens=100)


# --------------------------------------------------------------------------- the catalogue's view
def test_available_models_come_from_the_catalogue() -> None:
    assert MODEL in AVAILABLE_MODELS and AVAILABLE_MODELS == tuple(cc.get_available_models()[: len(AVAILABLE_MODELS)])
    assert all(CATALOGUE[m].lifecycle in ("active", "legacy") and CATALOGUE[m].alias_of is None
               for m in AVAILABLE_MODELS)
    assert list(AVAILABLE_MODELS) == [m for m in CATALOGUE if m in AVAILABLE_MODELS]  # the SDK's order
    for gone in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-opus-4-0", "claude-haiku-4-5-20251001"):
        assert gone not in AVAILABLE_MODELS


def test_check_request_rules_reads_every_rule_from_the_catalogue() -> None:
    def body(model: str, **extra: Any) -> dict:
        return {"max_tokens": 1000, "messages": Q, "model": model, **extra}

    for model, info in CATALOGUE.items():
        check_request_rules(body(model))
        with pytest.raises(ValueError, match="max_tokens"):
            check_request_rules({**body(model), "max_tokens": info.max_output + 1})
        check_request_rules({**body(model), "max_tokens": info.batch_max_output}, batch=True)
        prefill = body(model, messages=PREFILL)
        if info.rejects_prefill:
            with pytest.raises(ValueError, match=model):
                check_request_rules(prefill)
        else:
            check_request_rules(prefill)
        forced = body(model, tool_choice={"type": "any"})
        if info.rejects_forced_tool_choice:
            with pytest.raises(ValueError, match="tool_choice"):
                check_request_rules(forced)
        else:
            check_request_rules(forced)
        for level in ("low", "medium", "high", "xhigh", "max"):
            config = body(model, output_config={"effort": level})
            if level in info.efforts:
                check_request_rules(config)
            else:
                with pytest.raises(ValueError, match="effort"):
                    check_request_rules(config)
