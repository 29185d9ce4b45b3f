"""Task lifecycle bookkeeping for managed parallel runs: :class:`TaskState` and :class:`TaskTracker`.

A :class:`TaskTracker` records, for every task of a run, where it is in its life and, once it
has ended, *why* it ended. :func:`orchestration.invoke_parallel_managed` drives one; pass your
own to read it afterwards::

    from task_state import TaskTracker, TaskState, TerminalReason

    tracker = TaskTracker(max_retries=3)
    tracker.add("t1", category="search")
    tracker.claim("t1")                 # UNCLAIMED -> CLAIMED
    tracker.start("t1")                 # CLAIMED -> RUNNING, attempts 1
    info = tracker.fail("t1", error=TimeoutError("slow"), transient=True)
    info.state, info.can_retry          # (TaskState.FAILED, True)
    tracker.retry("t1")                 # FAILED -> RETRY_QUEUED
    tracker.claim("t1"); tracker.start("t1")          # attempts 2
    tracker.complete("t1", result="done")             # COMPLETED, reason SUCCEEDED
    tracker.get("t1").terminal_reason   # TerminalReason.SUCCEEDED

Life of a task (every other move raises :class:`InvalidTransitionError`)::

    UNCLAIMED --claim--> CLAIMED --start--> RUNNING --complete--> COMPLETED
                                              |
                                              +--fail--> FAILED --retry--> RETRY_QUEUED --claim--> CLAIMED
    any non-terminal state --cancel--> CANCELLED

Attempt counting (the same rule as :func:`orchestration.invoke_with_retry`): an *attempt* is
counted by :meth:`TaskTracker.start`. ``max_retries=3`` means one try plus three retries, so at
most ``max_retries + 1 == 4`` attempts. :meth:`TaskTracker.fail` decides what a failure means:

* ``transient=False`` -> FAILED, terminal, reason ``FAILED_PERMANENTLY``;
* transient and ``attempts <= max_retries`` -> FAILED, *not* terminal: ``info.can_retry`` is true
  and the caller moves it on with :meth:`TaskTracker.retry` (or gives up with ``cancel``);
  ``transient`` defaults to the error's own ``transient`` flag, else True (the seed's behaviour:
  the caller decides whether to retry);
* transient and ``attempts == max_retries + 1`` -> FAILED, terminal, reason ``RETRIES_EXHAUSTED``.

A task is terminal when it is COMPLETED, CANCELLED, or FAILED with a terminal reason; its
``terminal_reason`` is set exactly then. Snapshots (:class:`TaskInfo`) are frozen copies: later
changes to the tracker never change a snapshot already handed out.

Thread safety: one lock guards all state; every public method is atomic, so several worker
threads may drive one tracker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = [
    "TaskState",
    "TerminalReason",
    "TaskInfo",
    "TaskTracker",
    "InvalidTransitionError",
    "ACTIVE_STATES",
    "TERMINAL_STATES",
]

logger = logging.getLogger(__name__)


class TaskState(str, Enum):
    """Where a task is in its life. The string value is the lower-case name."""

    UNCLAIMED = "unclaimed"
    CLAIMED = "claimed"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY_QUEUED = "retry_queued"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # "running", not "TaskState.RUNNING"
        return self.value


class TerminalReason(str, Enum):
    """Why a task ended (recorded once, when it reaches a terminal state)."""

    SUCCEEDED = "succeeded"
    FAILED_PERMANENTLY = "failed_permanently"
    RETRIES_EXHAUSTED = "retries_exhausted"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    STALLED = "stalled"
    RECONCILED_AWAY = "reconciled_away"

    def __str__(self) -> str:
        return self.value


#: States in which a task occupies a worker (counted by :meth:`TaskTracker.active_count`).
ACTIVE_STATES = frozenset({TaskState.CLAIMED, TaskState.RUNNING})

#: States in which nobody is working on a task or about to (as in the seed). COMPLETED and
#: CANCELLED are always final; a FAILED task is final only once it has a ``terminal_reason``
#: (``TaskInfo.is_terminal``), otherwise ``retry`` may still revive it.
TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})

# Reasons accepted by cancel() and by fail(reason=...).
_CANCEL_REASONS = frozenset(
    {TerminalReason.CANCELLED, TerminalReason.INTERRUPTED, TerminalReason.RECONCILED_AWAY, TerminalReason.STALLED}
)
_FAIL_REASONS = frozenset(
    {
        TerminalReason.FAILED_PERMANENTLY,
        TerminalReason.RETRIES_EXHAUSTED,
        TerminalReason.STALLED,
        TerminalReason.INTERRUPTED,
    }
)


class InvalidTransitionError(ValueError):
    """A move that the task's current state does not allow.

    ``task_id``, ``current`` and ``target`` (the state the caller asked for) are attributes (as in
    the seed; ``from_state`` / ``to_state`` are aliases), and all three appear in the message.
    """

    def __init__(self, task_id: str, current: TaskState, target: TaskState, detail: str = "") -> None:
        self.task_id = task_id
        self.current = current
        self.target = target
        msg = f"task {task_id!r}: cannot move from {TaskState(current).value} to {TaskState(target).value}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    @property
    def from_state(self) -> TaskState:
        return self.current

    @property
    def to_state(self) -> TaskState:
        return self.target


@dataclass(frozen=True)
class TaskInfo:
    """Immutable snapshot of one task, as returned by :meth:`TaskTracker.get`.

    ``attempts`` counts calls to ``start``; ``max_attempts`` is ``max_retries + 1``. ``error`` is
    the exception given to the last ``fail`` (kept after a retry for diagnosis; ``None`` once the
    task completes). ``history`` lists every state the task has been in, oldest first.
    """

    task_id: str
    state: TaskState
    category: Optional[str]
    attempts: int
    max_retries: int
    terminal_reason: Optional[TerminalReason] = None
    error: Any = None
    result: Any = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    history: Tuple[TaskState, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def max_attempts(self) -> int:
        """One try plus ``max_retries`` retries."""
        return self.max_retries + 1

    @property
    def attempt(self) -> int:
        """The seed's name for ``attempts``."""
        return self.attempts

    @property
    def is_terminal(self) -> bool:
        """True once the task has ended (its ``terminal_reason`` is set)."""
        return self.terminal_reason is not None

    @property
    def can_retry(self) -> bool:
        """True when the task failed transiently and has attempts left (``retry`` is allowed)."""
        return self.state is TaskState.FAILED and self.terminal_reason is None

    @property
    def retries_left(self) -> int:
        """How many more attempts ``start`` may still count."""
        return max(0, self.max_attempts - self.attempts)


@dataclass
class _Task:
    task_id: str
    category: Optional[str]
    max_retries: int
    metadata: Mapping[str, Any]
    created_at: float
    state: TaskState = TaskState.UNCLAIMED
    attempts: int = 0
    terminal_reason: Optional[TerminalReason] = None
    error: Optional[BaseException] = None
    result: Any = None
    history: List[TaskState] = field(default_factory=lambda: [TaskState.UNCLAIMED])
    updated_at: float = 0.0

    def snapshot(self) -> TaskInfo:
        return TaskInfo(
            task_id=self.task_id,
            state=self.state,
            category=self.category,
            attempts=self.attempts,
            max_retries=self.max_retries,
            terminal_reason=self.terminal_reason,
            error=self.error,
            result=self.result,
            metadata=self.metadata,
            history=tuple(self.history),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def _check_max_retries(value: Any, name: str = "max_retries") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


class TaskTracker:
    """Thread-safe record of a run's tasks, their states, attempts and terminal reasons.

    ``max_retries`` (default 3) is the default per task; ``add(..., max_retries=N)`` overrides it
    for one task. See the module docstring for the state machine and the attempt rule.

    >>> t = TaskTracker(max_retries=0)
    >>> for move in (t.add, t.claim, t.start):
    ...     _ = move("a")
    >>> t.fail("a", error=RuntimeError("boom"), transient=True).terminal_reason
    <TerminalReason.RETRIES_EXHAUSTED: 'retries_exhausted'>
    """

    def __init__(self, max_retries: int = 3) -> None:
        self.max_retries = _check_max_retries(max_retries)
        self._lock = threading.Lock()
        self._tasks: Dict[str, _Task] = {}

    # ------------------------------------------------------------------ registration
    def add(
        self,
        task_id: str,
        category: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        max_retries: Optional[int] = None,
        replace: bool = False,
    ) -> TaskInfo:
        """Register a new task in state UNCLAIMED and return its snapshot.

        ``task_id`` must be a non-empty str, unique in this tracker: adding an existing id
        raises ``ValueError``, unless ``replace=True`` and the existing task is terminal (its
        record is then replaced by a fresh one, attempts back to 0).
        """
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a non-empty str, got {type(task_id).__name__} {task_id!r}")
        if not task_id:
            raise ValueError("task_id must be a non-empty str, got ''")
        if category is not None and not isinstance(category, str):
            raise TypeError(f"category must be a str or None, got {type(category).__name__} {category!r}")
        retries = self.max_retries if max_retries is None else _check_max_retries(max_retries)
        meta = MappingProxyType(dict(metadata or {}))
        now = time.monotonic()
        with self._lock:
            old = self._tasks.get(task_id)
            if old is not None:
                if not replace:
                    raise ValueError(f"task_id {task_id!r} is already tracked (state {old.state.value})")
                if old.terminal_reason is None:
                    raise ValueError(
                        f"task_id {task_id!r} cannot be replaced while it is not terminal (state {old.state.value})"
                    )
                del self._tasks[task_id]  # re-insert at the end: insertion order = order of adds
            task = _Task(task_id, category, retries, meta, created_at=now, updated_at=now)
            self._tasks[task_id] = task
            return task.snapshot()

    # ------------------------------------------------------------------ transitions
    def claim(self, task_id: str) -> TaskInfo:
        """UNCLAIMED or RETRY_QUEUED -> CLAIMED (a worker has taken the task)."""
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.CLAIMED, (TaskState.UNCLAIMED, TaskState.RETRY_QUEUED))
            return self._move(task, TaskState.CLAIMED)

    def start(self, task_id: str) -> TaskInfo:
        """CLAIMED -> RUNNING, counting one attempt."""
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.RUNNING, (TaskState.CLAIMED,))
            if task.attempts >= task.max_retries + 1:  # unreachable through fail(); kept as a guard
                raise InvalidTransitionError(task_id, task.state, TaskState.RUNNING, "no attempts left")
            task.attempts += 1
            return self._move(task, TaskState.RUNNING)

    def complete(self, task_id: str, result: Any = None) -> TaskInfo:
        """RUNNING -> COMPLETED, reason SUCCEEDED; ``result`` is kept on the snapshot."""
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.COMPLETED, (TaskState.RUNNING,))
            task.result = result
            task.error = None
            return self._move(task, TaskState.COMPLETED, TerminalReason.SUCCEEDED)

    def fail(
        self,
        task_id: str,
        error: Any = None,
        *,
        transient: Optional[bool] = None,
        reason: Optional[TerminalReason] = None,
    ) -> TaskInfo:
        """RUNNING -> FAILED. Returns the snapshot; ``.can_retry`` says whether ``retry`` may follow.

        ``transient=None`` reads ``error.transient`` when it is a bool (as on
        ``ClaudeInvocationError``); otherwise (a message str, None, another exception) the failure
        counts as retryable and the caller decides with ``retry`` or ``cancel``, as in the seed.
        A transient failure with attempts left is not terminal; otherwise the task ends with reason
        RETRIES_EXHAUSTED (transient) or FAILED_PERMANENTLY (``transient=False``). ``reason`` forces a
        terminal failure with that reason (one of FAILED_PERMANENTLY, RETRIES_EXHAUSTED, STALLED,
        INTERRUPTED).
        """
        if reason is not None:
            reason = TerminalReason(reason)
            if reason not in _FAIL_REASONS:
                raise ValueError(
                    f"reason for fail() must be one of {sorted(r.value for r in _FAIL_REASONS)}, got {reason.value!r}"
                )
        if transient is None:
            flag = getattr(error, "transient", None)
            transient = flag if isinstance(flag, bool) else True
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.FAILED, (TaskState.RUNNING,))
            task.error = error
            if reason is None:
                if not transient:
                    reason = TerminalReason.FAILED_PERMANENTLY
                elif task.attempts >= task.max_retries + 1:
                    reason = TerminalReason.RETRIES_EXHAUSTED
            return self._move(task, TaskState.FAILED, reason)

    def retry(self, task_id: str) -> TaskInfo:
        """FAILED (not terminal) -> RETRY_QUEUED; the next ``claim`` picks it up again."""
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.RETRY_QUEUED, (TaskState.FAILED,))
            return self._move(task, TaskState.RETRY_QUEUED)

    def cancel(self, task_id: str, reason: TerminalReason = TerminalReason.CANCELLED) -> TaskInfo:
        """Any non-terminal state -> CANCELLED with ``reason`` (CANCELLED, INTERRUPTED, STALLED or
        RECONCILED_AWAY)."""
        reason = TerminalReason(reason)
        if reason not in _CANCEL_REASONS:
            raise ValueError(
                f"reason for cancel() must be one of {sorted(r.value for r in _CANCEL_REASONS)}, got {reason.value!r}"
            )
        with self._lock:
            task = self._get(task_id)
            self._require(task, TaskState.CANCELLED, None)
            return self._move(task, TaskState.CANCELLED, reason)

    def transition(self, task_id: str, target: TaskState) -> TaskInfo:
        """Generic form of the moves above (the seed's API): ``transition(id, TaskState.RUNNING)``
        is ``start(id)``, and so on; FAILED is ``fail(id)``, CANCELLED is ``cancel(id)``."""
        try:
            target = TaskState(target)
        except ValueError:
            raise ValueError(f"target must be a TaskState, got {target!r}") from None
        if target is TaskState.UNCLAIMED:
            with self._lock:
                current = self._get(task_id).state
            raise InvalidTransitionError(task_id, current, target, "no move leads back to unclaimed")
        move = {
            TaskState.CLAIMED: self.claim,
            TaskState.RUNNING: self.start,
            TaskState.COMPLETED: self.complete,
            TaskState.FAILED: self.fail,
            TaskState.RETRY_QUEUED: self.retry,
            TaskState.CANCELLED: self.cancel,
        }[target]
        return move(task_id)

    # ------------------------------------------------------------------ queries
    def get(self, task_id: str) -> TaskInfo:
        """Snapshot of one task (KeyError naming the id when unknown)."""
        with self._lock:
            return self._get(task_id).snapshot()

    def get_by_state(self, state: TaskState) -> List[TaskInfo]:
        """Snapshots of every task in ``state``, in the order they were added."""
        state = TaskState(state)
        with self._lock:
            return [t.snapshot() for t in self._tasks.values() if t.state is state]

    def get_by_reason(self, reason: TerminalReason) -> List[TaskInfo]:
        """Snapshots of every terminal task that ended for ``reason``, in the order they were added."""
        reason = TerminalReason(reason)
        with self._lock:
            return [t.snapshot() for t in self._tasks.values() if t.terminal_reason is reason]

    def get_by_category(self, category: Optional[str]) -> List[TaskInfo]:
        """Snapshots of every task of ``category``, in the order they were added."""
        with self._lock:
            return [t.snapshot() for t in self._tasks.values() if t.category == category]

    def is_all_terminal(self) -> bool:
        """True when every task is in :data:`TERMINAL_STATES` (nobody is working on any task).

        Like the seed, a FAILED task counts even if ``retry`` could still revive it; use
        ``all(i.is_terminal for i in tracker)`` for "every task has ended for good".
        """
        with self._lock:
            return all(t.state in TERMINAL_STATES for t in self._tasks.values())

    def all(self) -> List[TaskInfo]:
        """Snapshots of every task, in the order they were added."""
        with self._lock:
            return [t.snapshot() for t in self._tasks.values()]

    def active_count(self, category: Optional[str] = None) -> int:
        """Tasks currently CLAIMED or RUNNING (only those of ``category`` when given)."""
        with self._lock:
            return sum(
                1
                for t in self._tasks.values()
                if t.state in ACTIVE_STATES and (category is None or t.category == category)
            )

    def summary(self) -> Dict[str, int]:
        """Task count per state, keyed by the state's value; every state appears (as in the seed)::

        {"unclaimed": 0, "claimed": 0, "running": 1, "completed": 8, "failed": 1,
         "retry_queued": 0, "cancelled": 0}
        """
        with self._lock:
            counts = {s.value: 0 for s in TaskState}
            for t in self._tasks.values():
                counts[t.state.value] += 1
            return counts

    def reason_counts(self) -> Dict[str, int]:
        """How many tasks ended for each :class:`TerminalReason`, keyed by its value (all appear)."""
        with self._lock:
            counts = {r.value: 0 for r in TerminalReason}
            for t in self._tasks.values():
                if t.terminal_reason is not None:
                    counts[t.terminal_reason.value] += 1
            return counts

    def total_attempts(self) -> int:
        """Sum of ``attempts`` over every task (equals the requests a managed run sent)."""
        with self._lock:
            return sum(t.attempts for t in self._tasks.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._tasks

    def __iter__(self) -> Iterator[TaskInfo]:
        return iter(self.all())

    def __repr__(self) -> str:
        busy = {k: v for k, v in self.summary().items() if v}
        return f"TaskTracker(max_retries={self.max_retries}, total={len(self)}, states={busy})"

    # ------------------------------------------------------------------ internals (lock held)
    def _get(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"unknown task_id {task_id!r}") from None

    @staticmethod
    def _require(task: _Task, to_state: TaskState, allowed_from: Optional[Tuple[TaskState, ...]]) -> None:
        if task.terminal_reason is not None:
            raise InvalidTransitionError(
                task.task_id, task.state, to_state, f"task already ended: {task.terminal_reason.value}"
            )
        if allowed_from is not None and task.state not in allowed_from:
            raise InvalidTransitionError(
                task.task_id,
                task.state,
                to_state,
                "allowed from " + ", ".join(s.value for s in allowed_from),
            )

    @staticmethod
    def _move(task: _Task, state: TaskState, reason: Optional[TerminalReason] = None) -> TaskInfo:
        logger.debug(
            "task %r: %s -> %s%s", task.task_id, task.state.value, state.value, f" ({reason.value})" if reason else ""
        )
        task.state = state
        task.terminal_reason = reason
        task.history.append(state)
        task.updated_at = time.monotonic()
        return task.snapshot()
