"""What a reply becomes: :class:`Usage`, prices and cost, :class:`ClaudeResponse` and
:class:`ParallelResults` (no I/O; used by every layer above)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from _validation import is_mapping

logger = logging.getLogger("claude_client._results")

#: USD per million tokens, (input, output), keyed by model-name prefix; the longest prefix wins.
#: Override or extend at run time: ``PRICES["claude-sonnet-4"] = (3.0, 15.0)``.
PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
}


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

    >>> r = invoke_claude("hi"); r.usage.output_tokens
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    service_tier: Optional[str] = None

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
        )

    def __radd__(self, other: Any) -> Usage:
        if other == 0:  # sum()
            return self
        return NotImplemented

    @classmethod
    def from_sdk(cls, u: Any) -> Usage:
        """Build from an SDK ``Usage`` object or a usage dict (None gives zeros)."""
        if u is None:
            return cls()
        if not is_mapping(u):  # an SDK object: plain attribute reads (the hot path)
            creation = getattr(u, "cache_creation", None)
            return cls(
                u.input_tokens or 0,
                u.output_tokens or 0,
                getattr(u, "cache_creation_input_tokens", 0) or 0,
                getattr(u, "cache_read_input_tokens", 0) or 0,
                (getattr(creation, "ephemeral_1h_input_tokens", 0) or 0) if creation is not None else 0,
                getattr(u, "service_tier", None),
            )
        return cls(
            int(_field(u, "input_tokens", 0) or 0),
            int(_field(u, "output_tokens", 0) or 0),
            int(_field(u, "cache_creation_input_tokens", 0) or 0),
            int(_field(u, "cache_read_input_tokens", 0) or 0),
            int(_field(_field(u, "cache_creation"), "ephemeral_1h_input_tokens", 0) or 0),
            _field(u, "service_tier"),
        )


_price_lock = threading.Lock()
_unknown_models: set[str] = set()


# model -> price, valid while PRICES equals the snapshot it was computed from (PRICES may be
# edited at run time; comparing two small dicts is cheaper than the prefix search).
_price_cache: dict[str, Optional[tuple[float, float]]] = {}
_price_snapshot: dict[str, tuple[float, float]] = {}


def _price_for(model: str) -> Optional[tuple[float, float]]:
    global _price_snapshot
    if PRICES == _price_snapshot:
        try:
            return _price_cache[model]
        except KeyError:
            pass
    prices = dict(PRICES)
    best = None
    for prefix, price in prices.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    with _price_lock:
        if prices != _price_snapshot:
            _price_cache.clear()
            _price_snapshot = prices
        if len(_price_cache) < 1024:
            _price_cache[model] = None if best is None else best[1]
    return None if best is None else best[1]


def estimate_cost(usage: Usage, model: str, *, batch: bool = False) -> Optional[float]:
    """USD cost of ``usage`` on ``model`` from :data:`PRICES` (None for an unknown model).

    Cache writes cost 1.25x the input price (2x with the one-hour TTL), reads 0.1x; the batch
    tier (``batch=True`` or ``usage.service_tier == "batch"``) halves everything.

    >>> estimate_cost(Usage(input_tokens=1_000_000), "claude-sonnet-4-6")
    3.0
    """
    if not isinstance(usage, Usage):
        raise TypeError(f"usage must be a Usage, got {type(usage).__name__}")
    price = _price_for(model or "")
    if price is None:
        with _price_lock:
            first = model not in _unknown_models
            _unknown_models.add(model)
        if first:
            logger.warning("No price known for model %r; cost_usd is None (add it to claude_client.PRICES)", model)
        return None
    per_in, per_out = price[0] / 1e6, price[1] / 1e6
    write_1h = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    write_5m = usage.cache_creation_input_tokens - write_1h
    cost = (
        usage.input_tokens * per_in
        + write_5m * 1.25 * per_in
        + write_1h * 2.0 * per_in
        + usage.cache_read_input_tokens * 0.1 * per_in
        + usage.output_tokens * per_out
    )
    if batch or usage.service_tier == "batch":
        cost *= 0.5
    return cost


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


def totals(responses: Iterable[Any]) -> tuple[Usage, Optional[float]]:
    """Summed usage and cost of the :class:`ClaudeResponse` items of ``responses`` (other items,
    errors or None, are skipped); the cost is None once any response has no known price."""
    usage = Usage()
    cost: Optional[float] = 0.0
    for response in responses:
        if isinstance(response, ClaudeResponse):
            usage = usage + response.usage
            cost = None if (cost is None or response.cost_usd is None) else cost + response.cost_usd
    return usage, cost


class ParallelResults(list):
    """The list returned by the parallel functions (input order), plus the run's totals.

    ``usage`` (summed :class:`Usage` of every successful request, the cache pilot included),
    ``cost_usd`` (summed; None if a model has no known price) and ``errors`` (index -> exception).

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
