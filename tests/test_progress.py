"""Tests of ``_progress``: the live progress of the library and the CLI.

Counting is tested in-process with many real threads; every rendering path (plain lines on a
pipe, a live bar on a pseudo-terminal, a notebook-like kernel, no optional libraries at all) is
tested in a child process, so the environment each path depends on is the real one.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from _progress import Progress, ProgressSnapshot

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
ESC = "\x1b"


@dataclasses.dataclass
class Usage:
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclasses.dataclass
class Result:
    """Shaped like the library's results: ``.usage`` and ``.cost_usd``."""

    text: str
    usage: Usage
    cost_usd: Optional[float]


class Interrupted(Exception):
    kind = "interrupted"


# ----------------------------------------------------------------------------- counting


def test_callable_gets_exact_ordered_snapshots_from_many_threads():
    threads, per_thread = 16, 250
    seen: list[ProgressSnapshot] = []
    progress = Progress(threads * per_thread, progress=seen.append, label="hammer")
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            progress.started()
            if i % 10 == 3:
                progress.settled(RuntimeError("boom"))
            elif i % 10 == 7:
                progress.settled(None)
            elif i % 50 == 11:
                progress.settled(Interrupted("stopped"))
            else:
                progress.settled(Result("ok", Usage(2, 3, 5, 7), 0.25))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    progress.close()

    per_failed = sum(1 for i in range(per_thread) if i % 10 in (3, 7))
    per_interrupted = sum(1 for i in range(per_thread) if i % 10 not in (3, 7) and i % 50 == 11)
    per_ok = per_thread - per_failed - per_interrupted
    final = seen[-1]
    assert final.final and final.label == "hammer"
    assert final.total == final.done == threads * per_thread
    assert final.failed == threads * per_failed
    assert final.interrupted == threads * per_interrupted
    assert final.succeeded == threads * per_ok
    assert final.running == 0
    ok = threads * per_ok
    assert (final.input_tokens, final.output_tokens) == (2 * ok, 3 * ok)
    assert (final.cache_creation_input_tokens, final.cache_read_input_tokens) == (5 * ok, 7 * ok)
    assert final.tokens == 17 * ok
    assert final.cost_usd == pytest.approx(0.25 * ok)
    assert final.eta_s == 0.0 and final.remaining == 0 and final.fraction == 1.0
    # One snapshot per update, delivered in order: seq and done never go backwards.
    assert len(seen) == 2 * threads * per_thread + 1
    assert [s.seq for s in seen[:-1]] == list(range(1, len(seen)))
    assert all(a.done <= b.done for a, b in zip(seen, seen[1:]))
    assert not any(s.final for s in seen[:-1])


def test_cost_becomes_none_once_a_result_has_an_unknown_cost():
    seen: list[ProgressSnapshot] = []
    with Progress(3, progress=seen.append) as progress:
        progress.settled(Result("a", Usage(1, 1), 0.5))
        assert progress.snapshot().cost_usd == 0.5
        progress.settled(Result("b", Usage(1, 1), None))  # e.g. a model without a known price
        progress.settled(Result("c", Usage(1, 1), 0.5))
    assert [s.cost_usd for s in seen] == [0.5, None, None, None]
    assert seen[-1].input_tokens == 3 and seen[-1].succeeded == 3


def test_snapshot_before_anything_and_eta():
    with Progress(4, progress=False) as progress:
        snap = progress.snapshot()
        assert (snap.done, snap.running, snap.cost_usd, snap.eta_s) == (0, None, 0.0, None)
        assert progress.backend == "none" and not progress.live
        progress.started()
        progress.settled(Result("x", Usage(1, 2), 0.0))
        snap = progress.snapshot()
        assert snap.running == 0 and snap.done == 1 and snap.eta_s is not None and snap.eta_s >= 0
    with pytest.raises(ValueError):
        Progress(-1)
    with pytest.raises(ValueError):
        Progress(1, backend="curses")


def test_a_raising_callable_is_logged_once_and_disabled(caplog):
    calls = []

    def bad(snap: ProgressSnapshot) -> None:
        calls.append(snap.seq)
        raise RuntimeError("display broke")

    caplog.set_level(logging.WARNING, logger="claude_client._progress")
    with Progress(5, progress=bad) as progress:
        for _ in range(5):
            progress.started()
            progress.settled(Result("x", Usage(1, 1), 0.1))
        assert progress.snapshot().done == 5  # the run went on
    assert calls == [1]
    warnings = [r for r in caplog.records if r.name == "claude_client._progress"]
    assert len(warnings) == 1 and "disabled" in warnings[0].getMessage()


def test_workers_never_wait_for_a_stuck_terminal():
    """The bar is drawn by its own thread: a stream that blocks does not slow settled()."""
    pytest.importorskip("rich")
    release = threading.Event()
    writes = []

    class StuckTerminal:
        encoding = "utf-8"

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            writes.append(len(text))
            release.wait(30)
            return len(text)

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            raise OSError("no descriptor")

    progress = Progress(10_000, label="stuck", stream=StuckTerminal())  # type: ignore[arg-type]
    assert progress.backend == "rich"

    def worker() -> None:
        for _ in range(2_500):
            progress.started()
            progress.settled(Result("x", Usage(1, 1), 0.001))

    start = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(4)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(20)
    elapsed = time.monotonic() - start
    assert progress.snapshot().done == 10_000
    assert writes, "the render thread should be stuck in a write by now"
    release.set()
    progress.close()
    assert elapsed < 10, f"10,000 settled() calls took {elapsed:.1f}s with the terminal stuck"


# ----------------------------------------------------------------------------- rendering, in child processes


def _child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TERM", "COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


_DRIVER = textwrap.dedent("""
    import sys, time, types
    {prelude}
    import _progress
    r = types.SimpleNamespace(usage={{"input_tokens": 10, "output_tokens": 5}}, cost_usd=0.002)
    with _progress.Progress({total}, label="job") as p:
        print("backend", p.backend, p.live, p.notebook, flush=True)
        for i in range({total}):
            p.started()
            time.sleep({sleep})
            p.settled(r if i % 3 else None)
    print("imported rich" if sys.modules.get("rich") is not None else "no rich", flush=True)
""")


def _driver(total: int = 6, sleep: float = 0.05, prelude: str = "") -> str:
    return _DRIVER.format(total=total, sleep=sleep, prelude=prelude)


def test_non_tty_stderr_gets_plain_lines_without_escape_codes():
    # ~2.6 s of work: at least one periodic line (every ~2 s) and the final line.
    proc = subprocess.run([sys.executable, "-c", _driver(total=13, sleep=0.2)], env=_child_env(TERM="xterm"),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "backend plain False False"
    assert ESC not in proc.stderr and "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("job: done ") for line in lines), lines
    assert 2 <= len(lines) <= 3, lines  # rate-limited: one line per ~2 s, plus the final one
    assert re.fullmatch(r"job: done 13/13  failed 5  running 0  tokens 120  cost \$0\.0160  \d+\.\ds", lines[-1])
    assert "ETA" in lines[0]


def _run_in_pty(code: str, env: dict) -> tuple[int, str, str]:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out.decode(), b"".join(chunks).decode("utf-8", "replace")


def test_tty_gets_a_live_bar():
    pytest.importorskip("pty")
    pytest.importorskip("rich")
    code, out, screen = _run_in_pty(_driver(), _child_env(TERM="xterm", COLUMNS="120"))
    assert code == 0, screen
    assert out.splitlines()[0] == "backend rich True False"
    assert ESC + "[" in screen, "expected terminal control sequences from the live bar"
    assert screen.count("done ") >= 2, screen  # redrawn in place as the run goes
    assert "done 6/6  failed 2" in screen and "tokens 60" in screen


def test_tty_without_rich_or_tqdm_falls_back_to_plain_lines():
    pytest.importorskip("pty")
    prelude = "sys.modules['rich'] = None; sys.modules['tqdm'] = None"
    code, out, screen = _run_in_pty(_driver(prelude=prelude), _child_env(TERM="xterm"))
    assert code == 0, screen
    assert out.splitlines() == ["backend plain False False", "no rich"]
    assert ESC not in screen
    assert "job: done 6/6  failed 2" in screen


def test_dumb_terminal_gets_plain_lines():
    pytest.importorskip("pty")
    code, out, screen = _run_in_pty(_driver(), _child_env(TERM="dumb"))
    assert code == 0, screen
    assert out.splitlines()[0] == "backend plain False False"
    assert ESC not in screen


_FAKE_KERNEL = textwrap.dedent("""
    import builtins
    class ZMQInteractiveShell:          # the class name an IPython kernel's shell has
        pass
    _shell = ZMQInteractiveShell()
    builtins.get_ipython = lambda: _shell
""")


def test_notebook_like_kernel_takes_the_notebook_capable_path():
    """In a kernel (stderr is a pipe there) the bar goes through rich/tqdm's notebook support."""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _driver(prelude=_FAKE_KERNEL)],
                          env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0].split()
    try:
        import rich  # noqa: F401
        expected = "rich"
    except ImportError:
        expected = "tqdm"
    if expected == "tqdm":
        pytest.importorskip("tqdm")
    assert first == ["backend", expected, "True", "True"], proc.stdout
    assert "Traceback" not in proc.stderr


def test_no_notebook_without_a_kernel_and_ipython_is_never_imported():
    code = textwrap.dedent("""
        import builtins, sys
        import _progress
        assert not _progress.in_notebook()
        class TerminalInteractiveShell:
            pass
        builtins.get_ipython = lambda: TerminalInteractiveShell()   # IPython in a terminal
        assert not _progress.in_notebook()
        assert "IPython" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_import_works_without_rich_and_tqdm_and_does_not_import_rich():
    code = textwrap.dedent("""
        import sys
        sys.modules["rich"] = None      # `import rich` raises ImportError
        sys.modules["tqdm"] = None
        import _progress
        p = _progress.Progress(2, label="x", backend="rich")   # asked for rich: falls back
        p.settled(None); p.settled(None); p.close()
        print(p.backend)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "plain"
    assert re.fullmatch(r"x: done 2/2  failed 2  tokens 0  cost \$0\.0000  \d+\.\ds\n", proc.stderr), proc.stderr

    lazy = subprocess.run([sys.executable, "-c", "import sys, _progress; print('rich' in sys.modules)"],
                          env=_child_env(), capture_output=True, text=True, timeout=60)
    assert lazy.returncode == 0 and lazy.stdout.strip() == "False", lazy.stderr
