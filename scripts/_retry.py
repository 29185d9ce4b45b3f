"""The one retry loop, and the policy it runs, built from small parts (in the style of tenacity).

Parts, each a small callable object that combines with ``&`` and ``|``:

* stop conditions, ``stop(state) -> bool``: :func:`stop_after_attempt`;
* retry conditions, ``retry(error) -> bool``: :data:`retry_if_transient`,
  :data:`retry_before_response` (only failures before the reply began, as in the SDK: not a
  stream cut mid-way, nor a stall);
* waits, ``wait(state) -> seconds``: :func:`wait_exponential` (with jitter), :func:`wait_fixed`,
  :func:`wait_retry_after` (the server's ``retry-after``, honoured up to a cap), combined with
  ``|`` as "the longer of the two".

:class:`RetryPolicy` keeps its public fields as a friendly constructor over these parts, and
:func:`run` is the loop that every path runs (single calls, streams, ``invoke_with_retry``, batch
create and poll); managed runs schedule their retries themselves but ask the same policy. Waits
end at once on an interrupt.

>>> policy = RetryPolicy(max_retries=2, base_delay_ms=100, jitter="none")
>>> run(lambda attempt: send_once(), policy, interrupt=token)
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, TypeVar

import _tracing
from _errors import REPLY_KINDS, ClaudeInvocationError, is_api_failure, translate
from _interrupt import InterruptToken
from _validation import check_bool, check_number

logger = logging.getLogger("claude_client._retry")

T = TypeVar("T")

#: Longest server-requested wait (``retry-after``) that is honoured as is; longer values are cut
#: to this (seconds). The one cap, used by every retry path (the SDK's own limit is the same).
DEFAULT_MAX_RETRY_AFTER_S = 60.0


# ------------------------------------------------------------------------------ classification
def is_transient(error: BaseException) -> bool:
    """True when ``error`` is worth another attempt.

    ``ClaudeInvocationError`` (and anything else with a boolean ``transient`` attribute) answers
    for itself; SDK and transport exceptions are classified by the library's one translation
    (429, 408, 409, 5xx including 529, connection errors, timeouts, mid-stream overloaded_error
    and stalls are transient, unless the server's ``x-should-retry`` says otherwise; auth, bad
    request, validation and programming errors are not). Any other exception is not transient.

    >>> is_transient(ValueError("bad"))
    False
    """
    flag = getattr(error, "transient", None)
    if isinstance(flag, bool):
        return flag
    if is_api_failure(error) and not isinstance(error, (ValueError, TypeError)):
        return translate(error).transient
    return False


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


# ------------------------------------------------------------------------------ backoff pieces
def exponential_backoff(attempt: int, base_delay_ms: float, max_delay_ms: float) -> float:
    """Un-jittered wait in seconds after failed attempt number ``attempt`` (1-based).

    ``base * 2**(attempt-1)`` capped at ``max``: with base 1000 ms and max 10000 ms the waits are
    1, 2, 4, 8, 10, 10 ... seconds.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    exp = min(attempt - 1, 62)  # 2**62 ms is already far beyond any cap
    return min(float(base_delay_ms) * (2.0**exp), float(max_delay_ms)) / 1000.0


def compute_backoff_delay(
    attempt: int, *, is_continuation: bool = False, base_ms: float = 1000.0, max_ms: float = 10000.0
) -> float:
    """The seed's backoff helper, in seconds, without jitter.

    A continuation (the task ended normally and is resumed) waits a short fixed ``base_ms``; a
    failure waits ``min(base_ms * 2**(attempt-1), max_ms)`` (attempt 0 is treated as 1).

    >>> compute_backoff_delay(1), compute_backoff_delay(3), compute_backoff_delay(9)
    (1.0, 4.0, 10.0)
    >>> compute_backoff_delay(5, is_continuation=True)
    1.0
    """
    check_number(attempt, "attempt", integer=True)
    check_number(base_ms, "base_ms")
    check_number(max_ms, "max_ms")
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


JITTERS: Dict[str, Callable[[float, Optional[random.Random]], float]] = {
    "full": full_jitter,
    "equal": equal_jitter,
    "none": _no_jitter,
}


# ------------------------------------------------------------------------------ the parts
@dataclass(frozen=True)
class RetryState:
    """What a part sees: the attempt that just failed (1-based), its error, a random source."""

    attempt: int
    error: Optional[BaseException] = None
    rng: Optional[random.Random] = None


class _Part:
    """A predicate part: ``a & b`` and ``a | b`` combine two of the same kind."""

    def __init__(self, fn: Callable[[Any], bool], name: str) -> None:
        self._fn, self._name = fn, name

    def __call__(self, arg: Any) -> bool:
        return self._fn(arg)

    def __and__(self, other: _Part) -> _Part:
        return type(self)(lambda a: self(a) and other(a), f"({self._name} & {other._name})")

    def __or__(self, other: _Part) -> _Part:
        return type(self)(lambda a: self(a) or other(a), f"({self._name} | {other._name})")

    def __repr__(self) -> str:
        return self._name


class Stop(_Part):
    """``stop(state) -> bool``: True when no further attempt may be made."""


class Retry(_Part):
    """``retry(error) -> bool``: True when the error is worth another attempt."""


class Wait:
    """``wait(state) -> seconds``; ``a | b`` waits the longer of the two."""

    def __init__(self, fn: Callable[[RetryState], float], name: str) -> None:
        self._fn, self._name = fn, name

    def __call__(self, state: RetryState) -> float:
        return self._fn(state)

    def __or__(self, other: Wait) -> Wait:
        return Wait(lambda s: max(self(s), other(s)), f"({self._name} | {other._name})")

    def __repr__(self) -> str:
        return self._name


def stop_after_attempt(max_attempts: int) -> Stop:
    return Stop(lambda state: state.attempt >= max_attempts, f"stop_after_attempt({max_attempts})")


retry_if_transient = Retry(is_transient, "retry_if_transient")
retry_before_response = Retry(
    lambda e: not getattr(e, "mid_response", False) and getattr(e, "kind", None) != "stalled", "retry_before_response"
)


def wait_exponential(base_delay_ms: float, max_delay_ms: float, jitter: str = "full") -> Wait:
    jitter_fn = JITTERS[jitter]
    return Wait(
        lambda s: jitter_fn(exponential_backoff(s.attempt, base_delay_ms, max_delay_ms), s.rng),
        f"wait_exponential({base_delay_ms:g}, {max_delay_ms:g}, {jitter!r})",
    )


def wait_fixed(seconds: float) -> Wait:
    return Wait(lambda s: seconds, f"wait_fixed({seconds:g})")


def wait_retry_after(cap_s: float = DEFAULT_MAX_RETRY_AFTER_S) -> Wait:
    """The server's ``retry-after`` (0 when it sent none), honoured up to ``cap_s`` seconds."""

    def wait(state: RetryState) -> float:
        server = retry_after_of(state.error)
        return 0.0 if server is None else min(server, cap_s)

    return Wait(wait, f"wait_retry_after({cap_s:g})")


# ------------------------------------------------------------------------------ the policy
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
    * ``retry_mid_response`` - also retry a failure after the reply had begun (a stream cut by an
      error event) and a stall; the SDK-like default of plain calls does not.

    The parts it is made of are :attr:`stop`, :attr:`retry` and :attr:`wait`.

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
    retry_mid_response: bool = True
    stop: Stop = field(init=False, repr=False, compare=False)
    retry: Retry = field(init=False, repr=False, compare=False)
    wait: Wait = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_number(self.max_retries, "max_retries", integer=True)
        check_number(self.base_delay_ms, "base_delay_ms")
        check_number(self.max_delay_ms, "max_delay_ms")
        check_number(self.max_retry_after_s, "max_retry_after_s")
        check_bool(self.retry_mid_response, "retry_mid_response")
        if self.max_delay_ms < self.base_delay_ms:
            raise ValueError(
                f"max_delay_ms must be >= base_delay_ms, got max_delay_ms={self.max_delay_ms!r} "
                f"< base_delay_ms={self.base_delay_ms!r}"
            )
        if not isinstance(self.jitter, str):
            raise TypeError(f"jitter must be a str, got {type(self.jitter).__name__}")
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {sorted(JITTERS)}, got {self.jitter!r}")
        retry = retry_if_transient if self.retry_mid_response else retry_if_transient & retry_before_response
        object.__setattr__(self, "stop", stop_after_attempt(self.max_attempts))
        object.__setattr__(self, "retry", retry)
        object.__setattr__(
            self,
            "wait",
            wait_exponential(self.base_delay_ms, self.max_delay_ms, self.jitter)
            | wait_retry_after(self.max_retry_after_s),
        )

    @property
    def max_attempts(self) -> int:
        """One try plus ``max_retries`` retries."""
        return self.max_retries + 1

    def should_retry(self, error: BaseException, attempts: int) -> bool:
        """True when ``error`` is worth another attempt and ``attempts`` (made so far) < ``max_attempts``."""
        return not self.stop(RetryState(attempts, error)) and self.retry(error)

    def backoff(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """Jittered exponential wait in seconds after failed attempt ``attempt`` (1-based)."""
        return JITTERS[self.jitter](exponential_backoff(attempt, self.base_delay_ms, self.max_delay_ms), rng)

    def delay_for(
        self, attempt: int, error: Optional[BaseException] = None, rng: Optional[random.Random] = None
    ) -> float:
        """Seconds to wait before the next attempt after attempt ``attempt`` failed with ``error``:
        the jittered backoff, raised to the server's ``retry_after`` (capped at ``max_retry_after_s``)."""
        return self.wait(RetryState(attempt, error, rng))


RetryPolicy.__module__ = "orchestration"


def sdk_policy(max_retries: int) -> RetryPolicy:
    """The SDK's own retry rules, run by the library's loop: ``max_retries`` retries (the
    client's, 2 by default), 0.5 s doubling to 8 s, ``retry-after`` honoured, and no retry once
    a reply has begun."""
    return _SDK_POLICIES.get(max_retries) or RetryPolicy(
        max_retries=max_retries, base_delay_ms=500, max_delay_ms=8000, jitter="equal", retry_mid_response=False
    )


_SDK_POLICIES = {n: RetryPolicy(n, 500, 8000, "equal", retry_mid_response=False) for n in range(6)}

#: No retries at all (a single attempt).
NO_RETRY = RetryPolicy(max_retries=0, base_delay_ms=0, max_delay_ms=0, jitter="none")


# ------------------------------------------------------------------------------ the loop
def sleep(seconds: float, interrupt: Optional[InterruptToken]) -> bool:
    """Wait ``seconds``; True (at once) when ``interrupt`` is interrupted meanwhile."""
    if interrupt is None:
        time.sleep(seconds)
        return False
    return interrupt.wait(seconds)


def interrupted_error(what: str, last: Optional[BaseException] = None) -> ClaudeInvocationError:
    error = ClaudeInvocationError(f"Interrupted {what}", kind="interrupted")
    if last is not None:
        error.__cause__ = last
    return error


def run(
    attempt_fn: Callable[[int], T],
    policy: RetryPolicy,
    *,
    interrupt: Optional[InterruptToken] = None,
    rng: Optional[random.Random] = None,
    what: str = "Claude call",
    retry: Optional[Retry] = None,
) -> T:
    """Call ``attempt_fn(attempt)`` (attempt = 1, 2, ...) until it returns, retrying the
    :class:`ClaudeInvocationError` s that ``policy`` (or ``retry``, a retry condition that
    replaces the policy's) says to retry, waiting ``policy.wait`` between attempts (cut short by
    ``interrupt``: kind ``interrupted``).

    The last error is raised with ``.attempts`` set. A reply that is not an answer (kinds
    ``refusal``, ``max_tokens``, ``context_overflow``) is never retried, whatever the condition.
    Other exceptions (programming errors) propagate unchanged on the first attempt. Each retry
    is logged at INFO on ``claude_client._retry`` and recorded as a ``retry`` event (kind,
    delay_s, attempt) on the current span when tracing is on.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return attempt_fn(attempt)
        except ClaudeInvocationError as error:
            error.attempts = attempt
            if (
                error.kind in REPLY_KINDS
                or policy.stop(RetryState(attempt, error))
                or not (retry or policy.retry)(error)
            ):
                raise
            last = error
        delay = policy.delay_for(attempt, last, rng)
        logger.info(
            "%s: attempt %d of %d failed (%s); retrying in %.3f s", what, attempt, policy.max_attempts, last.kind, delay
        )
        _tracing.event("retry", kind=last.kind, delay_s=delay, attempt=attempt)
        if sleep(delay, interrupt):
            stopped = interrupted_error(f"while waiting to retry after {attempt} failed attempt(s): {last}", last)
            stopped.attempts = attempt
            raise stopped from last
