"""Durable runs: the cost of a run journal, and of resuming from one.

(a) journal overhead: ``invoke_parallel`` N=1000 with ``journal=`` vs without, wall time per
    request (median of interleaved rounds; target <= 1.10);
(b) resume: a re-run from a complete journal (no request sent) vs the first run.

Both run against an emulator in a separate process (bench_client.EmulatorProcess).
Run: ``python bench/bench_journal.py [--quick]``.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import row
from bench_client import EmulatorProcess

WORKERS = 10


def run(quick: bool = False) -> list[dict]:
    import claude_client

    n = 200 if quick else 1000
    rounds = 3 if quick else 5
    prompts = [{"prompt": f"item {i}"} for i in range(n)]
    with EmulatorProcess() as emu, tempfile.TemporaryDirectory() as tmp:
        _common.point_library_at(emu.base_url)
        claude_client.invoke_parallel(prompts[:50], max_tokens=64, max_workers=WORKERS)  # warm-up
        walls: dict[str, list[float]] = {"plain": [], "journal": []}
        resumes: list[float] = []
        for r in range(rounds):
            order = ["plain", "journal"] if r % 2 == 0 else ["journal", "plain"]
            for name in order:
                path = Path(tmp) / f"run{r}.jsonl" if name == "journal" else None
                started = time.perf_counter()
                claude_client.invoke_parallel(prompts, max_tokens=64, max_workers=WORKERS, journal=path)
                walls[name].append(time.perf_counter() - started)
                if path is not None:
                    started = time.perf_counter()
                    again = claude_client.invoke_parallel(prompts, max_tokens=64, max_workers=WORKERS, journal=path)
                    resumes.append(time.perf_counter() - started)
                    assert len(again) == n and again.errors == {}
        size = (Path(tmp) / "run0.jsonl").stat().st_size / n
    plain = statistics.median(walls["plain"]) * 1000 / n
    journal = statistics.median(walls["journal"]) * 1000 / n
    resume = statistics.median(resumes) * 1000 / n
    return [
        row("journal", f"(a) invoke_parallel N={n}, {WORKERS} workers, ms/request with journal= vs without "
            f"(median of {rounds} rounds)", journal, "ms", baseline=plain, baseline_name="no journal",
            target="<= 1.10"),
        row("journal", f"(b) re-run from a complete journal (0 requests), ms/prompt vs the first run", resume, "ms",
            baseline=journal, baseline_name="first run with journal"),
        row("journal", "journal size per result", size, "bytes"),
    ]


if __name__ == "__main__":
    for item in run(quick="--quick" in sys.argv):
        ratio = f"  ratio {item['ratio']:.3f}" if item["ratio"] is not None else ""
        print(f"{item['figure']}: {item['value']:.4g} {item['unit']}{ratio}")
