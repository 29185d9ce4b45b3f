"""The tool loop (``_tools``): client tools built by the SDK's ``beta_tool``, server tools,
``pause_turn``, errors, timeouts, interrupts, cache breakpoints and delegation to sub-agents.

Every loop sends its turns through the library's real send path (``_transport.send``) to the
emulator over HTTP; nothing is mocked."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Optional

import pytest

from anthropic.lib.tools import beta_tool
from anthropic_emulator import Emulator, tool_directive

import _transport
from _errors import ClaudeInvocationError
from _interrupt import InterruptToken
from _requests import MAX_CACHE_BREAKPOINTS, count_breakpoints
from _results import ClaudeResponse, ParallelResults, Usage, totals
from _tools import AgentContext, ChildRun, ToolCall, ToolSet, make_delegate_tool, run_tool_loop

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-4-6"
WEB = {"type": "web_search_20250305", "name": "web_search"}


def lookup(q: str) -> str:
    """Look a word up in the dictionary.

    Args:
        q: the word to look up
    """
    return f"def of {q}"


def clock() -> str:
    """The time of day."""
    return "noon"


def failing(q: str) -> str:
    """A tool that always fails."""
    raise ValueError(f"boom on {q}")


def _params(prompt: str, **extra: Any) -> dict:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 500, "messages": [{"role": "user", "content": prompt}]}
    params.update(extra)
    return params


def _sender(interrupt: Optional[InterruptToken] = None, sent: Optional[list] = None) -> Callable[[dict], ClaudeResponse]:
    client = _transport.get_client()

    def send_turn(request: dict) -> ClaudeResponse:
        if sent is not None:
            sent.append(request)
        return _transport.send(request, client=client, interrupt=interrupt)

    return send_turn


def _emulator_usage(emulator: Emulator) -> Usage:
    return sum((Usage.from_sdk(r.usage) for r in emulator.message_requests() if r.usage), Usage())


def _loop(prompt: str, tools: list, **kwargs: Any) -> ClaudeResponse:
    toolset = ToolSet.from_user(tools)
    assert toolset is not None
    interrupt = kwargs.get("interrupt")
    return run_tool_loop(_params(prompt, **kwargs.pop("params", {})), toolset=toolset,
                         send_turn=kwargs.pop("send_turn", None) or _sender(interrupt), **kwargs)


# --------------------------------------------------------------------------- the round trip

def test_round_trip_runs_the_tool_and_returns_the_whole_run(client_env: Emulator) -> None:
    sent: list[dict] = []
    toolset = ToolSet.from_user([lookup])
    assert toolset is not None
    params = _params("define " + tool_directive("lookup", {"q": "cat"}))
    reply = run_tool_loop(params, toolset=toolset, send_turn=_sender(sent=sent))
    use_id = reply.messages[1]["content"][0]["id"]
    assert reply == f"Echo tool results: {use_id}=def of cat"
    assert isinstance(reply, ClaudeResponse) and reply.stop_reason == "end_turn"
    [call] = reply.tool_calls
    assert (call.name, call.input, call.output, call.is_error, call.id) == ("lookup", {"q": "cat"}, "def of cat",
                                                                             False, use_id)
    assert call.seconds >= 0
    assert [m["role"] for m in reply.messages] == ["user", "assistant", "user", "assistant"]
    assert reply.messages[2]["content"] == [{"type": "tool_result", "tool_use_id": use_id, "content": "def of cat"}]
    assert reply.messages[3]["content"] == reply.content
    # the schema is the SDK's beta_tool schema, sent on every turn
    assert sent[0]["tools"] == [beta_tool(lookup).to_dict()]
    assert sent[0]["tools"][0]["input_schema"]["properties"]["q"]["description"] == "the word to look up"
    assert all(r.body["tools"] == sent[0]["tools"] for r in client_env.message_requests())
    # usage and cost summed over both turns; the caller's params untouched
    assert len(client_env.message_requests()) == 2
    assert reply.usage == _emulator_usage(client_env)
    assert reply.cost_usd is not None and reply.cost_usd > 0
    assert params["messages"] == [{"role": "user", "content": "define " + tool_directive("lookup", {"q": "cat"})}]
    assert "tools" not in params
    assert reply.children == []


def test_cost_is_the_sum_of_the_turns(client_env: Emulator) -> None:
    replies: list[ClaudeResponse] = []
    inner = _sender()

    def send_turn(request: dict) -> ClaudeResponse:
        replies.append(inner(request))
        return replies[-1]

    reply = _loop("x [[tool=clock tool_turns=2]]", [clock], send_turn=send_turn)
    usage, cost = totals(replies)
    assert len(replies) == 3 and reply.usage == usage and reply.cost_usd == pytest.approx(cost)


def test_several_tool_use_blocks_in_one_turn(client_env: Emulator) -> None:
    seen: list[ToolCall] = []
    reply = _loop("both " + tool_directive("lookup", {"q": "a"}) + " [[tool=clock preamble=1]]", [lookup, clock],
                  on_tool_call=seen.append)
    results = reply.messages[2]["content"]
    assert [b["content"] for b in results] == ["def of a", "noon"]
    assert [b["tool_use_id"] for b in results] == [b["id"] for b in reply.messages[1]["content"][1:]]
    assert reply.messages[1]["content"][0] == {"type": "text", "text": "Calling lookup, clock."}
    assert [(c.name, c.output) for c in reply.tool_calls] == [("lookup", "def of a"), ("clock", "noon")]
    # on_tool_call: a start record (output None) then an end record, per call
    assert [(c.name, c.output) for c in seen] == [("lookup", None), ("lookup", "def of a"),
                                                  ("clock", None), ("clock", "noon")]


def test_parallel_tools_run_at_once_and_keep_their_order(client_env: Emulator) -> None:
    started: list[float] = []

    def slow(q: str) -> str:
        """Slow lookup."""
        started.append(time.monotonic())
        time.sleep(0.4)
        return f"slow {q}"

    prompt = " ".join(tool_directive("slow", {"q": q}) for q in "abc")
    t0 = time.monotonic()
    reply = _loop(prompt, [slow], parallel_tools=True)
    assert time.monotonic() - t0 < 1.1  # three 0.4 s tools at once, not 1.2 s in a row
    assert [b["content"] for b in reply.messages[2]["content"]] == ["slow a", "slow b", "slow c"]
    assert max(started) - min(started) < 0.3


def test_a_tool_error_is_reported_to_the_model(client_env: Emulator) -> None:
    reply = _loop("try " + tool_directive("failing", {"q": "x"}), [failing])
    [result] = reply.messages[2]["content"]
    assert result["is_error"] is True and "ValueError: boom on x" in result["content"]
    assert reply.endswith("=ValueError: boom on x (error)")
    [call] = reply.tool_calls
    assert call.is_error and "boom on x" in call.output


def test_bad_tool_arguments_and_unknown_tools_are_errors_for_the_model(client_env: Emulator) -> None:
    reply = _loop("bad " + tool_directive("lookup", {"q": 3}), [lookup])
    [result] = reply.messages[2]["content"]
    assert result["is_error"] is True and "Invalid arguments for function lookup" in result["content"]
    assert "string" in result["content"]  # the pydantic detail is kept


def test_a_slow_tool_times_out(client_env: Emulator) -> None:
    release = threading.Event()

    def stuck(q: str) -> str:
        """Never answers in time."""
        release.wait(10)
        return "late"

    t0 = time.monotonic()
    try:
        reply = _loop("wait " + tool_directive("stuck", {"q": "x"}), [stuck], tool_timeout=0.2)
    finally:
        release.set()
    assert time.monotonic() - t0 < 2.0
    [result] = reply.messages[2]["content"]
    assert result["is_error"] is True and "tool_timeout=0.2" in result["content"]
    assert reply.tool_calls[0].is_error and reply.tool_calls[0].seconds >= 0.2


def test_the_turn_limit_raises_with_the_transcript(client_env: Emulator) -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        _loop("forever [[tool=clock tool_turns=inf]]", [clock], max_tool_turns=3)
    error = info.value
    assert error.kind == "tool_turns_exceeded"
    assert len(client_env.message_requests()) == 4
    assert error.messages is error.details["messages"]  # type: ignore[attr-defined]
    assert [m["role"] for m in error.messages] == ["user"] + ["assistant", "user"] * 3 + ["assistant"]  # type: ignore
    assert len(error.tool_calls) == 3  # type: ignore[attr-defined]
    assert error.usage == _emulator_usage(client_env)  # type: ignore[attr-defined]


def test_pause_turn_is_sent_back_to_be_continued(client_env: Emulator) -> None:
    sent: list[dict] = []
    reply = _loop("search cats [[pause_turns=2]]", [WEB, clock], send_turn=_sender(sent=sent))
    assert reply == "Echo: search cats"
    assert len(sent) == 3
    for i in (1, 2):  # each continuation ends with the paused assistant turn: no new user turn
        assert sent[i]["messages"][-1]["role"] == "assistant"
        assert [b["type"] for b in sent[i]["messages"][-1]["content"]] == ["server_tool_use", "web_search_tool_result"]
        assert [m["role"] for m in sent[i]["messages"]] == ["user"] + ["assistant"] * i
    assert sent[0]["tools"][0] == WEB
    assert reply.tool_calls == []
    assert reply.usage == _emulator_usage(client_env)


# --------------------------------------------------------------------------- interrupts

def test_interrupt_during_a_tool_returns_within_a_second(client_env: Emulator) -> None:
    release = threading.Event()
    running = threading.Event()
    finished = threading.Event()

    def stuck() -> str:
        """Runs until released."""
        running.set()
        release.wait(20)
        finished.set()
        return "late"

    token = InterruptToken()
    threading.Thread(target=lambda: (running.wait(10), token.interrupt()), daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ClaudeInvocationError) as info:
            _loop("go [[tool=stuck]]", [stuck], interrupt=token)
        elapsed = time.monotonic() - t0
        assert info.value.kind == "interrupted"
        assert elapsed < 1.0 + 0.5  # the first turn, then at most a moment after the interrupt
        assert not finished.is_set()  # the tool's thread was not waited for
        assert len(client_env.message_requests()) == 1
    finally:
        release.set()
    assert finished.wait(5)


def test_interrupt_during_a_turn(client_env: Emulator) -> None:
    token = InterruptToken()
    timer = threading.Timer(0.3, token.interrupt)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(ClaudeInvocationError) as info:
        _loop("slow [[ttft_ms=5000 tool=clock]]", [clock], interrupt=token)
    assert info.value.kind == "interrupted"
    assert time.monotonic() - t0 < 1.3
    timer.cancel()


def test_a_tool_can_take_the_interrupt_token(client_env: Emulator) -> None:
    got: list[Any] = []

    def polite(q: str, interrupt_token: InterruptToken) -> str:
        """Uses the run's token.

        Args:
            q: a query
            interrupt_token: the run's token
        """
        got.append(interrupt_token)
        return "ok"

    toolset = ToolSet.from_user([polite])
    assert toolset is not None
    schema = toolset.schemas[0]["input_schema"]
    assert list(schema["properties"]) == ["q"] and schema["required"] == ["q"]
    token = InterruptToken()
    _loop("p " + tool_directive("polite", {"q": "x"}), [polite], interrupt=token)
    assert got == [token]
    _loop("p " + tool_directive("polite", {"q": "y"}), [polite])  # no token given: a fresh, unset one
    assert isinstance(got[1], InterruptToken) and not got[1].is_interrupted()


def test_six_tool_agents_in_parallel_get_their_own_results(client_env: Emulator) -> None:
    toolset = ToolSet.from_user([lookup, clock])
    assert toolset is not None
    replies: dict[int, ClaudeResponse] = {}
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            prompt = f"agent {i} " + tool_directive("lookup", {"q": f"word{i}"}, tool_turns=2)
            replies[i] = run_tool_loop(_params(prompt), toolset=toolset, send_turn=_sender(InterruptToken()),
                                       interrupt=InterruptToken(), parallel_tools=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(replies) == 6
    for i, reply in replies.items():
        assert [c.output for c in reply.tool_calls] == [f"def of word{i}"] * 2
        assert f"def of word{i}" in reply and all(f"word{j}" not in reply for j in range(6) if j != i)
    assert len(client_env.message_requests()) == 18


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("tools,fragment", [
    ([lookup, lookup], "tools[1]: duplicate tool name 'lookup' (also tools[0])"),
    ([lookup, {"name": "clock", "input_schema": {"type": "object"}}], "tools[1]: the client tool 'clock'"),
    ([{"name": "nothing"}], "tools[0]: the client tool 'nothing'"),
    ([lookup, 42], "tools[1] must be a function"),
    (["lookup"], "tools[0] must be a function"),
    ([lambda q: q], "tools[0]: tool name '<lambda>'"),
    ([WEB, {"type": "web_search_20250305", "name": "web_search"}], "duplicate tool name 'web_search'"),
    ([lookup, beta_tool(lookup)], "duplicate tool name 'lookup'"),
])
def test_bad_tools_are_refused_before_any_request(client_env: Emulator, tools: list, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ToolSet.from_user(tools)
    assert fragment in str(info.value)
    assert client_env.message_requests() == []


def test_tool_set_inputs(client_env: Emulator) -> None:
    assert ToolSet.from_user(None) is None and ToolSet.from_user([]) is None
    with pytest.raises(TypeError, match="tools must be a list"):
        ToolSet.from_user(lookup)
    with pytest.raises(TypeError, match="agent_tools must be a list"):
        ToolSet.from_user("lookup", name="agent_tools")
    named = beta_tool(lookup, name="dictionary")
    toolset = ToolSet.from_user([named, WEB, clock])
    assert toolset is not None and toolset.names == ["dictionary", "web_search", "clock"]
    assert toolset.schemas[1] == WEB and toolset.schemas[0]["name"] == "dictionary"
    assert ToolSet.from_user(toolset) is toolset
    reply = _loop("n " + tool_directive("dictionary", {"q": "z"}), [named])
    assert reply.tool_calls[0].output == "def of z"
    count = len(client_env.message_requests())
    with pytest.raises(ValueError, match="messages"):
        run_tool_loop({"model": MODEL, "max_tokens": 5, "messages": []}, toolset=toolset, send_turn=_sender())
    with pytest.raises(TypeError, match="toolset"):
        run_tool_loop(_params("x"), toolset=[lookup], send_turn=_sender())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tool_turns"):
        run_tool_loop(_params("x"), toolset=toolset, send_turn=_sender(), max_tool_turns=0)
    with pytest.raises(ValueError, match="tool_timeout"):
        run_tool_loop(_params("x"), toolset=toolset, send_turn=_sender(), tool_timeout=-1)
    with pytest.raises(TypeError, match="on_tool_call"):
        run_tool_loop(_params("x"), toolset=toolset, send_turn=_sender(), on_tool_call=3)  # type: ignore
    assert len(client_env.message_requests()) == count  # refused before anything was sent


# --------------------------------------------------------------------------- caching

def test_each_turn_marks_its_last_block_within_four_breakpoints(client_env: Emulator) -> None:
    sent: list[dict] = []
    doc = "Reference material for the agent. " * 200
    reply = _loop("work [[tool=clock tool_turns=3]]", [clock], send_turn=_sender(sent=sent),
                  params={"system": [{"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}}]})
    assert len(sent) == 4
    for request in sent:
        assert sum(count_breakpoints(request.get(k)) for k in ("tools", "system", "messages")) <= MAX_CACHE_BREAKPOINTS
        last = request["messages"][-1]["content"]
        assert isinstance(last, list) and last[-1]["cache_control"] == {"type": "ephemeral"}
    records = client_env.message_requests()
    # from the second turn on, each turn reads the previous turn's prefix from the cache
    for before, after in zip(records, records[1:]):
        assert after.usage["cache_read_input_tokens"] >= before.usage["cache_creation_input_tokens"] + \
            before.usage["cache_read_input_tokens"] > 0
    # the transcript handed back is clean (no breakpoints of the loop's)
    assert count_breakpoints(reply.messages) == 0


def test_breakpoints_stay_within_the_limit_when_the_caller_uses_three(client_env: Emulator) -> None:
    sent: list[dict] = []
    system = [{"type": "text", "text": "a " * 600, "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "b " * 600, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "go [[tool=clock tool_turns=3]]",
                                              "cache_control": {"type": "ephemeral"}}]}]
    toolset = ToolSet.from_user([clock])
    assert toolset is not None
    run_tool_loop({"model": MODEL, "max_tokens": 500, "system": system, "messages": messages},
                  toolset=toolset, send_turn=_sender(sent=sent))
    assert len(sent) == 4
    # the first request's last block is the caller's own breakpoint; later turns add one (4 in all)
    assert [sum(count_breakpoints(r.get(k)) for k in ("tools", "system", "messages")) for r in sent] == [3, 4, 4, 4]
    for request in sent:
        assert "cache_control" in request["messages"][-1]["content"][-1]
    assert all(r.status == 200 for r in client_env.message_requests())


# --------------------------------------------------------------------------- delegation

def _fake_parallel(contexts: list[AgentContext]) -> Callable[[list[str], AgentContext], ParallelResults]:
    """Runs each task as one request through the transport (what invoke_parallel would do)."""
    client = _transport.get_client()

    def run_parallel_tasks(tasks: list[str], context: AgentContext) -> ParallelResults:
        contexts.append(context)
        replies = [_transport.send(_params(task), client=client, interrupt=context.interrupt) for task in tasks]
        usage, cost = totals(replies)
        return ParallelResults(replies, usage=usage, cost_usd=cost)

    return run_parallel_tasks


def test_delegate_runs_sub_agents_and_rolls_up_their_usage(client_env: Emulator) -> None:
    contexts: list[AgentContext] = []
    delegate = make_delegate_tool(_fake_parallel(contexts), max_depth=1)
    token = InterruptToken()
    reply = _loop("plan " + tool_directive("delegate", {"tasks": ["alpha", "beta"]}), [delegate, clock],
                  interrupt=token)
    [call] = reply.tool_calls
    assert call.name == "delegate" and call.output == ["Echo: alpha", "Echo: beta"]
    assert json.loads(reply.messages[2]["content"][0]["content"]) == ["Echo: alpha", "Echo: beta"]
    [context] = contexts
    assert context.depth == 1 and context.interrupt is token
    assert len(client_env.message_requests()) == 4  # parent turn, two children, parent's final turn
    assert reply.usage == _emulator_usage(client_env)
    assert [type(c) for c in reply.children] == [ChildRun, ChildRun]
    assert [(c.task, c.text, c.depth) for c in reply.children] == [("alpha", "Echo: alpha", 1), ("beta", "Echo: beta", 1)]
    child_usage = reply.children[0].usage + reply.children[1].usage
    parent_turns = [r for r in client_env.message_requests() if r.body.get("tools")]
    assert reply.usage == child_usage + sum((Usage.from_sdk(r.usage) for r in parent_turns), Usage())
    assert reply.cost_usd == pytest.approx(sum(c.cost_usd for c in reply.children) +
                                           sum(_cost(r.usage) for r in parent_turns))


def _cost(usage: dict) -> float:
    from _results import estimate_cost

    return estimate_cost(Usage.from_sdk(usage), MODEL) or 0.0


def test_depth_is_enforced(client_env: Emulator) -> None:
    delegate = make_delegate_tool(_fake_parallel([]), max_depth=1)
    toolset = ToolSet.from_user([delegate, clock])
    assert toolset is not None
    assert toolset.names == ["delegate", "clock"] and toolset.delegate is delegate
    assert toolset.for_depth(0) is toolset
    assert toolset.for_depth(1).names == ["clock"] == toolset.without_delegate().names
    sent: list[dict] = []
    # an agent at depth 1 (a sub-agent) gets no delegate tool: asking for it is the API's 400
    reply = run_tool_loop(_params("child [[tool=clock]]"), toolset=toolset, send_turn=_sender(sent=sent),
                          context=AgentContext(depth=1))
    assert [t["name"] for t in sent[0]["tools"]] == ["clock"]
    assert reply.tool_calls[0].output == "noon"
    with pytest.raises(ClaudeInvocationError) as info:
        run_tool_loop(_params("child [[tool=delegate]]"), toolset=toolset, send_turn=_sender(),
                      context=AgentContext(depth=1))
    assert info.value.kind == "bad_request"
    with pytest.raises(ValueError, match="max_depth"):
        make_delegate_tool(_fake_parallel([]), max_depth=0)
    with pytest.raises(TypeError, match="run_parallel_tasks"):
        make_delegate_tool(None)  # type: ignore[arg-type]


def test_bad_delegate_input_is_an_error_for_the_model(client_env: Emulator) -> None:
    contexts: list[AgentContext] = []
    reply = _loop("plan " + tool_directive("delegate", {"tasks": []}), [make_delegate_tool(_fake_parallel(contexts))])
    assert reply.tool_calls[0].is_error and "tasks" in reply.tool_calls[0].output
    assert contexts == [] and reply.children == []
