"""A run's spend cap: :class:`Budget` and its :class:`Reservation` (re-exported by ``_admission``).

Before each attempt the transport reserves the attempt's worst-case cost
(:func:`_estimate.worst_case_cost`) and after it settles the reservation with the real cost. An
attempt whose worst case does not fit beside the reservations in flight **waits** for them to
settle (first come, first served, interruptibly); it is refused (kind ``budget``) only when what
was already spent plus its own worst case exceeds the cap, so the cap is never passed as long as
the input estimate holds (the output part, ``max_tokens``, is a hard bound).

Locks: each budget has one; a reservation takes the locks of its chain (the budget, then its
parents) in that order, a settle one at a time, and a waiter sleeps on its own event with no
lock held (an interrupt callback only sets that event).

>>> budget = Budget(2.50)
>>> r = budget.reserve(params, interrupt=token); ...; r.settle(reply.cost_usd)
>>> budget.spent, budget.reserved, budget.remaining
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from typing import Any, Iterator, Mapping, Optional

import _tracing
from _credentials import shared_limits_setting
from _errors import ClaudeInvocationError
from _estimate import estimate_request, worst_case_cost
from _interrupt import InterruptToken, check_token, subscribe, unsubscribe
from _shared_base import budget_name
from _shared_limits import DEFAULT_TTL_S, BudgetGrant, BudgetReport, SharedStore, get_store

logger = logging.getLogger("claude_client._admission")

__all__ = ["Budget", "Reservation", "budget_report"]

_EPSILON = 1e-12
_RECHECK_S = 2.0  # a waiter also looks again this often (a safety net: settles wake it at once)
_WAITED_S = 0.002  # a reservation that took longer than this waited (a tracing event says how long)
_SHARED_POLL_S = (0.01, 0.25)  # a shared budget's waiter asks the store again after 10 ms, up to 250 ms


def budget_report(name: str) -> Optional[BudgetReport]:
    """A named spend cap (``budget="name"`` with ``max_cost_usd=``) as every process on the shared
    store sees it: ``spent_usd``, ``reserved_usd`` (attempts in flight), ``open``, ``expired_usd``
    (reservations of processes that died: counted as spent), ``refused``, ``cap_usd``. None when
    shared limits are off or the store is unavailable.

    >>> invoke_parallel(prompts, max_cost_usd=25.0, budget="nightly-eval")
    >>> budget_report("nightly-eval").spent_usd
    """
    budget_name(name)
    store = get_store(shared_limits_setting())
    return None if store is None else store.budget_report(name)


class _Waiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


@contextlib.contextmanager
def _locked(chain: tuple[Budget, ...]) -> Iterator[None]:
    """Hold the locks of ``chain`` (a budget and its parents, always taken in that order)."""
    with contextlib.ExitStack() as stack:
        for budget in chain:
            stack.enter_context(budget._lock)
        yield


class Reservation:
    """The worst-case cost of one attempt, held in its :class:`Budget` until :meth:`settle`.

    >>> reservation = budget.reserve(params)
    >>> reservation.settle(reply.cost_usd)   # 0.0: certainly cost nothing; None: keep the worst case
    """

    __slots__ = ("_chain", "cost_usd", "_settled", "_holder", "_grants")

    def __init__(self, chain: tuple[Budget, ...], cost_usd: float, holder: int) -> None:
        self._chain = chain
        self.cost_usd = cost_usd
        self._settled = False
        self._holder = holder  # the thread that reserved it
        self._grants: list[tuple[SharedStore, BudgetGrant]] = []  # its reservations in shared budgets

    def settle(self, actual_cost_usd: Optional[float]) -> None:
        """Replace the reservation with the real cost (None: unknown, the worst case is spent).
        A second call does nothing. Wakes the attempts waiting for room."""
        if actual_cost_usd is not None:
            if isinstance(actual_cost_usd, bool) or not isinstance(actual_cost_usd, (int, float)):
                raise TypeError(f"actual_cost_usd must be a number or None, got {type(actual_cost_usd).__name__}")
            if not (actual_cost_usd >= 0 and math.isfinite(actual_cost_usd)):
                raise ValueError(f"actual_cost_usd must be a finite number >= 0, got {actual_cost_usd!r}")
        first = self._chain[0]
        with first._lock:
            if self._settled:
                return
            self._settled = True
        spent = self.cost_usd if actual_cost_usd is None else float(actual_cost_usd)
        if spent > self.cost_usd + _EPSILON:
            logger.warning("a request cost $%.6f, more than its reserved worst case $%.6f", spent, self.cost_usd)
        for budget in self._chain:
            with budget._lock:
                budget._open -= 1
                budget._reserved = max(0.0, budget._reserved - self.cost_usd) if budget._open else 0.0
                budget._spent += spent
                held = budget._holders.get(self._holder, 0) - 1
                if held > 0:
                    budget._holders[self._holder] = held
                else:
                    budget._holders.pop(self._holder, None)
                budget._wake_locked()
        for store, grant in self._grants:
            store.budget_settle(grant, spent)  # None (the store unavailable): its expiry counts it spent


class Budget:
    """A spend cap in USD for a run (thread-safe; shared by a parent run and its children).

    :meth:`reserve` runs before each attempt: it reserves the attempt's worst-case cost
    (:func:`_estimate.worst_case_cost`: the input by the local rule scaled by the model's
    tokenizer, times the largest actual / estimated ratio seen, with a prefix known warm at the
    cache-read price, the rest of the cached prefix at the cache-write price and the remainder at
    the list price; plus ``max_tokens`` of output, thinking included, at the list price).

    * It fits beside what is spent and reserved: reserved at once.
    * It does not fit beside the reservations in flight: it **waits** for them to settle (first
      come, first served; an ``interrupt`` token ends the wait with kind ``interrupted``).
    * ``spent + worst case`` exceeds ``max_cost_usd``: refused, ``ClaudeInvocationError(kind="budget")``
      (also when the caller's own thread holds the reservations it would wait for).

    So the final spend stays within the cap as long as the input estimate holds.
    :meth:`Reservation.settle` replaces a reservation with the real cost. :meth:`child` makes a
    budget that also draws on this one (delegation).

    ``name``: a spend cap shared with every run, in any process on the shared store
    (``configure(shared_limits=...)``), that names it: each reservation is also made in the
    store, atomically across processes, under the same wait-then-refuse rule (it waits while
    reservations in flight anywhere may settle; it is refused when what every process has spent
    plus its worst case exceeds ``max_cost_usd``). With shared limits off or the store
    unavailable, the cap is this run's alone. :func:`budget_report` shows the shared figures.

    ``refused`` and ``waited`` count the attempts refused and the attempts that had to wait.

    >>> budget = Budget(2.50)
    >>> r = budget.reserve(params); ...; r.settle(reply.cost_usd)
    >>> budget.spent, budget.reserved, budget.remaining
    >>> fleet = Budget(25.0, name="nightly-eval")       # shared by every process that names it
    """

    #: How long a reservation in a shared budget lasts unsettled (its process died): then it counts
    #: as spent at its worst case, and no longer blocks the others.
    shared_ttl_s = DEFAULT_TTL_S

    def __init__(self, max_cost_usd: float, *, parent: Optional[Budget] = None, name: Optional[str] = None) -> None:
        if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float)):
            raise TypeError(f"max_cost_usd must be a number >= 0, got {type(max_cost_usd).__name__}")
        if not (max_cost_usd >= 0 and math.isfinite(max_cost_usd)):
            raise ValueError(f"max_cost_usd must be a finite number >= 0, got {max_cost_usd!r}")
        if parent is not None and not isinstance(parent, Budget):
            raise TypeError(f"parent must be a Budget or None, got {type(parent).__name__}")
        if name is not None:
            budget_name(name)
        self.max_cost_usd = float(max_cost_usd)
        self.parent = parent
        self.name = name
        self._store: Any = None  # the shared store of a named budget (looked up at its first reserve)
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0
        self._open = 0  # reservations not settled yet (the sum is exactly 0 when none is)
        self._holders: dict[int, int] = {}  # thread id -> its open reservations here
        self._queue: collections.deque[_Waiter] = collections.deque()
        self.refused = 0
        self.waited = 0
        chain: list[Budget] = [self]
        while chain[-1].parent is not None:
            chain.append(chain[-1].parent)  # type: ignore[arg-type]
        self._chain = tuple(chain)

    def child(self, max_cost_usd: Optional[float] = None) -> Budget:
        """A budget for a delegated run: its own cap (default: no more than this one's), and every
        reservation also counts here."""
        return Budget(self.max_cost_usd if max_cost_usd is None else max_cost_usd, parent=self)

    @property
    def spent(self) -> float:
        """USD of the settled attempts (their worst case where the real cost is unknown)."""
        with self._lock:
            return self._spent

    @property
    def reserved(self) -> float:
        """USD held by attempts in flight."""
        with self._lock:
            return self._reserved

    @property
    def remaining(self) -> float:
        """``max_cost_usd - spent - reserved`` (never below 0)."""
        with self._lock:
            return max(0.0, self.max_cost_usd - self._spent - self._reserved)

    @property
    def waiting(self) -> int:
        """Attempts waiting for room now."""
        with self._lock:
            return len(self._queue)

    def worst_case(self, params: Mapping[str, Any]) -> float:
        """The cost :meth:`reserve` would reserve for ``params`` now (USD)."""
        cost = worst_case_cost(estimate_request(params))
        if cost is None:
            raise ClaudeInvocationError(
                f"max_cost_usd is set but model {params.get('model')!r} has no price in PRICES: "
                "its cost cannot be bounded (add it to claude_client.PRICES)",
                kind="budget",
            )
        return cost

    def reserve(self, params: Mapping[str, Any], *, interrupt: Optional[InterruptToken] = None) -> Reservation:
        """Reserve the worst-case cost of an attempt of ``params``, waiting while it does not fit
        beside the reservations in flight; raise kind ``budget`` when it can never fit (spent plus
        its worst case exceeds the cap of this budget or a parent), kind ``interrupted`` when
        ``interrupt`` fires while it waits."""
        check_token(interrupt, "interrupt")
        cost = self.worst_case(params)
        started = time.monotonic()
        reservation = self._reserve_local(cost, interrupt)
        named = [b for b in self._chain if b.name is not None]
        if named:
            try:
                for budget in named:
                    budget._reserve_shared(reservation, cost, interrupt)
            except BaseException:
                reservation.settle(0.0)  # never sent
                raise
        waited = time.monotonic() - started
        if waited > _WAITED_S:
            _tracing.event("spend_cap_wait", seconds=round(waited, 6))
        return reservation

    def _shared_store(self) -> Optional[SharedStore]:
        if self._store is None:
            self._store = get_store(shared_limits_setting()) or False
        return self._store or None

    def _reserve_shared(self, reservation: Reservation, cost: float, interrupt: Optional[InterruptToken]) -> None:
        """Reserve ``cost`` in the shared budget of this name too: wait while reservations in
        flight (any process) may settle; refuse when spent + cost > cap, or when this thread
        holds other reservations (it would wait for itself)."""
        store = self._shared_store()
        if store is None:
            return
        assert self.name is not None
        poll = _SHARED_POLL_S[0]
        wake = threading.Event()
        handle = subscribe(interrupt, wake.set) if interrupt is not None else None
        try:
            while True:
                grant = store.budget_reserve(self.name, cost, self.max_cost_usd, ttl_s=self.shared_ttl_s)
                if grant is None:  # unavailable: this run's cap alone (the store warned once)
                    return
                if grant.granted:
                    reservation._grants.append((store, grant))
                    return
                mine = self._holders.get(threading.get_ident(), 0) > 1
                if grant.spent_usd + cost > self.max_cost_usd + _EPSILON or mine:
                    with self._lock:
                        self.refused += 1
                    beside = "its own reservations in flight" if mine else f"the ${grant.spent_usd:.4f} spent"
                    raise ClaudeInvocationError(
                        f"max_cost_usd={self.max_cost_usd:g} (shared budget {self.name!r}): not started, its "
                        f"worst case ${cost:.4f} does not fit beside {beside} (spent ${grant.spent_usd:.4f}, "
                        f"reserved ${grant.reserved_usd:.4f} across every process)",
                        kind="budget",
                    )
                if interrupt is not None and interrupt.is_interrupted():
                    raise ClaudeInvocationError(
                        "The request was interrupted (InterruptToken.interrupt()) while waiting for room "
                        f"under the shared budget {self.name!r}",
                        kind="interrupted",
                    )
                wake.wait(poll)
                poll = min(poll * 2, _SHARED_POLL_S[1])
        finally:
            if handle is not None:
                unsubscribe(interrupt, handle)  # type: ignore[arg-type]

    def _reserve_local(self, cost: float, interrupt: Optional[InterruptToken]) -> Reservation:
        me = threading.get_ident()
        waiter: Optional[_Waiter] = None
        handle: Optional[int] = None
        try:
            while True:
                if interrupt is not None and interrupt.is_interrupted():
                    raise ClaudeInvocationError(
                        "The request was interrupted (InterruptToken.interrupt()) while waiting for room "
                        "under max_cost_usd",
                        kind="interrupted",
                    )
                with _locked(self._chain):
                    reservation = self._try_locked(cost, me, waiter)
                    if reservation is not None:
                        return reservation
                    if waiter is None:
                        waiter = _Waiter()
                        for budget in self._chain:
                            budget._queue.append(waiter)
                        self.waited += 1
                        logger.debug("a $%.6f worst case waits for room under the spend cap", cost)
                    waiter.event.clear()
                if interrupt is not None and handle is None:
                    handle = subscribe(interrupt, waiter.event.set)
                if interrupt is not None and interrupt.is_interrupted():
                    continue
                waiter.event.wait(_RECHECK_S)  # no lock held: a settle or the interrupt wakes it
        finally:
            if handle is not None:
                unsubscribe(interrupt, handle)  # type: ignore[arg-type]
            if waiter is not None:
                self._leave(waiter)

    def _try_locked(self, cost: float, me: int, waiter: Optional[_Waiter]) -> Optional[Reservation]:
        """Reserve ``cost`` when it fits and it is this waiter's turn (chain locks held); None:
        wait; raises kind ``budget`` when it cannot fit."""
        holds = any(me in budget._holders for budget in self._chain)
        blocked = False
        for budget in self._chain:
            if budget._spent + cost > budget.max_cost_usd + _EPSILON:
                self._refuse(budget, cost, f"the ${budget._spent:.4f} already spent")
            fits = budget._spent + budget._reserved + cost <= budget.max_cost_usd + _EPSILON
            turn = not budget._queue or budget._queue[0] is waiter
            if holds and not fits:  # it would wait for its own reservations
                self._refuse(budget, cost, f"the ${budget._reserved:.4f} this thread holds reserved")
            blocked = blocked or not fits or (not turn and not holds)
        if blocked:
            return None
        for budget in self._chain:
            budget._reserved += cost
            budget._open += 1
            budget._holders[me] = budget._holders.get(me, 0) + 1
        return Reservation(self._chain, cost, me)

    def _refuse(self, budget: Budget, cost: float, beside: str) -> None:
        budget.refused += 1
        where = "" if budget is self else " (a parent budget)"
        raise ClaudeInvocationError(
            f"max_cost_usd={budget.max_cost_usd:g}{where}: not started, its worst case ${cost:.4f} "
            f"does not fit beside {beside} (spent ${budget._spent:.4f}, reserved ${budget._reserved:.4f})",
            kind="budget",
        )

    def _leave(self, waiter: _Waiter) -> None:
        """Take a waiter out of the queues (it was admitted, refused or interrupted) and wake the
        others: the head may have changed."""
        with _locked(self._chain):
            for budget in self._chain:
                with contextlib.suppress(ValueError):
                    budget._queue.remove(waiter)
                budget._wake_locked()

    def _wake_locked(self) -> None:
        for waiter in self._queue:
            waiter.event.set()

    def __repr__(self) -> str:
        with self._lock:
            return f"Budget(max_cost_usd={self.max_cost_usd:g}, spent={self._spent:.4f}, reserved={self._reserved:.4f})"
