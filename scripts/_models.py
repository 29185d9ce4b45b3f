"""The model catalogue: the one place that knows models (bundled; no I/O).

For every model id the installed SDK names (its ``ModelParam`` literal, dated snapshots
included) the catalogue records its lifecycle, limits, prices, tokenizer, minimum cacheable
prefix, thinking and effort rules, the request features it refuses, and its rate-limit pool. The
request builder, cost, estimates, admission, the cache pilot and the emulator all read it.

Facts come from the API's documentation as of API version 2026-10-21; where the documentation
says nothing, the entry says so in :attr:`ModelInfo.notes` and takes the cautious value (a rule
the library is not sure the API enforces is not enforced: the server decides).

>>> info = model_info("claude-sonnet-5-5")
>>> info.max_output, info.pool, info.default_effort, info.thinking_default
(128000, 'sonnet-5-5', 'high', 'adaptive')
>>> round(info.pricing.cost(input_tokens=1_000_000, output_tokens=1_000_000), 2)
12.0
>>> model_info("claude-opus-4-7").pool == model_info("claude-opus-4-5").pool
True
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger("claude_client._models")

#: Effort levels in rising order (``output_config.effort``).
EFFORT_LEVELS: tuple[str, ...] = ("low", "medium", "high", "xhigh", "max")
#: Every ``thinking.type`` the API knows.
THINKING_TYPES: tuple[str, ...] = ("adaptive", "enabled", "disabled", "between_tools")
#: How many tokens the new tokenizer (Opus 4.7 and later, every 5.x model) counts for the text
#: the old one counts as 1 (the documentation: "about 30% more").
TOKENIZER_FACTORS: dict[str, float] = {"old": 1.0, "new": 1.3}
#: The price multiplier of ``inference_geo: "us"`` (Claude 4.6 and later).
US_GEO_FACTOR = 1.1
#: The batch discount (input and output, every tier).
BATCH_FACTOR = 0.5


@dataclass(frozen=True)
class Pricing:
    """USD per million tokens of one model, with its long-context tier when it has one.

    ``tier_above`` / ``tier``: a request whose prompt (input + cache writes + cache reads) is
    above ``tier_above`` tokens is billed whole, output included, at ``tier``'s prices.

    >>> Pricing(1.0, 5.0, 1.25, 2.0, 0.1).cost(input_tokens=2_000_000)
    2.0
    """

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    tier_above: Optional[int] = None
    tier: Optional[Pricing] = None

    @classmethod
    def from_rates(cls, input: float, output: float) -> Pricing:
        """The default cache multipliers: 5-minute write 1.25x, 1-hour write 2x, read 0.1x."""
        return cls(input, output, input * 1.25, input * 2.0, input * 0.1)

    def for_prompt(self, prompt_tokens: int) -> Pricing:
        """The prices that apply to a request with ``prompt_tokens`` of prompt."""
        if self.tier is not None and self.tier_above is not None and prompt_tokens > self.tier_above:
            return self.tier
        return self

    def cost(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        cache_read_tokens: int = 0,
        batch: bool = False,
        us_geo: bool = False,
    ) -> float:
        """USD for one request's token counts (the tier chosen from its prompt size)."""
        prompt = input_tokens + cache_write_5m_tokens + cache_write_1h_tokens + cache_read_tokens
        p = self.for_prompt(prompt)
        usd = (
            input_tokens * p.input
            + output_tokens * p.output
            + cache_write_5m_tokens * p.cache_write_5m
            + cache_write_1h_tokens * p.cache_write_1h
            + cache_read_tokens * p.cache_read
        ) / 1e6
        if batch:
            usd *= BATCH_FACTOR
        if us_geo:
            usd *= US_GEO_FACTOR
        return usd


@dataclass(frozen=True)
class ModelInfo:
    """What the library knows of one model id. Read it with :func:`model_info`."""

    id: str
    display_name: str
    line: str  # haiku | sonnet | opus | fable | mythos
    released: str  # ISO date
    lifecycle: str  # active | legacy | deprecated | retired
    retires: Optional[str]
    context_window: int
    max_output: int
    batch_max_output: int  # with the ``output-300k-2026-03-24`` beta where the model has it
    pricing: Optional[Pricing]
    tokenizer: str  # old | new
    min_cache_tokens: int
    #: ``"adaptive"`` when thinking is on without a ``thinking`` field, None when it is off.
    thinking_default: Optional[str]
    #: The ``thinking.type`` values the model accepts.
    thinking_types: frozenset[str]
    #: Thinking types accepted only up to some effort (``{"disabled": "high"}``: not at xhigh/max).
    thinking_max_effort: dict[str, str] = field(default_factory=dict)
    #: Accepted effort levels (empty: the model has no effort parameter) and the default one.
    efforts: tuple[str, ...] = ()
    default_effort: Optional[str] = None
    rejects_prefill: bool = False
    rejects_forced_tool_choice: bool = False
    #: ``inference_geo`` is accepted (4.6 and later); ``"us"`` bills 1.1x.
    inference_geo: bool = True
    #: The rate-limit pool: models of one pool share their RPM / ITPM / OTPM limits.
    pool: str = ""
    #: The id this one is a dated snapshot of (same model, same rules).
    alias_of: Optional[str] = None
    #: The price is not published; the catalogue's figure is a cautious stand-in.
    price_estimated: bool = False
    known: bool = True
    notes: str = ""
    #: When the model was deprecated (ISO date), for deprecated models.
    deprecated: Optional[str] = None

    @property
    def tokenizer_factor(self) -> float:
        """Tokens per old-tokenizer token for the same text (1.3 on the new tokenizer)."""
        return TOKENIZER_FACTORS[self.tokenizer]

    @property
    def api_lifecycle(self) -> str:
        """The Models API's lifecycle value (``legacy`` models are still ``active`` there)."""
        return "active" if self.lifecycle == "legacy" else self.lifecycle

    def accepts_thinking(self, kind: str, effort: Optional[str] = None) -> bool:
        """Whether ``thinking.type == kind`` is accepted at ``effort`` (None: the default)."""
        if kind not in self.thinking_types:
            return False
        cap = self.thinking_max_effort.get(kind)
        level = effort or self.default_effort
        if cap is None or level is None or level not in EFFORT_LEVELS:
            return True
        return EFFORT_LEVELS.index(level) <= EFFORT_LEVELS.index(cap)


_P = Pricing
_OPUS_4 = _P(5.0, 25.0, 6.25, 10.0, 0.50)
_SONNET_5 = _P(2.0, 10.0, 2.50, 4.0, 0.20)
_FABLE_5_1 = _P(10.0, 50.0, 12.50, 20.0, 0.25)
_FABLE_5 = _P(10.0, 50.0, 12.50, 20.0, 1.00)
_HAIKU_5_5 = _P(0.10, 0.50, 0.125, 0.20, 0.01, tier_above=100_000, tier=_P(0.50, 2.50, 0.625, 1.00, 0.05))

_ALWAYS_ADAPTIVE = frozenset({"adaptive"})
_ADAPTIVE_DISABLED = frozenset({"adaptive", "disabled"})
_FIVE_EFFORTS = EFFORT_LEVELS
_FOUR_EFFORTS = ("low", "medium", "high", "max")


def _five(
    id: str,
    name: str,
    line: str,
    released: str,
    pricing: Pricing,
    pool: str,
    *,
    lifecycle: str = "active",
    retires: Optional[str] = None,
    thinking_types: frozenset[str] = _ALWAYS_ADAPTIVE,
    thinking_max_effort: Optional[dict[str, str]] = None,
    default_effort: str = "high",
    forced_tool: bool = False,
    batch_300k: bool = True,
    min_cache: int = 512,
    notes: str = "",
) -> ModelInfo:
    """A 5.x model: new tokenizer, 1M context, 128K output, thinking on, five efforts, no prefill."""
    return ModelInfo(
        id=id,
        display_name=name,
        line=line,
        released=released,
        lifecycle=lifecycle,
        retires=retires,
        context_window=1_000_000,
        max_output=128_000,
        batch_max_output=300_000 if batch_300k else 128_000,
        pricing=pricing,
        tokenizer="new",
        min_cache_tokens=min_cache,
        thinking_default="adaptive",
        thinking_types=thinking_types,
        thinking_max_effort=thinking_max_effort or {},
        efforts=_FIVE_EFFORTS,
        default_effort=default_effort,
        rejects_prefill=True,
        rejects_forced_tool_choice=forced_tool,
        pool=pool,
        notes=notes,
    )


_UNSOURCED_5_2 = "1-hour cache write, minimum cacheable prefix and pool are not published: taken from the 5.x line"

_ENTRIES: tuple[ModelInfo, ...] = (
    _five(
        "claude-fable-5-2",
        "Claude Fable 5.2",
        "fable",
        "2026-11-09",
        _P(8.0, 40.0, 10.0, 16.0, 0.20),
        "fable-5",
        forced_tool=True,
        batch_300k=False,
        notes=_UNSOURCED_5_2,
    ),
    _five(
        "claude-mythos-5-2",
        "Claude Mythos 5.2",
        "mythos",
        "2026-11-09",
        _P(8.0, 40.0, 10.0, 16.0, 0.20),
        "mythos-5",
        forced_tool=True,
        batch_300k=False,
        notes=_UNSOURCED_5_2,
    ),
    _five(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        "haiku",
        "2026-10-07",
        _HAIKU_5_5,
        "haiku-5-5",
        retires="2027-10-07",
        thinking_types=_ADAPTIVE_DISABLED,
        thinking_max_effort={"disabled": "high"},
        default_effort="medium",
    ),
    _five(
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        "sonnet",
        "2026-09-28",
        _P(2.0, 10.0, 2.50, 4.0, 0.10),
        "sonnet-5-5",
        retires="2027-09-28",
        thinking_types=frozenset({"adaptive", "between_tools"}),
        thinking_max_effort={"between_tools": "high"},
        forced_tool=True,
    ),
    _five(
        "claude-fable-5-1",
        "Claude Fable 5.1",
        "fable",
        "2026-09-01",
        _FABLE_5_1,
        "fable-5",
        retires="2027-09-01",
        forced_tool=True,
        batch_300k=False,
    ),
    _five(
        "claude-opus-5-5",
        "Claude Opus 5.5",
        "opus",
        "2026-09-22",
        _P(4.0, 20.0, 5.0, 8.0, 0.20),
        "opus-5-5",
        retires="2027-09-22",
        default_effort="medium",
        forced_tool=True,
    ),
    _five(
        "claude-mythos-5-1",
        "Claude Mythos 5.1",
        "mythos",
        "2026-09-01",
        _FABLE_5_1,
        "mythos-5",
        retires="2027-09-01",
        forced_tool=True,
        batch_300k=False,
    ),
    _five(
        "claude-sonnet-5",
        "Claude Sonnet 5",
        "sonnet",
        "2026-06-30",
        _SONNET_5,
        "sonnet-5",
        lifecycle="legacy",
        retires="2027-06-30",
        thinking_types=_ADAPTIVE_DISABLED,
        min_cache=1024,
    ),
    _five(
        "claude-fable-5",
        "Claude Fable 5",
        "fable",
        "2026-06-09",
        _FABLE_5,
        "fable-5",
        lifecycle="legacy",
        retires="2027-06-09",
        batch_300k=False,
    ),
    _five(
        "claude-mythos-5",
        "Claude Mythos 5",
        "mythos",
        "2026-06-09",
        _FABLE_5,
        "mythos-5",
        lifecycle="legacy",
        retires="2027-06-09",
        batch_300k=False,
    ),
    _five(
        "claude-opus-5",
        "Claude Opus 5",
        "opus",
        "2026-07-24",
        _P(5.0, 25.0, 6.25, 10.0, 0.50),
        "opus-5",
        lifecycle="legacy",
        retires="2027-07-24",
        thinking_types=_ADAPTIVE_DISABLED,
        thinking_max_effort={"disabled": "high"},
    ),
    ModelInfo(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        "opus",
        "2026-05-28",
        "legacy",
        "2027-05-28",
        1_000_000,
        128_000,
        300_000,
        _OPUS_4,
        "new",
        1024,
        None,
        _ADAPTIVE_DISABLED,
        efforts=_FIVE_EFFORTS,
        default_effort="high",
        rejects_prefill=True,
        pool="opus-4",
    ),
    ModelInfo(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        "opus",
        "2026-04-16",
        "active",
        "2027-04-16",
        1_000_000,
        128_000,
        300_000,
        _OPUS_4,
        "new",
        2048,
        None,
        _ADAPTIVE_DISABLED,
        efforts=_FIVE_EFFORTS,
        default_effort="high",
        rejects_prefill=True,
        pool="opus-4",
        notes="lifecycle after 2026-09-26 is not published",
    ),
    ModelInfo(
        "claude-mythos-preview",
        "Claude Mythos Preview",
        "mythos",
        "",
        "deprecated",
        "2026-06-30",
        1_000_000,
        128_000,
        128_000,
        _FABLE_5,
        "new",
        2048,
        "adaptive",
        frozenset({"adaptive", "enabled"}),
        efforts=_FOUR_EFFORTS,
        default_effort="high",
        rejects_prefill=True,
        pool="mythos-preview",
        price_estimated=True,
        deprecated="2026-06-09",
        notes="price not published: priced as the Mythos 5 line; the SDK dates its end of life 2026-06-30",
    ),
    ModelInfo(
        "claude-opus-4-6",
        "Claude Opus 4.6",
        "opus",
        "2026-02-05",
        "active",
        "2027-02-05",
        1_000_000,
        128_000,
        300_000,
        _OPUS_4,
        "old",
        4096,
        None,
        frozenset({"adaptive", "enabled", "disabled"}),
        efforts=_FOUR_EFFORTS,
        default_effort="high",
        rejects_prefill=True,
        pool="opus-4",
    ),
    ModelInfo(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        "sonnet",
        "2026-02-17",
        "active",
        "2027-02-17",
        1_000_000,
        128_000,
        300_000,
        _P(3.0, 15.0, 3.75, 6.0, 0.30),
        "old",
        1024,
        None,
        frozenset({"adaptive", "enabled", "disabled"}),
        efforts=_FOUR_EFFORTS,
        default_effort="high",
        rejects_prefill=True,
        pool="sonnet-4",
    ),
    ModelInfo(
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "haiku",
        "2025-10-15",
        "active",
        None,
        200_000,
        64_000,
        64_000,
        _P(1.0, 5.0, 1.25, 2.0, 0.10),
        "old",
        4096,
        None,
        frozenset({"enabled", "disabled"}),
        inference_geo=False,
        pool="haiku-4-5",
    ),
    ModelInfo(
        "claude-opus-4-5",
        "Claude Opus 4.5",
        "opus",
        "2025-11-24",
        "deprecated",
        "2027-01-22",
        200_000,
        64_000,
        64_000,
        _OPUS_4,
        "old",
        4096,
        None,
        frozenset({"enabled", "disabled"}),
        efforts=("low", "medium", "high"),
        default_effort="high",
        inference_geo=False,
        pool="opus-4",
        deprecated="2026-11-23",
    ),
)

_SNAPSHOTS = {"claude-haiku-4-5-20251001": "claude-haiku-4-5", "claude-opus-4-5-20251101": "claude-opus-4-5"}


def _build() -> dict[str, ModelInfo]:
    from dataclasses import replace

    table: dict[str, ModelInfo] = {}
    for info in _ENTRIES:  # each dated snapshot right after its alias, as the SDK lists them
        table[info.id] = info
        for dated, alias in _SNAPSHOTS.items():
            if alias == info.id:
                table[dated] = replace(info, id=dated, alias_of=alias)
    return table


#: Every catalogued model id -> its :class:`ModelInfo`, in the SDK's order (read-only by convention).
CATALOGUE: dict[str, ModelInfo] = _build()

#: The default model of every call path.
DEFAULT_MODEL = "claude-sonnet-5-5"

#: Which model to pick (SKILL.md repeats this in one line).
MODEL_ADVICE = (
    "claude-sonnet-5-5 (default: $2/$10 per M) for most work; claude-haiku-5-5 ($0.10/$0.50) for bulk "
    "classification and extraction; claude-opus-5-5 ($4/$20) for the hardest reasoning"
)

_unknown_lock = threading.Lock()
_warned_unknown: set[str] = set()


def unknown_model(model: str) -> ModelInfo:
    """The cautious stand-in for a model id the catalogue does not know: no price (the spend
    cap refuses it with a clear error), the new tokenizer (estimates run high), the largest
    cache minimum (the pilot does not count on a cache), and no rule the library enforces."""
    return ModelInfo(
        id=model,
        display_name=model,
        line="",
        released="",
        lifecycle="active",
        retires=None,
        context_window=1_000_000,
        max_output=300_000,
        batch_max_output=300_000,
        pricing=None,
        tokenizer="new",
        min_cache_tokens=4096,
        thinking_default=None,
        thinking_types=frozenset(THINKING_TYPES),
        efforts=EFFORT_LEVELS,
        pool=model,
        known=False,
        notes="not in the catalogue",
    )


def model_info(model: str) -> ModelInfo:
    """The catalogue entry of ``model``; for an id it does not know, :func:`unknown_model`
    (after one warning per id).

    >>> model_info("claude-haiku-4-5-20251001").alias_of
    'claude-haiku-4-5'
    """
    info = CATALOGUE.get(model)
    if info is not None:
        return info
    with _unknown_lock:
        first = model not in _warned_unknown
        if first and len(_warned_unknown) < 1024:
            _warned_unknown.add(model)
    if first:
        logger.warning(
            "Model %r is not in the model catalogue: no price, no request rules checked (the API decides)", model
        )
    return unknown_model(model)


def is_known(model: str) -> bool:
    return model in CATALOGUE


_DATED = re.compile(r"^(?P<alias>.+)-20\d{6}$")


def pool_of(model: str) -> str:
    """The rate-limit pool of ``model``: a dated snapshot the catalogue does not list shares its
    alias's pool; any other unknown id is a pool of its own.

    >>> pool_of("claude-opus-4-8") == pool_of("claude-opus-4-5-20251101") == pool_of("claude-opus-4-7-20260416")
    True
    """
    info = CATALOGUE.get(model)
    if info is None:
        dated = _DATED.match(model)
        info = CATALOGUE.get(dated.group("alias")) if dated else None
    return info.pool if info is not None else model


def catalogue_prices() -> dict[str, tuple[float, float]]:
    """(input, output) USD per million tokens for every catalogued id: the seed of ``PRICES``."""
    return {mid: (info.pricing.input, info.pricing.output) for mid, info in CATALOGUE.items() if info.pricing}
