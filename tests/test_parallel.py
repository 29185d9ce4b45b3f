"""Parallel fan-out: order, partial failure, interrupt, cache pilot, usage roll-up, callbacks."""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import claude_client as cc
from claude_client import ClaudeInvocationError, InterruptToken, ParallelResults

pytestmark = pytest.mark.timeout(90)

LONG_SYSTEM = " ".join(f"rule{i} keep answers short and precise." for i in range(600))  # ~5k tokens


def _thread_baseline() -> int:
    """Threads alive now, counting the library's one long-lived interrupt dispatcher (a daemon
    started with the first InterruptToken of the process, whichever test that is)."""
    InterruptToken()
    return threading.active_count()


def _threads_back_to(baseline: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if threading.active_count() <= baseline:
            return True
        time.sleep(0.02)
    return threading.active_count() <= baseline


def test_results_in_input_order_under_random_latency(client_env):
    rng = random.Random(7)
    prompts = [{"prompt": f"item {i} [[delay_ms={rng.randint(0, 40)} words=4]]"} for i in range(24)]
    results = cc.invoke_parallel(prompts, max_workers=8)
    assert isinstance(results, ParallelResults) and isinstance(results, list)
    expected = [" ".join((f"Echo: item {i}".split() * 4)[:4]) for i in range(24)]
    assert list(results) == expected
    assert results.errors == {}
    assert len(client_env.message_requests()) == 24
    assert not any(r.stream for r in client_env.message_requests())  # nothing needs a stream


def test_usage_roll_up(client_env):
    results = cc.invoke_parallel([{"prompt": f"p{i}"} for i in range(5)], max_tokens=100)
    total = cc.Usage()
    for r in results:
        total = total + r.usage
    assert results.usage == total and results.usage.output_tokens == 5 * (2 + 8)  # text + thinking (high)
    assert results.usage.thinking_tokens == 5 * 8
    assert results.cost_usd == pytest.approx(sum(r.cost_usd for r in results))


def test_partial_failure_raises_after_all_settle(client_env):
    prompts = [{"prompt": f"p{i}" + (" [[fail=400]]" if i in (2, 5) else "")} for i in range(7)]
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_parallel(prompts, max_workers=3)
    err = info.value
    assert err.kind == "bad_request"
    assert sorted(err.errors) == [2, 5]
    assert all(isinstance(e, ClaudeInvocationError) and e.kind == "bad_request" for e in err.errors.values())
    assert err.results[2] is None and err.results[5] is None
    assert [err.results[i] for i in (0, 1, 3, 4, 6)] == [f"Echo: p{i}" for i in (0, 1, 3, 4, 6)]
    assert "2 of 7" in str(err) and "prompts[2]" in str(err)
    assert err.__cause__ is err.errors[2]
    assert len(client_env.message_requests()) == 7  # nothing was abandoned


def test_partial_failure_return_exceptions(client_env):
    cc.configure(max_retries=0)
    prompts = [{"prompt": f"p{i}" + (" [[fail=529]]" if i == 1 else "")} for i in range(4)]
    results = cc.invoke_parallel(prompts, return_exceptions=True)
    assert isinstance(results[1], ClaudeInvocationError) and results[1].kind == "overloaded"
    assert results.errors == {1: results[1]}
    assert [results[i] for i in (0, 2, 3)] == ["Echo: p0", "Echo: p2", "Echo: p3"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: cc.invoke_parallel([{"text": "no prompt"}]),
        lambda: cc.invoke_parallel([{"prompt": "a", "colour": "red"}]),
        lambda: cc.invoke_parallel([{"prompt": "a"}, {"prompt": ""}]),
        lambda: cc.invoke_parallel([{"prompt": "a", "temperature": 3}]),
        lambda: cc.invoke_parallel([{"prompt": "a", "max_tokens": 0}]),
        lambda: cc.invoke_parallel([{"prompt": "a"}], max_workers=0),
        lambda: cc.invoke_parallel([{"prompt": "a"}], max_workers="4"),
        lambda: cc.invoke_parallel([{"prompt": "a"}], max_workers=True),
        lambda: cc.invoke_parallel("not a list"),
        lambda: cc.invoke_parallel(["a string prompt"]),
        lambda: cc.invoke_parallel_streaming([{"prompt": "a"}, {"prompt": "b"}], callbacks=[print]),
        lambda: cc.invoke_parallel_streaming([{"prompt": "a"}], callbacks=["not callable"]),
        lambda: cc.invoke_parallel_interruptible([{"prompt": "a"}], interrupt_token=object()),
        lambda: cc.invoke_parallel([{"prompt": "a"}], stall_timeout=-1),
    ],
)
def test_validation_sends_nothing(client_env, call):
    with pytest.raises((ValueError, TypeError)):
        call()
    assert client_env.requests == []


def test_validation_message_names_index_and_key(client_env):
    with pytest.raises(ValueError, match=r"prompts\[1\].*'colour'"):
        cc.invoke_parallel([{"prompt": "a"}, {"prompt": "b", "colour": "red"}])
    with pytest.raises(ValueError, match=r"prompts\[0\].*'prompt'"):
        cc.invoke_parallel([{"system": "s"}])
    with pytest.raises(ValueError, match="max_workers"):
        cc.invoke_parallel([{"prompt": "a"}], max_workers=0)


def test_worker_cap_is_lifted(client_env):
    prompts = [{"prompt": f"p{i} [[ttft_ms=400]]"} for i in range(16)]
    results = cc.invoke_parallel(prompts, max_workers=16)
    assert len(results) == 16 and results.errors == {}
    assert client_env.peak_concurrency > 10


def test_system_rule_shared_then_own(client_env):
    prompts = [
        {"prompt": "a", "system": "own system", "cache_system": True},
        {"prompt": "b"},
        {"prompt": "c", "system": [{"type": "text", "text": "own block"}]},
    ]
    cc.invoke_parallel(prompts, shared_system="shared", cache_shared_system=True, cache_pilot=False)
    bodies = {r.prompt: r.body for r in client_env.message_requests()}
    cached = {"type": "ephemeral"}
    assert bodies["a"]["system"] == [
        {"type": "text", "text": "shared", "cache_control": cached},
        {"type": "text", "text": "own system", "cache_control": cached},
    ]
    assert bodies["b"]["system"] == [{"type": "text", "text": "shared", "cache_control": cached}]
    assert bodies["c"]["system"][1] == {"type": "text", "text": "own block"}
    cc.invoke_parallel([{"prompt": "d", "system": "only own"}])
    assert client_env.message_requests()[-1].body["system"] == "only own"


def test_streaming_callbacks_get_only_their_own_chunks(client_env):
    n = 6
    chunks: list[list[str]] = [[] for _ in range(n)]
    callbacks = [chunks[i].append for i in range(n)]
    prompts = [{"prompt": f"agent{i} [[words=30 delay_ms=2]]"} for i in range(n)]
    results = cc.invoke_parallel_streaming(prompts, callbacks=callbacks, max_workers=n)
    for i in range(n):
        assert "".join(chunks[i]) == results[i]
        assert f"agent{i}" in results[i] and all(f"agent{j}" not in results[i] for j in range(n) if j != i)
        assert len(chunks[i]) == 30


def test_callback_raising_fails_only_its_own_prompt(client_env):
    def bad(chunk: str) -> None:
        raise RuntimeError("callback bug")

    outs: list[list[str]] = [[], [], []]
    callbacks = [outs[0].append, bad, outs[2].append]
    prompts = [{"prompt": f"p{i} [[words=50 delay_ms=2]]"} for i in range(3)]
    results = cc.invoke_parallel_streaming(prompts, callbacks=callbacks, return_exceptions=True)
    assert isinstance(results[1], ClaudeInvocationError) and results[1].kind == "callback"
    assert isinstance(results[1].__cause__, RuntimeError)
    assert "".join(outs[0]) == results[0] and "".join(outs[2]) == results[2]
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)
    aborted = [r for r in client_env.message_requests() if r.aborted]
    assert [r.prompt for r in aborted] == ["p1"]


def test_interrupt_ten_long_streams(client_env):
    baseline = _thread_baseline()
    token = InterruptToken()
    prompts = [{"prompt": f"long {i} [[words=100000 delay_ms=20]]"} for i in range(10)]
    box: dict = {}

    def run() -> None:
        box["results"] = cc.invoke_parallel_interruptible(prompts, interrupt_token=token, max_workers=10)
        box["returned"] = time.monotonic()

    runner = threading.Thread(target=run)
    runner.start()
    assert client_env.wait_for(lambda e: e.active_requests == 10, timeout=10)
    time.sleep(0.1)  # let the streams produce some chunks
    started = time.monotonic()
    token.interrupt()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert box["returned"] - started < 1.0
    assert list(box["results"]) == [None] * 10
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 10, timeout=5)
    assert client_env.wait_idle(timeout=5)
    assert _threads_back_to(baseline)


def test_ctrl_c_while_waiting_aborts_in_flight_streams(client_env):
    """A KeyboardInterrupt in the waiting thread (Ctrl-C in a notebook) aborts the streams in
    flight instead of waiting minutes for them, and propagates."""
    baseline = _thread_baseline()
    prompts = [{"prompt": f"long {i} [[words=100000 delay_ms=20]]"} for i in range(4)]
    watcher = threading.Thread(
        target=lambda: client_env.wait_for(lambda e: e.active_requests == 4, timeout=10) and os.kill(os.getpid(), signal.SIGINT)
    )
    watcher.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cc.invoke_parallel(prompts, max_workers=4)
    assert time.monotonic() - started < 10
    watcher.join()
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 4, timeout=5)
    assert client_env.wait_idle(timeout=5)
    assert _threads_back_to(baseline)


def test_interrupt_keeps_finished_and_never_starts_queued(client_env):
    token = InterruptToken()
    prompts = [{"prompt": f"fast {i}"} for i in range(3)]
    prompts += [{"prompt": f"slow {i} [[words=100000 delay_ms=20]]"} for i in range(12)]
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.setdefault("r", cc.invoke_parallel(prompts, interrupt_token=token, max_workers=5))
    )
    runner.start()
    assert client_env.wait_for(
        lambda e: e.active_requests == 5 and len(e.message_requests()) == 8, timeout=10
    )
    token.interrupt()
    runner.join(timeout=10)
    results = box["r"]
    assert list(results[:3]) == ["Echo: fast 0", "Echo: fast 1", "Echo: fast 2"]
    assert list(results[3:]) == [None] * 12
    assert client_env.wait_idle(timeout=5)
    assert len(client_env.message_requests()) == 8  # the 7 queued prompts never started
    assert client_env.stats()["aborted"] == 5


def test_interrupt_before_headers_in_parallel(client_env):
    baseline = _thread_baseline()
    token = InterruptToken()
    prompts = [{"prompt": f"wait {i} [[ttft_ms=30000]]"} for i in range(6)]
    fired: list[float] = []

    def interrupt_once_all_are_waiting() -> None:
        # interrupt when all six requests are at the server (a fixed timer races a loaded machine)
        client_env.wait_for(lambda e: e.stats()["active"] == 6, timeout=20)
        fired.append(time.monotonic())
        token.interrupt()

    interrupter = threading.Thread(target=interrupt_once_all_are_waiting, daemon=True)
    interrupter.start()
    results = cc.invoke_parallel_interruptible(prompts, interrupt_token=token, max_workers=6)
    returned = time.monotonic()
    interrupter.join(5)
    assert fired and returned - fired[0] < 5.0
    assert list(results) == [None] * 6
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 6, timeout=5)
    assert _threads_back_to(baseline), [t.name for t in threading.enumerate()]


def test_already_interrupted_token_runs_nothing(client_env):
    token = InterruptToken()
    token.interrupt()
    results = cc.invoke_parallel_interruptible([{"prompt": "a"}, {"prompt": "b"}], interrupt_token=token)
    assert list(results) == [None, None]
    token.reset()
    assert list(cc.invoke_parallel_interruptible([{"prompt": "a"}], interrupt_token=token)) == ["Echo: a"]
    assert len(client_env.message_requests()) == 1


def test_cache_pilot_reads_instead_of_writes(client_env):
    n = 8
    prompts = [{"prompt": f"question {i} [[ttft_ms=600]]"} for i in range(n)]  # longer than the admission probe
    with_pilot = cc.invoke_parallel(prompts, shared_system=LONG_SYSTEM, cache_shared_system=True, max_workers=n)
    stats = client_env.cache_stats()
    assert stats["writes"] == 1 and stats["reads"] >= n - 1
    assert with_pilot.usage.cache_read_input_tokens >= (n - 1) * 4000
    client_env.reset()
    without = cc.invoke_parallel(
        prompts, shared_system=LONG_SYSTEM, cache_shared_system=True, max_workers=n, cache_pilot=False
    )
    stats = client_env.cache_stats()
    assert stats["writes"] >= 2 and stats["reads"] < n - 1
    assert with_pilot.cost_usd < without.cost_usd


def test_cache_pilot_failure_releases_the_rest(client_env):
    prompts = [{"prompt": "pilot [[fail=400]]"}] + [{"prompt": f"q{i}"} for i in range(4)]
    results = cc.invoke_parallel(prompts, shared_system=LONG_SYSTEM, cache_shared_system=True, return_exceptions=True)
    assert isinstance(results[0], ClaudeInvocationError)
    assert list(results[1:]) == [f"Echo: q{i}" for i in range(4)]


def test_stall_in_parallel_streaming(client_env):
    prompts = [{"prompt": "ok [[words=5]]"}, {"prompt": "stuck [[stall_after=2]]"}]
    results = cc.invoke_parallel_streaming(prompts, stall_timeout=0.4, return_exceptions=True)
    assert results[0] == "Echo: ok Echo: ok Echo:"
    assert isinstance(results[1], ClaudeInvocationError) and results[1].kind == "stalled" and results[1].transient
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)


def test_parallel_results_pickle(client_env):
    import pickle

    results = cc.invoke_parallel([{"prompt": "a"}])
    clone = pickle.loads(pickle.dumps(results))
    assert clone == results and clone.usage == results.usage and clone[0].usage == results[0].usage


def test_interrupt_cuts_a_server_retry_wait_short(client_env):
    """A 429 asks for 5 s; the interrupt ends the wait at once instead of after the SDK's sleep,
    in a single call and in a parallel run (whose worker must not linger)."""
    token = InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    started = time.monotonic()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("[[fail=429 retry_after=5 times=1]] one", interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert time.monotonic() - started < 2.5
    # The 429 paused admission for this key and pool (every caller waits, in every process that
    # shares the store): start afresh, with this process's own admission only.
    cc.reset_client()
    cc.configure(shared_limits=False)
    baseline = _thread_baseline()
    token = InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    started = time.monotonic()
    results = cc.invoke_parallel_interruptible([{"prompt": "[[fail=429 retry_after=5 times=1]] two"}],
                                               interrupt_token=token)
    assert list(results) == [None]
    assert time.monotonic() - started < 2.5
    assert _threads_back_to(baseline)
    assert [(r.prompt, r.status) for r in client_env.message_requests()] == [("one", 429), ("two", 429)]


def test_transient_failure_is_still_retried_with_a_token(client_env):
    results = cc.invoke_parallel_interruptible([{"prompt": "[[fail=529 times=2]] p"}], interrupt_token=InterruptToken())
    assert list(results) == ["Echo: p"]
    assert [r.status for r in client_env.message_requests()] == [529, 529, 200]  # the SDK's 2 retries


def test_library_retries_obey_the_servers_should_retry_header(client_env):
    """With a token the library makes the SDK's retries itself, under the same rules: a 503 is
    retried twice, unless the server says x-should-retry: false."""
    results = cc.invoke_parallel_interruptible(
        [{"prompt": "[[fail=503 times=2 retry_after_ms=10]] again"},
         {"prompt": "[[fail=503 should_retry=false]] never"}],
        interrupt_token=InterruptToken(), return_exceptions=True)
    assert results[0] == "Echo: again"
    assert isinstance(results[1], ClaudeInvocationError) and results[1].kind == "server"
    assert not results[1].transient
    prompts = [r.prompt for r in client_env.message_requests()]
    assert prompts.count("again") == 3 and prompts.count("never") == 1


def test_effort_and_thinking_for_every_prompt_a_prompt_overrides(client_env):
    prompts = [{"prompt": "a"}, {"prompt": "b", "effort": "max"}, {"prompt": "c", "thinking": {"type": "adaptive"}}]
    results = cc.invoke_parallel(prompts, effort="low", thinking="adaptive")
    assert [r.usage.thinking_tokens for r in results] == [2, 16, 2]
    bodies = {r.prompt: r.body for r in client_env.message_requests()}
    assert [bodies[p]["output_config"] for p in "abc"] == [{"effort": "low"}, {"effort": "max"}, {"effort": "low"}]
    assert all(bodies[p]["thinking"] == {"type": "adaptive"} for p in "abc")
    streamed = cc.invoke_parallel_streaming([{"prompt": "d"}], callbacks=[None], effort="medium")
    interruptible = cc.invoke_parallel_interruptible([{"prompt": "e"}], InterruptToken(), effort="xhigh")
    assert streamed[0].usage.thinking_tokens == 4 and interruptible[0].usage.thinking_tokens == 12
    sent = len(client_env.message_requests())
    for bad in ({"effort": "huge"}, {"thinking": "between_tools", "effort": "max"}):
        with pytest.raises(ValueError):
            cc.invoke_parallel([{"prompt": "x"}], **bad)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        cc.invoke_parallel([{"prompt": "x"}, {"prompt": "y", "thinking": "disabled"}])  # Sonnet 5.5 refuses it
    assert len(client_env.message_requests()) == sent


def test_delegate_tool_and_invoke_with_retry_take_effort(client_env):
    from orchestration import invoke_with_retry

    reply = invoke_with_retry("retry me [[fail=529 times=1]]", effort="low", base_delay_ms=1)
    assert reply == "Echo: retry me" and reply.usage.thinking_tokens == 2
    assert all(r.body["output_config"] == {"effort": "low"} for r in client_env.message_requests())
    with pytest.raises(ValueError, match="effort"):
        cc.delegate_tool(effort="huge")
    with pytest.raises(TypeError, match="temperature"):
        cc.delegate_tool(temperature=0.5)
    helper = cc.delegate_tool(model="claude-haiku-5-5", effort="low")
    client_env.reset()
    parent = cc.invoke_claude('[[tool=delegate input=%7B%22tasks%22%3A%5B%22sub%20one%22%5D%7D]] go', tools=[helper])
    assert parent.children and parent.children[0].task == "sub one"
    child = next(r for r in client_env.message_requests() if r.prompt == "sub one")
    assert child.body["model"] == "claude-haiku-5-5" and child.body["output_config"] == {"effort": "low"}
