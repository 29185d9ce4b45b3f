"""Pure parts of orchestration: RetryPolicy, ConcurrencyLimiter fairness and bounds, RateLimitGate."""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import List, Optional

import pytest

from orchestration import (
    ConcurrencyLimiter,
    LimiterTimeoutError,
    RateLimitGate,
    RetryPolicy,
    exponential_backoff,
    is_transient,
    retry_after_of,
)

pytestmark = pytest.mark.timeout(60)


class _Err(Exception):
    def __init__(self, transient: bool = True, retry_after: Optional[float] = None) -> None:
        super().__init__("err")
        self.transient = transient
        self.retry_after = retry_after


# --------------------------------------------------------------------------- retry policy
def test_exponential_backoff_doubles_and_caps() -> None:
    assert [exponential_backoff(n, 1000, 10000) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert exponential_backoff(500, 1, 2) == 0.002  # huge attempt numbers do not overflow
    with pytest.raises(ValueError, match="attempt"):
        exponential_backoff(0, 1000, 10000)


@pytest.mark.parametrize("jitter,low_frac", [("full", 0.0), ("equal", 0.5), ("none", 1.0)])
def test_jitter_stays_within_its_band(jitter: str, low_frac: float) -> None:
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=800, jitter=jitter)
    rng = random.Random(7)
    for attempt in range(1, 8):
        cap = exponential_backoff(attempt, 100, 800)
        samples = [policy.delay_for(attempt, None, rng) for _ in range(300)]
        assert all(cap * low_frac - 1e-12 <= s <= cap + 1e-12 for s in samples)
        if jitter != "none":
            assert max(samples) - min(samples) > cap * 0.2  # it really is spread


def test_retry_after_is_a_floor_and_is_capped() -> None:
    policy = RetryPolicy(base_delay_ms=10, max_delay_ms=20, max_retry_after_s=5.0)
    rng = random.Random(1)
    assert policy.delay_for(1, _Err(retry_after=0.3), rng) == pytest.approx(0.3)
    assert policy.delay_for(1, _Err(retry_after=120.0), rng) == 5.0
    # backoff larger than retry-after wins
    slow = RetryPolicy(base_delay_ms=2000, max_delay_ms=2000, jitter="none")
    assert slow.delay_for(1, _Err(retry_after=0.5)) == 2.0
    for bad in (None, 0, -1, float("nan"), "3", True):
        assert retry_after_of(_Err(retry_after=bad)) is None  # type: ignore[arg-type]


def test_compute_backoff_delay_seed_helper() -> None:
    from orchestration import compute_backoff_delay

    assert [compute_backoff_delay(n) for n in (0, 1, 2, 3, 4, 5, 6)] == [1.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert compute_backoff_delay(6, is_continuation=True) == 1.0
    assert compute_backoff_delay(3, base_ms=100, max_ms=300) == 0.3
    with pytest.raises(ValueError, match="attempt"):
        compute_backoff_delay(-1)


def test_should_retry_counts_attempts_like_the_tracker() -> None:
    policy = RetryPolicy(max_retries=3)
    assert policy.max_attempts == 4
    assert [policy.should_retry(_Err(), n) for n in range(1, 6)] == [True, True, True, False, False]
    assert not policy.should_retry(_Err(transient=False), 1)
    assert not policy.should_retry(KeyError("x"), 1)  # programming errors are permanent


def test_is_transient_reads_the_flag() -> None:
    assert is_transient(_Err(True)) and not is_transient(_Err(False))
    assert not is_transient(ValueError("bad"))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"max_retries": -1}, "max_retries"),
        ({"base_delay_ms": -5}, "base_delay_ms"),
        ({"base_delay_ms": 500, "max_delay_ms": 100}, "max_delay_ms"),
        ({"base_delay_ms": float("inf"), "max_delay_ms": float("inf")}, "base_delay_ms"),
        ({"max_delay_ms": float("nan")}, "max_delay_ms"),
        ({"jitter": "random"}, "jitter"),
    ],
)
def test_policy_validation_names_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"max_retries": 1.5}, "max_retries"), ({"max_delay_ms": "10"}, "max_delay_ms"), ({"jitter": 1}, "jitter")],
)
def test_policy_wrong_types_raise_type_error(kwargs: dict, name: str) -> None:
    with pytest.raises(TypeError, match=name):
        RetryPolicy(**kwargs)


# --------------------------------------------------------------------------- limiter
def _wait_until(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def test_limiter_validation_and_bounded_release() -> None:
    with pytest.raises(ValueError, match="global_limit"):
        ConcurrencyLimiter(global_limit=0)
    with pytest.raises(ValueError, match="category_limits"):
        ConcurrencyLimiter(category_limits={"a": 0})
    lim = ConcurrencyLimiter(2, {"a": 1})
    with pytest.raises(ValueError, match="without a matching acquire"):
        lim.release()
    lim.acquire("b")
    with pytest.raises(ValueError, match="'a'"):
        lim.release("a")  # the slot is held by "b", not "a"
    lim.release("b")
    assert lim.in_use() == 0
    with pytest.raises(ValueError, match="category"):
        lim.acquire(3)  # type: ignore[arg-type]


def test_limiter_timeout_returns_false_or_raises_clear_error_and_leaves_queue() -> None:
    lim = ConcurrencyLimiter(2, {"a": 1})
    assert lim.acquire("a") is True
    assert lim.acquire("a", timeout=0.05) is False  # the seed's contract
    assert lim.waiting == 0 and lim.in_use("a") == 1
    with pytest.raises(LimiterTimeoutError, match=r"'a'.*0.05 s.*category 1/1"):
        with lim.slot("a", timeout=0.05):
            pass  # pragma: no cover
    assert lim.waiting == 0
    with lim.slot("b", timeout=0.05):  # other categories still get through
        assert lim.in_use() == 2
    lim.release("a")
    assert isinstance(LimiterTimeoutError("x"), TimeoutError)


def test_ctrl_c_while_queued_leaves_no_slot_or_waiter_behind() -> None:
    """A KeyboardInterrupt in a thread waiting for a slot must not leak the slot granted later."""
    lim = ConcurrencyLimiter(1)
    assert lim.acquire()
    threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        with lim.slot():
            pass  # pragma: no cover - never granted before the interrupt
    assert lim.waiting == 0
    lim.release()
    assert lim.in_use() == 0
    assert lim.acquire(timeout=1.0) is True  # full capacity is back
    lim.release()


def test_limiter_never_exceeds_limits_under_contention() -> None:
    lim = ConcurrencyLimiter(global_limit=5, category_limits={"a": 2, "b": 3})
    peak = {"all": 0, "a": 0, "b": 0, "c": 0}
    live = {"all": 0, "a": 0, "b": 0, "c": 0}
    guard = threading.Lock()

    def worker(k: int) -> None:
        cat = "abc"[k % 3]
        for _ in range(30):
            with lim.slot(cat):
                with guard:
                    live["all"] += 1
                    live[cat] += 1
                    for key in ("all", cat):
                        peak[key] = max(peak[key], live[key])
                time.sleep(0.0005)
                with guard:
                    live["all"] -= 1
                    live[cat] -= 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak["all"] <= 5 and peak["a"] <= 2 and peak["b"] <= 3
    st = lim.stats()
    assert st["peak"] == peak["all"] and st["in_use"] == 0 and st["waiting"] == 0
    assert st["peak_by_category"]["a"] <= 2


def _queue_in_order(
    lim: ConcurrencyLimiter, cats: List[Optional[str]], log: List[str], first: int = 0
) -> List[threading.Thread]:
    """Start one waiter per category (named category + number), each after the previous one queued."""
    threads = []
    for i, cat in enumerate(cats, start=first):
        name = f"{cat}{i}"

        def run(cat=cat, name=name) -> None:
            lim.acquire(cat)
            log.append(name)

        before = lim.waiting
        t = threading.Thread(target=run, daemon=True)
        t.start()
        _wait_until(lambda: lim.waiting == before + 1)
        threads.append(t)
    return threads


def test_limiter_is_fifo_when_global_limit_is_full() -> None:
    lim = ConcurrencyLimiter(global_limit=1)
    lim.acquire("x")
    log: List[str] = []
    threads = _queue_in_order(lim, ["a", "b", "a", "c", "b"], log)
    for n in range(1, 6):
        lim.release(log[-1][0] if log else "x")
        _wait_until(lambda: len(log) == n)
    for t in threads:
        t.join(5)
    lim.release(log[-1][0])
    assert log == ["a0", "b1", "a2", "c3", "b4"]


def test_full_category_does_not_block_others_and_is_not_starved() -> None:
    lim = ConcurrencyLimiter(global_limit=2, category_limits={"a": 1})
    lim.acquire("a")
    log: List[str] = []
    threads = _queue_in_order(lim, ["a"], log)  # a0 waits: category a is full
    # a caller of another category is not held up behind a0 while the global limit has room
    lim.acquire("b", timeout=1.0)
    assert log == [] and lim.in_use() == 2
    # now global is full too: b1, a2, b3 queue behind a0
    threads += _queue_in_order(lim, ["b", "a", "b"], log, first=1)
    lim.release("b")  # frees a global slot only: a0 still blocked by its category, b1 goes
    _wait_until(lambda: log == ["b1"])
    lim.release("a")  # frees an "a" slot: a0 (first in line) gets it, not a2
    _wait_until(lambda: log == ["b1", "a0"])
    lim.release("b")  # b3 overtakes a2 (category a full again), a2 keeps its place
    _wait_until(lambda: log == ["b1", "a0", "b3"])
    lim.release("a")
    _wait_until(lambda: log == ["b1", "a0", "b3", "a2"])
    for t in threads:
        t.join(5)
    assert lim.in_use() == 2 and lim.in_use("a") == 1 and lim.waiting == 0


def test_new_caller_does_not_jump_an_eligible_queue() -> None:
    lim = ConcurrencyLimiter(global_limit=1)
    lim.acquire()
    log: List[str] = []
    threads = _queue_in_order(lim, [None], log)
    assert not lim.try_acquire()  # global full: must queue
    lim.release()
    _wait_until(lambda: log == ["None0"])
    assert not lim.try_acquire()  # the slot went to the waiter, not to the newcomer
    threads[0].join(5)
    lim.release()
    assert lim.try_acquire()
    lim.release()


# --------------------------------------------------------------------------- gate
def test_gate_pauses_everyone_until_the_latest_deadline() -> None:
    gate = RateLimitGate()
    assert gate.remaining() == 0 and gate.wait()
    gate.pause_for(0.3)
    gate.pause_for(0.05)  # a shorter pause never shortens the deadline
    assert gate.remaining() > 0.2 and gate.pauses == 1
    woke: List[float] = []
    t0 = time.monotonic()

    def waiter() -> None:
        gate.wait()
        woke.append(time.monotonic() - t0)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(woke) == 4 and min(woke) >= 0.28


def test_gate_wait_stops_early_when_asked() -> None:
    gate = RateLimitGate()
    gate.pause_for(30)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    t0 = time.monotonic()
    assert gate.wait(stop.is_set) is False
    assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="seconds"):
        gate.pause_for(-1)
