"""The bad-input catalogue: every public entry point refuses bad arguments before anything is
sent, with ``TypeError`` for a wrong type and ``ValueError`` for a bad value, naming the parameter.

Each case asserts the exact exception class (a ``TypeError`` is not accepted where a
``ValueError`` is due, and back), the words its message must hold (the parameter, and where it
matters the model or the JSON path), and that no request of any kind (messages, count_tokens,
batches) reached the emulator.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest

import claude_client as cc
import orchestration
import task_state
from claude_client import ConversationThread, InterruptToken
from message_batches import invoke_batch
from orchestration import ConcurrencyLimiter, RetryPolicy, invoke_parallel_managed, invoke_with_retry

pytestmark = pytest.mark.timeout(60)

MODEL = cc.DEFAULT_MODEL  # claude-sonnet-5-5: refuses prefill, forced tool choice, disabled thinking


class Case(NamedTuple):
    id: str
    call: Callable[[Path], Any]
    exc: type
    words: tuple


CASES: list[Case] = []


def case(id: str, call: Callable[[Path], Any], exc: type, *words: str) -> None:
    assert exc in (TypeError, ValueError)
    CASES.append(Case(id, call, exc, words))


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


Q = {"role": "user", "content": "Question?"}
USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}}]}

# --------------------------------------------------------------------------- the single calls
# (kwargs, exception, words) for every single-call entry point.
SINGLE_BAD: list[tuple[str, dict, type, tuple]] = [
    ("prompt-int", {"prompt": 12}, TypeError, ("prompt",)),
    ("prompt-empty", {"prompt": ""}, ValueError, ("prompt",)),
    ("prompt-blank", {"prompt": "   "}, ValueError, ("prompt",)),
    ("prompt-surrogate", {"prompt": "hi \ud800"}, ValueError, ("prompt", "surrogate")),
    ("prompt-and-messages", {"prompt": "a", "messages": [Q]}, ValueError, ("prompt", "messages")),
    ("model-int", {"model": 3}, TypeError, ("model",)),
    ("model-empty", {"model": " "}, ValueError, ("model",)),
    ("max_tokens-str", {"max_tokens": "100"}, TypeError, ("max_tokens",)),
    ("max_tokens-zero", {"max_tokens": 0}, ValueError, ("max_tokens",)),
    ("max_tokens-absurd", {"max_tokens": 10**30}, ValueError, ("max_tokens", MODEL)),
    ("max_tokens-above-model", {"max_tokens": 200_000}, ValueError, ("max_tokens", MODEL, "128000")),
    ("temperature-str", {"temperature": "hot"}, TypeError, ("temperature",)),
    ("temperature-set", {"temperature": 0.5}, ValueError, ("temperature", "effort=")),
    ("top_p", {"top_p": 0.9}, ValueError, ("top_p", "effort=")),
    ("top_k", {"top_k": 3}, ValueError, ("top_k", "effort=")),
    ("system-int", {"system": 5}, TypeError, ("system",)),
    ("system-cache_control-bogus", {"system": [{"type": "text", "text": "s", "cache_control": "bogus"}]},
     TypeError, ("system[0]['cache_control']",)),
    ("system-cache_control-type", {"system": [{"type": "text", "text": "s", "cache_control": {"type": "forever"}}]},
     ValueError, ("cache_control", "ephemeral")),
    ("system-cache_control-ttl", {"system": [{"type": "text", "text": "s",
                                              "cache_control": {"type": "ephemeral", "ttl": "2h"}}]},
     ValueError, ("ttl",)),
    ("cache_system-str", {"cache_system": "yes"}, TypeError, ("cache_system",)),
    ("cache_prompt-int", {"cache_prompt": 1}, TypeError, ("cache_prompt",)),
    ("messages-str", {"prompt": None, "messages": "hi"}, TypeError, ("messages",)),
    ("messages-unknown-key", {"prompt": None, "messages": [{"role": "user", "content": "x", "name": "bob"}]},
     ValueError, ("messages[0]", "'name'")),
    ("messages-role-system", {"prompt": None, "messages": [{"role": "system", "content": "x"}]},
     ValueError, ("messages[0]", "role")),
    ("messages-start-assistant", {"prompt": None, "messages": [{"role": "assistant", "content": "x"}, Q]},
     ValueError, ("messages[0]", "user")),
    ("messages-block-type", {"prompt": None, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
     ValueError, ("messages[0]['content'][0]['type']", "'bogus'")),
    ("messages-block-cache_control", {"prompt": None, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": "bogus"}]}]},
     TypeError, ("messages[0]['content'][0]['cache_control']",)),
    ("messages-tool_result-alone", {"prompt": None, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "3"}]}]},
     ValueError, ("messages[0]", "toolu_9", "tool_use")),
    ("messages-tool_result-wrong-id", {"prompt": None, "messages": [
        Q, USE, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "3"}]}]},
     ValueError, ("messages[2]", "toolu_2")),
    ("messages-tool_use-unanswered", {"prompt": None, "messages": [Q, USE, {"role": "user", "content": "next"}]},
     ValueError, ("messages[2]", "toolu_1")),
    ("messages-tool_use-from-user", {"prompt": None, "messages": [
        {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "add", "input": {}}]}]},
     ValueError, ("messages[0]['content'][0]", "tool_use")),
    ("messages-prefill", {"prompt": None, "messages": [Q, {"role": "assistant", "content": "The answer"}]},
     ValueError, ("messages", MODEL, "prefill")),
    ("effort-bogus", {"effort": "extreme"}, ValueError, ("effort",)),
    ("effort-int", {"effort": 3}, TypeError, ("effort",)),
    ("effort-model", {"effort": "xhigh", "model": "claude-opus-4-6"}, ValueError, ("effort", "claude-opus-4-6")),
    ("thinking-enabled-str", {"thinking": "enabled"}, ValueError, ("thinking", "budget_tokens")),
    ("thinking-int", {"thinking": 5}, TypeError, ("thinking",)),
    ("thinking-type", {"thinking": {"type": "deep"}}, ValueError, ("thinking['type']",)),
    ("thinking-budget-low", {"thinking": {"type": "enabled", "budget_tokens": 512}, "model": "claude-sonnet-4-6"},
     ValueError, ("budget_tokens", "1024")),
    ("thinking-budget-over-max", {"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 4096,
                                  "model": "claude-sonnet-4-6"}, ValueError, ("budget_tokens", "max_tokens")),
    ("thinking-display", {"thinking": {"type": "adaptive", "display": "loud"}}, ValueError, ("display",)),
    ("thinking-disabled-display", {"thinking": {"type": "disabled", "display": "omitted"}}, ValueError,
     ("thinking", "display")),
    ("thinking-model", {"thinking": "disabled"}, ValueError, ("thinking", MODEL)),
    ("tool_choice-str", {"tool_choice": "any"}, TypeError, ("tool_choice",)),
    ("tool_choice-type", {"tool_choice": {"type": "always"}}, ValueError, ("tool_choice",)),
    ("tool_choice-forced", {"tool_choice": {"type": "any"}, "tools": [add]}, ValueError, ("tool_choice", MODEL)),
    ("output_config-key", {"output_config": {"effort": "low", "speed": "fast"}}, ValueError, ("output_config",)),
    ("cache_control-bogus", {"cache_control": "bogus"}, TypeError, ("cache_control",)),
    ("output_schema-int", {"output_schema": 42}, TypeError, ("output_schema",)),
    ("output_schema-required-str", {"output_schema": {"type": "object", "required": "a"}}, ValueError,
     ("output_schema", "$.required")),
    ("output_schema-type", {"output_schema": {"type": "objekt"}}, ValueError, ("output_schema", "$.type", "objekt")),
    ("output_schema-nested", {"output_schema": {"type": "object", "properties": {
        "a": {"type": "string", "minLength": -1}}}}, ValueError, ("output_schema", "$.properties.a.minLength")),
    ("output_schema-ref", {"output_schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}}},
     ValueError, ("output_schema", "$ref")),
    ("output_schema-properties-list", {"output_schema": {"type": "object", "properties": []}}, ValueError,
     ("output_schema", "$.properties")),
    ("output_schema-not-a-schema", {"output_schema": {"name": "x"}}, ValueError, ("output_schema",)),
    ("stall_timeout-str", {"stall_timeout": "5"}, TypeError, ("stall_timeout",)),
    ("stall_timeout-negative", {"stall_timeout": -1}, ValueError, ("stall_timeout",)),
    ("interrupt_token-str", {"interrupt_token": "stop"}, TypeError, ("interrupt_token",)),
    ("tools-str", {"tools": "add"}, TypeError, ("tools",)),
    ("max_tool_turns-zero", {"max_tool_turns": 0, "tools": [add]}, ValueError, ("max_tool_turns",)),
    ("max_cost_usd-str", {"max_cost_usd": "1"}, TypeError, ("max_cost_usd",)),
    ("max_cost_usd-negative", {"max_cost_usd": -1}, ValueError, ("max_cost_usd",)),
    ("rate_limits-dict", {"rate_limits": {"rpm": 5}}, TypeError, ("rate_limits",)),
]

SINGLE_CALLS: dict[str, Callable[..., Any]] = {
    "invoke_claude": cc.invoke_claude,
    "invoke_claude_streaming": cc.invoke_claude_streaming,
    "invoke_claude_json": cc.invoke_claude_json,
    "invoke_with_retry": invoke_with_retry,
}


def _single(fn: Callable[..., Any], kwargs: dict) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        kw = dict(kwargs)
        return fn(kw.pop("prompt", "Hello"), **kw)

    return call


for _name, _fn in SINGLE_CALLS.items():
    for _id, _kwargs, _exc, _words in SINGLE_BAD:
        case(f"{_name}-{_id}", _single(_fn, _kwargs), _exc, *_words)

case("invoke_claude-streaming-int", lambda tmp: cc.invoke_claude("x", streaming=1), TypeError, "streaming")
case("invoke_claude-stream-kwarg", lambda tmp: cc.invoke_claude("x", stream=True), TypeError, "stream")
case("invoke_claude_streaming-callback", lambda tmp: cc.invoke_claude_streaming("x", callback="print"),
     TypeError, "callback")
case("invoke_with_retry-max_retries-str", lambda tmp: invoke_with_retry("x", max_retries="3"), TypeError,
     "max_retries")
case("invoke_with_retry-max_retries-negative", lambda tmp: invoke_with_retry("x", max_retries=-1), ValueError,
     "max_retries")
case("invoke_with_retry-policy-and-settings",
     lambda tmp: invoke_with_retry("x", policy=RetryPolicy(max_retries=1), base_delay_ms=5), ValueError, "policy=")
case("invoke_with_retry-jitter", lambda tmp: invoke_with_retry("x", jitter="sometimes"), ValueError, "jitter")
case("invoke_with_retry-is_continuation", lambda tmp: invoke_with_retry("x", is_continuation="yes"), TypeError,
     "is_continuation")

# --------------------------------------------------------------------------- the fan-outs
# (prompts, kwargs, exception, words) for every entry point that takes a list of prompt dicts.
PROMPTS_BAD: list[tuple[str, Any, dict, type, tuple]] = [
    ("prompts-str", "hello", {}, TypeError, ("prompts",)),
    ("prompts-dict", {"prompt": "x"}, {}, TypeError, ("prompts",)),
    ("prompt-item-str", ["hello"], {}, TypeError, ("prompts[0]",)),
    ("prompt-missing", [{"system": "s"}], {}, ValueError, ("prompts[0]", "'prompt'")),
    ("prompt-unknown-key", [{"prompt": "x", "temprature": 0.5}], {}, ValueError, ("prompts[0]", "temprature")),
    ("prompt-empty", [{"prompt": "ok"}, {"prompt": ""}], {}, ValueError, ("prompts[1]['prompt']",)),
    ("prompt-temperature", [{"prompt": "x", "temperature": 0.2}], {}, ValueError,
     ("prompts[0]['temperature']", "effort=")),
    ("prompt-max_tokens-above-model", [{"prompt": "x", "max_tokens": 200_000}], {}, ValueError,
     ("max_tokens", MODEL, "prompts[0]")),
    ("prompt-max_tokens-str", [{"prompt": "x", "max_tokens": "9"}], {}, TypeError, ("prompts[0]['max_tokens']",)),
    ("prompt-effort", [{"prompt": "x", "effort": "huge"}], {}, ValueError, ("prompts[0]['effort']",)),
    ("prompt-effort-model", [{"prompt": "x", "model": "claude-opus-4-6", "effort": "xhigh"}], {}, ValueError,
     ("effort", "claude-opus-4-6")),
    ("prompt-thinking-model", [{"prompt": "x", "thinking": "disabled"}], {}, ValueError, ("thinking", MODEL)),
    ("prompt-thinking-type", [{"prompt": "x", "thinking": 7}], {}, TypeError, ("prompts[0]['thinking']",)),
    ("prompt-model-int", [{"prompt": "x", "model": 5}], {}, TypeError, ("prompts[0]['model']",)),
    ("prompt-cache_prompt", [{"prompt": "x", "cache_prompt": "yes"}], {}, TypeError, ("prompts[0]['cache_prompt']",)),
    ("prompt-system-cache_control", [{"prompt": "x", "system": [
        {"type": "text", "text": "s", "cache_control": "bogus"}]}], {}, TypeError, ("cache_control",)),
    ("max_tokens-absurd", [{"prompt": "x"}], {"max_tokens": 10**30}, ValueError, ("max_tokens", MODEL)),
    ("model-empty", [{"prompt": "x"}], {"model": ""}, ValueError, ("model",)),
    ("shared_system-int", [{"prompt": "x"}], {"shared_system": 5}, TypeError, ("shared_system",)),
    ("cache_shared_system-str", [{"prompt": "x"}], {"cache_shared_system": "yes"}, TypeError,
     ("cache_shared_system",)),
]

FANOUTS: dict[str, Callable[..., Any]] = {
    "invoke_parallel": cc.invoke_parallel,
    "invoke_parallel_streaming": cc.invoke_parallel_streaming,
    "invoke_parallel_interruptible": cc.invoke_parallel_interruptible,
    "invoke_parallel_managed": invoke_parallel_managed,
    "invoke_batch": lambda prompts, **kw: invoke_batch(prompts, poll_interval=0.05, **kw),
    "estimate_run_cost": cc.estimate_run_cost,
}


def _fanout(fn: Callable[..., Any], prompts: Any, kwargs: dict) -> Callable[[Path], Any]:
    return lambda tmp: fn(prompts, **kwargs)


for _name, _fn in FANOUTS.items():
    for _id, _prompts, _kwargs, _exc, _words in PROMPTS_BAD:
        if _name == "invoke_batch" and _id == "prompt-max_tokens-above-model":
            continue  # within a batch's own maximum (300000): see invoke_batch-max_tokens-above-batch-max
        case(f"{_name}-{_id}", _fanout(_fn, _prompts, _kwargs), _exc, *_words)

ONE = [{"prompt": "x"}]
SCHEMA_BAD = {"type": "object", "required": "a"}
for _name in ("invoke_parallel", "invoke_parallel_streaming", "invoke_parallel_interruptible",
              "invoke_parallel_managed", "invoke_batch"):
    _fn = FANOUTS[_name]
    case(f"{_name}-output_schema", _fanout(_fn, ONE, {"output_schema": SCHEMA_BAD}), ValueError,
         "output_schema", "$.required")
    case(f"{_name}-journal-missing-dir",
         lambda tmp, fn=_fn: fn(ONE, journal=str(tmp / "no" / "such" / "dir" / "run.journal")), ValueError, "journal")
    case(f"{_name}-journal-a-directory", lambda tmp, fn=_fn: fn(ONE, journal=tmp), ValueError, "journal")
    case(f"{_name}-journal-int", _fanout(_fn, ONE, {"journal": 5}), TypeError, "journal")
    case(f"{_name}-return_exceptions", _fanout(_fn, ONE, {"return_exceptions": "yes"}), TypeError,
         "return_exceptions")
    case(f"{_name}-interrupt_token", _fanout(_fn, ONE, {"interrupt_token": object()}), TypeError, "interrupt_token")
    case(f"{_name}-retry_failed", _fanout(_fn, ONE, {"retry_failed": 1}), TypeError, "retry_failed")
    case(f"{_name}-max_cost_usd", _fanout(_fn, ONE, {"max_cost_usd": float("nan")}), ValueError, "max_cost_usd")
    case(f"{_name}-progress", _fanout(_fn, ONE, {"progress": "yes"}), TypeError, "progress")

for _name in ("invoke_parallel", "invoke_parallel_streaming", "invoke_parallel_interruptible",
              "invoke_parallel_managed"):
    _fn = FANOUTS[_name]
    case(f"{_name}-max_workers-str", _fanout(_fn, ONE, {"max_workers": "4"}), TypeError, "max_workers")
    case(f"{_name}-max_workers-zero", _fanout(_fn, ONE, {"max_workers": 0}), ValueError, "max_workers")
    case(f"{_name}-stall_timeout", _fanout(_fn, ONE, {"stall_timeout": 0}), ValueError, "stall_timeout")
    case(f"{_name}-tools", _fanout(_fn, ONE, {"tools": {"add": add}}), TypeError, "tools")
    case(f"{_name}-cache_pilot", _fanout(_fn, ONE, {"cache_pilot": "no"}), TypeError, "cache_pilot")
    case(f"{_name}-journal-unreadable", lambda tmp, fn=_fn: fn(ONE, journal=_garbage_journal(tmp)), ValueError,
         "journal")


def _garbage_journal(tmp: Path) -> Path:
    """A journal path holding bytes that are no journal (root can read any file, so 'unreadable'
    is what the journal reader cannot make sense of)."""
    path = tmp / "garbage.journal"
    path.write_bytes(b"\xff\xfe\x00not a journal\n\x00\x01")
    return path


case("invoke_parallel_streaming-callbacks-str",
     lambda tmp: cc.invoke_parallel_streaming(ONE, callbacks="print"), TypeError, "callbacks")
case("invoke_parallel_streaming-callbacks-count",
     lambda tmp: cc.invoke_parallel_streaming(ONE, callbacks=[None, None]), ValueError, "callbacks")
case("invoke_parallel_streaming-callbacks-item",
     lambda tmp: cc.invoke_parallel_streaming(ONE, callbacks=["x"]), TypeError, "callbacks[0]")
case("invoke_parallel_managed-task_id-duplicate",
     lambda tmp: invoke_parallel_managed([{"prompt": "a", "task_id": "t"}, {"prompt": "b", "task_id": "t"}]),
     ValueError, "task_id")
case("invoke_parallel_managed-concurrency_limiter",
     lambda tmp: invoke_parallel_managed(ONE, concurrency_limiter=4), TypeError, "concurrency_limiter")
case("invoke_parallel_managed-tracker", lambda tmp: invoke_parallel_managed(ONE, tracker={}), TypeError, "tracker")
case("invoke_parallel_managed-max_retries", lambda tmp: invoke_parallel_managed(ONE, max_retries="2"), TypeError,
     "max_retries")
case("invoke_parallel_managed-reconcile", lambda tmp: invoke_parallel_managed(ONE, reconcile="all"), TypeError,
     "reconcile")
case("invoke_parallel_managed-on_stall", lambda tmp: invoke_parallel_managed(ONE, on_stall=3), TypeError,
     "on_stall")
case("invoke_batch-poll_interval", lambda tmp: invoke_batch(ONE, poll_interval=0), ValueError, "poll_interval")
case("invoke_batch-on_interrupt", lambda tmp: invoke_batch(ONE, on_interrupt="stop"), ValueError, "on_interrupt")
case("invoke_batch-max_batch_requests", lambda tmp: invoke_batch(ONE, max_batch_requests=0), ValueError,
     "max_batch_requests")
case("invoke_batch-max_tokens-above-batch-max", lambda tmp: invoke_batch(ONE, max_tokens=400_000), ValueError,
     "max_tokens", MODEL)
case("invoke_batch-on_progress", lambda tmp: invoke_batch(ONE, on_progress="print"), TypeError, "on_progress")
case("invoke_batch-timeout", lambda tmp: invoke_batch(ONE, timeout=-1), ValueError, "timeout")
case("estimate_run_cost-client", lambda tmp: cc.estimate_run_cost(ONE, client="x"), TypeError, "client")
case("estimate_run_cost-unpriced-model", lambda tmp: cc.estimate_run_cost(ONE, model="claude-future-9"),
     ValueError, "claude-future-9")
case("estimate_run_cost-use_count_tokens", lambda tmp: cc.estimate_run_cost(ONE, use_count_tokens="yes"),
     TypeError, "use_count_tokens")

# --------------------------------------------------------------------------- delegate_tool
case("delegate_tool-max_depth-str", lambda tmp: cc.delegate_tool(max_depth="1"), TypeError, "max_depth")
case("delegate_tool-max_depth-zero", lambda tmp: cc.delegate_tool(max_depth=0), ValueError, "max_depth")
case("delegate_tool-unknown-option", lambda tmp: cc.delegate_tool(temperature=0.5), TypeError, "temperature")
case("delegate_tool-model", lambda tmp: cc.delegate_tool(model=5), TypeError, "model")
case("delegate_tool-max_tokens", lambda tmp: cc.delegate_tool(max_tokens=200_000), ValueError, "max_tokens", MODEL)
case("delegate_tool-max_workers", lambda tmp: cc.delegate_tool(max_workers=0), ValueError, "max_workers")
case("delegate_tool-shared_system", lambda tmp: cc.delegate_tool(shared_system=5), TypeError, "shared_system")

# --------------------------------------------------------------------------- ConversationThread
case("ConversationThread-model", lambda tmp: ConversationThread(model=5), TypeError, "model")
case("ConversationThread-max_tokens", lambda tmp: ConversationThread(max_tokens=0), ValueError, "max_tokens")
case("ConversationThread-temperature", lambda tmp: ConversationThread(temperature=0.5), ValueError, "temperature",
     "effort=")
case("ConversationThread-cache_system", lambda tmp: ConversationThread(cache_system="yes"), TypeError,
     "cache_system")
case("ConversationThread-max_turns", lambda tmp: ConversationThread(max_turns=0), ValueError, "max_turns")
case("ConversationThread-continuation_prompt-int", lambda tmp: ConversationThread(continuation_prompt=5), TypeError,
     "continuation_prompt")
case("ConversationThread-continuation_prompt-blank", lambda tmp: ConversationThread(continuation_prompt=" "),
     ValueError, "continuation_prompt")
case("ConversationThread-system", lambda tmp: ConversationThread(system=[{"type": "image"}]), ValueError, "system")
case("ConversationThread-tools", lambda tmp: ConversationThread(tools="add"), TypeError, "tools")
case("ConversationThread-max_tokens-above-model", lambda tmp: ConversationThread(max_tokens=200_000).send("x"),
     ValueError, "max_tokens", MODEL)
case("ConversationThread.send-int", lambda tmp: ConversationThread().send(5), TypeError, "user_message")
case("ConversationThread.send-empty", lambda tmp: ConversationThread().send(""), ValueError, "user_message")
case("ConversationThread.send-cache_history", lambda tmp: ConversationThread().send("x", cache_history="yes"),
     TypeError, "cache_history")
case("ConversationThread.send-output_schema",
     lambda tmp: ConversationThread().send("x", output_schema=SCHEMA_BAD), ValueError, "output_schema", "$.required")
case("ConversationThread.send-block-type", lambda tmp: ConversationThread().send([{"type": "bogus"}]), ValueError,
     "user_message", "bogus")
case("ConversationThread.send-cache_control",
     lambda tmp: ConversationThread().send([{"type": "text", "text": "x", "cache_control": "bogus"}]), TypeError,
     "cache_control")
case("ConversationThread.send_streaming-callback", lambda tmp: ConversationThread().send_streaming("x", callback=1),
     TypeError, "callback")
case("ConversationThread.send_streaming-stall_timeout",
     lambda tmp: ConversationThread().send_streaming("x", stall_timeout=0), ValueError, "stall_timeout")
case("ConversationThread.send_streaming-interrupt_token",
     lambda tmp: ConversationThread().send_streaming("x", interrupt_token="t"), TypeError, "interrupt_token")
case("ConversationThread.send_continuation-guidance",
     lambda tmp: ConversationThread().send_continuation(guidance=5), TypeError, "guidance")


def _saved(tmp: Path, messages: list, **settings: Any) -> Path:
    """A file as ConversationThread.save writes it, with ``messages`` as the history."""
    base = {"system": None, "model": MODEL, "max_tokens": 4096, "temperature": 1.0, "cache_system": True,
            "max_turns": None, "continuation_prompt": "Continue from where you left off."}
    data = {"format": "orchestrating-agents/conversation", "version": 1, "settings": {**base, **settings},
            "messages": messages, "usage": {}, "cost_usd": 0.0}
    path = tmp / "chat.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "An answer."}]}
case("ConversationThread.load-missing", lambda tmp: ConversationThread.load(tmp / "none.json"), ValueError,
     "none.json")
case("ConversationThread.load-not-a-save", lambda tmp: ConversationThread.load(_write(tmp, "[1, 2]")), ValueError,
     "ConversationThread")
case("ConversationThread.load-starts-with-assistant",
     lambda tmp: ConversationThread.load(_saved(tmp, [ANSWER, Q])).send("x"), ValueError, "messages", "user")
case("ConversationThread.load-unknown-message-key",
     lambda tmp: ConversationThread.load(_saved(tmp, [{**Q, "name": "bob"}, ANSWER])).send("x"), ValueError, "name")
case("ConversationThread.load-block-type",
     lambda tmp: ConversationThread.load(_saved(tmp, [Q, {"role": "assistant", "content": [{"type": "bogus"}]}]))
     .send("x"), ValueError, "bogus")
case("ConversationThread.load-max_tokens",
     lambda tmp: ConversationThread.load(_saved(tmp, [], max_tokens=0)), ValueError, "max_tokens")
case("ConversationThread.load-tool_result-alone", lambda tmp: ConversationThread.load(_saved(tmp, [
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "3"}]}, ANSWER]))
     .send("x"), ValueError, "toolu_9")


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "other.json"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- orchestration objects
case("RetryPolicy-max_retries-str", lambda tmp: RetryPolicy(max_retries="3"), TypeError, "max_retries")
case("RetryPolicy-max_retries-negative", lambda tmp: RetryPolicy(max_retries=-1), ValueError, "max_retries")
case("RetryPolicy-base_delay_ms-str", lambda tmp: RetryPolicy(base_delay_ms="1"), TypeError, "base_delay_ms")
case("RetryPolicy-base_delay_ms-negative", lambda tmp: RetryPolicy(base_delay_ms=-5), ValueError, "base_delay_ms")
case("RetryPolicy-max_delay_ms-nan", lambda tmp: RetryPolicy(max_delay_ms=float("nan")), ValueError, "max_delay_ms")
case("RetryPolicy-max_below_base", lambda tmp: RetryPolicy(base_delay_ms=500, max_delay_ms=10), ValueError,
     "max_delay_ms")
case("RetryPolicy-jitter-bogus", lambda tmp: RetryPolicy(jitter="sometimes"), ValueError, "jitter")
case("RetryPolicy-jitter-int", lambda tmp: RetryPolicy(jitter=1), TypeError, "jitter")
case("RetryPolicy-max_retry_after_s", lambda tmp: RetryPolicy(max_retry_after_s=-1), ValueError,
     "max_retry_after_s")
case("RetryPolicy-retry_mid_response", lambda tmp: RetryPolicy(retry_mid_response="yes"), TypeError,
     "retry_mid_response")
case("ConcurrencyLimiter-global_limit-float", lambda tmp: ConcurrencyLimiter(global_limit=1.5), TypeError,
     "global_limit")
case("ConcurrencyLimiter-global_limit-zero", lambda tmp: ConcurrencyLimiter(global_limit=0), ValueError,
     "global_limit")
case("ConcurrencyLimiter-global_limit-str", lambda tmp: ConcurrencyLimiter(global_limit="2"), TypeError,
     "global_limit")
case("ConcurrencyLimiter-category-zero", lambda tmp: ConcurrencyLimiter(4, {"search": 0}), ValueError,
     "category_limits")
case("ConcurrencyLimiter-category-str", lambda tmp: ConcurrencyLimiter(4, {"search": "2"}), TypeError,
     "category_limits")
case("ConcurrencyLimiter-category_limits-list", lambda tmp: ConcurrencyLimiter(4, [("search", 2)]), TypeError,
     "category_limits")
case("TaskTracker-max_retries-negative", lambda tmp: task_state.TaskTracker(max_retries=-1), ValueError,
     "max_retries")
case("TaskTracker-max_retries-str", lambda tmp: task_state.TaskTracker(max_retries="3"), TypeError, "max_retries")
case("TaskTracker.add-empty-id", lambda tmp: task_state.TaskTracker().add(""), ValueError, "task_id")
case("TaskTracker.add-int-id", lambda tmp: task_state.TaskTracker().add(5), TypeError, "task_id")
case("TaskTracker.add-category", lambda tmp: task_state.TaskTracker().add("a", category=5), TypeError, "category")
case("TaskTracker.add-duplicate", lambda tmp: _twice(task_state.TaskTracker()), ValueError, "task_id", "already")


def _twice(tracker: task_state.TaskTracker) -> None:
    tracker.add("a")
    tracker.add("a")


# --------------------------------------------------------------------------- the test
def test_the_catalogue_is_large_and_has_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 150
    for entry in ("invoke_claude", "invoke_claude_streaming", "invoke_claude_json", "invoke_parallel",
                  "invoke_parallel_streaming", "invoke_parallel_interruptible", "estimate_run_cost",
                  "ConversationThread", "delegate_tool", "invoke_with_retry", "invoke_parallel_managed",
                  "RetryPolicy", "ConcurrencyLimiter", "invoke_batch", "TaskTracker"):
        assert any(i.startswith(entry) for i in ids), entry


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_anything_is_sent(client_env, tmp_path: Path, bad: Case) -> None:
    before = len(client_env.requests)  # messages, count_tokens, batches: every path
    with pytest.raises((TypeError, ValueError)) as info:
        bad.call(tmp_path)
    error = info.value
    other = ValueError if bad.exc is TypeError else TypeError
    assert isinstance(error, bad.exc) and not isinstance(error, other), f"{type(error).__name__}: {error}"
    message = str(error)
    for word in bad.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(client_env.requests) == before, [r.path for r in client_env.requests[before:]]


def test_saving_into_a_directory_fails_and_leaves_no_temporary_file(client_env, tmp_path: Path) -> None:
    chat = ConversationThread()
    chat.send("hello")
    folder = tmp_path / "saves"
    target = folder / "a-directory"
    target.mkdir(parents=True)
    with pytest.raises((ValueError, OSError), match="a-directory"):  # IsADirectoryError names the path
        chat.save(target)
    assert sorted(os.listdir(folder)) == ["a-directory"]  # no a-directory.tmp left behind
    assert target.is_dir() and not any(target.iterdir())


def test_interrupt_tokens_and_callables_are_not_mistaken_for_bad_input(client_env) -> None:
    """The catalogue's good twins: the same entry points with valid values do send."""
    token = InterruptToken()
    assert cc.invoke_claude("fine", interrupt_token=token, effort="low").startswith("Echo")
    assert orchestration.RetryPolicy(max_retries=0).max_retries == 0
    assert len(client_env.message_requests()) == 1
