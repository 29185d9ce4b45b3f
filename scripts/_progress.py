"""Live progress of a run of many requests: the one progress piece of the library and the CLI.

A :class:`Progress` counts requests that start and settle (finish, well or badly), sums their
tokens and cost, and either draws a live bar or hands a :class:`ProgressSnapshot` to a callable
of yours on every update.

How the bar is drawn (``progress=True``):

* in a Jupyter notebook (an IPython kernel: ``get_ipython()`` returns a ``ZMQInteractiveShell``)
  or on a terminal: with ``rich`` if it can be imported, else with ``tqdm.auto``;
* otherwise (stderr not a terminal, ``TERM=dumb``, neither library installed): plain lines on
  the stream, at most one every ~2 s plus a final one, never a terminal control code.

``rich`` and ``tqdm`` are optional: they are imported only when a bar is created.

Workers only update counters under one lock (cheap enough for runs of 10,000 prompts); the bar
is redrawn by a background thread at most ~10 times a second, so a worker never waits on the
terminal. A callable is called on the updating thread, under the lock, so its snapshots arrive
in order; keep it quick. If it raises, the error is logged once and the callable is disabled:
it never breaks the run.

Usage::

    from _progress import Progress, ProgressSnapshot

    with Progress(len(prompts), label="review") as progress:   # a live bar on stderr
        for prompt in prompts:                                 # (typically in worker threads)
            progress.started()
            try:
                progress.settled(invoke(prompt))               # .usage and .cost_usd are summed
            except Exception as exc:
                progress.settled(exc)                          # counted as failed

    def report(snap: ProgressSnapshot) -> None:                # or receive every update yourself
        log.info("%d/%d done, %d failed", snap.done, snap.total, snap.failed)

    with Progress(100, progress=report) as progress:
        ...
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Sequence, Union

__all__ = ["Progress", "ProgressSnapshot", "ProgressTable", "in_notebook"]

_log = logging.getLogger("claude_client._progress")

#: Seconds between redraws of a live bar (at most ~10 per second).
REDRAW_INTERVAL_S = 0.1
#: Seconds between plain progress lines (non-terminal output).
PLAIN_INTERVAL_S = 2.0

_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclasses.dataclass(frozen=True)
class ProgressSnapshot:
    """The state of a run at one moment (immutable; safe to keep or pass between threads).

    ``done = succeeded + failed + interrupted``. ``running`` is None until :meth:`Progress.started`
    is used. ``cost_usd`` is None once any settled result reported an unknown cost (``None``).
    ``eta_s`` is None before the first request settles. ``seq`` increases with every update.
    """

    total: int
    done: int
    succeeded: int
    failed: int
    running: Optional[int]
    input_tokens: int
    output_tokens: int
    cost_usd: Optional[float]
    elapsed_s: float
    eta_s: Optional[float]
    interrupted: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    label: str = ""
    seq: int = 0
    final: bool = False

    @property
    def remaining(self) -> int:
        """Requests not settled yet (never negative)."""
        return max(0, self.total - self.done)

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (1.0 for an empty run)."""
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def tokens(self) -> int:
        """All tokens: input, output, cache writes and cache reads."""
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclasses.dataclass(frozen=True)
class ProgressTable:
    """Optional per-item rows drawn above a rich bar (see ``detail=`` of :class:`Progress`).

    A cell is a string or ``(text, style)`` with a rich style name (``"green"``, ``"bold red"``);
    text is shown verbatim (no markup). ``right`` names right-justified columns; ``hidden``
    says how many rows were left out (shown under the table).
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Union[str, tuple[str, str]]]]
    right: frozenset[str] = frozenset()
    hidden: int = 0


def in_notebook() -> bool:
    """True inside a Jupyter kernel (``get_ipython()`` is a ``ZMQInteractiveShell`` or Colab's).

    Never imports IPython: it looks for the ``get_ipython`` IPython puts in builtins, or an
    IPython module that is already imported.
    """
    import builtins

    getter = getattr(builtins, "get_ipython", None)
    if getter is None:
        ipython_mod = sys.modules.get("IPython")
        getter = getattr(ipython_mod, "get_ipython", None) if ipython_mod is not None else None
    if getter is None:
        return False
    try:
        shell = getter()
    except Exception:
        return False
    if shell is None:
        return False
    cls = type(shell)
    return cls.__name__ == "ZMQInteractiveShell" or "google.colab" in f"{cls.__module__}.{cls.__name__}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _field(obj: Any, name: str) -> int:
    """A usage field from an object or a mapping; anything unusable counts as 0."""
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def _fmt_cost(usd: Optional[float]) -> str:
    if usd is None:
        return "$?"
    return f"${usd:.4f}" if usd >= 0.01 or usd == 0 else f"${usd:.6f}"


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def describe(snap: ProgressSnapshot) -> str:
    """One line for a snapshot: ``done 3/10  failed 1  running 4  tokens 1,234  cost $0.01  ...``."""
    parts = [f"done {snap.done}/{snap.total}", f"failed {snap.failed}"]
    if snap.interrupted:
        parts.append(f"interrupted {snap.interrupted}")
    if snap.running is not None:
        parts.append(f"running {snap.running}")
    parts += [f"tokens {snap.tokens:,}", f"cost {_fmt_cost(snap.cost_usd)}", _fmt_seconds(snap.elapsed_s)]
    if not snap.final and snap.done < snap.total:
        parts.append(f"ETA {_fmt_seconds(snap.eta_s)}")
    return "  ".join(parts)


# ----------------------------------------------------------------------------- renderers


class _Renderer:
    """Draws snapshots; called only from the render thread (and from close/write)."""

    name = "none"
    live = False

    def draw(self, snap: ProgressSnapshot) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self, snap: ProgressSnapshot) -> None:
        pass


class _StreamWriter:
    """Writes whole lines to a stream; output errors are swallowed (progress is best-effort)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def line(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except UnicodeEncodeError:
            enc = getattr(self.stream, "encoding", None) or "ascii"
            try:
                self.stream.write(text.encode(enc, "backslashreplace").decode(enc) + "\n")
                self.stream.flush()
            except (OSError, ValueError, LookupError):
                pass
        except (OSError, ValueError, AttributeError):  # AttributeError: no stream (sys.stderr is None)
            pass


class _PlainRenderer(_Renderer):
    """Plain lines: at most one every ``interval`` seconds while the run changes, plus a final one."""

    name = "plain"

    def __init__(self, stream: IO[str], label: str, summary: bool, interval: float = PLAIN_INTERVAL_S):
        self._out = _StreamWriter(stream)
        self._prefix = f"{label}: " if label else ""
        self._summary = summary
        self._interval = interval
        self._last_at = time.monotonic()
        self._last_seq = 0

    def draw(self, snap: ProgressSnapshot) -> None:
        now = time.monotonic()
        if snap.seq == self._last_seq or now - self._last_at < self._interval:
            return
        self._last_at, self._last_seq = now, snap.seq
        self._out.line(self._prefix + describe(snap))

    def write(self, text: str) -> None:
        self._out.line(text)

    def close(self, snap: ProgressSnapshot) -> None:
        if self._summary:
            self._out.line(self._prefix + describe(snap))


class _RichRenderer(_Renderer):
    """A rich bar (and optional per-item table), in a terminal or a notebook."""

    name = "rich"
    live = True

    def __init__(
        self,
        stream: IO[str],
        label: str,
        total: int,
        notebook: bool,
        detail: Optional[Callable[[int], Optional[ProgressTable]]],
    ):
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=stream, stderr=stream is sys.stderr, force_jupyter=True if notebook else None)
        self._label = label
        self._detail = detail
        self._live = Live(
            console=self._console, auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False
        )
        self._live.start()

    def _renderable(self, snap: ProgressSnapshot) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        bar = Table.grid(padding=(0, 1))
        bar.add_column(no_wrap=True)
        bar.add_column(no_wrap=True)
        bar.add_column(no_wrap=True, overflow="ellipsis")
        bar.add_row(
            Text(self._label, style="bold") if self._label else Text(""),
            ProgressBar(total=max(snap.total, 1), completed=min(snap.done, max(snap.total, 1)), width=20),
            Text(describe(snap), style="bold"),
        )
        if self._detail is None:
            return bar
        table_spec = self._detail(max(3, self._console.size.height - 4))
        if table_spec is None:
            return bar
        table = Table(box=None, pad_edge=False, expand=False, header_style="bold")
        for col in table_spec.columns:
            table.add_column(
                col,
                justify="right" if col in table_spec.right else "left",
                no_wrap=True,
                overflow="ellipsis",
                max_width=40,
            )
        for row in table_spec.rows:
            table.add_row(*[Text(c[0], style=c[1]) if isinstance(c, tuple) else Text(str(c)) for c in row])
        parts: list[Any] = [table]
        if table_spec.hidden:
            parts.append(Text(f"({table_spec.hidden} rows hidden)", style="dim"))
        parts.append(bar)
        return Group(*parts)

    def draw(self, snap: ProgressSnapshot) -> None:
        self._live.update(self._renderable(snap), refresh=True)

    def write(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False, soft_wrap=True)

    def close(self, snap: ProgressSnapshot) -> None:
        try:
            self._live.update(self._renderable(snap), refresh=True)
        finally:
            self._live.stop()


class _TqdmRenderer(_Renderer):
    """A ``tqdm.auto`` bar (a widget in notebooks, text in terminals)."""

    name = "tqdm"
    live = True

    def __init__(self, stream: IO[str], label: str, total: int, notebook: bool):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._bar = tqdm(
            total=total,
            desc=label or None,
            file=stream,
            dynamic_ncols=True,
            mininterval=REDRAW_INTERVAL_S,
            leave=True,
            unit="req",
        )

    def _postfix(self, snap: ProgressSnapshot) -> str:
        text = f"failed={snap.failed} tokens={snap.tokens:,} cost={_fmt_cost(snap.cost_usd)}"
        return text + (f" interrupted={snap.interrupted}" if snap.interrupted else "")

    def draw(self, snap: ProgressSnapshot) -> None:
        self._bar.n = snap.done
        self._bar.set_postfix_str(self._postfix(snap), refresh=False)
        self._bar.refresh()

    def write(self, text: str) -> None:
        self._tqdm.write(text, file=self._stream)

    def close(self, snap: ProgressSnapshot) -> None:
        try:
            self.draw(snap)
        finally:
            self._bar.close()


# ----------------------------------------------------------------------------- Progress

ProgressArg = Union[bool, Callable[[ProgressSnapshot], Any]]


class Progress:
    """Thread-safe progress of ``total`` requests, drawn live or handed to a callable.

    :param total: how many requests (slots) the run has.
    :param progress: ``True`` draws a live bar on ``stream``; a callable receives a
        :class:`ProgressSnapshot` on every update instead; ``False`` only counts
        (:meth:`snapshot` still works).
    :param label: shown before the bar / at the start of plain lines.
    :param stream: where to draw (default: ``sys.stderr`` at construction time).
    :param backend: ``"rich"``, ``"tqdm"`` or ``"plain"`` to force one; None chooses (see module).
    :param detail: rich only: called on the render thread with the number of rows that fit,
        returns a :class:`ProgressTable` drawn above the bar (or None).
    :param summary: write a final plain line on :meth:`close` (plain mode).

    >>> seen = []
    >>> with Progress(2, progress=seen.append) as p:
    ...     p.started(); p.settled(None)
    >>> seen[-1].failed, seen[-1].done, seen[-1].final
    (1, 1, True)
    """

    def __init__(
        self,
        total: int,
        progress: ProgressArg = True,
        label: str = "",
        *,
        stream: Optional[IO[str]] = None,
        backend: Optional[str] = None,
        detail: Optional[Callable[[int], Optional[ProgressTable]]] = None,
        summary: bool = True,
    ):
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total must be an integer >= 0, got {total!r}")
        if backend not in (None, "rich", "tqdm", "plain"):
            raise ValueError(f"backend must be 'rich', 'tqdm', 'plain' or None, got {backend!r}")
        self.total = total
        self.label = label
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self._succeeded = self._failed = self._interrupted = 0
        self._started = 0
        self._running: Optional[int] = None
        self._tokens = dict.fromkeys(_USAGE_FIELDS, 0)
        self._cost: Optional[float] = 0.0
        self._seq = 0
        self._closed = False
        self._callback: Optional[Callable[[ProgressSnapshot], Any]] = None
        self._renderer: _Renderer = _Renderer()
        self._stream: IO[str] = stream if stream is not None else sys.stderr
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.notebook = False
        if callable(progress):
            self._callback = progress
        elif progress:
            self.notebook = in_notebook()
            self._renderer = self._make_renderer(backend, detail, summary)
            if self._renderer.live or isinstance(self._renderer, _PlainRenderer):
                self._thread = threading.Thread(target=self._render_loop, name="progress-render", daemon=True)
                self._thread.start()

    # -- choosing a renderer ------------------------------------------------------------------

    def _make_renderer(self, backend: Optional[str], detail: Any, summary: bool) -> _Renderer:
        stream = self._stream
        live_ok = self.notebook or (_isatty(stream) and os.environ.get("TERM") != "dumb")
        choices = [backend] if backend else (["rich", "tqdm"] if live_ok else [])
        for name in choices:
            try:
                if name == "rich":
                    return _RichRenderer(stream, self.label, self.total, self.notebook, detail)
                if name == "tqdm":
                    return _TqdmRenderer(stream, self.label, self.total, self.notebook)
            except ImportError:
                continue
            except Exception:  # a display library that cannot start here: fall back
                _log.debug("progress: %s display unavailable", name, exc_info=True)
                continue
        return _PlainRenderer(stream, self.label, summary)

    @property
    def backend(self) -> str:
        """How progress is shown: ``"rich"``, ``"tqdm"``, ``"plain"``, ``"callable"`` or ``"none"``."""
        return "callable" if self._callback is not None else self._renderer.name

    @property
    def live(self) -> bool:
        """True when a bar is redrawn in place (rich or tqdm), False for plain lines or none."""
        return self._renderer.live

    # -- updates (any thread) -----------------------------------------------------------------

    def started(self) -> None:
        """A request began (makes ``running`` known)."""
        with self._lock:
            self._started += 1
            self._running = (self._running or 0) + 1
            self._updated()

    def settled(self, result: Any = None) -> None:
        """One slot finished: a result (``.usage`` and ``.cost_usd`` are summed), or an exception
        or None for a failure (an exception whose ``kind`` is ``"interrupted"``, or a
        ``KeyboardInterrupt``, counts as interrupted)."""
        failure = result is None or isinstance(result, BaseException)
        interrupted = failure and (
            isinstance(result, KeyboardInterrupt) or getattr(result, "kind", None) == "interrupted"
        )
        usage = None if failure else getattr(result, "usage", None)
        cost = None if failure else getattr(result, "cost_usd", None)
        with self._lock:
            if self._running:
                self._running -= 1
            if interrupted:
                self._interrupted += 1
            elif failure:
                self._failed += 1
            else:
                self._succeeded += 1
                if usage is not None:
                    for name in _USAGE_FIELDS:
                        self._tokens[name] += _field(usage, name)
                if cost is None:
                    self._cost = None
                elif self._cost is not None:
                    try:
                        value = float(cost)
                    except (TypeError, ValueError):
                        value = math.nan
                    self._cost = self._cost + value if math.isfinite(value) else None
            self._updated()

    def _updated(self) -> None:
        """Called with the lock held after every change."""
        self._seq += 1
        if self._callback is not None:
            self._deliver(self._snapshot_locked())
        else:
            self._wake.set()

    def _deliver(self, snap: ProgressSnapshot) -> None:
        callback = self._callback
        if callback is None:
            return
        try:
            callback(snap)
        except Exception:
            self._callback = None
            _log.warning("progress callback %r raised; it is disabled for the rest of the run", callback, exc_info=True)

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        """The current state (any thread)."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self, final: bool = False) -> ProgressSnapshot:
        done = self._succeeded + self._failed + self._interrupted
        elapsed = time.monotonic() - self._t0
        if done >= self.total:
            eta: Optional[float] = 0.0
        elif done == 0:
            eta = None
        else:
            eta = elapsed / done * (self.total - done)
        return ProgressSnapshot(
            total=self.total,
            done=done,
            succeeded=self._succeeded,
            failed=self._failed,
            running=self._running,
            input_tokens=self._tokens["input_tokens"],
            output_tokens=self._tokens["output_tokens"],
            cost_usd=self._cost,
            elapsed_s=elapsed,
            eta_s=eta,
            interrupted=self._interrupted,
            cache_creation_input_tokens=self._tokens["cache_creation_input_tokens"],
            cache_read_input_tokens=self._tokens["cache_read_input_tokens"],
            label=self.label,
            seq=self._seq,
            final=final,
        )

    # -- output -------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Write a line of text without breaking the bar (above it when it is live)."""
        with self._lock:
            renderer = self._renderer
        try:
            if isinstance(renderer, (_PlainRenderer, _RichRenderer, _TqdmRenderer)):
                renderer.write(text)
            else:
                _StreamWriter(self._stream).line(text)
        except Exception:
            _log.debug("progress: write failed", exc_info=True)

    def _render_loop(self) -> None:
        renderer = self._renderer
        interval = REDRAW_INTERVAL_S
        while not self._closed:
            self._wake.wait(interval if renderer.live else PLAIN_INTERVAL_S / 4)
            if self._closed:
                return
            self._wake.clear()
            snap = self.snapshot()
            try:
                renderer.draw(snap)
            except Exception:
                self._fallback(renderer)
                renderer = self._renderer
            time.sleep(interval)  # at most ~10 redraws per second

    def _fallback(self, failed: _Renderer) -> None:
        _log.warning("progress: the %s display failed; using plain lines", failed.name, exc_info=True)
        try:
            failed.close(self.snapshot())
        except Exception:
            pass
        with self._lock:
            self._renderer = _PlainRenderer(self._stream, self.label, True)

    def close(self) -> None:
        """Stop drawing and show the final state (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            final = self._snapshot_locked(final=True)
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self._callback is not None:
            with self._lock:
                self._deliver(final)
            return
        try:
            self._renderer.close(final)
        except Exception:
            _log.debug("progress: closing the %s display failed", self._renderer.name, exc_info=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"Progress({s.done}/{s.total}, failed={s.failed}, backend={self.backend!r})"
