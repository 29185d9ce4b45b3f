"""What the run-level options of the public functions become: an :class:`_agent.Agent`, a journal,
a progress display and the settle hooks that feed them (shared by ``invoke_parallel*`` and
``invoke_parallel_managed``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import anthropic

from _admission import Budget, RateLimits, controller_for
from _agent import Agent, ToolOptions
from _interrupt import InterruptToken, check_token
from _journal import RunJournal, check_path
from _models import DEFAULT_MODEL
from _progress import Progress
from _requests import PromptSpec, single_request
from _results import ClaudeResponse
from _retry import RetryPolicy
from _structured import OutputSpec
from _tools import ToolSet
from _transport import default_policy, get_client
from _validation import check_bool, check_number, check_optional_seconds

#: Prompt-dict keys every parallel function accepts besides the request keys.
AGENT_KEYS = frozenset({"tools"})


@dataclass(frozen=True)
class AgentOptions:
    """The agent options of a call, validated before anything is sent."""

    tools: Optional[ToolSet]
    output: Optional[OutputSpec]
    tool_options: ToolOptions
    max_cost_usd: Optional[float]
    rate_limits: Optional[RateLimits] = None
    #: The name of a spend cap shared with every run, in any process on the shared store, that
    #: names it (``budget="nightly"`` with ``max_cost_usd=``).
    budget_name: Optional[str] = None

    @classmethod
    def checked(
        cls,
        *,
        tools: Any = None,
        output_schema: Any = None,
        max_tool_turns: Any = 10,
        tool_timeout: Any = None,
        parallel_tools: Any = False,
        on_tool_call: Any = None,
        max_cost_usd: Any = None,
        rate_limits: Any = None,
        budget: Any = None,
    ) -> AgentOptions:
        if max_cost_usd is not None:
            check_number(max_cost_usd, "max_cost_usd")
        if budget is not None:
            if not isinstance(budget, str):
                raise TypeError(
                    f"budget must be a str (the name of a shared spend cap) or None, got {type(budget).__name__}"
                )
            if not budget.strip():
                raise ValueError("budget must be a non-empty name")
            if max_cost_usd is None:
                raise ValueError("budget= names a shared spend cap: give max_cost_usd= with it")
        if rate_limits is not None and not isinstance(rate_limits, RateLimits):
            raise TypeError(f"rate_limits must be a RateLimits or None, got {type(rate_limits).__name__}")
        return cls(
            ToolSet.from_user(tools),
            OutputSpec.from_user(output_schema),
            ToolOptions.checked(max_tool_turns, tool_timeout, parallel_tools, on_tool_call),
            None if max_cost_usd is None else float(max_cost_usd),
            rate_limits,
            budget,
        )

    def limit(self, client: anthropic.Anthropic, bodies: Sequence[dict]) -> None:
        """Set the explicit rate limits (if any) on the admission controller of every model the
        requests use; they stay in force for this key and base URL until :func:`reset_client`."""
        if self.rate_limits is not None:
            for model in {str(body.get("model")) for body in bodies}:
                controller_for(client, model, self.rate_limits)

    def agent(
        self,
        client: anthropic.Anthropic,
        *,
        policy: Optional[RetryPolicy] = None,
        interrupt: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
        budget: Optional[Budget] = None,
    ) -> Agent:
        if budget is None and self.max_cost_usd is not None:
            budget = Budget(self.max_cost_usd, name=self.budget_name)
        return Agent(
            client,
            policy=policy,
            interrupt=interrupt,
            stall_timeout=stall_timeout,
            budget=budget,
            tools=self.tools,
            output=self.output,
            tool_options=self.tool_options,
        )


def attach_prompt_tools(specs: Sequence[PromptSpec]) -> None:
    """A prompt's own ``"tools"`` key becomes its toolset (validated now, before any request)."""
    for spec in specs:
        if "tools" in spec.extra:
            spec.extra["toolset"] = ToolSet.from_user(spec.extra["tools"], f"prompts[{spec.index}]['tools']")


def wants_pilot(cache_pilot: bool, cache_shared_system: bool, shared_system: Any, bodies: Sequence[dict]) -> bool:
    """Whether the first request goes alone (the cache pilot): a cached shared system, more than
    one request, and the first one carries that system."""
    return bool(
        cache_pilot and cache_shared_system and shared_system is not None and len(bodies) > 1 and "system" in bodies[0]
    )


def as_sent(specs: Sequence[PromptSpec], options: AgentOptions) -> list[dict]:
    """Each request body as the agent sends it (output schema and tool schemas included): what a
    journal fingerprints, so a journal made with other tools or another schema is refused."""
    bodies = []
    for spec in specs:
        body = spec.params if options.output is None else options.output.apply(spec.params)
        toolset = spec.extra.get("toolset") or options.tools
        bodies.append(body if toolset is None else {**body, "tools": toolset.schemas})
    return bodies


def check_progress(progress: Any) -> Any:
    if progress is True or progress is False or callable(progress):
        return progress
    raise TypeError(f"progress must be a bool or a callable taking a snapshot, got {type(progress).__name__}")


@dataclass
class RunHooks:
    """The journal and progress display of one run, fed by the slots as they begin and settle."""

    journal: Optional[RunJournal] = None
    progress: Optional[Progress] = None

    def begin(self, index: int) -> None:
        if self.progress is not None:
            self.progress.started()

    def settle(self, index: int, outcome: Any) -> None:
        if self.journal is not None:
            self.journal.append(index, outcome)
        if self.progress is not None:
            self.progress.settled(outcome)

    @property
    def restored(self) -> dict[int, Any]:
        return dict(self.journal.restored) if self.journal is not None else {}


@contextlib.contextmanager
def run_hooks(
    bodies: Sequence[dict],
    *,
    journal: Any,
    retry_failed: Any,
    progress: Any,
    label: str,
    output: Optional[OutputSpec] = None,
) -> Iterator[RunHooks]:
    """Open the run's journal (restoring what it holds) and progress display; close both after."""
    path = check_path(journal)
    check_bool(retry_failed, "retry_failed")
    check_progress(progress)
    hooks = RunHooks()
    try:
        if path is not None:
            hooks.journal = RunJournal.open(path, bodies, retry_failed=retry_failed)
            if output is not None:  # the journal keeps the text: validate it again into .parsed
                for outcome in hooks.journal.restored.values():
                    if isinstance(outcome, ClaudeResponse):
                        outcome.parsed = output.parse(outcome)
        if progress is not False:
            hooks.progress = Progress(len(bodies), progress, label)
            for outcome in hooks.restored.values():
                hooks.progress.settled(outcome)
        yield hooks
    finally:
        if hooks.progress is not None:
            hooks.progress.close()
        if hooks.journal is not None:
            hooks.journal.close()


def common_checks(
    *, interrupt_token: Any, stall_timeout: Any, return_exceptions: Any, cache_pilot: Any
) -> Optional[float]:
    check_token(interrupt_token)
    check_bool(return_exceptions, "return_exceptions")
    check_bool(cache_pilot, "cache_pilot")
    return check_optional_seconds(stall_timeout, "stall_timeout")


def run_single(
    prompt: Optional[str],
    *,
    model: str = DEFAULT_MODEL,
    system: Any = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    cache_system: bool = False,
    cache_prompt: bool = False,
    messages: Any = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    extra: Optional[dict] = None,
    stream: bool = False,
    on_text: Optional[Callable[[str], Any]] = None,
    policy: Optional[RetryPolicy] = None,
    effort: Optional[str] = None,
    thinking: Any = None,
    **agent_options: Any,
) -> ClaudeResponse:
    """One request (``invoke_claude`` and ``invoke_with_retry``): validated, built, sent through
    its agent; ``policy`` None means the client's SDK-style retries. ``effort`` / ``thinking``
    go to the builder (``output_config.effort`` / ``thinking``)."""
    check_token(interrupt_token)
    stall = check_optional_seconds(stall_timeout, "stall_timeout")
    options = AgentOptions.checked(**agent_options)
    params = single_request(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        extra=extra or {},
        effort=effort,
        thinking=thinking,
    )
    client = get_client(api_key=api_key, base_url=base_url)
    options.limit(client, [params])
    agent = options.agent(
        client, policy=policy or default_policy(client), interrupt=interrupt_token, stall_timeout=stall
    )
    return agent.run(params, stream=stream, on_text=on_text)
