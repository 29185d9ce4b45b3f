"""The tracing layer (scripts/_tracing.py) and the trace-file writer (scripts/_cli_trace.py).

Spans go to a real opentelemetry-sdk ``TracerProvider`` with an ``InMemorySpanExporter``. The
provider is handed to the library with ``_tracing.use_tracer_provider`` and to the SDK clients
with their ``open_telemetry={"tracer_provider": ...}`` option, never set as the process's global
provider (that can be done once per process and would leak into other tests on the same xdist
worker); the global-provider path runs in a child process. Requests go over HTTP to the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import anthropic
import pytest
from conftest import SCRIPTS, TEST_KEY
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import _tracing
import claude_client
from _cli_common import UsageError
from _cli_trace import open_trace_file
from _errors import ClaudeInvocationError
from _results import ParallelResults, Usage

SDK_SCOPE = "com.anthropic.sdk.python"
MODEL = "claude-haiku-4-5"


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def _provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter


@pytest.fixture
def spans(_provider: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    """The library's spans go to the test provider; the switches are restored afterwards."""
    provider, exporter = _provider
    exporter.clear()
    _tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        _tracing.use_tracer_provider(None)
        _tracing.set_enabled(True)
        _tracing.set_capture_content(None)
        exporter.clear()


@pytest.fixture
def provider(_provider: tuple[TracerProvider, InMemorySpanExporter]) -> TracerProvider:
    return _provider[0]


def _client(emulator: Any, option: Any = None) -> anthropic.Anthropic:
    """An SDK client of the emulator whose spans follow the library's provider (client_option)."""
    if option is None:
        option = _tracing.client_option()
    return anthropic.Anthropic(
        api_key=TEST_KEY, base_url=emulator.base_url, max_retries=0, open_telemetry=option
    )


def _by_name(finished: Any, name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def _scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def _values(span: ReadableSpan) -> list[str]:
    """Every attribute value (events' too) and the status text of ``span``, as text."""
    out = [str(v) for v in (span.attributes or {}).values()]
    for e in span.events:
        out += [str(e.name)] + [str(v) for v in (e.attributes or {}).values()]
    out.append(str(span.status.description or ""))
    return out


def _fan_out(n: int, work: Any, *, helper: bool = True) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(_tracing.submit(pool, work, i) if helper else pool.submit(work, i)) for i in range(n)]
        for f in futures:
            f.result()


# --------------------------------------------------------------------------- switched off
def test_no_provider_means_no_spans_and_no_context_copies() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is installed in this process")
    assert _tracing.tracer_provider() is None
    assert not _tracing.enabled() and not _tracing.propagating()

    def work() -> int:
        return 7

    assert _tracing.wrap(work) is work  # nothing to carry: the function itself
    with _tracing.run_span("invoke_parallel", prompts=1) as run:
        run.finish(cost_usd=1.0)
        with _tracing.prompt_span(0) as prompt:
            prompt.event("retry", kind="overloaded")
            assert not prompt.recording and prompt.span is None
    assert run is _tracing.run_span("invoke_parallel", prompts=1)  # the shared no-op
    assert _tracing.client_option() is None  # the SDK keeps its own defaults and env vars


def test_switch_off_makes_no_library_spans_but_sdk_spans_still_nest(spans, provider, client_env) -> None:
    _tracing.set_enabled(False)
    assert not _tracing.enabled() and _tracing.propagating()
    client = _client(client_env)

    def work(i: int) -> None:
        with _tracing.prompt_span(i) as span:
            assert not span.recording
            client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"off {i}"}])

    with provider.get_tracer("app").start_as_current_span("caller") as caller:
        with _tracing.run_span("invoke_parallel", prompts=3, workers=3):
            _fan_out(3, work)
        _tracing.event("retry", kind="overloaded", delay_s=0.1)
    finished = spans.get_finished_spans()
    assert {_scope(s) for s in finished} == {"app", SDK_SCOPE}  # no span of the library's scope
    sdk = _by_name(finished, "anthropic.messages.create")
    assert len(sdk) == 3 and all(s.parent is not None and s.parent.span_id == caller.get_span_context().span_id
                                 for s in sdk)
    assert _by_name(finished, "caller")[0].events == ()  # events are library output too


def test_bad_switch_values_fail_fast_naming_the_parameter(emulator) -> None:
    with pytest.raises(TypeError, match="tracing"):
        _tracing.set_enabled("no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tracer_provider"):
        _tracing.use_tracer_provider(object())
    with pytest.raises(TypeError, match="capture_content"):
        _tracing.set_capture_content(1)  # type: ignore[arg-type]
    assert _tracing.enabled() == _tracing.propagating()  # nothing changed (no provider here, or both on)
    assert emulator.requests == []


# ------------------------------------------------------------------------------ propagation
def test_submit_carries_the_callers_span_into_pool_workers(spans, provider) -> None:
    def work(i: int) -> None:
        with _tracing.prompt_span(i, task_id=f"t{i}", category="c") as span:
            span.finish(attempts=1, terminal_reason="completed", cost_usd=0.25)

    with provider.get_tracer("app").start_as_current_span("caller"):
        with _tracing.run_span("invoke_parallel", prompts=10, workers=4, model=MODEL) as run:
            _fan_out(10, work)
            run.finish(cost_usd=2.5, succeeded=10)
    finished = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1  # one trace
    caller = _by_name(finished, "caller")[0]
    (run_span,) = _by_name(finished, "run invoke_parallel")
    prompts = _by_name(finished, "prompt")
    assert run_span.parent.span_id == caller.context.span_id
    assert len(prompts) == 10 and {p.parent.span_id for p in prompts} == {run_span.context.span_id}
    assert sorted(p.attributes["orchestrating_agents.prompt.index"] for p in prompts) == list(range(10))
    assert sum(p.attributes["orchestrating_agents.cost_usd"] for p in prompts) == run_span.attributes[
        "orchestrating_agents.cost_usd"]


def test_a_plain_pool_loses_the_trace_which_is_why_the_helpers_exist(spans, provider) -> None:
    def work(i: int) -> None:
        with _tracing.prompt_span(i):
            pass

    with provider.get_tracer("app").start_as_current_span("caller"):
        _fan_out(3, work, helper=False)
    prompts = _by_name(spans.get_finished_spans(), "prompt")
    assert len(prompts) == 3 and all(p.parent is None for p in prompts)  # three unrelated root spans


def test_thread_and_wrap_run_under_a_given_span_and_are_reentrant(spans, provider) -> None:
    seen: list[Any] = []
    tool = _tracing.tool_span("lookup", "toolu_1")
    worker = _tracing.thread(lambda: seen.append(trace.get_current_span().get_span_context().span_id),
                             name="tool-lookup", daemon=True, under=tool)
    worker.start()
    worker.join(5)
    tool.finish(seconds=0.01)
    tool.end()
    assert seen == [tool.span.get_span_context().span_id]

    with provider.get_tracer("app").start_as_current_span("caller") as caller:
        bound = _tracing.wrap(lambda: trace.get_current_span().get_span_context().span_id)
    barrier = threading.Barrier(4)
    ids: list[int] = []

    def call_bound() -> None:
        barrier.wait(5)
        ids.append(bound())  # the same wrapped function in four threads at once

    threads = [threading.Thread(target=call_bound) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert ids == [caller.get_span_context().span_id] * 4


def test_sdk_request_in_a_worker_nests_under_the_prompt_span(spans, provider, client_env) -> None:
    client = _client(client_env)

    def work(i: int) -> None:
        with _tracing.prompt_span(i):
            client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"nest {i}"}])

    with provider.get_tracer("app").start_as_current_span("caller"):
        with _tracing.run_span("invoke_parallel", prompts=5, workers=4, model=MODEL):
            _fan_out(5, work)
    finished = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1
    prompts = {p.context.span_id for p in _by_name(finished, "prompt")}
    sdk = _by_name(finished, "anthropic.messages.create")
    assert len(sdk) == 5 and {s.parent.span_id for s in sdk} == prompts  # one request under each prompt
    assert len(client_env.message_requests()) == 5


def test_library_call_in_a_helper_thread_nests_under_the_caller(spans, provider, client_env) -> None:
    claude_client.configure(client=_client(client_env))
    replies: list[Any] = []
    with provider.get_tracer("app").start_as_current_span("caller") as caller:
        worker = _tracing.thread(lambda: replies.append(claude_client.invoke_claude("hello from a thread",
                                                                                    model=MODEL, max_tokens=20)))
        worker.start()
        worker.join(30)
    (sdk,) = _by_name(spans.get_finished_spans(), "anthropic.messages.create")
    assert replies and sdk.parent.span_id == caller.get_span_context().span_id


# ------------------------------------------------------------------------------- the spans
def test_span_names_and_attributes_follow_the_genai_conventions(spans) -> None:
    usage = Usage(input_tokens=10, output_tokens=7, cache_creation_input_tokens=3, cache_read_input_tokens=5)
    with _tracing.run_span("invoke_parallel_managed", prompts=2, workers=2, model=MODEL) as run:
        with _tracing.agent_span("agent", depth=0, model=MODEL) as agent:
            with _tracing.tool_span("lookup", "toolu_9", input={"word": "x"}) as tool:
                tool.finish(seconds=0.5, is_error=False)
            with _tracing.tool_span("broken", "toolu_10") as bad:
                bad.finish(seconds=0.1, is_error=True)
            agent.finish(turns=2, tool_calls=2, usage=usage, cost_usd=0.01)
        run.finish(usage=usage, cost_usd=0.01, failures_by_kind={"overloaded": 2, "refusal": 1},
                   cache_reads=1, interrupted=0, succeeded=1)
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"run invoke_parallel_managed", "invoke_agent agent", "execute_tool lookup",
                             "execute_tool broken"}
    agent_attrs = finished["invoke_agent agent"].attributes
    assert agent_attrs["gen_ai.operation.name"] == "invoke_agent" and agent_attrs["gen_ai.agent.name"] == "agent"
    assert agent_attrs["orchestrating_agents.agent.depth"] == 0 and agent_attrs["gen_ai.request.model"] == MODEL
    tool = finished["execute_tool lookup"]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "lookup" and tool.attributes["gen_ai.tool.call.id"] == "toolu_9"
    assert tool.attributes["orchestrating_agents.tool.seconds"] == 0.5
    assert tool.attributes["orchestrating_agents.tool.is_error"] is False
    assert "gen_ai.tool.call.arguments" not in tool.attributes  # no content by default
    assert tool.parent.span_id == finished["invoke_agent agent"].context.span_id
    broken = finished["execute_tool broken"]
    assert broken.status.status_code is StatusCode.ERROR and broken.attributes["error.type"] == "tool_error"
    run_attrs = finished["run invoke_parallel_managed"].attributes
    assert run_attrs["orchestrating_agents.run.prompts"] == 2 and run_attrs["orchestrating_agents.run.workers"] == 2
    assert run_attrs["orchestrating_agents.run.failures"] == 3
    assert run_attrs["orchestrating_agents.run.failures.overloaded"] == 2
    assert run_attrs["orchestrating_agents.usage.input_tokens"] == 18  # cache reads and writes included
    assert run_attrs["orchestrating_agents.usage.cache_read.input_tokens"] == 5
    assert isinstance(run_attrs["orchestrating_agents.cost_usd"], float)
    assert not any(k.startswith("gen_ai.usage.") for s in finished.values() for k in s.attributes)


def test_run_totals_come_from_the_runs_results(spans, client_env) -> None:
    prompts = [{"prompt": "ok one"}, {"prompt": "ok two"}, {"prompt": "[[fail=400]] bad"}]
    results = claude_client.invoke_parallel(prompts, model=MODEL, max_tokens=20, return_exceptions=True)
    assert len(results.errors) == 1 and results.cost_usd
    spans.clear()  # the run's own spans (tests/test_tracing_runs.py): here only the hand-made ones
    with _tracing.run_span("invoke_parallel", prompts=3, workers=5, model=MODEL) as run:
        run.finish_results(results)
    stopped = ParallelResults([results[0], None, None], usage=results[0].usage, cost_usd=results[0].cost_usd)
    with _tracing.run_span("invoke_parallel", prompts=3) as cut:
        cut.finish_results(stopped, interrupted=True)
    done, interrupted = spans.get_finished_spans()
    attrs = done.attributes
    assert attrs["orchestrating_agents.cost_usd"] == results.cost_usd  # the run's cost, exactly
    assert attrs["orchestrating_agents.usage.output_tokens"] == results.usage.output_tokens
    assert attrs["orchestrating_agents.run.succeeded"] == 2 and attrs["orchestrating_agents.run.failures"] == 1
    assert attrs[f"orchestrating_agents.run.failures.{results.errors[2].kind}"] == 1
    assert attrs["orchestrating_agents.run.interrupted"] == 0 and attrs["orchestrating_agents.run.cache_reads"] == 0
    assert interrupted.attributes["orchestrating_agents.run.interrupted"] == 2
    assert interrupted.attributes["orchestrating_agents.run.succeeded"] == 1
    cached = claude_client.invoke_parallel([{"prompt": f"q {i}"} for i in range(3)], model=MODEL, max_tokens=20,
                                           shared_system="A long shared system prompt. " * 2000,
                                           cache_shared_system=True)
    with _tracing.run_span("invoke_parallel", prompts=3) as run:
        run.finish_results(cached)
    reads = sum(1 for r in cached if r.usage.cache_read_input_tokens > 0)
    assert reads == 2 and spans.get_finished_spans()[-1].attributes["orchestrating_agents.run.cache_reads"] == 2


def test_failures_mark_the_span_without_their_text_and_interrupts_are_not_failures(spans) -> None:
    with pytest.raises(ClaudeInvocationError):
        with _tracing.prompt_span(0):
            raise ClaudeInvocationError("overloaded: the prompt said SECRET-WORDS", kind="overloaded")
    with pytest.raises(KeyboardInterrupt):
        with _tracing.prompt_span(1):
            raise KeyboardInterrupt
    span = _tracing.prompt_span(2)
    span.end(ClaudeInvocationError("stopped", kind="interrupted"))
    span.end()  # a second end does nothing
    by_index = sorted(spans.get_finished_spans(), key=lambda s: s.attributes["orchestrating_agents.prompt.index"])
    failed, stopped, cut = by_index
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["error.type"] == "overloaded"
    assert "SECRET-WORDS" not in " ".join(_values(failed)) and failed.events == ()
    for s in (stopped, cut):
        assert s.status.status_code is StatusCode.UNSET and s.attributes["orchestrating_agents.interrupted"] is True
    assert len(spans.get_finished_spans()) == 3


def test_events_land_on_the_current_span_in_any_thread(spans) -> None:
    prompt = _tracing.prompt_span(0, task_id="t0")

    def attempt(n: int) -> None:
        with prompt.current():
            _tracing.event("admission_wait", seconds=0.2, limit="itpm")
            _tracing.event("retry", kind="overloaded", delay_s=0.5, attempt=n, **{"error.type": "overloaded"})

    for n in (1, 2):  # two attempts on two threads, like a managed run's workers
        t = threading.Thread(target=attempt, args=(n,))
        t.start()
        t.join(5)
    prompt.event("spend_cap_wait", seconds=1.0)
    prompt.finish(attempts=3, terminal_reason="completed")
    prompt.end()
    _tracing.event("retry", kind="x")  # no current span: nothing, no error
    (span,) = spans.get_finished_spans()
    names = [e.name for e in span.events]
    assert names == ["orchestrating_agents.admission_wait", "orchestrating_agents.retry"] * 2 + [
        "orchestrating_agents.spend_cap_wait"]
    retry = span.events[1].attributes
    assert retry["orchestrating_agents.retry.kind"] == "overloaded"
    assert retry["orchestrating_agents.retry.delay_s"] == 0.5
    assert retry["error.type"] == "overloaded" and span.events[3].attributes["orchestrating_agents.retry.attempt"] == 2
    assert span.attributes["orchestrating_agents.prompt.terminal_reason"] == "completed"


# ----------------------------------------------------------------------- no key, no text
def test_no_attribute_carries_the_key_or_any_text(spans, provider, client_env) -> None:
    client = _client(client_env)
    prompt_text = "PROMPT-TEXT-4711 tell me something"
    replies: list[str] = []

    def work(i: int) -> None:
        with _tracing.prompt_span(i, task_id=f"task-{i}") as span:
            with _tracing.agent_span("agent", depth=0, model=MODEL):
                with _tracing.tool_span("lookup", f"toolu_{i}", input={"query": "TOOL-INPUT-0815"}) as tool:
                    tool.finish(seconds=0.0, output="TOOL-OUTPUT-0816")
                reply = client.messages.create(model=MODEL, max_tokens=30, system="SYSTEM-TEXT-1234",
                                               messages=[{"role": "user", "content": f"{prompt_text} {i}"}])
                replies.append("".join(b.text for b in reply.content if b.type == "text"))
                _tracing.event("retry", kind="overloaded", delay_s=0.1, attempt=1)
            span.finish(attempts=1, terminal_reason="completed", cost_usd=0.001)

    with _tracing.run_span("invoke_parallel", prompts=3, workers=3, model=MODEL) as run:
        _fan_out(3, work)
        run.finish(cost_usd=0.003)
    finished = spans.get_finished_spans()
    assert len(_by_name(finished, "anthropic.messages.create")) == 3 and all(replies)
    text = "\n".join(v for s in finished for v in _values(s))
    forbidden = [TEST_KEY, "PROMPT-TEXT-4711", "SYSTEM-TEXT-1234", "TOOL-INPUT-0815", "TOOL-OUTPUT-0816"]
    forbidden += [r for r in replies if len(r) > 8]
    assert [f for f in forbidden if f in text] == []


def test_content_capture_records_tool_content_redacted_and_cut(spans, monkeypatch) -> None:
    from _errors import register_secret

    register_secret(TEST_KEY)
    _tracing.set_capture_content(True)
    with _tracing.tool_span("lookup", "toolu_1", input={"query": "weather"}) as tool:
        tool.finish(seconds=0.1, output=f"sunny, key {TEST_KEY}")
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_TRACES_MAX_CONTENT_BYTES", "12")
    with _tracing.tool_span("lookup", "toolu_2", input="a long input that is cut"):
        pass
    _tracing.set_capture_content(False)
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE", "content")
    with _tracing.tool_span("lookup", "toolu_3", input="off by the library's switch"):
        pass
    _tracing.set_capture_content(None)  # None: the SDK's env var decides (content)
    assert _tracing.capture_content()
    first, cut, off = spans.get_finished_spans()
    assert json.loads(first.attributes["gen_ai.tool.call.arguments"]) == {"query": "weather"}
    assert first.attributes["gen_ai.tool.call.result"] == "sunny, key [redacted API key]"
    assert cut.attributes["gen_ai.tool.call.arguments"] == "a long input" and cut.attributes[
        "orchestrating_agents.content.truncated"] is True
    assert "gen_ai.tool.call.arguments" not in off.attributes


def test_client_option_respects_the_sdks_own_switch(spans, provider, client_env, monkeypatch) -> None:
    option = _tracing.client_option()
    assert option == {"tracer_provider": provider, "traces": {}}
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_PROPAGATION", "false")
    option = _tracing.client_option()
    assert option["traces"] == {"enabled": False} and option["propagation"] is False
    client = _client(client_env, option)
    with _tracing.prompt_span(0):
        client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "quiet"}])
    assert [s.name for s in spans.get_finished_spans()] == ["prompt"]  # the SDK made no span
    assert len(client_env.message_requests()) == 1


# ------------------------------------------------------------------------------ trace file
def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _otlp_spans(lines: list[dict]) -> list[dict]:
    out = []
    for line in lines:
        for rs in line["resourceSpans"]:
            resource = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    out.append({**span, "_scope": ss["scope"]["name"], "_resource": resource})
    return out


def test_trace_file_writes_one_trace_of_otlp_json_lines(tmp_path, client_env) -> None:
    path = tmp_path / "run.jsonl"
    with open_trace_file(str(path)) as trace_file:
        assert _tracing.enabled() and _tracing.tracer_provider() is trace_file.provider
        client = _client(client_env)

        def work(i: int) -> None:
            with _tracing.prompt_span(i) as span:
                client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"f {i}"}])
                _tracing.event("retry", kind="overloaded", delay_s=0.25, attempt=1)
                span.finish(attempts=1, terminal_reason="completed", cost_usd=0.5)

        with _tracing.run_span("invoke_parallel_managed", prompts=3, workers=2, model=MODEL) as run:
            _fan_out(3, work)
            run.finish(cost_usd=1.5)
    assert _tracing.tracer_provider() is None  # the library's previous provider again
    assert trace_file.spans_written == 7
    found = _otlp_spans(_lines(path))
    assert len(found) == 7 and len({s["traceId"] for s in found}) == 1
    assert all(len(s["traceId"]) == 32 and len(s["spanId"]) == 16 for s in found)
    (run,) = [s for s in found if s["name"] == "run invoke_parallel_managed"]
    prompts = [s for s in found if s["name"] == "prompt"]
    sdk = [s for s in found if s["name"] == "anthropic.messages.create"]
    assert "parentSpanId" not in run and {p["parentSpanId"] for p in prompts} == {run["spanId"]}
    assert {s["parentSpanId"] for s in sdk} == {p["spanId"] for p in prompts}
    assert sdk[0]["kind"] == 3 and run["kind"] == 1  # CLIENT, INTERNAL in OTLP numbering
    assert run["_resource"]["service.name"] == {"stringValue": "orchestrate"}
    attrs = {a["key"]: a["value"] for a in run["attributes"]}
    assert attrs["orchestrating_agents.cost_usd"] == {"doubleValue": 1.5}
    assert attrs["orchestrating_agents.run.prompts"] == {"intValue": "3"}
    event = prompts[0]["events"][0]
    assert event["name"] == "orchestrating_agents.retry" and int(event["timeUnixNano"]) > 0
    # after the file is closed, a straggler's span is dropped quietly
    late = trace_file.provider.get_tracer("late").start_span("late")
    late.end()
    assert trace_file.spans_written == 7 and len(_lines(path)) == 7


def test_trace_file_refuses_an_unwritable_path_before_anything(tmp_path, emulator) -> None:
    with pytest.raises(UsageError, match="--trace-file: cannot write"):
        open_trace_file(str(tmp_path / "missing-dir" / "run.jsonl"))
    with pytest.raises(UsageError, match="--trace-file needs a file path"):
        open_trace_file("  ")
    assert _tracing.tracer_provider() is None and emulator.requests == []


def test_trace_file_can_join_the_applications_provider(tmp_path) -> None:
    app = TracerProvider(shutdown_on_exit=False)
    path = tmp_path / "app.jsonl"
    trace_file = open_trace_file(str(path), tracer_provider=app)
    app.get_tracer("app").start_span("app work").end()
    trace_file.close()
    trace_file.close()  # idempotent
    assert [s["name"] for s in _otlp_spans(_lines(path))] == ["app work"]
    with pytest.raises(TypeError, match="tracer_provider"):
        open_trace_file(str(path), tracer_provider=object())


# ------------------------------------------------------------- the global provider (child)
_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import anthropic
from concurrent.futures import ThreadPoolExecutor
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import _tracing

before = [_tracing.enabled(), _tracing.propagating()]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
after = [_tracing.enabled(), _tracing.propagating()]
client = anthropic.Anthropic(api_key=sys.argv[3], base_url=sys.argv[2], max_retries=0)  # SDK defaults

def work(i):
    with _tracing.prompt_span(i):
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "g"}])

with trace.get_tracer("app").start_as_current_span("caller"):
    with _tracing.run_span("invoke_parallel", prompts=2, workers=2):
        with ThreadPoolExecutor(2) as pool:
            for f in [_tracing.submit(pool, work, i) for i in range(2)]:
                f.result()
spans = exporter.get_finished_spans()
parents = {s.name: [] for s in spans}
ids = {s.context.span_id: s.name for s in spans}
for s in spans:
    parents[s.name].append(ids.get(s.parent.span_id) if s.parent else None)
sys.modules["opentelemetry.sdk"] = None  # as without the [tracing] extra
import _cli_trace
try:
    _cli_trace.open_trace_file("never.jsonl")
    hint = ""
except Exception as exc:
    hint = f"{type(exc).__name__}: {exc}"
print(json.dumps({"before": before, "after": after, "traces": len({s.context.trace_id for s in spans}),
                  "parents": parents, "hint": hint}))
"""


def test_the_global_provider_path_in_a_child_process(emulator, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY"))}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(SCRIPTS), emulator.base_url, TEST_KEY],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == [False, False] and out["after"] == [True, True]
    assert out["traces"] == 1
    assert out["parents"] == {"anthropic.messages.create": ["prompt", "prompt"], "prompt": ["run invoke_parallel"] * 2,
                              "run invoke_parallel": ["caller"], "caller": [None]}
    assert out["hint"].startswith("UsageError: --trace-file needs the OpenTelemetry SDK")
    assert "orchestrating-agents[tracing]" in out["hint"]
    assert not (tmp_path / "never.jsonl").exists() and len(emulator.message_requests()) == 2
