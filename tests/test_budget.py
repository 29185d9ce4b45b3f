"""The spend cap (Budget, scripts/_admission.py) and the run-cost estimate (scripts/_estimate.py),
through the real SDK over HTTP against the emulator."""
from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import anthropic
import pytest

import claude_client
from _admission import Budget, reset_controllers
from _errors import ClaudeInvocationError
from _estimate import (
    CostEstimate,
    estimate_request,
    estimate_run_cost,
    warm_prefixes,
)
from _results import PRICES
from _transport import send
from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(120)

MODEL = claude_client.DEFAULT_MODEL


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    reset_controllers()
    yield
    reset_controllers()


def _params(text: str, max_tokens: int = 100, **extra: Any) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra}


def test_budget_validation() -> None:
    with pytest.raises(TypeError, match="max_cost_usd"):
        Budget("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cost_usd"):
        Budget(-1.0)
    with pytest.raises(ValueError, match="max_cost_usd"):
        Budget(float("nan"))
    with pytest.raises(TypeError, match="parent"):
        Budget(1.0, parent=3)  # type: ignore[arg-type]
    reservation = Budget(1.0).reserve(_params("x"))
    with pytest.raises(ValueError, match="actual_cost_usd"):
        reservation.settle(-1.0)


def test_worst_case_is_the_documented_rule() -> None:
    per_in, per_out = PRICES["claude-sonnet-4"]
    params = _params("x" * 4000, max_tokens=1000)
    tokens = 1000 + 3  # ceil(4000 / 4) + the message overhead
    assert estimate_request(params).total == tokens
    assert Budget(1.0).worst_case(params) == pytest.approx((tokens * per_in + 1000 * per_out) / 1e6)
    cached = _params("q", max_tokens=10,
                     system=[{"type": "text", "text": "s" * 8000, "cache_control": {"type": "ephemeral"}}])
    # a cold cached prefix is priced as a cache write (1.25x)
    assert Budget(1.0).worst_case(cached) == pytest.approx((2000 * 1.25 * per_in + 4 * per_in + 10 * per_out) / 1e6)


def test_unknown_model_cannot_be_bounded() -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        Budget(1.0).reserve({"model": "mystery-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert info.value.kind == "budget"


def test_cap_refuses_what_could_exceed_it(client_env: Emulator) -> None:
    client_env.configure(ttft_ms=800)  # every request still in flight while the others reserve
    client = claude_client.get_client()
    params = [_params(f"slot {i}", max_tokens=2000) for i in range(10)]
    worst = Budget(1.0).worst_case(params[0])
    budget = Budget(3.5 * worst)
    barrier = threading.Barrier(10)

    def one(p: dict) -> Any:
        barrier.wait()
        try:
            return send(p, client=client, budget=budget)
        except ClaudeInvocationError as exc:
            return exc

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, params))
    done = [o for o in outcomes if isinstance(o, claude_client.ClaudeResponse)]
    refused = [o for o in outcomes if isinstance(o, ClaudeInvocationError)]
    assert len(done) == 3 and len(refused) == 7
    assert all(e.kind == "budget" for e in refused)
    assert client_env.stats()["messages"] == 3  # the refused ones never started
    assert budget.reserved == 0
    assert budget.spent == pytest.approx(sum(r.cost_usd for r in done))
    assert budget.spent <= budget.max_cost_usd


def test_sequential_run_stops_before_the_cap(client_env: Emulator) -> None:
    client = claude_client.get_client()
    params = _params("a question", max_tokens=500)
    worst = Budget(1.0).worst_case(params)
    budget = Budget(20 * worst)
    sent = 0
    with pytest.raises(ClaudeInvocationError) as info:
        while True:
            send(dict(params), client=client, budget=budget)
            sent += 1
    assert info.value.kind == "budget"
    assert budget.spent <= budget.max_cost_usd
    assert budget.max_cost_usd - budget.spent < worst  # refused only once the worst case no longer fits
    assert sent > 20  # the real replies cost far less than their worst case


def test_warm_prefix_is_reserved_at_the_read_price(client_env: Emulator) -> None:
    client = claude_client.get_client()
    system = [{"type": "text", "text": "policy " * 3000, "cache_control": {"type": "ephemeral"}}]
    params = _params("q1", max_tokens=10, system=system)
    budget = Budget(10.0)
    cold = budget.worst_case(params)
    first = send(params, client=client, budget=budget)
    assert first.usage.cache_creation_input_tokens > 0
    warm = budget.worst_case(_params("q2", max_tokens=10, system=system))
    assert warm < cold / 5
    second = send(_params("q2", max_tokens=10, system=system), client=client, budget=budget)
    assert second.usage.cache_read_input_tokens > 0 and second.cost_usd <= warm


def test_settle_rules_and_child_budgets() -> None:
    parent = Budget(1.0)
    child = parent.child(0.7)
    r = child.reserve(_params("x", max_tokens=1000))
    assert child.reserved == pytest.approx(r.cost_usd) and parent.reserved == pytest.approx(r.cost_usd)
    r.settle(None)  # unknown: the worst case counts as spent
    r.settle(0.0)  # a second settle does nothing
    assert child.spent == pytest.approx(r.cost_usd) and parent.spent == pytest.approx(r.cost_usd)
    assert child.reserved == 0 and parent.reserved == 0
    big = _params("x", max_tokens=40_000)  # 40k * $15/M = $0.60 of output
    child.reserve(big)
    with pytest.raises(ClaudeInvocationError) as info:  # the child's cap binds first
        child.reserve(big)
    assert info.value.kind == "budget"
    other = parent.child()
    with pytest.raises(ClaudeInvocationError) as info:  # the parent's cap binds across children
        other.reserve(big)
    assert "parent" in str(info.value)
    assert other.reserved == 0


def test_budget_hammer_never_exceeds_the_cap() -> None:
    budget = Budget(5.0)
    params = [_params("y" * random.Random(i).randint(10, 4000), max_tokens=random.Random(i).randint(10, 4000))
              for i in range(64)]
    violations: list[float] = []
    stop = threading.Event()
    settled_total = [0.0]
    total_lock = threading.Lock()

    def watch() -> None:
        while not stop.is_set():
            if budget.spent > budget.max_cost_usd + 1e-9:
                violations.append(budget.spent)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(1500):
            try:
                r = budget.reserve(params[rng.randrange(len(params))])
            except ClaudeInvocationError as exc:
                assert exc.kind == "budget"
                continue
            actual = rng.choice([0.0, None, r.cost_usd * rng.random()])
            r.settle(actual)
            with total_lock:
                settled_total[0] += r.cost_usd if actual is None else actual

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    stop.set()
    watcher.join()
    assert not violations
    assert budget.reserved == 0
    assert budget.spent == pytest.approx(settled_total[0])
    assert budget.spent <= budget.max_cost_usd + 1e-9
    assert budget.refused > 0  # the cap was reached


# ------------------------------------------------------------------------------ estimate_run_cost
@pytest.mark.parametrize("use_count_tokens", [True, False])
@pytest.mark.parametrize("cached", [False, True])
def test_estimate_brackets_the_real_cost(client_env: Emulator, use_count_tokens: bool, cached: bool) -> None:
    shared = " ".join(f"guideline {i}: be brief." for i in range(900))  # ~5k tokens
    prompts = [{"prompt": f"Summarise item {i}: " + "data " * (50 * i + 10)} for i in range(12)]
    kwargs: dict[str, Any] = {"max_tokens": 300, "shared_system": shared, "cache_shared_system": cached}
    estimate = estimate_run_cost(prompts, use_count_tokens=use_count_tokens, **kwargs)
    assert isinstance(estimate, CostEstimate)
    assert estimate.method == ("count_tokens" if use_count_tokens else "local")
    assert client_env.stats()["messages"] == 0  # generated nothing
    assert estimate.output_tokens_max == 12 * 300 and estimate.requests == 12
    warm_prefixes.clear()
    results = claude_client.invoke_parallel(prompts, max_workers=4, **kwargs)
    assert results.cost_usd is not None
    assert estimate.low_usd <= results.cost_usd <= estimate.high_usd, (estimate, results.cost_usd)
    if use_count_tokens:
        assert estimate.input_tokens == results.usage.total_input_tokens  # the emulator counts as it bills


def test_estimate_falls_back_to_local_when_unreachable() -> None:
    dead = anthropic.Anthropic(api_key="sk-ant-test-key", base_url="http://127.0.0.1:9", max_retries=0)
    estimate = estimate_run_cost([{"prompt": "x" * 400}], max_tokens=10, client=dead)
    assert estimate.method == "local"
    assert estimate.input_tokens == 103
    per_in, per_out = PRICES["claude-sonnet-4"]
    assert math.isclose(estimate.high_usd, (math.ceil(103 * 4 / 3) * per_in + 10 * per_out) / 1e6)
    with pytest.raises(TypeError):
        estimate_run_cost("not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        estimate_run_cost([{"prompt": "x"}], max_tokens=0)


def test_a_cap_of_the_estimates_high_lets_the_whole_run_start(client_env) -> None:
    import claude_client as cc

    prompts = [{"prompt": f"question {i} " + "context " * 200} for i in range(3)]
    est = cc.estimate_run_cost(prompts, max_tokens=100)
    results = cc.invoke_parallel(prompts, max_tokens=100, max_cost_usd=est.high_usd, max_workers=1)
    assert results.errors == {} and est.low_usd <= results.cost_usd <= est.high_usd
