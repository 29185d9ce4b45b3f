"""The parallel fan-out behind ``invoke_parallel*``: many requests on a thread pool, results in
input order.

Each slot settles itself when its work ends (the pattern of ``concurrent.futures``' work items):
a reply, an error, or nothing (interrupted or never started). The run only reads the settled
slots, at the end or at the moment it is interrupted, so an interrupt or a Ctrl-C keeps every
finished result. Each request goes through its :class:`_agent.Agent` (the one send path, with
its tool loop and output schema when asked), one at a time per worker.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import _tracing
from _agent import Agent
from _errors import ClaudeInvocationError
from _interrupt import InterruptToken, subscribe, unsubscribe, wait_sliced
from _requests import PromptSpec
from _results import ClaudeResponse, ParallelResults, totals

logger = logging.getLogger("claude_client._fanout")

#: ``on_settle(index, outcome)``: a reply or an exception, called once per finished slot.
SettleHook = Callable[[int, Any], None]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during a parallel or managed run, with what had finished.

    The requests in flight are aborted; ``results`` is the run's :class:`ParallelResults` (the
    finished replies in their slots, None elsewhere) and ``errors`` maps index -> exception.
    Catch it as ``KeyboardInterrupt`` or by name:

    >>> try:
    ...     results = invoke_parallel(prompts)
    ... except RunInterrupted as stop:
    ...     results = stop.results          # keep what finished
    """

    def __init__(self, results: ParallelResults) -> None:
        done = sum(1 for r in results if isinstance(r, ClaudeResponse))
        super().__init__(f"interrupted: {done} of {len(results)} requests had finished")
        self.results = results
        self.errors = results.errors


RunInterrupted.__module__ = "claude_client"


def check_callbacks(callbacks: Any, n: int) -> None:
    """Validate a ``callbacks`` list: one callable (or None) per prompt."""
    if callbacks is None:
        return
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks must be a list (one per prompt) or None, got {type(callbacks).__name__}")
    if len(callbacks) != n:
        raise ValueError(f"callbacks has {len(callbacks)} entries but there are {n} prompts")
    for i, cb in enumerate(callbacks):
        if cb is not None and not callable(cb):
            raise TypeError(f"callbacks[{i}] must be callable or None")


class _Run:
    """One fan-out: the slots, the run's own token and the countdown to the last settled slot.

    ``done`` is set when every slot has settled; ``wake`` when the waiting thread must look
    (every slot settled, or the run's token interrupted).
    """

    def __init__(self, n: int, token: InterruptToken, on_settle: Optional[SettleHook]) -> None:
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException] = {}
        self.token = token
        self.on_settle = on_settle
        self.wake = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._left = n
        if n == 0:
            self.done.set()
            self.wake.set()

    def settle(self, index: int, outcome: Any, hook: bool = True) -> None:
        """Record slot ``index``: a reply, an exception, or None (interrupted / not started)."""
        if isinstance(outcome, BaseException):
            self.errors[index] = outcome
        elif outcome is not None:
            self.results[index] = outcome
        if hook and outcome is not None and self.on_settle is not None:
            try:
                self.on_settle(index, outcome)
            except Exception:
                logger.exception("a settle hook raised (slot %d)", index)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.done.set()
            self.wake.set()

    def snapshot(self, return_exceptions: bool) -> ParallelResults:
        results = list(self.results)
        errors = dict(self.errors)
        usage, cost = totals(results, errors=errors.values())  # what failed slots paid (a refusal) counts too
        if return_exceptions:
            for index, error in errors.items():
                results[index] = error
        return ParallelResults(results, usage=usage, cost_usd=cost, errors=errors)


def run_parallel(
    specs: list[PromptSpec],
    *,
    agent: Agent,
    max_workers: int,
    callbacks: Optional[Sequence[Optional[Callable[[str], Any]]]],
    return_exceptions: bool,
    interrupt_token: Optional[InterruptToken],
    pilot: bool,
    on_settle: Optional[SettleHook] = None,
    on_begin: Optional[Callable[[int], Any]] = None,
    seed: Optional[dict[int, Any]] = None,
) -> ParallelResults:
    """Send every spec through ``agent`` and return the settled slots (``specs[i].index`` is its
    slot; ``seed`` holds slots settled before the run, e.g. from a journal, that are not sent).
    ``on_begin(index)`` runs when a request starts, ``on_settle(index, outcome)`` when it settles.

    With ``pilot``, spec 0 goes first and the rest start when its response begins (prompt-cache
    reads instead of writes). Raises one ``ClaudeInvocationError`` carrying ``.results`` and
    ``.errors`` when something failed, unless ``return_exceptions``. A ``KeyboardInterrupt`` while
    waiting aborts what is in flight and is raised as :class:`RunInterrupted`.
    """
    seed = seed or {}
    token = InterruptToken()  # the run's own: the caller's token and a Ctrl-C both feed it
    run = _Run(len(specs), token, on_settle)
    for index, outcome in seed.items():
        run.settle(index, outcome, hook=False)
    specs = [spec for spec in specs if spec.index not in seed]
    n = len(specs)
    agent = agent.with_token(token)
    if n == 0 or (interrupt_token is not None and interrupt_token.is_interrupted()):
        return _finish(run, return_exceptions)
    link = subscribe(interrupt_token, token.interrupt) if interrupt_token is not None else None

    def work(spec: PromptSpec, on_start: Optional[Callable[[], Any]]) -> None:
        outcome: Any = None
        ended: Optional[BaseException] = None
        span = _tracing.NOOP_PROMPT
        try:
            if not token.is_interrupted():
                if on_begin is not None:
                    on_begin(spec.index)
                on_text = callbacks[spec.index] if callbacks is not None else None
                span = _tracing.prompt_span(spec.index)  # the SDK's request spans nest under it
                with span.current():
                    outcome = agent.run(
                        spec.params, on_text=on_text, on_start=on_start, tools=spec.extra.get("toolset")
                    )
        except ClaudeInvocationError as error:
            outcome = None if error.kind == "interrupted" else error
            ended = error
        except BaseException as error:  # a programming error: it fails its own slot only
            outcome = ended = error
        finally:
            span.settle(outcome, ended)
            run.settle(spec.index, outcome)

    wake_handle = subscribe(token, run.wake.set)
    executor = ThreadPoolExecutor(max_workers=min(max_workers, n), thread_name_prefix="claude-parallel")
    submitted: list[tuple[Future, int]] = []
    stop: Optional[BaseException] = None  # what ended the wait early (Ctrl-C), if anything
    try:
        rest = specs
        if pilot:
            released = threading.Event()
            release_handle = subscribe(token, released.set)
            pilot_future = _tracing.submit(executor, work, specs[0], released.set)
            pilot_future.add_done_callback(lambda _f: released.set())
            submitted.append((pilot_future, specs[0].index))
            wait_sliced(released)
            unsubscribe(token, release_handle)
            rest = specs[1:]
        for spec in rest:
            if token.is_interrupted():
                run.settle(spec.index, None)
            else:
                submitted.append((_tracing.submit(executor, work, spec, None), spec.index))
        wait_sliced(run.wake)
    except BaseException as exc:  # e.g. Ctrl-C while waiting: abort what is in flight
        stop = exc
    finally:
        unsubscribe(token, wake_handle)
        if link is not None:
            unsubscribe(interrupt_token, link)  # type: ignore[arg-type]
    if stop is not None or token.is_interrupted():
        token.interrupt()
        second = _stop_and_settle(executor, submitted, run)
        stop = stop or second
    else:
        executor.shutdown(wait=False)  # every slot has settled: the idle workers leave by themselves
    if isinstance(stop, KeyboardInterrupt) and not isinstance(stop, RunInterrupted):
        raise RunInterrupted(run.snapshot(return_exceptions)) from stop
    if stop is not None:
        raise stop
    return _finish(run, return_exceptions)


#: After an interrupt, how long the aborted workers get to settle their slots (they leave at once:
#: their sockets were shut down) before the results are read; a reply that completed during the
#: abort is kept and journaled. A worker stuck longer (in a user callback) is left behind.
_SETTLE_GRACE_S = 1.0


def _stop_and_settle(
    executor: ThreadPoolExecutor, submitted: Sequence[tuple[Future, int]], run: _Run
) -> Optional[KeyboardInterrupt]:
    """Stop the run: the queued requests never start (their slots settle now, as not started)
    and the aborted ones get up to :data:`_SETTLE_GRACE_S` to settle theirs. Returns as soon as
    every slot has settled (``concurrent.futures.wait`` would not: it never counts a cancelled
    future as done). A second Ctrl-C meanwhile ends the wait and is returned."""
    try:
        for future, index in submitted:
            if future.cancel():  # still queued: it will never run, so nothing else settles its slot
                run.settle(index, None)
        executor.shutdown(wait=False, cancel_futures=True)
        wait_sliced(run.done, _SETTLE_GRACE_S)
    except KeyboardInterrupt as exc:
        executor.shutdown(wait=False, cancel_futures=True)
        return exc
    return None


def _finish(run: _Run, return_exceptions: bool) -> ParallelResults:
    results = run.snapshot(return_exceptions)
    if results.errors and not return_exceptions:
        raise failure_of(results, len(results))
    return results


def failure_of(results: ParallelResults, n: int) -> ClaudeInvocationError:
    """The one error a run raises when some of its ``n`` requests failed."""
    errors = results.errors
    first_index = min(errors)
    first = errors[first_index]
    ok = sum(1 for r in results if isinstance(r, ClaudeResponse))
    message = (
        f"{len(errors)} of {n} parallel requests failed ({ok} succeeded); "
        f"first failure, prompts[{first_index}]: {first}"
    )
    if isinstance(first, ClaudeInvocationError):
        error = first.derive(message, results=results, errors=errors)
    else:
        error = ClaudeInvocationError(message, results=results, errors=errors)
    error.__cause__ = first
    return error
