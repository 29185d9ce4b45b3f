"""Thinking round trips and replies that are not answers, on the default model (claude-sonnet-5-5).

The emulator signs every thinking block it issues (bound to the transcript before it) and answers
400 when a later request sends one back altered, or sends back an assistant turn without the
thinking block it had. So every multi-request path here (tool loops, parallel tool agents, a
streamed tool loop, a conversation with a tool pass) succeeds only if the library returns the
assistant content unchanged. A refusal (``[[refuse]]``) and a reply whose thinking used all of
max_tokens (``[[think=500]]`` with max_tokens=100) become permanent errors in their slots, never
retried, their usage counted.
"""
from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from anthropic_emulator import Emulator, tool_directive

import claude_client as cc
from claude_client import ClaudeInvocationError, ConversationThread, Usage
from orchestration import invoke_parallel_managed, invoke_with_retry

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-5-5"
FAST = dict(base_delay_ms=5, max_delay_ms=20)


class Counter:
    """A tool whose runs are counted under a lock (tools may run on several threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[str] = []

    def tool(self) -> Any:
        def lookup(q: str) -> str:
            """Look a word up in the dictionary.

            Args:
                q: the word to look up
            """
            with self.lock:
                self.runs.append(q)
            return f"def of {q}"

        return lookup


def _thinking_blocks(content: list) -> list[dict]:
    return [b for b in content if b.get("type") in ("thinking", "redacted_thinking")]


def _assert_round_trips(emulator: Emulator, n_requests: int) -> None:
    """Every request succeeded, and each later request of a conversation carries every earlier
    assistant turn exactly as the emulator issued it (thinking blocks with their signatures)."""
    requests = emulator.message_requests()
    assert len(requests) == n_requests
    assert [r.status for r in requests] == [200] * n_requests
    for record in requests:
        for message in record.body["messages"]:
            if message["role"] == "assistant":
                blocks = _thinking_blocks(message["content"])
                assert blocks and all(b["signature"].startswith("EmuSig") for b in blocks if b["type"] == "thinking")
                assert message["content"][0]["type"] == "thinking"  # in order: thinking first


def test_the_emulator_refuses_an_altered_thinking_block(client_env: Emulator) -> None:
    """The check the other tests rely on is live: an edited signature is a 400."""
    lookup = Counter().tool()
    reply = cc.invoke_claude(tool_directive("lookup", {"q": "a"}) + " define", tools=[lookup], max_tokens=300)
    history = copy.deepcopy(reply.messages)
    assert history[1]["role"] == "assistant" and history[1]["content"][0]["type"] == "thinking"
    history[1]["content"][0]["signature"] = "EmuSig1" + "A" * 40
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude(None, messages=history[:3], tools=[lookup], max_tokens=300)
    assert info.value.kind == "bad_request" and info.value.status_code == 400
    history = copy.deepcopy(reply.messages)
    del history[1]["content"][0]  # the assistant turn without its thinking block
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude(None, messages=history[:3], tools=[lookup], max_tokens=300)
    assert info.value.status_code == 400


def test_tool_loop_sends_thinking_back_unchanged(client_env: Emulator) -> None:
    counter = Counter()
    reply = cc.invoke_claude(
        tool_directive("lookup", {"q": "cat"}, tool_turns=3) + " define it", tools=[counter.tool()], max_tokens=300
    )
    assert counter.runs == ["cat"] * 3
    assert str(reply).startswith("Echo tool results: ") and "thinking" not in str(reply).lower()
    assert reply.content[0]["type"] == "thinking" and reply.content[0]["thinking"] == ""  # display "omitted"
    _assert_round_trips(client_env, 4)
    # the transcript sent in the last request holds every assistant turn byte for byte as returned
    last = client_env.message_requests()[-1].body["messages"]
    sent = [m["content"] for m in last if m["role"] == "assistant"]
    kept = [m["content"] for m in reply.messages[: len(last)] if m["role"] == "assistant"]
    assert sent == kept and len(sent) == 3
    assert reply.usage.thinking_tokens == 4 * 8  # high effort: 8 per reply, counted in output_tokens
    assert reply.usage == sum((Usage.from_sdk(r.usage) for r in client_env.message_requests()), Usage())


def test_four_parallel_tool_agents_keep_their_own_thinking(client_env: Emulator) -> None:
    counter = Counter()
    prompts = [{"prompt": tool_directive("lookup", {"q": f"w{i}"}, tool_turns=2) + f" agent {i}"} for i in range(4)]
    results = cc.invoke_parallel(prompts, tools=[counter.tool()], max_tokens=300, max_workers=4)
    assert results.errors == {}
    assert sorted(counter.runs) == sorted([f"w{i}" for i in range(4)] * 2)
    for i, reply in enumerate(results):
        assert f"def of w{i}" in str(reply) and reply.content[0]["type"] == "thinking"
    _assert_round_trips(client_env, 4 * 3)


def test_streamed_tool_loop_sends_thinking_back_unchanged(client_env: Emulator) -> None:
    counter = Counter()
    chunks: list[str] = []
    reply = cc.invoke_claude_streaming(
        tool_directive("lookup", {"q": "dog"}, tool_turns=2) + " stream it",
        callback=chunks.append,
        tools=[counter.tool()],
        max_tokens=300,
    )
    assert counter.runs == ["dog", "dog"]
    assert "".join(chunks).endswith(str(reply)) and str(reply).startswith("Echo tool results: ")
    assert all(r.stream for r in client_env.message_requests())
    _assert_round_trips(client_env, 3)


def test_parallel_streaming_tool_agents(client_env: Emulator) -> None:
    counter = Counter()
    prompts = [{"prompt": tool_directive("lookup", {"q": f"s{i}"}) + f" stream {i}"} for i in range(3)]
    got: list[list[str]] = [[] for _ in prompts]
    results = cc.invoke_parallel_streaming(
        prompts, callbacks=[c.append for c in got], tools=[counter.tool()], max_tokens=300, max_workers=3
    )
    assert results.errors == {} and sorted(counter.runs) == ["s0", "s1", "s2"]
    assert all("".join(c).endswith(str(r)) for c, r in zip(got, results))
    _assert_round_trips(client_env, 3 * 2)


def test_three_turn_conversation_with_a_tool_pass(client_env: Emulator) -> None:
    counter = Counter()
    chat = ConversationThread(model=MODEL, max_tokens=300, tools=[counter.tool()])
    first = chat.send("hello there")
    second = chat.send(tool_directive("lookup", {"q": "owl"}) + " what is it")
    third = chat.send("thanks, and then")
    assert str(first) == "Echo: hello there" and "def of owl" in str(second) and str(third) == "Echo: thanks, and then"
    assert counter.runs == ["owl"]
    # turn 1 (2 messages) + turn 2 with its tool pass (4) + turn 3 (2)
    history = chat.messages
    assert [m["role"] for m in history] == ["user", "assistant"] * 4
    assert all(_thinking_blocks(m["content"]) for m in history if m["role"] == "assistant")
    _assert_round_trips(client_env, 1 + 2 + 1)


# --------------------------------------------------------------------------- not answers
def _not_answers() -> list[dict]:
    return [
        {"prompt": "fine [[id=ok]]"},
        {"prompt": "[[refuse category=cyber]] something the model declines"},
        {"prompt": "[[think=500]] a long think"},
    ]


def _check_not_answers(results: Any, emulator: Emulator) -> None:
    requests = emulator.message_requests()
    assert len(requests) == 3  # neither is retried
    assert str(results[0]) == "Echo: fine" and results[1] is None and results[2] is None
    refusal, truncated = results.errors[1], results.errors[2]
    assert isinstance(refusal, ClaudeInvocationError) and refusal.kind == "refusal" and not refusal.transient
    assert refusal.stop_details["category"] == "cyber" and refusal.stop_details["type"] == "refusal"
    assert refusal.request_id and refusal.request_id.startswith("req_emu_")
    by_prompt = {r.prompt: r for r in requests}
    assert refusal.usage == Usage.from_sdk(by_prompt["something the model declines"].usage)
    assert refusal.usage.input_tokens > 0 and refusal.cost_usd is not None and refusal.cost_usd > 0
    assert truncated.kind == "max_tokens" and not truncated.transient
    assert "max_tokens" in str(truncated) and "effort" in str(truncated)
    assert truncated.usage.output_tokens == 100 and truncated.usage.thinking_tokens == 100
    assert truncated.cost_usd == pytest.approx(cc.estimate_cost(truncated.usage, MODEL))
    # the run's totals count what the failed slots paid
    assert results.usage == sum((Usage.from_sdk(r.usage) for r in requests), Usage())


def test_refusal_and_truncated_reply_land_in_their_slots_invoke_parallel(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_parallel(_not_answers(), max_tokens=100, max_workers=3)
    results = info.value.results
    assert results is not None and set(results.errors) == {1, 2}
    _check_not_answers(results, client_env)


def test_refusal_and_truncated_reply_land_in_their_slots_managed(client_env: Emulator) -> None:
    results = invoke_parallel_managed(_not_answers(), max_tokens=100, max_workers=3, **FAST)
    assert set(results.errors) == {1, 2}
    assert results.errors[1].attempts == 1 and results.errors[2].attempts == 1
    _check_not_answers(results, client_env)


def test_refusal_is_not_retried_by_invoke_with_retry_nor_streaming(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry("[[refuse]] nope", max_retries=3, **FAST)
    assert info.value.kind == "refusal" and info.value.stop_details == {
        "type": "refusal", "category": None, "explanation": None}
    chunks: list[str] = []
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("[[refuse]] nope again", callback=chunks.append)
    assert info.value.kind == "refusal"
    assert len(client_env.message_requests()) == 2


def test_a_refusal_inside_a_tool_loop_carries_the_loops_usage(client_env: Emulator) -> None:
    runs: list[str] = []

    def lookup(q: str) -> str:
        """Look a word up; from now on the emulator refuses every request.

        Args:
            q: the word to look up
        """
        runs.append(q)
        client_env.configure(directives="[[refuse category=bio]]")
        return f"def of {q}"

    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude(tool_directive("lookup", {"q": "x"}) + " then refuse", tools=[lookup], max_tokens=300)
    error = info.value
    requests = client_env.message_requests()
    assert error.kind == "refusal" and error.stop_details["category"] == "bio"
    assert runs == ["x"] and len(requests) == 2  # the tool ran once; the refused turn was not retried
    assert error.usage == sum((Usage.from_sdk(r.usage) for r in requests), Usage())  # both turns
    assert error.cost_usd == pytest.approx(cc.estimate_cost(error.usage, MODEL))
    assert [c.name for c in error.tool_calls] == ["lookup"]
    assert error.messages[-1]["content"][0]["type"] == "tool_result"


def test_context_window_stop_is_context_overflow(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("[[stop=model_context_window_exceeded]] too big", max_tokens=100)
    assert info.value.kind == "context_overflow" and not info.value.transient
    assert info.value.usage == Usage.from_sdk(client_env.message_requests()[0].usage)
    assert len(client_env.message_requests()) == 1
