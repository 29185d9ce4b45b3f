"""Cost of real replies and runs through the real SDK over HTTP against the emulator: thinking
tokens in the usage, catalogue prices, and what failed slots paid counted in a run's totals."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

import claude_client
from _admission import reset_controllers
from _models import CATALOGUE
from _results import Usage, estimate_cost
from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(120)

MODEL = claude_client.DEFAULT_MODEL


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    reset_controllers()
    yield
    reset_controllers()


def _expected(reply: Any) -> float:
    cost = estimate_cost(reply.usage, reply.model)
    assert cost is not None
    return cost


def test_a_reply_counts_its_thinking_tokens_and_is_priced_from_the_catalogue(client_env: Emulator) -> None:
    reply = claude_client.invoke_claude("What is two and two?", max_tokens=200)
    usage = reply.usage
    assert CATALOGUE[MODEL].thinking_default == "adaptive"
    assert 0 < usage.thinking_tokens < usage.output_tokens  # thinking is part of the billed output
    pricing = CATALOGUE[MODEL].pricing
    assert pricing is not None
    assert reply.cost_usd == pytest.approx((usage.input_tokens * pricing.input + usage.output_tokens * pricing.output)
                                           / 1e6)
    streamed = claude_client.invoke_claude_streaming("What is two and two?", max_tokens=200)
    assert streamed.usage.thinking_tokens == usage.thinking_tokens  # the stream's usage carries it too
    assert streamed.cost_usd == pytest.approx(reply.cost_usd)


def test_a_model_without_default_thinking_reports_none(client_env: Emulator) -> None:
    model = "claude-sonnet-4-6"
    assert CATALOGUE[model].thinking_default is None
    reply = claude_client.invoke_claude("hello", model=model, max_tokens=100)
    assert reply.usage.thinking_tokens == 0 and reply.usage.output_tokens > 0
    assert reply.cost_usd == pytest.approx(_expected(reply))


def test_a_parallel_run_counts_what_its_failed_slots_paid(client_env: Emulator) -> None:
    prompts = [{"prompt": "first question"}, {"prompt": "[[refuse]] decline this"},
               {"prompt": "[[think=500]] think a lot"}, {"prompt": "last question"}]
    results = claude_client.invoke_parallel(prompts, max_tokens=100, max_workers=2, return_exceptions=True)
    assert sorted(results.errors) == [1, 2]
    refused, thought_out = results.errors[1], results.errors[2]
    assert getattr(refused, "kind", None) == "refusal" and getattr(thought_out, "kind", None) == "max_tokens"
    assert refused.usage.input_tokens > 0  # type: ignore[attr-defined]
    assert thought_out.usage.output_tokens == 100  # type: ignore[attr-defined]  # all of max_tokens, thinking
    replies = [results[0], results[3]]
    paid = [r.usage for r in replies] + [refused.usage, thought_out.usage]  # type: ignore[attr-defined]
    assert results.usage == sum(paid, Usage())  # each once, the failed slots included
    expected = sum(_expected(r) for r in replies) + refused.cost_usd + thought_out.cost_usd  # type: ignore[attr-defined]
    assert results.cost_usd == pytest.approx(expected)
    billed = _response_usages(client_env)
    assert len(billed) == 4
    # what the emulator billed, no more, no less
    assert results.usage.output_tokens == sum(u.get("output_tokens", 0) for u in billed)


def test_a_managed_run_counts_what_its_failed_slots_paid(client_env: Emulator) -> None:
    from orchestration import invoke_parallel_managed

    prompts = [{"prompt": "first question"}, {"prompt": "[[refuse]] decline this"}]
    results = invoke_parallel_managed(prompts, max_tokens=100, max_workers=2, return_exceptions=True)
    assert list(results.errors) == [1]
    refused = results.errors[1]
    assert getattr(refused, "kind", None) == "refusal"
    assert results.usage == results[0].usage + refused.usage  # type: ignore[attr-defined]
    assert results.cost_usd == pytest.approx(_expected(results[0]) + refused.cost_usd)  # type: ignore[attr-defined]


def test_a_journal_keeps_thinking_tokens_across_a_resume(client_env: Emulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.jsonl"
    prompts = [{"prompt": f"question {i}"} for i in range(3)]
    first = claude_client.invoke_parallel(prompts, max_tokens=100, journal=str(journal))
    assert first.usage.thinking_tokens > 0
    sent = client_env.stats()["messages"]
    again = claude_client.invoke_parallel(prompts, max_tokens=100, journal=str(journal))
    assert client_env.stats()["messages"] == sent  # every slot came from the journal
    assert again.usage == first.usage and again.cost_usd == pytest.approx(first.cost_usd)
    # a journal line written before Usage had thinking_tokens / inference_geo still loads
    lines = journal.read_text(encoding="utf-8").splitlines()
    old_lines = []
    for line in lines:
        record = json.loads(line)
        if isinstance(record.get("usage"), dict):
            new_fields = ("thinking_tokens", "inference_geo")
            record["usage"] = {k: v for k, v in record["usage"].items() if k not in new_fields}
        old_lines.append(json.dumps(record))
    journal.write_text("\n".join(old_lines) + "\n", encoding="utf-8")
    old = claude_client.invoke_parallel(prompts, max_tokens=100, journal=str(journal))
    assert client_env.stats()["messages"] == sent
    assert old.usage == dataclasses.replace(first.usage, thinking_tokens=0, inference_geo=None)


def _response_usages(emulator: Emulator) -> list[dict]:
    """The usage the emulator billed for each /v1/messages reply it sent (from its records)."""
    return [r.usage for r in emulator.message_requests() if r.usage is not None]
