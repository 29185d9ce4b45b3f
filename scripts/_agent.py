"""One request as an agent: the send path plus, when asked, a tool loop and validated output.

:class:`Agent` holds everything a prompt is sent with (client, retry policy, interrupt, stall
timeout, spend cap, tools, output schema); :meth:`Agent.run` sends one request body and returns
the final reply. Every turn of a tool loop, every repair of an invalid structured reply and every
delegated sub-agent goes through the same :func:`_transport.send`. The fan-out, managed runs and
conversations all send through an Agent, so a capability added here reaches every call path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import anthropic

import _tracing
from _admission import Budget
from _errors import ClaudeInvocationError
from _interrupt import InterruptToken
from _results import ClaudeResponse
from _retry import RetryPolicy
from _structured import OutputSpec, send_structured
from _tools import AgentContext, LoopState, ToolCall, ToolSet, run_tool_loop
from _transport import send
from _validation import check_bool, check_callable, check_optional_seconds, check_positive_int

#: ``on_tool_call(record)``: a :class:`_tools.ToolCall` at each call's start and end.
ToolCallback = Callable[[ToolCall], Any]


@dataclass(frozen=True)
class ToolOptions:
    """How a tool loop runs (validated once, before anything is sent)."""

    max_tool_turns: int = 10
    tool_timeout: Optional[float] = None
    parallel_tools: bool = False
    on_tool_call: Optional[ToolCallback] = None

    @classmethod
    def checked(
        cls, max_tool_turns: Any = 10, tool_timeout: Any = None, parallel_tools: Any = False, on_tool_call: Any = None
    ) -> ToolOptions:
        return cls(
            check_positive_int(max_tool_turns, "max_tool_turns"),
            check_optional_seconds(tool_timeout, "tool_timeout"),
            check_bool(parallel_tools, "parallel_tools"),
            check_callable(on_tool_call, "on_tool_call"),
        )


@dataclass(frozen=True)
class Agent:
    """What every request of a call or run is sent with."""

    client: anthropic.Anthropic
    policy: Optional[RetryPolicy] = None
    interrupt: Optional[InterruptToken] = None
    stall_timeout: Optional[float] = None
    budget: Optional[Budget] = None
    tools: Optional[ToolSet] = None
    output: Optional[OutputSpec] = None
    tool_options: ToolOptions = field(default_factory=ToolOptions)
    depth: int = 0

    def with_token(self, interrupt: Optional[InterruptToken]) -> Agent:
        return self if interrupt is self.interrupt else replace(self, interrupt=interrupt)

    def run(
        self,
        params: dict,
        *,
        stream: bool = False,
        on_text: Optional[Callable[[str], Any]] = None,
        on_start: Optional[Callable[[], Any]] = None,
        tools: Optional[ToolSet] = None,
        loop_state: Optional[LoopState] = None,
    ) -> ClaudeResponse:
        """Send ``params`` (with the tool loop of ``tools`` or ``self.tools``, and the output
        schema when set) and return the final reply.

        ``loop_state`` (a :class:`_tools.LoopState`, one per task) lets a caller that runs the
        same task again after a failure resume its tool loop at the failed turn: tools that ran
        are not run again."""
        toolset = tools if tools is not None else self.tools
        output = self.output
        if output is not None:
            params = output.apply(params)

        turns = [0]  # requests sent (the tool loop's agent span records them)

        def send_turn(body: dict) -> ClaudeResponse:
            turns[0] += 1
            return send(
                body,
                client=self.client,
                policy=self.policy,
                stream=stream,
                on_text=on_text,
                on_start=on_start,
                interrupt=self.interrupt,
                stall_timeout=self.stall_timeout,
                budget=self.budget,
            )

        if toolset is None:
            once: Callable[[], ClaudeResponse] = lambda: send_turn(params)  # noqa: E731
        else:
            options = self.tool_options
            context = AgentContext(
                depth=self.depth,
                interrupt=self.interrupt,
                budget=self.budget,
                extra={"agent": self, "toolset": toolset},
            )

            def once() -> ClaudeResponse:
                return run_tool_loop(
                    params,
                    toolset=toolset,
                    send_turn=send_turn,
                    max_tool_turns=options.max_tool_turns,
                    tool_timeout=options.tool_timeout,
                    parallel_tools=options.parallel_tools,
                    on_tool_call=options.on_tool_call,
                    interrupt=self.interrupt,
                    context=context,
                    state=loop_state,
                )

        if toolset is None:
            return once() if output is None else send_structured(once, output)
        with _tracing.agent_span("agent", depth=self.depth, model=params.get("model")) as span:
            try:
                reply = once() if output is None else send_structured(once, output)
            except ClaudeInvocationError as error:  # what the loop ran and paid before it failed
                calls = getattr(error, "tool_calls", None)
                span.finish(
                    turns=turns[0],
                    tool_calls=len(calls) if isinstance(calls, list) else None,
                    usage=getattr(error, "usage", None),
                    cost_usd=getattr(error, "cost_usd", None),
                )
                raise
            span.finish(
                turns=turns[0], tool_calls=len(reply.tool_calls or ()), usage=reply.usage, cost_usd=reply.cost_usd
            )
            return reply
