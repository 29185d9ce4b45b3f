"""The progress of an ``orchestrate`` run on stderr: :class:`Display` draws the board with
:class:`_progress.Progress` (a live table on a terminal, plain lines otherwise) and
:class:`NoticeHandler` routes the library's warnings through it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import IO, Any, Optional

from _cli_board import Agent, Board
from _cli_common import PROG, fmt_cost, one_line

__all__ = ["Display", "NoticeHandler", "Settled"]


@dataclasses.dataclass(frozen=True)
class Settled:
    """What :meth:`_progress.Progress.settled` reads from a successful prompt."""

    usage: Optional[dict]
    cost_usd: Optional[float]


_STATE_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "streaming": "bold cyan",
    "retrying": "yellow",
    "ok": "green",
    "failed": "bold red",
    "interrupted": "magenta",
}
_STATE_ORDER = {"streaming": 0, "running": 0, "retrying": 0, "failed": 1, "interrupted": 1, "ok": 2, "queued": 3}


class Display:
    """The CLI's progress on stderr, drawn by :class:`_progress.Progress`.

    On a terminal (or in a notebook) a live bar with a line per agent; otherwise plain lines:
    one per finished (or retried) agent, plus the periodic totals of ``_progress``. Nothing
    with ``--quiet`` / ``--no-progress``.
    """

    def __init__(self, args: argparse.Namespace, stream: IO[str]) -> None:
        self.enabled = not (args.quiet or args.no_progress)
        self._stream = stream
        self._board: Optional[Board] = None
        self.progress: Any = None  # a _progress.Progress between start() and stop()

    def start(self, board: Board) -> None:
        """Start drawing ``board`` (a live display on a terminal)."""
        from _progress import Progress

        self._board = board
        self.progress = Progress(
            len(board.agents),
            progress=self.enabled,
            label=PROG,
            stream=self._stream,
            detail=self._detail,
            summary=False,
        )

    def stop(self) -> None:
        """Stop drawing and close the progress display (idempotent)."""
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.close()

    def notice(self, text: str) -> None:
        """A line on stderr that leaves a live display intact."""
        line = f"{PROG}: {text}"
        progress = self.progress
        if progress is not None:
            progress.write(line)
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def event(self, kind: str, agent: Agent) -> None:
        """Called by the board (from any thread) when an agent starts, retries or finishes."""
        progress = self.progress
        if progress is None:
            return
        if kind == "start":
            progress.started()
            return
        if kind in Board.TERMINAL:
            progress.settled(
                Settled(agent.usage, agent.cost_usd)
                if kind == "ok"
                else KeyboardInterrupt()
                if kind == "interrupted"
                else None
            )
        if not self.enabled or progress.live:
            return
        board = self._board
        done = f"[{board.ended_count()}/{len(board.agents)}] " if board is not None else ""
        if kind == "retry":
            progress.write(f"{PROG}: {done}{agent.task_id} retrying after: {agent.error}")
            return
        detail = f"{agent.tokens} tokens, {agent.elapsed(time.monotonic()):.1f}s"
        if agent.cost_usd:
            detail += f", {fmt_cost(agent.cost_usd)}"
        if kind == "failed" and agent.error:
            detail += f": {agent.error}"
        progress.write(f"{PROG}: {done}{agent.task_id} {kind} ({detail})")

    def _detail(self, room: int) -> Any:
        """The per-agent table of the live display (called by the render thread)."""
        from _progress import ProgressTable

        board = self._board
        if board is None:
            return None
        agents = board.snapshot()
        now = time.monotonic()
        shown = agents
        if len(agents) > room:
            ended = sorted((a for a in agents if a.state in Board.TERMINAL), key=lambda a: -(a.ended or 0))
            active = [a for a in agents if a.state in ("running", "streaming", "retrying")]
            queued = [a for a in agents if a.state == "queued"]
            shown = sorted((active + ended + queued)[:room], key=lambda a: (_STATE_ORDER.get(a.state, 3), a.index))
        rows = [
            (
                str(a.index),
                a.task_id[:30],
                a.label,
                (a.state, _STATE_STYLE.get(a.state, "")),
                str(a.tokens),
                f"{a.elapsed(now):.1f}s" if a.started is not None else "",
            )
            for a in shown
        ]
        return ProgressTable(
            columns=("#", "task", "prompt", "state", "tokens", "elapsed"),
            rows=rows,
            right=frozenset({"#", "tokens", "elapsed"}),
            hidden=len(agents) - len(shown),
        )


class NoticeHandler(logging.Handler):
    """Routes the library's warnings through the progress display (so a live display stays intact)."""

    def __init__(self, display: Display) -> None:
        super().__init__(logging.WARNING)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        """Show one warning as a notice line."""
        try:
            self._display.notice(f"{record.levelname.lower()}: {one_line(record.getMessage())}")
        except Exception:
            self.handleError(record)
