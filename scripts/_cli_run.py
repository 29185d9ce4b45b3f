"""The run of ``orchestrate``: the prompts go through
:func:`orchestration.invoke_parallel_managed` on a worker thread while the main thread draws the
progress, turns Ctrl-C / SIGTERM into an interrupt, and then writes every result in input order.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from typing import IO, Any, Callable, Optional

from _cli_board import Board
from _cli_common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, PROG, UsageError, fmt_cost, one_line
from _cli_display import Display
from _cli_output import Outcome, make_record, outcome_error, outcome_ok, write_records

__all__ = ["CLI_ONLY_KEYS", "Execution", "execute", "library_items", "run_options", "validate_with_library"]

#: Signals that stop a run like Ctrl-C: in-flight requests aborted, finished results written.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Keys the CLI consumes itself; the rest are passed to the library as per-prompt keys.
CLI_ONLY_KEYS = frozenset({"task_id", "category"})

#: How long after Ctrl-C the CLI waits for the library to hand back its results before it
#: writes what it has and leaves anyway (the whole exit must stay within 2 s).
INTERRUPT_GRACE_S = 1.2


class Execution:
    """Runs the prompts through the library on a worker thread; the main thread waits and draws.

    The run is :func:`orchestration.invoke_parallel_managed` with a :class:`task_state.TaskTracker`
    that the main thread polls (:meth:`sync`) for per-agent states, retries and completed results
    while the run is going.
    """

    def __init__(
        self,
        items: list[dict],
        args: argparse.Namespace,
        shared_system: Optional[str],
        board: Board,
        token: Any,
        connection: Optional[dict] = None,
    ):
        self.items = items
        self.connection = dict(connection or {})
        self.args = args
        self.shared_system = shared_system
        self.board = board
        self.token = token
        self.outcomes: Optional[list[Outcome]] = None
        self.crash: Optional[BaseException] = None
        self.done = threading.Event()
        from task_state import TaskTracker

        self.tracker = TaskTracker(max_retries=args.retries)
        self._seen: dict[str, float] = {}
        self._index = {it["task_id"]: i for i, it in enumerate(items)}
        self._thread = threading.Thread(target=self._main, name="orchestrate-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            self.outcomes = self._run_managed()
        except BaseException as exc:  # reported by the main thread
            self.crash = exc
        finally:
            self.done.set()

    # -- the run ------------------------------------------------------------------------------

    def _callbacks(self) -> list[Callable[[str], None]]:
        board = self.board

        def make(i: int) -> Callable[[str], None]:
            def on_text(chunk: str) -> None:
                board.text(i, chunk)

            return on_text

        return [make(i) for i in range(len(self.items))]

    def _common(self) -> dict:
        from _models import DEFAULT_MODEL

        return dict(
            model=self.args.model or DEFAULT_MODEL,
            max_tokens=self.args.max_tokens,
            max_workers=self.args.workers,
            shared_system=self.shared_system,
            cache_shared_system=self.args.cache,
            **run_options(self.args),
            **self.connection,
        )

    def _run_managed(self) -> list[Outcome]:
        from orchestration import invoke_parallel_managed

        # return_exceptions: failures come back in their slots (a managed run never raises for them)
        results = invoke_parallel_managed(
            [dict(it) for it in self.items],
            max_retries=self.args.retries,
            stall_timeout=self.args.stall_timeout,
            interrupt_token=self.token,
            tracker=self.tracker,
            callbacks=self._callbacks(),
            return_exceptions=True,
            **self._common(),
        )
        outcomes = []
        for i, (item, res) in enumerate(zip(self.items, results)):
            oc = self._outcome_from_tracker(item["task_id"], res)
            _finish_on_board(self.board, i, oc)
            outcomes.append(oc)
        return outcomes

    # -- reading the tracker ------------------------------------------------------------------

    def _info(self, task_id: str) -> Any:
        try:
            return self.tracker.get(task_id)
        except (KeyError, LookupError, ValueError):
            return None

    def _outcome_from_tracker(self, task_id: str, result: Any = None) -> Outcome:
        """Outcome of one task from the run's result slot and its tracker record."""
        from task_state import TaskState, TerminalReason

        if isinstance(result, BaseException):
            return outcome_error(result)
        if result is not None:
            return outcome_ok(result)
        info = self._info(task_id)
        if info is None:
            return (
                _interrupted_outcome()
                if self.token.is_interrupted()
                else Outcome("failed", error_kind="unknown", error="the task did not run")
            )
        if info.state is TaskState.COMPLETED and info.result is not None:
            return outcome_ok(info.result)
        reason = info.terminal_reason
        if (
            reason is TerminalReason.INTERRUPTED
            or (reason is None and self.token.is_interrupted())
            or (reason is TerminalReason.CANCELLED and self.token.is_interrupted())
        ):
            return _interrupted_outcome()
        if info.error is not None:
            oc = outcome_error(info.error)
            if oc.status == "failed" and reason is TerminalReason.RETRIES_EXHAUSTED:
                oc.error = f"{oc.error} (after {info.attempts} attempts)"
            return oc
        return Outcome(
            "failed", error_kind=str(reason) if reason else "unknown", error=f"task ended: {reason or info.state}"
        )

    def sync(self) -> None:
        """Copy what the tracker knows onto the board (called by the main thread)."""
        from task_state import TaskState

        try:
            infos = self.tracker.all()
        except Exception:  # never let the display break the run
            return
        index = self._index
        for info in infos:
            if self._seen.get(info.task_id) == info.updated_at:
                continue
            self._seen[info.task_id] = info.updated_at
            i = index.get(info.task_id)
            if i is None or self.board.is_finished(i):
                continue
            state = info.state
            if state is TaskState.RUNNING:
                self.board.running(i, attempt=info.attempts)
            elif state is TaskState.RETRY_QUEUED or (state is TaskState.FAILED and info.terminal_reason is None):
                self.board.retrying(i, one_line(str(info.error), 160) if info.error else "")
            elif info.terminal_reason is not None:
                if state is TaskState.COMPLETED and info.result is None:
                    continue  # the result list will tell
                _finish_on_board(self.board, i, self._outcome_from_tracker(info.task_id))

    def partial_outcomes(self) -> list[Outcome]:
        """After an abandoned interrupt: completed tasks from the tracker, the rest interrupted."""
        from task_state import TaskState

        outcomes = []
        for it in self.items:
            oc = _interrupted_outcome()
            info = self._info(it["task_id"])
            if info is not None and info.state is TaskState.COMPLETED and info.result is not None:
                oc = outcome_ok(info.result)
            outcomes.append(oc)
        return outcomes


def _interrupted_outcome() -> Outcome:
    return Outcome("interrupted", error_kind="interrupted", error="interrupted before it finished")


def library_items(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in it.items() if k not in CLI_ONLY_KEYS} for it in items]


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`orchestration.invoke_parallel_managed` set by ``--tool``
    (``args.tool_functions``, loaded by :func:`_cli_tools.load_tools`), ``--max-tool-turns``,
    ``--max-cost``, ``--budget``, ``--journal`` and ``--retry-failed``; options not given are left out."""
    options: dict[str, Any] = {}
    tools = getattr(args, "tool_functions", None)
    if tools:
        options["tools"] = list(tools)
    if getattr(args, "max_tool_turns", None) is not None:
        options["max_tool_turns"] = args.max_tool_turns
    if getattr(args, "max_cost", None) is not None:
        options["max_cost_usd"] = args.max_cost
        if getattr(args, "budget", None):
            options["budget"] = args.budget
    if getattr(args, "journal", None):
        options["journal"] = args.journal
        options["retry_failed"] = bool(getattr(args, "retry_failed", False))
    return options


def validate_with_library(items: list[dict], args: argparse.Namespace, shared_system: Optional[str]) -> None:
    """Let the library validate every prompt and the ``--tool`` functions before any request is sent
    (ValueError / TypeError -> usage)."""
    from _models import DEFAULT_MODEL
    from _requests import prompt_specs  # the library's one request builder
    from _tools import ToolSet  # the library's tool schemas (from signature and docstring)

    try:
        prompt_specs(
            library_items(items),
            shared_system=shared_system,
            cache_shared_system=args.cache,
            model=args.model or DEFAULT_MODEL,
            max_tokens=args.max_tokens,
        )
        ToolSet.from_user(run_options(args).get("tools"), "--tool")
    except (ValueError, TypeError) as exc:
        raise UsageError(one_line(str(exc))) from None


def _finish_on_board(board: Board, i: int, oc: Outcome) -> None:
    board.finish(
        i,
        oc.status,
        output_tokens=(oc.usage or {}).get("output_tokens"),
        cost_usd=oc.cost_usd if oc.status == "ok" else 0.0,
        usage=oc.usage,
        error=oc.error or "",
    )


def execute(
    items: list[dict],
    args: argparse.Namespace,
    shared_system: Optional[str],
    display: Display,
    fmt: str,
    out: IO[str],
    stderr: IO[str],
    connection: Optional[dict] = None,
) -> int:
    import claude_client

    token = claude_client.InterruptToken()
    board = Board(items, on_event=display.event)
    run = Execution(items, args, shared_system, board, token, connection)
    interrupted_at: list[float] = []
    # Appended to by the signal handler and nothing else: list.append takes no lock a worker
    # thread may hold. The wait loop below notices it within ~0.05 s and does the interrupting.
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals_seen.append(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} if in_main_thread else {}
    sync_every = 0.05 if len(items) <= 200 else 0.25
    display.start(board)
    try:
        run.start()
        last_sync = 0.0
        while not run.done.wait(0.05):
            if signals_seen and not interrupted_at:
                interrupted_at.append(time.monotonic())
                board.interrupted = True
                token.interrupt()
            now = time.monotonic()
            if now - last_sync >= sync_every:
                run.sync()
                last_sync = now
            if interrupted_at and (
                len(signals_seen) > 1  # a second signal: stop waiting for the library
                or time.monotonic() - interrupted_at[0] > INTERRUPT_GRACE_S
            ):
                break
        run.sync()
    finally:
        display.stop()
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
    exit_interrupted = 128 + signals_seen[0] if signals_seen else EXIT_INTERRUPTED
    if signals_seen and not interrupted_at:  # the signal came as the run finished
        interrupted_at.append(time.monotonic())

    if run.crash is not None and run.outcomes is None and not interrupted_at:
        exc = run.crash
        if isinstance(exc, (ValueError, TypeError)):
            raise UsageError(one_line(str(exc)))
        stderr.write(f"{PROG}: error: {one_line(f'{type(exc).__name__}: {exc}')}\n")
        return EXIT_FAILED
    outcomes = run.outcomes
    abandoned = outcomes is None
    if outcomes is None:
        # Ctrl-C and the library did not hand its results back in time: completed results come
        # from the tracker, the rest are reported as interrupted.
        outcomes = run.partial_outcomes()
    records = [make_record(i, it, oc) for i, (it, oc) in enumerate(zip(items, outcomes))]
    write_records(records, fmt, out)
    ok = sum(r["status"] == "ok" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    interrupted = sum(r["status"] == "interrupted" for r in records)
    cost = sum(r["cost_usd"] or 0.0 for r in records)
    over_budget = sum(r["error_kind"] == "budget" for r in records)
    if not args.quiet:
        cap = getattr(args, "max_cost", None)
        capped = f" ({over_budget} not started: over --max-cost ${cap:g})" if over_budget and cap is not None else ""
        stderr.write(
            f"{PROG}: {ok} ok, {failed} failed{capped}"
            f"{f', {interrupted} interrupted' if interrupted else ''}, "
            f"{fmt_cost(cost)}, {time.monotonic() - board.started:.1f}s\n"
        )
        stderr.flush()
    if interrupted_at:
        if abandoned:
            # Worker threads may still be unwinding: leave now, the results are written.
            try:
                out.flush()
                stderr.flush()
            finally:
                os._exit(exit_interrupted)
        return exit_interrupted
    return EXIT_OK if failed == 0 and interrupted == 0 else EXIT_FAILED
