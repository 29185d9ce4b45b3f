"""The shared store's protocol and answers, and what its backends share (the scope state, the
argument checks, the outage guard, this process's owner id).

Processes that use one API key share its rate limits and spend caps through a small store
(:func:`_shared_limits.open_store` opens one: :class:`_shared_sqlite.SqliteStore` by default, or
:class:`_shared_redis.RedisStore` across machines). Everything in a store is keyed by a *scope*
(:func:`scope_key`: a keyed hash of the API key, base URL and rate-limit pool: the key is never
written) or, for spend caps, by a budget's name.

Per scope the store keeps:

* **buckets** (``rpm``, ``itpm``, ``otpm``): capacity, refill rate, level, continuous refill from
  the last update, a cumulative count of what was taken (a *mark*, so a response's ``remaining``
  can be compared with what was admitted after it), and when the limit was learned;
* **the 429 pause**: nobody is granted anything before ``until``; each caller asking during the
  pause gets its own resume time, spread over up to a fifth of the pause (at most 5 s), so that
  the callers do not all come back at one instant;
* **holds**: the provisional part of a grant (e.g. the ``max_tokens`` charged to OTPM, mostly
  given back when the reply ends) with its owner (host/pid/start nonce) and an expiry. A hold
  nobody settles by its expiry (its process died) gives its provisional amounts back: a killed
  process blocks the others for at most the expiry.

Per budget name: ``spent``, ``reserved`` (the open reservations), the last cap seen, refusals
and ``expired`` (reservations whose owner never settled them: counted as spent at their worst
case, since the attempt may have been paid; so the cap is never passed).

Every store method answers None when the store is unavailable (a locked, read-only or corrupt
file; Redis down): the caller then admits per process. The first failure of an outage logs one
warning (logger ``claude_client._shared_limits``); the store tries again every ``retry_s`` s.

>>> scope = scope_key(api_key, base_url, "sonnet-5-5")
>>> store.learn(scope, {"itpm": (120_000, 60.0)})
True
>>> grant = store.acquire(scope, {"rpm": 1, "itpm": 2_000, "otpm": 1_024}, provisional={"otpm": 1_024})
>>> grant.granted, grant.wait_s
(True, 0.0)
>>> store.settle(grant, used={"otpm": 180})           # 844 output tokens go back
True
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

from _validation import check_number, check_seconds, is_mapping

logger = logging.getLogger("claude_client._shared_limits")

__all__ = [
    "KINDS",
    "DEFAULT_TTL_S",
    "Grant",
    "BucketState",
    "ScopeState",
    "BudgetGrant",
    "BudgetReport",
    "SharedStore",
    "scope_key",
    "owner_id",
]

#: The bucket kinds: requests, input tokens and output tokens per minute.
KINDS: tuple[str, ...] = ("rpm", "itpm", "otpm")
#: Default expiry of a hold or a budget reservation (seconds): longer than most requests.
DEFAULT_TTL_S = 120.0
#: Spread of the callers' resume times after a shared pause: this share of the pause, at most
#: ``SPREAD_MAX_S``, at least ``SPREAD_MIN_S``.
SPREAD_SHARE = 0.2
SPREAD_MIN_S = 0.05
SPREAD_MAX_S = 5.0
GOLDEN = 0.6180339887498949  # slot i resumes at frac(i * golden) of the spread: even, never in step
EPS_USD = 1e-12
_SCOPE_PREFIX = b"orchestrating-agents/shared-limits/v1\x00"
_NAME_MAX = 200


# ------------------------------------------------------------------------------ identity
def scope_key(api_key: str, base_url: str, pool: str) -> str:
    """The store's key for (API key, base URL, rate-limit pool): a sha256 over a fixed prefix and
    the three (hex, 40 characters). The API key itself is never written anywhere.

    >>> len(scope_key("sk-ant-...", "https://api.anthropic.com", "sonnet-5-5"))
    40
    """
    for value, name in ((api_key, "api_key"), (base_url, "base_url"), (pool, "pool")):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not api_key:
        raise ValueError("api_key must be a non-empty str")
    if not pool:
        raise ValueError("pool must be a non-empty str (a rate-limit pool, see _models.pool_of)")
    digest = hashlib.sha256(_SCOPE_PREFIX)
    for part in (api_key, base_url, pool):
        digest.update(part.encode("utf-8", "backslashreplace"))
        digest.update(b"\x00")
    return digest.hexdigest()[:40]


class _Owner:
    """This process: host, pid and a random start nonce (new in a forked child)."""

    def __init__(self) -> None:
        self.id = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"
        self.serial = itertools.count(1)  # (next() on itertools.count is atomic under the GIL)

    def new_id(self) -> str:
        return f"{self.id}#{next(self.serial)}"


_owner = _Owner()


def owner() -> _Owner:
    """This process's owner (a forked child gets a new one)."""
    return _owner


def owner_id() -> str:
    """This process's owner id in the store: ``"<host>/<pid>/<start nonce>"``."""
    return _owner.id


# ------------------------------------------------------------------------------ answers
@dataclass(frozen=True)
class Grant:
    """The answer of :meth:`SharedStore.acquire`.

    ``granted``: the charges were taken (all of them, or nothing). ``wait_s``: when not granted,
    seconds until they may fit (the pause, with this caller's spread, included). ``taken``: what
    was debited per kind (the charges plus any ``extra`` granted; kinds with no known limit are
    absent). ``levels``: the bucket levels after the decision. ``marks``: the cumulative amounts
    taken from each bucket after this grant (pass them back to :meth:`SharedStore.learn` with the
    reply's ``remaining``). ``at``: the store's clock at the decision. ``paused``: refused by the
    shared pause. ``reservation``: the hold's id when ``provisional`` amounts were held.
    """

    granted: bool
    wait_s: float
    scope: str = ""
    taken: Mapping[str, float] = field(default_factory=dict)
    levels: Mapping[str, float] = field(default_factory=dict)
    marks: Mapping[str, float] = field(default_factory=dict)
    at: float = 0.0
    paused: bool = False
    reservation: Optional[str] = None
    provisional: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BucketState:
    """One shared bucket: size, refill minute, level now, and how long ago its limit was learned."""

    capacity: float
    minute_s: float
    level: float
    learned_age_s: float


@dataclass(frozen=True)
class ScopeState:
    """What the store knows of a scope: its buckets, the pause left, the holds open."""

    buckets: Mapping[str, BucketState]
    paused_s: float
    holds: int


@dataclass(frozen=True)
class BudgetGrant:
    """The answer of :meth:`SharedStore.budget_reserve`: ``granted`` or not, the reserved worst case
    ``cost_usd``, and the budget's ``spent_usd`` / ``reserved_usd`` after the decision."""

    granted: bool
    name: str
    cost_usd: float
    spent_usd: float
    reserved_usd: float
    reservation: Optional[str] = None


@dataclass(frozen=True)
class BudgetReport:
    """A named budget across every process on the store.

    ``spent_usd``: settled attempts (their worst case when the real cost is unknown, or when the
    owner died: ``expired_usd`` of it); ``reserved_usd``: ``open`` attempts in flight;
    ``cap_usd``: the last cap a caller named (None before any); ``refused``: reservations refused.
    """

    name: str
    spent_usd: float
    reserved_usd: float
    open: int
    expired_usd: float
    refused: int
    cap_usd: Optional[float]


@runtime_checkable
class SharedStore(Protocol):
    """What admission needs from a store (SQLite or Redis). Every method returns None when the
    store is unavailable: the caller then admits per process."""

    kind: str

    @property
    def available(self) -> bool: ...

    def acquire(
        self,
        scope: str,
        charges: Mapping[str, float],
        *,
        extra: Optional[Mapping[str, float]] = None,
        provisional: Optional[Mapping[str, float]] = None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> Optional[Grant]: ...

    def settle(
        self, grant: Grant, *, used: Optional[Mapping[str, float]] = None, adjust: Optional[Mapping[str, float]] = None
    ) -> Optional[bool]: ...

    def give(self, scope: str, amounts: Mapping[str, float]) -> Optional[bool]: ...

    def learn(
        self,
        scope: str,
        limits: Mapping[str, tuple[float, float]],
        *,
        remaining: Optional[Mapping[str, float]] = None,
        marks: Optional[Mapping[str, float]] = None,
    ) -> Optional[bool]: ...

    def pause(self, scope: str, seconds: float) -> Optional[float]: ...

    def state(self, scope: str) -> Optional[ScopeState]: ...

    def budget_reserve(
        self, name: str, cost_usd: float, cap_usd: float, *, ttl_s: float = DEFAULT_TTL_S
    ) -> Optional[BudgetGrant]: ...

    def budget_settle(self, grant: BudgetGrant, actual_usd: Optional[float]) -> Optional[bool]: ...

    def budget_report(self, name: str) -> Optional[BudgetReport]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ argument checks
Vector = list[float]  # three floats, in KINDS order


def amounts(value: Any, name: str, *, signed: bool = False) -> Optional[Vector]:
    """A mapping of bucket kind -> amount as ``[rpm, itpm, otpm]`` (None: nothing given)."""
    if value is None:
        return None
    if not is_mapping(value):
        raise TypeError(f"{name} must be a mapping of {'/'.join(KINDS)} to numbers, got {type(value).__name__}")
    out = [0.0, 0.0, 0.0]
    for kind, amount in value.items():
        try:
            index = KINDS.index(kind)
        except ValueError:
            raise ValueError(f"{name} has an unknown bucket {kind!r}: expected one of {', '.join(KINDS)}") from None
        if signed:
            check_number(amount, f"{name}[{kind!r}]", minimum=-math.inf)
        else:
            check_number(amount, f"{name}[{kind!r}]")
        out[index] = float(amount)
    return out


def limits_of(value: Any) -> list[Optional[tuple[float, float]]]:
    """``limits`` of :meth:`SharedStore.learn`: kind -> (capacity > 0, minute_s > 0)."""
    if not is_mapping(value):
        raise TypeError(f"limits must be a mapping of bucket kind to (capacity, minute_s), got {type(value).__name__}")
    out: list[Optional[tuple[float, float]]] = [None, None, None]
    for kind, pair in value.items():
        if kind not in KINDS:
            raise ValueError(f"limits has an unknown bucket {kind!r}: expected one of {', '.join(KINDS)}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"limits[{kind!r}] must be a (capacity, minute_s) pair, got {type(pair).__name__}")
        capacity = check_number(pair[0], f"limits[{kind!r}] capacity")
        if capacity <= 0:
            raise ValueError(f"limits[{kind!r}] capacity must be > 0, got {capacity!r}")
        out[KINDS.index(kind)] = (float(capacity), check_seconds(pair[1], f"limits[{kind!r}] minute_s"))
    return out


def floors_of(
    remaining: Optional[Mapping[str, float]], marks: Optional[Mapping[str, float]]
) -> list[Optional[tuple[float, Optional[float]]]]:
    """Per kind, None or (the header's ``remaining``, the grant's mark or None), checked."""
    left = amounts(remaining, "remaining")
    seen = amounts(marks, "marks")
    out: list[Optional[tuple[float, Optional[float]]]] = [None, None, None]
    if left is None or remaining is None:
        return out
    for i, kind in enumerate(KINDS):
        if kind in remaining:
            out[i] = (left[i], seen[i] if seen is not None and marks is not None and kind in marks else None)
    return out


def floor_now(floor: tuple[float, Optional[float]], cum: float) -> float:
    """``remaining - what was taken since the mark`` (never below 0)."""
    left, mark = floor
    return max(0.0, left - (max(0.0, cum - mark) if mark is not None else 0.0))


def budget_name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"budget name must be a str, got {type(value).__name__}")
    if not value.strip() or len(value) > _NAME_MAX:
        raise ValueError(f"budget name must be a non-empty str of at most {_NAME_MAX} characters, got {value!r}")
    return value


def check_scope(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"scope must be a str (from scope_key()), got {type(value).__name__}")
    if not value:
        raise ValueError("scope must be a non-empty str (from scope_key())")
    return value


def check_grant(grant: Any, cls: type) -> None:
    if not isinstance(grant, cls):
        raise TypeError(f"grant must be a {cls.__name__}, got {type(grant).__name__}")


def spread(slot: int, length: float) -> float:
    """The extra wait of the ``slot``-th caller asking during a pause of ``length`` seconds."""
    width = min(max(SPREAD_SHARE * length, SPREAD_MIN_S), SPREAD_MAX_S)
    return (slot * GOLDEN) % 1.0 * width


def settle_hold(held: Vector, used: Optional[Vector], alive: bool) -> Vector:
    """What settling a hold gives back per kind: ``held - used`` while the hold is open; ``-used``
    once it expired (the expiry gave everything back). ``used`` None: all of it was used."""
    out = [0.0, 0.0, 0.0]
    for i in range(3):
        if held[i] > 0:
            spent = held[i] if used is None else min(used[i], held[i])
            out[i] = held[i] - spent if alive else -spent
    return out


def as_map(vector: Vector, known: list[bool]) -> dict[str, float]:
    return {KINDS[i]: vector[i] for i in range(3) if known[i]}


# ------------------------------------------------------------------------------ outages
class Guard:
    """Availability of one store: one warning per outage, one new try every ``retry_s`` seconds.

    A call asks :meth:`begin` first (None: skip it, the store is down), then reports
    :meth:`failed` or :meth:`ok`. Only a call begun during the outage (the retry) ends it: a call
    begun before the failure and answered after it says nothing about the store now.
    """

    def __init__(self, what: str, retry_s: float) -> None:
        self.what = what
        self.retry_s = retry_s
        self.down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def begin(self) -> Optional[bool]:
        """None: do not call (down, not yet time to retry); True: this call is the retry; False: up."""
        if not self.down:
            return False
        with self._lock:
            now = time.monotonic()
            if not self.down:
                return False
            if now < self._retry_at:
                return None
            self._retry_at = now + self.retry_s  # one caller retries; the others go on without
            return True

    def failed(self, exc: BaseException, secret: str = "") -> None:
        text = f"{type(exc).__name__}: {exc}"
        if secret:
            text = text.replace(secret, "[redacted]")
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_s
            if self.down:
                logger.debug("shared limits: %s still unavailable (%s)", self.what, text)
                return
            self.down = True
        logger.warning(
            "shared limits: %s is unavailable (%s); admission and spend caps are per process until it is back",
            self.what,
            text,
        )

    def ok(self, retried: Optional[bool]) -> None:
        """A call succeeded; ``retried``: what :meth:`begin` said for it."""
        if retried and self.down:
            with self._lock:
                was, self.down = self.down, False
            if was:
                logger.info("shared limits: %s is available again", self.what)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held)."""
        self._lock = threading.Lock()


live_stores: weakref.WeakSet = weakref.WeakSet()
graveyard: list[Any] = []  # connections inherited over fork: kept, never closed, in the child


def _after_fork() -> None:
    global _owner
    _owner = _Owner()
    for store in list(live_stores):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# ------------------------------------------------------------------------------ the scope row
SCOPE_COLUMNS = tuple(f"{k}_{f}" for k in KINDS for f in ("cap", "rate", "level", "cum", "learned")) + (
    "last",
    "pause_until",
    "pause_len",
    "pause_callers",
)


class ScopeRow:
    """The state of one scope as a backend reads it (a row, a hash) and writes it back."""

    __slots__ = ("cap", "rate", "level", "cum", "learned", "last", "pause_until", "pause_len", "callers")

    def __init__(self, row: Optional[tuple]) -> None:
        if row is None:
            row = (0.0,) * (len(SCOPE_COLUMNS) - 1) + (0,)
        self.cap = [row[0], row[5], row[10]]
        self.rate = [row[1], row[6], row[11]]
        self.level = [row[2], row[7], row[12]]
        self.cum = [row[3], row[8], row[13]]
        self.learned = [row[4], row[9], row[14]]
        self.last, self.pause_until, self.pause_len = row[15], row[16], row[17]
        self.callers = int(row[18])

    def values(self) -> tuple:
        out: list = []
        for i in range(3):
            out += [self.cap[i], self.rate[i], self.level[i], self.cum[i], self.learned[i]]
        return (*out, self.last, self.pause_until, self.pause_len, self.callers)

    def known(self) -> list[bool]:
        return [c > 0 for c in self.cap]

    def refill(self, now: float) -> None:
        if now > self.last:
            elapsed = now - self.last
            for i in range(3):
                if self.cap[i] > 0:
                    self.level[i] = min(self.cap[i], self.level[i] + elapsed * self.rate[i])
            self.last = now

    def wait(self, need: Vector) -> float:
        """Seconds until ``need`` fits every known bucket (0.0: now)."""
        wait = 0.0
        for i in range(3):
            cap = self.cap[i]
            if cap > 0 and need[i] > 0:
                short = min(need[i], cap) - self.level[i]
                if short > 0:
                    wait = max(wait, short / self.rate[i])
        return wait

    def take(self, need: Vector, extra: Optional[Vector]) -> Vector:
        """Debit ``need`` plus what ``extra`` finds above half of each bucket."""
        taken = [0.0, 0.0, 0.0]
        for i in range(3):
            cap = self.cap[i]
            if cap <= 0:
                continue
            amount = need[i]
            if extra is not None and extra[i] > 0:
                amount += min(extra[i], max(0.0, self.level[i] - need[i] - 0.5 * cap))
            self.level[i] -= amount
            self.cum[i] += amount
            taken[i] = amount
        return taken

    def give(self, amounts: Vector) -> None:
        """Add signed amounts to the known buckets (a level never passes its capacity)."""
        for i in range(3):
            if self.cap[i] > 0 and amounts[i]:
                self.level[i] = min(self.cap[i], self.level[i] + amounts[i])

    def pause_wait(self, now: float) -> Optional[float]:
        """This caller's wait when the pause is on (and counts it), else None."""
        if now >= self.pause_until:
            return None
        slot = self.callers
        self.callers += 1
        return self.pause_until - now + spread(slot, self.pause_len)


def scope_state(st: ScopeRow, now: float, holds: int) -> ScopeState:
    buckets = {
        KINDS[i]: BucketState(st.cap[i], round(st.cap[i] / st.rate[i], 9), st.level[i], max(0.0, now - st.learned[i]))
        for i in range(3)
        if st.cap[i] > 0
    }
    return ScopeState(buckets, max(0.0, st.pause_until - now), int(holds))
