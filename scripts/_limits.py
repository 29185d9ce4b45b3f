"""Concurrency limits and the shared rate-limit pause: :class:`ConcurrencyLimiter`,
:class:`RateLimitGate` (public through ``orchestration``).

The module-level functions :func:`wait_for_slot`, :func:`add_listener` and
:func:`remove_listener` are how the managed runs use a limiter beyond its public methods.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from _validation import check_number

logger = logging.getLogger("orchestration._limits")


class LimiterTimeoutError(TimeoutError):
    """:meth:`ConcurrencyLimiter.acquire` waited ``timeout`` seconds without getting a slot."""


class _Waiter:
    __slots__ = ("category", "granted", "cond")

    def __init__(self, category: Optional[str], lock: threading.Lock) -> None:
        self.category = category
        self.granted = False
        self.cond = threading.Condition(lock)


class ConcurrencyLimiter:
    """At most ``global_limit`` slots in use at once, and at most ``category_limits[c]`` for category c.

    >>> limiter = ConcurrencyLimiter(global_limit=4, category_limits={"search": 2})
    >>> with limiter.slot("search"):
    ...     limiter.in_use(), limiter.in_use("search")
    (1, 1)

    A category without an entry in ``category_limits`` (and ``None``) is bounded only by the
    global limit. ``acquire``/``release`` are the explicit form of ``slot``; the limiter is
    bounded: a ``release`` of a category that holds no slot raises ``ValueError``.

    Fairness rule (one waiter queue, in arrival order): whenever capacity frees up, the queue is
    scanned from the front and every waiter whose category has room (and for whom the global
    limit has room) is granted a slot, in order. A waiter whose category is at its limit is
    skipped, so it never blocks waiters of other categories behind it; it keeps its place, so
    within a category slots go strictly first come first served, and when its category frees a
    slot (which also frees a global slot) nobody who arrived later can take that slot first. A new
    caller takes a slot at once only if it would have been granted in the scan (no earlier waiter
    can use the slot). Hence no starvation as long as every holder eventually releases.

    Waiting can end only by being granted or by ``timeout`` (``acquire`` returns False, ``slot``
    raises ``LimiterTimeoutError``); there is no way to cancel someone else's wait.
    """

    def __init__(self, global_limit: int = 10, category_limits: Optional[Mapping[str, int]] = None) -> None:
        check_number(global_limit, "global_limit", minimum=1, integer=True)
        if category_limits is not None and not isinstance(category_limits, Mapping):
            raise TypeError(
                f"category_limits must be a mapping of str -> int >= 1, got {type(category_limits).__name__}"
            )
        limits: Dict[str, int] = {}
        for cat, lim in (category_limits or {}).items():
            if not isinstance(cat, str):
                raise TypeError(f"category_limits keys must be str, got {type(cat).__name__}")
            check_number(lim, f"category_limits[{cat!r}]", minimum=1, integer=True)
            limits[cat] = lim
        self.global_limit = global_limit
        self.category_limits: Mapping[str, int] = dict(limits)
        self._lock = threading.Lock()
        self._in_use = 0
        self._by_cat: Dict[Optional[str], int] = collections.defaultdict(int)
        self._peak = 0
        self._peak_by_cat: Dict[Optional[str], int] = collections.defaultdict(int)
        self._queue: List[_Waiter] = []
        self._listeners: List[Callable[[], None]] = []

    # ------------------------------------------------------------------ public API
    def acquire(self, category: Optional[str] = None, timeout: Optional[float] = None) -> bool:
        """Take a slot for ``category``, waiting in the fair queue if needed; True once held.

        With ``timeout`` (seconds; None waits as long as it takes) it returns False when no slot
        came in time (the seed's contract); :meth:`slot` raises ``LimiterTimeoutError`` instead.
        """
        try:
            return self._acquire(category, timeout, None)
        except LimiterTimeoutError as exc:
            logger.debug("%s", exc)
            return False

    def try_acquire(self, category: Optional[str] = None) -> bool:
        """Take a slot only if one is free for ``category`` right now (fairness rule applies)."""
        self._check_category(category)
        with self._lock:
            if self._has_room(category):
                self._take(category)
                return True
            return False

    def release(self, category: Optional[str] = None) -> None:
        """Give back a slot of ``category``; raises ``ValueError`` if it holds none."""
        with self._lock:
            if self._by_cat.get(category, 0) <= 0:
                raise ValueError(
                    f"ConcurrencyLimiter.release({category!r}) without a matching acquire "
                    f"(category {category!r} holds no slot)"
                )
            self._by_cat[category] -= 1
            self._in_use -= 1
            self._grant_waiters()
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn()
            except Exception:  # pragma: no cover - listeners are internal and must not raise
                logger.exception("limiter listener failed")

    @contextlib.contextmanager
    def slot(self, category: Optional[str] = None, timeout: Optional[float] = None) -> Iterator[None]:
        """``with limiter.slot("search"): ...`` holds one slot for the block.

        ``timeout`` raises ``LimiterTimeoutError`` (a ``TimeoutError``) naming the category and
        what is in use.
        """
        self._acquire(category, timeout, None)
        try:
            yield
        finally:
            self.release(category)

    def in_use(self, category: Optional[str] = None) -> int:
        """Slots held now: all of them, or those of ``category``."""
        with self._lock:
            return self._in_use if category is None else self._by_cat.get(category, 0)

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        with self._lock:
            return len(self._queue)

    def stats(self) -> Dict[str, Any]:
        """``{"in_use", "waiting", "peak", "by_category", "peak_by_category"}`` (peaks since creation)."""
        with self._lock:
            return {
                "in_use": self._in_use,
                "waiting": len(self._queue),
                "peak": self._peak,
                "by_category": {k: v for k, v in self._by_cat.items() if v},
                "peak_by_category": dict(self._peak_by_cat),
            }

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimiter(global_limit={self.global_limit}, category_limits={dict(self.category_limits)}, "
            f"in_use={self._in_use}, waiting={len(self._queue)})"
        )

    # ------------------------------------------------------------------ internals
    def _check_category(self, category: Optional[str]) -> None:
        if category is not None and not isinstance(category, str):
            raise ValueError(f"category must be a str or None, got {category!r}")

    def _acquire(
        self,
        category: Optional[str],
        timeout: Optional[float],
        should_stop: Optional[Callable[[], bool]],
        poll: float = 0.02,
    ) -> bool:
        """Queue for a slot. Returns False (no slot held) if ``should_stop()`` became true while
        waiting; used by the managed run so an interrupt is honoured while queued."""
        self._check_category(category)
        if timeout is not None:
            check_number(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._has_room(category):
                self._take(category)
                return True
            waiter = _Waiter(category, self._lock)
            self._queue.append(waiter)
            try:
                while not waiter.granted:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        limit = self.category_limits.get(category) if category is not None else None
                        raise LimiterTimeoutError(
                            f"no concurrency slot for category {category!r} within {timeout:g} s "
                            f"(global {self._in_use}/{self.global_limit} in use"
                            + (f", category {self._by_cat.get(category, 0)}/{limit} in use" if limit else "")
                            + ")"
                        )
                    if should_stop is not None:
                        if should_stop():
                            self._abandon(waiter)
                            return False
                        remaining = poll if remaining is None else min(remaining, poll)
                    waiter.cond.wait(remaining)
            except BaseException:  # timeout, or e.g. Ctrl-C while waiting: leave no slot or waiter behind
                self._abandon(waiter)
                raise
            return True

    def _abandon(self, waiter: _Waiter) -> None:
        # Lock held. A waiter that gives up: out of the queue, or, if a slot was granted to it
        # meanwhile, that slot goes back (to the next waiter in line).
        if waiter.granted:
            self._in_use -= 1
            self._by_cat[waiter.category] -= 1
            self._grant_waiters()
        else:
            self._queue.remove(waiter)

    def _has_room(self, category: Optional[str]) -> bool:
        if self._in_use >= self.global_limit:
            return False
        limit = self.category_limits.get(category) if category is not None else None
        return limit is None or self._by_cat.get(category, 0) < limit

    def _take(self, category: Optional[str]) -> None:
        self._in_use += 1
        self._by_cat[category] += 1
        self._peak = max(self._peak, self._in_use)
        self._peak_by_cat[category] = max(self._peak_by_cat[category], self._by_cat[category])

    def _grant_waiters(self) -> None:
        # Lock held. Scan in arrival order; grant every waiter that fits (see class docstring).
        i = 0
        while i < len(self._queue) and self._in_use < self.global_limit:
            waiter = self._queue[i]
            if self._has_room(waiter.category):
                self._take(waiter.category)
                waiter.granted = True
                del self._queue[i]
                waiter.cond.notify()
            else:
                i += 1


class RateLimitGate:
    """One dispatch pause shared by all workers of a run.

    When any request sees a 429 with ``retry-after``, call :meth:`pause_for`; every worker calls
    :meth:`wait` before sending and sleeps until the latest deadline any pause has set. Pauses only
    ever extend the deadline, never shorten it.

    >>> gate = RateLimitGate()
    >>> gate.pause_for(0.05); gate.remaining() > 0
    True
    >>> gate.wait()
    True
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._until = 0.0
        self.pauses = 0  #: how many pause_for() calls extended the deadline

    def pause_for(self, seconds: float) -> None:
        """Hold dispatch for ``seconds`` from now (no effect if an existing pause lasts longer)."""
        check_number(seconds, "seconds")
        with self._lock:
            until = self._clock() + seconds
            if until > self._until:
                self._until = until
                self.pauses += 1
                logger.info("rate limited: pausing dispatch for %.3f s", seconds)

    def remaining(self) -> float:
        """Seconds until dispatch may resume (0.0 when not paused)."""
        with self._lock:
            return max(0.0, self._until - self._clock())

    def wait(self, should_stop: Optional[Callable[[], bool]] = None, poll: float = 0.02) -> bool:
        """Block until no pause is in force. Returns False early if ``should_stop()`` becomes true."""
        with self._lock:
            while True:
                remaining = self._until - self._clock()
                if remaining <= 0:
                    return True
                if should_stop is not None:
                    if should_stop():
                        return False
                    remaining = min(remaining, poll)
                self._cond.wait(remaining)


def wait_for_slot(limiter: ConcurrencyLimiter, category: Optional[str], should_stop: Callable[[], bool]) -> bool:
    """Queue in ``limiter``'s FIFO for a slot; False (no slot held) once ``should_stop()`` is true."""
    return limiter._acquire(category, None, should_stop)


def add_listener(limiter: ConcurrencyLimiter, fn: Callable[[], None]) -> None:
    """Call ``fn()`` (outside the limiter's lock) after every release."""
    with limiter._lock:
        limiter._listeners.append(fn)


def remove_listener(limiter: ConcurrencyLimiter, fn: Callable[[], None]) -> None:
    with limiter._lock:
        with contextlib.suppress(ValueError):
            limiter._listeners.remove(fn)


for _cls in (LimiterTimeoutError, ConcurrencyLimiter, RateLimitGate):
    _cls.__module__ = "orchestration"
