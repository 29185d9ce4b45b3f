"""Retries, concurrency limits and a shared rate-limit pause for many Claude calls.

The pieces, smallest first:

* :func:`is_transient` - the one question "is this failure worth another attempt?". It defers
  to ``ClaudeInvocationError.transient`` (``claude_client.TRANSIENT_KINDS`` is the single
  classification); any other exception is classified through ``claude_client._error_from``.
* :class:`RetryPolicy` - how many attempts and how long to wait between them: capped exponential
  backoff with full or equal jitter, never shorter than the server's ``retry-after``.
* :class:`ConcurrencyLimiter` - a bounded, FIFO-fair limit on simultaneous calls, globally and
  per category.
* :class:`RateLimitGate` - one pause shared by every worker of a run: after a 429 that carries
  ``retry-after``, nobody dispatches until it has passed (no stampede).
* :func:`invoke_with_retry` and :func:`invoke_parallel_managed` - the two entry points that put
  them together (see their docstrings).

Attempt counting is the same everywhere in the library: ``max_retries=3`` means one try plus
three retries, at most four attempts (HTTP requests) per task. The SDK's own retries are switched
off for these calls so attempts never multiply.
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import claude_client as cc
from claude_client import DEFAULT_MODEL
from task_state import TaskState, TaskTracker, TerminalReason

if TYPE_CHECKING:  # pragma: no cover
    from claude_client import ClaudeInvocationError, ClaudeResponse, InterruptToken, ParallelResults

__all__ = [
    "RetryPolicy",
    "is_transient",
    "retry_after_of",
    "exponential_backoff",
    "compute_backoff_delay",
    "full_jitter",
    "equal_jitter",
    "ConcurrencyLimiter",
    "LimiterTimeoutError",
    "RateLimitGate",
    "invoke_with_retry",
    "invoke_parallel_managed",
    "invoke_parallel_with_reconciliation",
]

logger = logging.getLogger(__name__)

#: Longest server-requested wait (``retry-after``) that is honoured as is; longer values are cut
#: to this (seconds). A server asking for more than a minute is better answered by failing.
DEFAULT_MAX_RETRY_AFTER_S = 60.0


# =============================================================================== classification
def is_transient(error: BaseException) -> bool:
    """True when ``error`` is worth another attempt.

    ``ClaudeInvocationError`` (and anything else with a boolean ``transient`` attribute) answers
    for itself; SDK and transport exceptions are classified by ``claude_client._error_from``, the
    library's single classification (429, 408, 409, 5xx including 529, connection errors,
    timeouts, mid-stream overloaded_error and stalls are transient; auth, bad request, validation
    and programming errors are not). Any other exception (``TypeError``, ``KeyError`` ...) is a
    programming error: not transient.

    >>> is_transient(ValueError("bad"))
    False
    """
    flag = getattr(error, "transient", None)
    if isinstance(flag, bool):
        return flag
    if _is_sdk_error(error):
        try:
            return bool(cc._error_from(error).transient)
        except Exception:  # pragma: no cover - classification must never raise
            logger.debug("could not classify %r", error, exc_info=True)
    return False


def _is_sdk_error(error: BaseException) -> bool:
    mod = type(error).__module__ or ""
    return mod.startswith(("anthropic", "httpx", "httpcore")) or isinstance(error, (ConnectionError, TimeoutError))


def retry_after_of(error: Optional[BaseException]) -> Optional[float]:
    """Seconds the server asked to wait (``error.retry_after``), or None.

    ``ClaudeInvocationError.retry_after`` is already the larger of ``retry-after`` and
    ``retry-after-ms``; negative, zero, NaN or non-numeric values count as absent.
    """
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value <= 0:  # NaN or not positive
        return None
    return float(value)


# =============================================================================== backoff pieces
def exponential_backoff(attempt: int, base_delay_ms: float, max_delay_ms: float) -> float:
    """Un-jittered wait in seconds after failed attempt number ``attempt`` (1-based).

    ``base * 2**(attempt-1)`` capped at ``max``: with base 1000 ms and max 10000 ms the waits are
    1, 2, 4, 8, 10, 10 ... seconds.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    exp = min(attempt - 1, 62)  # 2**62 ms is already far beyond any cap
    return min(float(base_delay_ms) * (2.0 ** exp), float(max_delay_ms)) / 1000.0


def compute_backoff_delay(
    attempt: int, *, is_continuation: bool = False, base_ms: float = 1000.0, max_ms: float = 10000.0
) -> float:
    """The seed's backoff helper, in seconds, without jitter.

    A continuation (the task ended normally and is resumed) waits a short fixed ``base_ms``; a
    failure waits ``min(base_ms * 2**(attempt-1), max_ms)`` (attempt 0 is treated as 1).

    >>> compute_backoff_delay(1), compute_backoff_delay(3), compute_backoff_delay(9), compute_backoff_delay(5, is_continuation=True)
    (1.0, 4.0, 10.0, 1.0)
    """
    _check_number("attempt", attempt, integer=True)
    _check_number("base_ms", base_ms)
    _check_number("max_ms", max_ms)
    if is_continuation:
        return min(float(base_ms), float(max_ms)) / 1000.0
    return exponential_backoff(max(1, attempt), min(base_ms, max_ms), max_ms)


def full_jitter(delay: float, rng: Optional[random.Random] = None) -> float:
    """Uniform in ``[0, delay]``: spreads retries the most (AWS "full jitter")."""
    return (rng or random).uniform(0.0, delay)


def equal_jitter(delay: float, rng: Optional[random.Random] = None) -> float:
    """Uniform in ``[delay/2, delay]``: keeps at least half of the backoff."""
    return delay / 2.0 + (rng or random).uniform(0.0, delay / 2.0)


def _no_jitter(delay: float, rng: Optional[random.Random] = None) -> float:
    return delay


_JITTERS: Dict[str, Callable[[float, Optional[random.Random]], float]] = {
    "full": full_jitter,
    "equal": equal_jitter,
    "none": _no_jitter,
}


def _check_number(name: str, value: Any, *, minimum: float = 0.0, integer: bool = False) -> None:
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value != value or value < minimum:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry and how long to wait. Immutable; share one per run.

    * ``max_retries`` - retries after the first try (3 -> at most 4 attempts).
    * ``base_delay_ms`` / ``max_delay_ms`` - capped exponential backoff (see
      :func:`exponential_backoff`).
    * ``jitter`` - ``"full"`` (default: uniform in [0, backoff]), ``"equal"`` (uniform in
      [backoff/2, backoff]) or ``"none"``.
    * ``max_retry_after_s`` - a server ``retry-after`` is always honoured (the wait is never shorter
      than it) up to this many seconds.

    >>> p = RetryPolicy(max_retries=2, base_delay_ms=100, jitter="none")
    >>> p.max_attempts, p.delay_for(1), p.delay_for(3)
    (3, 0.1, 0.4)
    >>> class E(Exception): retry_after = 2.5
    >>> p.delay_for(1, E())
    2.5
    """

    max_retries: int = 3
    base_delay_ms: float = 1000.0
    max_delay_ms: float = 10000.0
    jitter: str = "full"
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S

    def __post_init__(self) -> None:
        _check_number("max_retries", self.max_retries, integer=True)
        _check_number("base_delay_ms", self.base_delay_ms)
        _check_number("max_delay_ms", self.max_delay_ms)
        _check_number("max_retry_after_s", self.max_retry_after_s)
        if self.max_delay_ms < self.base_delay_ms:
            raise ValueError(
                f"max_delay_ms must be >= base_delay_ms, got max_delay_ms={self.max_delay_ms!r} "
                f"< base_delay_ms={self.base_delay_ms!r}"
            )
        if self.jitter not in _JITTERS:
            raise ValueError(f"jitter must be one of {sorted(_JITTERS)}, got {self.jitter!r}")

    @property
    def max_attempts(self) -> int:
        """One try plus ``max_retries`` retries."""
        return self.max_retries + 1

    def should_retry(self, error: BaseException, attempts: int) -> bool:
        """True when ``error`` is transient and ``attempts`` (made so far) < ``max_attempts``."""
        return attempts < self.max_attempts and is_transient(error)

    def backoff(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """Jittered exponential wait in seconds after failed attempt ``attempt`` (1-based)."""
        return _JITTERS[self.jitter](exponential_backoff(attempt, self.base_delay_ms, self.max_delay_ms), rng)

    def delay_for(
        self, attempt: int, error: Optional[BaseException] = None, rng: Optional[random.Random] = None
    ) -> float:
        """Seconds to wait before the next attempt after attempt ``attempt`` failed with ``error``.

        The jittered backoff, raised to the error's ``retry_after`` when the server sent one
        (capped at ``max_retry_after_s``).
        """
        delay = self.backoff(attempt, rng)
        server = retry_after_of(error)
        if server is not None:
            delay = max(delay, min(server, self.max_retry_after_s))
        return delay


# =============================================================================== limiter
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
        _check_number("global_limit", global_limit, minimum=1, integer=True)
        if category_limits is not None and not isinstance(category_limits, Mapping):
            raise ValueError(f"category_limits must be a mapping of str -> int >= 1, got {category_limits!r}")
        limits: Dict[str, int] = {}
        for cat, lim in (category_limits or {}).items():
            if not isinstance(cat, str):
                raise ValueError(f"category_limits keys must be str, got {cat!r}")
            _check_number(f"category_limits[{cat!r}]", lim, minimum=1, integer=True)
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
            _check_number("timeout", timeout)
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

    def _add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (outside the lock) after every release; used by managed runs to wake
        their dispatcher when a shared limiter frees a slot."""
        with self._lock:
            self._listeners.append(fn)

    def _remove_listener(self, fn: Callable[[], None]) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)


# =============================================================================== shared pause
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
        _check_number("seconds", seconds)
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


# =============================================================================== single call
def _final_error(last: "ClaudeInvocationError", attempts: int, what: str = "Claude call") -> "ClaudeInvocationError":
    """A new error that reports the attempt count; the caller chains ``last`` as its cause."""
    plural = "attempt" if attempts == 1 else "attempts"
    return cc.ClaudeInvocationError(
        f"{what} failed after {attempts} {plural} ({last.kind or 'error'}): {last}",
        status_code=last.status_code,
        details=last.details,
        kind=last.kind,
        request_id=last.request_id,
        attempts=attempts,
        retry_after=last.retry_after,
    )


def invoke_with_retry(
    prompt: Optional[str] = None,
    *,
    max_retries: int = 3,
    base_delay_ms: float = 1000,
    max_delay_ms: float = 10000,
    jitter: str = "full",
    is_continuation: bool = False,
    policy: Optional[RetryPolicy] = None,
    **invoke_claude_kwargs: Any,
) -> "ClaudeResponse":
    """:func:`claude_client.invoke_claude` with retries of transient failures.

    Takes the same keyword arguments as ``invoke_claude`` (``model``, ``system``, ``max_tokens``,
    ``temperature``, ``cache_system``, ``cache_prompt``, ``messages``, ``api_key``, ``base_url``,
    ``interrupt_token``, ``stall_timeout``, SDK extras such as ``stop_sequences``); bad arguments
    raise before any request. Every attempt runs as a stream with the SDK's own retries switched
    off, so ``max_retries=3`` means at most 4 HTTP requests: a persistent 529 reaches the server
    exactly 4 times, a 401 once. Between attempts it waits ``policy.delay_for(...)``: capped
    exponential backoff with jitter, never less than the server's ``retry-after`` /
    ``retry-after-ms``. A stall (``stall_timeout``) is transient and retried; an interrupt is not,
    and also cuts a backoff wait short.

    The final ``ClaudeInvocationError`` has ``.attempts`` (and says it in its message), keeps the
    last failure's ``kind``/``status_code``/``retry_after``, and chains the last failure as
    ``__cause__``. ``policy=`` replaces ``max_retries``/``base_delay_ms``/``max_delay_ms``/``jitter``.
    ``is_continuation=True`` (seed parameter) waits a fixed ``base_delay_ms`` between attempts
    (still never less than ``retry-after``).

    >>> reply = invoke_with_retry("Summarise ...", max_retries=3, base_delay_ms=500, max_tokens=300)
    """
    cc._check_bool(is_continuation, "is_continuation")
    if policy is None:
        if is_continuation:  # fixed short delay: the cap equals the base, no jitter
            policy = RetryPolicy(max_retries=max_retries, base_delay_ms=base_delay_ms,
                                 max_delay_ms=base_delay_ms, jitter="none")
        else:
            policy = RetryPolicy(max_retries=max_retries, base_delay_ms=base_delay_ms,
                                 max_delay_ms=max_delay_ms, jitter=jitter)
    elif not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a RetryPolicy or None, got {type(policy).__name__}")
    kw = dict(invoke_claude_kwargs)
    token = kw.pop("interrupt_token", None)
    cc._validate_token(token)
    stall = cc._validate_stall_timeout(kw.pop("stall_timeout", None))
    cc._check_bool(kw.pop("streaming", False), "streaming")  # accepted for parity: always streamed
    api_key = kw.pop("api_key", None)
    base_url = kw.pop("base_url", None)
    params = cc._build_params(
        prompt,
        model=kw.pop("model", cc.DEFAULT_MODEL),
        system=kw.pop("system", None),
        max_tokens=kw.pop("max_tokens", 4096),
        temperature=kw.pop("temperature", 1.0),
        cache_system=kw.pop("cache_system", False),
        cache_prompt=kw.pop("cache_prompt", False),
        messages=kw.pop("messages", None),
        extra=kw,
    )
    client = cc._client_for(0, api_key=api_key, base_url=base_url)
    attempt = 0
    while True:
        attempt += 1
        try:
            return cc._stream_message(params, client=client, interrupt=token, stall_timeout=stall)
        except Exception as exc:  # classified below
            last = cc._error_from(exc)
            if last.kind is None and last is not exc:
                raise  # a programming error (TypeError ...), not an API failure: never retried or wrapped
            if last is not exc:
                last.__cause__ = exc
        if not policy.should_retry(last, attempt):
            raise _final_error(last, attempt) from last
        delay = policy.delay_for(attempt, last)
        logger.info("attempt %d of %d failed (%s); retrying in %.3f s", attempt, policy.max_attempts, last.kind, delay)
        if token is not None:
            if token.wait(delay):
                stopped = cc.ClaudeInvocationError(
                    f"Interrupted while waiting to retry after {attempt} failed attempt(s): {last}",
                    kind="interrupted",
                    attempts=attempt,
                )
                raise stopped from last
        else:
            time.sleep(delay)


# =============================================================================== managed fan-out
_MANAGED_KEYS = frozenset({"task_id", "category"})
_POLL_S = 0.05  # fallback wake-up of idle workers (interrupts and releases also wake them at once)


@dataclass
class _Task:
    index: int
    task_id: str
    category: Optional[str]
    params: dict
    on_text: Optional[Callable[[str], Any]] = None


def _validate_managed_prompts(prompts: Any, where: str = "prompts") -> List[Dict[str, Any]]:
    """Copies of the prompt dicts with ``task_id`` filled in; checks ids and categories."""
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Sequence):
        raise TypeError(f"{where} must be a list of dicts, got {type(prompts).__name__}")
    out: List[Dict[str, Any]] = []
    seen: Dict[str, int] = {}
    for i, item in enumerate(prompts):
        if not isinstance(item, Mapping):
            raise TypeError(f"{where}[{i}] must be a dict with a 'prompt' key, got {type(item).__name__}")
        copy_ = dict(item)
        tid = copy_.get("task_id", f"task-{i}")
        if not isinstance(tid, str) or not tid:
            raise ValueError(f"{where}[{i}]['task_id'] must be a non-empty str, got {tid!r}")
        if tid in seen:
            raise ValueError(
                f"{where}[{i}]['task_id'] {tid!r} is not unique: {where}[{seen[tid]}] has the same id "
                "(ids default to 'task-<index>')"
            )
        seen[tid] = i
        cat = copy_.get("category")
        if cat is not None and not isinstance(cat, str):
            raise ValueError(f"{where}[{i}]['category'] must be a str or None, got {cat!r}")
        copy_["task_id"] = tid
        out.append(copy_)
    return out


class _ManagedRun:
    """Scheduler of one invoke_parallel_managed call (one lock: ``self._cond``).

    Ready tasks wait in one min-heap per category keyed by input index (so the oldest task goes
    first and a retry that is due goes before newer tasks); retries wait their backoff in a heap of
    due times. Workers only pick a task once the gate is open: the oldest ready task whose category
    the limiter admits now (``try_acquire``); if none, one worker per category joins the limiter's
    FIFO queue with the oldest task of a category, so a limiter shared with other runs or callers
    serves everyone in turn. Neither a backoff nor a pause holds a slot.
    """

    def __init__(self, tasks: List[_Task], *, tracker: TaskTracker, limiter: ConcurrencyLimiter,
                 policy: RetryPolicy, gate: RateLimitGate, client: Any, token: Any,
                 stall_timeout: Optional[float], on_stall: Optional[Callable[[str, float], Any]],
                 pilot: Optional[int], rng: random.Random) -> None:
        self.tasks = tasks
        self.tracker = tracker
        self.limiter = limiter
        self.policy = policy
        self.gate = gate
        self.client = client
        self.token = token
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.rng = rng
        self._cond = threading.Condition()
        self._ready: Dict[Optional[str], List[int]] = collections.defaultdict(list)
        self._delayed: List[Tuple[float, int]] = []
        self._pending = len(tasks)  # tasks not yet ended
        self._running: set = set()
        self._queued: set = set()  # categories a worker of this run is queued for in the limiter
        self.results: Dict[int, Any] = {}
        self.errors: Dict[int, BaseException] = {}
        self.fatal: Optional[BaseException] = None
        self._pilot = pilot
        self._hold = pilot is not None  # hold the others until the pilot's response has begun
        for pos, task in enumerate(tasks):
            self._ready[task.category].append(pos)  # already in index order: a valid heap

    # ------------------------------------------------------------------ control
    def _stopped(self) -> bool:
        return self.fatal is not None or (self.token is not None and self.token.is_interrupted())

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release_hold(self) -> None:
        with self._cond:
            if self._hold:
                self._hold = False
                self._cond.notify_all()

    # ------------------------------------------------------------------ worker
    def worker(self) -> None:
        try:
            while True:
                picked = self._next_task()
                if picked is None:
                    return
                pos, has_slot = picked
                if has_slot or self._queue_for_slot(pos):
                    self._attempt(pos)
        except BaseException as exc:  # a bug or a misused shared limiter/tracker: stop the run, re-raise
            logger.exception("managed worker failed; stopping the run")
            with self._cond:
                if self.fatal is None:
                    self.fatal = exc
                self._cond.notify_all()

    def _next_task(self) -> Optional[Tuple[int, bool]]:
        """The next task and whether it holds a limiter slot already (else: queue for one)."""
        with self._cond:
            while True:
                if self._pending == 0 or self._stopped():
                    self._cond.notify_all()
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, pos = heapq.heappop(self._delayed)
                    heapq.heappush(self._ready[self.tasks[pos].category], pos)
                wait = _POLL_S
                paused = self.gate.remaining()
                if paused > 0:
                    wait = min(wait, paused)
                else:
                    picked = self._pick()
                    if picked is not None:
                        if picked[1]:
                            self._running.add(picked[0])
                        return picked
                if self._delayed:
                    wait = min(wait, max(0.0, self._delayed[0][0] - now))
                self._cond.wait(wait)

    def _pick(self) -> Optional[Tuple[int, bool]]:
        # Lock held. The oldest ready task whose category the limiter admits now (with its slot);
        # else the oldest one of a category no worker of this run is queued for (to queue for it).
        heads = sorted((heap[0], cat) for cat, heap in self._ready.items() if heap)
        if self._hold:
            heads = [h for h in heads if h[0] == self._pilot]
        for pos, cat in heads:
            if self.limiter.try_acquire(cat):
                heapq.heappop(self._ready[cat])
                return pos, True
        for pos, cat in heads:
            if cat not in self._queued:
                self._queued.add(cat)
                heapq.heappop(self._ready[cat])
                return pos, False
        return None

    def _queue_for_slot(self, pos: int) -> bool:
        """Wait in the limiter's FIFO queue for a slot for task ``pos`` (no run lock held).

        True: the slot is held and the task is RUNNING-bound. False: the task went back to the
        ready heap (the run stopped, or a rate-limit pause began while waiting).
        """
        cat = self.tasks[pos].category
        granted = False
        try:
            granted = self.limiter._acquire(cat, None, self._stopped)
        finally:
            with self._cond:
                self._queued.discard(cat)
                keep = granted and not self._stopped() and self.gate.remaining() <= 0
                if keep:
                    self._running.add(pos)
                else:
                    heapq.heappush(self._ready[cat], pos)
                self._cond.notify_all()
        if granted and not keep:
            self.limiter.release(cat)
        return keep

    def _attempt(self, pos: int) -> None:
        task = self.tasks[pos]
        on_start = self._release_hold if pos == self._pilot else None
        response = error = None
        try:
            self.tracker.claim(task.task_id)
            self.tracker.start(task.task_id)
            try:
                response = cc._stream_message(task.params, client=self.client, on_start=on_start, on_text=task.on_text,
                                              interrupt=self.token, stall_timeout=self.stall_timeout)
            except Exception as exc:
                error = cc._error_from(exc)
                if error is not exc:
                    error.__cause__ = exc
                if error.kind == "rate_limit" and error.retry_after:
                    # before the slot goes back, so no woken worker sends inside the pause
                    self.gate.pause_for(min(error.retry_after, self.policy.max_retry_after_s))
        finally:
            self.limiter.release(task.category)
        if pos == self._pilot:
            self._release_hold()  # the pilot ended before its response began (failure): release the rest
        if error is not None and error.kind == "stalled" and self.on_stall is not None:
            try:
                self.on_stall(task.task_id, float(self.stall_timeout or 0.0))
            except Exception:
                logger.exception("on_stall callback raised for task %r", task.task_id)
        with self._cond:
            self._running.discard(pos)
            self._settle(pos, response, error)
            self._cond.notify_all()

    def _settle(self, pos: int, response: Any, error: Optional["ClaudeInvocationError"]) -> None:
        # Lock held.
        task = self.tasks[pos]
        if error is None:
            self.tracker.complete(task.task_id, result=response)
            self.results[task.index] = response
            self._pending -= 1
            return
        if error.kind == "interrupted":
            self.tracker.cancel(task.task_id, TerminalReason.INTERRUPTED)
            self._pending -= 1
            return
        reason = None
        if error.kind == "stalled":  # a stall on the last attempt ends the task as STALLED
            current = self.tracker.get(task.task_id)
            if current.attempts >= current.max_attempts:
                reason = TerminalReason.STALLED
        info = self.tracker.fail(task.task_id, error=error, transient=error.transient, reason=reason)
        if info.can_retry and not self._stopped():
            self.tracker.retry(task.task_id)
            delay = self.policy.delay_for(info.attempts, error, self.rng)
            logger.info("task %r: attempt %d of %d failed (%s); retry in %.3f s", task.task_id, info.attempts,
                        info.max_attempts, error.kind, delay)
            heapq.heappush(self._delayed, (time.monotonic() + delay, pos))
            return
        if info.can_retry:  # interrupted while it could still retry
            self.tracker.cancel(task.task_id, TerminalReason.INTERRUPTED)
        else:
            final = _final_error(error, info.attempts, f"task {task.task_id!r}")
            final.__cause__ = error
            self.errors[task.index] = final
        self._pending -= 1

    # ------------------------------------------------------------------ after the run
    def cancel_leftovers(self) -> None:
        """Mark every task that never ended as INTERRUPTED (after the workers have left)."""
        with self._cond:
            for pos, task in enumerate(self.tasks):
                if pos in self._running:
                    continue  # its worker records the outcome
                info = self.tracker.get(task.task_id)
                if not info.is_terminal:
                    reason = TerminalReason.CANCELLED if self.fatal is not None else TerminalReason.INTERRUPTED
                    self.tracker.cancel(task.task_id, reason)


def invoke_parallel_managed(
    prompts: List[Dict[str, Any]],
    *,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    max_retries: int = 3,
    base_delay_ms: float = 1000,
    max_delay_ms: float = 10000,
    reconcile: Optional[Callable[[List[Dict[str, Any]], TaskTracker], Sequence[Mapping[str, Any]]]] = None,
    concurrency_limiter: Optional[ConcurrencyLimiter] = None,
    stall_timeout: Optional[float] = None,
    on_stall: Optional[Callable[[str, float], Any]] = None,
    interrupt_token: Optional["InterruptToken"] = None,
    tracker: Optional[TaskTracker] = None,
    return_exceptions: bool = False,
    cache_pilot: bool = True,
    policy: Optional[RetryPolicy] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    callbacks: Optional[Sequence[Optional[Callable[[str], Any]]]] = None,
) -> "ParallelResults":
    """Run many prompts with retries, concurrency limits, a shared rate-limit pause and a task tracker.

    Each prompt dict takes the keys of :func:`claude_client.invoke_parallel` (``prompt``,
    ``system``, ``temperature``, ``cache_system``, ``cache_prompt``, ``model``, ``max_tokens``)
    plus ``task_id`` (a unique non-empty str; default ``f"task-{index}"`` as in the seed) and
    ``category`` (the limiter category; default None). Everything is validated before any request.

    Steps:

    1. ``reconcile(prompts, tracker)`` (optional) gets copies of the prompts (``task_id`` filled in)
       and the tracker *before* this run adds anything, and returns the prompts to run. They are
       matched to their input slot by ``task_id`` (modified copies are fine; ids must be unique and
       come from the input). Prompts it leaves out are not run: a tracker entry is recorded as
       CANCELLED / ``RECONCILED_AWAY`` unless the tracker already holds that id; their slot gets the
       tracker's stored result when the tracker holds that id as COMPLETED (resuming a run), else None.
    2. Every task to run is added to the tracker (an id the tracker holds in a terminal state is
       replaced; one that is still active raises ``ValueError``).
    3. Dispatch: at most ``max_workers`` requests in flight, and never more than the
       ``concurrency_limiter`` allows (default: a private ``ConcurrencyLimiter(max_workers)``);
       oldest task first among those whose category has room. With ``cache_shared_system`` and a
       ``shared_system``, the first task goes alone and the rest start when its response begins
       (``cache_pilot=False`` turns that off).
    4. A transient failure (429, 408, 409, 5xx/529, connection, timeout, mid-stream overloaded,
       a stall past ``stall_timeout``) moves the task FAILED -> RETRY_QUEUED; it waits its backoff
       (``RetryPolicy(max_retries, base_delay_ms, max_delay_ms)`` or ``policy=``) holding neither
       a slot nor a worker, then goes before newer tasks. A 429 carrying ``retry-after`` pauses
       dispatch for every worker of the run until it has passed. ``on_stall(task_id, seconds)`` is
       called on a stall. Attempts per task: at most ``max_retries + 1`` (SDK retries are off).
    ``callbacks[i](chunk)`` (optional, one per prompt, as in
    :func:`claude_client.invoke_parallel_streaming`) gets every text chunk of prompt ``i`` on a
    worker thread; a retried task streams again from the start (the tracker's RUNNING state with
    a higher ``attempt`` says so).

    5. ``interrupt_token.interrupt()`` stops dispatch, aborts the requests in flight and returns
       promptly; unfinished tasks end CANCELLED / ``INTERRUPTED`` with None in their slot.

    Returns a :class:`claude_client.ParallelResults` in input order: the reply where a task
    succeeded, otherwise None. Failures do not raise: ``results.errors`` maps index -> the final
    ``ClaudeInvocationError`` (with ``.attempts``, last cause chained) and the tracker says why each
    task ended (pass your own ``tracker`` to read it). ``return_exceptions=True`` puts those errors in
    their slots instead of None. ``results.usage`` / ``results.cost_usd`` sum the successful requests
    of this run (results taken over from the tracker by reconcile are not counted again).

    >>> tracker = TaskTracker()
    >>> results = invoke_parallel_managed(
    ...     [{"prompt": "a", "task_id": "a", "category": "search"}, {"prompt": "b", "task_id": "b"}],
    ...     max_workers=8, concurrency_limiter=ConcurrencyLimiter(8, {"search": 2}), tracker=tracker)
    >>> tracker.reason_counts()["succeeded"], results.errors
    """
    cc._check_positive_int(max_workers, "max_workers")
    cc._check_bool(return_exceptions, "return_exceptions")
    cc._check_bool(cache_pilot, "cache_pilot")
    cc._validate_token(interrupt_token)
    stall = cc._validate_stall_timeout(stall_timeout)
    if policy is None:
        policy = RetryPolicy(max_retries=max_retries, base_delay_ms=base_delay_ms, max_delay_ms=max_delay_ms)
    elif not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a RetryPolicy or None, got {type(policy).__name__}")
    if concurrency_limiter is not None and not isinstance(concurrency_limiter, ConcurrencyLimiter):
        raise TypeError(
            f"concurrency_limiter must be a ConcurrencyLimiter or None, got {type(concurrency_limiter).__name__}"
        )
    if tracker is not None and not isinstance(tracker, TaskTracker):
        raise TypeError(f"tracker must be a TaskTracker or None, got {type(tracker).__name__}")
    for name, fn in (("reconcile", reconcile), ("on_stall", on_stall)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None")

    def normalize(items: Sequence[Mapping[str, Any]]) -> list:
        return cc._normalize_prompts(items, shared_system=shared_system, cache_shared_system=cache_shared_system,
                                     model=model, max_tokens=max_tokens, extra_keys=_MANAGED_KEYS)

    originals = _validate_managed_prompts(prompts)
    normalize(originals)  # every prompt is valid before reconcile or any request
    cc._check_callbacks(callbacks, len(originals))
    index_of = {p["task_id"]: i for i, p in enumerate(originals)}
    tracker = tracker if tracker is not None else TaskTracker(max_retries=policy.max_retries)

    to_run = originals
    if reconcile is not None:
        returned = reconcile([dict(p) for p in originals], tracker)
        to_run = _validate_managed_prompts(returned, "reconcile(...) result")
        for j, p in enumerate(to_run):
            if "task_id" not in returned[j]:
                raise ValueError(f"reconcile(...) result[{j}] has no 'task_id'; every prompt it returns needs one")
            if p["task_id"] not in index_of:
                raise ValueError(f"reconcile(...) result[{j}] has task_id {p['task_id']!r}, which is not in prompts")
    specs = normalize(to_run)
    for p in to_run:
        info = tracker.get(p["task_id"]) if p["task_id"] in tracker else None
        if info is not None and not info.is_terminal:
            raise ValueError(f"task_id {p['task_id']!r} is still active in the tracker (state {info.state.value})")

    n = len(originals)
    slots: List[Any] = [None] * n
    run_ids = {p["task_id"] for p in to_run}
    for p in originals:  # reconciled away
        tid = p["task_id"]
        if tid in run_ids:
            continue
        if tid not in tracker:
            tracker.add(tid, p.get("category"), max_retries=policy.max_retries)
            tracker.cancel(tid, TerminalReason.RECONCILED_AWAY)
        else:
            info = tracker.get(tid)
            if info.state is TaskState.COMPLETED:
                slots[index_of[tid]] = info.result
    tasks = []
    for p, spec in zip(to_run, specs):
        tracker.add(p["task_id"], p.get("category"), max_retries=policy.max_retries, replace=True)
        index = index_of[p["task_id"]]
        on_text = callbacks[index] if callbacks is not None else None
        tasks.append(_Task(index, p["task_id"], p.get("category"), spec.params, on_text))
    tasks.sort(key=lambda t: t.index)

    # The run's own token: the caller's token feeds it, and so does an exception (Ctrl-C) in the
    # thread driving the run, so in-flight requests are aborted either way.
    token = cc.InterruptToken()
    link = interrupt_token._add_callback(token.interrupt) if interrupt_token is not None else None
    pilot = None
    if (cache_pilot and cache_shared_system and shared_system is not None and len(tasks) > 1
            and "system" in tasks[0].params):
        pilot = 0
    run = _ManagedRun(
        tasks,
        tracker=tracker,
        limiter=concurrency_limiter or ConcurrencyLimiter(max_workers),
        policy=policy,
        gate=RateLimitGate(),
        client=cc._client_for(0, api_key=api_key, base_url=base_url) if tasks else None,
        token=token,
        stall_timeout=stall,
        on_stall=on_stall,
        pilot=pilot,
        rng=random.Random(),
    )
    try:
        if tasks:
            _drive(run, min(max_workers, len(tasks)))
    finally:
        if link is not None:
            interrupt_token._remove_callback(link)  # type: ignore[union-attr]

    for index, response in run.results.items():
        slots[index] = response
    usage, cost = cc._totals(run.results.values())  # not results taken over by reconcile
    if return_exceptions:
        for index, err in run.errors.items():
            slots[index] = err
    return cc.ParallelResults(slots, usage=usage, cost_usd=cost, errors=dict(run.errors))


def _drive(run: _ManagedRun, workers: int) -> None:
    """Run the workers until every task has ended or the run is interrupted."""
    handle = run.token._add_callback(run.wake) if run.token is not None else None
    run.limiter._add_listener(run.wake)
    threads = [threading.Thread(target=run.worker, name=f"claude-managed-{i}", daemon=True) for i in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)
                if run._stopped():
                    run.token.interrupt()  # a crashed worker (fatal) stops the others' requests too
                    # in-flight requests were aborted by the token; their workers leave at once
                    t.join(5.0)
                    if t.is_alive():  # pragma: no cover - defensive
                        logger.warning("worker %s still busy 5 s after the interrupt", t.name)
                        break
    except BaseException:
        # e.g. Ctrl-C in the caller's thread: abort what is in flight, let the workers leave, re-raise
        run.token.interrupt()
        for t in threads:
            t.join(1.0)
        raise
    finally:
        run.limiter._remove_listener(run.wake)
        if handle is not None:
            run.token._remove_callback(handle)
        run.cancel_leftovers()
    if run.fatal is not None:
        raise run.fatal


def invoke_parallel_with_reconciliation(
    prompts: List[Dict[str, Any]],
    *,
    reconcile: Optional[Callable[[List[Dict[str, Any]], TaskTracker], Sequence[Mapping[str, Any]]]] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    max_retries: int = 3,
    stall_timeout: Optional[float] = None,
    on_stall: Optional[Callable[[str, float], Any]] = None,
    **managed_kwargs: Any,
) -> "ParallelResults":
    """The seed's name for :func:`invoke_parallel_managed` (same behaviour and extra keywords).

    >>> results = invoke_parallel_with_reconciliation(prompts, reconcile=lambda ps, tracker: ps[:10])
    """
    return invoke_parallel_managed(
        prompts, reconcile=reconcile, model=model, max_tokens=max_tokens, max_workers=max_workers,
        shared_system=shared_system, cache_shared_system=cache_shared_system, max_retries=max_retries,
        stall_timeout=stall_timeout, on_stall=on_stall, **managed_kwargs,
    )
