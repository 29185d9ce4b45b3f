"""The per-agent board of an ``orchestrate`` run: one :class:`Agent` row per prompt (state,
attempts, characters streamed, tokens, cost), updated from worker threads and read by the display."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Callable, Optional, Sequence

__all__ = ["Agent", "Board"]

_log = logging.getLogger("orchestrate")


@dataclasses.dataclass
class Agent:
    """The live state of one prompt's agent (a row of the progress table)."""

    index: int
    task_id: str
    category: Optional[str]
    label: str = ""  # the start of the prompt, for the live table
    state: str = "queued"  # queued, running, streaming, retrying, ok, failed, interrupted
    chars: int = 0  # characters received in the current attempt
    output_tokens: Optional[int] = None
    attempts: int = 0
    started: Optional[float] = None
    ended: Optional[float] = None
    cost_usd: Optional[float] = 0.0  # None: the price of the model is unknown
    usage: Optional[dict] = None
    error: str = ""

    @property
    def tokens(self) -> int:
        """Output tokens: exact once finished, else estimated from the text so far."""
        if self.output_tokens is not None:
            return self.output_tokens
        return math.ceil(self.chars / 4)

    def elapsed(self, now: float) -> float:
        """Seconds since the agent started (until it ended, once it has)."""
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else now) - self.started


class Board:
    """Per-agent progress, updated from worker threads and read by the display (one lock)."""

    TERMINAL = ("ok", "failed", "interrupted")

    def __init__(self, items: Sequence[dict], on_event: Optional[Callable[[str, Agent], None]] = None) -> None:
        self._lock = threading.Lock()
        self.agents = [
            Agent(i, it["task_id"], it.get("category"), " ".join(it["prompt"].split())[:60])
            for i, it in enumerate(items)
        ]
        self._on_event = on_event
        self.started = time.monotonic()
        self.interrupted = False
        self._ended = 0

    def _emit(self, kind: str, agent: Agent) -> None:
        if self._on_event is not None:
            snap = dataclasses.replace(agent)
            try:
                self._on_event(kind, snap)
            except Exception:  # the display must never break a run
                _log.debug("progress display failed", exc_info=True)

    def running(self, index: int, attempt: Optional[int] = None) -> None:
        """Agent ``index`` is sending attempt ``attempt`` (default: the next one)."""
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            new_attempt = attempt if attempt is not None else a.attempts + 1
            if a.state in ("running", "streaming") and new_attempt == a.attempts:
                return
            first = a.started is None
            if first:
                a.started = time.monotonic()
            a.state = "running"
            a.chars = 0
            a.attempts = new_attempt
            snap = a
        if first:
            self._emit("start", snap)

    def text(self, index: int, chunk: str) -> None:
        """Agent ``index`` received a chunk of text."""
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            first = a.started is None
            if first:
                a.started = time.monotonic()
                a.attempts = max(a.attempts, 1)
            a.state = "streaming"
            a.chars += len(chunk)
            snap = a
        if first:
            self._emit("start", snap)

    def retrying(self, index: int, error: str = "") -> None:
        """Agent ``index`` failed transiently and waits for its next attempt."""
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL or a.state == "retrying":
                return
            a.state = "retrying"
            a.error = error
            snap = a
        self._emit("retry", snap)

    def finish(
        self,
        index: int,
        status: str,
        *,
        output_tokens: Optional[int] = None,
        cost_usd: Optional[float] = 0.0,
        usage: Optional[dict] = None,
        error: str = "",
    ) -> None:
        """Agent ``index`` ended with ``status`` (ok, failed or interrupted); later calls are ignored."""
        with self._lock:
            a = self.agents[index]
            if a.state in self.TERMINAL:
                return
            a.state = status
            self._ended += 1
            a.ended = time.monotonic()
            if a.started is None:
                a.started = a.ended
            if output_tokens is not None:
                a.output_tokens = output_tokens
            a.cost_usd = cost_usd
            a.usage = usage
            a.error = error
            snap = a
        self._emit(status, snap)

    def ended_count(self) -> int:
        """How many agents have finished (ok, failed or interrupted)."""
        with self._lock:
            return self._ended

    def snapshot(self) -> list[Agent]:
        """Copies of every agent row (safe to read without the lock)."""
        with self._lock:
            return [dataclasses.replace(a) for a in self.agents]

    def is_finished(self, index: int) -> bool:
        """True once agent ``index`` has ended."""
        with self._lock:
            return self.agents[index].state in self.TERMINAL
