"""Prices, cost and sizing from the model catalogue (scripts/_models.py, scripts/_results.py,
scripts/_estimate.py): every model the installed SDK names is catalogued and priced, and the cost
rules (cache prices per model, Haiku 5.5's tier, batch, US inference) hold."""
from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Iterator

import anthropic
import pytest
from anthropic.types.model_param import ModelParam

import claude_client
from _errors import ClaudeInvocationError
from _estimate import estimate_request, min_cacheable_tokens, tokenizer_factor
from _models import CATALOGUE, US_GEO_FACTOR, Pricing, catalogue_prices
from _results import PRICES, ClaudeResponse, Usage, estimate_cost, totals

M = 1_000_000


def _sdk_model_ids() -> list[str]:
    literal = next(arg for arg in typing.get_args(ModelParam) if typing.get_origin(arg) is typing.Literal)
    return list(typing.get_args(literal))


SDK_IDS = _sdk_model_ids()


@pytest.fixture
def prices() -> Iterator[dict]:
    """PRICES as the user edits it (the public dict), restored afterwards."""
    saved = dict(PRICES)
    yield PRICES
    PRICES.clear()
    PRICES.update(saved)


# ------------------------------------------------------------------------------ the catalogue covers the SDK
def test_the_sdk_names_no_model_the_catalogue_lacks() -> None:
    assert len(SDK_IDS) >= 20 and "claude-sonnet-5-5" in SDK_IDS
    missing = [m for m in SDK_IDS if m not in CATALOGUE]
    assert not missing, f"the installed SDK names models the catalogue lacks: {missing}"


@pytest.mark.parametrize("model", SDK_IDS)
def test_every_sdk_model_has_a_price(model: str) -> None:
    cost = estimate_cost(Usage(input_tokens=1000, output_tokens=1000), model)  # below any long-prompt tier
    pricing = CATALOGUE[model].pricing
    assert pricing is not None and cost == pytest.approx((pricing.input + pricing.output) * 1000 / M)
    assert claude_client.PRICES[model] == (pricing.input, pricing.output)


def test_done_when_figures() -> None:
    usage = Usage(input_tokens=M, output_tokens=M)
    assert estimate_cost(usage, "claude-sonnet-5-5") == pytest.approx(12.0)
    assert estimate_cost(usage, "claude-opus-4-8") == pytest.approx(30.0)
    assert estimate_cost(usage, claude_client.DEFAULT_MODEL) == pytest.approx(12.0)


def test_prices_are_seeded_from_the_catalogue_and_keep_retired_prefixes() -> None:
    assert catalogue_prices().items() <= PRICES.items()
    usage = Usage(input_tokens=M, output_tokens=M)
    # The old Opus 4 / 4.1 price no longer catches the newer Opus 4.x ids...
    newer = ("claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-4-7-20260416")
    for model in newer:
        assert estimate_cost(usage, model) == pytest.approx(30.0), model
    # ... and still prices the retired ones, like the other retired prefixes.
    assert estimate_cost(usage, "claude-opus-4-1-20250805") == pytest.approx(90.0)
    assert estimate_cost(usage, "claude-sonnet-4-5-20250929") == pytest.approx(18.0)
    assert estimate_cost(usage, "claude-3-5-haiku-20241022") == pytest.approx(4.8)
    assert estimate_cost(usage, "claude-3-haiku-20240307") == pytest.approx(1.5)


# ------------------------------------------------------------------------------ the cost rules
@pytest.mark.parametrize("model", list(CATALOGUE))
def test_cache_prices_are_each_models_own(model: str) -> None:
    pricing = CATALOGUE[model].pricing
    assert pricing is not None
    reads = Usage(cache_read_input_tokens=M)
    writes_5m = Usage(cache_creation_input_tokens=M)
    writes_1h = Usage(cache_creation_input_tokens=M, cache_creation_1h_input_tokens=M)
    if pricing.tier_above is not None:  # a million of prompt is above the tier: the tier's prices
        pricing = pricing.tier  # type: ignore[assignment]
        assert pricing is not None
    assert estimate_cost(reads, model) == pytest.approx(pricing.cache_read)
    assert estimate_cost(writes_5m, model) == pytest.approx(pricing.cache_write_5m)
    assert estimate_cost(writes_1h, model) == pytest.approx(pricing.cache_write_1h)


def test_cache_reads_differ_by_model() -> None:
    reads = Usage(cache_read_input_tokens=M)
    assert estimate_cost(reads, "claude-sonnet-5-5") == pytest.approx(0.10)  # 0.05x its input price
    assert estimate_cost(reads, "claude-fable-5-1") == pytest.approx(0.25)  # 0.025x
    assert estimate_cost(reads, "claude-sonnet-4-6") == pytest.approx(0.30)  # the default 0.1x


def test_haiku_5_5_bills_a_long_prompt_whole_at_its_higher_tier() -> None:
    model = "claude-haiku-5-5"
    at_tier = Usage(input_tokens=60_000, cache_read_input_tokens=40_000, output_tokens=10_000)
    above = Usage(input_tokens=60_001, cache_read_input_tokens=40_000, output_tokens=10_000)
    assert estimate_cost(at_tier, model) == pytest.approx((60_000 * 0.10 + 40_000 * 0.01 + 10_000 * 0.50) / M)
    # one token more: input, cache reads and output all at the higher tier
    assert estimate_cost(above, model) == pytest.approx((60_001 * 0.50 + 40_000 * 0.05 + 10_000 * 2.50) / M)
    writes = Usage(input_tokens=1, cache_creation_input_tokens=100_000)  # cache writes count toward the tier
    assert estimate_cost(writes, model) == pytest.approx((1 * 0.50 + 100_000 * 0.625) / M)


def test_batch_halves_every_price() -> None:
    usage = Usage(input_tokens=M, output_tokens=M, cache_read_input_tokens=M, cache_creation_input_tokens=M)
    for model in ("claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-4-8", "claude-3-haiku"):
        standard = estimate_cost(usage, model)
        assert standard is not None and standard > 0
        assert estimate_cost(usage, model, batch=True) == pytest.approx(standard / 2)
        assert estimate_cost(dataclasses.replace(usage, service_tier="batch"), model) == pytest.approx(standard / 2)


def test_us_inference_bills_1_1x_where_the_model_takes_inference_geo() -> None:
    usage = Usage(input_tokens=M, output_tokens=M, cache_read_input_tokens=M)
    us = dataclasses.replace(usage, inference_geo="us")
    world = dataclasses.replace(usage, inference_geo="global")
    for model in ("claude-sonnet-5-5", "claude-opus-4-6", "claude-haiku-5-5"):
        assert CATALOGUE[model].inference_geo
        assert estimate_cost(us, model) == pytest.approx(estimate_cost(usage, model) * US_GEO_FACTOR)
        assert estimate_cost(world, model) == pytest.approx(estimate_cost(usage, model))
    for model in ("claude-haiku-4-5", "claude-opus-4-5"):  # no inference_geo on these: no surcharge
        assert not CATALOGUE[model].inference_geo
        assert estimate_cost(us, model) == pytest.approx(estimate_cost(usage, model))
    assert estimate_cost(us, "claude-sonnet-5-5", batch=True) == pytest.approx(
        estimate_cost(usage, "claude-sonnet-5-5") * 0.5 * US_GEO_FACTOR
    )


def test_a_price_override_bills_with_the_default_multipliers(prices: dict) -> None:
    usage = Usage(input_tokens=M, output_tokens=M, cache_read_input_tokens=M, cache_creation_input_tokens=M)
    catalogued = estimate_cost(usage, "claude-sonnet-5-5")
    assert catalogued == pytest.approx(2.0 + 10.0 + 0.10 + 2.50)
    prices["claude-sonnet-5-5"] = (3.0, 15.0)
    assert estimate_cost(usage, "claude-sonnet-5-5") == pytest.approx(3.0 + 15.0 + 0.30 + 3.75)
    prices["claude-sonnet-5-5"] = (2.0, 10.0)  # the catalogue's figure again: its full prices again
    assert estimate_cost(usage, "claude-sonnet-5-5") == pytest.approx(catalogued)
    prices["claude-future-9"] = (1.0, 2.0)  # a new id prices like any override
    assert estimate_cost(usage, "claude-future-9-20270101") == pytest.approx(1.0 + 2.0 + 0.10 + 1.25)
    del prices["claude-haiku-5-5"]  # no entry of its own: nothing else prices it
    assert estimate_cost(usage, "claude-haiku-5-5") is None


def test_pricing_from_rates_is_the_override_rule() -> None:
    assert Pricing.from_rates(4.0, 20.0) == Pricing(4.0, 20.0, 5.0, 8.0, 0.4)


def test_an_unknown_model_warns_once_and_has_no_cost(caplog: pytest.LogCaptureFixture) -> None:
    model = "claude-unpriced-test-model-1"
    with caplog.at_level(logging.WARNING, logger="claude_client._results"):
        assert estimate_cost(Usage(1, 1), model) is None
        assert estimate_cost(Usage(5, 5), model) is None
    warnings = [r for r in caplog.records if model in r.getMessage()]
    assert len(warnings) == 1 and "PRICES" in warnings[0].getMessage()
    with pytest.raises(TypeError, match="usage"):
        estimate_cost({"input_tokens": 1}, "claude-sonnet-5-5")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ Usage
def test_usage_keeps_positional_construction_and_adds_thinking_and_geo() -> None:
    old = Usage(10, 20, 3, 4, 1, "standard")
    assert (old.input_tokens, old.output_tokens, old.cache_creation_1h_input_tokens, old.service_tier) == (
        10, 20, 1, "standard")
    assert old.thinking_tokens == 0 and old.inference_geo is None
    a = Usage(1, 10, thinking_tokens=4, inference_geo="us")
    b = Usage(2, 20, thinking_tokens=6, inference_geo="us")
    total = a + b
    assert (total.input_tokens, total.output_tokens, total.thinking_tokens, total.inference_geo) == (3, 30, 10, "us")
    assert (a + Usage(inference_geo="global")).inference_geo == "mixed"
    assert sum([a, b]) == total
    assert [f.name for f in dataclasses.fields(Usage)][-2:] == ["thinking_tokens", "inference_geo"]


def test_usage_reads_thinking_tokens_from_the_sdk_and_from_saved_dicts() -> None:
    sdk = anthropic.types.Usage.model_validate({
        "input_tokens": 12, "output_tokens": 30, "cache_read_input_tokens": 5, "inference_geo": "us",
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2},
        "cache_creation_input_tokens": 2, "output_tokens_details": {"thinking_tokens": 8},
    })
    usage = Usage.from_sdk(sdk)
    assert (usage.output_tokens, usage.thinking_tokens, usage.inference_geo) == (30, 8, "us")
    assert usage.cache_creation_1h_input_tokens == 2
    assert Usage.from_sdk(sdk.model_dump()) == usage  # the API's dict shape (message batches)
    assert Usage.from_sdk(dataclasses.asdict(usage)) == usage  # a saved Usage (journals)
    assert Usage(**dataclasses.asdict(usage)) == usage
    old_journal = {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "cache_creation_1h_input_tokens": 0, "service_tier": None}
    assert Usage(**old_journal) == Usage(1, 2)  # journals written before the new fields still load
    assert Usage.from_sdk(old_journal) == Usage(1, 2)
    assert Usage.from_sdk(None) == Usage()


# ------------------------------------------------------------------------------ totals
def _reply(usage: Usage, cost: float | None) -> ClaudeResponse:
    return ClaudeResponse("ok", usage=usage, cost_usd=cost, model="claude-sonnet-5-5")


def test_totals_count_what_failures_paid_once() -> None:
    ok = _reply(Usage(10, 5), 0.25)
    refused = ClaudeInvocationError("declined", kind="refusal")
    refused.usage = Usage(7, 0)  # type: ignore[attr-defined]
    refused.cost_usd = 0.5  # type: ignore[attr-defined]
    invalid = ClaudeInvocationError("twice invalid", details={"usage": Usage(3, 3), "cost_usd": 0.125},
                                    kind="invalid_output")
    nothing = ClaudeInvocationError("never sent", kind="budget")
    results = [ok, refused, None, invalid]  # return_exceptions: errors also in their slots
    errors = {1: refused, 3: invalid, 4: nothing}
    usage, cost = totals(results, errors=errors.values())
    assert usage == Usage(20, 8)
    assert cost == pytest.approx(0.875)
    assert totals([ok, None]) == (Usage(10, 5), 0.25)  # replies only, as before
    assert totals([ok], errors=[refused]) == totals([ok, refused])
    unpriced = ClaudeInvocationError("tool loop failed", kind="server")
    unpriced.usage = Usage(1, 1)  # type: ignore[attr-defined]
    assert totals([ok], errors=[unpriced])[1] is None  # paid something of unknown price
    free = ClaudeInvocationError("failed first", kind="server")
    free.usage = Usage()  # type: ignore[attr-defined]
    assert totals([ok], errors=[free])[1] == pytest.approx(0.25)


# ------------------------------------------------------------------------------ sizing
def test_the_local_rule_scales_by_the_models_tokenizer() -> None:
    def body(model: str) -> dict:
        return {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 4000}]}

    assert estimate_request(body("claude-sonnet-4-6")).total == 1000 + 3
    assert estimate_request(body("claude-sonnet-5-5")).total == 1300 + 3
    assert estimate_request(body("claude-opus-4-7")).total == 1300 + 3
    assert estimate_request(body("claude-3-5-haiku-20241022")).total == 1000 + 3  # retired: the old tokenizer
    for model, info in CATALOGUE.items():
        assert tokenizer_factor(model) == info.tokenizer_factor


def test_minimum_cacheable_prefix_comes_from_the_catalogue() -> None:
    for model, info in CATALOGUE.items():
        assert min_cacheable_tokens(model) == info.min_cache_tokens, model
    assert min_cacheable_tokens("claude-sonnet-5-5") == 512
    assert min_cacheable_tokens("claude-opus-4-7") == 2048
    assert min_cacheable_tokens("claude-3-haiku-20240307") == 2048
    assert min_cacheable_tokens("claude-unknown-test-model-2") == 4096  # cautious: never counts on a cache
