"""The shared store's default backend: one SQLite file on this machine (see :mod:`_shared_base`
for the protocol and what it keeps).

WAL mode, every update one ``BEGIN IMMEDIATE`` transaction, a busy timeout; the file lives in the
user's cache directory and holds no key (scopes are hashes, budgets are names).

>>> store = SqliteStore()                        # $XDG_CACHE_HOME/orchestrating-agents/...
>>> store.budget_report("nightly").spent_usd
0.0
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from _shared_base import (
    DEFAULT_TTL_S,
    EPS_USD,
    KINDS,
    SCOPE_COLUMNS,
    BudgetGrant,
    BudgetReport,
    Grant,
    Guard,
    ScopeRow,
    ScopeState,
    Vector,
    amounts,
    as_map,
    budget_name,
    check_grant,
    check_scope,
    floor_now,
    floors_of,
    graveyard,
    limits_of,
    live_stores,
    owner,
    scope_state,
    settle_hold,
)
from _validation import check_number, check_seconds

logger = logging.getLogger("claude_client._shared_limits")

__all__ = ["SqliteStore", "default_path"]

# ------------------------------------------------------------------------------ SQLite
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS scopes (scope TEXT PRIMARY KEY, "
    + ", ".join(f"{c} REAL NOT NULL DEFAULT 0" for c in SCOPE_COLUMNS[:-1])
    + ", pause_callers INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS holds (id TEXT PRIMARY KEY, scope TEXT NOT NULL, owner TEXT NOT NULL, "
    "expires REAL NOT NULL, rpm REAL NOT NULL, itpm REAL NOT NULL, otpm REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS holds_expiry ON holds (scope, expires)",
    "CREATE TABLE IF NOT EXISTS budgets (name TEXT PRIMARY KEY, cap REAL, spent REAL NOT NULL DEFAULT 0, "
    "reserved REAL NOT NULL DEFAULT 0, open INTEGER NOT NULL DEFAULT 0, expired REAL NOT NULL DEFAULT 0, "
    "refused INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS budget_holds (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, "
    "expires REAL NOT NULL, cost REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS budget_holds_expiry ON budget_holds (name, expires)",
)
_SELECT_SCOPE = f"SELECT {', '.join(SCOPE_COLUMNS)} FROM scopes WHERE scope = ?"
_UPSERT_SCOPE = (
    f"INSERT OR REPLACE INTO scopes (scope, {', '.join(SCOPE_COLUMNS)}) VALUES (?{', ?' * len(SCOPE_COLUMNS)})"
)


_UPDATE_TAKEN = (  # what a grant changes (cheaper than rewriting the row)
    "UPDATE scopes SET rpm_level = ?, itpm_level = ?, otpm_level = ?, rpm_cum = ?, itpm_cum = ?, otpm_cum = ?, "
    "last = ? WHERE scope = ?"
)


def default_path() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/orchestrating-agents/shared-limits.sqlite3``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "orchestrating-agents" / "shared-limits.sqlite3"


class SqliteStore:
    """The shared store in one SQLite file (WAL mode; every update one ``BEGIN IMMEDIATE``
    transaction; ``busy_timeout_s`` of waiting for another process's transaction). Thread-safe:
    one connection per store object behind one lock; a forked child opens its own.

    The store's clock is this machine's ``time.time()`` (every process using the file is here).

    >>> store = SqliteStore()                                 # the default file in the cache dir
    >>> store.budget_report("nightly").spent_usd
    0.0
    """

    kind = "sqlite"

    def __init__(
        self, path: Union[str, os.PathLike, None] = None, *, busy_timeout_s: float = 5.0, retry_s: float = 5.0
    ) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, a path or None, got {type(path).__name__}")
        self.path = Path(path) if path is not None else default_path()
        self.busy_timeout_s = check_seconds(busy_timeout_s, "busy_timeout_s")
        self._guard = Guard(f"the sqlite store {self.path}", check_seconds(retry_s, "retry_s"))
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        live_stores.add(self)
        with self._lock:
            self._run(lambda conn: None)  # create the file and schema now (a warning if it cannot be)

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r}{' (unavailable)' if self._guard.down else ''}>"

    @property
    def available(self) -> bool:
        """False during an outage (every call then answers None)."""
        return not self._guard.down

    # -------------------------------------------------------------- connection and transactions
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this library's")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """``body(conn)`` in one immediate transaction (lock held); None when unavailable."""
        retried = self._guard.begin()
        if retried is None:
            return None
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._drop()
            self._guard.failed(exc)
            return None
        if self._guard.down:
            self._guard.ok(retried)
        return result

    def _tx(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return self._run(body)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing a broken connection
                pass

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._guard.after_fork()
        if self._conn is not None:
            graveyard.append(self._conn)  # the parent's: never used nor closed here
            self._conn = None

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self._lock:
            self._drop()

    # -------------------------------------------------------------- buckets
    def acquire(
        self,
        scope: str,
        charges: Mapping[str, float],
        *,
        extra: Optional[Mapping[str, float]] = None,
        provisional: Optional[Mapping[str, float]] = None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> Optional[Grant]:
        """Take ``charges`` (kind -> amount) from the scope's buckets, all or nothing.

        A charge fits when its bucket holds ``min(amount, capacity)`` (so a request bigger than
        the bucket goes when it is full; the level then goes negative). Kinds with no known
        limit are not charged. ``extra``: a lease on top of the charges, granted only from what a
        bucket holds above half its capacity. ``provisional``: the part of the charges to hold
        for ``ttl_s`` seconds (settle it with :meth:`settle`; if nobody does by then, it goes
        back). While the shared pause is on nothing is granted, and ``wait_s`` is this caller's
        spread resume time. Empty ``charges``: only the pause is checked.
        """
        check_scope(scope)
        need = amounts(charges, "charges") or [0.0, 0.0, 0.0]
        more = amounts(extra, "extra")
        held = amounts(provisional, "provisional")
        ttl = check_seconds(ttl_s, "ttl_s")
        if held is not None:
            for i in range(3):
                if held[i] > need[i]:
                    raise ValueError(f"provisional[{KINDS[i]!r}] must not exceed charges[{KINDS[i]!r}]")
        return self._tx(lambda conn: self._acquire(conn, scope, need, more, held, ttl))

    def _acquire(
        self,
        conn: sqlite3.Connection,
        scope: str,
        need: Vector,
        more: Optional[Vector],
        held: Optional[Vector],
        ttl: float,
    ) -> Grant:
        row = conn.execute(_SELECT_SCOPE, (scope,)).fetchone()
        now = time.time()
        if row is None:
            return Grant(True, 0.0, scope, at=now)
        st = ScopeRow(row)
        now = max(now, st.last)
        st.refill(now)
        known = st.known()
        paused = st.pause_wait(now)
        if paused is not None:
            conn.execute("UPDATE scopes SET pause_callers = ? WHERE scope = ?", (st.callers, scope))
            return Grant(False, paused, scope, levels=as_map(st.level, known), at=now, paused=True)
        wait = st.wait(need)
        if wait > 0 and self._reap(conn, st, scope, now):
            conn.execute(_UPSERT_SCOPE, (scope, *st.values()))
            wait = st.wait(need)
        if wait > 0:  # nothing written: a refill alone is recomputed by the next caller
            return Grant(False, wait, scope, levels=as_map(st.level, known), at=now)
        taken = st.take(need, more)
        conn.execute(_UPDATE_TAKEN, (*st.level, *st.cum, st.last, scope))
        reservation = None
        hold: dict[str, float] = {}
        if held is not None and any(held[i] > 0 and known[i] for i in range(3)):
            reservation = owner().new_id()
            vec = [held[i] if known[i] else 0.0 for i in range(3)]
            conn.execute(
                "INSERT INTO holds (id, scope, owner, expires, rpm, itpm, otpm) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (reservation, scope, owner().id, now + ttl, *vec),
            )
            hold = as_map(vec, [v > 0 for v in vec])
        return Grant(
            True,
            0.0,
            scope,
            as_map(taken, known),
            as_map(st.level, known),
            as_map(st.cum, known),
            now,
            False,
            reservation,
            hold,
        )

    def _reap(self, conn: sqlite3.Connection, st: ScopeRow, scope: str, now: float) -> bool:
        """Give back the provisional amounts of the scope's expired holds; True when there were any."""
        rows = conn.execute(
            "SELECT id, rpm, itpm, otpm FROM holds WHERE scope = ? AND expires <= ?", (scope, now)
        ).fetchall()
        for hold_id, *vec in rows:
            st.give(vec)
            conn.execute("DELETE FROM holds WHERE id = ?", (hold_id,))
        if rows:
            logger.debug("shared limits: %d expired hold(s) given back", len(rows))
        return bool(rows)

    def settle(
        self, grant: Grant, *, used: Optional[Mapping[str, float]] = None, adjust: Optional[Mapping[str, float]] = None
    ) -> Optional[bool]:
        """End a grant: its hold gives back ``provisional - used`` per kind (``used`` None: all of
        it was used; a hold that already expired gave everything back, so ``used`` is taken now);
        ``adjust`` adds signed amounts to the levels (an estimate that was short: negative).
        Settle a grant once. True when done."""
        check_grant(grant, Grant)
        used_v = amounts(used, "used")
        adjust_v = amounts(adjust, "adjust", signed=True)
        if grant.reservation is None and adjust_v is None:
            return True
        held = [grant.provisional.get(k, 0.0) for k in KINDS]
        return self._tx(lambda conn: self._settle(conn, grant, held, used_v, adjust_v))

    def _settle(
        self,
        conn: sqlite3.Connection,
        grant: Grant,
        held: Vector,
        used: Optional[Vector],
        adjust: Optional[Vector],
    ) -> bool:
        row = conn.execute(_SELECT_SCOPE, (grant.scope,)).fetchone()
        if row is None:
            return True
        st = ScopeRow(row)
        st.refill(max(time.time(), st.last))
        delta = list(adjust) if adjust is not None else [0.0, 0.0, 0.0]
        if grant.reservation is not None:
            alive = conn.execute("DELETE FROM holds WHERE id = ?", (grant.reservation,)).rowcount > 0
            for i, back in enumerate(settle_hold(held, used, alive)):
                delta[i] += back
        st.give(delta)
        conn.execute(_UPSERT_SCOPE, (grant.scope, *st.values()))
        return True

    def give(self, scope: str, amounts_: Mapping[str, float]) -> Optional[bool]:
        """Add signed amounts to the scope's levels (e.g. a 429: the API took nothing)."""
        check_scope(scope)
        delta = amounts(amounts_, "amounts", signed=True)
        if delta is None:
            return True

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SELECT_SCOPE, (scope,)).fetchone()
            if row is not None:
                st = ScopeRow(row)
                st.refill(max(time.time(), st.last))
                st.give(delta)
                conn.execute(_UPSERT_SCOPE, (scope, *st.values()))
            return True

        return self._tx(body)

    def learn(
        self,
        scope: str,
        limits: Mapping[str, tuple[float, float]],
        *,
        remaining: Optional[Mapping[str, float]] = None,
        marks: Optional[Mapping[str, float]] = None,
    ) -> Optional[bool]:
        """Adopt limits from response headers: kind -> (capacity, minute_s). A new bucket starts
        full (or at ``remaining``); a resized one keeps its deficit (a bigger bucket adds the
        difference). ``remaining`` (kind -> the header's value) lowers a level to
        ``remaining - (taken since the mark)``, where ``marks`` are the :attr:`Grant.marks` of
        the request whose reply carried the headers (no mark: nothing is assumed taken since)."""
        check_scope(scope)
        new = limits_of(limits)
        floors = floors_of(remaining, marks)

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SELECT_SCOPE, (scope,)).fetchone()
            st = ScopeRow(row)
            now = max(time.time(), st.last)
            st.refill(now)
            st.last = now
            for i in range(3):
                given = floors[i]
                floor = None if given is None else floor_now(given, st.cum[i])
                pair = new[i]
                if pair is not None:
                    capacity, minute = pair
                    if st.cap[i] <= 0:
                        st.level[i] = capacity if floor is None else min(floor, capacity)
                    elif capacity != st.cap[i]:
                        st.level[i] = min(capacity, st.level[i] + capacity - st.cap[i])
                    st.cap[i], st.rate[i], st.learned[i] = capacity, capacity / minute, now
                if floor is not None and st.cap[i] > 0:
                    st.level[i] = min(st.level[i], floor)
            conn.execute(_UPSERT_SCOPE, (scope, *st.values()))
            return True

        return self._tx(body)

    def pause(self, scope: str, seconds: float) -> Optional[float]:
        """Nobody on the scope is granted anything for ``seconds`` (a 429's ``retry-after``; a
        longer pause already on is kept). Returns this caller's wait (its spread resume time)."""
        check_scope(scope)
        length = check_seconds(seconds, "seconds")

        def body(conn: sqlite3.Connection) -> float:
            st = ScopeRow(conn.execute(_SELECT_SCOPE, (scope,)).fetchone())
            now = max(time.time(), st.last)
            st.refill(now)
            if now + length > st.pause_until:
                if now >= st.pause_until:
                    st.callers = 0
                st.pause_until, st.pause_len = now + length, length
            wait = st.pause_wait(now)
            conn.execute(_UPSERT_SCOPE, (scope, *st.values()))
            return 0.0 if wait is None else wait

        return self._tx(body)

    def state(self, scope: str) -> Optional[ScopeState]:
        """The scope's buckets (levels refilled to now), the pause left and the open holds."""
        check_scope(scope)

        def body(conn: sqlite3.Connection) -> ScopeState:
            row = conn.execute(_SELECT_SCOPE, (scope,)).fetchone()
            st = ScopeRow(row)
            now = max(time.time(), st.last)
            st.refill(now)
            if row is not None and self._reap(conn, st, scope, now):
                conn.execute(_UPSERT_SCOPE, (scope, *st.values()))
            holds = conn.execute("SELECT COUNT(*) FROM holds WHERE scope = ?", (scope,)).fetchone()[0]
            return scope_state(st, now, holds)

        return self._tx(body)

    # -------------------------------------------------------------- budgets
    def budget_reserve(
        self, name: str, cost_usd: float, cap_usd: float, *, ttl_s: float = DEFAULT_TTL_S
    ) -> Optional[BudgetGrant]:
        """Reserve ``cost_usd`` (an attempt's worst case) in the budget ``name`` when ``spent +
        reserved + cost <= cap_usd``; else refuse (``granted`` False). A reservation not settled
        within ``ttl_s`` is counted as spent at its worst case."""
        budget_name(name)
        cost = float(check_number(cost_usd, "cost_usd"))
        cap = float(check_number(cap_usd, "cap_usd"))
        ttl = check_seconds(ttl_s, "ttl_s")

        def body(conn: sqlite3.Connection) -> BudgetGrant:
            now = time.time()
            spent, reserved, opened = self._budget_row(conn, name, now)
            if spent + reserved + cost > cap + EPS_USD:
                conn.execute("UPDATE budgets SET refused = refused + 1, cap = ? WHERE name = ?", (cap, name))
                return BudgetGrant(False, name, cost, spent, reserved)
            reservation = owner().new_id()
            conn.execute(
                "INSERT INTO budget_holds (id, name, owner, expires, cost) VALUES (?, ?, ?, ?, ?)",
                (reservation, name, owner().id, now + ttl, cost),
            )
            conn.execute(
                "UPDATE budgets SET reserved = ?, open = ?, cap = ? WHERE name = ?",
                (reserved + cost, opened + 1, cap, name),
            )
            return BudgetGrant(True, name, cost, spent, reserved + cost, reservation)

        return self._tx(body)

    def _budget_row(self, conn: sqlite3.Connection, name: str, now: float) -> tuple[float, float, int]:
        """(spent, reserved, open) after counting the expired reservations as spent."""
        row = conn.execute("SELECT spent, reserved, open FROM budgets WHERE name = ?", (name,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO budgets (name) VALUES (?)", (name,))
            return 0.0, 0.0, 0
        spent, reserved, opened = row
        expired = conn.execute(
            "SELECT id, cost FROM budget_holds WHERE name = ? AND expires <= ?", (name, now)
        ).fetchall()
        if expired:
            total = sum(cost for _id, cost in expired)
            conn.executemany("DELETE FROM budget_holds WHERE id = ?", [(i,) for i, _c in expired])
            opened -= len(expired)
            spent += total
            reserved = max(0.0, reserved - total) if opened else 0.0
            conn.execute(
                "UPDATE budgets SET spent = ?, reserved = ?, open = ?, expired = expired + ? WHERE name = ?",
                (spent, reserved, opened, total, name),
            )
            logger.warning(
                "shared budget %r: %d reservation(s) of a process that never settled them "
                "counted as spent at their worst case ($%.4f)",
                name,
                len(expired),
                total,
            )
        return spent, reserved, opened

    def budget_settle(self, grant: BudgetGrant, actual_usd: Optional[float]) -> Optional[bool]:
        """Replace a reservation with the real cost (None: unknown, the worst case is spent). A
        reservation that already expired was counted at its worst case: that is corrected."""
        check_grant(grant, BudgetGrant)
        if not grant.granted or grant.reservation is None:
            return True
        actual = grant.cost_usd if actual_usd is None else float(check_number(actual_usd, "actual_usd"))

        def body(conn: sqlite3.Connection) -> bool:
            alive = conn.execute("DELETE FROM budget_holds WHERE id = ?", (grant.reservation,)).rowcount
            if alive:
                conn.execute(
                    "UPDATE budgets SET spent = spent + ?, open = open - 1, "
                    "reserved = CASE WHEN open - 1 > 0 THEN MAX(0.0, reserved - ?) ELSE 0.0 END WHERE name = ?",
                    (actual, grant.cost_usd, grant.name),
                )
            else:  # expired: its worst case was counted as spent (and as expired)
                conn.execute(
                    "UPDATE budgets SET spent = MAX(0.0, spent + ?), expired = MAX(0.0, expired - ?) WHERE name = ?",
                    (actual - grant.cost_usd, grant.cost_usd, grant.name),
                )
            return True

        return self._tx(body)

    def budget_report(self, name: str) -> Optional[BudgetReport]:
        """The budget ``name`` as every process on this store sees it."""
        budget_name(name)

        def body(conn: sqlite3.Connection) -> BudgetReport:
            self._budget_row(conn, name, time.time())
            cap, spent, reserved, opened, expired, refused = conn.execute(
                "SELECT cap, spent, reserved, open, expired, refused FROM budgets WHERE name = ?", (name,)
            ).fetchone()
            return BudgetReport(name, spent, reserved, opened, expired, refused, cap)

        return self._tx(body)
