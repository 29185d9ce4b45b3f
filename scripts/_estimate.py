"""Token and cost estimates before sending: one request (admission, budgets) or a whole run.

The local rule (no network), used wherever a request must be sized before it is sent:

* a text block (a ``str`` content or system, or a ``{"type": "text"}`` block) counts
  ``ceil(len(text) / 4)`` tokens (:data:`CHARS_PER_TOKEN`);
* any other block (tools, tool_use / tool_result, images, documents) counts its compact JSON the
  same way;
* each message adds :data:`MESSAGE_OVERHEAD_TOKENS` (role markers);
* on a model with the new tokenizer (Opus 4.7 and later, every 5.x model: the catalogue's
  ``tokenizer_factor``, 1.3) a block counts ``ceil(len(text) / 4 * 1.3)``: the same text costs
  about 30% more tokens there.

The API's tokenizer differs (English prose is nearer 3.5 characters per token), so the users of
this rule correct it from the usage that comes back (:func:`note_input_ratio`, and each admission
controller's own ratio).

The prompt cache: the cached prefix of a request is everything, in the order tools -> system ->
messages, up to a block that carries ``cache_control``. :class:`RequestEstimate` lists every such
breakpoint with its cumulative token count and a key (a hash of the model and the prefix);
:data:`warm_prefixes` remembers which keys a reply showed to be cached (a cache read, or a write,
keeps an entry warm for its TTL: 5 minutes, or 1 hour with ``"ttl": "1h"``), so that admission does
not count the reads toward ITPM and a budget prices them at the cache-read rate.

:func:`estimate_run_cost` sizes a whole parallel run without generating anything.

>>> est = estimate_request({"model": "claude-sonnet-4-6", "max_tokens": 100,
...                         "messages": [{"role": "user", "content": "x" * 400}]})
>>> est.total, est.max_tokens
(103, 100)
>>> estimate_request({"model": "claude-sonnet-5-5", "max_tokens": 100,
...                   "messages": [{"role": "user", "content": "x" * 400}]}).total
133
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Optional, Sequence, Union

from _models import CATALOGUE, DEFAULT_MODEL, TOKENIZER_FACTORS, ModelInfo, model_info
from _requests import prompt_specs
from _results import Usage, estimate_cost, has_price
from _validation import check_bool, check_model, check_positive_int

logger = logging.getLogger("claude_client._estimate")

#: Characters per token of the local rule.
CHARS_PER_TOKEN = 4
#: Tokens added per message by the local rule (role markers).
MESSAGE_OVERHEAD_TOKENS = 3
#: How far the API's count may stray from the local rule, for :func:`estimate_run_cost`'s bracket
#: when it cannot ask ``count_tokens``: low counts 3/4 of the local input, high 4/3 (3 characters
#: per token, dense code or non-English text).
LOCAL_LOW_FACTOR = 0.75
LOCAL_HIGH_FACTOR = 4.0 / 3.0

_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


def count_text_tokens(text: str, model: Optional[str] = None) -> int:
    """Tokens of ``text`` by the local rule: ``ceil(len(text) / 4)``, times the tokenizer factor
    of ``model`` when one is given (1.3 on the new tokenizer).

    >>> count_text_tokens("abcde"), count_text_tokens("x" * 400, "claude-opus-4-7")
    (2, 130)
    """
    return _tokens(len(text), 1.0 if model is None else tokenizer_factor(model))


_RATIOS: dict[float, tuple[int, int]] = {}  # tokenizer factor -> (numerator, denominator)


def _tokens(chars: int, factor: float) -> int:
    """``ceil(chars / 4 * factor)`` in exact integers (1.3 is 13/10: no float rounding)."""
    if factor == 1.0:
        return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    ratio = _RATIOS.get(factor)
    if ratio is None:
        exact = Fraction(factor).limit_denominator(1000)
        ratio = _RATIOS[factor] = (exact.numerator, exact.denominator)
    return -(-chars * ratio[0] // (CHARS_PER_TOKEN * ratio[1]))


#: Retired models the catalogue no longer lists: (id prefix, minimum cacheable prefix).
_LEGACY_CACHE_MINIMUMS = (("claude-3-haiku", 2048), ("claude-3-5-haiku", 2048), ("claude-haiku-4", 4096))
_LEGACY_PREFIXES = ("claude-3-", "claude-sonnet-4", "claude-opus-4", "claude-haiku-4")


def _legacy(model: str) -> bool:
    return model.startswith(_LEGACY_PREFIXES)


def catalogued(model: str) -> Optional[ModelInfo]:
    """The catalogue entry of ``model``, or of the id it is a dated snapshot of (``<id>-YYYYMMDD``);
    None for an id the catalogue does not know (no warning).

    >>> catalogued("claude-opus-4-7-20260416").id
    'claude-opus-4-7'
    """
    info = CATALOGUE.get(model)
    if info is None and len(model) > 9 and model[-9] == "-" and model[-8:].isdigit():
        info = CATALOGUE.get(model[:-9])
    return info


def tokenizer_factor(model: str) -> float:
    """Tokens the API counts per token of the local rule on ``model``: the catalogue's
    ``tokenizer_factor`` (1.3 on the new tokenizer), 1.0 for a retired model the catalogue no
    longer lists, and the cautious 1.3 for an unknown id.

    >>> tokenizer_factor("claude-sonnet-5-5"), tokenizer_factor("claude-sonnet-4-6")
    (1.3, 1.0)
    """
    info = catalogued(model)
    if info is not None:
        return info.tokenizer_factor
    if _legacy(model):
        return TOKENIZER_FACTORS["old"]
    return model_info(model).tokenizer_factor


def min_cacheable_tokens(model: str) -> int:
    """The API's minimum cacheable prefix for ``model`` (shorter prefixes are never cached): the
    catalogue's ``min_cache_tokens``; for an unknown id its cautious 4096.

    >>> min_cacheable_tokens("claude-sonnet-5-5"), min_cacheable_tokens("claude-haiku-4-5")
    (512, 4096)
    """
    info = catalogued(model)
    if info is not None:
        return info.min_cache_tokens
    for prefix, tokens in _LEGACY_CACHE_MINIMUMS:
        if model.startswith(prefix):
            return tokens
    if _legacy(model):
        return 1024
    return model_info(model).min_cache_tokens


@dataclass(frozen=True)
class Breakpoint:
    """One cache breakpoint of a request: prefix key, cumulative tokens up to it, TTL (s)."""

    key: int
    tokens: int
    ttl_s: float


@dataclass(frozen=True)
class RequestEstimate:
    """A request sized by the local rule: ``total`` input tokens, its breakpoints, ``max_tokens``.

    >>> est = estimate_request(params); est.total, [b.tokens for b in est.breakpoints]
    """

    model: str
    total: int
    breakpoints: tuple[Breakpoint, ...]
    max_tokens: int
    #: The request's ``inference_geo`` (``"us"`` bills 1.1x on the models that take it).
    inference_geo: Optional[str] = None

    @property
    def cached_prefix_tokens(self) -> int:
        """Tokens up to the last breakpoint (0 without one): what a cache write would cover."""
        return self.breakpoints[-1].tokens if self.breakpoints else 0


def _block_text(block: Any) -> Optional[str]:
    if type(block) is dict and block.get("type") == "text":
        text = block.get("text")
        if type(text) is str:
            return text
    return None


def _compact(block: Any) -> str:
    if isinstance(block, Mapping):
        block = {k: v for k, v in block.items() if k != "cache_control"}
    try:
        return json.dumps(block, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(block)


def estimate_request(params: Mapping[str, Any]) -> RequestEstimate:
    """Size a Messages request body by the local rule (see the module docstring), scaled by the
    model's tokenizer factor.

    Prefix keys use Python's ``hash`` of the model and the blocks (strings cache their hash, so a
    shared system costs nothing to hash again); they are valid within this process only.

    >>> estimate_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).total
    4
    """
    model = str(params.get("model", ""))
    factor = tokenizer_factor(model)
    total = 0
    h = hash(model)
    bps: list[Breakpoint] = []

    def add(tag: str, block: Any) -> None:
        nonlocal total, h
        text = block if type(block) is str else _block_text(block)
        if text is None:
            text = _compact(block)
        total += _tokens(len(text), factor)
        h = hash((h, tag, text))
        if type(block) is dict:
            cc = block.get("cache_control")
            if cc is not None:
                ttl = _TTL_SECONDS.get(cc.get("ttl", "5m"), 300.0) if isinstance(cc, Mapping) else 300.0
                bps.append(Breakpoint(h, total, ttl))

    tools = params.get("tools")
    if tools:
        for tool in tools:
            add("t", tool)
    system = params.get("system")
    if system:
        if type(system) is str:
            add("s", system)
        else:
            for block in system:
                add("s", block)
    for message in params.get("messages") or ():
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, Mapping) else None
        tag = "u" if isinstance(message, Mapping) and message.get("role") == "user" else "a"
        if type(content) is str:
            add(tag, content)
        elif content:
            for block in content:
                add(tag, block)
    max_tokens = params.get("max_tokens", 0)
    geo = params.get("inference_geo")
    return RequestEstimate(
        model,
        max(total, 1),
        tuple(bps),
        max_tokens if type(max_tokens) is int else 0,
        geo if type(geo) is str else None,
    )


# ------------------------------------------------------------------------------ warm prefixes
class WarmPrefixes:
    """Prefix keys known to be in the prompt cache, each until its expiry (thread-safe, one lock).

    Process-wide (:data:`warm_prefixes`): the cache belongs to the organisation, and a key of
    :func:`estimate_request` already covers the model and the whole prefix.

    >>> warm_prefixes.mark_from_reply(estimate, usage)
    >>> warm_prefixes.warm_tokens(estimate)       # tokens of the longest warm prefix
    """

    _LIMIT = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[int, float] = {}

    def mark_from_reply(self, estimate: RequestEstimate, usage: Optional[Usage], now: Optional[float] = None) -> None:
        """Mark the breakpoints of a request whose reply read or wrote the cache warm.

        A breakpoint is marked when its prefix reaches the model's minimum cacheable size and lies
        within what the reply read or wrote (the estimate may be off by a few percent: 10% slack).
        """
        if usage is None or not estimate.breakpoints:
            return
        covered = usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        if covered <= 0:
            return
        now = time.monotonic() if now is None else now
        floor = min_cacheable_tokens(estimate.model)
        ceiling = covered * 1.1 + 64
        with self._lock:
            for bp in estimate.breakpoints:
                if bp.tokens <= ceiling and max(bp.tokens, covered) >= floor * 0.9:
                    self._until[bp.key] = max(self._until.get(bp.key, 0.0), now + bp.ttl_s)
            if len(self._until) > self._LIMIT:
                for key in [k for k, t in self._until.items() if t <= now]:
                    del self._until[key]

    def warm_tokens(self, estimate: RequestEstimate, margin_s: float = 0.0, now: Optional[float] = None) -> int:
        """Cumulative tokens of the longest breakpoint of ``estimate`` that is warm for at least
        ``margin_s`` more seconds (0 when none is)."""
        if not estimate.breakpoints or not self._until:
            return 0
        now = (time.monotonic() if now is None else now) + margin_s
        until = self._until
        for bp in reversed(estimate.breakpoints):
            if until.get(bp.key, 0.0) > now:  # a dict read: atomic under the GIL
                return bp.tokens
        return 0

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


#: The process-wide record of warm cache prefixes.
warm_prefixes = WarmPrefixes()

# model -> the largest actual / estimated input ratio seen (budgets size input with it, >= 1).
_ratio_lock = threading.Lock()
_max_ratio: dict[str, float] = {}


def note_input_ratio(model: str, estimated: int, actual: int) -> None:
    """Record a reply's actual total input tokens against the local estimate of its request."""
    if estimated <= 0 or actual <= 0:
        return
    ratio = actual / estimated
    if ratio > _max_ratio.get(model, 1.0):
        with _ratio_lock:
            if ratio > _max_ratio.get(model, 1.0):
                _max_ratio[model] = min(ratio, 8.0)


def input_safety_factor(model: str) -> float:
    """The largest actual / estimated input ratio seen for ``model`` in this process, at least 1."""
    return _max_ratio.get(model, 1.0)


# ------------------------------------------------------------------------------ cost bounds
def worst_case_cost(estimate: RequestEstimate, *, warm_margin_s: float = 30.0) -> Optional[float]:
    """Worst-case USD cost of a request (None for a model without a price in ``PRICES``).

    Input: the local estimate (the model's tokenizer factor included) times
    :func:`input_safety_factor`; the longest prefix known warm (for ``warm_margin_s`` more
    seconds) at the cache-read price, the rest of the cached prefix at
    the cache-write price (1.25x, 2x for a one-hour TTL), everything after it at the list price.
    Output: ``max_tokens`` at the list price (thinking is part of the output, so this bounds it).
    The model's catalogue prices apply (Haiku 5.5's long-prompt tier, 1.1x for
    ``inference_geo: "us"``).

    >>> worst_case_cost(estimate_request(params))
    """
    factor = input_safety_factor(estimate.model)
    warm = warm_prefixes.warm_tokens(estimate, warm_margin_s)
    prefix = estimate.cached_prefix_tokens
    write = max(0, prefix - warm)
    write_1h = write if estimate.breakpoints and estimate.breakpoints[-1].ttl_s > 300.0 else 0
    usage = Usage(
        input_tokens=math.ceil((estimate.total - prefix) * factor),
        output_tokens=estimate.max_tokens,
        cache_creation_input_tokens=math.ceil(write * factor),
        cache_read_input_tokens=math.ceil(warm * factor),
        cache_creation_1h_input_tokens=math.ceil(write_1h * factor),
        inference_geo=estimate.inference_geo,
    )
    return estimate_cost(usage, estimate.model)


# ------------------------------------------------------------------------------ a whole run
@dataclass(frozen=True)
class CostEstimate:
    """What a run would cost, before it runs: token counts and a USD bracket.

    ``input_tokens`` (every request's input, cached parts included), ``output_tokens_max`` (the
    sum of ``max_tokens``), ``low_usd`` / ``high_usd`` (the real cost falls between them: see
    :func:`estimate_run_cost`), ``method`` (``"count_tokens"`` or ``"local"``).

    >>> est = estimate_run_cost(prompts, max_tokens=1024)
    >>> print(f"${est.low_usd:.2f} .. ${est.high_usd:.2f} ({est.method})")
    """

    input_tokens: int
    output_tokens_max: int
    low_usd: float
    high_usd: float
    method: str
    requests: int = 0


def _default_injected() -> Any:
    from _credentials import settings

    return settings()[1].get("client")


def _default_client() -> Any:
    """The client ``configure()`` injected, else one for the resolved key and base URL (None when
    there is no key: the local rule is used). Built here, not taken from the transport, which
    imports this module through admission."""
    import anthropic

    from _credentials import resolve_api_key, resolve_base_url, settings
    from _errors import ClaudeInvocationError

    injected = settings()[1].get("client")
    if injected is not None:
        return injected
    try:
        return anthropic.Anthropic(api_key=resolve_api_key(None), base_url=resolve_base_url(None), max_retries=0)
    except (ClaudeInvocationError, ValueError) as exc:
        logger.info("no client for count_tokens (%s); using the local estimate", exc)
        return None


#: The request fields ``count_tokens`` takes (thinking and effort are rendered into the prompt).
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "cache_control")


def _count_body(params: Mapping[str, Any]) -> dict:
    return {k: params[k] for k in _COUNT_FIELDS if k in params}


def _check_client(client: Any) -> None:
    if client is None:
        return
    messages = getattr(client, "messages", None)
    if not callable(getattr(client, "with_options", None)) or not callable(getattr(messages, "count_tokens", None)):
        raise TypeError(
            f"client must be an anthropic.Anthropic client (with messages.count_tokens) or None, "
            f"got {type(client).__name__}"
        )


def _check_priced(specs: Sequence[Any]) -> None:
    """Every model of the run has a price, checked before anything is sent."""
    for model in dict.fromkeys(str(s.params.get("model", "")) for s in specs):
        if not has_price(model):
            raise ValueError(
                f"model {model!r} has no price in PRICES: cannot estimate the cost "
                f"(add it: claude_client.PRICES[{model!r}] = (input, output) USD per million tokens)"
            )


def _count_with_api(client: Any, bodies: Sequence[dict]) -> Optional[list[int]]:
    """Input tokens of each body from ``messages.count_tokens`` (None when unreachable)."""
    quick = client.with_options(max_retries=0, timeout=30.0)
    unique: dict[str, int] = {}
    keys = [json.dumps(b, sort_keys=True, default=str) for b in bodies]
    todo = {k: b for k, b in zip(keys, bodies)}

    def count(body: dict) -> int:
        return int(quick.messages.count_tokens(**body).input_tokens)

    try:
        first_key = next(iter(todo))
        unique[first_key] = count(todo.pop(first_key))
        if todo:
            with ThreadPoolExecutor(max_workers=min(8, len(todo)), thread_name_prefix="claude-count") as pool:
                for key, n in zip(todo, pool.map(count, todo.values())):
                    unique[key] = n
    except Exception as exc:  # unreachable, not supported by a proxy, auth...: fall back
        logger.info("count_tokens unavailable (%s: %s); using the local estimate", type(exc).__name__, exc)
        return None
    return [unique[k] for k in keys]


def estimate_run_cost(
    prompts: Sequence[Mapping[str, Any]],
    *,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    client: Any = None,
    use_count_tokens: bool = True,
) -> CostEstimate:
    """Estimate what ``invoke_parallel(prompts, ...)`` with the same arguments would cost.

    Generates nothing. Input tokens come from the API's ``count_tokens`` endpoint when it answers
    (``client``, default: one for the configured key and base URL), else from the local rule of this module (``method``
    says which). The bracket:

    * output: low = 1 token per request, high = ``max_tokens`` per request (a prompt's own
      ``max_tokens`` counts);
    * input with ``cache_shared_system``: low = one cache write of the shared system and cache reads
      for every other request (as the cache pilot arranges; reads everywhere when that prefix is
      already known warm in this process), high = a cache write in every request; without it,
      every input token at the list price. Prompts with their own ``cache_system`` /
      ``cache_prompt`` are bracketed the same way (low: reads, high: writes);
    * with the local rule, whose count may stray from the API's, low counts
      :data:`LOCAL_LOW_FACTOR` of the local input estimate and high :data:`LOCAL_HIGH_FACTOR`
      (``input_tokens`` reports the local estimate itself).

    A cache warmed by another process can make the real cost a little lower than ``low``.
    Everything is checked before any request: a model missing from ``PRICES`` raises
    ``ValueError``, a ``client`` that is not an SDK client ``TypeError``.

    >>> est = estimate_run_cost([{"prompt": "Summarise " + doc} for doc in docs], max_tokens=512)
    >>> est.low_usd <= est.high_usd, est.method
    (True, 'count_tokens')
    """
    check_model(model)
    check_positive_int(max_tokens, "max_tokens")
    check_bool(cache_shared_system, "cache_shared_system")
    check_bool(use_count_tokens, "use_count_tokens")
    _check_client(client)
    specs = prompt_specs(
        prompts,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        model=model,
        max_tokens=max_tokens,
    )
    if not specs:
        return CostEstimate(0, 0, 0.0, 0.0, "local", 0)
    _check_priced(specs)
    estimates = [estimate_request(s.params) for s in specs]
    totals = [e.total for e in estimates]
    prefixes = [e.cached_prefix_tokens for e in estimates]
    method = "local"
    if use_count_tokens:
        owned = client is None
        if owned:
            client = _default_client()
        try:
            counted = None if client is None else _count_with_api(client, [_count_body(s.params) for s in specs])
            shared_tokens = None
            if counted is not None and cache_shared_system and shared_system:
                shared_tokens = _shared_prefix_tokens(client, specs[0].params, model)
        finally:
            if owned and client is not None and client is not _default_injected():
                client.close()
        if counted is not None:
            method = "count_tokens"
            for i, n in enumerate(counted):
                local_prefix = prefixes[i]
                if local_prefix:
                    # Scale the local prefix size by this request's counted / estimated ratio; the
                    # shared system itself is counted exactly when it could be.
                    prefix = round(local_prefix * n / max(totals[i], 1))
                    if shared_tokens is not None and estimates[i].breakpoints[0].tokens == local_prefix:
                        prefix = shared_tokens
                    prefixes[i] = min(prefix, n)
                totals[i] = n
    low = high = 0.0
    seen_warm: set[int] = set()
    for est, total, prefix in zip(estimates, totals, prefixes):
        lows = highs = None
        if method == "local":
            lows = _scaled(total, prefix, LOCAL_LOW_FACTOR)
            highs = _scaled(total, prefix, LOCAL_HIGH_FACTOR)
        lo_total, lo_prefix = lows or (total, prefix)
        total, prefix = highs or (total, prefix)
        lo_rest = lo_total - lo_prefix
        rest = total - prefix
        key = est.breakpoints[-1].key if est.breakpoints else None
        one_hour = bool(est.breakpoints) and est.breakpoints[-1].ttl_s > 300.0
        if prefix and key is not None and lo_prefix >= min_cacheable_tokens(est.model):
            warm_now = warm_prefixes.warm_tokens(est) >= est.cached_prefix_tokens
            first = key not in seen_warm and not warm_now
            seen_warm.add(key)
            low_usage = Usage(
                input_tokens=lo_rest,
                output_tokens=1,
                cache_creation_input_tokens=lo_prefix if first else 0,
                cache_read_input_tokens=0 if first else lo_prefix,
                cache_creation_1h_input_tokens=lo_prefix if first and one_hour else 0,
            )
            high_usage = Usage(
                input_tokens=rest,
                output_tokens=est.max_tokens,
                cache_creation_input_tokens=prefix,
                cache_creation_1h_input_tokens=prefix if one_hour else 0,
            )
        else:
            low_usage = Usage(input_tokens=lo_total, output_tokens=1)
            high_usage = Usage(input_tokens=total, output_tokens=est.max_tokens)
        lo, hi = estimate_cost(low_usage, est.model), estimate_cost(high_usage, est.model)
        if lo is None or hi is None:
            raise ValueError(f"model {est.model!r} has no price in PRICES: cannot estimate the cost")
        low += lo
        # never below what a Budget reserves for it: a cap of high_usd lets the whole run start
        high += max(hi, worst_case_cost(est) or 0.0)
    if method == "local":
        totals = [e.total for e in estimates]
    return CostEstimate(
        input_tokens=sum(totals),
        output_tokens_max=sum(e.max_tokens for e in estimates),
        low_usd=low,
        high_usd=high,
        method=method,
        requests=len(specs),
    )


def _scaled(total: int, prefix: int, factor: float) -> tuple[int, int]:
    return math.floor(total * factor) if factor < 1 else math.ceil(total * factor), math.floor(
        prefix * factor
    ) if factor < 1 else math.ceil(prefix * factor)


def _shared_prefix_tokens(client: Any, params: Mapping[str, Any], model: str) -> Optional[int]:
    """Tokens of the request's system up to its first breakpoint, by two count_tokens calls."""
    system = params.get("system")
    if not isinstance(system, list):
        return None
    head: list = []
    for block in system:
        head.append(block)
        if isinstance(block, Mapping) and block.get("cache_control") is not None:
            break
    probe = [{"role": "user", "content": "."}]
    quick = client.with_options(max_retries=0, timeout=30.0)
    try:
        with_system = quick.messages.count_tokens(model=model, system=head, messages=probe).input_tokens
        alone = quick.messages.count_tokens(model=model, messages=probe).input_tokens
    except Exception:
        return None
    return max(0, int(with_system) - int(alone))
