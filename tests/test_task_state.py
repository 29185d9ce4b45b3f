"""TaskTracker: state machine against a reference model (hypothesis), snapshots, thread hammer."""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict, Optional, Tuple

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from task_state import (
    InvalidTransitionError,
    TaskInfo,
    TaskState,
    TaskTracker,
    TerminalReason,
)

S = TaskState
R = TerminalReason

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- reference model
# The model is deliberately written as a flat table, independently of the implementation.
ALLOWED_FROM = {
    "claim": {S.UNCLAIMED, S.RETRY_QUEUED},
    "start": {S.CLAIMED},
    "complete": {S.RUNNING},
    "fail": {S.RUNNING},
    "retry": {S.FAILED},
}


class _Model:
    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries
        # id -> (state, attempts, reason, per-task max_retries)
        self.tasks: Dict[str, Tuple[S, int, Optional[R], int]] = {}

    def apply(self, op: str, tid: str, **kw) -> Optional[Tuple[S, int, Optional[R], int]]:
        """Return the expected new record, or None when the move must be rejected."""
        state, attempts, reason, mr = self.tasks[tid]
        if reason is not None:
            return None
        if op == "cancel":
            return (S.CANCELLED, attempts, kw["reason"], mr)
        if state not in ALLOWED_FROM[op]:
            return None
        if op == "claim":
            return (S.CLAIMED, attempts, None, mr)
        if op == "start":
            return (S.RUNNING, attempts + 1, None, mr)
        if op == "complete":
            return (S.COMPLETED, attempts, R.SUCCEEDED, mr)
        if op == "retry":
            return (S.RETRY_QUEUED, attempts, None, mr)
        if op == "fail":
            if not kw["transient"]:
                return (S.FAILED, attempts, R.FAILED_PERMANENTLY, mr)
            if attempts >= mr + 1:
                return (S.FAILED, attempts, R.RETRIES_EXHAUSTED, mr)
            return (S.FAILED, attempts, None, mr)
        raise AssertionError(op)


TASK_IDS = st.sampled_from([f"t{i}" for i in range(3)])


class TrackerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = TaskTracker(max_retries=2)
        self.model = _Model(max_retries=2)
        self.snapshots: list[Tuple[TaskInfo, Tuple[S, int, Optional[R], int]]] = []

    def _do(self, op: str, tid: str, call, **kw) -> None:
        if tid not in self.model.tasks:
            with pytest.raises(KeyError, match=tid):
                call()
            return
        before = self.model.tasks[tid]
        expected = self.model.apply(op, tid, **kw)
        if expected is None:
            with pytest.raises(InvalidTransitionError) as ei:
                call()
            err = ei.value
            assert isinstance(err, ValueError)
            assert err.task_id == tid and err.current is before[0] and err.from_state is before[0]
            assert tid in str(err) and before[0].value in str(err) and err.target.value in str(err)
            assert self.tracker.get(tid).state is before[0]  # rejected moves change nothing
            return
        info = call()
        self.model.tasks[tid] = expected
        assert (info.state, info.attempts, info.terminal_reason, info.max_retries) == expected
        self.snapshots.append((info, expected))

    @rule(tid=TASK_IDS, mr=st.one_of(st.none(), st.integers(0, 2)), category=st.sampled_from([None, "a", "b"]))
    def add(self, tid: str, mr: Optional[int], category: Optional[str]) -> None:
        if tid in self.model.tasks:
            with pytest.raises(ValueError, match=tid):
                self.tracker.add(tid, category, max_retries=mr)
            return
        info = self.tracker.add(tid, category, max_retries=mr)
        eff = self.model.max_retries if mr is None else mr
        self.model.tasks[tid] = (S.UNCLAIMED, 0, None, eff)
        assert info.state is S.UNCLAIMED and info.category == category and info.max_retries == eff

    @rule(tid=TASK_IDS)
    def claim(self, tid: str) -> None:
        self._do("claim", tid, lambda: self.tracker.claim(tid))

    @rule(tid=TASK_IDS)
    def start(self, tid: str) -> None:
        self._do("start", tid, lambda: self.tracker.start(tid))

    @rule(tid=TASK_IDS)
    def complete(self, tid: str) -> None:
        self._do("complete", tid, lambda: self.tracker.complete(tid, result=f"r-{tid}"))

    @rule(tid=TASK_IDS, transient=st.booleans())
    def fail(self, tid: str, transient: bool) -> None:
        self._do("fail", tid, lambda: self.tracker.fail(tid, error=RuntimeError("x"), transient=transient),
                 transient=transient)

    @rule(tid=TASK_IDS)
    def retry(self, tid: str) -> None:
        self._do("retry", tid, lambda: self.tracker.retry(tid))

    @rule(tid=TASK_IDS, reason=st.sampled_from([R.CANCELLED, R.INTERRUPTED, R.RECONCILED_AWAY, R.STALLED]))
    def cancel(self, tid: str, reason: R) -> None:
        self._do("cancel", tid, lambda: self.tracker.cancel(tid, reason), reason=reason)

    @precondition(lambda self: bool(self.model.tasks))
    @rule(data=st.data(), transient=st.booleans(), succeed=st.booleans())
    def advance(self, data, transient: bool, succeed: bool) -> None:
        """Make the natural next move of an existing task, so runs reach deep retry chains."""
        tid = data.draw(st.sampled_from(sorted(self.model.tasks)))
        state = self.model.tasks[tid][0]
        if state in (S.UNCLAIMED, S.RETRY_QUEUED):
            self.claim(tid)
        elif state is S.CLAIMED:
            self.start(tid)
        elif state is S.RUNNING and succeed:
            self.complete(tid)
        elif state is S.RUNNING:
            self.fail(tid, transient)
        else:
            self.retry(tid)

    @precondition(lambda self: bool(self.model.tasks))
    @invariant()
    def agrees_with_model(self) -> None:
        for tid, (state, attempts, reason, mr) in self.model.tasks.items():
            info = self.tracker.get(tid)
            assert (info.state, info.attempts, info.terminal_reason) == (state, attempts, reason)
            assert info.attempts <= info.max_attempts == mr + 1
            assert info.is_terminal == (reason is not None)
            assert info.can_retry == (state is S.FAILED and reason is None)
            assert info.history[-1] is state and info.history[0] is S.UNCLAIMED
        s = self.tracker.summary()
        reasons = self.tracker.reason_counts()
        assert len(self.tracker) == len(self.model.tasks) == sum(s.values())
        assert self.tracker.total_attempts() == sum(v[1] for v in self.model.tasks.values())
        for st_ in S:
            n = sum(1 for v in self.model.tasks.values() if v[0] is st_)
            assert s[st_.value] == n
            assert len(self.tracker.get_by_state(st_)) == n
        for r in R:
            assert reasons[r.value] == sum(1 for v in self.model.tasks.values() if v[2] is r)
        assert self.tracker.is_all_terminal() == all(
            v[0] in (S.COMPLETED, S.FAILED, S.CANCELLED) for v in self.model.tasks.values()
        )
        assert self.tracker.active_count() == sum(
            1 for v in self.model.tasks.values() if v[0] in (S.CLAIMED, S.RUNNING)
        )

    @invariant()
    def snapshots_never_change(self) -> None:
        for info, expected in self.snapshots[-20:]:
            assert (info.state, info.attempts, info.terminal_reason, info.max_retries) == expected


TestTrackerStateMachine = TrackerMachine.TestCase
TestTrackerStateMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --------------------------------------------------------------------------- direct behaviour
def test_attempt_rule_max_retries_3_means_4_attempts() -> None:
    t = TaskTracker(max_retries=3)
    t.add("x")
    for n in range(1, 5):
        t.claim("x")
        assert t.start("x").attempts == n
        info = t.fail("x", error=TimeoutError("slow"), transient=True)
        if n < 4:
            assert info.can_retry and info.retries_left == 4 - n
            t.retry("x")
    assert info.state is S.FAILED and info.terminal_reason is R.RETRIES_EXHAUSTED
    assert info.attempts == 4 and not info.can_retry and info.retries_left == 0
    with pytest.raises(InvalidTransitionError, match="retries_exhausted"):
        t.retry("x")


def test_transient_defaults_to_the_error_flag_else_retryable() -> None:
    class Flagged(Exception):
        def __init__(self, transient: bool) -> None:
            self.transient = transient

    t = TaskTracker()
    for tid in ("p", "q", "r", "s", "u"):
        t.add(tid)
        t.claim(tid)
        t.start(tid)
    assert t.fail("p", error=ValueError("bad"), transient=False).terminal_reason is R.FAILED_PERMANENTLY
    assert t.fail("q", error=Flagged(False)).terminal_reason is R.FAILED_PERMANENTLY
    assert t.fail("r", error=Flagged(True)).can_retry
    assert t.fail("s", error="a message, as seed callers pass").can_retry  # the caller decides
    assert t.fail("u").can_retry
    assert t.get("s").error == "a message, as seed callers pass"


def test_seed_api_transition_category_and_terminal_helpers() -> None:
    from task_state import TERMINAL_STATES

    t = TaskTracker(max_retries=1)
    t.add("a", "cat1", {"k": 1})  # metadata positional, as in the seed
    t.add("b", "cat2")
    assert t.get("a").metadata == {"k": 1}
    assert t.transition("a", S.CLAIMED).state is S.CLAIMED
    assert t.transition("a", "running").attempt == 1
    with pytest.raises(InvalidTransitionError) as ei:
        t.transition("a", S.UNCLAIMED)
    assert (ei.value.task_id, ei.value.current, ei.value.target) == ("a", S.RUNNING, S.UNCLAIMED)
    assert t.transition("a", S.FAILED).state is S.FAILED
    assert not t.is_all_terminal()  # b is still unclaimed
    t.transition("b", S.CANCELLED)
    assert t.is_all_terminal() and TERMINAL_STATES == {S.COMPLETED, S.FAILED, S.CANCELLED}
    assert [i.task_id for i in t.get_by_category("cat1")] == ["a"]
    assert t.summary() == {"unclaimed": 0, "claimed": 0, "running": 0, "completed": 0, "failed": 1,
                           "retry_queued": 0, "cancelled": 1}
    assert S.RUNNING.value == "running" and str(S.RUNNING) == "running"
    with pytest.raises(ValueError, match="target"):
        t.transition("a", "flying")


def test_error_message_names_task_and_both_states() -> None:
    t = TaskTracker()
    t.add("job-7")
    with pytest.raises(InvalidTransitionError) as ei:
        t.complete("job-7")
    msg = str(ei.value)
    assert "job-7" in msg and "unclaimed" in msg and "completed" in msg
    assert isinstance(ei.value, ValueError)


def test_snapshot_is_frozen_and_detached() -> None:
    t = TaskTracker()
    info = t.add("a", "cat", metadata={"k": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.state = S.RUNNING  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.metadata["k"] = 2  # type: ignore[index]
    t.claim("a")
    assert info.state is S.UNCLAIMED and info.history == (S.UNCLAIMED,)
    assert t.get("a").history == (S.UNCLAIMED, S.CLAIMED)


def test_bad_input_fails_fast() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        TaskTracker(max_retries=-1)
    with pytest.raises(TypeError, match="max_retries"):  # a wrong type is a TypeError
        TaskTracker(max_retries=True)  # type: ignore[arg-type]
    t = TaskTracker()
    with pytest.raises(ValueError, match="task_id"):
        t.add("")
    with pytest.raises(TypeError, match="task_id"):
        t.add(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="category"):
        t.add("b", category=5)  # type: ignore[arg-type]
    t.add("a")
    with pytest.raises(ValueError, match="reason"):
        t.cancel("a", R.SUCCEEDED)
    with pytest.raises(KeyError, match="nope"):
        t.get("nope")


def test_replace_only_terminal_tasks() -> None:
    t = TaskTracker()
    t.add("a")
    with pytest.raises(ValueError, match="not terminal"):
        t.add("a", replace=True)
    t.cancel("a")
    assert t.add("a", replace=True).state is S.UNCLAIMED
    assert len(t) == 1 and "a" in t


def test_active_count_by_category() -> None:
    t = TaskTracker()
    for i, cat in enumerate(["a", "a", "b", None]):
        t.add(str(i), cat)
        t.claim(str(i))
    t.start("0")
    assert t.active_count() == 4 and t.active_count("a") == 2 and t.active_count("b") == 1
    t.complete("0")
    assert t.active_count("a") == 1


# --------------------------------------------------------------------------- thread hammer
@pytest.mark.timeout(60)
def test_sixteen_thread_hammer() -> None:
    """16 threads drive 1600 tasks through claim/start/fail/retry/complete, racing for claims.

    Every task is claimed by exactly one thread per round (claim is atomic), attempts add up,
    and the summary agrees with what the threads did.
    """
    n_threads, n_tasks = 16, 1600
    t = TaskTracker(max_retries=2)
    for i in range(n_tasks):
        t.add(f"t{i}", category="even" if i % 2 == 0 else "odd")
    ids = [f"t{i}" for i in range(n_tasks)]
    won: list[list[str]] = [[] for _ in range(n_threads)]
    outcomes: list[Dict[str, str]] = [{} for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            barrier.wait()
            pending = True
            while pending:
                pending = False
                for tid in ids[k::3] + ids[::-7]:  # overlapping orders -> real contention
                    try:
                        t.claim(tid)
                    except InvalidTransitionError:
                        continue
                    pending = True
                    won[k].append(tid)
                    info = t.start(tid)
                    num = int(tid[1:])
                    # tasks divisible by 5 always fail transiently; odd ones fail once, then succeed
                    if num % 5 == 0 or (num % 2 == 1 and info.attempts == 1):
                        info = t.fail(tid, error=TimeoutError(), transient=True)
                        if info.can_retry:
                            t.retry(tid)
                        else:
                            outcomes[k][tid] = "exhausted"
                    else:
                        t.complete(tid, result=k)
                        outcomes[k][tid] = "done"
                    t.active_count("even")
                    t.summary()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    all_outcomes: Dict[str, str] = {}
    for d in outcomes:
        assert not (set(d) & set(all_outcomes)), "a task ended twice"
        all_outcomes.update(d)
    assert len(all_outcomes) == n_tasks
    exhausted = {f"t{i}" for i in range(n_tasks) if i % 5 == 0}
    assert {k for k, v in all_outcomes.items() if v == "exhausted"} == exhausted
    expected_attempts = sum(3 if i % 5 == 0 else (2 if i % 2 == 1 else 1) for i in range(n_tasks))
    assert sum(len(w) for w in won) == expected_attempts
    assert t.total_attempts() == expected_attempts
    assert t.summary()["completed"] == n_tasks - len(exhausted)
    reasons = t.reason_counts()
    assert reasons["retries_exhausted"] == len(exhausted)
    assert sum(reasons.values()) == n_tasks and t.active_count() == 0 and t.is_all_terminal()
    for tid in ids:
        info = t.get(tid)
        if info.state is S.COMPLETED:
            assert outcomes[info.result][tid] == "done"  # completed by the thread that recorded it
