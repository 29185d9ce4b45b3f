"""Shared limits (issue 20): what the shared store costs, and processes sharing one key.

(a) Raw store operations, SQLite (a file in a temporary directory) and Redis (a real
    ``redis-server`` started on a free 127.0.0.1 port, when installed): client CPU per operation
    and operations per second, for ``acquire`` (one bucket take), ``acquire`` + hold + ``settle``
    (a request's OTPM hold), ``learn`` (headers) and ``budget_reserve`` + ``budget_settle``.
    Baseline: the client CPU of one library request against the emulator, so the figures read as
    "share of a request" for a store touched once per request, and once per 16 requests (a lease).
(b) Several processes on one key at the emulator's ITPM limit (4 processes x 45 prompts of
    ~2,000 tokens at 120k ITPM; the minute scaled to ``MINUTE_S`` so the run is short), against
    one process alone with the same total demand. Reported: failed prompts, 429s as a fraction of
    requests, throughput as a fraction of the limit. 4 and 8 processes, three ways: the shared store
    *on* (SQLite; Redis too when ``redis-server`` is installed), *off* (every process admits
    alone), and one process *alone*; set by ``ORCHESTRATING_AGENTS_SHARED_LIMITS`` in the
    children. Also the client CPU of one process alone with the store on, against off.

Run: ``python bench/bench_shared.py [--quick]``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import _common
from _common import ROOT, row

logger = logging.getLogger("bench.shared")

ITPM = 120_000
PROMPT_TOKENS = 2_000
MINUTE_S = 6.0  # the emulator's minute: 10x faster than the API's
SCRIPTS = ROOT / "scripts"


# ------------------------------------------------------------------------------ (a) op costs
def _request_cpu(n: int) -> float:
    """Client CPU (this thread) of one plain request through the library (seconds)."""
    import claude_client
    from anthropic_emulator import Emulator

    with Emulator() as emu:
        _common.point_library_at(emu.base_url)
        for i in range(10):
            claude_client.invoke_claude(f"warm {i}", max_tokens=1024)
        started = time.thread_time()
        for i in range(n):
            claude_client.invoke_claude(f"request {i}: " + "word " * 300, max_tokens=1024)
        return (time.thread_time() - started) / n


def _per_op(fn: Callable[[], Any], n: int, ops: int) -> tuple[float, float]:
    """(client CPU s per op, ops per second) over ``n`` calls of ``fn`` doing ``ops`` ops each."""
    for _ in range(20):  # warm: connections, statements, scripts loaded
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / (n * ops), n * ops / wall


def _store_rows(label: str, store: Any, n: int, request_cpu: float) -> list[dict]:
    from _shared_limits import scope_key

    scope = scope_key("sk-ant-bench-shared-key", "http://127.0.0.1:1", "sonnet-5-5")
    big = {"rpm": (10**9, 60.0), "itpm": (10**12, 60.0), "otpm": (10**12, 60.0)}
    store.learn(scope, big)

    def take() -> None:
        store.acquire(scope, {"rpm": 1, "itpm": PROMPT_TOKENS, "otpm": 1_024})

    def hold() -> None:
        grant = store.acquire(scope, {"rpm": 1, "itpm": PROMPT_TOKENS, "otpm": 1_024}, provisional={"otpm": 1_024})
        store.settle(grant, used={"otpm": 200})

    def budget() -> None:
        grant = store.budget_reserve("bench", 0.01, 10**9)
        store.budget_settle(grant, 0.005)

    rows = []
    for name, fn, ops in (("acquire", take, 1), ("acquire + hold + settle", hold, 2),
                          ("learn", lambda: store.learn(scope, big), 1),
                          ("budget reserve + settle", budget, 2)):
        cpu, rate = _per_op(fn, n, ops)
        rows.append(row("shared", f"(a) {label} {name}: client CPU per op", cpu * 1e6, "us",
                        baseline=request_cpu * 1e6, baseline_name="one library request's client CPU"))
        rows.append(row("shared", f"(a) {label} {name}: ops per second", rate, "ops/s", lower_is_better=False))
    cpu, _rate = _per_op(take, n, 1)
    rows.append(row("shared", f"(a) {label}: one acquire per 16 requests (a lease), share of a request's CPU",
                    cpu / 16 / request_cpu, "fraction", target="<= 0.03"))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(directory: str) -> Optional[tuple[subprocess.Popen, str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def op_costs(quick: bool = False) -> list[dict]:
    from _shared_limits import RedisStore, SqliteStore

    n = 300 if quick else 2_000
    request_cpu = _request_cpu(50 if quick else 200)
    rows = [row("shared", "(a) one library request: client CPU", request_cpu * 1e6, "us")]
    with tempfile.TemporaryDirectory() as tmp:
        rows += _store_rows("sqlite", SqliteStore(Path(tmp) / "bench.sqlite3"), n, request_cpu)
        server = _redis_server(tmp)
        if server is None:
            logger.warning("redis-server is not installed: the Redis rows are left out")
        else:
            proc, url = server
            try:
                rows += _store_rows("redis", RedisStore(url), n, request_cpu)
            finally:
                proc.kill()
                proc.wait()
    return rows


# ------------------------------------------------------------------------------ (b) processes
_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_SCRIPTS"])
import claude_client
spec = json.loads(sys.argv[1])
prompts = [{"prompt": f"process {spec['index']} task {i}: " + "word " * spec["words"]} for i in range(spec["prompts"])]
while time.time() < spec["start_at"]:
    time.sleep(0.001)
started = time.perf_counter()
results = claude_client.invoke_parallel(prompts, max_workers=spec["workers"], max_tokens=1024, return_exceptions=True)
wall = time.perf_counter() - started
usage = results.usage
print(json.dumps({"failed": len(results.errors), "wall": wall,
                  "input": usage.input_tokens + usage.cache_creation_input_tokens,
                  "cpu": time.process_time()}), flush=True)
"""


def _words_for(tokens: int) -> int:
    """Words ("word " = 5 characters) for about ``tokens`` tokens on the default model's tokenizer."""
    from _models import DEFAULT_MODEL, model_info

    return int(tokens * 4 / model_info(DEFAULT_MODEL).tokenizer_factor / 5)


def _processes(processes: int, prompts_each: int, shared: Optional[str]) -> dict[str, float]:
    """Run ``processes`` children of ``prompts_each`` prompts each on one key and one emulator."""
    from anthropic_emulator import Emulator

    with Emulator(rate_limit_itpm=ITPM, rate_limit_minute_s=MINUTE_S) as emu:
        env = dict(os.environ, BENCH_SCRIPTS=str(SCRIPTS), ANTHROPIC_BASE_URL=emu.base_url,
                   ANTHROPIC_API_KEY=_common.BENCH_KEY)
        if shared is not None:
            env["ORCHESTRATING_AGENTS_SHARED_LIMITS"] = shared
        start_at = time.time() + 2.0
        words = _words_for(PROMPT_TOKENS)
        children = [
            subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(
                {"index": i, "prompts": prompts_each, "words": words, "workers": 8, "start_at": start_at})],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)
        ]
        outs = []
        for child in children:
            out, err = child.communicate(timeout=900)
            if child.returncode != 0:
                raise RuntimeError(f"a bench child failed: {err[-2000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.time() - start_at
        stats = emu.stats()
    charged = sum(o["input"] for o in outs)
    return {
        "failed": float(sum(o["failed"] for o in outs)),
        "rate_limited": stats["rate_limited"] / max(1, stats["messages"]),
        "throughput": charged / (ITPM + ITPM / MINUTE_S * wall),  # the bucket starts full
        "wall": wall,
        "cpu": sum(o["cpu"] for o in outs),
    }


def _process_rows(label: str, figures: dict[str, float], demand: int, alone: dict[str, float]) -> list[dict]:
    return [
        row("shared", f"(b) {label}: failed prompts of {demand}", figures["failed"], "prompts", target="0"),
        row("shared", f"(b) {label}: 429s per request", figures["rate_limited"], "fraction", target="<= 0.02"),
        row("shared", f"(b) {label}: throughput vs the ITPM limit", figures["throughput"], "fraction",
            baseline=alone["throughput"], baseline_name="one process alone", target=">= 0.85",
            lower_is_better=False),
    ]


def processes(quick: bool = False) -> list[dict]:
    """4 and 8 processes on one key, three ways: store on (SQLite, and Redis when installed), store
    off, and one process alone with the same total demand; plus the client CPU a process alone
    pays for the store (store on against off, same demand, same run)."""
    per = 20 if quick else 45
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = _redis_server(tmp)
        if server is None:
            logger.warning("redis-server is not installed: the Redis rows are left out")
        try:
            for n in (4, 8):
                demand = n * per
                alone = _processes(1, demand, "off")
                ways = [(f"{n} processes, shared store on (SQLite)", f"sqlite:///{tmp}/shared-{n}.sqlite3")]
                if server is not None:
                    ways.append((f"{n} processes, shared store on (Redis)", server[1]))
                ways.append((f"{n} processes, shared store off", "off"))
                for label, setting in ways:
                    rows += _process_rows(label, _processes(n, per, setting), demand, alone)
                rows += _process_rows(f"1 process alone, same demand as {n}", alone, demand, alone)
                if n == 4:
                    alone_on = _processes(1, demand, f"sqlite:///{tmp}/alone.sqlite3")
                    rows.append(row("shared", f"(b) 1 process alone, {demand} prompts: client CPU, store on (SQLite)",
                                    alone_on["cpu"], "s CPU", baseline=alone["cpu"], baseline_name="store off",
                                    target="<= 1.03"))
        finally:
            if server is not None:
                server[0].kill()
                server[0].wait()
    return rows


def run(quick: bool = False) -> list[dict]:
    return op_costs(quick) + processes(quick)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
