"""OpenTelemetry tracing of the library's own work: one trace per run, whatever threads it uses.

The SDK already gives every request a ``CLIENT`` span (``anthropic.messages.create``) as soon as
the application installs a tracer provider. This module adds what only the library knows, and
makes the SDK's spans land under it:

* **context follows the work**: :func:`wrap`, :func:`submit` and :func:`thread` run a function in a
  copy of the caller's :mod:`contextvars` context (so its current span), in a worker thread;
* **library spans**, each a :class:`TracedSpan` (a context manager that makes the span current and
  ends it; ``current()`` makes it current in another thread without ending it):
  :func:`run_span` (a run of many prompts), :func:`prompt_span` (one prompt, all its attempts),
  :func:`agent_span` (``invoke_agent``: a tool loop or a sub-agent), :func:`tool_span`
  (``execute_tool``: one tool call);
* **events** on the current span (:func:`event`): retries, admission waits, spend-cap waits.

Nothing here needs more than ``opentelemetry-api`` (a dependency of the SDK). Until a tracer
provider is installed (globally, or for the library with :func:`use_tracer_provider`) or while
the library's switch is off (:func:`set_enabled`, for ``configure(tracing=False)``), every helper
returns at once: no span, no attribute, no context copy (:data:`NOOP` spans are shared).

No attribute carries an API key or prompt / reply text. Tool arguments and results are recorded
only when content capture is on (:func:`set_capture_content`, or the SDK's own
``ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE=content``), redacted and cut to the SDK's limit.
Token counts and costs go under ``orchestrating_agents.usage.*`` / ``orchestrating_agents.cost_usd``:
the ``gen_ai.usage.*`` attributes stay on the SDK's request spans only, so summing them over a
trace counts each token once.

>>> with run_span("invoke_parallel", prompts=2, workers=2, model="claude-sonnet-5-5") as run:
...     futures = [submit(pool, work, i) for i in range(2)]   # each worker: with prompt_span(i): ...
...     run.finish(usage=results.usage, cost_usd=results.cost_usd)
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import os
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from _errors import redact
from _validation import check_bool

logger = logging.getLogger("claude_client._tracing")

__all__ = [
    "NOOP",
    "NOOP_PROMPT",
    "SCOPE",
    "TracedSpan",
    "agent_span",
    "capture_content",
    "client_option",
    "enabled",
    "event",
    "prompt_span",
    "propagating",
    "run_span",
    "set_capture_content",
    "set_enabled",
    "submit",
    "thread",
    "tool_span",
    "tracer",
    "tracer_provider",
    "use_tracer_provider",
    "wrap",
]

T = TypeVar("T")
S = TypeVar("S", bound="TracedSpan")

#: The instrumentation scope of the library's spans (the SDK's is ``com.anthropic.sdk.python``).
SCOPE = "orchestrating_agents"
#: Prefix of the attributes the GenAI semantic conventions do not name.
NS = "orchestrating_agents"
PROVIDER_NAME = "anthropic"
#: The SDK's default ``max_content_bytes`` (its env var overrides it for both).
DEFAULT_MAX_CONTENT_BYTES = 750_000

_ENV_SDK_SWITCH = "ANTHROPIC_OPEN_TELEMETRY"
_ENV_CONTENT = "ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE"
_ENV_MAX_BYTES = "ANTHROPIC_OPEN_TELEMETRY_TRACES_MAX_CONTENT_BYTES"
_ENV_PROPAGATION = "ANTHROPIC_OPEN_TELEMETRY_PROPAGATION"


# ------------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class _State:
    """The switches, replaced whole under ``_state_lock`` (readers take no lock)."""

    on: bool = True
    provider: Any = None  # the library's own provider (None: the global one)
    tracer: Optional[Tracer] = None  # the tracer of ``provider``
    content: Optional[bool] = None  # None: follow the SDK's content-mode env var


_state_lock = threading.Lock()
_state = _State()
_global_ready = False  # a real global provider was seen (it can be set once per process: sticky)
_global_broken = False  # OTEL_PYTHON_TRACER_PROVIDER names a provider that cannot be loaded
_global_tracer: Optional[Tracer] = None
_MISSING = object()
#: Read once: whether the environment names a global provider for OpenTelemetry to load.
_ENV_NAMES_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _replace(**changes: Any) -> None:
    global _state
    with _state_lock:
        _state = dataclasses.replace(_state, **changes)


def _global_provider_ready() -> bool:
    """True once the application has installed a real global tracer provider."""
    global _global_ready, _global_broken
    if _global_ready:
        return True
    if _global_broken:
        return False
    # Fast path (tracing off must cost nothing): no provider set and none named by the env var
    # (OpenTelemetry reads OTEL_PYTHON_TRACER_PROVIDER on each call: a dict lookup costs more).
    if getattr(trace, "_TRACER_PROVIDER", _MISSING) is None and not _ENV_NAMES_PROVIDER:
        return False
    try:
        provider = trace.get_tracer_provider()
    except Exception:  # OTEL_PYTHON_TRACER_PROVIDER names something that does not load
        _global_broken = True
        logger.debug("the global OpenTelemetry tracer provider does not load: no library spans", exc_info=True)
        return False
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return False
    _global_ready = True
    return True


def enabled() -> bool:
    """Whether the library makes spans: its switch is on and a tracer provider is installed."""
    s = _state
    return s.on and (s.provider is not None or _global_ready or _global_provider_ready())


def propagating() -> bool:
    """Whether worker threads get the caller's context: a provider is installed (the SDK's spans
    need it even when the library's own spans are off)."""
    return _state.provider is not None or _global_ready or _global_provider_ready()


def set_enabled(flag: bool) -> None:
    """Turn the library's spans on or off (``configure(tracing=...)``; default on). The SDK's
    request spans have their own switch (``open_telemetry=`` / ``ANTHROPIC_OPEN_TELEMETRY``).

    >>> set_enabled(False)   # no library spans; the SDK's spans still nest under the caller's
    """
    _replace(on=check_bool(flag, "tracing"))


def use_tracer_provider(provider: Any) -> None:
    """Send the library's spans to ``provider`` instead of the global one (None: the global one
    again). The SDK clients the library builds follow it through :func:`client_option`.

    >>> use_tracer_provider(TracerProvider())
    """
    if provider is not None and not callable(getattr(provider, "get_tracer", None)):
        kind = type(provider).__name__
        raise TypeError(f"tracer_provider must be an OpenTelemetry TracerProvider or None, got {kind}")
    tracer_of = provider.get_tracer(SCOPE, _version()) if provider is not None else None
    _replace(provider=provider, tracer=tracer_of)


def tracer_provider() -> Any:
    """The provider set by :func:`use_tracer_provider` (None: the library uses the global one)."""
    return _state.provider


def set_capture_content(flag: Optional[bool]) -> None:
    """Record tool arguments and results on ``execute_tool`` spans (True), never (False), or as the
    SDK's ``ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE=content`` says (None, the default)."""
    if flag is not None:
        check_bool(flag, "capture_content")
    _replace(content=flag)


def capture_content() -> bool:
    """Whether tool arguments and results go on the spans (see :func:`set_capture_content`)."""
    flag = _state.content
    if flag is not None:
        return flag
    return os.environ.get(_ENV_CONTENT, "").strip().lower() == "content"


def _max_content_bytes() -> int:
    value = os.environ.get(_ENV_MAX_BYTES, "").strip()
    if value.isascii() and value.isdigit() and len(value) < 19 and int(value) >= 1:
        return int(value)
    return DEFAULT_MAX_CONTENT_BYTES


def client_option() -> Optional[dict[str, Any]]:
    """The ``open_telemetry=`` option for an SDK client the library builds: None (the SDK's
    default: the global provider, its env vars) unless :func:`use_tracer_provider` set one; then
    that provider with what the SDK's env vars say (``ANTHROPIC_OPEN_TELEMETRY=false`` still
    turns the SDK's spans off)."""
    provider = _state.provider
    if provider is None:
        return None
    traces: dict[str, Any] = {}
    if os.environ.get(_ENV_SDK_SWITCH, "").strip().lower() == "false":
        traces["enabled"] = False
    if os.environ.get(_ENV_CONTENT, "").strip().lower() == "content":
        traces["content_mode"] = "content"
    if os.environ.get(_ENV_MAX_BYTES, "").strip():
        traces["max_content_bytes"] = _max_content_bytes()
    option: dict[str, Any] = {"tracer_provider": provider, "traces": traces}
    if os.environ.get(_ENV_PROPAGATION, "").strip().lower() == "false":
        option["propagation"] = False
    return option


def _version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("orchestrating-agents")
    except Exception:
        return None


def tracer() -> Tracer:
    """The library's tracer (scope :data:`SCOPE`): of :func:`use_tracer_provider`'s provider, or
    the global one."""
    global _global_tracer
    s = _state
    if s.tracer is not None:
        return s.tracer
    if _global_tracer is None:
        _global_tracer = trace.get_tracer(SCOPE, _version())
    return _global_tracer


# ------------------------------------------------------------------------------ propagation
def _entered(ctx: contextvars.Context, fn: Callable[..., T]) -> Callable[..., T]:
    def run_in_context(*args: Any, **kwargs: Any) -> T:
        return ctx.copy().run(fn, *args, **kwargs)  # a copy per call: safe to call from many threads

    run_in_context.__wrapped__ = fn  # type: ignore[attr-defined]
    return run_in_context


def wrap(fn: Callable[..., T], *, under: Optional[TracedSpan] = None) -> Callable[..., T]:
    """``fn`` bound to the caller's context (its current span), or under ``under``'s span: call the
    result in any thread. ``fn`` itself when no provider is installed (nothing to carry).

    >>> threading.Thread(target=wrap(work)).start()
    """
    if not propagating():
        return fn
    ctx = contextvars.copy_context()
    if under is not None and under.recording:
        ctx.run(otel_context.attach, trace.set_span_in_context(under.span))  # type: ignore[arg-type]
    return _entered(ctx, fn)


def submit(executor: Executor, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """``executor.submit(fn, *args, **kwargs)`` with ``fn`` run in the caller's context.

    >>> futures = [submit(pool, agent.run, spec.params) for spec in specs]
    """
    return executor.submit(wrap(fn), *args, **kwargs)


def thread(
    target: Callable[..., Any],
    *,
    args: tuple = (),
    kwargs: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
    daemon: Optional[bool] = None,
    under: Optional[TracedSpan] = None,
) -> threading.Thread:
    """A ``threading.Thread`` (not started) whose ``target`` runs in the caller's context at this
    call (or under ``under``'s span).

    >>> t = thread(run.worker, name="claude-managed-0", daemon=True); t.start()
    """
    return threading.Thread(
        target=wrap(target, under=under), args=args, kwargs=dict(kwargs or {}), name=name, daemon=daemon
    )


# ------------------------------------------------------------------------------------ spans
def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` without None values (an attribute is left out rather than set to None)."""
    return {k: v for k, v in attributes.items() if v is not None}


def _error_type(error: BaseException) -> str:
    kind = getattr(error, "kind", None)
    return kind if isinstance(kind, str) and kind else type(error).__name__


def _is_interrupt(error: BaseException) -> bool:
    return isinstance(error, KeyboardInterrupt) or getattr(error, "kind", None) == "interrupted"


_CACHE_READS = f"{NS}.usage.cache_read.input_tokens"
_RETRY_EVENT = f"{NS}.retry"


def _usage_attributes(usage: Any) -> dict[str, Any]:
    """``orchestrating_agents.usage.*`` of a :class:`~_results.Usage` (or anything with its fields)."""
    if usage is None:
        return {}

    def count(name: str) -> Optional[int]:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    fresh, writes, reads = count("input_tokens"), count("cache_creation_input_tokens"), count("cache_read_input_tokens")
    total = None if fresh is None else fresh + (writes or 0) + (reads or 0)
    return _clean(
        {
            f"{NS}.usage.input_tokens": total,  # like gen_ai.usage.input_tokens: cache reads and writes included
            f"{NS}.usage.output_tokens": count("output_tokens"),  # thinking included
            _CACHE_READS: reads,
            f"{NS}.usage.cache_creation.input_tokens": writes,
            f"{NS}.usage.reasoning.output_tokens": count("thinking_tokens"),
        }
    )


def _cost_attributes(cost_usd: Optional[float]) -> dict[str, Any]:
    if cost_usd is None or isinstance(cost_usd, bool) or not isinstance(cost_usd, (int, float)):
        return {}
    return {f"{NS}.cost_usd": float(cost_usd)}


class _Attached:
    """``with span.current():`` the span is current in this thread for the block (not ended)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Any = None

    def __enter__(self) -> _Attached:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, *exc: Any) -> None:
        otel_context.detach(self._token)


class _Nothing:
    __slots__ = ()

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


_NOTHING = _Nothing()


class TracedSpan:
    """One library span, or nothing (:data:`NOOP`) when tracing is off: every method is then a no-op.

    ``with span:`` makes it current in this thread and ends it when the block ends (an exception
    marks it ``ERROR`` with ``error.type``; an interrupt only sets ``orchestrating_agents.interrupted``).
    Another thread makes it current with ``with span.current():``; :meth:`end` ends it from
    anywhere (once: later calls do nothing). Errors never record their message (it may quote text).
    """

    __slots__ = ("span", "_lock", "_ended", "_token")

    def __init__(self, span: Optional[Span]) -> None:
        self.span = span
        self._lock = threading.Lock() if span is not None else None
        self._ended = False
        self._token: Any = None

    @property
    def recording(self) -> bool:
        return self.span is not None and self.span.is_recording()

    def set(self, attributes: Mapping[str, Any]) -> None:
        """Set ``attributes`` (full names; None values are skipped)."""
        if self.span is not None:
            self.span.set_attributes(_clean(attributes))

    def event(self, name: str, **attributes: Any) -> None:
        """Add event ``orchestrating_agents.<name>`` (see :func:`event`) to this span."""
        if self.span is not None:
            self.span.add_event(f"{NS}.{name}", _event_attributes(name, attributes))

    def fail(self, error: BaseException) -> None:
        """Mark the span failed by ``error`` (``error.type`` = its kind, else its class; no message)."""
        if self.span is None:
            return
        if _is_interrupt(error):
            self.span.set_attribute(f"{NS}.interrupted", True)
            return
        if not isinstance(error, Exception):  # e.g. SystemExit: the application stopping it, no failure
            return
        self.span.set_attribute("error.type", _error_type(error))
        self.span.set_status(Status(StatusCode.ERROR))

    def current(self) -> Any:
        """A context manager making this span current in the calling thread, without ending it."""
        return _NOTHING if self.span is None else _Attached(self.span)

    def end(self, error: Optional[BaseException] = None) -> None:
        """End the span (after :meth:`fail` with ``error``, if given). Only the first call counts."""
        if self.span is None or self._lock is None:
            return
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if error is not None:
            self.fail(error)
        self.span.end()

    def __enter__(self: S) -> S:
        if self.span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self.span is None:
            return
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)
        self.end(exc)


class RunSpan(TracedSpan):
    """The span of a run of many prompts (:func:`run_span`)."""

    __slots__ = ()

    def finish(
        self,
        *,
        usage: Any = None,
        cost_usd: Optional[float] = None,
        failures_by_kind: Optional[Mapping[str, int]] = None,
        cache_reads: Optional[int] = None,
        interrupted: Optional[int] = None,
        succeeded: Optional[int] = None,
    ) -> None:
        """Record the run's totals: usage and cost (failed attempts' included), failures per error
        kind (``orchestrating_agents.run.failures.<kind>`` and their sum), the replies that read the
        prompt cache, the slots left unfinished by an interrupt and the prompts that succeeded."""
        if self.span is None:
            return
        failures = dict(failures_by_kind or {})
        attributes: dict[str, Any] = {
            **_usage_attributes(usage),
            **_cost_attributes(cost_usd),
            f"{NS}.run.failures": sum(failures.values()),
            f"{NS}.run.cache_reads": cache_reads,
            f"{NS}.run.interrupted": interrupted,
            f"{NS}.run.succeeded": succeeded,
        }
        for kind, n in failures.items():
            attributes[f"{NS}.run.failures.{kind}"] = n
        self.set(attributes)

    def finish_results(self, results: Any, *, interrupted: bool = False) -> None:
        """:meth:`finish` from a run's :class:`~_results.ParallelResults` (its ``usage``,
        ``cost_usd`` and ``errors``; slots left empty count as interrupted when ``interrupted``).

        >>> run.finish_results(stop.results, interrupted=True)   # RunInterrupted: keep the totals
        """
        if self.span is None or results is None:
            return
        errors = getattr(results, "errors", None) or {}
        failures: dict[str, int] = {}
        for error in errors.values():
            kind = _error_type(error)
            failures[kind] = failures.get(kind, 0) + 1
        replies = [r for r in results if r is not None and not isinstance(r, BaseException)]
        empty = sum(1 for i, r in enumerate(results) if r is None and i not in errors)
        self.finish(
            usage=getattr(results, "usage", None),
            cost_usd=getattr(results, "cost_usd", None),
            failures_by_kind=failures,
            cache_reads=sum(1 for r in replies if _usage_attributes(getattr(r, "usage", None)).get(_CACHE_READS)),
            interrupted=empty if interrupted else 0,
            succeeded=len(replies),
        )

    def run(self, fn: Callable[[], T], *, interrupt: Any = None) -> T:
        """``fn()`` (a run returning its :class:`~_results.ParallelResults`), then :meth:`finish_results`
        with what it returned, or with the ``.results`` of what it raised (a failed run's error, a
        Ctrl-C's ``RunInterrupted``: slots left empty count as interrupted); re-raised. The
        ``interrupt`` token, if interrupted by the end, makes the empty slots count as interrupted.

        >>> with run_span("invoke_parallel", prompts=len(specs), workers=5, model=model) as span:
        ...     return span.run(lambda: run_parallel(specs, ...), interrupt=interrupt_token)
        """
        if self.span is None:
            return fn()
        try:
            results = fn()
        except BaseException as exc:
            self.finish_results(getattr(exc, "results", None), interrupted=isinstance(exc, KeyboardInterrupt))
            raise
        stopped = interrupt is not None and bool(interrupt.is_interrupted())
        self.finish_results(results, interrupted=stopped)
        return results


class PromptSpan(TracedSpan):
    """The span of one prompt of a run, over all its attempts (:func:`prompt_span`)."""

    __slots__ = ()

    def finish(
        self,
        *,
        attempts: Optional[int] = None,
        terminal_reason: Optional[str] = None,
        usage: Any = None,
        cost_usd: Optional[float] = None,
    ) -> None:
        """Record how the prompt ended: attempts made, terminal reason (``succeeded``, ``failed``,
        ``interrupted`` ...), usage and cost (what failed attempts paid included)."""
        self.set(
            {
                f"{NS}.prompt.attempts": attempts,
                f"{NS}.prompt.terminal_reason": terminal_reason,
                **_usage_attributes(usage),
                **_cost_attributes(cost_usd),
            }
        )

    def retries(self) -> int:
        """The ``retry`` events recorded on this span so far (0 when tracing is off)."""
        events = getattr(self.span, "events", None) or ()  # the SDK's spans keep theirs; the API's do not
        return sum(1 for e in events if getattr(e, "name", None) == _RETRY_EVENT)

    def settle(self, outcome: Any, error: Optional[BaseException] = None) -> None:
        """Finish the span from how a prompt ended and end it: ``outcome`` (a reply, an exception
        or None) or ``error`` (what ended it; an interrupt leaves the status unset).

        >>> span.settle(reply)                 # succeeded, attempts = 1 + the retries recorded
        """
        if self.span is None:
            return
        failure = error if error is not None else (outcome if isinstance(outcome, BaseException) else None)
        if failure is None and outcome is not None:
            reason, attempts = "succeeded", self.retries() + 1
        elif failure is None or _is_interrupt(failure):
            reason, attempts = "interrupted", None
        else:
            reason, attempts = "failed", getattr(failure, "attempts", None)
        if not isinstance(attempts, int) or isinstance(attempts, bool):
            attempts = self.retries() + 1 if reason != "interrupted" else None
        paid_by = failure if outcome is None or isinstance(outcome, BaseException) else outcome
        self.finish(
            attempts=attempts,
            terminal_reason=reason,
            usage=getattr(paid_by, "usage", None),
            cost_usd=getattr(paid_by, "cost_usd", None),
        )
        self.end(failure)


class AgentSpan(TracedSpan):
    """An ``invoke_agent`` span: one tool loop, or one sub-agent of a delegation (:func:`agent_span`)."""

    __slots__ = ()

    def finish(
        self, *, turns: Optional[int] = None, tool_calls: Optional[int] = None, usage: Any = None, cost_usd: Any = None
    ) -> None:
        """Record the agent's requests (turns), tool calls, usage and cost (its sub-agents' included)."""
        self.set(
            {
                f"{NS}.agent.turns": turns,
                f"{NS}.agent.tool_calls": tool_calls,
                **_usage_attributes(usage),
                **_cost_attributes(cost_usd),
            }
        )


class ToolSpan(TracedSpan):
    """An ``execute_tool`` span: one tool call (:func:`tool_span`)."""

    __slots__ = ()

    def finish(self, *, seconds: Optional[float] = None, is_error: bool = False, output: Any = None) -> None:
        """Record the call's seconds and whether it failed (status ``ERROR``, ``error.type``
        ``tool_error``); the output only when content capture is on."""
        if self.span is None:
            return
        self.set({f"{NS}.tool.seconds": None if seconds is None else float(seconds), f"{NS}.tool.is_error": is_error})
        if is_error:
            self.span.set_attribute("error.type", "tool_error")
            self.span.set_status(Status(StatusCode.ERROR))
        if output is not None and capture_content():
            self.set(_content("gen_ai.tool.call.result", output))


#: The span every helper returns when tracing is off (shared; every method does nothing).
NOOP = TracedSpan(None)
_NOOP_RUN, _NOOP_PROMPT, _NOOP_AGENT, _NOOP_TOOL = RunSpan(None), PromptSpan(None), AgentSpan(None), ToolSpan(None)
#: The prompt span of a prompt that never started (every method does nothing).
NOOP_PROMPT = _NOOP_PROMPT


def _content(key: str, value: Any) -> dict[str, Any]:
    """``{key: value as JSON}``, redacted and cut to the SDK's content limit (then flagged)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except Exception:
        text = str(value)
    text = str(redact(text))
    limit = _max_content_bytes()
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return {key: text}
    return {key: data[:limit].decode("utf-8", "ignore"), f"{NS}.content.truncated": True}


def _start(name: str, attributes: Mapping[str, Any]) -> Span:
    return tracer().start_span(name, kind=SpanKind.INTERNAL, attributes=_clean(attributes))


def run_span(kind: str, *, prompts: int, workers: Optional[int] = None, model: Optional[str] = None) -> RunSpan:
    """Start the span of a run (``run <kind>``, e.g. ``run invoke_parallel``): prompt count,
    workers and model; :meth:`RunSpan.finish` adds the totals. Use it as ``with``.

    >>> with run_span("invoke_parallel_managed", prompts=len(prompts), workers=5, model=model) as run:
    ...     results = ...
    ...     run.finish(usage=results.usage, cost_usd=results.cost_usd, failures_by_kind={"overloaded": 1})
    """
    if not enabled():
        return _NOOP_RUN
    return RunSpan(
        _start(
            f"run {kind}",
            {
                f"{NS}.run.kind": kind,
                f"{NS}.run.prompts": prompts,
                f"{NS}.run.workers": workers,
                "gen_ai.provider.name": PROVIDER_NAME,
                "gen_ai.request.model": model,
            },
        )
    )


def prompt_span(index: int, *, task_id: Optional[str] = None, category: Optional[str] = None) -> PromptSpan:
    """Start the span of prompt ``index`` of a run (``prompt``), child of the current span. A
    managed run starts it at the first attempt and makes it current in each attempt's worker
    (``with span.current():``); :meth:`PromptSpan.finish` then :meth:`~TracedSpan.end` at the end.

    >>> with prompt_span(3, task_id="t3", category="summaries") as span:
    ...     reply = agent.run(params)
    ...     span.finish(attempts=1, terminal_reason="completed", cost_usd=reply.cost_usd)
    """
    if not enabled():
        return _NOOP_PROMPT
    return PromptSpan(
        _start("prompt", {f"{NS}.prompt.index": index, f"{NS}.task.id": task_id, f"{NS}.task.category": category})
    )


def agent_span(name: str = "agent", *, depth: int = 0, model: Optional[str] = None) -> AgentSpan:
    """Start an ``invoke_agent <name>`` span (``gen_ai.operation.name=invoke_agent``,
    ``gen_ai.agent.name``, ``orchestrating_agents.agent.depth``: 0 for the top agent).

    >>> with agent_span("agent", depth=context.depth, model=params["model"]) as span:
    ...     reply = run_tool_loop(...)
    ...     span.finish(turns=reply.turns, tool_calls=len(reply.tool_calls), cost_usd=reply.cost_usd)
    """
    if not enabled():
        return _NOOP_AGENT
    return AgentSpan(
        _start(
            f"invoke_agent {name}",
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": PROVIDER_NAME,
                "gen_ai.agent.name": name,
                "gen_ai.request.model": model,
                f"{NS}.agent.depth": depth,
            },
        )
    )


def tool_span(name: str, call_id: Optional[str] = None, *, input: Any = None) -> ToolSpan:
    """Start an ``execute_tool <name>`` span (``gen_ai.tool.name``, ``gen_ai.tool.call.id``; the
    input as ``gen_ai.tool.call.arguments`` only when content capture is on). Run the tool under it
    (``with``, or ``thread(..., under=span)``), then :meth:`ToolSpan.finish` and ``end()``.

    >>> span = tool_span("lookup", use["id"], input=use["input"])
    >>> thread(work, args=(call,), under=span).start()    # later: span.finish(seconds=s); span.end()
    """
    if not enabled():
        return _NOOP_TOOL
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    if input is not None and capture_content():
        attributes.update(_content("gen_ai.tool.call.arguments", input))
    return ToolSpan(_start(f"execute_tool {name}", attributes))


# ----------------------------------------------------------------------------------- events
def _event_attributes(name: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k if "." in k else f"{NS}.{name}.{k}": v for k, v in attributes.items() if v is not None}


def event(name: str, **attributes: Any) -> None:
    """Add event ``orchestrating_agents.<name>`` to the current span (nothing when tracing is off).
    Short keys become ``orchestrating_agents.<name>.<key>``; dotted keys are kept as given. The
    library's events:

    * ``retry``: ``kind`` (the error kind), ``delay_s``, ``attempt`` (the one that failed);
    * ``admission_wait``: ``seconds`` (waited for rate-limit capacity), ``limit`` (rpm/itpm/otpm);
    * ``spend_cap_wait``: ``seconds`` (waited for a Budget reservation);
    * ``rate_limit_pause``: ``seconds`` (a managed run's pause after a 429's retry-after).

    >>> event("retry", kind="overloaded", delay_s=0.5, attempt=1)
    """
    if not enabled():
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(f"{NS}.{name}", _event_attributes(name, attributes))
