"""The spend cap (Budget, scripts/_admission.py) and the run-cost estimate (scripts/_estimate.py),
through the real SDK over HTTP against the emulator."""
from __future__ import annotations

import math
import random
import threading
import time
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
from _interrupt import InterruptToken
from _models import CATALOGUE
from _transport import send
from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(120)

MODEL = claude_client.DEFAULT_MODEL
PRICING = CATALOGUE[MODEL].pricing  # the default model's catalogue prices (USD per million)
assert PRICING is not None


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
    with pytest.raises(TypeError, match="interrupt"):
        Budget(1.0).reserve(_params("x"), interrupt="stop")  # type: ignore[arg-type]


def test_worst_case_is_the_documented_rule() -> None:
    params = _params("x" * 4000, max_tokens=1000)
    tokens = 1300 + 3  # ceil(4000 / 4 * 1.3): the new tokenizer's 30% more; + the message overhead
    assert CATALOGUE[MODEL].tokenizer_factor == 1.3
    assert estimate_request(params).total == tokens
    assert Budget(1.0).worst_case(params) == pytest.approx((tokens * PRICING.input + 1000 * PRICING.output) / 1e6)
    cached = _params("q", max_tokens=10,
                     system=[{"type": "text", "text": "s" * 8000, "cache_control": {"type": "ephemeral"}}])
    # a cold cached prefix is priced as a cache write (the model's 5-minute write price)
    assert Budget(1.0).worst_case(cached) == pytest.approx(
        (2600 * PRICING.cache_write_5m + 4 * PRICING.input + 10 * PRICING.output) / 1e6)
    us = _params("x" * 4000, max_tokens=1000, inference_geo="us")
    assert Budget(1.0).worst_case(us) == pytest.approx(Budget(1.0).worst_case(params) * 1.1)


def test_unknown_model_cannot_be_bounded() -> None:
    with pytest.raises(ClaudeInvocationError) as info:
        Budget(1.0).reserve({"model": "mystery-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert info.value.kind == "budget"


def _race(client_env: Emulator, params: list[dict], budget: Budget) -> list[Any]:
    """Send every request at once (one thread each) under ``budget``; replies or errors."""
    client = claude_client.get_client()
    barrier = threading.Barrier(len(params))

    def one(p: dict) -> Any:
        barrier.wait()
        try:
            return send(p, client=client, budget=budget)
        except ClaudeInvocationError as exc:
            return exc

    with ThreadPoolExecutor(len(params)) as pool:
        return list(pool.map(one, params))


def test_what_does_not_fit_beside_the_reservations_waits(client_env: Emulator) -> None:
    client_env.configure(ttft_ms=400)  # every request still in flight while the others reserve
    params = [_params(f"slot {i}", max_tokens=2000) for i in range(10)]
    worst = Budget(1.0).worst_case(params[0])
    budget = Budget(3.5 * worst)  # three worst cases fit at once; the real replies cost far less
    outcomes = _race(client_env, params, budget)
    done = [o for o in outcomes if isinstance(o, claude_client.ClaudeResponse)]
    assert len(done) == 10, outcomes  # the seven that did not fit at first waited, then ran
    assert budget.waited >= 7 and budget.refused == 0
    stats = client_env.stats()
    assert stats["messages"] == 10 and stats["peak_concurrency"] <= 3  # never more in flight than fit
    assert budget.reserved == 0 and budget.waiting == 0
    assert budget.spent == pytest.approx(sum(r.cost_usd for r in done))
    assert budget.spent <= budget.max_cost_usd


def test_cap_refuses_what_could_exceed_it(client_env: Emulator) -> None:
    client_env.configure(ttft_ms=400, reply_words=5000)  # every reply runs to max_tokens: it costs its worst case
    params = [_params(f"slot {i}", max_tokens=2000) for i in range(10)]
    worst = Budget(1.0).worst_case(params[0])
    budget = Budget(3.5 * worst)
    outcomes = _race(client_env, params, budget)
    done = [o for o in outcomes if isinstance(o, claude_client.ClaudeResponse)]
    refused = [o for o in outcomes if isinstance(o, ClaudeInvocationError)]
    assert all(r.usage.output_tokens == 2000 for r in done)
    assert len(done) == 3 and len(refused) == 7, outcomes
    assert all(e.kind == "budget" and "already spent" in str(e) for e in refused)
    assert client_env.stats()["messages"] == 3  # the refused ones never started
    assert budget.reserved == 0 and budget.waiting == 0
    assert budget.spent == pytest.approx(sum(r.cost_usd for r in done))
    assert budget.spent <= budget.max_cost_usd


def test_many_small_requests_under_a_tight_cap_all_finish(client_env: Emulator) -> None:
    """Issue 18's case: the cap is far above what the run really costs, but only two worst cases
    fit at once; at max_workers=5 every slot waits its turn instead of failing."""
    client_env.configure(ttft_ms=100, reply_words=5)
    prompts = [{"prompt": f"tiny question {i}"} for i in range(20)]
    measured = claude_client.invoke_parallel(prompts, max_tokens=50, max_workers=5)
    real = measured.cost_usd
    assert real is not None and real > 0 and not measured.errors
    cap = 30 * real
    per_request = real / 20
    # max_tokens so that a worst case is ~40% of the cap: two fit at once, five do not
    max_tokens = int((0.4 * cap - 20 * per_request) / (PRICING.output / 1e6))
    worst = Budget(1.0).worst_case(_params("tiny question 10", max_tokens=max_tokens))
    assert 2 * worst <= cap < 5 * worst
    client_env.reset()
    client_env.configure(ttft_ms=100, reply_words=5)
    results = claude_client.invoke_parallel(prompts, max_tokens=max_tokens, max_workers=5, max_cost_usd=cap)
    assert results.errors == {}, {i: str(e) for i, e in results.errors.items()}
    assert all(isinstance(r, claude_client.ClaudeResponse) for r in results)
    assert results.cost_usd == pytest.approx(real, rel=0.05) and results.cost_usd <= cap
    assert client_env.stats()["peak_concurrency"] <= 2


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


@pytest.mark.parametrize("model", list(CATALOGUE))
def test_a_spend_cap_runs_on_every_catalogued_model(client_env: Emulator, model: str) -> None:
    prompts = [{"prompt": f"hello {i}"} for i in range(3)]
    worst = Budget(1.0).worst_case({"model": model, "max_tokens": 64,
                                    "messages": [{"role": "user", "content": "hello 0"}]})
    cap = 2.5 * worst  # two at a time: the third waits for room
    results = claude_client.invoke_parallel(prompts, model=model, max_tokens=64, max_cost_usd=cap, max_workers=3,
                                            return_exceptions=True)
    assert results.errors == {}, {i: str(e) for i, e in results.errors.items()}
    assert results.cost_usd is not None and 0 < results.cost_usd <= cap
    assert {r.model for r in client_env.message_requests()} == {model}


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


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except ClaudeInvocationError as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_settle_rules_and_child_budgets() -> None:
    parent = Budget(1.0)
    child = parent.child(0.7)
    r = child.reserve(_params("x", max_tokens=1000))
    assert child.reserved == pytest.approx(r.cost_usd) and parent.reserved == pytest.approx(r.cost_usd)
    r.settle(None)  # unknown: the worst case counts as spent
    r.settle(0.0)  # a second settle does nothing
    assert child.spent == pytest.approx(r.cost_usd) and parent.spent == pytest.approx(r.cost_usd)
    assert child.reserved == 0 and parent.reserved == 0
    big = _params("x", max_tokens=40_000)  # 40k output tokens at $10/M: $0.40
    assert Budget(1.0).worst_case(big) == pytest.approx(0.40, rel=0.01)
    first = child.reserve(big)
    with pytest.raises(ClaudeInvocationError) as info:  # it would wait for its own thread's reservation
        child.reserve(big)
    assert info.value.kind == "budget" and "this thread holds" in str(info.value)
    thread, out = _in_thread(lambda: child.reserve(big))  # another thread waits for room
    assert _until(lambda: child.waiting == 1) and not out
    first.settle(0.0)
    thread.join(10)
    assert len(out) == 1 and out[0].cost_usd == pytest.approx(first.cost_usd)
    out[0].settle(None)  # child: spent $0.40 and a little
    with pytest.raises(ClaudeInvocationError) as info:  # the child's cap binds: spent + worst case > $0.70
        child.reserve(big)
    assert info.value.kind == "budget" and child.waiting == 0
    other = parent.child()
    other.reserve(big).settle(None)  # parent: spent $0.80 and a little
    with pytest.raises(ClaudeInvocationError) as info:  # the parent's cap binds across children
        other.reserve(big)
    assert "parent" in str(info.value)
    assert other.reserved == 0 and parent.reserved == 0 and parent.spent <= parent.max_cost_usd


def test_a_wait_for_room_ends_at_once_on_interrupt() -> None:
    budget = Budget(1.0)
    big = _params("x", max_tokens=60_000)  # $0.60: one at a time
    held = budget.reserve(big)
    token = InterruptToken()
    thread, out = _in_thread(lambda: budget.reserve(big, interrupt=token))
    assert _until(lambda: budget.waiting == 1)
    started = time.monotonic()
    token.interrupt()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 2
    assert isinstance(out[0], ClaudeInvocationError) and out[0].kind == "interrupted"
    assert budget.waiting == 0 and budget.reserved == pytest.approx(held.cost_usd)  # nothing left behind
    held.settle(0.0)
    budget.reserve(big, interrupt=InterruptToken()).settle(0.0)  # room again
    assert budget.reserved == 0


def test_waiters_get_room_first_come_first_served() -> None:
    budget = Budget(1.0)
    big = _params("x", max_tokens=60_000)
    held = budget.reserve(big)
    order: list[int] = []
    threads = []
    for i in range(3):
        def take(i: int = i) -> Any:
            reservation = budget.reserve(big)
            order.append(i)
            reservation.settle(0.0)
            return reservation
        thread, _out = _in_thread(take)
        threads.append(thread)
        assert _until(lambda n=i + 1: budget.waiting == n)  # queued in this order
    held.settle(0.0)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2]


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
    assert estimate.input_tokens == 133  # ceil(400 / 4 * 1.3) + 3 on the default model's tokenizer
    assert math.isclose(estimate.high_usd, (math.ceil(133 * 4 / 3) * PRICING.input + 10 * PRICING.output) / 1e6)
    with pytest.raises(TypeError):
        estimate_run_cost("not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        estimate_run_cost([{"prompt": "x"}], max_tokens=0)


def test_estimate_checks_everything_before_it_sends(client_env: Emulator) -> None:
    with pytest.raises(TypeError, match="client"):
        estimate_run_cost([{"prompt": "x"}], client="x")
    prompts = [{"prompt": "a"}, {"prompt": "b", "model": "claude-unpriced-test-model-3"}]
    with pytest.raises(ValueError, match="claude-unpriced-test-model-3.*PRICES"):
        estimate_run_cost(prompts)
    with pytest.raises(ValueError, match="claude-unpriced-test-model-3.*PRICES"):
        estimate_run_cost([{"prompt": "a"}], model="claude-unpriced-test-model-3")
    assert client_env.requests == []  # not even a count_tokens request


def test_a_cap_of_the_estimates_high_lets_the_whole_run_start(client_env) -> None:
    import claude_client as cc

    prompts = [{"prompt": f"question {i} " + "context " * 200} for i in range(3)]
    est = cc.estimate_run_cost(prompts, max_tokens=100)
    results = cc.invoke_parallel(prompts, max_tokens=100, max_cost_usd=est.high_usd, max_workers=1)
    assert results.errors == {} and est.low_usd <= results.cost_usd <= est.high_usd
