"""What a reply becomes: :class:`Usage`, prices and cost, :class:`ClaudeResponse` and
:class:`ParallelResults` (no I/O; used by every layer above)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from _models import CATALOGUE, Pricing, catalogue_prices
from _validation import is_mapping

logger = logging.getLogger("claude_client._results")

#: Prefixes of retired models the catalogue no longer lists, with their last list prices.
_LEGACY_PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "claude-opus-4": (15.0, 75.0),  # Opus 4 / 4.1; the catalogue's exact ids (4-5 ... 4-8) are longer prefixes
}

#: USD per million tokens, (input, output), keyed by model-name prefix; the longest prefix wins.
#: Seeded from the model catalogue (every id the SDK names) plus the prefixes of retired models.
#: While a model's winning entry is the catalogue's own figure, cost uses the model's full
#: catalogue prices (its cache-read price, Haiku 5.5's long-prompt tier); an entry you change or
#: add prices with the default multipliers (cache writes 1.25x / 2x input, reads 0.1x).
#: Override or extend at run time: ``PRICES["claude-future-9"] = (3.0, 15.0)``.
PRICES: dict[str, tuple[float, float]] = {**_LEGACY_PRICES, **catalogue_prices()}


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if is_mapping(obj):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _merge_tier(a: Optional[str], b: Optional[str]) -> Optional[str]:
    if a is None or b is None:
        return a if b is None else b
    return a if a == b else "mixed"


@dataclass(frozen=True)
class Usage:
    """Token usage of one call or a sum of calls (``a + b``).

    ``input_tokens`` counts only uncached input; :attr:`total_input_tokens` adds cache writes and
    reads. ``cache_creation_1h_input_tokens`` is the part of the writes made with the one-hour TTL.
    ``output_tokens`` is what is billed and includes thinking; ``thinking_tokens`` is the part of
    it the model spent thinking (the API's ``output_tokens_details.thinking_tokens``).
    ``service_tier`` and ``inference_geo`` are as the API reported them (``"mixed"`` in a sum of
    different values); ``inference_geo == "us"`` bills 1.1x on the models that support it.

    >>> r = invoke_claude("hi"); r.usage.output_tokens, r.usage.thinking_tokens
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    service_tier: Optional[str] = None
    thinking_tokens: int = 0
    inference_geo: Optional[str] = None

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_1h_input_tokens + other.cache_creation_1h_input_tokens,
            _merge_tier(self.service_tier, other.service_tier),
            self.thinking_tokens + other.thinking_tokens,
            _merge_tier(self.inference_geo, other.inference_geo),
        )

    def __radd__(self, other: Any) -> Usage:
        if other == 0:  # sum()
            return self
        return NotImplemented

    @classmethod
    def from_sdk(cls, u: Any) -> Usage:
        """Build from an SDK ``Usage`` object or a usage dict (None gives zeros). A dict may be
        the API's usage or a saved :class:`Usage` (``dataclasses.asdict``; older ones lack the
        newer fields)."""
        if u is None:
            return cls()
        if not is_mapping(u):  # an SDK object: plain attribute reads (the hot path)
            creation = getattr(u, "cache_creation", None)
            details = getattr(u, "output_tokens_details", None)
            return cls(
                u.input_tokens or 0,
                u.output_tokens or 0,
                getattr(u, "cache_creation_input_tokens", 0) or 0,
                getattr(u, "cache_read_input_tokens", 0) or 0,
                (getattr(creation, "ephemeral_1h_input_tokens", 0) or 0) if creation is not None else 0,
                getattr(u, "service_tier", None),
                (getattr(details, "thinking_tokens", 0) or 0) if details is not None else 0,
                getattr(u, "inference_geo", None),
            )
        one_hour = _field(_field(u, "cache_creation"), "ephemeral_1h_input_tokens", None)
        if one_hour is None:
            one_hour = _field(u, "cache_creation_1h_input_tokens", 0)
        thinking = _field(_field(u, "output_tokens_details"), "thinking_tokens", None)
        if thinking is None:
            thinking = _field(u, "thinking_tokens", 0)
        return cls(
            int(_field(u, "input_tokens", 0) or 0),
            int(_field(u, "output_tokens", 0) or 0),
            int(_field(u, "cache_creation_input_tokens", 0) or 0),
            int(_field(u, "cache_read_input_tokens", 0) or 0),
            int(one_hour or 0),
            _field(u, "service_tier"),
            int(thinking or 0),
            _field(u, "inference_geo"),
        )


# ------------------------------------------------------------------------------ prices
_price_lock = threading.Lock()
_unknown_models: set[str] = set()


@dataclass(frozen=True)
class _Price:
    """What prices a model: its :class:`Pricing` and whether ``inference_geo: "us"`` bills 1.1x."""

    pricing: Pricing
    us_geo: bool


# model -> price, valid while PRICES equals the snapshot it was computed from (PRICES may be
# edited at run time; comparing two small dicts is cheaper than the prefix search).
_price_cache: dict[str, Optional[_Price]] = {}
_price_snapshot: dict[str, tuple[float, float]] = {}


def _resolve(model: str, prices: dict[str, tuple[float, float]]) -> Optional[_Price]:
    best: Optional[str] = None
    for prefix in prices:
        if model.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        return None
    rates = prices[best]
    info = CATALOGUE.get(model) or CATALOGUE.get(best)
    us_geo = info.inference_geo if info is not None else True  # the server said "us": it bills so
    own = CATALOGUE.get(best)
    if own is not None and own.pricing is not None and tuple(rates) == (own.pricing.input, own.pricing.output):
        return _Price(own.pricing, us_geo)  # the catalogue's own figure: its full prices
    return _Price(Pricing.from_rates(float(rates[0]), float(rates[1])), us_geo)


def _price_for(model: str) -> Optional[_Price]:
    global _price_snapshot
    if PRICES == _price_snapshot:
        try:
            return _price_cache[model]
        except KeyError:
            pass
    prices = dict(PRICES)
    price = _resolve(model, prices)
    with _price_lock:
        if prices != _price_snapshot:
            _price_cache.clear()
            _price_snapshot = prices
        if len(_price_cache) < 1024:
            _price_cache[model] = price
    return price


def has_price(model: str) -> bool:
    """Whether :data:`PRICES` prices ``model`` (no warning either way)."""
    return _price_for(model or "") is not None


def estimate_cost(usage: Usage, model: str, *, batch: bool = False) -> Optional[float]:
    """USD cost of ``usage`` on ``model`` (None for a model :data:`PRICES` does not price, after
    one warning per model).

    The model's catalogue prices while its ``PRICES`` entry is the catalogue's own: cache reads
    at its cache-read price, 5-minute writes and 1-hour writes (``cache_creation_1h_input_tokens``)
    at theirs, and Haiku 5.5's tier (a prompt above 100K tokens bills the whole request, output
    included, at the higher price). An entry changed or added in ``PRICES`` bills writes at 1.25x
    (2x for one hour) and reads at 0.1x its input price. The batch tier (``batch=True`` or
    ``usage.service_tier == "batch"``) halves everything; ``usage.inference_geo == "us"`` bills
    1.1x on the models that take ``inference_geo`` (Claude 4.6 and later).

    >>> estimate_cost(Usage(input_tokens=1_000_000, output_tokens=1_000_000), "claude-sonnet-5-5")
    12.0
    """
    if not isinstance(usage, Usage):
        raise TypeError(f"usage must be a Usage, got {type(usage).__name__}")
    price = _price_for(model or "")
    if price is None:
        with _price_lock:
            first = model not in _unknown_models
            if first and len(_unknown_models) < 1024:
                _unknown_models.add(model)
        if first:
            logger.warning("No price known for model %r; cost_usd is None (add it to claude_client.PRICES)", model)
        return None
    write_1h = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    return price.pricing.cost(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_write_5m_tokens=usage.cache_creation_input_tokens - write_1h,
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=usage.cache_read_input_tokens,
        batch=batch or usage.service_tier == "batch",
        us_geo=price.us_geo and usage.inference_geo == "us",
    )


class ClaudeResponse(str):
    """The text of a reply: a real ``str`` that also carries the call's metadata.

    Attributes: ``usage`` (:class:`Usage`), ``stop_reason``, ``model``, ``id``, ``request_id``,
    ``cost_usd`` (None for an unknown model) and ``content`` (the content blocks as dicts).
    A reply of a tool loop also has ``tool_calls`` (one record per tool call), ``messages`` (the
    whole transcript) and ``children`` (the usage of delegated sub-agents), its ``usage`` and
    ``cost_usd`` summed over every turn; a reply with ``output_schema`` has ``parsed``.
    ``str(r)`` gives a plain ``str``; ``json.dumps``, ``==`` and pickling work as for ``str``.

    >>> r = invoke_claude("hi")
    >>> isinstance(r, str), r.stop_reason, r.usage.input_tokens
    """

    usage: Usage
    stop_reason: Optional[str]
    model: Optional[str]
    id: Optional[str]
    request_id: Optional[str]
    cost_usd: Optional[float]
    content: list[dict]
    # Set only on the replies that have them (class defaults keep plain replies cheap).
    tool_calls: Any = ()
    messages: Optional[list] = None
    children: Any = ()
    parsed: Any = None
    #: The HTTP response headers of the (last) request, when there was one (not pickled).
    headers: Any = None

    def __new__(
        cls,
        text: str = "",
        *,
        usage: Optional[Usage] = None,
        stop_reason: Optional[str] = None,
        model: Optional[str] = None,
        id: Optional[str] = None,
        request_id: Optional[str] = None,
        cost_usd: Optional[float] = None,
        content: Optional[list[dict]] = None,
    ) -> ClaudeResponse:
        obj = super().__new__(cls, text)
        obj.usage = usage if usage is not None else Usage()
        obj.stop_reason = stop_reason
        obj.model = model
        obj.id = id
        obj.request_id = request_id
        obj.cost_usd = cost_usd
        obj.content = content if content is not None else []
        return obj

    def __str__(self) -> str:
        return str.__str__(self)

    def __reduce__(self) -> Any:
        state = dict(self.__dict__)
        state.pop("headers", None)
        return (_rebuild_response, (str.__str__(self), state))


def _rebuild_response(text: str, state: dict) -> ClaudeResponse:
    obj = ClaudeResponse(text)
    obj.__dict__.update(state)
    return obj


def block_dict(block: Any) -> dict:
    if getattr(block, "type", None) == "text" and not getattr(block, "citations", None):
        return {"type": "text", "text": block.text}  # the common case, without pydantic's serializer
    data = block.model_dump(mode="json", exclude_none=True) if hasattr(block, "model_dump") else dict(block)
    data.pop("parsed_output", None)
    if data.get("type") == "text" and not data.get("citations"):
        data.pop("citations", None)
    return data


def response_from_message(message: Any, request_id: Optional[str], model_hint: str) -> ClaudeResponse:
    return build_response(
        [block_dict(b) for b in message.content],
        Usage.from_sdk(message.usage),
        getattr(message, "stop_reason", None),
        getattr(message, "model", None) or model_hint,
        getattr(message, "id", None),
        request_id,
    )


def build_response(
    content: list[dict],
    usage: Usage,
    stop_reason: Optional[str],
    model: str,
    message_id: Optional[str],
    request_id: Optional[str],
) -> ClaudeResponse:
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    if stop_reason == "max_tokens":
        logger.warning(
            "Reply from %s was cut at max_tokens (%d output tokens); raise max_tokens for the full text",
            model,
            usage.output_tokens,
        )
    return ClaudeResponse(
        text,
        usage=usage,
        stop_reason=stop_reason,
        model=model,
        id=message_id,
        request_id=request_id,
        cost_usd=estimate_cost(usage, model),
        content=content,
    )


def paid(item: Any) -> Optional[tuple[Usage, Optional[float]]]:
    """What ``item`` was billed, as (usage, cost): a :class:`ClaudeResponse`'s usage and cost, or
    what a failure paid before it failed (an error's ``.usage`` / ``.cost_usd``, or the same keys
    of its ``details``: tool turns before the failure, a refused reply, an invalid structured
    reply); None for anything else (None, an error that paid nothing known).

    An error with usage but no cost is unpriced (cost None) unless its usage is all zeros.

    >>> paid(invoke_claude("hi"))[0].output_tokens
    """
    if isinstance(item, ClaudeResponse):
        return item.usage, item.cost_usd
    if not isinstance(item, BaseException):
        return None
    usage = getattr(item, "usage", None)
    cost = getattr(item, "cost_usd", None)
    details = getattr(item, "details", None)
    if usage is None and details is not None and is_mapping(details):
        usage = details.get("usage")
        cost = details.get("cost_usd", cost)
    if not isinstance(usage, Usage):
        return None
    if cost is None and usage == Usage():
        cost = 0.0
    return usage, cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None


def totals(responses: Iterable[Any], *, errors: Iterable[Any] = ()) -> tuple[Usage, Optional[float]]:
    """Summed usage and cost of everything billed among ``responses`` and ``errors``: each
    :class:`ClaudeResponse`, and each failure that carries what it paid (see :func:`paid`); other
    items (None, errors that paid nothing) are skipped. An object found in both (a run's results
    with ``return_exceptions`` and its ``errors``) counts once. The cost is None once anything
    billed has no known price.

    >>> usage, cost = totals(results, errors=results.errors.values())
    """
    usage = Usage()
    cost: Optional[float] = 0.0
    seen: dict[int, Any] = {}  # id -> the object (kept alive, so an id is never reused meanwhile)
    for source in (responses, errors):
        for item in source:
            if item is None or id(item) in seen:
                continue
            seen[id(item)] = item
            bill = paid(item)
            if bill is None:
                continue
            usage = usage + bill[0]
            cost = None if (cost is None or bill[1] is None) else cost + bill[1]
    return usage, cost


class ParallelResults(list):
    """The list returned by the parallel functions (input order), plus the run's totals.

    ``usage`` (summed :class:`Usage` of every billed request: the successful ones, the cache pilot,
    and what failed slots paid before they failed), ``cost_usd`` (summed the same way; None if a
    model has no known price) and ``errors`` (index -> exception).

    >>> results = invoke_parallel([{"prompt": "a"}, {"prompt": "b"}])
    >>> results[0], results.usage.output_tokens, results.cost_usd, results.errors
    """

    def __init__(
        self,
        items: Iterable[Any] = (),
        *,
        usage: Optional[Usage] = None,
        cost_usd: Optional[float] = None,
        errors: Optional[dict[int, BaseException]] = None,
    ) -> None:
        super().__init__(items)
        self.usage = usage if usage is not None else Usage()
        self.cost_usd = cost_usd
        self.errors = errors if errors is not None else {}


for _cls in (Usage, ClaudeResponse, ParallelResults):
    _cls.__module__ = "claude_client"
