"""Traces of real runs: each public run path gives one trace with the expected tree.

Spans go to a real opentelemetry-sdk ``TracerProvider`` with an ``InMemorySpanExporter``, handed
to the library with ``_tracing.use_tracer_provider`` (the SDK clients the library builds follow it
through ``get_client``); never the process's global provider (the CLI test runs in a child
process). Requests go over HTTP to the emulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from conftest import SCRIPTS, TEST_KEY
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import _tracing
import claude_client as cc
from anthropic_emulator import tool_directive
from claude_client import ClaudeInvocationError, RunInterrupted, delegate_tool
from orchestration import invoke_parallel_managed, invoke_with_retry
from task_state import TaskTracker

MODEL = "claude-haiku-4-5"
SDK = "anthropic.messages.create"
NS = "orchestrating_agents"
FAST = dict(base_delay_ms=1, max_delay_ms=5)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def _provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter


@pytest.fixture
def spans(_provider: tuple[TracerProvider, InMemorySpanExporter], client_env: Any) -> Iterator[InMemorySpanExporter]:
    """The library (and the clients it builds) send spans to the test provider; restored after."""
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
def caller(_provider: tuple[TracerProvider, InMemorySpanExporter]) -> Callable[[], Any]:
    """``with caller():`` an application span around the run."""
    tracer = _provider[0].get_tracer("app")
    return lambda: tracer.start_as_current_span("caller")


# -------------------------------------------------------------------------------- helpers
class Tree:
    """The finished spans of one trace, by parent."""

    def __init__(self, finished: Any) -> None:
        self.spans: list[ReadableSpan] = list(finished)
        assert self.spans, "no spans"
        assert len({s.context.trace_id for s in self.spans}) == 1, "more than one trace"
        self.by_id = {s.context.span_id: s for s in self.spans}
        roots = [s for s in self.spans if s.parent is None]
        assert len(roots) == 1, [s.name for s in roots]
        self.root = roots[0]

    def children(self, span: ReadableSpan, name: Optional[str] = None) -> list[ReadableSpan]:
        out = [s for s in self.spans if s.parent is not None and s.parent.span_id == span.context.span_id]
        out.sort(key=lambda s: s.start_time or 0)
        return [s for s in out if name is None or s.name == name]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def parent(self, span: ReadableSpan) -> Optional[ReadableSpan]:
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None

    def shape(self, span: Optional[ReadableSpan] = None) -> Any:
        """``(name, [children...])`` with children sorted by name (for compact assertions)."""
        span = span or self.root
        kids = sorted((self.shape(c) for c in self.children(span)), key=repr)
        return (span.name, kids) if kids else span.name


def _values(span: ReadableSpan) -> list[str]:
    out = [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for e in span.events:
        out += [str(e.name)] + [f"{k}={v}" for k, v in (e.attributes or {}).items()]
    out.append(str(span.status.description or ""))
    return out


def _no_key_or_text(finished: Any, *texts: str) -> None:
    """No attribute (events' and status included) of any span carries the key or these texts."""
    everything = "\n".join(v for s in finished for v in _values(s))
    leaked = [t for t in (TEST_KEY, *texts) if t and t in everything]
    assert leaked == []


def _retries(span: ReadableSpan) -> list[int]:
    """The attempts that failed and were retried, from the span's ``retry`` events."""
    return [e.attributes[f"{NS}.retry.attempt"] for e in span.events if e.name == f"{NS}.retry"]


def _prompt_index(span: ReadableSpan) -> int:
    return int(span.attributes[f"{NS}.prompt.index"])


def lookup(q: str) -> str:
    """Look a word up.

    Args:
        q: the word to look up
    """
    return f"LOOKED-UP-{q}"


def broken(q: str) -> str:
    """A tool that fails.

    Args:
        q: anything
    """
    raise RuntimeError(f"BROKEN-{q}")


# ---------------------------------------------------------------------------------- managed
def test_a_managed_run_is_one_trace_with_retries_as_events_and_its_cost(spans, caller, client_env) -> None:
    prompts = [
        {"prompt": "MANAGED-TEXT one", "task_id": "a", "category": "c1"},
        {"prompt": "[[fail=529 times=2]] MANAGED-TEXT two", "task_id": "b"},
        {"prompt": "[[fail=400]] MANAGED-TEXT three", "task_id": "c"},
    ]
    with caller():
        results = invoke_parallel_managed(prompts, model=MODEL, max_tokens=40, max_workers=2,
                                          return_exceptions=True, **FAST)
    assert str(results[0]) == "Echo: MANAGED-TEXT one" and results.errors[2].kind == "bad_request"
    tree = Tree(spans.get_finished_spans())
    assert tree.root.name == "caller"
    (run,) = tree.children(tree.root)
    assert run.name == "run invoke_parallel_managed"
    prompt_spans = sorted(tree.children(run), key=_prompt_index)
    assert [s.name for s in prompt_spans] == ["prompt"] * 3
    assert [len(tree.children(p, SDK)) for p in prompt_spans] == [1, 3, 1]  # every attempt under its prompt
    assert len(tree.named(SDK)) == 5 == len(client_env.message_requests())
    first, retried, failed = (p.attributes for p in prompt_spans)
    assert first[f"{NS}.task.id"] == "a" and first[f"{NS}.task.category"] == "c1"
    assert first[f"{NS}.prompt.terminal_reason"] == "succeeded" and first[f"{NS}.prompt.attempts"] == 1
    assert retried[f"{NS}.prompt.attempts"] == 3 and retried[f"{NS}.prompt.terminal_reason"] == "succeeded"
    assert failed[f"{NS}.prompt.terminal_reason"] == "failed_permanently" and failed["error.type"] == "bad_request"
    assert prompt_spans[2].status.status_code is StatusCode.ERROR
    events = [e for e in prompt_spans[1].events if e.name == f"{NS}.retry"]
    assert len(events) == 2
    assert [e.attributes[f"{NS}.retry.attempt"] for e in events] == [1, 2]
    assert all(e.attributes[f"{NS}.retry.kind"] == "overloaded" for e in events)
    assert all(e.attributes[f"{NS}.retry.delay_s"] >= 0 for e in events)
    # costs: the run's attribute is the run's cost_usd, and the sum of its prompts'
    attrs = run.attributes
    assert attrs[f"{NS}.cost_usd"] == results.cost_usd > 0
    assert sum(p.attributes.get(f"{NS}.cost_usd", 0.0) for p in prompt_spans) == pytest.approx(results.cost_usd)
    assert attrs[f"{NS}.usage.output_tokens"] == results.usage.output_tokens
    assert attrs[f"{NS}.run.prompts"] == 3 and attrs[f"{NS}.run.workers"] == 2
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs[f"{NS}.run.succeeded"] == 2 and attrs[f"{NS}.run.failures.bad_request"] == 1
    sdk_output = sum(s.attributes.get("gen_ai.usage.output_tokens", 0) for s in tree.named(SDK))
    assert sdk_output == results.usage.output_tokens  # the SDK's spans count each token once
    _no_key_or_text(tree.spans, "MANAGED-TEXT", *[str(r) for r in results if r is not None])


def test_ctrl_c_in_a_managed_run_keeps_one_trace_and_marks_what_did_not_finish(spans, caller, client_env) -> None:
    def stop(q: str) -> str:
        """Stop the run.

        Args:
            q: anything
        """
        raise KeyboardInterrupt

    prompts = [{"prompt": f"quick {i}"} for i in range(2)] + [
        {"prompt": tool_directive("stop", {"q": "x"}) + " stops it [[ttft_ms=300 times=1]]"}
    ] + [{"prompt": f"queued {i} [[ttft_ms=2000]]"} for i in range(3)]
    tracker = TaskTracker()
    with caller(), pytest.raises(RunInterrupted) as info:
        invoke_parallel_managed(prompts, model=MODEL, tools=[stop], max_workers=3, max_tokens=60, tracker=tracker,
                                **FAST)
    assert tracker.reason_counts()["succeeded"] == 2
    client_env.wait_idle(timeout=5)
    tree = Tree(spans.get_finished_spans())
    (run,) = tree.named("run invoke_parallel_managed")
    assert tree.parent(run) is tree.root and tree.root.name == "caller"
    assert run.attributes[f"{NS}.interrupted"] is True and run.status.status_code is StatusCode.UNSET
    assert run.attributes[f"{NS}.run.succeeded"] == 2 and run.attributes[f"{NS}.run.interrupted"] == 4
    assert run.attributes[f"{NS}.cost_usd"] == info.value.results.cost_usd
    prompt_spans = sorted(tree.children(run, "prompt"), key=_prompt_index)
    reasons = {_prompt_index(p): p.attributes.get(f"{NS}.prompt.terminal_reason") for p in prompt_spans}
    assert reasons[0] == reasons[1] == "succeeded" and reasons[2] == "interrupted"
    stopper = prompt_spans[2]
    (agent,) = tree.children(stopper, "invoke_agent agent")
    (tool,) = tree.children(agent, "execute_tool stop")
    assert tool.attributes[f"{NS}.interrupted"] is True
    assert all(p.status.status_code is StatusCode.UNSET for p in prompt_spans)


# -------------------------------------------------------------------------------- tool loop
@pytest.mark.parametrize("threaded", [False, True])
def test_a_tool_agent_shows_execute_tool_spans_under_its_invoke_agent_span(spans, caller, client_env,
                                                                           threaded) -> None:
    prompt = (tool_directive("lookup", {"q": "TOOL-INPUT-1"}) + tool_directive("broken", {"q": "TOOL-INPUT-2"})
              + " AGENT-TEXT please")
    options: dict[str, Any] = {"tool_timeout": 30.0, "parallel_tools": True} if threaded else {}
    with caller():
        reply = cc.invoke_claude(prompt, model=MODEL, max_tokens=200, tools=[lookup, broken], **options)
    assert [c.is_error for c in reply.tool_calls] == [False, True]
    tree = Tree(spans.get_finished_spans())
    (agent,) = tree.children(tree.root)
    assert agent.name == "invoke_agent agent"
    names = [s.name for s in tree.children(agent)]
    expected = [SDK, "execute_tool lookup", "execute_tool broken", SDK]
    assert (sorted(names) == sorted(expected)) if threaded else (names == expected)  # threads start together
    assert names[0] == names[-1] == SDK
    a = agent.attributes
    assert a["gen_ai.operation.name"] == "invoke_agent" and a[f"{NS}.agent.depth"] == 0
    assert a[f"{NS}.agent.turns"] == 2 and a[f"{NS}.agent.tool_calls"] == 2
    assert a[f"{NS}.cost_usd"] == reply.cost_usd and a[f"{NS}.usage.output_tokens"] == reply.usage.output_tokens
    ok, bad = tree.named("execute_tool lookup")[0], tree.named("execute_tool broken")[0]
    assert ok.attributes["gen_ai.tool.name"] == "lookup" and ok.attributes[f"{NS}.tool.is_error"] is False
    assert ok.attributes["gen_ai.tool.call.id"] == reply.tool_calls[0].id
    assert ok.attributes[f"{NS}.tool.seconds"] >= 0 and ok.status.status_code is StatusCode.UNSET
    assert bad.attributes[f"{NS}.tool.is_error"] is True and bad.status.status_code is StatusCode.ERROR
    assert bad.attributes["error.type"] == "tool_error"
    _no_key_or_text(tree.spans, "TOOL-INPUT", "LOOKED-UP", "BROKEN-", "AGENT-TEXT")


def test_content_capture_puts_tool_arguments_and_results_on_the_tool_spans(spans, client_env) -> None:
    _tracing.set_capture_content(True)
    cc.invoke_claude(tool_directive("lookup", {"q": "w"}) + " capture", model=MODEL, max_tokens=200,
                     tools=[lookup])
    (tool,) = [s for s in spans.get_finished_spans() if s.name == "execute_tool lookup"]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"q": "w"}
    assert tool.attributes["gen_ai.tool.call.result"] == "LOOKED-UP-w"


def test_retries_of_a_single_call_are_events_on_the_callers_span(spans, caller, client_env) -> None:
    with caller():
        reply = invoke_with_retry("[[fail=529 times=2]] again", model=MODEL, max_tokens=20, **FAST)
    assert str(reply) == "Echo: again"
    tree = Tree(spans.get_finished_spans())
    assert len(tree.children(tree.root, SDK)) == 3
    events = [e for e in tree.root.events if e.name == f"{NS}.retry"]
    assert [(e.attributes[f"{NS}.retry.kind"], e.attributes[f"{NS}.retry.attempt"]) for e in events] == [
        ("overloaded", 1), ("overloaded", 2)]


# ------------------------------------------------------------------------------- switches
def test_switching_the_library_off_leaves_the_sdks_spans_nested_under_the_caller(spans, caller, client_env) -> None:
    cc.configure(tracing=False)
    assert not _tracing.enabled() and _tracing.propagating()
    with caller():
        invoke_parallel_managed([{"prompt": f"off {i}"} for i in range(3)], model=MODEL, max_tokens=20)
        cc.invoke_claude(tool_directive("lookup", {"q": "x"}) + " off", model=MODEL, max_tokens=200,
                         tools=[lookup], tool_timeout=10.0)
    tree = Tree(spans.get_finished_spans())
    assert sorted({s.name for s in tree.spans}) == [SDK, "caller"]
    assert len(tree.children(tree.root, SDK)) == 5  # the workers' and the tool loop's requests
    assert all(_tracing.SCOPE != (s.instrumentation_scope.name if s.instrumentation_scope else "")
               for s in tree.spans)
    with pytest.raises(TypeError, match="tracing"):
        cc.configure(tracing="no")
    cc.reset_client()  # the library's spans are on again
    assert _tracing.enabled()


def test_the_sdks_own_switch_is_respected_by_the_clients_the_library_builds(spans, caller, client_env,
                                                                            monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    cc.reset_client()
    with caller():
        results = invoke_parallel_managed([{"prompt": f"quiet {i}"} for i in range(2)], model=MODEL, max_tokens=20)
    assert len(results) == 2 and len(client_env.message_requests()) == 2
    tree = Tree(spans.get_finished_spans())
    assert tree.named(SDK) == [] and len(tree.named("prompt")) == 2  # the library's spans only


def test_a_client_made_before_the_provider_is_not_reused_after_it(spans, client_env) -> None:
    from _transport import get_client

    provider = _tracing.tracer_provider()
    _tracing.use_tracer_provider(None)
    plain = get_client()
    _tracing.use_tracer_provider(provider)
    traced = get_client()
    assert traced is not plain and get_client() is traced
    traced.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert [s.name for s in spans.get_finished_spans()] == [SDK]


# ----------------------------------------------------------------------------- fan-out
def test_invoke_parallel_of_ten_prompts_is_one_trace_under_the_callers_span(spans, caller, client_env) -> None:
    prompts = [{"prompt": f"PARALLEL-TEXT {i}"} for i in range(10)]
    with caller():
        results = cc.invoke_parallel(prompts, model=MODEL, max_tokens=30, max_workers=4)
    tree = Tree(spans.get_finished_spans())
    assert tree.root.name == "caller"
    (run,) = tree.children(tree.root)
    assert run.name == "run invoke_parallel" and run.attributes[f"{NS}.run.prompts"] == 10
    prompt_spans = sorted(tree.children(run), key=_prompt_index)
    assert [s.name for s in prompt_spans] == ["prompt"] * 10
    assert [_prompt_index(p) for p in prompt_spans] == list(range(10))
    assert all([c.name for c in tree.children(p)] == [SDK] for p in prompt_spans)  # each over its request
    assert len(tree.spans) == 1 + 1 + 10 + 10
    assert run.attributes[f"{NS}.cost_usd"] == results.cost_usd > 0
    assert sum(p.attributes[f"{NS}.cost_usd"] for p in prompt_spans) == pytest.approx(results.cost_usd)
    assert all(p.attributes[f"{NS}.prompt.terminal_reason"] == "succeeded" for p in prompt_spans)
    assert all(p.attributes[f"{NS}.prompt.attempts"] == 1 for p in prompt_spans)
    assert run.attributes[f"{NS}.run.succeeded"] == 10 and run.attributes[f"{NS}.run.failures"] == 0
    _no_key_or_text(tree.spans, "PARALLEL-TEXT", *[str(r) for r in results])


def test_a_failed_parallel_run_still_records_its_totals(spans, client_env) -> None:
    prompts = [{"prompt": "fine"}, {"prompt": "[[refuse]] no"}, {"prompt": "[[fail=400]] bad"}]
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_parallel(prompts, model=MODEL, max_tokens=30)
    results = info.value.results
    tree = Tree(spans.get_finished_spans())
    run = tree.root
    assert run.name == "run invoke_parallel" and run.status.status_code is StatusCode.ERROR
    assert run.attributes[f"{NS}.cost_usd"] == results.cost_usd
    assert run.attributes[f"{NS}.run.failures"] == 2 and run.attributes[f"{NS}.run.failures.refusal"] == 1
    prompt_spans = sorted(tree.children(run), key=_prompt_index)
    assert [p.attributes.get("error.type") for p in prompt_spans] == [None, "refusal", "bad_request"]
    assert [p.attributes[f"{NS}.prompt.terminal_reason"] for p in prompt_spans] == ["succeeded", "failed", "failed"]
    assert sum(p.attributes.get(f"{NS}.cost_usd", 0.0) for p in prompt_spans) == pytest.approx(results.cost_usd)


def test_streaming_fan_out_is_one_trace(spans, caller, client_env) -> None:
    chunks: list[list[str]] = [[], [], []]
    with caller():
        cc.invoke_parallel_streaming([{"prompt": f"stream {i}"} for i in range(3)],
                                     callbacks=[c.append for c in chunks], model=MODEL, max_tokens=30)
    assert all(chunks)
    tree = Tree(spans.get_finished_spans())
    (run,) = tree.children(tree.root)
    assert run.name == "run invoke_parallel_streaming"
    assert tree.shape(run) == ("run invoke_parallel_streaming", [("prompt", [SDK])] * 3)


def test_a_retry_inside_a_fan_out_is_an_event_on_its_prompt(spans, client_env) -> None:
    results = cc.invoke_parallel([{"prompt": "[[fail=529 times=1]] flaky"}, {"prompt": "steady"}], model=MODEL,
                                 max_tokens=30)
    assert len(results) == 2
    tree = Tree(spans.get_finished_spans())
    flaky, steady = sorted(tree.children(tree.root), key=_prompt_index)
    assert _retries(flaky) == [1] and _retries(steady) == []
    assert flaky.attributes[f"{NS}.prompt.attempts"] == 2 and len(tree.children(flaky, SDK)) == 2


def test_ctrl_c_of_a_fan_out_keeps_one_trace(spans, caller, client_env) -> None:
    def ctrl_c() -> None:
        client_env.wait_for(lambda e: e.active_requests == 2 and len(e.message_requests()) == 3, timeout=10)
        os.kill(os.getpid(), signal.SIGINT)

    prompts = [{"prompt": "quick"}] + [{"prompt": f"slow {i} [[ttft_ms=5000]]"} for i in range(4)]
    threading.Thread(target=ctrl_c, daemon=True).start()
    with caller(), pytest.raises(RunInterrupted) as info:
        cc.invoke_parallel(prompts, model=MODEL, max_tokens=60, max_workers=2)
    client_env.wait_idle(timeout=10)
    tree = Tree(spans.get_finished_spans())
    assert tree.root.name == "caller"
    (run,) = tree.children(tree.root)
    assert run.attributes[f"{NS}.interrupted"] is True and run.status.status_code is StatusCode.UNSET
    assert run.attributes[f"{NS}.cost_usd"] == info.value.results.cost_usd
    assert run.attributes[f"{NS}.run.succeeded"] == 1 and run.attributes[f"{NS}.run.interrupted"] == 4
    prompt_spans = sorted(tree.children(run, "prompt"), key=_prompt_index)
    reasons = [p.attributes[f"{NS}.prompt.terminal_reason"] for p in prompt_spans]
    assert reasons == ["succeeded", "interrupted", "interrupted"]  # the two queued ones never started
    assert all(p.status.status_code is StatusCode.UNSET for p in prompt_spans)


def test_delegation_nests_the_sub_agents_under_the_delegate_tool(spans, caller, client_env) -> None:
    prompt = "plan " + tool_directive("delegate", {"tasks": ["SUB-TEXT one", "SUB-TEXT two"]})
    with caller():
        reply = cc.invoke_claude(prompt, model=MODEL, max_tokens=200, tools=[delegate_tool(max_depth=1, model=MODEL)])
    assert [c.task for c in reply.children] == ["SUB-TEXT one", "SUB-TEXT two"]
    tree = Tree(spans.get_finished_spans())
    (agent,) = tree.children(tree.root)
    assert agent.name == "invoke_agent agent" and agent.attributes[f"{NS}.agent.depth"] == 0
    (tool,) = tree.children(agent, "execute_tool delegate")
    (delegate,) = tree.children(tool)
    assert delegate.name == "invoke_agent delegate" and delegate.attributes[f"{NS}.agent.depth"] == 1
    assert delegate.attributes[f"{NS}.agent.sub_agents"] == 2
    subs = tree.children(delegate, "prompt")
    assert len(subs) == 2
    for sub in subs:
        (child,) = tree.children(sub)
        assert child.name == "invoke_agent agent" and child.attributes[f"{NS}.agent.depth"] == 1
        assert [s.name for s in tree.children(child)] == [SDK]
    assert len(tree.named(SDK)) == 4 == len(client_env.message_requests())
    children_cost = sum(c.cost_usd for c in reply.children)
    assert delegate.attributes[f"{NS}.cost_usd"] == pytest.approx(children_cost)
    assert agent.attributes[f"{NS}.cost_usd"] == reply.cost_usd
    _no_key_or_text(tree.spans, "SUB-TEXT")


# ------------------------------------------------------------------------------- batches
def test_a_batch_is_one_run_span_with_its_cost(spans, caller, client_env) -> None:
    from message_batches import invoke_batch

    with caller():
        results = invoke_batch([{"prompt": f"BATCH-TEXT {i}"} for i in range(3)] + [{"prompt": "[[batch=errored]] x"}],
                               model=MODEL, max_tokens=30, poll_interval=0.05, return_exceptions=True)
    assert len(results.errors) == 1
    tree = Tree(spans.get_finished_spans())
    (run,) = tree.named("run invoke_batch")
    assert tree.parent(run) is tree.root and tree.root.name == "caller"
    assert all(tree.parent(s) is run for s in tree.spans if s is not run and s is not tree.root)  # the poller's
    attrs = run.attributes
    assert attrs[f"{NS}.run.prompts"] == 4 and attrs[f"{NS}.run.succeeded"] == 3
    assert attrs[f"{NS}.cost_usd"] == results.cost_usd > 0 and attrs[f"{NS}.run.failures"] == 1
    assert attrs[f"{NS}.usage.output_tokens"] == results.usage.output_tokens
    _no_key_or_text(tree.spans, "BATCH-TEXT", *[str(r) for r in results if not isinstance(r, Exception)])


# --------------------------------------------------------------------------------- CLI
def test_the_cli_writes_one_trace_of_otlp_json_lines(emulator, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OTEL_"))}
    env.update(ANTHROPIC_BASE_URL=emulator.base_url, ANTHROPIC_API_KEY=TEST_KEY, PYTHONUNBUFFERED="1",
               ORCHESTRATING_AGENTS_PROJECT_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "--quiet", "--format", "jsonl", "--model", MODEL,
                           "--trace-file", "run.jsonl", "CLI-TEXT one", "CLI-TEXT two [[fail=529 times=1]]"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "run.jsonl").read_text(encoding="utf-8").splitlines()
    found = []
    for line in lines:
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                found += [{**span, "_scope": ss["scope"]["name"]} for span in ss["spans"]]
    assert len({s["traceId"] for s in found}) == 1
    names = sorted(s["name"] for s in found)
    assert names == sorted(["run invoke_parallel_managed", "prompt", "prompt", SDK, SDK, SDK])
    (run,) = [s for s in found if s["name"] == "run invoke_parallel_managed"]
    assert "parentSpanId" not in run
    costs = [json.loads(r).get("cost_usd") for r in proc.stdout.splitlines() if r.strip()]
    attrs = {a["key"]: a["value"] for a in run["attributes"]}
    assert attrs[f"{NS}.run.prompts"] == {"intValue": "2"} and attrs[f"{NS}.run.succeeded"] == {"intValue": "2"}
    text = "\n".join(lines)
    assert TEST_KEY not in text and "CLI-TEXT" not in text
    assert attrs[f"{NS}.cost_usd"]["doubleValue"] == pytest.approx(sum(costs))  # the records' costs
    bad = subprocess.run([sys.executable, "-m", "orchestrate", "--trace-file", str(tmp_path / "no" / "t.jsonl"),
                          "x"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--trace-file: no such directory" in bad.stderr
    assert len(emulator.message_requests()) == 3  # the refused run sent nothing
