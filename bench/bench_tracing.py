"""Issue 22 benchmark: what tracing costs the client.

Phase 1 (the tracing layer alone, before it is wired into the run modules): a fan-out of N
``messages.create`` calls over a ``ThreadPoolExecutor`` (10 workers) to an emulator in a separate
process, written the way the library's fan-out will use the layer (``_tracing.submit`` for each
prompt, a ``run_span`` around the run, a ``prompt_span`` and a ``retry`` event per prompt), in
interleaved rounds (client-process CPU, ``time.process_time()``; medians of the rounds):

- (a) tracing off (no provider installed): the fan-out with the helpers vs the same fan-out
  without them. Target <= 1.01. The per-call cost of the helpers with no provider is measured
  alone as well (ns), and as a share of the client CPU of one request (the steadier figure);
- (b) a provider installed (opentelemetry-sdk, a processor that drops the spans): the library's
  spans and the SDK's vs the SDK's ``anthropic.messages.create`` spans alone. Target <= 1.10.

Phase 2 replaces the hand-written fan-out by ``invoke_parallel`` / ``invoke_parallel_managed``.

Run: ``python bench/bench_tracing.py [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import _common
from _common import BENCH_KEY, row

WORKERS = 10
MODEL = "claude-haiku-4-5"


class _DropExporter:
    """A span exporter that keeps nothing (the cost measured is making the spans, not storing them)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _fan_out(client: Any, n: int, traced: bool) -> Callable[[], None]:
    import _tracing

    params = {"model": MODEL, "max_tokens": 16}

    def create(i: int) -> None:
        client.messages.create(messages=[{"role": "user", "content": f"item {i}"}], **params)

    def create_traced(i: int) -> None:
        with _tracing.prompt_span(i, task_id=f"t{i}") as span:
            create(i)
            _tracing.event("retry", kind="overloaded", delay_s=0.0, attempt=1)
            span.finish(attempts=1, terminal_reason="completed", cost_usd=0.0)

    def plain() -> None:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for f in [pool.submit(create, i) for i in range(n)]:
                f.result()

    def with_helpers() -> None:
        with _tracing.run_span("invoke_parallel", prompts=n, workers=WORKERS, model=MODEL) as run:
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                for f in [_tracing.submit(pool, create_traced, i) for i in range(n)]:
                    f.result()
            run.finish(cost_usd=0.0, failures_by_kind={}, succeeded=n)

    return with_helpers if traced else plain


def _rounds(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median client CPU seconds per variant over interleaved, rotated rounds."""
    for fn in variants.values():  # warm-up: imports, pooled connections
        fn()
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.process_time()
            variants[name]()
            cpus[name].append(time.process_time() - started)
    return {k: statistics.median(v) for k, v in cpus.items()}


def _helpers_off_ns() -> float:
    """ns per prompt of the helpers with no provider: submit's wrap, a prompt span, an event, finish."""
    import _tracing

    def per_prompt() -> None:
        fn = _tracing.wrap(len)
        with _tracing.prompt_span(1, task_id="t") as span:
            _tracing.event("retry", kind="overloaded", delay_s=0.0, attempt=1)
            span.finish(attempts=1, terminal_reason="completed", cost_usd=0.0)
        fn("x")

    number = 200_000
    return min(timeit.repeat(per_prompt, number=number, repeat=5)) / number * 1e9


def run(quick: bool = False) -> list[dict]:
    import anthropic
    from bench_client import EmulatorProcess
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import _tracing

    n = 200 if quick else 1000
    rounds = 3 if quick else 7
    rows: list[dict] = []
    with EmulatorProcess() as emu:
        _common.point_library_at(emu.base_url)
        # (a) no provider anywhere: the SDK's spans are no-ops, the library's helpers return at once
        assert not _tracing.enabled() and not _tracing.propagating(), "a tracer provider is installed"
        ns = _helpers_off_ns()
        client = anthropic.Anthropic(api_key=BENCH_KEY, base_url=emu.base_url, max_retries=0)
        off = _rounds({"plain": _fan_out(client, n, False), "helpers": _fan_out(client, n, True)}, rounds)
        client.close()
        per_request_ns = off["plain"] / n * 1e9
        rows += [
            row("tracing", f"(a) tracing off: fan-out N={n}, {WORKERS} workers, client CPU ms/request with the "
                f"tracing helpers vs without (median of {rounds} rounds)", 1000 * off["helpers"] / n, "ms CPU",
                baseline=1000 * off["plain"] / n, baseline_name="the same fan-out without helpers",
                target="<= 1.01"),
            row("tracing", "(a) tracing off: helpers per prompt (wrap, prompt span, event, finish), alone",
                ns, "ns"),
            row("tracing", "(a) tracing off: the helpers' share of one request's client CPU",
                1 + ns / per_request_ns, "x", baseline=1.0, baseline_name="request alone", target="<= 1.01"),
        ]
        # (b) a provider: SDK spans alone vs SDK spans + the library's
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(_DropExporter()))  # type: ignore[arg-type]
        _tracing.use_tracer_provider(provider)
        try:
            client = anthropic.Anthropic(api_key=BENCH_KEY, base_url=emu.base_url, max_retries=0,
                                         open_telemetry=_tracing.client_option())
            on = _rounds({"sdk": _fan_out(client, n, False), "library": _fan_out(client, n, True)}, rounds)
            client.close()
        finally:
            _tracing.use_tracer_provider(None)
        rows.append(
            row("tracing", f"(b) provider installed: fan-out N={n}, client CPU ms/request, library + SDK spans vs "
                f"the SDK's spans alone (median of {rounds} rounds)", 1000 * on["library"] / n, "ms CPU",
                baseline=1000 * on["sdk"] / n, baseline_name="SDK spans alone", target="<= 1.10")
        )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.3f}"
        print(f"{r['figure']}: {r['value']:.4g} {r['unit']}{ratio}  (target {r['target'] or '-'})")
