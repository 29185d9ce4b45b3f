"""Issue 6 benchmark: a managed run against the emulator's request rate limiter.

The emulator admits ``RATE`` requests per ``WINDOW_S`` seconds (a token bucket that starts full
and refills continuously) and answers the excess with 429 + ``retry-after``. We send many more
tasks than one window allows, with more workers than the limit can feed, through
``invoke_parallel_managed`` (max_retries=3, shared rate-limit pause) and report:

- failed tasks (target 0);
- 429s the server sent (from the emulator's stats);
- throughput as a fraction of what the limit allows in the same wall time (target >= 0.9):
  ``tasks / (RATE + RATE / WINDOW_S * wall)``; the baseline is the limit itself.

For contrast, the same load through plain ``invoke_parallel`` (2 SDK-style retries, no managed
pause). Since admission control is on by default it loses no task either; before it, this
contrast lost about half of them.

Run: ``python bench/bench_ratelimit.py [--quick]``.
"""
from __future__ import annotations

import logging
import sys
import time

import _common
from _common import row

logger = logging.getLogger("bench.ratelimit")

RATE = 50  # requests per window
WINDOW_S = 2.0
WORKERS = 16
TTFT_MS = 20


def _allowed(wall: float) -> float:
    """Requests the bucket admits in ``wall`` seconds, starting full."""
    return RATE + RATE / WINDOW_S * wall


def run(quick: bool = False) -> list[dict]:
    import claude_client
    import orchestration
    from anthropic_emulator import Emulator

    n = 250 if quick else 400
    rows: list[dict] = []
    with Emulator(rate_limit_requests=RATE, rate_limit_window_s=WINDOW_S, ttft_ms=TTFT_MS) as emu:
        _common.point_library_at(emu.base_url)
        prompts = [{"prompt": f"rate task {i}", "task_id": f"r{i}"} for i in range(n)]

        # ---- managed run
        tracker = orchestration.TaskTracker()
        started = time.perf_counter()
        results = orchestration.invoke_parallel_managed(
            prompts, max_workers=WORKERS, max_retries=3, base_delay_ms=200, max_delay_ms=2000,
            tracker=tracker, max_tokens=32,
        )
        wall = time.perf_counter() - started
        stats = emu.stats()
        failed = sum(1 for r in results if r is None)
        fraction = n / _allowed(wall)
        rows.append(row("ratelimit", f"managed: failed tasks of {n}", failed, "tasks", target="0"))
        rows.append(row("ratelimit", "managed: 429s sent by the server", stats["rate_limited"], "429s",
                        target="as few as possible"))
        rows.append(row("ratelimit", "managed: requests per task", stats["messages"] / n, "requests"))
        rows.append(row(
            "ratelimit", f"managed: throughput ({n} tasks in {wall:.2f} s)", n / wall, "req/s",
            baseline=_allowed(wall) / wall, baseline_name=f"limit {RATE}/{WINDOW_S:g}s bucket, same wall",
            target=">= 0.9 of the limit", lower_is_better=False,
        ))
        logger.info("managed: wall %.2f s, fraction %.3f, summary %s", wall, fraction, tracker.summary())

        # ---- contrast: plain invoke_parallel (its 2 SDK-style retries; admission on, as by default)
        emu.reset()
        time.sleep(0.1)
        started = time.perf_counter()
        try:
            plain = claude_client.invoke_parallel([{"prompt": p["prompt"]} for p in prompts],
                                                  max_workers=WORKERS, max_tokens=32)
        except claude_client.ClaudeInvocationError as exc:
            plain = exc.results if exc.results is not None else [None] * n
        plain_wall = time.perf_counter() - started
        plain_failed = sum(1 for r in plain if r is None)
        rows.append(row("ratelimit", f"invoke_parallel (2 retries, admission on by default): failed tasks of {n}", plain_failed,
                        "tasks", baseline=None, target="contrast"))
        rows.append(row("ratelimit", "invoke_parallel: 429s sent by the server", emu.stats()["rate_limited"],
                        "429s", target="contrast"))
        rows.append(row("ratelimit", "invoke_parallel: wall", plain_wall, "s", target="contrast"))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for r in run(quick="--quick" in sys.argv):
        print(r)
