"""Admission control: requests wait for room under the rate limits instead of meeting a 429, and a
run's spend cap (:class:`Budget`).

**Controllers.** :func:`controller_for` returns the one :class:`AdmissionController` of a
client's (API key, base URL, rate-limit pool) in this process: models of one pool (the catalogue's
``pool``: every Opus 4.x model shares one, Fable 5.x another ...) share their limits, so they
share one controller and what it learned (the registry is keyed by a hash of the key; the key is
never stored, logged or shown). The transport calls ``ticket = controller.admit(params,
interrupt)`` before each attempt and ``ticket.finish(headers, usage, error)`` after it.

A controller keeps continuously refilled buckets, as the API enforces them: requests (RPM), input
tokens (ITPM: uncached input + cache writes; cache reads do not count) and output tokens (OTPM:
``max_tokens`` is charged at admission and the unused part given back when the reply ends). It
learns them from the ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``
headers of every response, success or 429: ``limit`` sets a bucket's size, and a ``remaining``
lower than the local level (beyond the API's rounding) replaces it, so processes sharing a key,
which all see the organisation's remaining budget, slow down together: when such a drop is large
(another user of the key) or a 429 comes, the controller assumes half the refill rate (down to a
tenth), and takes it back step by step (x1.25 per quarter minute) while no contention shows. Explicit
:class:`RateLimits` cap what the headers say (a known tier, or headroom for other users of the key).

Until the first headers arrive (and without explicit limits) one request goes first and the
others wait for its headers, up to ``AdmissionController.probe_wait_s`` (0.25 s; a stream's headers
come at its start when the transport calls ``Ticket.started``).
A server that sends no rate-limit headers (a proxy, a gateway) puts the controller on its fast
path: ``admit`` then costs a few attribute reads. An admitted request that still gets a 429 gives
its charges back, and the controller learns from the 429's headers; a 429 from a server that
sends no rate-limit headers makes every request wait its ``retry-after``.

Waiting is first come, first served, interruptible (``InterruptToken``: kind ``interrupted``) and
holds no lock: a waiter sleeps on its own event until the head of the queue fits.

Sizing a request uses :mod:`_estimate`'s local rule, scaled by a per-controller ratio learned from
the usage of replies (actual / estimated input); a cached prefix that a reply showed warm is
not counted toward ITPM while it stays warm.

**Budgets.** ``Budget(max_cost_usd)`` (in :mod:`_budget`, re-exported here) reserves each
attempt's worst-case cost before it starts; an attempt that does not fit beside the reservations in
flight waits for them, and one that could take the run past the cap (spent plus its worst case) is
refused (kind ``budget``); ``settle`` replaces the reservation with the real cost. See :class:`Budget`.

>>> controller = controller_for(client, "claude-sonnet-4-6", RateLimits(itpm=30_000))
>>> ticket = controller.admit(params, interrupt=None)      # waits until the request fits
>>> ticket.finish(reply.headers, reply.usage, None)
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional

import _tracing
from _budget import Budget, Reservation
from _credentials import on_change
from _errors import ClaudeInvocationError
from _estimate import (
    RequestEstimate,
    catalogued,
    estimate_request,
    note_input_ratio,
    warm_prefixes,
)
from _interrupt import InterruptToken, subscribe, unsubscribe
from _results import Usage
from _shared_admission import SharedLink, open_link, register_lock

logger = logging.getLogger("claude_client._admission")

__all__ = [
    "RateLimits",
    "AdmissionController",
    "Ticket",
    "controller_for",
    "reset_controllers",
    "Budget",
    "Reservation",
]

# (bucket kind, header name part, rounding tolerance of the header's "remaining")
_KINDS = (
    ("rpm", "requests", 1.0),
    ("itpm", "input-tokens", 1000.0),
    ("otpm", "output-tokens", 1000.0),
)
_PREFIX = "anthropic-ratelimit-"
_PREFIX_B = _PREFIX.encode()
_FREE_CHECK_EVERY = 16  # on the fast path, look for rate-limit headers in one response of this many
_ROOMY_CHECK_EVERY = 8  # every bucket at least half full: read the headers of one response in this many
_MAX_PAUSE_S = 60.0
_RATIO_WEIGHT = 0.2  # weight of a new reply in the running actual / estimated input ratio
_SPREAD_SHARE = 1.0  # without a store, a 429's pause is spread over this share of it ...
_SPREAD_MAX_S = 5.0  # ... at most this long


def rate_limit_pool(model: str) -> str:
    """The rate-limit pool of ``model``: the catalogue's (a dated snapshot ``<id>-YYYYMMDD`` is in
    its model's pool); an id the catalogue does not know is a pool of its own.

    >>> rate_limit_pool("claude-opus-4-8"), rate_limit_pool("claude-opus-4-7-20260416")
    ('opus-4', 'opus-4')
    """
    info = catalogued(model)
    return info.pool if info is not None else model


# ------------------------------------------------------------------------------ limits
@dataclass(frozen=True)
class RateLimits:
    """Explicit rate limits of one model: requests, input and output tokens per minute.

    Each is an int >= 1 or None (learn it from the response headers). A limit given here caps
    what the headers say: use it for a known tier, or to leave headroom for other users of the
    key. ``minute_s`` is the length of the limits' minute: None (default) means 60 s, or less
    when the headers' ``reset`` times show the buckets refilling faster (a server that scales
    time, such as the emulator with ``rate_limit_minute_s``); a number is used as given.

    >>> RateLimits(rpm=50, itpm=30_000, otpm=8_000)
    >>> controller_for(client, "claude-sonnet-4-6", RateLimits(itpm=20_000))
    """

    rpm: Optional[int] = None
    itpm: Optional[int] = None
    otpm: Optional[int] = None
    minute_s: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int >= 1 or None, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be an int >= 1 or None, got {value}")
        minute = self.minute_s
        if minute is None:
            return
        if isinstance(minute, bool) or not isinstance(minute, (int, float)):
            raise TypeError(f"minute_s must be a number of seconds > 0, got {type(minute).__name__}")
        if not (minute > 0 and math.isfinite(minute)):
            raise ValueError(f"minute_s must be a number of seconds > 0, got {minute!r}")

    @property
    def minute(self) -> float:
        """``minute_s``, or 60."""
        return 60.0 if self.minute_s is None else float(self.minute_s)

    @property
    def any(self) -> bool:
        """True when at least one limit is set."""
        return self.rpm is not None or self.itpm is not None or self.otpm is not None


class _Bucket:
    """A continuously refilled bucket of ``capacity`` units per minute (the level may go negative:
    a request bigger than the bucket is admitted when it is full, then the bucket refills)."""

    __slots__ = ("capacity", "rate", "level", "last")

    def __init__(self, capacity: float, minute_s: float, level: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / minute_s
        self.level = min(float(level), self.capacity)
        self.last = now

    def refill(self, now: float) -> None:
        if now > self.last:
            self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
            self.last = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0.0 now); takes nothing."""
        self.refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def resize(self, capacity: float, minute_s: float) -> None:
        """A new size (a bigger bucket adds the difference to the level) and minute."""
        capacity = float(capacity)
        if capacity != self.capacity:
            self.level = min(capacity, self.level + capacity - self.capacity)
            self.capacity = capacity
        self.rate = capacity / minute_s

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


def rate_limit_fields(headers: Any) -> Optional[dict[str, Any]]:
    """The ``anthropic-ratelimit-*`` fields of response headers, keyed by the rest of the name
    (``"requests-limit"``, ...; values as sent, str or bytes), or None when there are none.

    >>> rate_limit_fields({"anthropic-ratelimit-requests-limit": "50", "request-id": "req_1"})
    {'requests-limit': '50'}
    """
    found: Optional[dict[str, Any]] = None
    raw = getattr(headers, "raw", None)  # httpx: scan the raw pairs once instead of a lookup per field
    if type(raw) is list:
        n = len(_PREFIX_B)
        for key, value in raw:
            if len(key) > n and key[:n].lower() == _PREFIX_B:
                if found is None:
                    found = {}
                found[key[n:].lower().decode("latin-1")] = value
        return found
    items = getattr(headers, "items", None)
    if items is None:
        return None
    n = len(_PREFIX)
    for key, value in items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(key, str) and len(key) > n and key[:n].lower() == _PREFIX:
            if found is None:
                found = {}
            found[key[n:].lower()] = value
    return found


class _Waiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


# ------------------------------------------------------------------------------ tickets
class Ticket:
    """One admitted attempt: what it was charged, settled by :meth:`finish` (once).

    >>> ticket = controller.admit(params, interrupt=None)
    >>> ticket.finish(reply.headers, reply.usage, None)      # or (error.headers, None, error)
    """

    __slots__ = (
        "_controller",
        "_params",
        "_estimate",
        "_charges",
        "_probe",
        "_done",
        "_learned",
        "_mark",
        "_sent",
        "_shared",
        "_smark",
        "_unpaid",
    )

    def __init__(
        self,
        controller: AdmissionController,
        params: Mapping[str, Any],
        estimate: Optional[RequestEstimate],
        charges: Optional[tuple[float, float, float]],
        probe: bool = False,
    ) -> None:
        self._controller = controller
        self._params = params
        self._estimate = estimate
        self._charges = charges  # (requests, input tokens, output tokens) taken from the buckets
        self._probe = probe
        self._done = False
        self._learned: Any = None
        self._mark: Optional[tuple[float, float, float]] = None  # controller._cum after this admission
        self._sent = 0.0  # wall-clock time of the admission
        self._shared = False  # charged to the shared store's lease (not the local buckets)
        self._smark: Optional[Mapping[str, float]] = None  # the store's marks when admitted
        self._unpaid: Optional[tuple[float, float]] = None  # a probe's estimate, charged to nothing

    def started(self, headers: Optional[Mapping[str, str]]) -> None:
        """Optional: learn from the response headers as soon as they arrive (a stream's headers
        are fresh at its start, stale at its end); :meth:`finish` then skips the same headers."""
        if headers is not None and not self._done:
            self._learned = headers
            self._controller._learn_now(headers, self)

    def finish(
        self, headers: Optional[Mapping[str, str]], usage: Optional[Usage], error: Optional[ClaudeInvocationError]
    ) -> None:
        """Settle the attempt: give back what it did not use, learn from ``headers`` and ``usage``
        (``headers``: the reply's or the failed response's, None without a response)."""
        if self._done:
            return
        self._done = True
        controller = self._controller
        estimate = self._estimate
        if usage is not None and (
            usage.cache_read_input_tokens or usage.cache_creation_input_tokens or estimate is not None
        ):
            if estimate is None:
                estimate = estimate_request(self._params)
            if usage.cache_read_input_tokens or usage.cache_creation_input_tokens:
                warm_prefixes.mark_from_reply(estimate, usage)
            note_input_ratio(estimate.model, estimate.total, usage.total_input_tokens)
        if headers is self._learned:
            headers = None
        controller._settle(self, headers, usage, error, estimate)


# ------------------------------------------------------------------------------ the controller
class AdmissionController:
    """Admission under the rate limits of one (API key, base URL, rate-limit pool); get it from
    :func:`controller_for`. Thread-safe: one lock guards the buckets and the queue.
    ``model`` is the model it was made for, ``pool`` its pool (:func:`rate_limit_pool`).

    ``probe_wait_s``: before anything is known, one request goes first and the others wait for its
    headers, at most this long (then they go too, and the first headers install the buckets).

    ``count_cache_reads = True`` makes it count cache reads toward ITPM and never raise a level
    from the headers, like a limiter that does not know the rule (a baseline for benchmarks).

    >>> c = controller_for(client, "claude-sonnet-4-6")
    >>> ticket = c.admit(params, interrupt=token)
    >>> c.snapshot()["limits"]
    {'rpm': 50.0, 'itpm': 30000.0, 'otpm': 8000.0}
    """

    #: Longest wait for the first request's headers before the others go anyway (seconds).
    probe_wait_s = 0.25
    #: The same with a shared store: every process on the key starts by probing, so the others wait
    #: longer for the first headers (looking in the store every 50 ms for limits another process
    #: learned) rather than all going uncharged at once.
    shared_probe_wait_s = 1.0

    def __init__(self, model: str, limits: Optional[RateLimits] = None, *, count_cache_reads: bool = False) -> None:
        if limits is not None and not isinstance(limits, RateLimits):
            raise TypeError(f"limits must be a RateLimits or None, got {type(limits).__name__}")
        self.model = model
        self.pool = rate_limit_pool(model)
        self.count_cache_reads = count_cache_reads
        self._lock = threading.Lock()
        self._limits = limits or RateLimits()
        self._buckets: dict[str, _Bucket] = {}
        self._header_limits: dict[str, float] = {}
        self._headerless = False  # a response came without rate-limit headers
        self._free_seen = 0  # responses seen on the fast path (approximate: not locked)
        self._settled = 0  # responses settled (approximate: not locked)
        self._implied_minute: dict[str, float] = {}  # per kind, from the headers' reset times
        # Cumulative charges (requests, input, output) of every admission: a ticket remembers the
        # figures after its own, so its reply's headers can be corrected for later admissions.
        self._cum = [0.0, 0.0, 0.0]
        self._in_flight = 0  # admitted attempts not yet finished
        # Share of the refill this process assumes (< 1 after other users of the key showed up).
        self._share = 1.0
        self._contended_at = -1e9
        self._recovered_at = -1e9
        self._roomy = False  # every bucket at least half full after the last settle
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._ratio = 1.0
        self._pause_until = 0.0
        self._probe_in_flight = False
        self._probe_deadline = 0.0
        self._stats = {"admitted": 0, "waited": 0, "wait_s": 0.0, "rate_limited": 0, "paused_429": 0, "contention": 0}
        # "probe": nothing known yet, one request at a time; "limited": buckets; "free": no limits.
        self._mode = "probe"
        self._link: Optional[SharedLink] = None  # the shared store (None: per-process admission)
        self._wait_kind = ""  # the limit the head of the queue last waited for
        self._uncharged = [0.0, 0.0, 0.0]  # estimated charges of the probe-phase attempts in flight
        if self._limits.any:
            self._apply_explicit(time.monotonic())

    def _attach(self, link: SharedLink) -> None:
        """Share the limits through ``link``: adopt what the store knows (limits learned by
        another process: no probe; a pause in progress)."""
        with self._lock:
            self._link = link
            register_lock(link, self._lock)
            self._adopt(link, time.monotonic())

    def _adopt(self, link: SharedLink, now: float) -> bool:
        """Take the limits and pause the store knows (lock held); True when it knew limits."""
        limits, paused = link.adopt()
        if paused > 0:
            self._pause_until = max(self._pause_until, now + paused)
        if not limits:
            return False
        for kind, (capacity, minute) in limits.items():
            self._header_limits[kind] = capacity
            self._implied_minute[kind] = minute
        self._apply_explicit(now)
        self._charge_uncharged(link)
        return True

    def _charge_uncharged(self, link: SharedLink) -> None:
        """The link just became active: the probe-phase attempts still in flight were charged to
        nothing; their estimates become a debt of the lease, charged to the store with the next
        grant (lock held)."""
        link.refund((-self._uncharged[0], -self._uncharged[1], -self._uncharged[2]))

    def _fallback(self, now: float) -> None:
        """The store stopped answering: local buckets from the store's last levels (lock held)."""
        link = self._link
        for kind, bucket in self._buckets.items():
            seen = link.levels.get(kind) if link is not None else None
            bucket.level = min(bucket.capacity, seen) if seen is not None else 0.5 * bucket.capacity
            bucket.last = now

    # -------------------------------------------------------------- configuration
    def set_limits(self, limits: Optional[RateLimits]) -> None:
        """Replace the explicit limits (None: only what the headers say from now on)."""
        if limits is not None and not isinstance(limits, RateLimits):
            raise TypeError(f"limits must be a RateLimits or None, got {type(limits).__name__}")
        with self._lock:
            self._limits = limits or RateLimits()
            self._apply_explicit(time.monotonic())
            self._wake_head_locked()

    def _cap(self, kind: str) -> Optional[float]:
        """The size of a bucket: the explicit limit, capped by the headers' (lock held)."""
        explicit = getattr(self._limits, kind)
        header = self._header_limits.get(kind)
        if explicit is None:
            return header
        return float(explicit) if header is None else min(float(explicit), header)

    def _base_minute(self, kind: str) -> float:
        """The limits' minute for a bucket: explicit, else 60 s or what the headers implied."""
        explicit = self._limits.minute_s
        return float(explicit) if explicit is not None else self._implied_minute.get(kind, 60.0)

    def _minute_of(self, kind: str) -> float:
        """The refill minute this controller assumes: the limits' minute over its ``share``."""
        return self._base_minute(kind) / self._share

    def _contention(self, now: float) -> None:
        """Another user of the key showed up (a 429, or a ``remaining`` well below the local
        level): assume half the refill from now on (lock held; at most once per 1/20 minute)."""
        if now - self._contended_at < self._base_minute("rpm") / 60:
            return
        self._contended_at = now
        if self._share > 0.1:
            self._share = max(0.1, self._share * 0.5)
            self._rerate()
            self._stats["contention"] += 1

    def _recover(self, now: float) -> None:
        """Take back the refill step by step (x1.25 per quarter minute without contention)."""
        if self._share < 1.0 and now - max(self._contended_at, self._recovered_at) > self._base_minute("rpm") / 2:
            self._recovered_at = now
            self._share = min(1.0, self._share * 1.25)
            self._rerate()

    def _rerate(self) -> None:
        for kind, bucket in self._buckets.items():
            bucket.rate = bucket.capacity / self._minute_of(kind)

    def _apply_explicit(self, now: float) -> None:  # lock held (or in __init__)
        for kind, _prefix, _tol in _KINDS:
            minute = self._minute_of(kind)
            cap = self._cap(kind)
            bucket = self._buckets.get(kind)
            if cap is None:
                self._buckets.pop(kind, None)
            elif bucket is None:
                self._buckets[kind] = _Bucket(cap, minute, cap, now)
            else:
                bucket.refill(now)
                bucket.resize(cap, minute)
        if self._buckets:
            self._mode = "limited"
        else:
            self._mode = "free" if self._headerless else "probe"

    # -------------------------------------------------------------- admission
    def admit(self, params: Mapping[str, Any], interrupt: Optional[InterruptToken] = None) -> Ticket:
        """Wait until ``params`` fits the limits, take its charges and return its :class:`Ticket`.

        Raises ``ClaudeInvocationError(kind="interrupted")`` when ``interrupt`` fires while waiting.
        """
        if self._mode == "free" and time.monotonic() >= self._pause_until:  # the fast path
            return Ticket(self, params, None, None)
        estimate = estimate_request(params)
        waiter: Optional[_Waiter] = None
        with self._lock:
            if not self._queue:
                ticket = self._try_admit(params, estimate, time.monotonic())
                if ticket is not None:
                    return ticket
            waiter = _Waiter()
            self._queue.append(waiter)
            self._stats["waited"] += 1
        return self._wait(params, estimate, waiter, interrupt)

    def _wait(
        self, params: Mapping[str, Any], estimate: RequestEstimate, waiter: _Waiter, interrupt: Optional[InterruptToken]
    ) -> Ticket:
        started = time.monotonic()
        handle = subscribe(interrupt, waiter.event.set) if interrupt is not None else None
        try:
            while True:
                if interrupt is not None and interrupt.is_interrupted():
                    raise ClaudeInvocationError(
                        "The request was interrupted (InterruptToken.interrupt()) while waiting for rate-limit room",
                        kind="interrupted",
                    )
                admitted: Optional[Ticket] = None
                with self._lock:
                    delay: Optional[float] = None
                    if self._queue and self._queue[0] is waiter:
                        now = time.monotonic()
                        admitted = self._try_admit(params, estimate, now)
                        if admitted is not None:
                            self._queue.popleft()
                            self._stats["wait_s"] += now - started
                            self._wake_head_locked()
                            limit = self._wait_kind or ("pause" if self._pause_until > started else self._mode)
                        else:
                            delay = self._delay(estimate, now)
                    waiter.event.clear()
                if admitted is not None:
                    _tracing.event("admission_wait", seconds=round(now - started, 6), limit=limit)
                    return admitted
                if interrupt is not None and interrupt.is_interrupted():
                    continue  # it fired before the clear above: do not sleep through it
                # No lock held from here: sleep until the head may fit, or a finish wakes us.
                waiter.event.wait(None if delay is None else max(delay, 0.001))
        except BaseException:
            with self._lock:
                try:
                    self._queue.remove(waiter)
                except ValueError:
                    pass
                self._wake_head_locked()
            raise
        finally:
            if handle is not None:
                unsubscribe(interrupt, handle)  # type: ignore[arg-type]

    def _need(self, estimate: RequestEstimate) -> tuple[float, float]:
        """(input tokens, output tokens) the request will be charged by the API."""
        warm = 0 if self.count_cache_reads else warm_prefixes.warm_tokens(estimate)
        return max(1.0, (estimate.total - warm) * self._ratio), float(estimate.max_tokens)

    def _delay(self, estimate: RequestEstimate, now: float) -> Optional[float]:
        """Seconds until the request fits (lock held); None: wait to be woken (the probe)."""
        if self._mode == "probe":
            if self._probe_in_flight:
                wait = max(self._probe_deadline - now, self._pause_until - now, 0.0)
                return wait if self._link is None else min(wait, self.shared_probe_wait_s / 20)
            return max(0.0, self._pause_until - now)
        delay = self._pause_until - now
        link = self._link
        if self._mode == "limited" and link is not None and link.active:
            self._wait_kind = link.wait_kind
            return max(delay, link.wait_until - now, 0.0)
        if self._mode == "limited":
            itpm, otpm = self._need(estimate)
            for kind, amount in (("rpm", 1.0), ("itpm", itpm), ("otpm", otpm)):
                bucket = self._buckets.get(kind)
                if bucket is not None:
                    wait = bucket.wait(amount, now)
                    if wait > delay:
                        delay, self._wait_kind = wait, kind
        return max(delay, 0.0)

    def _try_admit(self, params: Mapping[str, Any], estimate: RequestEstimate, now: float) -> Optional[Ticket]:
        """Take the request's charges when it fits now (lock held)."""
        mode = self._mode
        if now < self._pause_until:  # a 429 from a server without rate-limit headers: everyone waits
            return None
        if mode == "free":
            return Ticket(self, params, estimate, None)
        if mode == "probe":
            probe = not self._probe_in_flight
            link = self._link
            if not probe and now < self._probe_deadline and link is None:
                return None
            if not probe and link is not None and now >= max(link.retry_at, link.adopt_at):
                # Another process may have learned the limits meanwhile: then no need to wait.
                link.adopt_at = now + self.shared_probe_wait_s / 20
                if self._adopt(link, now):
                    return self._try_admit(params, estimate, now)
            if not probe and now < self._probe_deadline:
                return None
            # The probe is out; past its deadline the others go too, uncharged, until headers come.
            self._probe_in_flight = True
            if probe:
                self._probe_deadline = now + (self.probe_wait_s if link is None else self.shared_probe_wait_s)
            self._in_flight += 1
            self._stats["admitted"] += 1
            ticket = Ticket(self, params, estimate, None, probe=True)
            if link is not None:
                ticket._unpaid = self._need(estimate)  # (see _charge_uncharged)
                self._add_uncharged(ticket._unpaid, 1.0)
            ticket._mark = (self._cum[0], self._cum[1], self._cum[2])
            ticket._sent = time.time()
            return ticket
        itpm, otpm = self._need(estimate)
        link = self._link
        if link is not None and link.active:
            wait = link.take((1.0, itpm, otpm), now)
            if wait is None:
                self._fallback(now)
            elif wait > 0:
                return None
            else:
                self._stats["admitted"] += 1
                self._in_flight += 1
                ticket = Ticket(self, params, estimate, (1.0, itpm, otpm))
                ticket._shared = True
                ticket._smark = link.marks
                ticket._sent = time.time()
                return ticket
        buckets = self._buckets
        rpm_b, itpm_b, otpm_b = buckets.get("rpm"), buckets.get("itpm"), buckets.get("otpm")
        if (
            (rpm_b is not None and rpm_b.wait(1.0, now) > 0)
            or (itpm_b is not None and itpm_b.wait(itpm, now) > 0)
            or (otpm_b is not None and otpm_b.wait(otpm, now) > 0)
        ):
            return None
        charges = (0.0 if rpm_b is None else 1.0, 0.0 if itpm_b is None else itpm, 0.0 if otpm_b is None else otpm)
        if rpm_b is not None:
            rpm_b.level -= 1.0
        if itpm_b is not None:
            itpm_b.level -= itpm
        if otpm_b is not None:
            otpm_b.level -= otpm
        self._stats["admitted"] += 1
        self._in_flight += 1
        cum = self._cum
        cum[0] += charges[0]
        cum[1] += charges[1]
        cum[2] += charges[2]
        ticket = Ticket(self, params, estimate, charges)
        ticket._mark = (cum[0], cum[1], cum[2])
        ticket._sent = time.time()
        return ticket

    def _wake_head_locked(self) -> None:
        if self._queue:
            self._queue[0].event.set()

    def _wake_head(self) -> None:
        with self._lock:
            self._wake_head_locked()

    # -------------------------------------------------------------- learning
    def _learn_now(self, headers: Mapping[str, str], ticket: Ticket) -> None:
        fields = rate_limit_fields(headers)
        with self._lock:
            if fields:
                self._learn(fields, time.monotonic(), 0.0, ticket)
            else:
                self._headerless = True
            self._wake_head_locked()

    def _learn(
        self, fields: Mapping[str, Any], now: float, otpm_refund: float, ticket: Optional[Ticket] = None
    ) -> bool:
        """Adopt the rate-limit header ``fields`` (:func:`rate_limit_fields`; lock held); True
        when they carried limits.

        ``limit`` sizes the bucket. ``remaining`` was measured by the server while the request of
        ``ticket`` was in flight, so the admissions made since (``_cum`` minus the ticket's mark)
        may be missing from it: ``remaining - later admissions`` is a safe floor of the level now.
        The level drops to that floor when ``remaining`` is below the level (beyond the API's
        rounding: another process is using the key, or the estimates were short) and rises to it
        when it is above and this was the only attempt in flight (the local model was too
        cautious, e.g. a wrong minute). ``otpm_refund``: output tokens this
        reply gave back just now; the headers may predate that refund (a stream's come at its
        start), so OTPM compares with the level before it. ``reset`` times show how fast the
        server refills (see :class:`RateLimits` ``minute_s``).
        """
        found = False
        mark = ticket._mark if ticket is not None else None
        cum = self._cum
        link = self._link
        shared = link is not None and link.active
        told: Optional[dict[str, tuple[float, float]]] = {} if link is not None else None
        left: dict[str, float] = {}
        slack: dict[str, float] = {}
        for index, (kind, name, tolerance) in enumerate(_KINDS):
            raw_limit = fields.get(name + "-limit")
            if raw_limit is None:
                continue
            try:
                limit = float(raw_limit)
                remaining = float(fields.get(name + "-remaining", raw_limit))
            except (TypeError, ValueError):
                continue
            if not (limit > 0 and math.isfinite(limit) and math.isfinite(remaining)):
                continue
            found = True
            self._header_limits[kind] = limit
            if self._limits.minute_s is None and ticket is not None and limit - remaining - tolerance >= 0.05 * limit:
                self._infer_minute(
                    kind,
                    limit,
                    remaining + tolerance if tolerance > 1 else remaining,
                    fields.get(name + "-reset"),
                    ticket._sent,
                )
            minute = self._minute_of(kind)
            cap = self._cap(kind) or limit
            if told is not None:
                told[kind] = (cap, self._base_minute(kind))
                left[kind], slack[kind] = remaining, tolerance
            later = (cum[index] - mark[index]) if mark is not None else 0.0
            floor = max(0.0, min(remaining, cap) - later)
            bucket = self._buckets.get(kind)
            if bucket is None:
                self._buckets[kind] = _Bucket(cap, minute, floor, now)
                continue
            bucket.refill(now)
            bucket.resize(cap, minute)
            before = bucket.level - (otpm_refund if kind == "otpm" else 0.0)
            if remaining + tolerance < before:
                if remaining + max(tolerance, 0.05 * cap) < before and not shared:
                    self._contention(now)
                bucket.level = min(bucket.level, floor)
            elif floor > bucket.level + tolerance and mark is not None and self._share >= 1.0 and self._alone(ticket):
                # Only when nothing else is in flight: an attempt admitted earlier may reach the
                # server after these headers were made, so it may be missing from ``remaining``.
                bucket.level = floor
        if found:
            self._mode = "limited"
            if link is not None and told:
                if not shared:  # the store's first levels: no higher than this process's own
                    for kind in left:
                        bucket = self._buckets.get(kind)
                        if bucket is not None:
                            left[kind] = min(left[kind], max(0.0, bucket.level))
                link.note(told, left, slack, ticket._smark if ticket is not None else None, now)
                if link.active and not shared:
                    self._charge_uncharged(link)
        return found

    def _alone(self, ticket: Optional[Ticket]) -> bool:
        """True when nothing but ``ticket`` is in flight (lock held); never for the baseline that
        counts cache reads."""
        others = self._in_flight - (0 if ticket is None or ticket._done else 1)
        return others == 0 and not self.count_cache_reads

    def _infer_minute(self, kind: str, limit: float, remaining: float, reset: Any, sent_wall: float) -> None:
        """Shorten a bucket's minute when ``reset`` shows it refilling faster than 60 s (lock held).

        The server measured ``remaining`` after ``sent_wall``, and would be full at ``reset``
        (RFC 3339, maybe rounded to the second): the minute is at most
        ``limit * (reset - sent_wall + 1) / (limit - remaining)``.
        """
        if reset is None:
            return
        try:
            text = reset.decode("latin-1") if isinstance(reset, bytes) else str(reset)
            when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, TypeError, OverflowError):
            return
        upper = limit * (when - sent_wall + 1.0) / (limit - remaining)
        current = self._implied_minute.get(kind, 60.0)
        if 0 < upper < current:
            self._implied_minute[kind] = upper
            logger.debug("rate-limit headers of pool %s: the %s bucket refills within %.2f s", self.pool, kind, upper)

    def _settle(
        self,
        ticket: Ticket,
        headers: Optional[Mapping[str, str]],
        usage: Optional[Usage],
        error: Optional[ClaudeInvocationError],
        estimate: Optional[RequestEstimate],
    ) -> None:
        rate_limited = error is not None and (error.kind == "rate_limit" or error.status_code == 429)
        if self._mode == "free" and ticket._charges is None and not ticket._probe and not rate_limited:
            # Fast path: only watch (now and then) for limits appearing.
            self._free_seen += 1
            if headers is not None and self._free_seen % _FREE_CHECK_EVERY == 0:
                fields = rate_limit_fields(headers)
                if fields:
                    with self._lock:
                        self._learn(fields, time.monotonic(), 0.0, None)
            return
        charges = ticket._charges
        rate_limited = error is not None and (error.kind == "rate_limit" or error.status_code == 429)
        fields = None
        parsed = False
        if headers is not None:
            self._settled += 1  # approximate (not locked): only spaces out the reads below
            # Far from every limit, reading one response's headers in a few is enough.
            if not self._roomy or error is not None or self._settled % _ROOMY_CHECK_EVERY == 0:
                fields = rate_limit_fields(headers)
                parsed = True
        with self._lock:
            now = time.monotonic()
            refund_out = 0.0
            if charges is not None or ticket._probe:
                self._in_flight -= 1
            if charges is not None:
                back = self._refund(charges, usage, rate_limited)
                refund_out = back[2]
                link = self._link
                if ticket._shared and link is not None and link.active:
                    link.refund(back)
                else:
                    for kind, amount in zip(("rpm", "itpm", "otpm"), back):
                        bucket = self._buckets.get(kind)
                        if bucket is not None and amount:
                            bucket.refill(now)
                            bucket.give(amount)
            if usage is not None and estimate is not None and estimate.total > 0:
                ratio = usage.total_input_tokens / estimate.total
                if 0.05 < ratio < 20:
                    self._ratio += _RATIO_WEIGHT * (ratio - self._ratio)
            carried = fields is not None and self._learn(fields, now, refund_out, ticket)
            if ticket._unpaid is not None:  # (after _learn: a probe whose headers activate the link is charged)
                self._add_uncharged(ticket._unpaid, -1.0)
            if parsed and not carried:
                self._headerless = True
            self._recover(now)
            self._roomy = self._mode == "limited" and all(b.level >= 0.5 * b.capacity for b in self._buckets.values())
            if ticket._probe:
                if self._probe_deadline > now or self._in_flight == 0:
                    self._probe_in_flight = False  # the next request may be the probe
                if self._mode == "probe" and headers is not None and not carried:
                    self._mode = "free"
                    logger.debug(
                        "no rate-limit headers from the server: admission control for pool %s is off", self.pool
                    )
            if rate_limited:
                self._rate_limited(error, now)
            self._wake_head_locked()

    def _add_uncharged(self, need: tuple[float, float], sign: float) -> None:
        """Count a probe-phase attempt's estimate in (``sign`` 1) or out (-1) of ``_uncharged``."""
        itpm, otpm = need
        self._uncharged[0] = max(0.0, self._uncharged[0] + sign)
        self._uncharged[1] = max(0.0, self._uncharged[1] + sign * itpm)
        self._uncharged[2] = max(0.0, self._uncharged[2] + sign * otpm)

    def _refund(
        self, charges: tuple[float, float, float], usage: Optional[Usage], rate_limited: bool
    ) -> tuple[float, float, float]:
        """What an attempt charged ``charges`` gives back per bucket (negative: it used more)."""
        if rate_limited:  # the API took nothing
            return charges
        if usage is None:  # failed: the API gives the unused output back
            return 0.0, 0.0, charges[2]
        used = usage.input_tokens + usage.cache_creation_input_tokens
        if self.count_cache_reads:
            used += usage.cache_read_input_tokens
        return 0.0, (charges[1] - used) if charges[1] else 0.0, max(0.0, charges[2] - usage.output_tokens)

    def _rate_limited(self, error: Any, now: float) -> None:
        """A 429 (lock held): the scope pauses for its ``retry-after`` (shared through the store,
        each caller at its own spread resume time); without a store, this process pauses for a
        jittered ``retry-after`` (so processes sharing a key do not come back in step) and, with
        limits known, assumes a smaller share of the refill."""
        self._stats["rate_limited"] += 1
        pause = min(float(getattr(error, "retry_after", None) or 1.0), _MAX_PAUSE_S)
        link = self._link
        if link is not None and now >= link.retry_at:
            wait = link.pause(pause, now)
            if wait is not None:
                if link.active:
                    pass  # the store's buckets already hold everyone: no local share to cut
                elif self._mode == "limited":
                    self._contention(now)
                self._pause_until = max(self._pause_until, now + wait)
                self._stats["paused_429"] += 1
                return
            if self._mode == "limited":
                self._fallback(now)
        if self._mode == "limited":
            self._contention(now)
        spread = min(max(_SPREAD_SHARE * pause, 0.05), _SPREAD_MAX_S)
        self._pause_until = max(self._pause_until, now + pause + random.uniform(0.0, spread))
        self._stats["paused_429"] += 1

    # -------------------------------------------------------------- diagnostics
    def snapshot(self) -> dict:
        """Mode, limits, bucket levels, input ratio and counters (a copy).

        >>> controller_for(client, model).snapshot()["mode"]
        'limited'
        """
        with self._lock:
            now = time.monotonic()
            for bucket in self._buckets.values():
                bucket.refill(now)
            return {
                "model": self.model,
                "pool": self.pool,
                "mode": self._mode,
                "limits": {k: b.capacity for k, b in self._buckets.items()},
                "levels": {k: b.level for k, b in self._buckets.items()},
                "input_ratio": self._ratio,
                "share": self._share,
                "waiting": len(self._queue),
                "paused_s": max(0.0, self._pause_until - now),
                "shared": None if self._link is None else self._link.snapshot(),
                **self._stats,
            }

    def __repr__(self) -> str:
        return f"<AdmissionController pool={self.pool!r} mode={self._mode}>"


# ------------------------------------------------------------------------------ the registry
_registry_lock = threading.Lock()
_registry: dict[tuple[str, str, str], AdmissionController] = {}


_client_keys: dict[int, tuple[Any, tuple[str, str]]] = {}  # id(client) -> (client, (key digest, URL))


def _key_of(client: Any, pool: str) -> tuple[str, str, str]:
    known = _client_keys.get(id(client))
    if known is None or known[0] is not client:  # hashed once per client object (the hot path)
        api_key = getattr(client, "api_key", None) or getattr(client, "auth_token", None) or ""
        digest = hashlib.sha256(str(api_key).encode("utf-8", "backslashreplace")).hexdigest()[:32]
        known = (client, (digest, str(getattr(client, "base_url", ""))))
        if len(_client_keys) > 256:
            _client_keys.clear()
        _client_keys[id(client)] = known
    return known[1][0], known[1][1], pool


def controller_for(client: Any, model: str, limits: Optional[RateLimits] = None) -> AdmissionController:
    """The admission controller of ``client``'s (API key, base URL) and ``model``'s rate-limit
    pool (one per process: ``claude-opus-4-7`` and ``claude-opus-4-8`` get the same one).

    ``limits`` (a :class:`RateLimits`) sets its explicit limits (the pool's); None keeps what it has.

    >>> controller_for(get_client(), "claude-sonnet-4-6", RateLimits(rpm=50, itpm=30_000, otpm=8_000))
    """
    if not isinstance(model, str):
        raise TypeError(f"model must be a str, got {type(model).__name__}")
    if limits is not None and not isinstance(limits, RateLimits):
        raise TypeError(f"limits must be a RateLimits or None, got {type(limits).__name__}")
    key = _key_of(client, rate_limit_pool(model))
    controller = _registry.get(key)
    if controller is None:
        with _registry_lock:
            controller = _registry.get(key)
            if controller is None:
                controller = AdmissionController(model, limits)
                link = open_link(client, key[2])
                if link is not None:  # attached before anyone can use it (no probe charged to nothing)
                    controller._attach(link)
                _registry[key] = controller
                return controller
    if limits is not None:
        controller.set_limits(limits)
    return controller


def reset_controllers() -> None:
    """Forget every controller and warm prefix (calls in flight keep theirs); runs on every
    ``configure()`` / ``reset_client()``."""
    with _registry_lock:
        _registry.clear()
        _client_keys.clear()  # (it holds the clients: dropped ones must be collectable)
    warm_prefixes.clear()


on_change(reset_controllers)  # configure() / reset_client(): new clients learn afresh


def _after_fork() -> None:  # a child process starts with no controller (locks may be held)
    global _registry_lock
    _registry_lock = threading.Lock()
    _registry.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
