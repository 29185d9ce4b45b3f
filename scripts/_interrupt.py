"""InterruptToken: a flag that stops work in flight, safe to set from a signal handler.

``interrupt()`` takes no lock and runs no callback: it sets the flag and hands the token to one
dispatcher thread (through a ``queue.SimpleQueue``, whose ``put`` is reentrant), which then sets
the event and runs the abort callbacks. So a signal handler, or any thread that holds a lock a
worker needs, can call it without risk of deadlock; callbacks run a moment later on the
dispatcher thread. Layers above subscribe with :func:`subscribe` / :func:`unsubscribe`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable, Optional

logger = logging.getLogger("claude_client._interrupt")


class InterruptToken:
    """A thread-safe flag that stops work in flight.

    Pass it to the parallel functions, :func:`invoke_claude` / :func:`invoke_claude_streaming`
    or :meth:`ConversationThread.send_streaming`; ``interrupt()`` from any thread (or a signal
    handler) aborts the requests in flight (their connections are shut down) and stops new ones
    from starting.

    >>> token = InterruptToken()
    >>> threading.Timer(5.0, token.interrupt).start()
    >>> results = invoke_parallel_interruptible(prompts, interrupt_token=token)  # None where stopped
    """

    def __init__(self) -> None:
        self._flag = False
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_handle = 0
        _dispatcher.ensure_running()

    def interrupt(self) -> None:
        """Set the flag; the requests in flight are aborted a moment later (idempotent).

        Takes no lock, so it is safe in a signal handler and from a thread holding any lock.
        """
        if self._flag:
            return
        self._flag = True
        _dispatcher.post(self)

    def is_interrupted(self) -> bool:
        return self._flag

    def reset(self) -> None:
        """Clear the flag so the token can be used again."""
        with self._lock:
            self._flag = False
            self._event.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until interrupted (True) or until ``timeout`` seconds pass (False); Ctrl-C
        reaches a main thread waiting here at once (the wait is sliced)."""
        return self._flag or wait_sliced(self._event, timeout) or self._flag

    def _fire(self) -> None:
        with self._lock:
            if not self._flag or self._event.is_set():
                return  # reset meanwhile, or fired already
            self._event.set()
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            _run_callback(callback)

    def __repr__(self) -> str:
        return f"InterruptToken(interrupted={self.is_interrupted()})"


def subscribe(token: InterruptToken, callback: Callable[[], None]) -> int:
    """Run ``callback()`` when ``token`` is interrupted (at once, on this thread, if it already
    was); returns a handle for :func:`unsubscribe`. Callbacks must be quick and may run on the
    dispatcher thread: abort a request, set an event."""
    with token._lock:
        handle = token._next_handle
        token._next_handle += 1
        token._callbacks[handle] = callback
        fired = token._event.is_set()
    if fired:
        _run_callback(callback)
    return handle


def unsubscribe(token: InterruptToken, handle: int) -> None:
    with token._lock:
        token._callbacks.pop(handle, None)


def check_token(token: object, name: str = "interrupt_token") -> Optional[InterruptToken]:
    if token is not None and not isinstance(token, InterruptToken):
        raise TypeError(f"{name} must be an InterruptToken or None, got {type(token).__name__}")
    return token


#: The longest a waiting thread blocks in one go: a signal delivered to another thread (whose C
#: handler only flags it) is handled by the main thread within one slice.
WAIT_SLICE_S = 0.05


def wait_sliced(event: threading.Event, timeout: Optional[float] = None) -> bool:
    """``event.wait(timeout)`` in slices of :data:`WAIT_SLICE_S`, never one untimed block, so a
    Ctrl-C reaches a waiting main thread at once; True when the event is set."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if left <= 0:
            return False
        event.wait(left)
    return True


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("An interrupt callback raised")


class _Dispatcher:
    """One daemon thread that fires interrupted tokens (started with the first token)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[InterruptToken] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="interrupt-dispatcher", daemon=True)
                thread.start()
                self._thread = thread

    def post(self, token: InterruptToken) -> None:
        self._queue.put(token)  # reentrant: safe in a signal handler

    def _run(self) -> None:
        while True:
            self._queue.get()._fire()

    def _after_fork(self) -> None:  # the thread does not survive a fork
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._start_lock = threading.Lock()


_dispatcher = _Dispatcher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispatcher._after_fork)

InterruptToken.__module__ = "claude_client"
