"""Admission's link to the shared store (:mod:`_shared_limits`): processes that use one key, base
URL and rate-limit pool draw their requests from one set of buckets, learn the limits once and
share the pause after a 429.

One :class:`SharedLink` per admission controller (``_admission.controller_for`` opens it; None
when shared limits are off). Every method runs with the controller's lock held. The protocol:

* **Nothing until limits are known.** The link is *active* once the store knows the scope's
  limits: adopted from the store when the controller is made (another process learned them:
  no probe), or told by this process the first time a response's headers carry limits. A
  server without rate-limit headers never touches the store (except after a 429).
* **Leases.** An admission draws from the local lease while it holds room; else one
  ``store.acquire`` takes the shortfall plus up to :data:`LEASE_REQUESTS` requests' worth more
  (granted only from what a bucket holds above half its size, so a lease never starves the
  others). A lease is spent for at most :data:`LEASE_SHARE` of a minute: then what is left goes
  back (``store.give``) and the next admission asks again. What a reply gives back (the unused
  ``max_tokens``, an estimate that was long or short, a 429's charges) goes to the lease. At exit
  the leases go back.
* **Learning sparingly.** The store hears the limits again only when they change (a new limit,
  a minute the ``reset`` headers showed shorter), and a response's ``remaining`` only when it
  is well below the store's level (use of the key outside the store), at most once per tenth of
  a minute.
* **The pause.** A 429 pauses the whole scope (``store.pause``); each caller gets its own
  spread resume time.
* **Failures.** Any store answer None (Redis lost, the file locked): the controller goes back to
  per-process admission (the store logs one warning); the link is tried again when the next
  headers carry limits, at most every :data:`RETRY_S` s.

>>> link = open_link(client, "sonnet-5-5")
>>> link.take((1.0, 2_000.0, 1_024.0), time.monotonic())     # 0.0: admitted; > 0: wait that long
0.0
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import weakref
from typing import Any, Mapping, Optional

from _credentials import shared_limits_setting
from _shared_limits import KINDS, Grant, SharedStore, get_store, scope_key

logger = logging.getLogger("claude_client._admission")

__all__ = ["SharedLink", "open_link", "LEASE_REQUESTS", "LEASE_SHARE", "FRESH_S", "RETRY_S"]

#: A lease asks for this many requests' worth on top of the request (from above half a bucket).
LEASE_REQUESTS = 16
#: A lease is spent for at most this share of the limits' minute, then given back.
LEASE_SHARE = 1 / 8
#: Limits in the store learned longer ago than this are not adopted (a probe goes first).
FRESH_S = 900.0
#: After a store failure, the link is tried again at most this often (seconds).
RETRY_S = 5.0
#: A response's ``remaining`` is sent to the store at most once per this share of a minute.
LEARN_SHARE = 0.1
_MIN_WAIT_S = 0.002

_warned_setting = False


def open_link(client: Any, pool: str) -> Optional[SharedLink]:
    """The link of ``client``'s (key, base URL) and ``pool`` to the configured store, or None
    (shared limits off, no key, the store unavailable or the setting invalid: one warning)."""
    global _warned_setting
    try:
        store = get_store(shared_limits_setting())
    except (TypeError, ValueError) as exc:  # a bad ORCHESTRATING_AGENTS_SHARED_LIMITS
        if not _warned_setting:
            _warned_setting = True
            logger.warning("shared limits are off: %s", exc)
        return None
    if store is None:
        return None
    api_key = getattr(client, "api_key", None) or getattr(client, "auth_token", None)
    if not api_key or not pool:
        return None
    return SharedLink(store, scope_key(str(api_key), str(getattr(client, "base_url", "")), pool))


class SharedLink:
    """A controller's share of the store: its scope, its lease, what it told the store.

    Not thread-safe on its own: the controller calls it with its lock held.
    """

    __slots__ = (
        "store",
        "scope",
        "active",
        "left",
        "lease_at",
        "lease_s",
        "marks",
        "levels",
        "told",
        "learned_at",
        "retry_at",
        "adopt_at",
        "wait_until",
        "wait_kind",
        "stats",
        "__weakref__",
    )

    def __init__(self, store: SharedStore, scope: str) -> None:
        self.store = store
        self.scope = scope
        self.active = False  # the store knows the limits: admissions go through it
        self.left = [0.0, 0.0, 0.0]  # the lease (may be < 0: replies used more than charged)
        self.lease_at = -math.inf  # when the lease was first granted (monotonic)
        self.lease_s = 60.0 * LEASE_SHARE
        self.marks: Mapping[str, float] = {}  # the store's cumulative takes after the last grant
        self.levels: Mapping[str, float] = {}  # the store's levels after the last grant
        self.told: dict[str, tuple[float, float]] = {}  # kind -> (capacity, minute) the store has
        self.learned_at = -math.inf
        self.retry_at = -math.inf
        self.adopt_at = -math.inf  # (the controller looks for limits in the store again from then)
        self.wait_until = 0.0  # the store said: nothing fits before then (monotonic)
        self.wait_kind = ""
        self.stats = {
            "acquires": 0,
            "refused": 0,
            "learns": 0,
            "gives": 0,
            "pauses": 0,
            "fallbacks": 0,
            "given_itpm": 0.0,
        }

    def __repr__(self) -> str:
        return f"<SharedLink {self.store.kind} {'active' if self.active else 'idle'}>"

    # -------------------------------------------------------------- adopting and learning
    def adopt(self) -> tuple[dict[str, tuple[float, float]], float]:
        """What the store knows of the scope: fresh limits ``{kind: (capacity, minute_s)}`` and
        the pause left (s). Activates the link when it knows limits."""
        state = self.store.state(self.scope)
        if state is None:
            return {}, 0.0
        limits = {
            kind: (b.capacity, b.minute_s)
            for kind, b in state.buckets.items()
            if b.learned_age_s < FRESH_S and b.capacity > 0 and b.minute_s > 0
        }
        if limits:
            self.told = dict(limits)
            self._activate(limits)
        return limits, state.paused_s

    def _activate(self, limits: Mapping[str, tuple[float, float]]) -> None:
        self.active = True
        self.lease_s = min(m for _c, m in limits.values()) * LEASE_SHARE

    def note(
        self,
        limits: Mapping[str, tuple[float, float]],
        remaining: Mapping[str, float],
        tolerance: Mapping[str, float],
        marks: Optional[Mapping[str, float]],
        now: float,
    ) -> None:
        """Response headers carried ``limits`` and ``remaining``: tell the store when it needs to
        hear them (new limits; a ``remaining`` well below the store's level)."""
        if not self.active:
            if now < self.retry_at:
                return
            if self._learn(limits, remaining, None, now):
                self._activate(limits)
                logger.debug("shared limits: pool limits %s shared through the %s store", limits, self.store.kind)
            return
        changed = any(
            kind not in self.told
            or self.told[kind][0] != cap
            or abs(self.told[kind][1] - minute) > 0.03 * self.told[kind][1]
            for kind, (cap, minute) in limits.items()
        )
        if changed:
            if self._learn(limits, remaining, marks, now):
                self._activate(self.told)
            return
        if now - self.learned_at < self.lease_s / LEASE_SHARE * LEARN_SHARE:
            return
        for kind, left in remaining.items():
            seen = self.levels.get(kind)
            cap = limits[kind][0] if kind in limits else 0.0
            if seen is not None and left + tolerance.get(kind, 0.0) + 0.05 * cap < seen:
                self._learn(limits, remaining, marks, now)  # use of the key outside the store
                return

    def _learn(
        self,
        limits: Mapping[str, tuple[float, float]],
        remaining: Mapping[str, float],
        marks: Optional[Mapping[str, float]],
        now: float,
    ) -> bool:
        self.learned_at = now
        self.stats["learns"] += 1
        ok = self.store.learn(self.scope, limits, remaining=remaining, marks=marks)
        if ok is None:
            self.fail(now)
            return False
        self.told.update(limits)
        return True

    def fail(self, now: float) -> None:
        """The store did not answer: per-process admission until it is tried again."""
        if self.active:
            self.stats["fallbacks"] += 1
            logger.debug("shared limits: the store did not answer; admission is per process")
        self.active = False
        self.left = [0.0, 0.0, 0.0]
        self.lease_at = -math.inf
        self.retry_at = now + RETRY_S

    # -------------------------------------------------------------- admission
    def take(self, need: tuple[float, float, float], now: float) -> Optional[float]:
        """Admit a request charged ``need`` (requests, input, output tokens): 0.0 when taken (from
        the lease or the store), else the seconds to wait; None when the store did not answer."""
        left = self.left
        fresh = now - self.lease_at < self.lease_s
        if fresh and left[0] >= need[0] and left[1] >= need[1] and left[2] >= need[2]:
            left[0] -= need[0]
            left[1] -= need[1]
            left[2] -= need[2]
            return 0.0
        if now < self.wait_until:
            return self.wait_until - now
        if not fresh and not self.give_back():
            return None
        charges = {KINDS[i]: max(0.0, need[i] - left[i]) for i in range(3)}
        extra = {KINDS[i]: need[i] * LEASE_REQUESTS for i in range(3)}
        self.stats["acquires"] += 1
        grant = self.store.acquire(self.scope, charges, extra=extra)
        if grant is None:
            self.fail(now)
            return None
        if grant.granted and not grant.taken and any(need):  # the store lost the scope: tell it again
            self.active = False
            self.told = {}
            return None
        if not grant.granted:
            self.stats["refused"] += 1
            wait = max(grant.wait_s, _MIN_WAIT_S)
            self.wait_until = now + wait
            self.wait_kind = "pause" if grant.paused else self._short_kind(grant, charges)
            return wait
        self._granted(grant, need, now)
        return 0.0

    def _granted(self, grant: Grant, need: tuple[float, float, float], now: float) -> None:
        left = self.left
        if now - self.lease_at >= self.lease_s:
            self.lease_at = now
        for i, kind in enumerate(KINDS):
            if kind in grant.taken:
                left[i] += grant.taken[kind] - need[i]
            else:  # no limit known for it in the store: nothing to count
                left[i] = math.inf
        self.marks = grant.marks
        self.levels = grant.levels

    @staticmethod
    def _short_kind(grant: Grant, charges: Mapping[str, float]) -> str:
        short = [(charges[k] - level, k) for k, level in grant.levels.items() if charges.get(k, 0.0) > level]
        return max(short)[1] if short else ""

    def refund(self, amounts: tuple[float, float, float]) -> None:
        """Give back to the lease what an admitted request did not use (negative: it used more)."""
        left = self.left
        for i in range(3):
            if amounts[i] and left[i] != math.inf:
                left[i] += amounts[i]

    def give_back(self) -> bool:
        """Return what the lease holds to the store (False: the store did not answer)."""
        back = {KINDS[i]: v for i, v in enumerate(self.left) if 0 < v < math.inf}
        debt = [min(0.0, v) for v in self.left]
        self.left = debt  # a debt (replies used more than charged) is charged with the next grant
        self.lease_at = -math.inf
        if not back:
            return True
        self.stats["gives"] += 1
        self.stats["given_itpm"] += back.get("itpm", 0.0)
        return self.store.give(self.scope, back) is not None

    def pause(self, seconds: float, now: float) -> Optional[float]:
        """A 429: pause the scope for everyone; this caller's wait (None: the store did not answer)."""
        self.stats["pauses"] += 1
        wait = self.store.pause(self.scope, seconds)
        if wait is None:
            self.fail(now)
            return None
        self.wait_until = max(self.wait_until, now + wait)
        self.wait_kind = "pause"
        return wait

    def snapshot(self) -> dict[str, Any]:
        return {"store": self.store.kind, "active": self.active, "lease": list(self.left), **self.stats}


# ------------------------------------------------------------------------------ at exit
_exit_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_lock(link: SharedLink, lock: threading.Lock) -> None:
    """The controller lock that guards ``link`` (taken, briefly, to return its lease at exit)."""
    _exit_locks[link] = lock


def _return_leases() -> None:
    for link, lock in list(_exit_locks.items()):
        if not link.active or not lock.acquire(timeout=0.2):
            continue
        try:
            link.give_back()
        except Exception:  # noqa: BLE001 - at exit: never fail the interpreter's shutdown
            pass
        finally:
            lock.release()


atexit.register(_return_leases)
