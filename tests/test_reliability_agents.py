"""Reliability of tool agents and of interrupts (issue 19, items 1, 2, 6 and 7).

* A managed run retries a tool agent by resuming the turn that failed: no tool runs twice, and it
  sends the same requests and runs its tools as often as ``invoke_with_retry`` does.
* A ``KeyboardInterrupt`` / ``SystemExit`` raised in a tool ends the run as Ctrl-C does.
* An interrupt of a managed run with prompts still queued returns at once, streamed or not.
* Retries are logged where a handler on the public loggers hears them.

Everything runs against the emulator over HTTP; nothing is patched.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable

import pytest

from anthropic_emulator import Emulator, tool_directive

import claude_client as cc
from claude_client import ClaudeInvocationError, InterruptToken, RunInterrupted
from orchestration import invoke_parallel_managed, invoke_with_retry
from task_state import TaskTracker

FAST = dict(base_delay_ms=1, max_delay_ms=5)


class Counter:
    """Tool runs counted under a lock (tools run on many threads at once)."""

    def __init__(self, on_run: Callable[[str], Any] = lambda q: None) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, int] = {}
        self.on_run = on_run

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.runs.values())

    def tool(self) -> Callable[..., str]:
        def lookup(q: str) -> str:
            """Look a word up in the dictionary.

            Args:
                q: the word to look up
            """
            with self.lock:
                self.runs[q] = self.runs.get(q, 0) + 1
            self.on_run(q)
            return f"def of {q}"

        return lookup


def _flaky_agent(i: int, tag: str) -> str:
    """A prompt needing 3 tool turns (then an answer) whose every turn fails once with a 529:
    each turn's body is new to the emulator, so ``times=1`` fails its first attempt."""
    return f"{tool_directive('lookup', {'q': f'{tag}{i}'}, tool_turns=3)} [[fail=529 times=1]] agent {tag}{i}"


# --------------------------------------------------------------------------- resume, not restart
@pytest.mark.timeout(120)
def test_200_managed_tool_agents_resume_the_failed_turn(client_env: Emulator) -> None:
    counter = Counter()
    tracker = TaskTracker()
    prompts = [{"prompt": _flaky_agent(i, "m")} for i in range(200)]
    t0 = time.monotonic()
    results = invoke_parallel_managed(
        prompts,
        tools=[counter.tool()],
        max_tokens=60,
        max_workers=32,
        max_retries=4,  # 4 turns, each failing once: the attempts of all turns count
        tracker=tracker,
        **FAST,
    )
    elapsed = time.monotonic() - t0
    assert results.errors == {} and all(r is not None for r in results)
    assert counter.total == 600 and set(counter.runs.values()) == {3}  # no tool ran twice
    assert all(len(r.tool_calls) == 3 for r in results)
    requests = client_env.message_requests()
    assert len(requests) == 200 * 8  # 4 turns x (one 529 + one success)
    assert [r.status for r in requests].count(529) == 800
    assert tracker.reason_counts()["succeeded"] == 200 and tracker.total_attempts() == 200 * 5
    # a resumed reply counts every turn it paid for, the earlier attempts' turns included
    assert results.usage == sum((cc.Usage.from_sdk(r.usage) for r in requests if r.usage), cc.Usage())
    print(f"\n200 managed tool agents, 1600 requests: {elapsed:.1f} s")
    assert elapsed < 60


def test_managed_and_invoke_with_retry_send_the_same_requests_and_run_the_same_tools(client_env: Emulator) -> None:
    single, managed = Counter(), Counter()
    for i in range(3):
        reply = invoke_with_retry(_flaky_agent(i, "s"), tools=[single.tool()], max_tokens=60, max_retries=2, **FAST)
        assert len(reply.tool_calls) == 3
    sent_single = len(client_env.message_requests())
    results = invoke_parallel_managed(
        [{"prompt": _flaky_agent(i, "p")} for i in range(3)],
        tools=[managed.tool()],
        max_tokens=60,
        max_retries=4,
        **FAST,
    )
    assert results.errors == {}
    assert sent_single == 3 * 8 and len(client_env.message_requests()) - sent_single == 3 * 8
    assert single.total == managed.total == 9
    assert set(single.runs.values()) == set(managed.runs.values()) == {3}


def test_a_managed_tool_agent_out_of_attempts_fails_with_its_turns_usage(client_env: Emulator) -> None:
    counter = Counter()
    results = invoke_parallel_managed(
        [{"prompt": _flaky_agent(0, "x")}], tools=[counter.tool()], max_tokens=60, max_retries=2, **FAST
    )
    error = results.errors[0]
    assert isinstance(error, ClaudeInvocationError) and error.kind == "overloaded" and error.attempts == 3
    assert counter.total == 2  # turns 1 and 2 ran their tools once each; turn 3 failed on the last attempt
    ok = [r for r in client_env.message_requests() if r.status == 200]
    assert error.usage == sum((cc.Usage.from_sdk(r.usage) for r in ok), cc.Usage())
    assert results.usage == error.usage  # what the failed task paid is in the run's totals


# --------------------------------------------------------------------------- Ctrl-C inside a tool
def _interrupting_tool(how: str) -> Callable[..., str]:
    def lookup(q: str) -> str:
        """Look a word up.

        Args:
            q: the word to look up
        """
        if how == "signal":
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)  # the handler raises KeyboardInterrupt before this ends
        if how == "exit":
            raise SystemExit(3)
        raise KeyboardInterrupt

    return lookup


@pytest.mark.parametrize("how", ["raise", "signal"])
def test_ctrl_c_in_a_tool_ends_invoke_claude(client_env: Emulator, how: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cc.invoke_claude(tool_directive("lookup", {"q": "a"}) + " go", tools=[_interrupting_tool(how)], max_tokens=60)
    assert time.monotonic() - t0 < 2.0
    assert len(client_env.message_requests()) == 1  # the tool's turn was never answered


def test_sigint_in_a_tool_thread_is_handled_at_once(client_env: Emulator) -> None:
    """With a token the tools run on threads: the loop's thread never waits untimed, so the
    signal handler runs (and raises) within a moment while the tool still runs."""
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cc.invoke_claude(
            tool_directive("lookup", {"q": "a"}) + " threaded",
            tools=[_interrupting_tool("signal")],
            max_tokens=60,
            interrupt_token=InterruptToken(),
        )
    assert time.monotonic() - t0 < 1.0
    assert len(client_env.message_requests()) == 1


def test_system_exit_in_a_tool_is_not_a_tool_error(client_env: Emulator) -> None:
    with pytest.raises(SystemExit):
        cc.invoke_claude(tool_directive("lookup", {"q": "a"}) + " exit", tools=[_interrupting_tool("exit")])
    assert len(client_env.message_requests()) == 1


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_ctrl_c_in_a_tool_ends_a_managed_run_keeping_what_finished(client_env: Emulator, how: str) -> None:
    tracker = TaskTracker()
    prompts = [{"prompt": f"quick {i}"} for i in range(3)] + [
        {"prompt": tool_directive("lookup", {"q": "b"}) + " stops the run [[ttft_ms=300 times=1]]"}
    ] + [{"prompt": f"queued {i} [[ttft_ms=2000]]"} for i in range(6)]
    t0 = time.monotonic()
    with pytest.raises(RunInterrupted) as info:
        invoke_parallel_managed(
            prompts, tools=[_interrupting_tool(how)], max_workers=4, tracker=tracker, max_tokens=60, **FAST
        )
    assert time.monotonic() - t0 < 2.0
    results = info.value.results
    assert [str(r) for r in results[:3]] == [f"Echo: quick {i}" for i in range(3)]
    assert all(r is None for r in results[3:])
    assert isinstance(info.value.__cause__, (KeyboardInterrupt, SystemExit))
    counts = tracker.reason_counts()
    assert counts["succeeded"] == 3 and counts["interrupted"] == 7
    assert not [t for t in threading.enumerate() if t.name.startswith("claude-managed")]


# --------------------------------------------------------------------------- interrupt latency
@pytest.mark.parametrize("streamed", [False, True])
def test_interrupting_a_managed_run_with_prompts_queued_returns_at_once(client_env: Emulator, streamed: bool) -> None:
    client_env.configure(ttft_ms=5000)
    token = InterruptToken()
    tracker = TaskTracker()
    prompts = [{"prompt": f"slow {i}"} for i in range(10)]
    callbacks = [(lambda _c: None) for _ in prompts] if streamed else None
    stopped_at: list[float] = []

    def stop() -> None:
        client_env.wait_for(lambda e: e.active_requests == 5, timeout=10)
        stopped_at.append(time.monotonic())
        token.interrupt()

    threading.Thread(target=stop).start()
    results = invoke_parallel_managed(
        prompts, max_workers=5, interrupt_token=token, tracker=tracker, callbacks=callbacks, max_tokens=60, **FAST
    )
    latency = time.monotonic() - stopped_at[0]
    print(f"\nmanaged interrupt -> return ({'streamed' if streamed else 'create'}): {latency * 1000:.0f} ms")
    assert latency < 0.5  # target 0.2 s; generous for a loaded 2-core machine
    assert list(results) == [None] * 10 and results.errors == {}
    assert tracker.reason_counts()["interrupted"] == 10
    assert len(client_env.message_requests()) == 5  # the queued five never started
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 5, timeout=5)


def test_ctrl_c_of_a_managed_run_with_prompts_queued_returns_at_once(client_env: Emulator) -> None:
    client_env.configure(ttft_ms=5000)
    tracker = TaskTracker()
    signalled: list[float] = []

    def ctrl_c() -> None:
        client_env.wait_for(lambda e: e.active_requests == 5, timeout=10)
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c).start()
    with pytest.raises(RunInterrupted) as info:
        invoke_parallel_managed(
            [{"prompt": f"slow {i}"} for i in range(10)], max_workers=5, tracker=tracker, max_tokens=60, **FAST
        )
    latency = time.monotonic() - signalled[0]
    print(f"\nmanaged Ctrl-C -> RunInterrupted: {latency * 1000:.0f} ms")
    assert latency < 0.5
    assert list(info.value.results) == [None] * 10
    assert tracker.reason_counts()["interrupted"] == 10
    assert len(client_env.message_requests()) == 5


# --------------------------------------------------------------------------- retries are heard
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("public", ["claude_client", "orchestration"])
def test_a_handler_on_the_public_logger_hears_retries(client_env: Emulator, public: str) -> None:
    handler = _Records()
    logger = logging.getLogger(public)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if public == "claude_client":
            reply = invoke_with_retry("[[fail=529 times=1]] retried once", max_retries=2, **FAST)
        else:
            reply = invoke_parallel_managed([{"prompt": "[[fail=529 times=1]] retried once"}], max_retries=2, **FAST)[0]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert str(reply) == "Echo: retried once"
    retries = [r for r in handler.records if "retry" in r.getMessage() and r.levelno >= logging.INFO]
    assert retries and retries[0].name.startswith(public + ".")
    assert "overloaded" in retries[0].getMessage()
