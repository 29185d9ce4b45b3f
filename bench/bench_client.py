"""Issue 3 benchmark: sequential single calls, library vs SDK usage patterns.

500 sequential zero-latency calls against the local emulator:
- the library's ``invoke_claude`` (one pooled shared client);
- a new ``anthropic.Anthropic`` per call (the seed's design);
- a hand-held shared ``anthropic.Anthropic`` (the best an SDK user can do).

Run: ``python bench/bench_client.py [--quick]``.
"""
from __future__ import annotations

import logging
import sys
import time

import _common
from _common import BENCH_KEY, row

logger = logging.getLogger("bench.client")


def _timed(fn, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - started


def run(quick: bool = False) -> list[dict]:
    import anthropic

    import claude_client
    from anthropic_emulator import Emulator

    n = 100 if quick else 500
    rows: list[dict] = []
    with Emulator() as emu:
        _common.point_library_at(emu.base_url)
        params = {"model": claude_client.DEFAULT_MODEL, "max_tokens": 64}

        # warm-up (imports, first connection)
        claude_client.invoke_claude("warm up", max_tokens=64)
        shared = anthropic.Anthropic(api_key=BENCH_KEY, base_url=emu.base_url)
        shared.messages.create(messages=[{"role": "user", "content": "warm"}], **params)

        def per_call(i: int) -> None:
            client = anthropic.Anthropic(api_key=BENCH_KEY, base_url=emu.base_url)
            try:
                client.messages.create(messages=[{"role": "user", "content": f"call {i}"}], **params)
            finally:
                client.close()

        variants = {
            "library": lambda i: claude_client.invoke_claude(f"call {i}", max_tokens=64),
            "fresh": per_call,
            "hand": lambda i: shared.messages.create(messages=[{"role": "user", "content": f"call {i}"}], **params),
        }
        # Interleaved rounds, so drift of the machine or the emulator hits every variant alike.
        totals = {name: 0.0 for name in variants}
        conns = {name: 0 for name in variants}
        rounds = 5
        for _ in range(rounds):
            for name, fn in variants.items():
                emu.reset()
                totals[name] += _timed(fn, n // rounds)
                conns[name] += emu.connection_count
        shared.close()
        library, fresh, hand = totals["library"], totals["fresh"], totals["hand"]
        library_conns, fresh_conns, hand_conns = conns["library"], conns["fresh"], conns["hand"]

    ms = lambda total: 1000.0 * total / n  # noqa: E731
    rows.append(row("client", f"invoke_claude x{n}, ms/call vs hand-held shared SDK client", ms(library), "ms",
                    baseline=ms(hand), baseline_name="shared SDK client", target="<= 1.05"))
    rows.append(row("client", f"invoke_claude x{n}, ms/call vs new SDK client per call (seed)", ms(library), "ms",
                    baseline=ms(fresh), baseline_name="new client per call", target="< 1"))
    rows.append(row("client", "TCP connections opened: library", library_conns, "connections",
                    baseline=fresh_conns, baseline_name="new client per call"))
    rows.append(row("client", "TCP connections opened: hand-held shared client", hand_conns, "connections"))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    for r in run(quick="--quick" in sys.argv):
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.3f} vs {r['baseline_name']} ({r['baseline']:.3f})"
        logger.info("%-75s %10.3f %s%s", r["figure"], r["value"], r["unit"], ratio)
