"""Tools, delegation and structured output through every public call path (the wiring of
_agent into single calls, parallel and managed runs, conversations and batches)."""
from __future__ import annotations

import threading

import pydantic
import pytest
from anthropic_emulator import tool_directive

import claude_client as cc
from claude_client import ClaudeInvocationError, ConversationThread, delegate_tool
from message_batches import invoke_batch
from orchestration import invoke_parallel_managed, invoke_with_retry


def lookup(q: str) -> str:
    """Look a word up.

    Args:
        q: the word
    """
    return f"definition of {q}"


def _ask(word: str, **keys) -> str:
    return f"define {word} " + tool_directive("lookup", {"q": word}, **keys)


def _tool_results(reply) -> list[str]:
    return [c.output for c in reply.tool_calls]


def test_single_calls_run_the_tool_loop(client_env) -> None:
    seen = []
    reply = cc.invoke_claude(_ask("cat"), tools=[lookup], on_tool_call=seen.append)
    assert reply.stop_reason == "end_turn" and "definition of cat" in reply
    assert _tool_results(reply) == ["definition of cat"]
    assert [r.output for r in seen] == [None, "definition of cat"]  # start and end
    assert len(reply.messages) == 4 and reply.usage.output_tokens > 0
    requests = client_env.message_requests()
    assert len(requests) == 2 and reply.cost_usd == pytest.approx(
        sum(cc.estimate_cost(cc.Usage.from_sdk(r.usage), cc.DEFAULT_MODEL) for r in requests))
    chunks = []
    streamed = cc.invoke_claude_streaming(_ask("dog"), callback=chunks.append, tools=[lookup])
    assert "definition of dog" in streamed and "definition of dog" in "".join(chunks)  # every turn's text
    retried = invoke_with_retry("[[fail=529 times=1]] " + _ask("owl"), tools=[lookup], base_delay_ms=1)
    assert _tool_results(retried) == ["definition of owl"]


def test_bad_tools_are_refused_before_anything_is_sent(client_env) -> None:
    with pytest.raises(ValueError, match="tools"):
        cc.invoke_claude("x", tools=[{"name": "t", "input_schema": {"type": "object"}}])
    with pytest.raises(ValueError, match="tools"):
        cc.invoke_parallel([{"prompt": "x"}], tools=[lookup, lookup])
    with pytest.raises(ValueError, match=r"prompts\[0\]\['tools'\]"):
        cc.invoke_parallel([{"prompt": "x", "tools": ["not a tool"]}])
    with pytest.raises(ValueError, match="max_tool_turns"):
        invoke_parallel_managed([{"prompt": "x"}], tools=[lookup], max_tool_turns=0)
    assert client_env.requests == []


def test_parallel_and_managed_runs_give_each_prompt_its_own_tool_results(client_env) -> None:
    words = ["ant", "bee", "cow", "doe", "elk", "fox"]
    results = cc.invoke_parallel([{"prompt": _ask(w)} for w in words], tools=[lookup], max_workers=6)
    assert [_tool_results(r) for r in results] == [[f"definition of {w}"] for w in words]

    def shout(q: str) -> str:
        """Shout a word.

        Args:
            q: the word
        """
        return q.upper()

    mixed = cc.invoke_parallel([{"prompt": _ask("gnu")},
                                {"prompt": "loud " + tool_directive("shout", {"q": "hey"}), "tools": [shout]}],
                               tools=[lookup])
    assert _tool_results(mixed[0]) == ["definition of gnu"] and _tool_results(mixed[1]) == ["HEY"]
    managed = invoke_parallel_managed([{"prompt": _ask(w)} for w in words[:3]], tools=[lookup])
    assert [_tool_results(r) for r in managed] == [[f"definition of {w}"] for w in words[:3]]
    assert managed.usage.output_tokens == sum(r.usage.output_tokens for r in managed)


def test_the_turn_limit_fails_only_its_own_slot(client_env) -> None:
    results = cc.invoke_parallel([{"prompt": _ask("yak", tool_turns="inf")}, {"prompt": "plain"}], tools=[lookup],
                                 max_tool_turns=2, return_exceptions=True)
    assert isinstance(results[0], ClaudeInvocationError) and results[0].kind == "tool_turns_exceeded"
    assert results[1] == "Echo: plain"


def test_conversation_keeps_the_tool_loop_in_its_history_and_rolls_back_on_failure(client_env) -> None:
    chat = ConversationThread(tools=[lookup])
    reply = chat.send(_ask("emu"))
    assert "definition of emu" in reply
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"] and chat.turn_count == 2
    before = chat.messages
    with pytest.raises(ClaudeInvocationError):
        chat.send("[[fail=400]] " + _ask("bad"))
    assert chat.messages == before  # a failed tool loop leaves the history as it was
    assert chat.send("and now?").startswith("Echo")


def test_delegation_fans_out_and_rolls_usage_up(client_env) -> None:
    prompt = "plan " + tool_directive("delegate", {"tasks": ["sub one", "sub two"]})
    reply = cc.invoke_claude(prompt, tools=[delegate_tool(max_depth=1)])
    assert [c.task for c in reply.children] == ["sub one", "sub two"]
    assert [c.text for c in reply.children] == ["Echo: sub one", "Echo: sub two"]
    requests = client_env.message_requests()
    assert len(requests) == 4  # parent, 2 children, parent again
    children_usage = sum((c.usage for c in reply.children), cc.Usage())
    assert reply.usage.output_tokens == sum(r.usage["output_tokens"] for r in requests)
    assert children_usage.output_tokens > 0
    child_bodies = [r.body for r in requests if r.prompt.startswith("sub")]
    assert all("tools" not in b for b in child_bodies)  # at max_depth: no delegate tool
    with pytest.raises(TypeError, match="delegate_tool"):
        delegate_tool(max_depth=1, nonsense=True)


def test_delegation_depth_two_gives_children_the_delegate_tool(client_env) -> None:
    prompt = "plan " + tool_directive("delegate", {"tasks": ["leaf"]})
    cc.invoke_claude(prompt, tools=[delegate_tool(max_depth=2)])
    child = next(r.body for r in client_env.message_requests() if r.prompt == "leaf")
    assert [t["name"] for t in child["tools"]] == ["delegate"]


class Colour(pydantic.BaseModel):
    name: str
    hex: str


def test_output_schema_everywhere(client_env) -> None:
    reply = cc.invoke_claude("a colour", output_schema=Colour)
    assert isinstance(reply.parsed, Colour)
    results = cc.invoke_parallel([{"prompt": "c1"}, {"prompt": "c2 [[invalid_output=1]]"}], output_schema=Colour)
    assert all(isinstance(r.parsed, Colour) for r in results)  # the invalid one was repaired
    managed = invoke_parallel_managed([{"prompt": "m [[invalid_output=2]]"}], output_schema=Colour,
                                      return_exceptions=True)
    assert isinstance(managed[0], ClaudeInvocationError) and managed[0].kind == "invalid_output"
    chat = ConversationThread()
    assert isinstance(chat.send("colour?", output_schema=Colour).parsed, Colour)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert isinstance(cc.invoke_claude("number", output_schema=schema).parsed["n"], int)
    batch = invoke_batch([{"prompt": "b1"}, {"prompt": "b2 [[invalid_output=1]]"}], output_schema=Colour,
                         poll_interval=0.05, return_exceptions=True)
    assert isinstance(batch[0].parsed, Colour)
    assert isinstance(batch[1], ClaudeInvocationError) and batch[1].kind == "invalid_output"
    with pytest.raises(TypeError, match="output_schema"):
        cc.invoke_claude("x", output_schema=3)


def test_interrupt_during_a_tool_returns_promptly(client_env) -> None:
    release = threading.Event()

    def slow(q: str) -> str:
        """Wait.

        Args:
            q: anything
        """
        release.wait(30)
        return q

    token = cc.InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    try:
        with pytest.raises(ClaudeInvocationError) as info:
            cc.invoke_claude("wait " + tool_directive("slow", {"q": "x"}), tools=[slow], interrupt_token=token)
        assert info.value.kind == "interrupted"
    finally:
        release.set()


def test_tool_results_never_push_the_request_past_four_breakpoints(client_env) -> None:
    import _requests

    def fetch(q: str) -> list:
        """Fetch a document.

        Args:
            q: query
        """
        return [{"type": "text", "text": "doc " * 50, "cache_control": {"type": "ephemeral"}}]

    system = [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]
    cc.invoke_claude(tool_directive("fetch", {"q": "a"}, tool_turns=4) + " go", tools=[fetch], system=system)
    counts = [sum(_requests.count_breakpoints(r.body.get(k)) for k in ("tools", "system", "messages"))
              for r in client_env.message_requests()]
    assert len(counts) == 5 and max(counts) <= 4


def test_a_failed_repair_keeps_what_the_first_try_cost(client_env) -> None:
    import _admission
    import _requests

    prompt = "colour [[invalid_output=1]]"
    params = _requests.single_request(prompt, model=cc.DEFAULT_MODEL, system=None, max_tokens=4000, temperature=None,
                                      cache_system=False, cache_prompt=False, messages=None, extra={})
    worst = _admission.Budget(1.0).worst_case(params)
    with pytest.raises(ClaudeInvocationError) as info:  # room for one try, not for the repair
        cc.invoke_claude(prompt, output_schema=Colour, max_tokens=4000, max_cost_usd=worst * 1.0001)
    error = info.value
    assert error.kind == "budget"
    assert error.usage.output_tokens > 0 and error.cost_usd > 0  # the paid first try
    assert len(client_env.message_requests()) == 1
