"""Sub-agents that act: client tools, the tool loop, and delegation to sub-agents.

* :class:`ToolSet` turns what a user passes as ``tools=`` into the request's ``tools`` list and the
  functions behind it. Function tools get their schema from the SDK's own helper
  (:func:`anthropic.lib.tools.beta_tool`: signature + docstring), so this module writes no schema
  generator. Everything is checked before anything is sent.
* :func:`run_tool_loop` runs the conversation: send a turn (through the caller's ``send_turn``, which
  owns retries, streaming, stall, admission and budget), run the tools the reply asks for, send the
  results back, until the model answers; ``pause_turn`` replies are sent back to be continued.
* :func:`make_delegate_tool` (from :mod:`_delegation`, re-exported here) builds the ``delegate``
  tool: the model hands a list of tasks to parallel sub-agents (depth-limited), whose usage and
  cost roll up into the parent's reply.
* :class:`LoopState` lets a caller that retries a tool agent (managed runs) resume its loop at
  the turn that failed, so no tool runs twice.

>>> def add(a: int, b: int) -> int:
...     '''Add two integers.'''
...     return a + b
>>> toolset = ToolSet.from_user([add, {"type": "web_search_20250305", "name": "web_search"}])
>>> toolset.names
['add', 'web_search']
>>> reply = run_tool_loop(params, toolset=toolset, send_turn=lambda p: send(p, client=get_client()))
>>> reply.tool_calls[0].output, reply.usage.output_tokens, reply.messages[-1]["role"]
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import time
import typing
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import _tracing
from _delegation import AgentContext, ChildRun, DelegateTool, Delegation, make_delegate_tool, sdk_tools
from _errors import ABORT_MESSAGES, ClaudeInvocationError
from _interrupt import InterruptToken, subscribe, unsubscribe
from _requests import MAX_CACHE_BREAKPOINTS, check_request_rules, count_breakpoints, with_cache_control
from _results import ClaudeResponse, ParallelResults, Usage
from _validation import check_bool, check_callable, check_optional_seconds, check_positive_int, is_mapping

logger = logging.getLogger("claude_client._tools")

__all__ = [
    "AgentContext",
    "ChildRun",
    "DelegateTool",
    "LoopState",
    "ToolCall",
    "ToolSet",
    "make_delegate_tool",
    "run_tool_loop",
]

#: The name a tool function declares to receive the run's :class:`InterruptToken`.
TOKEN_PARAMETER = "interrupt_token"

_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")

# Blocks that may not carry cache_control (the moving breakpoint skips them).
_UNCACHEABLE = frozenset({"thinking", "redacted_thinking"})


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class ToolCall:
    """One tool call of a tool loop: what the model asked for and what the tool gave back.

    ``output`` is the tool's return value (None while running, when :func:`run_tool_loop` reports
    the start to ``on_tool_call``), or the error text when ``is_error``; ``seconds`` is its run time.

    >>> reply = invoke_claude("What is 2+3?", tools=[add])
    >>> [(c.name, c.input, c.output, c.is_error) for c in reply.tool_calls]
    [('add', {'a': 2, 'b': 3}, 5, False)]
    """

    name: str
    input: Any
    output: Any = None
    is_error: bool = False
    seconds: float = 0.0
    id: str = ""


# ------------------------------------------------------------------------------ tools
_token_tls = threading.local()


def _current_token() -> Optional[InterruptToken]:
    return getattr(_token_tls, "token", None)


@dataclass(frozen=True)
class _Tool:
    """One entry of a ToolSet: its request schema and, for client tools, how to run it."""

    name: str
    schema: dict
    run: Optional[Callable[[Any], Any]] = None  # None: a server tool, run by the API
    delegate: Optional[DelegateTool] = None


def _without_token(fn: Callable) -> Callable:
    """``fn`` minus its ``interrupt_token`` parameter: a wrapper whose signature and annotations
    (resolved in ``fn``'s module) omit it, and which passes the running tool's token."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that cannot be resolved: keep the raw ones
        hints = dict(getattr(fn, "__annotations__", {}) or {})
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != TOKEN_PARAMETER
    ]

    def wrapper(**kwargs: Any) -> Any:
        return fn(**kwargs, **{TOKEN_PARAMETER: _current_token()})

    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=hints.get("return", sig.return_annotation)
    )
    wrapper.__annotations__ = {k: v for k, v in hints.items() if k != TOKEN_PARAMETER}
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(wrapper, attr, getattr(fn, attr))
        except (AttributeError, TypeError):
            pass
    return wrapper


# Built tools by function: schema generation (pydantic) is done once per function.
_built: weakref.WeakKeyDictionary[Any, _Tool] = weakref.WeakKeyDictionary()
_built_lock = threading.Lock()


def _function_tool(fn: Callable, where: str) -> _Tool:
    try:
        with _built_lock:
            cached = _built.get(fn)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ValueError(
            f"{where}: {getattr(fn, '__name__', fn)!r} is an async function; tools must be plain functions"
        )
    try:
        wants_token = TOKEN_PARAMETER in inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read the signature of {fn!r}: {exc}") from exc
    target = _without_token(fn) if wants_token else fn
    try:
        sdk_tool = sdk_tools().beta_tool(target)
        schema = dict(sdk_tool.to_dict())
    except Exception as exc:
        raise ValueError(
            f"{where}: cannot build a tool schema from {getattr(fn, '__name__', fn)!r} ({type(exc).__name__}: {exc})"
        ) from exc
    tool = _Tool(schema["name"], schema, sdk_tool.call)
    try:
        with _built_lock:
            _built[fn] = tool
    except TypeError:
        pass
    return tool


def _entry_tool(entry: Any, where: str) -> _Tool:
    """One ``tools`` entry as a _Tool (ValueError naming ``where`` when it is not a usable tool)."""
    sdk = sdk_tools()
    if isinstance(entry, DelegateTool):
        return _Tool(entry.name, entry.schema, None, entry)
    if isinstance(entry, (sdk.BetaAsyncFunctionTool, sdk.BetaAsyncBuiltinFunctionTool)):
        raise ValueError(f"{where}: {type(entry).__name__} is async; use beta_tool (sync) or a plain function")
    if isinstance(entry, (sdk.BetaFunctionTool, sdk.BetaBuiltinFunctionTool)):
        schema = dict(entry.to_dict())
        return _Tool(str(schema.get("name") or entry.name), schema, entry.call)
    if is_mapping(entry):
        entry = dict(entry)
        kind = entry.get("type")
        name = entry.get("name")
        if "input_schema" in entry or kind in (None, "custom"):
            raise ValueError(
                f"{where}: the client tool {name!r} is a schema dict with no function behind it; pass the "
                "function itself (its schema comes from its signature and docstring) or a beta_tool"
            )
        if not isinstance(kind, str) or not isinstance(name, str) or not name:
            raise ValueError(f"{where}: a server tool dict needs a str 'type' and 'name', got {entry!r}")
        return _Tool(name, entry, None)
    if isinstance(entry, type) or not callable(entry):
        raise ValueError(
            f"{where} must be a function, a beta_tool, a server-tool dict or the delegate tool, "
            f"got {type(entry).__name__}"
        )
    return _function_tool(entry, where)


class ToolSet:
    """The tools of a request: their schemas (the request's ``tools``) and the functions behind them.

    Build it with :meth:`from_user`; it is immutable and may be shared by many loops at once.

    >>> def lookup(word: str) -> str:
    ...     '''Look a word up in the dictionary.
    ...
    ...     Args:
    ...         word: the word to look up
    ...     '''
    ...     return DICTIONARY[word]
    >>> toolset = ToolSet.from_user([lookup, {"type": "web_search_20250305", "name": "web_search"}])
    >>> toolset.names, toolset.schemas[0]["input_schema"]["required"]
    (['lookup', 'web_search'], ['word'])
    """

    __slots__ = ("_tools", "_by_name", "_schemas")

    def __init__(self, tools: Sequence[_Tool] = ()) -> None:
        self._tools: tuple[_Tool, ...] = tuple(tools)
        self._by_name = {t.name: t for t in self._tools}
        self._schemas = [t.schema for t in self._tools]

    @classmethod
    def from_user(cls, tools: Any, name: str = "tools") -> Optional[ToolSet]:
        """A ToolSet from a list of tools (None for None or an empty list); checked before anything is sent.

        Entries: a plain function (schema from its signature and docstring by the SDK's
        ``beta_tool``; a parameter named ``interrupt_token`` receives the run's
        :class:`InterruptToken` and is not in the schema), a tool made with
        ``anthropic.lib.tools.beta_tool``, a server-tool dict (``{"type": "web_search_20250305",
        "name": "web_search"}``, sent as is), or :func:`make_delegate_tool`'s tool. A ToolSet is
        returned as is. ``ValueError`` (naming the entry) for a client-tool dict with no function
        behind it, a duplicate or invalid name, or an entry that is none of these; ``TypeError``
        when ``tools`` is not a list.

        >>> ToolSet.from_user(None) is None
        True
        """
        if tools is None or isinstance(tools, ToolSet):
            return tools
        if isinstance(tools, (str, bytes)) or is_mapping(tools) or not isinstance(tools, (list, tuple)):
            raise TypeError(f"{name} must be a list of tools, got {type(tools).__name__}")
        if not tools:
            return None
        built: list[_Tool] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(tools):
            where = f"{name}[{i}]"
            tool = _entry_tool(entry, where)
            if not _TOOL_NAME_RE.match(tool.name):
                raise ValueError(f"{where}: tool name {tool.name!r} must match {_TOOL_NAME_RE.pattern}")
            if tool.name in seen:
                raise ValueError(f"{where}: duplicate tool name {tool.name!r} (also {name}[{seen[tool.name]}])")
            seen[tool.name] = i
            built.append(tool)
        return cls(built)

    @property
    def schemas(self) -> list[dict]:
        """The request's ``tools`` list (a new list; do not mutate its dicts)."""
        return list(self._schemas)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tools]

    @property
    def delegate(self) -> Optional[DelegateTool]:
        """The delegate tool, if the set has one."""
        for tool in self._tools:
            if tool.delegate is not None:
                return tool.delegate
        return None

    def without_delegate(self) -> ToolSet:
        """The same tools without the ``delegate`` tool."""
        if self.delegate is None:
            return self
        return ToolSet([t for t in self._tools if t.delegate is None])

    def for_depth(self, depth: int) -> ToolSet:
        """The tools of an agent at ``depth``: no ``delegate`` tool at or below its ``max_depth``.

        >>> ToolSet.from_user([make_delegate_tool(run_tasks, max_depth=1)]).for_depth(1).names
        []
        """
        delegate = self.delegate
        if delegate is not None and depth >= delegate.max_depth:
            return self.without_delegate()
        return self

    def get(self, name: str) -> Optional[_Tool]:
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"ToolSet({self.names})"


# ------------------------------------------------------------------------------ running tools
def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and type(cause).__name__ == "ValidationError":  # the SDK's bad-arguments error
        text += f"\n{cause}"
    return text


def _fold(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate cannot be sent: fold it to U+FFFD
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _result_content(output: Any) -> Any:
    """A tool's return value as tool_result content (None: no content)."""
    if output is None:
        return None
    if isinstance(output, str):
        return _fold(output) if output else None
    if (
        isinstance(output, (list, tuple))
        and output
        and all(is_mapping(b) and isinstance(b.get("type"), str) for b in output)
    ):
        # No cache marks of the tool's own: the loop places its breakpoints (at most 4 in all).
        blocks = [
            {k: v for k, v in b.items() if k != "cache_control"}
            for b in output
            if not (b.get("type") == "text" and not b.get("text"))
        ]
        for b in blocks:
            if b.get("type") == "text":
                b["text"] = _fold(str(b["text"]))
        return blocks or None
    dump = getattr(output, "model_dump_json", None)
    if callable(dump) and not isinstance(output, type):
        return _fold(dump())
    return _fold(json.dumps(output, ensure_ascii=False, default=str))


class _Call:
    """One tool_use block being run (fields written by the worker, then ``done``)."""

    __slots__ = ("use", "tool", "started", "done", "output", "error", "seconds", "reported", "block", "span")

    def __init__(self, use: dict, tool: Optional[_Tool]) -> None:
        self.use = use
        self.tool = tool
        self.span: Optional[_tracing.ToolSpan] = None  # started with the call (execute_tool)
        self.started = 0.0
        self.done = False
        self.output: Any = None
        self.error: Optional[BaseException] = None
        self.seconds = 0.0
        self.reported = False
        self.block: dict = {}


def _work(call: _Call, token: Optional[InterruptToken], context: AgentContext, wake: Optional[threading.Event]) -> None:
    previous = getattr(_token_tls, "token", None)
    _token_tls.token = token
    tool = call.tool
    try:
        if tool is None or (tool.run is None and tool.delegate is None):
            raise LookupError(f"no client tool named {call.use.get('name')!r}")
        if tool.delegate is not None:
            call.output = tool.delegate.run(call.use.get("input"), context)
        else:
            call.output = tool.run(call.use.get("input"))  # type: ignore[misc]
    except BaseException as exc:  # an Exception is reported to the model; the loop re-raises the rest
        call.error = exc
    finally:
        _token_tls.token = previous
        call.seconds = time.monotonic() - call.started
        call.done = True
        if wake is not None:
            wake.set()


#: How often a thread waiting for its tools looks up (signals are handled between waits).
_POLL_S = 0.05


@dataclass
class LoopState:
    """Where a tool loop stands, for a caller that runs it again after a failed turn (managed
    runs): :func:`run_tool_loop` given a state whose turn failed (``pending``) resends that turn
    with the transcript, tool calls, usage and turn count it had, instead of starting over, so no
    tool runs twice. It is saved when a turn's request fails and cleared when the loop ends
    otherwise. One state per task; not shared between threads.

    >>> state = LoopState()
    >>> try:
    ...     run_tool_loop(params, toolset=toolset, send_turn=send_once, state=state)
    ... except ClaudeInvocationError as error:
    ...     if error.transient:   # later: the same call resumes at the failed turn
    ...         reply = run_tool_loop(params, toolset=toolset, send_turn=send_once, state=state)
    """

    transcript: Optional[list] = None
    records: list = field(default_factory=list)
    children: list = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: Optional[float] = 0.0
    turns: int = 0
    previous_mark: Optional[int] = None

    @property
    def pending(self) -> bool:
        """True when a turn failed and the next run resumes there."""
        return self.transcript is not None

    def save(self, loop: _Loop, transcript: list, turns: int, previous_mark: Optional[int]) -> None:
        self.transcript = list(transcript)
        self.records = list(loop.records)
        self.children = list(loop.children)
        self.usage, self.cost = loop.usage, loop.cost
        self.turns, self.previous_mark = turns, previous_mark

    def clear(self) -> None:
        self.transcript, self.records, self.children = None, [], []
        self.usage, self.cost, self.turns, self.previous_mark = Usage(), 0.0, 0, None


def _interrupted(where: str) -> ClaudeInvocationError:
    return ClaudeInvocationError(ABORT_MESSAGES["interrupted"] + where, kind="interrupted")


class _Loop:
    """The state of one tool loop (see :func:`run_tool_loop`)."""

    def __init__(
        self,
        toolset: ToolSet,
        tool_timeout: Optional[float],
        parallel: bool,
        on_tool_call: Optional[Callable[[ToolCall], Any]],
        interrupt: Optional[InterruptToken],
        context: AgentContext,
    ) -> None:
        self.toolset = toolset
        self.tool_timeout = tool_timeout
        self.parallel = parallel
        self.on_tool_call = on_tool_call
        self.interrupt = interrupt
        self.context = context
        self.threaded = interrupt is not None or tool_timeout is not None
        self.wake = threading.Event()
        self.token = interrupt
        self.records: list[ToolCall] = []
        self.children: list[ChildRun] = []
        self.usage = Usage()
        self.cost: Optional[float] = 0.0
        self.transcript: list[dict] = []

    def add(self, usage: Usage, cost: Optional[float]) -> None:
        self.usage = self.usage + usage
        self.cost = None if (self.cost is None or cost is None) else self.cost + cost

    def notify(self, record: ToolCall) -> None:
        if self.on_tool_call is None:
            return
        try:
            self.on_tool_call(record)
        except Exception as exc:
            raise ClaudeInvocationError(
                f"The on_tool_call callback raised {type(exc).__name__}: {exc}", kind="callback"
            ) from exc

    def tool_token(self) -> InterruptToken:
        if self.token is None:
            self.token = InterruptToken()  # never interrupted: tools may poll it all the same
        return self.token

    def run_turn(self, uses: list[dict]) -> list[dict]:
        """Run every tool_use block of a turn; the tool_result blocks, in order."""
        calls = [_Call(use, self.toolset.get(str(use.get("name")))) for use in uses]
        token = self.tool_token()
        if self.parallel and len(calls) > 1:
            batches = [calls]
        else:
            batches = [[c] for c in calls]
        try:
            for batch in batches:
                for call in batch:
                    self.start(call, token, threaded=self.threaded or len(batch) > 1)
                self.wait(batch)
        except BaseException as exc:  # an interrupt, a callback error, Ctrl-C: end the calls' spans
            for call in calls:
                if not call.reported and call.span is not None:
                    call.span.end(exc)
            raise
        return [c.block for c in calls]

    def start(self, call: _Call, token: InterruptToken, *, threaded: bool) -> None:
        """Report the call's start and run it: on its own thread, or here (under its span)."""
        self.notify(
            ToolCall(str(call.use.get("name")), call.use.get("input"), None, False, 0.0, str(call.use.get("id", "")))
        )
        call.span = span = _tracing.tool_span(
            str(call.use.get("name")), call.use.get("id"), input=call.use.get("input")
        )
        call.started = time.monotonic()
        if threaded:
            thread = _tracing.thread(
                _work,
                args=(call, token, self.context, self.wake),
                name=f"tool-{call.use.get('name')}",
                daemon=True,
                under=span,
            )
            thread.start()
        else:
            with span.current():
                _work(call, token, self.context, None)

    def wait(self, batch: list[_Call]) -> None:
        deadline = None if self.tool_timeout is None else time.monotonic() + self.tool_timeout
        while True:
            if self.interrupt is not None and self.interrupt.is_interrupted():
                raise _interrupted(" while a tool was running (its thread runs on; its result is dropped)")
            pending = False
            for call in batch:
                if call.done:
                    if not call.reported:
                        self.finish(call)
                else:
                    pending = True
            if not pending:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                for call in batch:
                    if not call.done and not call.reported:
                        call.error = TimeoutError(
                            f"tool {call.use.get('name')!r} did not finish within tool_timeout={self.tool_timeout:g} s"
                        )
                        call.seconds = now - call.started
                        self.finish(call)
                return
            # Never an untimed wait: a signal (Ctrl-C) reaches this thread within _POLL_S.
            self.wake.wait(_POLL_S if deadline is None else min(_POLL_S, deadline - now))
            self.wake.clear()

    def finish(self, call: _Call) -> None:
        call.reported = True
        if call.error is not None and not isinstance(call.error, Exception):
            # KeyboardInterrupt, SystemExit ... in a tool end the run as a Ctrl-C does
            if call.span is not None:
                call.span.end(call.error)
            raise call.error
        name = str(call.use.get("name"))
        output: Any
        if call.error is not None:
            exc = call.error
            text = str(exc) if not call.done else _error_text(exc)
            logger.info("tool %s failed: %s", name, text.splitlines()[0] if text else type(exc).__name__)
            tool_error = sdk_tools().ToolError
            content = _result_content(exc.content) if isinstance(exc, tool_error) else text
            results = getattr(exc, "results", None)
            if isinstance(results, ParallelResults):  # a delegation that failed part-way: count what it used
                self.add(results.usage, results.cost_usd)
            output, is_error = text, True
        elif isinstance(call.output, Delegation):
            delegation = call.output
            usage = getattr(delegation.results, "usage", None)
            self.add(
                usage if isinstance(usage, Usage) else Usage.from_sdk(usage),
                getattr(delegation.results, "cost_usd", None),
            )
            self.children.extend(delegation.children())
            output, is_error = delegation.answers(), False
            content = json.dumps(output, ensure_ascii=False)
        else:
            output, is_error = call.output, False
            content = _result_content(output)
        # Built now: a timed-out tool's thread may still write to ``call`` later.
        call.block = {"type": "tool_result", "tool_use_id": call.use.get("id")}
        if content is not None and content != "" and content != []:
            call.block["content"] = content
        if is_error:
            call.block["is_error"] = True
        record = ToolCall(name, call.use.get("input"), output, is_error, call.seconds, str(call.use.get("id", "")))
        if call.span is not None:
            call.span.finish(seconds=call.seconds, is_error=is_error, output=output)
            call.span.end()
        self.records.append(record)
        self.notify(record)


def _assistant_content(content: list[dict]) -> list[dict]:
    """The assistant turn to send back: the reply's blocks minus empty text blocks (a 400)."""
    return [b for b in content if not (b.get("type") == "text" and not b.get("text"))]


def _marked(message: dict) -> Optional[dict]:
    """A copy of ``message`` with a cache breakpoint on its last cacheable block (None: none)."""
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
    for i in range(len(blocks) - 1, -1, -1):
        if blocks[i].get("type") not in _UNCACHEABLE:
            blocks[i] = with_cache_control(blocks[i])
            return {**message, "content": blocks}
    return None


def _request_messages(transcript: list[dict], marks: list[int]) -> list[dict]:
    messages = list(transcript)
    for index in marks:
        marked = _marked(messages[index])
        if marked is not None:
            messages[index] = marked
    return messages


def run_tool_loop(
    params: dict,
    *,
    toolset: ToolSet,
    send_turn: Callable[[dict], ClaudeResponse],
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[ToolCall], Any]] = None,
    interrupt: Optional[InterruptToken] = None,
    context: Optional[AgentContext] = None,
    state: Optional[LoopState] = None,
) -> ClaudeResponse:
    """Run a conversation with tools until the model answers; the final reply with the whole run.

    ``params`` is a Messages request body (not modified); its ``tools`` are replaced by the
    toolset's schemas (for ``context.depth``: no ``delegate`` tool at its ``max_depth``).
    ``send_turn(request)`` sends one request through the caller's pipeline and returns its reply.
    While a reply stops with ``tool_use``, every ``tool_use`` block is run (in order; with
    ``parallel_tools`` at once on threads), and the assistant turn plus one user turn of
    ``tool_result`` blocks (``is_error: true`` with the error text when a tool raises, is unknown,
    or overruns ``tool_timeout`` seconds) are sent back. A ``pause_turn`` reply is sent back as the
    last turn to be continued. Every request carries a moving cache breakpoint on the last block
    of the transcript (and keeps the previous turn's when the limit of 4 allows), so each turn reads
    the previous one's prefix from the cache.

    Tools run on threads when there is an ``interrupt`` token or a ``tool_timeout``. On interrupt
    (or a timeout) the loop does not wait: it raises ``ClaudeInvocationError(kind="interrupted")``
    within a moment (or reports the timeout to the model); the tool's thread is not killed: it runs
    to its end and its result is dropped. A tool that declares ``interrupt_token`` gets the token
    and can stop itself. ``on_tool_call(record)`` runs on this thread at each call's start (output
    None) and end (a :class:`ToolCall`); if it raises, the loop stops (kind ``callback``).

    Only an ``Exception`` in a tool becomes a tool error: a ``KeyboardInterrupt`` or
    ``SystemExit`` raised in a tool (on whatever thread it runs) is raised by the loop, as a
    Ctrl-C would be. The assistant content goes back unchanged (``thinking`` and
    ``redacted_thinking`` blocks as received, in order); the loop never sets ``tool_choice`` nor
    ends a request with an assistant turn except to continue a ``pause_turn``. A failed turn
    raises its error with the loop's ``usage`` and ``cost_usd`` so far (the failed reply's own
    included, e.g. a refusal); with a :class:`LoopState` ``state``, running the loop again resumes
    at that turn.

    More than ``max_tool_turns`` turns asking for tools (or paused) raise
    ``ClaudeInvocationError(kind="tool_turns_exceeded")`` whose ``messages`` (also
    ``details["messages"]``) is the transcript so far (its last assistant turn unanswered),
    with ``tool_calls``, ``usage`` and ``cost_usd``.

    The reply is the final turn's text, with ``tool_calls`` (every :class:`ToolCall`), ``messages``
    (the whole transcript, the final assistant turn included, ready to continue), ``usage`` and
    ``cost_usd`` summed over every turn and delegated sub-agent, and ``children`` (one
    :class:`ChildRun` per sub-agent).

    >>> reply = run_tool_loop({"model": "claude-sonnet-4-6", "max_tokens": 1024,
    ...                        "messages": [{"role": "user", "content": "What is 2+3?"}]},
    ...                       toolset=ToolSet.from_user([add]),
    ...                       send_turn=lambda p: send(p, client=get_client()))
    >>> str(reply), reply.tool_calls[0].output, len(reply.messages)
    ('5', 5, 4)
    """
    if not isinstance(toolset, ToolSet):
        raise TypeError(f"toolset must be a ToolSet, got {type(toolset).__name__}")
    if not callable(send_turn):
        raise TypeError(f"send_turn must be callable, got {type(send_turn).__name__}")
    if not is_mapping(params):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    messages = params.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("params['messages'] must be a non-empty list of messages")
    check_positive_int(max_tool_turns, "max_tool_turns")
    tool_timeout = check_optional_seconds(tool_timeout, "tool_timeout")
    check_bool(parallel_tools, "parallel_tools")
    check_callable(on_tool_call, "on_tool_call")
    if interrupt is not None and not isinstance(interrupt, InterruptToken):
        raise TypeError(f"interrupt must be an InterruptToken or None, got {type(interrupt).__name__}")
    if context is None:
        context = AgentContext(interrupt=interrupt)
    elif not isinstance(context, AgentContext):
        raise TypeError(f"context must be an AgentContext or None, got {type(context).__name__}")
    if interrupt is None:
        interrupt = context.interrupt
    if context.interrupt is None and interrupt is not None:
        context = replace(context, interrupt=interrupt)

    if state is not None and not isinstance(state, LoopState):
        raise TypeError(f"state must be a LoopState or None, got {type(state).__name__}")

    toolset = toolset.for_depth(context.depth)
    base = dict(params)
    schemas = toolset.schemas
    if schemas:
        base["tools"] = schemas
    else:
        base.pop("tools", None)
    check_request_rules(base, where="the tool loop's request")
    loop = _Loop(toolset, tool_timeout, parallel_tools, on_tool_call, interrupt, context)
    turns = 0
    previous_mark: Optional[int] = None
    if state is not None and state.pending:  # resume at the turn that failed
        transcript = list(state.transcript or ())
        loop.records, loop.children = list(state.records), list(state.children)
        loop.usage, loop.cost = state.usage, state.cost
        turns, previous_mark = state.turns, state.previous_mark
        logger.debug("resuming a tool loop at turn %d (%d tool calls already run)", turns + 1, len(loop.records))
    else:
        transcript = list(messages)
    loop.transcript = transcript
    room = MAX_CACHE_BREAKPOINTS - (
        count_breakpoints(base.get("tools")) + count_breakpoints(base.get("system")) + count_breakpoints(transcript)
    )
    handle = subscribe(interrupt, loop.wake.set) if interrupt is not None else None
    sent = False  # the failure (if any) is a turn's request
    try:
        while True:
            if interrupt is not None and interrupt.is_interrupted():
                raise _interrupted(" between turns of a tool loop")
            last = len(transcript) - 1
            marks = [last] if room >= 1 else []
            if room >= 2 and previous_mark is not None and previous_mark != last:
                marks.append(previous_mark)
            prior_mark, previous_mark = previous_mark, last
            request = dict(base)
            request["messages"] = _request_messages(transcript, marks) if marks else list(transcript)
            try:
                reply = send_turn(request)
            except ClaudeInvocationError as error:
                _charge(loop, error)
                if state is not None:
                    state.save(loop, transcript, turns, prior_mark)
                sent = True
                raise
            if not isinstance(reply, ClaudeResponse):
                raise TypeError(f"send_turn must return a ClaudeResponse, got {type(reply).__name__}")
            loop.add(reply.usage, reply.cost_usd)
            stop = reply.stop_reason
            content = _assistant_content(reply.content)
            uses = [b for b in content if b.get("type") == "tool_use"] if stop == "tool_use" else []
            if stop != "pause_turn" and not uses:
                if content:
                    transcript.append({"role": "assistant", "content": content})
                return _final(reply, loop)
            transcript.append({"role": "assistant", "content": content})
            turns += 1
            if turns > max_tool_turns:
                raise _turns_exceeded(loop, max_tool_turns)
            if stop == "pause_turn":
                logger.debug("pause_turn: sending the paused turn back to be continued")
                continue
            transcript.append({"role": "user", "content": loop.run_turn(uses)})
    except ClaudeInvocationError as error:
        for attr, value in (
            ("messages", transcript),
            ("tool_calls", list(loop.records)),
            ("usage", loop.usage),
            ("cost_usd", loop.cost),
        ):
            if getattr(error, attr, None) is None:
                setattr(error, attr, value)
        raise
    finally:
        if handle is not None:
            unsubscribe(interrupt, handle)  # type: ignore[arg-type]
        if state is not None and not sent:
            state.clear()  # ended (answered, or failed outside a request): the next run starts over


def _charge(loop: _Loop, error: ClaudeInvocationError) -> None:
    """A failed turn's error: what that reply paid (a refusal, a truncated reply) joins the loop's
    totals, and the error carries the loop's usage and cost so far."""
    paid = getattr(error, "usage", None)
    if isinstance(paid, Usage):
        loop.add(paid, getattr(error, "cost_usd", None))
    error.usage = loop.usage  # type: ignore[attr-defined]
    error.cost_usd = loop.cost  # type: ignore[attr-defined]


def _turns_exceeded(loop: _Loop, limit: int) -> ClaudeInvocationError:
    error = ClaudeInvocationError(
        f"The model still asked for tools after max_tool_turns={limit} tool turns; the transcript so far "
        "is in .messages (its last assistant turn is unanswered)",
        details={"messages": loop.transcript, "tool_calls": list(loop.records)},
        kind="tool_turns_exceeded",
    )
    error.messages = loop.transcript  # type: ignore[attr-defined]
    error.tool_calls = list(loop.records)  # type: ignore[attr-defined]
    error.usage = loop.usage  # type: ignore[attr-defined]
    error.cost_usd = loop.cost  # type: ignore[attr-defined]
    return error


def _final(reply: ClaudeResponse, loop: _Loop) -> ClaudeResponse:
    final = ClaudeResponse(
        str.__str__(reply),
        usage=loop.usage,
        stop_reason=reply.stop_reason,
        model=reply.model,
        id=reply.id,
        request_id=reply.request_id,
        cost_usd=loop.cost,
        content=reply.content,
    )
    final.headers = reply.headers
    final.tool_calls = loop.records
    final.messages = loop.transcript
    final.children = loop.children
    if reply.parsed is not None:
        final.parsed = reply.parsed
    return final
