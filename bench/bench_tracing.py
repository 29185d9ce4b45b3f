"""Issue 22 benchmark: what tracing costs the client, on the real run paths.

``invoke_parallel`` and ``invoke_parallel_managed`` of N prompts (10 workers) against an emulator in
a separate process, in interleaved rounds (client-process CPU, ``time.process_time()``; medians):

- (a) tracing off (no provider installed: the SDK's spans are no-ops and every tracing hook of the
  library returns at once). The hooks a prompt passes through on the wired path (submit's wrap,
  the prompt span, ``current()``, a retry event, finish, the run span and its totals, the client
  option) are timed alone (ns per prompt) and compared with the client CPU of one request of the
  same run. Target <= 1.01. The hand-written fan-out of phase 1 (with / without the helpers) is
  kept as a direct A/B check of the same thing;
- (b) a provider installed (opentelemetry-sdk, a processor that drops the spans): the run with the
  library's spans and the SDK's vs the same run with the library's switch off (the SDK's
  ``anthropic.messages.create`` spans alone, still nested under the caller). Target <= 1.10.

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
    """ns per prompt of the hooks a prompt of a wired run passes through, with no provider: submit's
    wrap, the prompt span made current (and ``current()`` in a managed worker), a retry event, its
    finish, and the run's own hooks (run span, totals, client option) shared by the run's prompts."""
    import _tracing

    per_run = 100  # the run's hooks, spread over a run of this many prompts (fewer: cheaper per prompt)

    def per_prompt() -> None:
        fn = _tracing.wrap(len)
        with _tracing.prompt_span(1, task_id="t") as span:
            with span.current():
                _tracing.event("retry", kind="overloaded", delay_s=0.0, attempt=1)
            span.finish(attempts=1, terminal_reason="succeeded", cost_usd=0.0)
        fn("x")

    def per_run_hooks() -> None:
        _tracing.client_option()
        with _tracing.run_span("invoke_parallel", prompts=per_run, workers=WORKERS, model=MODEL) as run:
            run.finish_results(None)

    number = 200_000
    prompt_ns = min(timeit.repeat(per_prompt, number=number, repeat=5)) / number * 1e9
    run_ns = min(timeit.repeat(per_run_hooks, number=number, repeat=5)) / number * 1e9
    return prompt_ns + run_ns / per_run


def _library(kind: str, n: int, library_spans: bool = True) -> Callable[[], None]:
    """A real run of ``n`` prompts (``invoke_parallel`` or ``invoke_parallel_managed``), with the
    library's switch set as asked just before it (a provider, if any, stays installed)."""
    import _tracing
    from claude_client import invoke_parallel
    from orchestration import invoke_parallel_managed

    prompts = [{"prompt": f"item {i}"} for i in range(n)]
    fn = invoke_parallel if kind == "parallel" else invoke_parallel_managed

    def go() -> None:
        _tracing.set_enabled(library_spans)
        results = fn(prompts, model=MODEL, max_tokens=16, max_workers=WORKERS)
        assert len(results) == n and not results.errors

    return go


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
        # (a) no provider anywhere: the SDK's spans are no-ops, the library's hooks return at once
        assert not _tracing.enabled() and not _tracing.propagating(), "a tracer provider is installed"
        ns = _helpers_off_ns()
        off = _rounds({kind: _library(kind, n) for kind in ("parallel", "managed")}, rounds)
        for kind, name in (("parallel", "invoke_parallel"), ("managed", "invoke_parallel_managed")):
            per_request_ns = off[kind] / n * 1e9
            rows += [
                row("tracing", f"(a) tracing off: {name} N={n}, {WORKERS} workers, client CPU per request "
                    f"(median of {rounds} rounds)", 1000 * off[kind] / n, "ms CPU"),
                row("tracing", f"(a) tracing off: {name}, the tracing hooks' share of one request's client CPU "
                    f"({ns:.0f} ns of hooks per prompt)", 1 + ns / per_request_ns, "x", baseline=1.0,
                    baseline_name="request without the hooks", target="<= 1.01"),
            ]
        client = anthropic.Anthropic(api_key=BENCH_KEY, base_url=emu.base_url, max_retries=0)
        hand = _rounds({"plain": _fan_out(client, n, False), "helpers": _fan_out(client, n, True)}, rounds)
        client.close()
        rows += [
            row("tracing", f"(a) tracing off: hand-written fan-out N={n}, client CPU ms/request with the tracing "
                f"helpers vs without (median of {rounds} rounds)", 1000 * hand["helpers"] / n, "ms CPU",
                baseline=1000 * hand["plain"] / n, baseline_name="the same fan-out without helpers",
                target="<= 1.01"),
            row("tracing", "(a) tracing off: hooks per prompt, alone", ns, "ns"),
        ]
        # (b) a provider: the SDK's spans alone (library switch off) vs the SDK's + the library's
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(_DropExporter()))  # type: ignore[arg-type]
        _tracing.use_tracer_provider(provider)
        try:
            variants: dict[str, Callable[[], None]] = {}
            for kind in ("parallel", "managed"):
                variants[f"{kind} sdk"] = _library(kind, n, library_spans=False)
                variants[f"{kind} library"] = _library(kind, n, library_spans=True)
            on = _rounds(variants, rounds)
        finally:
            _tracing.set_enabled(True)
            _tracing.use_tracer_provider(None)
        for kind, name in (("parallel", "invoke_parallel"), ("managed", "invoke_parallel_managed")):
            rows.append(
                row("tracing", f"(b) provider installed: {name} N={n}, client CPU ms/request, library + SDK spans "
                    f"vs the SDK's spans alone (median of {rounds} rounds)", 1000 * on[f"{kind} library"] / n,
                    "ms CPU", baseline=1000 * on[f"{kind} sdk"] / n, baseline_name="SDK spans alone",
                    target="<= 1.10")
            )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.3f}"
        print(f"{r['figure']}: {r['value']:.4g} {r['unit']}{ratio}  (target {r['target'] or '-'})")
