"""Soak: 500 managed tasks, 20% injected transient faults, categories and limits, on the emulator."""
from __future__ import annotations

from collections import Counter

import pytest

from orchestration import ConcurrencyLimiter, invoke_parallel_managed
from task_state import TaskTracker

N = 500
FAULTS = [
    "fail=429 times=1 retry_after=0 retry_after_ms=30",
    "fail=529 times=1",
    "fail=500 times=1",
    "error_after=1 times=1",
    "stall_after=1 times=1",
]
LIMITS = {"x": 3, "y": 4}
GLOBAL = 8


def _max_overlap(records) -> int:
    events = []
    for r in records:
        events.append((r.started_at, 1))
        events.append((r.ended_at, -1))
    live = peak = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        live += d
        peak = max(peak, live)
    return peak


@pytest.mark.timeout(170)
def test_soak_500_tasks_with_transient_faults(client_env) -> None:
    prompts = []
    faulty = {}
    for i in range(N):
        cat = ("x", "y", "z", None)[i % 4]
        text = f"soak {i} {cat}"
        if i % 5 == 0:
            kind = FAULTS[(i // 5) % len(FAULTS)]
            faulty[text] = kind
            text += f" [[{kind}]]"
        prompts.append({"prompt": text, "task_id": f"task-{i}", "category": cat})
    limiter = ConcurrencyLimiter(global_limit=GLOBAL, category_limits=LIMITS)
    tracker = TaskTracker()

    results = invoke_parallel_managed(
        prompts, max_workers=12, concurrency_limiter=limiter, tracker=tracker, max_retries=3,
        base_delay_ms=5, max_delay_ms=50, stall_timeout=1.5, max_tokens=20,
    )

    # every task completed, in its own slot
    assert results.errors == {}
    assert list(results) == [f"Echo: soak {i} {('x', 'y', 'z', None)[i % 4]}" for i in range(N)]
    assert client_env.wait_idle(timeout=10)
    recs = client_env.message_requests()
    # none twice: exactly one complete, successful response per prompt; faulty ones failed exactly once
    done = Counter(r.prompt for r in recs if r.status == 200 and not r.aborted and r.error_type is None
                   and r.emitted_text.startswith("Echo:"))
    sent = Counter(r.prompt for r in recs)
    assert len(done) == N and set(done.values()) == {1}
    assert all(sent[p] == (2 if p in faulty else 1) for p in done)
    assert len(faulty) == N // 5 and len(recs) == N + len(faulty)
    # the tracker agrees with the server
    assert len(tracker) == N and tracker.summary()["completed"] == N
    assert tracker.reason_counts()["succeeded"] == N and tracker.is_all_terminal()
    assert tracker.total_attempts() == len(recs)
    assert sum(1 for i in tracker.all() if i.attempts == 2) == len(faulty)
    # limits held on the server, globally and per category
    assert client_env.peak_concurrency <= GLOBAL
    for cat, lim in LIMITS.items():
        assert _max_overlap([r for r in recs if r.prompt.split()[2] == cat]) <= lim
    st = limiter.stats()
    assert st["peak"] <= GLOBAL and st["in_use"] == 0 and st["waiting"] == 0
    per_kind = len(faulty) // len(FAULTS)
    codes = client_env.stats()["status_counts"]
    assert codes.get(429) == codes.get(529) == codes.get(500) == per_kind
    assert client_env.stats()["aborted"] == per_kind  # the stalled streams, cut by the client
    assert results.usage.output_tokens == sum(r.usage.output_tokens for r in results)
