"""Stall detection: :class:`StallDetector` (public) and the shared watch over streams in flight.

A stream "stalls" when no content event arrives for ``stall_timeout`` seconds (pings do not
count). The transport registers each streamed attempt with :data:`stall_watch`, which aborts it
through its abort handle (``handle.abort("stalled")``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol

from _validation import check_callable, check_seconds

logger = logging.getLogger("claude_client._stall")


class _Abortable(Protocol):
    stall: Optional[tuple]

    def abort(self, reason: str) -> None: ...


class StallDetector:
    """Watch tasks that should show progress and report the ones idle for longer than ``timeout``.

    ``on_stall(task_id, idle_seconds)`` is called once per stall episode: again only after a new
    heartbeat and a new stall. An exception inside it is logged; the monitor keeps running.

    >>> with StallDetector(timeout=30.0, on_stall=lambda tid, idle: print(tid, idle)) as d:
    ...     d.register("job-1")
    ...     for chunk in work():
    ...         d.heartbeat("job-1")
    ...     d.unregister("job-1")
    """

    def __init__(self, timeout: float = 60.0, on_stall: Optional[Callable[[str, float], Any]] = None) -> None:
        timeout = check_seconds(timeout, "timeout")
        check_callable(on_stall, "on_stall")
        self.timeout = timeout
        self.on_stall = on_stall
        self._lock = threading.Lock()
        self._last: dict[Any, float] = {}
        self._reported: set[Any] = set()
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[threading.Event] = None

    def register(self, task_id: Any) -> None:
        """Start watching ``task_id`` (its clock starts now)."""
        with self._lock:
            self._last[task_id] = time.monotonic()
            self._reported.discard(task_id)

    def heartbeat(self, task_id: Any) -> None:
        """Record progress of ``task_id`` (ignored for a task that is not registered)."""
        with self._lock:
            if task_id in self._last:
                self._last[task_id] = time.monotonic()
                self._reported.discard(task_id)

    def unregister(self, task_id: Any) -> None:
        """Stop watching ``task_id`` (no error if unknown)."""
        with self._lock:
            self._last.pop(task_id, None)
            self._reported.discard(task_id)

    def check_stalled(self) -> list:
        """The ids idle for longer than ``timeout``; calls ``on_stall`` for each new episode."""
        now = time.monotonic()
        fire: list[tuple[Any, float]] = []
        stalled: list = []
        with self._lock:
            for task_id, last in self._last.items():
                idle = now - last
                if idle > self.timeout:
                    stalled.append(task_id)
                    if task_id not in self._reported:
                        self._reported.add(task_id)
                        fire.append((task_id, idle))
        if self.on_stall is not None:
            for task_id, idle in fire:
                try:
                    self.on_stall(task_id, idle)
                except Exception:
                    logger.exception("on_stall raised for task %r", task_id)
        return stalled

    def start_monitoring(self, poll_interval: float = 5.0) -> None:
        """Check every ``poll_interval`` seconds on a daemon thread until :meth:`stop_monitoring`."""
        poll_interval = check_seconds(poll_interval, "poll_interval")
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("StallDetector is already monitoring; call stop_monitoring() first")
            stop = threading.Event()
            thread = threading.Thread(
                target=self._monitor, args=(stop, poll_interval), name="stall-detector", daemon=True
            )
            self._stop, self._thread = stop, thread
        thread.start()

    def stop_monitoring(self) -> None:
        """Stop the monitor thread and wait for it to end (no-op if not monitoring)."""
        with self._lock:
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def monitoring(self) -> bool:
        return self._thread is not None

    def _monitor(self, stop: threading.Event, poll_interval: float) -> None:
        while not stop.wait(poll_interval):
            try:
                self.check_stalled()
            except Exception:  # pragma: no cover - check_stalled already guards on_stall
                logger.exception("stall check failed")

    def __enter__(self) -> StallDetector:
        self.start_monitoring(poll_interval=min(5.0, self.timeout / 4))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_monitoring()


class _StallWatch:
    """One shared StallDetector per stall_timeout value, watching the streams in flight.

    A detector polls every ``min(1.0, timeout / 4)`` seconds and stops (its thread joined) when
    its last stream ends, so no thread outlives the streams it watches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._detectors: dict[float, StallDetector] = {}
        self._calls: dict[float, dict[int, _Abortable]] = {}
        self._next = 0

    def watch(self, call: _Abortable, timeout: float) -> None:
        with self._lock:
            detector = self._detectors.get(timeout)
            if detector is None:
                detector = StallDetector(timeout, on_stall=functools.partial(self._on_stall, timeout))
                detector.start_monitoring(poll_interval=min(1.0, timeout / 4))
                self._detectors[timeout] = detector
                self._calls[timeout] = {}
            self._next += 1
            task_id = self._next
            self._calls[timeout][task_id] = call
            detector.register(task_id)
        call.stall = (detector, task_id, timeout)

    def unwatch(self, call: _Abortable) -> None:
        if call.stall is None:
            return
        detector, task_id, timeout = call.stall
        call.stall = None
        stop = None
        with self._lock:
            detector.unregister(task_id)
            calls = self._calls.get(timeout)
            if calls is not None:
                calls.pop(task_id, None)
                if not calls and self._detectors.get(timeout) is detector:
                    del self._detectors[timeout]
                    del self._calls[timeout]
                    stop = detector
        if stop is not None:
            stop.stop_monitoring()

    def _on_stall(self, timeout: float, task_id: int, idle: float) -> None:
        with self._lock:
            call = self._calls.get(timeout, {}).get(task_id)
        if call is not None:
            logger.warning("Stream stalled: no content event for %.1f s (stall_timeout=%s); aborting", idle, timeout)
            call.abort("stalled")


stall_watch = _StallWatch()
StallDetector.__module__ = "claude_client"
