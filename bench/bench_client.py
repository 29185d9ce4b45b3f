"""Issue 3 benchmark: sequential single calls, library vs SDK usage patterns.

Sequential zero-latency calls against the local emulator (500 for the slow new-client-per-call
variant, 2,000 each for the two cheap ones, in interleaved samples of 100; per-call medians):
- the library's ``invoke_claude`` (one pooled shared client);
- a new ``anthropic.Anthropic`` per call (the seed's design);
- a hand-held shared ``anthropic.Anthropic`` (the best an SDK user can do).

The timed calls go to an emulator in a **separate process** (:class:`EmulatorProcess`), so the
emulator's own CPU work does not compete with the client for this process's GIL (that would
inflate whichever variant makes the emulator work harder). The TCP connection counts need the
emulator's Python API, so they come from a short separate pass against an in-process emulator
(counts do not depend on speed).

Run: ``python bench/bench_client.py [--quick]``.
"""
from __future__ import annotations

import gc
import logging
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import _common
from _common import BENCH_KEY, ROOT, row

logger = logging.getLogger("bench.client")


class EmulatorProcess:
    """``python -m anthropic_emulator`` in a child process on a free port (a context manager).

    ``settings`` become CLI flags (``ttft_ms=500`` -> ``--ttft-ms 500``). Entering waits until the
    server accepts connections; leaving terminates it (SIGTERM, then SIGKILL after 10 s).

    >>> with EmulatorProcess(ttft_ms=500) as emu:
    ...     client = anthropic.Anthropic(api_key="k", base_url=emu.base_url)
    """

    def __init__(self, startup_timeout: float = 30.0, **settings: Any) -> None:
        self.settings = settings
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: Any = None

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "anthropic_emulator", "--port", "0"]
        for name, value in self.settings.items():
            argv += ["--" + name.replace("_", "-"), "none" if value is None else str(value)]
        return argv

    def start(self) -> "EmulatorProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "scripts"), env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            self._argv(), stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
        )
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the emulator process did not start: {self._error_output()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                line += chunk
        text = line.decode().strip()
        if " on http://" not in text:
            self.stop()
            raise RuntimeError(f"unexpected emulator banner {text!r}")
        self.base_url = text.rsplit(" on ", 1)[1]
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self._wait_listening(deadline)
        return self

    def _wait_listening(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the emulator does not accept connections on port {self.port}") from None
                time.sleep(0.05)

    def _error_output(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _timed(fn: Callable[[int], Any], n: int, offset: int = 0) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for ``n`` calls of ``fn``."""
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(offset, offset + n):
        fn(i)
    return time.perf_counter() - started, time.process_time() - cpu


def _variants(base_url: str) -> tuple[dict[str, Callable[[int], Any]], Any]:
    import anthropic

    import claude_client

    params = {"model": claude_client.DEFAULT_MODEL, "max_tokens": 64}
    shared = anthropic.Anthropic(api_key=BENCH_KEY, base_url=base_url)

    def per_call(i: int) -> None:
        client = anthropic.Anthropic(api_key=BENCH_KEY, base_url=base_url)
        try:
            client.messages.create(messages=[{"role": "user", "content": f"call {i}"}], **params)
        finally:
            client.close()

    variants = {
        "library": lambda i: claude_client.invoke_claude(f"call {i}", max_tokens=64),
        "fresh": per_call,
        "hand": lambda i: shared.messages.create(messages=[{"role": "user", "content": f"call {i}"}], **params),
    }
    return variants, shared


def _throughput(n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and client-CPU seconds per call for each variant, against an out-of-process emulator.

    ``n`` calls of the new-client-per-call variant; the two cheap variants (library, hand-held
    shared client) get four times as many calls, so their ratio rests on 20 samples, not 5.
    """
    with EmulatorProcess() as emu:
        _common.point_library_at(emu.base_url)
        variants, shared = _variants(emu.base_url)
        for fn in variants.values():  # warm-up (imports, first connection)
            _timed(fn, 5, offset=10_000_000)
        # Interleaved rounds, so drift of the machine or the emulator hits every variant alike;
        # the median sample decides (one disturbed by another process does not).
        walls: dict[str, list[float]] = {name: [] for name in variants}
        cpus: dict[str, list[float]] = {name: [] for name in variants}
        rounds, per_sample = 5, n // 5
        names = list(variants)
        for r in range(rounds):  # rotated, so no variant always follows the same one
            for rep in range(4):
                for name in names[(r + rep) % len(names):] + names[: (r + rep) % len(names)]:
                    if name == "fresh" and rep:
                        continue
                    gc.collect()  # garbage of the previous variant (100 clients) is not collected on our clock
                    wall, cpu = _timed(variants[name], per_sample, offset=(4 * r + rep) * n)
                    walls[name].append(wall / per_sample)
                    cpus[name].append(cpu / per_sample)
        shared.close()
    med = lambda d: {name: statistics.median(t) for name, t in d.items()}  # noqa: E731
    return med(walls), med(cpus)


def _connections(n: int) -> dict[str, int]:
    """TCP connections each variant opens for ``n`` calls (in-process emulator: needs its API)."""
    from anthropic_emulator import Emulator

    with Emulator() as emu:
        _common.point_library_at(emu.base_url)
        variants, shared = _variants(emu.base_url)
        counts = {}
        for name, fn in variants.items():
            emu.reset()
            _timed(fn, n)
            counts[name] = emu.connection_count
        shared.close()
    return counts


def run(quick: bool = False) -> list[dict]:
    n = 100 if quick else 500
    per_call, cpu = _throughput(n)
    conns = _connections(50 if quick else 100)
    import claude_client

    claude_client.reset_client()
    ms = lambda seconds: 1000.0 * seconds  # noqa: E731
    library, fresh, hand = per_call["library"], per_call["fresh"], per_call["hand"]
    m = 50 if quick else 100
    return [
        row("client", f"invoke_claude x{4 * n}, ms/call vs hand-held shared SDK client (emulator out of process)",
            ms(library), "ms", baseline=ms(hand), baseline_name="shared SDK client", target="<= 1.05"),
        row("client", f"invoke_claude x{4 * n}, client-process CPU ms/call vs hand-held shared SDK client",
            ms(cpu["library"]), "ms CPU", baseline=ms(cpu["hand"]), baseline_name="shared SDK client"),
        row("client", f"invoke_claude ms/call vs new SDK client per call (seed, x{n})", ms(library), "ms",
            baseline=ms(fresh), baseline_name="new client per call", target="< 1"),
        row("client", f"TCP connections opened for {m} calls: library", conns["library"], "connections",
            baseline=conns["fresh"], baseline_name="new client per call"),
        row("client", f"TCP connections opened for {m} calls: hand-held shared client", conns["hand"], "connections"),
    ]


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    for r in run(quick="--quick" in sys.argv):
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.3f} vs {r['baseline_name']} ({r['baseline']:.3f})"
        logger.info("%-85s %10.3f %s%s", r["figure"], r["value"], r["unit"], ratio)
