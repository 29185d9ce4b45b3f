"""invoke_with_retry and invoke_parallel_managed against the emulator, over the real SDK."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Dict, List

import anthropic
import pytest

import claude_client as cc
from claude_client import ClaudeInvocationError, InterruptToken, ParallelResults
from orchestration import (
    ConcurrencyLimiter,
    RetryPolicy,
    invoke_parallel_managed,
    invoke_with_retry,
)
from task_state import TaskState, TaskTracker, TerminalReason

pytestmark = pytest.mark.timeout(60)

FAST = dict(base_delay_ms=5, max_delay_ms=20)


def _prompts_of(emulator) -> List[str]:
    return [r.prompt for r in emulator.message_requests()]


def _max_overlap(records) -> int:
    """Most requests in flight at once, from the emulator's own start/end times."""
    events = []
    for r in records:
        events.append((r.started_at, 1))
        events.append((r.ended_at if r.ended_at is not None else float("inf"), -1))
    live = peak = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        live += d
        peak = max(peak, live)
    return peak


# =========================================================================== invoke_with_retry
def test_persistent_529_is_sent_exactly_max_retries_plus_one_times(client_env) -> None:
    with pytest.raises(ClaudeInvocationError) as ei:
        invoke_with_retry("busy [[fail=529]]", max_retries=3, max_tokens=20, **FAST)
    err = ei.value
    assert len(client_env.message_requests()) == 4
    assert err.attempts == 4 and "4 attempts" in str(err)
    assert err.kind == "overloaded" and err.status_code == 529 and err.transient
    assert isinstance(err.__cause__, ClaudeInvocationError) and err.__cause__.kind == "overloaded"
    assert isinstance(err.__cause__.__cause__, anthropic.APIStatusError)
    # the SDK never retried on its own: every request is a first try from its point of view
    assert {r.retry_count_header for r in client_env.message_requests()} <= {None, "0"}


def test_max_retries_zero_means_one_attempt(client_env) -> None:
    with pytest.raises(ClaudeInvocationError) as ei:
        invoke_with_retry("busy [[fail=500]]", max_retries=0, max_tokens=20, **FAST)
    assert ei.value.attempts == 1 and len(client_env.message_requests()) == 1


def test_auth_error_is_sent_once(client_env) -> None:
    with pytest.raises(ClaudeInvocationError) as ei:
        invoke_with_retry("who [[fail=401]]", max_retries=5, max_tokens=20, **FAST)
    assert ei.value.kind == "auth" and ei.value.attempts == 1 and not ei.value.transient
    assert len(client_env.message_requests()) == 1
    assert "sk-ant-test-key" not in str(ei.value) and "sk-ant-test-key" not in repr(ei.value)


@pytest.mark.parametrize(
    "directive",
    ["fail=500 times=2", "fail=529 times=2", "error_after=2 times=2", "fail=408 times=2", "fail=409 times=2"],
)
def test_transient_failures_are_retried_until_success(client_env, directive: str) -> None:
    reply = invoke_with_retry(f"hello there [[{directive}]]", max_retries=3, max_tokens=20, **FAST)
    assert reply == "Echo: hello there"
    assert [r.attempt for r in client_env.message_requests()] == [1, 2, 3]


def test_stall_is_transient_and_retried(client_env) -> None:
    reply = invoke_with_retry("slow one [[stall_after=1 times=1]]", stall_timeout=0.8, max_tokens=20, **FAST)
    assert reply == "Echo: slow one"
    assert client_env.wait_for(lambda e: e.stats()["aborted"] >= 1, timeout=5)
    assert len(client_env.message_requests()) == 2


def test_server_saying_do_not_retry_is_obeyed(client_env) -> None:
    """x-should-retry: false makes a 529 permanent for invoke_with_retry (one request)."""
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_with_retry("no [[fail=529 should_retry=false]]", max_tokens=20, **FAST)
    assert info.value.kind == "overloaded" and info.value.attempts == 1
    assert len(client_env.message_requests()) == 1


def test_retry_after_ms_is_honoured(client_env) -> None:
    reply = invoke_with_retry(
        "wait [[fail=429 times=1 retry_after=0 retry_after_ms=400]]", max_tokens=20, base_delay_ms=1, max_delay_ms=2
    )
    assert reply == "Echo: wait"
    first, second = client_env.message_requests()
    assert first.status == 429 and second.status == 200
    assert second.started_at - first.ended_at >= 0.38


def test_larger_of_retry_after_and_retry_after_ms_wins(client_env) -> None:
    invoke_with_retry(
        "wait [[fail=429 times=1 retry_after=1 retry_after_ms=100]]", max_tokens=20, base_delay_ms=1, max_delay_ms=2
    )
    first, second = client_env.message_requests()
    assert second.started_at - first.ended_at >= 0.95


def test_continuation_waits_a_fixed_base_delay(client_env) -> None:
    invoke_with_retry(
        "again [[fail=500 times=3]]", is_continuation=True, base_delay_ms=300, max_delay_ms=10000, max_tokens=20
    )
    recs = client_env.message_requests()
    gaps = [b.started_at - a.ended_at for a, b in zip(recs, recs[1:])]
    # fixed 0.3 s each (no jitter), where failure backoff would grow 0.3 -> 0.6 -> 1.2
    assert len(recs) == 4 and all(0.29 <= g < 1.1 for g in gaps)


def test_invoke_with_retry_validates_before_sending(client_env) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        invoke_with_retry("x", max_retries=-1)
    with pytest.raises(ValueError, match="temperature"):
        invoke_with_retry("x", temperature=7)
    with pytest.raises(ValueError, match="stall_timeout"):
        invoke_with_retry("x", stall_timeout=0)
    with pytest.raises(TypeError, match="interrupt_token"):
        invoke_with_retry("x", interrupt_token=object())
    assert client_env.message_requests() == []


def test_interrupt_cuts_a_backoff_short(client_env) -> None:
    token = InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    t0 = time.monotonic()
    with pytest.raises(ClaudeInvocationError) as ei:
        invoke_with_retry(
            "busy [[fail=529]]",
            interrupt_token=token,
            max_tokens=20,
            policy=RetryPolicy(base_delay_ms=20000, max_delay_ms=20000, jitter="none"),
        )
    assert time.monotonic() - t0 < 5
    assert ei.value.kind == "interrupted" and ei.value.attempts == 1
    assert len(client_env.message_requests()) == 1


# =========================================================================== managed: basics
def test_managed_effort_and_thinking_reach_each_request(client_env) -> None:
    prompts = [
        {"prompt": "run default"},
        {"prompt": "own effort", "effort": "medium"},
        {"prompt": "own thinking", "thinking": {"type": "adaptive"}},
    ]
    results = invoke_parallel_managed(prompts, effort="low", thinking="adaptive", max_tokens=50, **FAST)
    assert results.errors == {}
    bodies = {r.prompt: r.body for r in client_env.message_requests()}
    assert [bodies[p][key] for p, key in (("run default", "output_config"), ("own effort", "output_config"))] == [
        {"effort": "low"}, {"effort": "medium"}]
    assert all(b["thinking"] == {"type": "adaptive"} for b in bodies.values())
    # the emulator thinks 2 tokens at low effort, 4 at medium
    assert [r.usage.thinking_tokens for r in results] == [2, 4, 2]


def test_managed_effort_and_thinking_are_checked_before_sending(client_env) -> None:
    with pytest.raises(ValueError, match="effort"):
        invoke_parallel_managed([{"prompt": "a"}], effort="extreme")
    with pytest.raises(ValueError, match="effort"):
        invoke_parallel_managed([{"prompt": "a"}, {"prompt": "b", "effort": "hard"}])
    with pytest.raises(ValueError, match="thinking"):
        invoke_parallel_managed([{"prompt": "a"}], thinking="disabled")  # claude-sonnet-5-5: between_tools
    with pytest.raises(ValueError, match="temperature"):
        invoke_parallel_managed([{"prompt": "a", "temperature": 0.2}])
    assert client_env.message_requests() == []


def test_results_in_input_order_with_usage_rolled_up(client_env) -> None:
    prompts = [{"prompt": f"item {i} [[delay_ms={(i * 7) % 30} words=3]]"} for i in range(12)]
    results = invoke_parallel_managed(prompts, max_workers=4, max_tokens=50, **FAST)
    assert isinstance(results, ParallelResults)
    assert list(results) == [f"Echo: item {i}" for i in range(12)]
    assert results.errors == {}
    # 3 words each, plus the default model's adaptive thinking at its default effort (high: 8 tokens)
    assert results.usage.output_tokens == sum(r.usage.output_tokens for r in results) == 12 * (3 + 8)
    assert results.usage.thinking_tokens == 12 * 8
    assert results.usage.input_tokens == sum(r.usage.input_tokens for r in results)
    assert results.cost_usd == pytest.approx(sum(r.cost_usd for r in results))


def test_failures_leave_none_and_report_why(client_env) -> None:
    prompts = [
        {"prompt": "ok one", "task_id": "ok"},
        {"prompt": "always busy [[fail=529]]", "task_id": "busy"},
        {"prompt": "no key [[fail=401]]", "task_id": "auth"},
        {"prompt": "bad [[fail=400]]", "task_id": "bad"},
        {"prompt": "flaky [[fail=500 times=1]]", "task_id": "flaky"},
    ]
    tracker = TaskTracker()
    results = invoke_parallel_managed(prompts, max_workers=3, max_retries=2, tracker=tracker, max_tokens=20, **FAST)
    assert list(results) == ["Echo: ok one", None, None, None, "Echo: flaky"]
    sent: Dict[str, int] = {}
    for p in _prompts_of(client_env):
        sent[p] = sent.get(p, 0) + 1
    assert sent == {"ok one": 1, "always busy": 3, "no key": 1, "bad": 1, "flaky": 2}
    assert set(results.errors) == {1, 2, 3}
    assert results.errors[1].attempts == 3 and results.errors[1].kind == "overloaded"
    assert isinstance(results.errors[1].__cause__, ClaudeInvocationError)
    assert results.errors[2].attempts == 1 and results.errors[2].kind == "auth"
    reasons = {i.task_id: i.terminal_reason for i in tracker.all()}
    assert reasons == {
        "ok": TerminalReason.SUCCEEDED,
        "busy": TerminalReason.RETRIES_EXHAUSTED,
        "auth": TerminalReason.FAILED_PERMANENTLY,
        "bad": TerminalReason.FAILED_PERMANENTLY,
        "flaky": TerminalReason.SUCCEEDED,
    }
    assert tracker.get("flaky").attempts == 2 and tracker.get("busy").attempts == 3
    assert tracker.get("flaky").history == (
        TaskState.UNCLAIMED,
        TaskState.CLAIMED,
        TaskState.RUNNING,
        TaskState.FAILED,
        TaskState.RETRY_QUEUED,
        TaskState.CLAIMED,
        TaskState.RUNNING,
        TaskState.COMPLETED,
    )
    assert tracker.total_attempts() == len(client_env.message_requests()) == 8


def test_return_exceptions_puts_errors_in_their_slots(client_env) -> None:
    results = invoke_parallel_managed(
        [{"prompt": "fine"}, {"prompt": "nope [[fail=403]]"}], return_exceptions=True, max_tokens=20, **FAST
    )
    assert results[0] == "Echo: fine"
    assert isinstance(results[1], ClaudeInvocationError) and results[1] is results.errors[1]


def test_validation_happens_before_any_request(client_env) -> None:
    with pytest.raises(ValueError, match=r"prompts\[2\]\['task_id'\] 'a'.*prompts\[0\]"):
        invoke_parallel_managed([{"prompt": "x", "task_id": "a"}, {"prompt": "y"}, {"prompt": "z", "task_id": "a"}])
    with pytest.raises(ValueError, match=r"prompts\[1\]\['task_id'\] 'task-0'"):
        invoke_parallel_managed([{"prompt": "x"}, {"prompt": "y", "task_id": "task-0"}])
    with pytest.raises(ValueError, match="category"):
        invoke_parallel_managed([{"prompt": "x", "category": 5}])
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        invoke_parallel_managed([{"prompt": "x"}, {"prompt": "y", "colour": "red"}])
    with pytest.raises(ValueError, match="max_workers"):
        invoke_parallel_managed([{"prompt": "x"}], max_workers=0)
    with pytest.raises(ValueError, match="max_retries"):
        invoke_parallel_managed([{"prompt": "x"}], max_retries=-2)
    with pytest.raises(TypeError, match="concurrency_limiter"):
        invoke_parallel_managed([{"prompt": "x"}], concurrency_limiter=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reconcile"):
        invoke_parallel_managed([{"prompt": "x"}], reconcile="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in prompts"):
        invoke_parallel_managed([{"prompt": "x"}], reconcile=lambda ps, t: [{"prompt": "x", "task_id": "other"}])
    with pytest.raises(ValueError, match="callbacks has 1 entries but there are 2 prompts"):
        invoke_parallel_managed([{"prompt": "x"}, {"prompt": "y"}], callbacks=[None])
    assert client_env.message_requests() == []
    assert list(invoke_parallel_managed([])) == []


def test_callbacks_get_only_their_own_chunks_in_order(client_env) -> None:
    prompts = [{"prompt": f"agent {i} says hello [[delay_ms={(i * 5) % 15}]]"} for i in range(6)]
    chunks: Dict[int, List[str]] = {i: [] for i in range(6)}
    callbacks = [chunks[i].append for i in range(6)]
    results = invoke_parallel_managed(prompts, max_workers=3, callbacks=callbacks, **FAST)
    for i, reply in enumerate(results):
        assert reply == f"Echo: agent {i} says hello"
        assert "".join(chunks[i]) == reply and len(chunks[i]) == 5


# =========================================================================== managed: limits
def test_limiter_bounds_hold_on_the_server(client_env) -> None:
    limiter = ConcurrencyLimiter(global_limit=3, category_limits={"a": 1, "b": 2})
    prompts = [{"prompt": f"t{i} {'abc'[i % 3]} [[delay_ms=15 words=3]]", "category": "abc"[i % 3]} for i in range(24)]
    results = invoke_parallel_managed(prompts, max_workers=8, concurrency_limiter=limiter, max_tokens=20, **FAST)
    assert all(r is not None for r in results)
    recs = client_env.message_requests()
    assert client_env.peak_concurrency <= 3 and client_env.peak_concurrency >= 2
    assert _max_overlap([r for r in recs if r.prompt.split()[1] == "a"]) <= 1
    assert _max_overlap([r for r in recs if r.prompt.split()[1] == "b"]) <= 2
    st = limiter.stats()
    assert st["in_use"] == 0 and st["peak"] <= 3 and st["peak_by_category"]["a"] == 1


def test_max_workers_bounds_concurrency_without_a_limiter(client_env) -> None:
    prompts = [{"prompt": f"w{i} [[delay_ms=10 words=3]]"} for i in range(20)]
    invoke_parallel_managed(prompts, max_workers=4, max_tokens=20, **FAST)
    assert 2 <= client_env.peak_concurrency <= 4


def test_full_category_does_not_hold_up_other_categories(client_env) -> None:
    # global 2, category a limited to 1: "b" tasks run beside a0 instead of waiting behind a1.
    limiter = ConcurrencyLimiter(global_limit=2, category_limits={"a": 1})
    cats = ["a", "a", "a", "b", "b", "b"]
    prompts = [{"prompt": f"{c}{i} [[ttft_ms=600 words=1]]", "category": c} for i, c in enumerate(cats)]
    # one request first, so admission has learned the server's limits and does not hold the run
    # behind its first request's headers (its probe): what is measured here is the limiter alone
    invoke_parallel_managed([{"prompt": "warm"}], max_tokens=20)
    client_env.reset()
    invoke_parallel_managed(prompts, max_workers=4, concurrency_limiter=limiter, max_tokens=20, **FAST)
    recs = {r.prompt: r for r in client_env.message_requests()}
    assert sorted(recs) == ["a0", "a1", "a2", "b3", "b4", "b5"]
    # "a" tasks never overlap, and run oldest first
    a = [recs["a0"], recs["a1"], recs["a2"]]
    assert all(prev.ended_at <= nxt.started_at for prev, nxt in zip(a, a[1:]))
    # each "b" task ran beside an "a" task rather than queueing behind the full category
    for b, beside in (("b3", "a0"), ("b4", "a1"), ("b5", "a2")):
        assert recs[b].started_at < recs[beside].ended_at and recs[beside].started_at < recs[b].ended_at, b


def test_dispatch_is_oldest_first(client_env) -> None:
    prompts = [{"prompt": f"n{i} [[ttft_ms=20 words=1]]"} for i in range(8)]
    invoke_parallel_managed(prompts, max_workers=3, concurrency_limiter=ConcurrencyLimiter(1), max_tokens=20, **FAST)
    assert _prompts_of(client_env) == [f"n{i}" for i in range(8)]


def test_backoff_holds_neither_slot_nor_worker(client_env) -> None:
    prompts = [{"prompt": "retry me [[fail=529 times=1]]"}] + [{"prompt": f"q{i}"} for i in range(6)]
    results = invoke_parallel_managed(
        prompts,
        max_workers=1,
        concurrency_limiter=ConcurrencyLimiter(1),
        max_tokens=20,
        policy=RetryPolicy(base_delay_ms=600, max_delay_ms=600, jitter="none"),
    )
    assert all(r is not None for r in results)
    order = _prompts_of(client_env)
    # while the first task waited its 0.6 s backoff, the single worker/slot served everyone else
    assert order == ["retry me"] + [f"q{i}" for i in range(6)] + ["retry me"]


def test_one_429_pauses_dispatch_for_the_whole_run(client_env) -> None:
    prompts = [{"prompt": "first [[fail=429 times=1 retry_after=0 retry_after_ms=700]]"}]
    prompts += [{"prompt": f"later {i} [[delay_ms=5 words=4]]"} for i in range(40)]
    results = invoke_parallel_managed(prompts, max_workers=4, max_tokens=20, base_delay_ms=1, max_delay_ms=2)
    assert all(r is not None for r in results)
    recs = client_env.message_requests()
    limited = [r for r in recs if r.status == 429]
    assert len(limited) == 1 and len(recs) == 42
    t429 = limited[0].ended_at
    # requests already on their way when the 429 arrived may start just after it; then nothing
    # starts until the pause is over, and the bulk of the run happens after it
    quiet = [r for r in recs if t429 + 0.15 < r.started_at < t429 + 0.65]
    assert quiet == []
    assert sum(1 for r in recs if r.started_at >= t429 + 0.65) >= 20


# =========================================================================== managed: reconcile, stall, interrupt
def test_reconcile_matches_by_task_id_and_records_the_skipped(client_env) -> None:
    prompts = [{"prompt": f"job {c}", "task_id": c} for c in "abcd"]

    def reconcile(ps, tracker):
        assert len(tracker) == 0 and [p["task_id"] for p in ps] == list("abcd")
        keep = [dict(p) for p in reversed(ps) if p["task_id"] in ("d", "b")]  # reordered, modified copies
        keep[0]["prompt"] = "job d (edited)"
        ps[0]["prompt"] = "mutating the copy does not matter"
        return keep

    tracker = TaskTracker()
    results = invoke_parallel_managed(prompts, reconcile=reconcile, tracker=tracker, max_tokens=20, **FAST)
    assert list(results) == [None, "Echo: job b", None, "Echo: job d (edited)"]
    assert sorted(_prompts_of(client_env)) == ["job b", "job d (edited)"]
    assert prompts[0]["prompt"] == "job a"  # caller's dicts untouched
    assert [i.terminal_reason for i in tracker.all()] == [
        TerminalReason.RECONCILED_AWAY,
        TerminalReason.RECONCILED_AWAY,
        TerminalReason.SUCCEEDED,
        TerminalReason.SUCCEEDED,
    ]


def test_default_task_ids_and_seed_alias(client_env) -> None:
    from orchestration import invoke_parallel_with_reconciliation

    tracker = TaskTracker()
    seen = []

    def reconcile(ps, tr):
        seen.extend(p["task_id"] for p in ps)
        return ps[1:]

    results = invoke_parallel_with_reconciliation(
        [{"prompt": "p0"}, {"prompt": "p1"}], reconcile=reconcile, tracker=tracker, max_tokens=20, **FAST
    )
    assert seen == ["task-0", "task-1"] and list(results) == [None, "Echo: p1"]
    assert tracker.get("task-0").terminal_reason is TerminalReason.RECONCILED_AWAY


def test_resume_a_run_with_the_same_tracker(client_env) -> None:
    prompts = [{"prompt": "fine 1", "task_id": "t1"}, {"prompt": "dead [[fail=500 times=2]]", "task_id": "t2"}]
    tracker = TaskTracker()
    first = invoke_parallel_managed(prompts, tracker=tracker, max_retries=1, max_tokens=20, **FAST)
    assert list(first) == ["Echo: fine 1", None]
    assert tracker.get("t2").terminal_reason is TerminalReason.RETRIES_EXHAUSTED

    def only_unfinished(ps, tr):
        return [p for p in ps if tr.get(p["task_id"]).state is not TaskState.COMPLETED]

    second = invoke_parallel_managed(
        prompts, tracker=tracker, reconcile=only_unfinished, max_retries=1, max_tokens=20, **FAST
    )
    assert list(second) == ["Echo: fine 1", "Echo: dead"]  # t1 from the tracker, t2 re-run
    assert _prompts_of(client_env).count("fine 1") == 1
    assert tracker.get("t2").state is TaskState.COMPLETED and len(tracker) == 2


def test_stall_counts_as_transient_and_calls_on_stall(client_env) -> None:
    stalls: List[tuple] = []
    prompts = [{"prompt": "stuck [[stall_after=1 times=1]]", "task_id": "s"}, {"prompt": "fine"}]
    tracker = TaskTracker()
    results = invoke_parallel_managed(
        prompts,
        stall_timeout=0.8,
        on_stall=lambda tid, idle: stalls.append((tid, idle)),
        tracker=tracker,
        max_tokens=20,
        **FAST,
    )
    assert list(results) == ["Echo: stuck", "Echo: fine"]
    assert stalls == [("s", 0.8)]
    assert tracker.get("s").attempts == 2
    assert client_env.wait_for(lambda e: e.stats()["aborted"] >= 1, timeout=5)


def test_a_task_that_stalls_on_every_attempt_ends_stalled(client_env) -> None:
    tracker = TaskTracker()
    results = invoke_parallel_managed(
        [{"prompt": "stuck [[stall_after=1]]", "task_id": "s"}],
        stall_timeout=0.5,
        max_retries=1,
        tracker=tracker,
        max_tokens=20,
        **FAST,
    )
    assert list(results) == [None]
    assert results.errors[0].kind == "stalled" and results.errors[0].attempts == 2
    info = tracker.get("s")
    assert info.state is TaskState.FAILED and info.terminal_reason is TerminalReason.STALLED
    assert len(client_env.message_requests()) == 2


def test_interrupt_stops_the_run_promptly(client_env) -> None:
    token = InterruptToken()
    tracker = TaskTracker()
    prompts = [{"prompt": "quick"}] + [{"prompt": f"long {i} [[delay_ms=500 words=40]]"} for i in range(12)]
    timer = threading.Timer(0.5, token.interrupt)
    timer.start()
    t0 = time.monotonic()
    results = invoke_parallel_managed(
        prompts, max_workers=4, interrupt_token=token, tracker=tracker, max_tokens=100, **FAST
    )
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    assert results[0] == "Echo: quick" and all(r is None for r in results[1:])
    assert results.errors == {}
    s = tracker.reason_counts()
    assert s["succeeded"] == 1 and s["interrupted"] == 12 and sum(s.values()) == 13
    assert client_env.wait_for(lambda e: e.stats()["aborted"] >= 3, timeout=5)
    assert len(client_env.message_requests()) <= 5  # never-started tasks never started


def test_ctrl_c_in_the_caller_aborts_the_run(client_env) -> None:
    """A KeyboardInterrupt in the thread driving a managed run aborts its requests in flight,
    ends every task and leaves no worker behind, then propagates."""
    tracker = TaskTracker()
    prompts = [{"prompt": f"long {i} [[words=100000 delay_ms=20]]"} for i in range(12)]
    watcher = threading.Thread(
        target=lambda: (
            client_env.wait_for(lambda e: e.active_requests == 4, timeout=10) and os.kill(os.getpid(), signal.SIGINT)
        )
    )
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        invoke_parallel_managed(prompts, max_workers=4, tracker=tracker, max_tokens=5000, **FAST)
    assert time.monotonic() - t0 < 10
    watcher.join()
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 4, timeout=5)
    assert len(client_env.message_requests()) == 4  # nothing started after the Ctrl-C
    assert tracker.reason_counts()["interrupted"] == 12
    assert not [t for t in threading.enumerate() if t.name.startswith("claude-managed")]


def test_managed_runs_sharing_a_limiter_take_turns(client_env) -> None:
    """The limiter is FIFO for managed runs too: a second run sharing a full limiter is served
    while the first still has work, instead of waiting for all of it."""
    lim = ConcurrencyLimiter(1)

    def run(tag: str, n: int) -> None:
        invoke_parallel_managed(
            [{"prompt": f"{tag}{i} [[delay_ms=5]]"} for i in range(n)],
            max_workers=2,
            concurrency_limiter=lim,
            max_tokens=20,
        )

    a = threading.Thread(target=run, args=("A", 30))
    a.start()
    assert client_env.wait_for(lambda e: len(e.message_requests()) >= 2, timeout=10)
    b = threading.Thread(target=run, args=("B", 5))
    b.start()
    a.join(30)
    b.join(30)
    order = "".join(r.prompt[0] for r in client_env.message_requests())
    assert sorted(order) == ["A"] * 30 + ["B"] * 5
    assert order.rindex("B") < order.rindex("A")  # B finished while A still had work
    assert _max_overlap(client_env.message_requests()) == 1


def test_managed_run_is_served_among_other_limiter_users(client_env) -> None:
    """Threads looping on a shared limiter's slot() cannot starve a managed run of slots."""
    lim = ConcurrencyLimiter(2)
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            with lim.slot():
                time.sleep(0.005)

    hogs = [threading.Thread(target=hog) for _ in range(4)]
    for t in hogs:
        t.start()
    token = InterruptToken()
    safety = threading.Timer(20, token.interrupt)  # a starved run would otherwise hang the test
    safety.start()
    try:
        results = invoke_parallel_managed(
            [{"prompt": f"p{i}"} for i in range(3)],
            max_workers=3,
            concurrency_limiter=lim,
            interrupt_token=token,
            max_tokens=20,
        )
    finally:
        safety.cancel()
        stop.set()
        for t in hogs:
            t.join()
    assert list(results) == ["Echo: p0", "Echo: p1", "Echo: p2"]
    assert lim.in_use() == 0 and lim.waiting == 0


def test_interrupted_before_start_sends_nothing(client_env) -> None:
    token = InterruptToken()
    token.interrupt()
    tracker = TaskTracker()
    results = invoke_parallel_managed([{"prompt": "a"}, {"prompt": "b"}], interrupt_token=token, tracker=tracker)
    assert list(results) == [None, None]
    assert client_env.message_requests() == []
    assert tracker.reason_counts()["interrupted"] == 2


def test_cache_pilot_lets_the_rest_read_the_cache(client_env) -> None:
    shared = "Shared context. " * 400  # ~1600 tokens, above the 1024 minimum
    prompts = [{"prompt": f"question {i} [[ttft_ms=50]]"} for i in range(6)]
    results = invoke_parallel_managed(
        prompts, shared_system=shared, cache_shared_system=True, max_workers=6, max_tokens=20, **FAST
    )
    assert all(r is not None for r in results)
    cache = client_env.cache_stats()
    assert cache["writes"] == 1 and cache["reads"] == 5
    assert results.usage.cache_read_input_tokens > 0


def test_managed_run_adapts_to_a_concurrency_cap(client_env) -> None:
    """A server that allows 5 requests at once and 40 workers: the managed run halves its
    concurrency on each 429 and spreads its resumes, so it gets at least as many tasks through
    as plain invoke_parallel (which only has the SDK-style retries)."""
    client_env.configure(max_concurrent=5)
    prompts = [{"prompt": f"task {i} [[ttft_ms=50]]"} for i in range(60)]
    managed = invoke_parallel_managed(
        prompts, max_workers=40, max_retries=3, base_delay_ms=50, max_delay_ms=400, return_exceptions=True
    )
    managed_ok = sum(1 for r in managed if isinstance(r, str))
    client_env.reset()
    client_env.configure(max_concurrent=5)
    plain = cc.invoke_parallel(prompts, max_workers=40, return_exceptions=True)
    plain_ok = sum(1 for r in plain if isinstance(r, str))
    assert managed_ok == 60
    assert managed_ok >= plain_ok


def test_managed_run_follows_the_policys_retry_condition(client_env) -> None:
    policy = RetryPolicy(max_retries=3, base_delay_ms=1, max_delay_ms=1, retry_mid_response=False)
    outs: list = []
    results = invoke_parallel_managed([{"prompt": "one two three [[error_after=1 times=1]]"}], policy=policy,
                                      callbacks=[outs.append], return_exceptions=True)
    assert isinstance(results[0], ClaudeInvocationError)  # cut mid-stream: not retried under this policy
    assert len(client_env.message_requests()) == 1


def test_a_missing_key_leaves_no_task_active(client_env, monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    cc.reset_client()
    tracker = TaskTracker()
    with pytest.raises(ClaudeInvocationError):
        invoke_parallel_managed([{"prompt": "a", "task_id": "a"}], tracker=tracker)
    assert "a" not in tracker or tracker.get("a").is_terminal
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    cc.reset_client()
    assert list(invoke_parallel_managed([{"prompt": "a", "task_id": "a"}], tracker=tracker)) == ["Echo: a"]
