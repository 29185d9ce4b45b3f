"""Today's API rules in the emulator, from the model catalogue: sampling, prefill, forced tool_choice,
thinking types, effort, max_tokens, unknown models and ``extra_models``, tokenizers, cache minimums,
rate-limit pools, the Models API and the refusal / context-window directives.

Every test talks to the emulator with the real ``anthropic`` SDK (raw HTTP only where the SDK would
refuse to send the request) over 127.0.0.1.
"""
from __future__ import annotations

import json
import math
from typing import Any

import anthropic
import httpx2
import pytest

from anthropic_emulator import DIRECTIVE_KEYS, Emulator, count_text_tokens
from _models import CATALOGUE

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
NEW = "claude-sonnet-5-5"  # thinking on, new tokenizer, refuses prefill and forced tool_choice
OLD = "claude-sonnet-4-6"  # thinking off by default, old tokenizer
LOOKUP = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
USER = [{"role": "user", "content": "hello"}]


def _client(emulator: Emulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0, **kw)


def _params(model: str = NEW, text: str = "hello", **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]}
    params.update(extra)
    return params


def _refused(emulator: Emulator, params: dict[str, Any], *, status: int = 400, **kw: Any) -> str:
    """The error message of a request that must fail; asserts it failed with ``status``."""
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(emulator).messages.create(**params, **kw)
    assert info.value.status_code == status
    return str(info.value.body["error"]["message"])  # type: ignore[index]


def _post(emulator: Emulator, body: Any, path: str = "/v1/messages") -> httpx2.Response:
    return httpx2.post(emulator.base_url + path, json=body, headers={"x-api-key": KEY}, timeout=10)


def _run_batch(emulator: Emulator, requests: list[dict[str, Any]]) -> dict[str, Any]:
    client = _client(emulator)
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    emulator.advance_clock(60)
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    return {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}


# --------------------------------------------------------------------------- sampling parameters


@pytest.mark.parametrize(("name", "value"), [("temperature", 1.0), ("temperature", 0.2), ("top_p", 0.9),
                                             ("top_k", 5), ("temperature", None)])
def test_sampling_parameters_are_refused_at_any_value(emulator: Emulator, name: str, value: Any) -> None:
    message = _refused(emulator, _params(), extra_body={name: value})
    assert message == f"{name}: Extra inputs are not permitted"
    with pytest.raises(anthropic.BadRequestError, match=f"^Error code: 400 .*{name}: Extra inputs are not permitted"):
        _client(emulator).messages.count_tokens(model=NEW, messages=USER, extra_body={name: value})  # type: ignore[arg-type]
    assert emulator.stats()["status_counts"] == {400: 2}


def test_sampling_parameters_make_a_batch_request_errored(emulator: Emulator) -> None:
    results = _run_batch(emulator, [
        {"custom_id": "hot", "params": {**_params(), "temperature": 0.5}},
        {"custom_id": "fine", "params": _params()},
    ])
    assert results["fine"].type == "succeeded"
    assert results["hot"].type == "errored"
    assert results["hot"].error.error.message == "temperature: Extra inputs are not permitted"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- prefill, forced tool_choice


def test_prefill_is_refused_where_the_model_refuses_it(emulator: Emulator) -> None:
    prefill = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Sure,"}]
    expected = ("This model does not support assistant message prefill. "
                "The conversation must end with a user message.")
    assert _refused(emulator, {**_params(), "messages": prefill}) == expected
    assert _refused(emulator, {**_params("claude-opus-4-6"), "messages": prefill}) == expected
    assert not CATALOGUE["claude-haiku-4-5"].rejects_prefill
    msg = _client(emulator).messages.create(**{**_params("claude-haiku-4-5"), "messages": prefill})
    assert msg.stop_reason == "end_turn"


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "lookup"}])
def test_forced_tool_choice_is_refused_where_the_model_refuses_it(emulator: Emulator, choice: dict[str, Any]) -> None:
    expected = 'tool_choice: type "tool" and "any" are not supported for this model.'
    params = _params(tools=[LOOKUP], tool_choice=choice)
    assert _refused(emulator, params) == expected
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.count_tokens(model=NEW, messages=USER, tools=[LOOKUP], tool_choice=choice)  # type: ignore[arg-type]
    assert info.value.body["error"]["message"] == expected  # type: ignore[index]
    assert emulator.stats()["status_counts"] == {400: 2}
    # Haiku 5.5 accepts a forced tool choice, and answers it without thinking
    msg = _client(emulator).messages.create(**{**params, "model": "claude-haiku-5-5"})
    assert [b.type for b in msg.content] == ["tool_use"] and msg.stop_reason == "tool_use"


# --------------------------------------------------------------------------- thinking types and effort


ENABLED = ('"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" and '
           '"output_config.effort" to control thinking behavior.')
DISABLED = ('"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and '
            '"output_config.effort" to control thinking behavior.')
DISABLED_MYTHOS = ('"thinking.type.disabled" is not supported for this model. Thinking defaults to adaptive mode '
                   'when not specified; use "thinking.type.enabled" with "budget_tokens" for extended thinking.')


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK warns of Mythos Preview and Opus 4.5
@pytest.mark.parametrize(("model", "thinking", "expected"), [
    (NEW, {"type": "enabled", "budget_tokens": 2048}, ENABLED),
    ("claude-opus-4-7", {"type": "enabled", "budget_tokens": 2048}, ENABLED),
    ("claude-opus-5-5", {"type": "disabled"}, DISABLED),
    ("claude-fable-5-1", {"type": "disabled"}, DISABLED),
    ("claude-mythos-preview", {"type": "disabled"}, DISABLED_MYTHOS),
    ("claude-haiku-4-5", {"type": "adaptive"}, "adaptive thinking is not supported on this model"),
    ("claude-opus-4-5", {"type": "adaptive"}, "adaptive thinking is not supported on this model"),
])
def test_thinking_types_the_model_refuses(emulator: Emulator, model: str, thinking: dict[str, Any],
                                          expected: str) -> None:
    assert not CATALOGUE[model].accepts_thinking(thinking["type"])
    assert _refused(emulator, _params(model, max_tokens=4096), thinking=thinking) == expected
    assert not emulator.message_requests()[0].usage


def test_disabled_on_sonnet_5_5_points_to_between_tools(emulator: Emulator) -> None:
    message = _refused(emulator, _params(), thinking={"type": "disabled"})
    assert message.startswith('"thinking.type.disabled" is not supported for this model.')
    assert '"thinking.type.between_tools"' in message


@pytest.mark.parametrize(("model", "kind", "effort"), [
    ("claude-haiku-5-5", "disabled", "xhigh"), ("claude-haiku-5-5", "disabled", "max"),
    ("claude-opus-5", "disabled", "max"), (NEW, "between_tools", "xhigh"),
])
def test_thinking_types_accepted_only_up_to_an_effort(emulator: Emulator, model: str, kind: str, effort: str) -> None:
    info = CATALOGUE[model]
    assert info.accepts_thinking(kind, "high") and not info.accepts_thinking(kind, effort)
    message = _refused(emulator, _params(model), thinking={"type": kind}, output_config={"effort": effort})
    assert message.startswith(f'"thinking.type.{kind}" is not supported with "output_config.effort" "{effort}"')
    assert '"high"' in message
    msg = _client(emulator).messages.create(**_params(model), thinking={"type": kind},  # type: ignore[arg-type]
                                            output_config={"effort": "high"})
    assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"  # thinking off: no thinking block


def test_thinking_shape_errors_name_the_field(emulator: Emulator) -> None:
    assert _refused(emulator, _params(), thinking={"type": "sometimes"}).startswith("thinking.type: Input should be")
    assert _refused(emulator, _params("claude-haiku-4-5"), thinking={"type": "enabled", "budget_tokens": 100}) == \
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    assert _refused(emulator, _params("claude-haiku-4-5"), thinking={"type": "disabled", "display": "omitted"}) == \
        "thinking.disabled.display: Extra inputs are not permitted"
    assert _refused(emulator, _params(), thinking={"type": "adaptive", "block_binding": {}}) == \
        "thinking.adaptive.block_binding: Extra inputs are not permitted"


def test_budget_tokens_must_be_below_max_tokens(emulator: Emulator) -> None:
    message = _refused(emulator, _params("claude-haiku-4-5", max_tokens=2000),
                       thinking={"type": "enabled", "budget_tokens": 2000})
    assert message.startswith("`max_tokens` must be greater than `thinking.budget_tokens`.")
    msg = _client(emulator).messages.create(**_params("claude-haiku-4-5", max_tokens=2001),
                                            thinking={"type": "enabled", "budget_tokens": 2000})
    assert msg.content[0].type == "thinking" and msg.content[0].thinking  # summarized on older models


def test_effort_levels_the_model_lacks(emulator: Emulator) -> None:
    assert _refused(emulator, _params("claude-haiku-4-5"), output_config={"effort": "low"}) == \
        "This model does not support the effort parameter."
    message = _refused(emulator, _params("claude-opus-4-6"), output_config={"effort": "xhigh"})
    assert message.startswith('output_config.effort: "xhigh" is not supported for this model.')
    assert "low, medium, high, max" in message
    assert _refused(emulator, _params(), output_config={"effort": "extreme"}).startswith(
        "output_config.effort: Input should be one of")
    assert _client(emulator).messages.create(**_params("claude-opus-4-6"), output_config={"effort": "max"})


# --------------------------------------------------------------------------- max_tokens


def test_max_tokens_above_the_model_maximum(emulator: Emulator) -> None:
    resp = _post(emulator, _params(max_tokens=128_001))
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        f"max_tokens: 128001 > 128000, which is the maximum allowed number of output tokens for {NEW}")
    resp = _post(emulator, _params("claude-haiku-4-5", max_tokens=64_001))
    assert "64001 > 64000" in resp.json()["error"]["message"]
    assert _post(emulator, _params(max_tokens=128_000)).status_code == 200


def test_batch_requests_use_the_batch_maximum(emulator: Emulator) -> None:
    results = _run_batch(emulator, [
        {"custom_id": "big", "params": _params(max_tokens=300_000)},
        {"custom_id": "too-big", "params": _params(max_tokens=300_001)},
        {"custom_id": "fable", "params": _params("claude-fable-5-1", max_tokens=128_001)},
    ])
    assert results["big"].type == "succeeded"
    assert results["too-big"].error.error.message == (  # type: ignore[union-attr]
        f"max_tokens: 300001 > 300000, which is the maximum allowed number of output tokens for {NEW}")
    assert "128001 > 128000" in results["fable"].error.error.message  # type: ignore[union-attr]


# --------------------------------------------------------------------------- unknown models, extra_models


def test_unknown_model_is_a_404_everywhere(emulator: Emulator) -> None:
    assert _refused(emulator, _params("claude-3-opus-20240229"), status=404) == "model: claude-3-opus-20240229"
    with pytest.raises(anthropic.NotFoundError, match="model: claude-future-9"):
        _client(emulator).messages.count_tokens(model="claude-future-9", messages=USER)  # type: ignore[arg-type]
    results = _run_batch(emulator, [{"custom_id": "x", "params": _params("claude-future-9")}])
    assert results["x"].error.error.type == "not_found_error"  # type: ignore[union-attr]
    assert emulator.message_requests()[0].error_type == "not_found_error"


def test_extra_models_behave_like_their_target(emulator: Emulator) -> None:
    emulator.configure(extra_models={"claude-future-9": NEW})
    client = _client(emulator)
    msg = client.messages.create(**_params("claude-future-9"))
    assert msg.model == "claude-future-9"
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.usage.input_tokens == count_text_tokens("hello", NEW)
    assert _refused(emulator, _params("claude-future-9", tools=[LOOKUP], tool_choice={"type": "any"})).startswith(
        'tool_choice: type "tool" and "any"')
    assert client.models.retrieve("claude-future-9").max_tokens == CATALOGUE[NEW].max_output
    emulator.reset()
    assert _refused(emulator, _params("claude-future-9"), status=404) == "model: claude-future-9"


def test_extra_models_setting_is_checked() -> None:
    with pytest.raises(TypeError, match="extra_models"):
        Emulator(extra_models=["claude-future-9"])
    with pytest.raises(ValueError, match="not in the model catalogue"):
        Emulator(extra_models={"claude-future-9": "claude-nothing"})
    with pytest.raises(ValueError, match="already in the model catalogue"):
        Emulator(extra_models={NEW: OLD})
    assert Emulator(extra_models={"x-1": OLD}).settings["extra_models"] == {"x-1": OLD}


# --------------------------------------------------------------------------- tokenizer and cache minimums


def test_tokenizer_follows_the_model(emulator: Emulator) -> None:
    client = _client(emulator)
    text = "a" * 1000
    old = client.messages.count_tokens(model=OLD, messages=[{"role": "user", "content": text}]).input_tokens
    new = client.messages.count_tokens(model=NEW, messages=[{"role": "user", "content": text}]).input_tokens
    assert (old, new) == (250, 325) == (count_text_tokens(text, OLD), count_text_tokens(text, NEW))
    assert count_text_tokens(text) == 250  # the old rule without a model
    assert client.messages.create(**_params(NEW, text)).usage.input_tokens == 325
    odd = "b" * 7
    assert count_text_tokens(odd, NEW) == math.ceil(7 / 4 * 1.3) == 3 and count_text_tokens(odd, OLD) == 2


@pytest.mark.parametrize(("model", "cached"), [(NEW, True), (OLD, False), ("claude-opus-4-7", False)])
def test_cache_minimum_follows_the_model(emulator: Emulator, model: str, cached: bool) -> None:
    system = "x" * 2400  # 600 tokens old, 780 new: above Sonnet 5.5's 512, below 1024 and 2048
    params = _params(model, system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}])
    usage = _client(emulator).messages.create(**params).usage
    assert (usage.cache_creation_input_tokens > 0) is cached
    assert usage.cache_creation_input_tokens + usage.input_tokens == count_text_tokens(system, model) + \
        count_text_tokens("hello", model)


# --------------------------------------------------------------------------- rate-limit pools


def test_models_of_one_pool_share_their_limits(emulator: Emulator) -> None:
    assert CATALOGUE["claude-opus-4-7"].pool == CATALOGUE["claude-opus-4-6"].pool == "opus-4"
    emulator.configure(rate_limit_rpm=2)
    client = _client(emulator)
    first = client.messages.with_raw_response.create(**_params("claude-opus-4-7"))
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    client.messages.create(**_params("claude-opus-4-6"))
    message = _refused(emulator, _params("claude-opus-4-8"), status=429)
    assert "2 requests per minute" in message and "pool opus-4" in message
    other = client.messages.with_raw_response.create(**_params("claude-opus-5-5"))  # a pool of its own
    assert other.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert emulator.stats()["rate_limited"] == 1


# --------------------------------------------------------------------------- Models API


def test_models_list_and_retrieve_through_the_sdk(emulator: Emulator) -> None:
    client = _client(emulator)
    everything = [m.id for m in client.models.list()]
    served = [mid for mid, info in CATALOGUE.items() if info.api_lifecycle in ("active", "deprecated")]
    assert everything == served and NEW in everything
    page = client.models.list(limit=5)
    assert [m.id for m in page.data] == served[:5] and page.has_more and page.last_id == served[4]
    nxt = client.models.list(limit=5, after_id=page.last_id)  # type: ignore[arg-type]
    assert [m.id for m in nxt.data] == served[5:10]
    before = client.models.list(limit=2, before_id=served[5])
    assert [m.id for m in before.data] == served[3:5]
    deprecated = client.models.list(lifecycle=["deprecated"])
    assert {m.id for m in deprecated} == {mid for mid, i in CATALOGUE.items() if i.api_lifecycle == "deprecated"}
    assert all(m.lifecycle == "deprecated" and m.retires_at is not None for m in deprecated)
    assert [m.id for m in client.models.list(lifecycle=["retired"])] == []

    sonnet = client.models.retrieve(NEW)
    assert (sonnet.type, sonnet.display_name, sonnet.line, sonnet.max_tokens, sonnet.max_input_tokens) == \
        ("model", "Claude Sonnet 5.5", "sonnet", 128_000, 1_000_000)
    assert sonnet.created_at.year == 2026 and sonnet.lifecycle == "active" and sonnet.retires_at is None
    caps = sonnet.capabilities
    assert caps is not None and caps.batch.supported and caps.structured_outputs.supported
    assert caps.thinking.supported and caps.thinking.types.between_tools.supported
    assert not caps.thinking.types.disabled.supported and not caps.thinking.types.enabled.supported
    assert caps.effort.supported and caps.effort.xhigh is not None and caps.effort.xhigh.supported
    opus46 = client.models.retrieve("claude-opus-4-6").capabilities
    assert opus46 is not None and opus46.effort.xhigh is not None and not opus46.effort.xhigh.supported
    haiku = client.models.retrieve("claude-haiku-4-5-20251001")
    assert haiku.id == "claude-haiku-4-5-20251001" and haiku.capabilities is not None
    assert not haiku.capabilities.effort.supported and not haiku.capabilities.thinking.types.adaptive.supported
    with pytest.raises(anthropic.NotFoundError, match="model: claude-nothing"):
        client.models.retrieve("claude-nothing")
    with pytest.raises(anthropic.BadRequestError, match="lifecycle"):
        client.models.list(lifecycle=["gone"])  # type: ignore[list-item]


def test_models_api_capabilities_match_the_request_rules(emulator: Emulator) -> None:
    """A false flag is exactly a 400 (SDK types/thinking_types.py): checked for every catalogued model."""
    client = _client(emulator)
    for model in client.models.list():
        assert model.capabilities is not None
        info = CATALOGUE[model.id]
        for kind in ("adaptive", "enabled", "disabled", "between_tools"):
            assert getattr(model.capabilities.thinking.types, kind).supported == (kind in info.thinking_types)
        assert model.capabilities.effort.supported == bool(info.efforts)


# --------------------------------------------------------------------------- refusal and stop directives


@pytest.mark.parametrize("stream", [False, True])
def test_refuse_directive_is_a_200_refusal(emulator: Emulator, stream: bool) -> None:
    client = _client(emulator)
    params = _params(text="[[refuse category=cyber]] write malware")
    if stream:
        with client.messages.stream(**params) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**params)
    assert msg.stop_reason == "refusal" and msg.content == []
    assert msg.stop_details is not None and msg.stop_details.type == "refusal"
    assert msg.stop_details.category == "cyber" and "cyber" in (msg.stop_details.explanation or "")
    assert msg.usage.input_tokens == count_text_tokens("[[refuse category=cyber]] write malware", NEW)
    assert msg.usage.output_tokens == 0
    assert emulator.message_requests()[0].status == 200


def test_refusal_streams_stop_details_in_message_delta(emulator: Emulator) -> None:
    body = {**_params(text="[[refuse]] hi"), "stream": True}
    with httpx2.stream("POST", emulator.base_url + "/v1/messages", json=body, headers={"x-api-key": KEY},
                       timeout=10) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    delta = events[2]["delta"]
    assert delta["stop_reason"] == "refusal"
    assert delta["stop_details"] == {"type": "refusal", "category": None, "explanation": None}


def test_refusal_directive_values_are_checked(emulator: Emulator) -> None:
    assert _refused(emulator, _params(text="[[refuse category=nope]] x")).startswith("directive category")
    assert {"refuse", "category", "think", "stop"} <= set(DIRECTIVE_KEYS)
    msg = _client(emulator).messages.create(**_params(text="[[refuse times=1]] again"))
    assert msg.stop_reason == "refusal"
    assert _client(emulator).messages.create(**_params(text="[[refuse times=1]] again")).stop_reason == "end_turn"


def test_stop_directive_gives_context_window_exceeded(emulator: Emulator) -> None:
    msg = _client(emulator).messages.create(**_params(OLD, "one two three four five [[stop=model_context_window_exceeded]]"))
    assert msg.stop_reason == "model_context_window_exceeded"
    assert msg.content[0].text == "Echo: one two"  # the first half of "Echo: one two three four five"
    assert msg.usage.output_tokens == 3
    assert _refused(emulator, _params(text="[[stop=end_turn]] x")).startswith("directive stop")


# --------------------------------------------------------------------------- transport


def test_bearer_and_traceparent_are_accepted(emulator: Emulator) -> None:
    headers = {"authorization": "Bearer sk-ant-anything", "anthropic-version": "2026-10-21",
               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    resp = httpx2.post(emulator.base_url + "/v1/messages", json=_params(), headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.json()["content"][-1]["text"] == "Echo: hello"
    resp = httpx2.get(emulator.base_url + "/v1/models/" + NEW, headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.json()["id"] == NEW
