"""The managed fan-out behind ``orchestration.invoke_parallel_managed``: retries scheduled
without holding a worker or a slot, a FIFO-fair limiter, a shared 429 pause and a task tracker.

Each attempt is one request through :func:`_transport.send` with no retries of its own; the run
decides about the next attempt with the same :class:`_retry.RetryPolicy` parts as every other path.
"""

from __future__ import annotations

import collections
import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import _tracing
from _agent import Agent
from _errors import ClaudeInvocationError, translate
from _fanout import RunInterrupted, check_callbacks
from _interrupt import InterruptToken, subscribe, unsubscribe
from _limits import ConcurrencyLimiter, RateLimitGate, add_listener, remove_listener, wait_for_slot
from _models import DEFAULT_MODEL
from _requests import prompt_specs
from _results import ParallelResults, paid, totals
from _retry import NO_RETRY, RetryPolicy
from _runs import (
    AGENT_KEYS,
    AgentOptions,
    RunHooks,
    as_sent,
    attach_prompt_tools,
    common_checks,
    run_hooks,
    wants_pilot,
)
from _tools import LoopState, ToolSet
from _transport import get_client
from _validation import check_callable, check_positive_int
from task_state import TaskState, TaskTracker, TerminalReason

logger = logging.getLogger("orchestration._managed")

_MANAGED_KEYS = frozenset({"task_id", "category"})
_LEAVE_GRACE_S = 3.0  # after an interrupt, at most this long for the aborted workers to record their tasks
_POLL_S = 0.05  # fallback wake-up of idle workers and of the driving thread (events wake them at once)
#: What ends the prompt span of a task left unfinished by a stop (marks it interrupted, not failed).
_LEFT_OVER = ClaudeInvocationError("the run stopped before the task ended", kind="interrupted")


@dataclass
class _Task:
    index: int
    task_id: str
    category: Optional[str]
    params: dict
    on_text: Optional[Callable[[str], Any]] = None
    toolset: Optional[ToolSet] = None
    #: Where the task's tool loop stands: a retry resumes at the failed turn (no tool runs twice).
    loop_state: LoopState = field(default_factory=LoopState)
    #: The task's ``prompt`` span, from its first attempt to its end (taken out under the run's lock).
    span: Optional[_tracing.PromptSpan] = None


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

    def __init__(
        self,
        tasks: List[_Task],
        *,
        tracker: TaskTracker,
        limiter: ConcurrencyLimiter,
        policy: RetryPolicy,
        gate: RateLimitGate,
        agent: Agent,
        token: Any,
        stall_timeout: Optional[float],
        on_stall: Optional[Callable[[str, float], Any]],
        pilot: Optional[int],
        rng: random.Random,
        hooks: RunHooks,
    ) -> None:
        self.tasks = tasks
        self.tracker = tracker
        self.limiter = limiter
        self.policy = policy
        self.gate = gate
        self.agent = agent.with_token(token)
        self.hooks = hooks
        self.token = token
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.rng = rng
        self._cond = threading.Condition()
        self._ready: Dict[Optional[str], List[int]] = collections.defaultdict(list)
        self._delayed: List[Tuple[float, int]] = []
        self._pending = len(tasks)  # tasks not yet ended
        self._running: set = set()
        # Adaptive concurrency (AIMD): halved on a 429, +1 per cap of successes; <= the workers.
        self._max_cap = float(len(tasks) or 1)
        self._cap = self._max_cap
        self._queued: set = set()  # categories a worker of this run is queued for in the limiter
        self.results: Dict[int, Any] = {}
        self.errors: Dict[int, BaseException] = {}
        self.fatal: Optional[BaseException] = None
        #: Set when something the driving thread waits for happens (a stop, a worker leaving).
        self.changed = threading.Event()
        self.workers_left = 0
        self._pilot = pilot
        self._hold = pilot is not None  # hold the others until the pilot's response has begun
        for pos, task in enumerate(tasks):
            self._ready[task.category].append(pos)  # already in index order: a valid heap

    # ------------------------------------------------------------------ control
    def set_workers(self, workers: int) -> None:
        with self._cond:
            self._max_cap = self._cap = float(workers)
            self.workers_left = workers

    def _stopped(self) -> bool:
        return self.fatal is not None or (self.token is not None and self.token.is_interrupted())

    def wake(self) -> None:
        self.changed.set()
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
            self._stop_with(exc)
        finally:
            with self._cond:
                self.workers_left -= 1
            self.changed.set()

    def _stop_with(self, exc: BaseException) -> None:
        with self._cond:
            if self.fatal is None:
                self.fatal = exc
            self._cond.notify_all()
        self.changed.set()

    def _next_task(self) -> Optional[Tuple[int, bool]]:
        """The next task and whether it holds a limiter slot already (else: queue for one)."""
        resume_at: Optional[float] = None
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
                if paused > 0 and (resume_at is None or resume_at < now + paused):  # spread the resume
                    resume_at = now + paused + self.rng.uniform(0.0, min(1.0, 0.5 * paused))
                if resume_at is not None and now < resume_at:
                    wait = min(wait, resume_at - now)
                elif len(self._running) >= int(self._cap):
                    pass  # at the adaptive concurrency cap: wait for a settle
                else:
                    resume_at = None
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
            granted = wait_for_slot(self.limiter, cat, self._stopped)
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
        stop: Optional[BaseException] = None
        try:
            self.tracker.claim(task.task_id)
            self.tracker.start(task.task_id)
            self.hooks.begin(task.index)
            span = self._span_of(task)
            try:
                with span.current():
                    response = self.agent.run(
                        task.params,
                        on_start=on_start,
                        on_text=task.on_text,
                        tools=task.toolset,
                        loop_state=task.loop_state,
                    )
            except Exception as exc:
                error = translate(exc)
                if error is not exc:
                    error.__cause__ = exc
                if error.kind == "rate_limit" and error.retry_after:
                    # before the slot goes back, so no woken worker sends inside the pause
                    pause = min(error.retry_after, self.policy.max_retry_after_s)
                    self.gate.pause_for(pause)
                    span.event("rate_limit_pause", seconds=pause)
            except BaseException as exc:  # KeyboardInterrupt / SystemExit in a tool: the run ends as on Ctrl-C
                stop = exc
        finally:
            self.limiter.release(task.category)
        if stop is not None:
            with self._cond:
                self._running.discard(pos)
                self.tracker.cancel(task.task_id, TerminalReason.INTERRUPTED)
                self._pending -= 1
            self._close_span(task, stop)
            self._stop_with(stop)
            self.token.interrupt()  # abort the other requests in flight
            return
        if pos == self._pilot:
            self._release_hold()  # the pilot ended before its response began (failure): release the rest
        if error is not None and error.kind == "stalled" and self.on_stall is not None:
            try:
                self.on_stall(task.task_id, float(self.stall_timeout or 0.0))
            except Exception:
                logger.exception("on_stall callback raised for task %r", task.task_id)
        with self._cond:
            self._running.discard(pos)
            if error is not None and error.kind == "rate_limit":
                self._cap = max(1.0, self._cap / 2.0)
            elif error is None:
                self._cap = min(self._max_cap, self._cap + 1.0 / self._cap)
            settled = self._settle(pos, response, error)
            self._cond.notify_all()
        if task.span is not None and self.tracker.get(task.task_id).is_terminal:  # outside the lock, as the hooks
            self._close_span(task, error, settled)
        if settled is not None:  # outside the run's lock: the journal writes, the display draws
            self.hooks.settle(task.index, settled)

    def _settle(self, pos: int, response: Any, error: Optional[ClaudeInvocationError]) -> Any:
        """Record an attempt's outcome (lock held); the task's final outcome, if it ended so."""
        task = self.tasks[pos]
        if error is None:
            self.tracker.complete(task.task_id, result=response)
            self.results[task.index] = response
            self._pending -= 1
            return response
        if error.kind == "interrupted":
            self.tracker.cancel(task.task_id, TerminalReason.INTERRUPTED)
            self._pending -= 1
            return None
        reason = None
        if error.kind == "stalled":  # a stall on the last attempt ends the task as STALLED
            current = self.tracker.get(task.task_id)
            if current.attempts >= current.max_attempts:
                reason = TerminalReason.STALLED
        info = self.tracker.fail(task.task_id, error=error, transient=self.policy.retry(error), reason=reason)
        if info.can_retry and not self._stopped():
            self.tracker.retry(task.task_id)
            delay = self.policy.delay_for(info.attempts, error, self.rng)
            if error.kind == "rate_limit":  # retries after a shared retry-after do not stay in step
                delay += self.rng.uniform(0.0, min(1.0, 0.25 * delay))
            logger.info(
                "task %r: attempt %d of %d failed (%s); retry in %.3f s",
                task.task_id,
                info.attempts,
                info.max_attempts,
                error.kind,
                delay,
            )
            heapq.heappush(self._delayed, (time.monotonic() + delay, pos))
            if task.span is not None:
                task.span.event("retry", kind=error.kind, delay_s=delay, attempt=info.attempts)
            return None
        final = None
        if info.can_retry:  # interrupted while it could still retry
            self.tracker.cancel(task.task_id, TerminalReason.INTERRUPTED)
        else:
            final = final_error(error, info.attempts, f"task {task.task_id!r}")
            self.errors[task.index] = final
        self._pending -= 1
        return final

    # ------------------------------------------------------------------ tracing
    def _span_of(self, task: _Task) -> _tracing.PromptSpan:
        """The task's prompt span, started at its first attempt (a child of the run's span)."""
        span = task.span  # one worker at a time runs a task: no lock needed to start its span
        if span is None:
            span = _tracing.prompt_span(task.index, task_id=task.task_id, category=task.category)
            if span.recording:
                task.span = span
        return span

    def _close_span(self, task: _Task, error: Optional[BaseException] = None, outcome: Any = None) -> None:
        """Finish and end the task's prompt span (once: it is taken out under the run's lock)."""
        if task.span is None:
            return
        with self._cond:
            span, task.span = task.span, None
        if span is None:
            return
        info = self.tracker.get(task.task_id)
        reason = info.terminal_reason.value if info.terminal_reason is not None else "interrupted"
        spent = paid(outcome if outcome is not None else error)
        usage, cost = spent if spent is not None else (None, None)
        span.finish(attempts=info.attempts, terminal_reason=reason, usage=usage, cost_usd=cost)
        span.end(error if outcome is None or isinstance(outcome, BaseException) else None)

    # ------------------------------------------------------------------ after the run
    def cancel_leftovers(self) -> None:
        """Mark every task that never ended as INTERRUPTED (after the workers have left)."""
        ended = []
        with self._cond:
            for pos, task in enumerate(self.tasks):
                if pos in self._running:
                    continue  # its worker records the outcome
                info = self.tracker.get(task.task_id)
                if not info.is_terminal:
                    failed = isinstance(self.fatal, Exception)  # a bug, not a Ctrl-C-like stop
                    reason = TerminalReason.CANCELLED if failed else TerminalReason.INTERRUPTED
                    self.tracker.cancel(task.task_id, reason)
                    ended.append(task)
        for task in ended:  # a task waiting for its retry: its span ends as interrupted
            self._close_span(task, _LEFT_OVER)


def invoke_parallel_managed(
    prompts: List[Dict[str, Any]],
    *,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    max_retries: Optional[int] = None,
    base_delay_ms: Optional[float] = None,
    max_delay_ms: Optional[float] = None,
    reconcile: Optional[Callable[[List[Dict[str, Any]], TaskTracker], Sequence[Mapping[str, Any]]]] = None,
    concurrency_limiter: Optional[ConcurrencyLimiter] = None,
    stall_timeout: Optional[float] = None,
    on_stall: Optional[Callable[[str, float], Any]] = None,
    interrupt_token: Optional[InterruptToken] = None,
    tracker: Optional[TaskTracker] = None,
    return_exceptions: bool = False,
    cache_pilot: bool = True,
    policy: Optional[RetryPolicy] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    callbacks: Optional[Sequence[Optional[Callable[[str], Any]]]] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    rate_limits: Any = None,
    journal: Any = None,
    retry_failed: bool = False,
    progress: Any = False,
    effort: Optional[str] = None,
    thinking: Any = None,
    budget: Optional[str] = None,
) -> ParallelResults:
    """Run many prompts with retries, concurrency limits, a shared rate-limit pause and a task tracker.

    Each prompt dict takes the keys of :func:`claude_client.invoke_parallel` (``prompt``,
    ``system``, ``cache_system``, ``cache_prompt``, ``model``, ``max_tokens``, ``effort``,
    ``thinking``, ``tools``) plus ``task_id`` (a unique non-empty str; default ``f"task-{index}"``
    as in the seed) and ``category`` (the limiter category; default None). ``effort`` (``"low"`` ...
    ``"max"``: ``output_config.effort``) and ``thinking`` (a dict such as ``{"type": "adaptive"}``
    or ``"adaptive"`` / ``"disabled"`` / ``"between_tools"``) apply to every prompt that does not
    set its own. ``budget`` names a spend cap shared across processes (passed to the run's agent
    options like ``max_cost_usd``). Everything is validated before any request. With tracing on
    (a tracer provider installed), the run is one ``run invoke_parallel_managed`` span with one
    ``prompt`` span per task (all its attempts; retries and rate-limit pauses as events).

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
       A tool agent's retry resumes its tool loop at the failed turn: tools that ran are not run
       again, so a tool agent sends the same requests and runs its tools as often as under
       :func:`invoke_with_retry` (the attempts of all its turns count against ``max_retries``).
       A reply that is not an answer (kinds ``refusal``, ``max_tokens``, ``context_overflow``)
       is never retried: it ends in its slot with its ``usage`` and ``cost_usd``.
    ``callbacks[i](chunk)`` (optional, one per prompt, as in
    :func:`claude_client.invoke_parallel_streaming`) gets every text chunk of prompt ``i`` on a
    worker thread; a retried task streams again from the start (the tracker's RUNNING state with
    a higher ``attempt`` says so).

    5. ``interrupt_token.interrupt()`` stops dispatch, aborts the requests in flight and returns
       promptly (well within 0.2 s); unfinished tasks end CANCELLED / ``INTERRUPTED`` with None in
       their slot. Ctrl-C, or a ``KeyboardInterrupt`` / ``SystemExit`` raised in a tool, does the
       same and raises :class:`claude_client.RunInterrupted` carrying what finished.

    Returns a :class:`claude_client.ParallelResults` in input order: the reply where a task
    succeeded, otherwise None. Failures do not raise: ``results.errors`` maps index -> the final
    ``ClaudeInvocationError`` (with ``.attempts``, last cause chained) and the tracker says why each
    task ended (pass your own ``tracker`` to read it). ``return_exceptions=True`` puts those errors in
    their slots instead of None. ``results.usage`` / ``results.cost_usd`` sum what this run paid:
    the successful requests and what the final errors carry (a refusal's reply, a tool loop's turns)
    (results taken over from the tracker by reconcile are not counted again).

    >>> tracker = TaskTracker()
    >>> results = invoke_parallel_managed(
    ...     [{"prompt": "a", "task_id": "a", "category": "search"}, {"prompt": "b", "task_id": "b"}],
    ...     max_workers=8, concurrency_limiter=ConcurrencyLimiter(8, {"search": 2}), tracker=tracker,
    ...     effort="low")
    >>> tracker.reason_counts()["succeeded"], results.errors
    """
    check_positive_int(max_workers, "max_workers")
    stall = common_checks(
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        return_exceptions=return_exceptions,
        cache_pilot=cache_pilot,
    )
    options = AgentOptions.checked(
        tools=tools,
        output_schema=output_schema,
        max_tool_turns=max_tool_turns,
        tool_timeout=tool_timeout,
        parallel_tools=parallel_tools,
        on_tool_call=on_tool_call,
        max_cost_usd=max_cost_usd,
        rate_limits=rate_limits,
        **({} if budget is None else {"budget": budget}),
    )
    policy = resolve_policy(policy, max_retries=max_retries, base_delay_ms=base_delay_ms, max_delay_ms=max_delay_ms)
    if concurrency_limiter is not None and not isinstance(concurrency_limiter, ConcurrencyLimiter):
        raise TypeError(
            f"concurrency_limiter must be a ConcurrencyLimiter or None, got {type(concurrency_limiter).__name__}"
        )
    if tracker is not None and not isinstance(tracker, TaskTracker):
        raise TypeError(f"tracker must be a TaskTracker or None, got {type(tracker).__name__}")
    check_callable(reconcile, "reconcile")
    check_callable(on_stall, "on_stall")

    def normalize(items: Sequence[Mapping[str, Any]]) -> list:
        return prompt_specs(
            items,
            shared_system=shared_system,
            cache_shared_system=cache_shared_system,
            model=model,
            max_tokens=max_tokens,
            extra_keys=_MANAGED_KEYS | AGENT_KEYS,
            effort=effort,
            thinking=thinking,
        )

    originals = _validate_managed_prompts(prompts)
    all_specs = normalize(originals)  # every prompt is valid before reconcile or any request
    attach_prompt_tools(all_specs)
    check_callbacks(callbacks, len(originals))
    with (
        _tracing.run_span("invoke_parallel_managed", prompts=len(originals), workers=max_workers, model=model) as span,
        run_hooks(
            as_sent(all_specs, options),
            journal=journal,
            retry_failed=retry_failed,
            progress=progress,
            label="invoke_parallel_managed",
            output=options.output,
        ) as hooks,
    ):
        return span.run(
            lambda: _run_managed(
                originals,
                hooks,
                options=options,
                policy=policy,
                normalize=normalize,
                reconcile=reconcile,
                tracker=tracker,
                callbacks=callbacks,
                interrupt_token=interrupt_token,
                stall=stall,
                max_workers=max_workers,
                cache_pilot=cache_pilot,
                cache_shared_system=cache_shared_system,
                shared_system=shared_system,
                concurrency_limiter=concurrency_limiter,
                on_stall=on_stall,
                api_key=api_key,
                base_url=base_url,
                return_exceptions=return_exceptions,
            ),
            interrupt=interrupt_token,
        )


def _run_managed(
    originals: List[Dict[str, Any]],
    hooks: RunHooks,
    *,
    options: AgentOptions,
    policy: RetryPolicy,
    normalize: Callable[[Sequence[Mapping[str, Any]]], list],
    reconcile: Any,
    tracker: Any,
    callbacks: Any,
    interrupt_token: Any,
    stall: Optional[float],
    max_workers: int,
    cache_pilot: bool,
    cache_shared_system: bool,
    shared_system: Any,
    concurrency_limiter: Any,
    on_stall: Any,
    api_key: Optional[str],
    base_url: Optional[str],
    return_exceptions: bool,
) -> ParallelResults:
    restored = hooks.restored  # settled in an earlier run (journal): not run again
    if restored:
        originals_to_consider = [p for i, p in enumerate(originals) if i not in restored]
    else:
        originals_to_consider = originals
    index_of = {p["task_id"]: i for i, p in enumerate(originals)}
    tracker = tracker if tracker is not None else TaskTracker(max_retries=policy.max_retries)

    to_run = originals_to_consider
    if reconcile is not None:
        returned = reconcile([dict(p) for p in originals_to_consider], tracker)
        to_run = _validate_managed_prompts(returned, "reconcile(...) result")
        for j, p in enumerate(to_run):
            if "task_id" not in returned[j]:
                raise ValueError(f"reconcile(...) result[{j}] has no 'task_id'; every prompt it returns needs one")
            if p["task_id"] not in index_of:
                raise ValueError(f"reconcile(...) result[{j}] has task_id {p['task_id']!r}, which is not in prompts")
    specs = normalize(to_run)
    attach_prompt_tools(specs)
    # The key is resolved before the tracker changes: a missing key leaves no task active.
    client = get_client(api_key=api_key, base_url=base_url) if specs else None
    for p in to_run:
        info = tracker.get(p["task_id"]) if p["task_id"] in tracker else None
        if info is not None and not info.is_terminal:
            raise ValueError(f"task_id {p['task_id']!r} is still active in the tracker (state {info.state.value})")

    n = len(originals)
    slots: List[Any] = [None] * n
    run_ids = {p["task_id"] for p in to_run}
    errors: Dict[int, BaseException] = {}
    for index, outcome in restored.items():
        _restore(tracker, originals[index], outcome, policy.max_retries)
        if isinstance(outcome, BaseException):
            errors[index] = outcome
        else:
            slots[index] = outcome
    for i, p in enumerate(originals):  # reconciled away
        tid = p["task_id"]
        if tid in run_ids or i in restored:
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
        tasks.append(_Task(index, p["task_id"], p.get("category"), spec.params, on_text, spec.extra.get("toolset")))
    tasks.sort(key=lambda t: t.index)

    # The run's own token: the caller's token feeds it, and so does an exception (Ctrl-C) in the
    # thread driving the run, so in-flight requests are aborted either way.
    if client is not None:
        options.limit(client, [task.params for task in tasks])
    token = InterruptToken()
    link = subscribe(interrupt_token, token.interrupt) if interrupt_token is not None else None
    pilot = 0 if wants_pilot(cache_pilot, cache_shared_system, shared_system, [task.params for task in tasks]) else None
    run = _ManagedRun(
        tasks,
        tracker=tracker,
        limiter=concurrency_limiter or ConcurrencyLimiter(max_workers),
        policy=policy,
        gate=RateLimitGate(),
        agent=options.agent(client, policy=NO_RETRY, stall_timeout=stall),  # type: ignore[arg-type]  # None: no tasks
        token=token,
        stall_timeout=stall,
        on_stall=on_stall,
        pilot=pilot,
        rng=random.Random(),
        hooks=hooks,
    )

    def settled() -> ParallelResults:
        out = list(slots)
        for index, response in list(run.results.items()):
            out[index] = response
        # not results taken over by reconcile; journaled ones count (the list's own results); a
        # final error counts what its task paid (a refusal's reply, a tool loop's turns)
        usage, cost = totals(list(run.results.values()) + [restored[i] for i in restored], errors=run.errors.values())
        all_errors = {**errors, **run.errors}
        if return_exceptions:
            for index, err in all_errors.items():
                out[index] = err
        return ParallelResults(out, usage=usage, cost_usd=cost, errors=all_errors)

    try:
        if tasks:
            _drive(run, min(max_workers, len(tasks)))
    except (KeyboardInterrupt, SystemExit) as exc:
        # Ctrl-C, or a KeyboardInterrupt / SystemExit raised in a tool (the run's ``fatal``); a
        # SystemExit of the driving thread itself (a handler calling sys.exit) goes on as it is
        if isinstance(exc, RunInterrupted) or (isinstance(exc, SystemExit) and exc is not run.fatal):
            raise
        raise RunInterrupted(settled()) from exc
    finally:
        if link is not None:
            unsubscribe(interrupt_token, link)  # type: ignore[arg-type]
    return settled()


def _drive(run: _ManagedRun, workers: int) -> None:
    """Run the workers until every task has ended or the run is stopped (an interrupt, Ctrl-C,
    a crashed worker, a KeyboardInterrupt / SystemExit in a tool).

    This thread never blocks without a timeout (a signal is handled within ``_POLL_S``), and a
    stop waits once, at most ``_LEAVE_GRACE_S``, for the aborted workers to record their tasks
    (they leave at once: their sockets are shut down); a second Ctrl-C ends even that wait.
    """
    run.set_workers(workers)
    handle = subscribe(run.token, run.wake)
    add_listener(run.limiter, run.wake)
    threads = [_tracing.thread(run.worker, name=f"claude-managed-{i}", daemon=True) for i in range(workers)]
    leaving = False  # the one grace has begun: a Ctrl-C now ends it, never starts another
    try:
        for t in threads:
            t.start()
        while run.workers_left > 0:
            if run._stopped():
                run.token.interrupt()  # a crashed worker (fatal) stops the others' requests too
                leaving = True
                _leave(run, threads)
                break
            run.changed.wait(_POLL_S)
            run.changed.clear()
    except BaseException:
        # e.g. Ctrl-C in the caller's thread: abort what is in flight, let the workers leave, re-raise
        run.token.interrupt()
        if not leaving:
            _leave(run, threads)
        raise
    finally:
        remove_listener(run.limiter, run.wake)
        unsubscribe(run.token, handle)
        run.cancel_leftovers()
    if run.fatal is not None:
        raise run.fatal


def _leave(run: _ManagedRun, threads: List[threading.Thread]) -> None:
    """Wait (once, at most ``_LEAVE_GRACE_S``, in short steps) for the stopped workers to leave."""
    deadline = time.monotonic() + _LEAVE_GRACE_S
    while run.workers_left > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            busy = [t.name for t in threads if t.is_alive()]
            logger.warning("workers %s still busy %.1f s after the stop; leaving them", busy, _LEAVE_GRACE_S)
            return
        run.changed.wait(min(_POLL_S, left))
        run.changed.clear()


invoke_parallel_managed.__module__ = "orchestration"


def final_error(last: ClaudeInvocationError, attempts: int, what: str = "Claude call") -> ClaudeInvocationError:
    """``last`` with the attempt count in its message (every other field kept), chained to it."""
    plural = "attempt" if attempts == 1 else "attempts"
    final = last.derive(f"{what} failed after {attempts} {plural} ({last.kind or 'error'}): {last}", attempts=attempts)
    final.__cause__ = last
    return final


_DEFAULTS = {"max_retries": 3, "base_delay_ms": 1000.0, "max_delay_ms": 10000.0}


def resolve_policy(policy: Optional[RetryPolicy], **settings: Any) -> RetryPolicy:
    """``policy``, or one built from the settings given (None = default); both is a ValueError."""
    given = sorted(name for name, value in settings.items() if value is not None)
    if policy is not None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a RetryPolicy or None, got {type(policy).__name__}")
        if given:
            raise ValueError(
                f"give either policy= or {', '.join(n + '=' for n in given)}, not both (the policy already sets them)"
            )
        return policy
    values: Dict[str, Any] = {
        name: (default if settings.get(name) is None else settings[name]) for name, default in _DEFAULTS.items()
    }
    values.update((k, v) for k, v in settings.items() if k not in _DEFAULTS and v is not None)
    return RetryPolicy(**values)


def _restore(tracker: TaskTracker, prompt: Mapping[str, Any], outcome: Any, max_retries: int) -> None:
    """Record a slot restored from the journal in the tracker: COMPLETED, or FAILED for good."""
    tid = prompt["task_id"]
    if tid in tracker and tracker.get(tid).is_terminal:
        return
    tracker.add(tid, prompt.get("category"), max_retries=max_retries, replace=True)
    tracker.claim(tid)
    tracker.start(tid)
    if isinstance(outcome, BaseException):
        tracker.fail(tid, error=outcome, transient=False)
    else:
        tracker.complete(tid, result=outcome)
