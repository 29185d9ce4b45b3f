"""StallDetector semantics and stall handling in the streaming paths."""
from __future__ import annotations

import logging
import threading
import time

import pytest

import claude_client as cc
from claude_client import ClaudeInvocationError, StallDetector

pytestmark = pytest.mark.timeout(60)


def _stall_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stall-detector"]


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_on_stall_fires_once_per_episode():
    calls: list[tuple] = []
    detector = StallDetector(timeout=0.1, on_stall=lambda tid, idle: calls.append((tid, idle)))
    detector.register("a")
    assert detector.check_stalled() == []
    time.sleep(0.15)
    assert detector.check_stalled() == ["a"]
    assert detector.check_stalled() == ["a"]  # still stalled, not reported again
    assert len(calls) == 1 and calls[0][0] == "a" and calls[0][1] > 0.1
    detector.heartbeat("a")
    assert detector.check_stalled() == []
    time.sleep(0.15)
    assert detector.check_stalled() == ["a"]
    assert len(calls) == 2  # a new episode after a new heartbeat
    detector.unregister("a")
    assert detector.check_stalled() == []
    detector.heartbeat("ghost")  # unknown ids are ignored
    detector.unregister("ghost")
    assert detector.check_stalled() == []


def test_monitor_survives_exception_in_on_stall(caplog):
    caplog.set_level(logging.ERROR, logger="claude_client")
    seen: list = []

    def on_stall(task_id, idle):
        seen.append(task_id)
        raise RuntimeError("handler bug")

    detector = StallDetector(timeout=0.05, on_stall=on_stall)
    detector.register("first")
    detector.start_monitoring(poll_interval=0.02)
    try:
        assert _wait(lambda: "first" in seen)
        detector.register("second")
        assert _wait(lambda: "second" in seen)
        assert detector.monitoring
    finally:
        detector.stop_monitoring()
    assert seen.count("first") == 1
    assert any("on_stall raised" in r.getMessage() for r in caplog.records)


def test_stop_monitoring_joins_and_context_manager():
    before = len(_stall_threads())
    detector = StallDetector(timeout=10)
    detector.start_monitoring(poll_interval=5.0)
    assert len(_stall_threads()) == before + 1
    with pytest.raises(RuntimeError):
        detector.start_monitoring()
    started = time.monotonic()
    detector.stop_monitoring()
    assert time.monotonic() - started < 2.0  # does not wait out the poll interval
    assert len(_stall_threads()) == before and not detector.monitoring
    detector.stop_monitoring()  # idempotent
    fired = threading.Event()
    with StallDetector(timeout=0.05, on_stall=lambda tid, idle: fired.set()) as d:
        assert d.monitoring
        d.register(1)
        assert fired.wait(2.0)
    assert not d.monitoring and len(_stall_threads()) == before


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_detector_validation_bad_value(timeout):
    with pytest.raises(ValueError, match="timeout"):
        StallDetector(timeout=timeout)


@pytest.mark.parametrize("timeout", ["5", True, None])
def test_detector_validation_wrong_type(timeout):
    with pytest.raises(TypeError, match="timeout"):
        StallDetector(timeout=timeout)


def test_streaming_stall_detected_and_aborted(client_env):
    timeout = 0.5
    poll = min(1.0, timeout / 4)
    chunks: list[str] = []
    started = time.monotonic()
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("stuck here [[words=50 stall_after=3]]", callback=chunks.append, stall_timeout=timeout)
    elapsed = time.monotonic() - started
    assert info.value.kind == "stalled" and info.value.transient
    assert len(chunks) == 3
    assert timeout <= elapsed < timeout + poll + 1.0  # generous bound for a noisy machine
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)
    assert client_env.message_requests()[0].aborted
    assert _wait(lambda: _stall_threads() == [])


def test_pings_do_not_count_as_progress(client_env):
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_streaming("pinging [[stall_after=2 stall_pings=50]]", stall_timeout=0.4)
    assert info.value.kind == "stalled"
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)


def test_stall_before_first_event(client_env):
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude("slow start [[ttft_ms=30000]]", stall_timeout=0.4)
    assert info.value.kind == "stalled"
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 1, timeout=5)
    assert len(client_env.message_requests()) == 1


def test_slow_but_steady_stream_is_not_stalled(client_env):
    reply = cc.invoke_claude_streaming("steady [[words=8 delay_ms=150]]", stall_timeout=0.5)
    # 8 words plus the default model's adaptive thinking at its default effort (high: 8 tokens)
    assert reply.usage.output_tokens == 8 + 8 and reply.usage.thinking_tokens == 8
    assert client_env.stats()["aborted"] == 0


def test_streams_with_different_timeouts_share_nothing_wrong(client_env):
    prompts = [{"prompt": f"p{i} [[words=20 delay_ms=5]]"} for i in range(4)] + [{"prompt": "s [[stall_after=1]]"}]
    results = cc.invoke_parallel_streaming(prompts, stall_timeout=0.3, return_exceptions=True, max_workers=5)
    assert [type(r).__name__ for r in results] == ["ClaudeResponse"] * 4 + ["ClaudeInvocationError"]
    assert results[4].kind == "stalled"
    assert _wait(lambda: _stall_threads() == [])


def test_server_retry_wait_is_not_a_stall(client_env):
    """A 529 with retry-after longer than stall_timeout is waited out (not counted as a stall) and
    retried like the SDK would; only then does the stream run."""
    started = time.monotonic()
    reply = cc.invoke_claude_streaming("[[fail=529 retry_after=2 times=1]] hi", stall_timeout=0.5)
    assert reply == "Echo: hi"
    assert time.monotonic() - started >= 1.9  # the server's retry-after was honoured
    assert [r.status for r in client_env.message_requests()] == [529, 200]
