"""Delegation: the ``delegate`` tool, through which a model hands tasks to parallel sub-agents.

:func:`make_delegate_tool` builds it; :class:`AgentContext` says where an agent runs (its depth and
what its sub-agents share); each sub-agent run is reported as a :class:`ChildRun`. The tool loop
(:mod:`_tools`) runs the tool and rolls the sub-agents' usage and cost up into the parent's reply.

>>> def run_tasks(tasks, ctx):
...     return invoke_parallel([{"prompt": t} for t in tasks], interrupt_token=ctx.interrupt)
>>> reply = invoke_claude("Research A and B in parallel", tools=[make_delegate_tool(run_tasks)])
>>> [(c.task, c.usage.output_tokens) for c in reply.children]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

import _tracing
from _interrupt import InterruptToken
from _results import ClaudeResponse, Usage, paid
from _validation import check_positive_int, is_mapping

__all__ = ["AgentContext", "ChildRun", "Delegation", "DelegateTool", "make_delegate_tool", "sdk_tools"]


def sdk_tools() -> Any:
    """The SDK's function-tool helpers (imported on first use: they pull in docstring_parser)."""
    from anthropic.lib import tools as sdk_tools

    return sdk_tools


@dataclass(frozen=True)
class ChildRun:
    """One sub-agent run by the ``delegate`` tool: its task, answer (or error) and what it used.

    >>> reply.children[0].task, reply.children[0].usage.output_tokens, reply.children[0].cost_usd
    """

    task: str
    depth: int
    text: Optional[str]
    usage: Usage
    cost_usd: Optional[float]
    error: Optional[BaseException] = None
    tool_calls: tuple = ()
    children: tuple = ()


@dataclass(frozen=True)
class AgentContext:
    """Where an agent runs: its delegation ``depth`` (0 = the top-level agent) and what its
    sub-agents share with it (``interrupt`` token, spend ``budget``, concurrency ``limiter``,
    anything else in ``extra``). :func:`run_tool_loop` hands it to the ``delegate`` tool, which
    gives its sub-agents :meth:`child` (one level deeper).

    >>> AgentContext(depth=0, interrupt=token).child().depth
    1
    """

    depth: int = 0
    interrupt: Optional[InterruptToken] = None
    budget: Any = None
    limiter: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def child(self) -> AgentContext:
        """The context of this agent's sub-agents (same token, budget and limiter; depth + 1)."""
        return replace(self, depth=self.depth + 1)


class DelegateTool:
    """The ``delegate`` tool: the model hands independent tasks to parallel sub-agents.

    Input ``{"tasks": [str, ...]}``; the tool calls ``run_parallel_tasks(tasks, child_context)``
    and returns the answers in task order as a JSON list (a failed task reads ``"ERROR: ..."``).
    The tool loop adds the sub-agents' usage and cost (``.usage`` / ``.cost_usd`` of what
    ``run_parallel_tasks`` returns, e.g. a :class:`ParallelResults`) to the parent's totals and lists
    each sub-agent in the reply's ``children``. Agents at depth ``max_depth`` get no delegate tool.
    Build it with :func:`make_delegate_tool`.
    """

    name = "delegate"

    def __init__(self, run_parallel_tasks: Callable[[list[str], AgentContext], Any], max_depth: int = 1) -> None:
        if not callable(run_parallel_tasks):
            raise TypeError(f"run_parallel_tasks must be callable, got {type(run_parallel_tasks).__name__}")
        check_positive_int(max_depth, "max_depth")
        self.run_parallel_tasks = run_parallel_tasks
        self.max_depth = max_depth
        self.schema = _delegate_schema()

    def run(self, tool_input: Any, context: AgentContext) -> Delegation:
        """Run the tasks of ``tool_input`` as sub-agents one level below ``context`` (under an
        ``invoke_agent delegate`` span when tracing is on: the sub-agents' spans are its children)."""
        tasks = tool_input.get("tasks") if is_mapping(tool_input) else None
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
            raise ValueError("delegate needs {'tasks': [non-empty strings]}, got " + json.dumps(tool_input)[:200])
        if context.depth >= self.max_depth:
            raise ValueError(f"delegation depth limit reached (max_depth={self.max_depth})")
        child = context.child()
        with _tracing.agent_span(self.name, depth=child.depth) as span:  # the sub-agents' spans nest here
            span.set({f"{_tracing.NS}.agent.sub_agents": len(tasks)})
            try:
                results = self.run_parallel_tasks(list(tasks), child)
            except Exception as error:  # a delegation that failed part-way: what its sub-agents used
                partial = getattr(error, "results", None)
                span.finish(usage=getattr(partial, "usage", None), cost_usd=getattr(partial, "cost_usd", None))
                raise
            span.finish(usage=getattr(results, "usage", None), cost_usd=getattr(results, "cost_usd", None))
        return Delegation(list(tasks), child.depth, results)

    def __repr__(self) -> str:
        return f"DelegateTool(max_depth={self.max_depth})"


def _delegate_stub(tasks: list[str]) -> str:  # pragma: no cover - only its signature is used
    """Hand independent sub-tasks to parallel sub-agents and get their answers back, in order.

    Each task must be self-contained: the sub-agent sees only the task text.

    Args:
        tasks: one self-contained instruction per sub-agent
    """
    raise NotImplementedError


_delegate_schema_cache: list[dict] = []


def _delegate_schema() -> dict:
    if not _delegate_schema_cache:
        tool = sdk_tools().beta_tool(_delegate_stub, name=DelegateTool.name)
        schema = dict(tool.to_dict())
        schema["input_schema"] = dict(schema["input_schema"])
        props = dict(schema["input_schema"].get("properties") or {})
        if "tasks" in props:
            props["tasks"] = {**props["tasks"], "minItems": 1}
        schema["input_schema"]["properties"] = props
        _delegate_schema_cache.append(schema)
    return _delegate_schema_cache[0]


def make_delegate_tool(
    run_parallel_tasks: Callable[[list[str], AgentContext], Any], max_depth: int = 1
) -> DelegateTool:
    """The ``delegate`` tool (see :class:`DelegateTool`), to put in a ``tools`` list.

    >>> def run_tasks(tasks, ctx):
    ...     return invoke_parallel([{"prompt": t} for t in tasks], interrupt_token=ctx.interrupt)
    >>> toolset = ToolSet.from_user([make_delegate_tool(run_tasks, max_depth=1)])
    """
    return DelegateTool(run_parallel_tasks, max_depth)


@dataclass
class Delegation:
    """What one call of the ``delegate`` tool did: its tasks, their depth and the sub-agents' results."""

    tasks: list[str]
    depth: int
    results: Any

    def answers(self) -> list[str]:
        errors = getattr(self.results, "errors", None) or {}
        out = []
        for i in range(len(self.tasks)):
            item = self.results[i] if i < len(self.results) else None
            if isinstance(item, BaseException) or (item is None and i in errors):
                error = item if isinstance(item, BaseException) else errors[i]
                out.append(f"ERROR: {error}")
            elif item is None:
                out.append("ERROR: no answer")
            else:
                out.append(str(item))
        return out

    def children(self) -> list[ChildRun]:
        errors = getattr(self.results, "errors", None) or {}
        runs = []
        for i, task in enumerate(self.tasks):
            item = self.results[i] if i < len(self.results) else None
            if isinstance(item, ClaudeResponse):
                runs.append(
                    ChildRun(
                        task,
                        self.depth,
                        str(item),
                        item.usage,
                        item.cost_usd,
                        None,
                        tuple(item.tool_calls or ()),
                        tuple(item.children or ()),
                    )
                )
            else:  # a failed sub-agent: what it paid before it failed (a refusal, tool turns), if known
                error = item if isinstance(item, BaseException) else errors.get(i)
                usage, cost = paid(error) or (Usage(), 0.0)
                runs.append(ChildRun(task, self.depth, None if item is None else str(item), usage, cost, error))
        return runs
