"""Admission control benchmark: plain ``invoke_parallel`` against the emulator's per-model buckets.

(a) A tier-1-like shape (RPM 50, ITPM 30k, OTPM 8k; the emulator's minute scaled to ``MINUTE_S``
    seconds so the run is short), prompts of ~1,500 tokens with ``max_tokens=300``: ITPM binds.
    Reported: 429s per request (target <= 1%) and throughput against the binding limit,
    ``charged input tokens / (ITPM + ITPM / minute * wall)`` (target >= 0.90). The controller is
    told nothing: it learns the limits, and the scaled minute, from the response headers.
(b) Cache-aware admission: prompts over a cached 5k-token shared system (the cache pilot on), at
    the same limits. Baseline: the same run with a controller that counts cache reads toward ITPM
    (``count_cache_reads = True``), as a limiter that ignores the rule would; the figure is the
    throughput gain (baseline wall / wall). Both are told the scaled minute (the baseline could not
    learn it: the server's ITPM bucket hardly moves when reads are free).

Run: ``python bench/bench_admission.py [--quick]``.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

import _common
from _common import row

logger = logging.getLogger("bench.admission")

RPM, ITPM, OTPM = 50, 30_000, 8_000
WORKERS = 16


def _client_and_controller(base_url: str, count_cache_reads: bool = False, minute_s: Optional[float] = None):  # type: ignore[no-untyped-def]
    import claude_client
    from _admission import RateLimits, controller_for

    _common.point_library_at(base_url)
    client = claude_client.get_client()
    controller = controller_for(client, claude_client.DEFAULT_MODEL, RateLimits(minute_s=minute_s))
    controller.count_cache_reads = count_cache_reads
    return client, controller


def _tier1(n: int, minute_s: float) -> list[dict]:
    import claude_client
    from anthropic_emulator import Emulator

    prompts = [{"prompt": f"task {i}: " + "word " * 1200} for i in range(n)]  # ~1,500 tokens
    with Emulator(rate_limit_rpm=RPM, rate_limit_itpm=ITPM, rate_limit_otpm=OTPM,
                  rate_limit_minute_s=minute_s) as emu:
        _client, controller = _client_and_controller(emu.base_url)
        started = time.perf_counter()
        results = claude_client.invoke_parallel(prompts, max_workers=WORKERS, max_tokens=300, return_exceptions=True)
        wall = time.perf_counter() - started
        stats = emu.stats()
        snapshot = controller.snapshot()
    charged = results.usage.input_tokens + results.usage.cache_creation_input_tokens
    allowed = ITPM + ITPM / minute_s * wall
    logger.info("tier-1 shape: %s", snapshot)
    return [
        row("admission", f"(a) tier-1 shape, {n} prompts of ~1.5k tokens: failed", len(results.errors), "requests",
            target="0"),
        row("admission", "(a) 429s per request", stats["rate_limited"] / n, "429/request", target="<= 0.01"),
        row("admission", f"(a) throughput vs the binding limit (ITPM, {n} prompts in {wall:.1f} s)",
            charged / wall, "input tokens/s", baseline=allowed / wall,
            baseline_name=f"ITPM {ITPM} per {minute_s:g} s bucket, same wall", target=">= 0.90",
            lower_is_better=False),
    ]


def _cached(n: int, minute_s: float, count_cache_reads: bool) -> tuple[float, int, int]:
    import claude_client
    from anthropic_emulator import Emulator

    shared = " ".join(f"rule {i}: keep the answer short and exact." for i in range(560))  # ~5k tokens
    prompts = [{"prompt": f"question {i}"} for i in range(n)]
    with Emulator(rate_limit_rpm=RPM, rate_limit_itpm=ITPM, rate_limit_otpm=OTPM,
                  rate_limit_minute_s=minute_s) as emu:
        _client_and_controller(emu.base_url, count_cache_reads, minute_s)
        started = time.perf_counter()
        results = claude_client.invoke_parallel(prompts, shared_system=shared, cache_shared_system=True,
                                                max_workers=WORKERS, max_tokens=100, return_exceptions=True)
        wall = time.perf_counter() - started
        stats = emu.stats()
    return wall, len(results.errors), stats["rate_limited"]


def run(quick: bool = False) -> list[dict]:
    minute_s = 3.0 if quick else 6.0
    rows = _tier1(60 if quick else 120, minute_s)
    n = 24 if quick else 40
    aware_wall, aware_failed, aware_429 = _cached(n, minute_s, count_cache_reads=False)
    naive_wall, naive_failed, naive_429 = _cached(n, minute_s, count_cache_reads=True)
    rows.append(row("admission", f"(b) {n} prompts over a cached 5k-token system: wall, cache-aware", aware_wall, "s",
                    baseline=naive_wall, baseline_name="limiter counting cache reads toward ITPM",
                    target="< 1 (faster)"))
    rows.append(row("admission", "(b) cache-aware throughput gain", naive_wall / aware_wall, "x",
                    target="> 1", lower_is_better=False))
    rows.append(row("admission", "(b) failed / 429s, cache-aware", aware_failed + aware_429, "requests",
                    baseline=naive_failed + naive_429, baseline_name="counting reads", target="0"))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for r in run(quick="--quick" in sys.argv):
        print(r)
