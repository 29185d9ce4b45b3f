"""Retries, concurrency limits and a shared rate-limit pause for many Claude calls.

The pieces, smallest first:

* :func:`is_transient` - the one question "is this failure worth another attempt?". It defers
  to ``ClaudeInvocationError.transient`` (``claude_client.TRANSIENT_KINDS`` is the single
  classification); SDK and transport exceptions are classified by the library's one translation.
* :class:`RetryPolicy` - how many attempts and how long to wait between them: capped exponential
  backoff with full or equal jitter, never shorter than the server's ``retry-after``; built from
  small stop / wait / retry parts that every retry path of the library runs.
* :class:`ConcurrencyLimiter` - a bounded, FIFO-fair limit on simultaneous calls, globally and
  per category.
* :class:`RateLimitGate` - one pause shared by every worker of a run: after a 429 that carries
  ``retry-after``, nobody dispatches until it has passed (no stampede).
* :func:`invoke_with_retry` and :func:`invoke_parallel_managed` - the two entry points that put
  them together (see their docstrings).

Attempt counting is the same everywhere in the library: ``max_retries=3`` means one try plus
three retries, at most four attempts (HTTP requests) per task. The SDK's own retries are switched
off for these calls so attempts never multiply.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from _errors import ClaudeInvocationError
from _limits import ConcurrencyLimiter, LimiterTimeoutError, RateLimitGate
from _managed import final_error, invoke_parallel_managed, resolve_policy
from _models import DEFAULT_MODEL
from _results import ClaudeResponse, ParallelResults
from _retry import (
    DEFAULT_MAX_RETRY_AFTER_S,
    RetryPolicy,
    compute_backoff_delay,
    equal_jitter,
    exponential_backoff,
    full_jitter,
    is_transient,
    retry_after_of,
)
from _runs import run_single
from _validation import check_bool
from task_state import TaskTracker

__all__ = [
    "RetryPolicy",
    "is_transient",
    "retry_after_of",
    "exponential_backoff",
    "compute_backoff_delay",
    "full_jitter",
    "equal_jitter",
    "ConcurrencyLimiter",
    "LimiterTimeoutError",
    "RateLimitGate",
    "invoke_with_retry",
    "invoke_parallel_managed",
    "invoke_parallel_with_reconciliation",
]

logger = logging.getLogger(__name__)

_RE_EXPORTED = (DEFAULT_MAX_RETRY_AFTER_S, TaskTracker)
# invoke_claude's keyword arguments that are not SDK extras (the agent options included).
_NAMED = (
    "model",
    "system",
    "max_tokens",
    "temperature",
    "cache_system",
    "cache_prompt",
    "messages",
    "api_key",
    "base_url",
    "interrupt_token",
    "stall_timeout",
    "tools",
    "output_schema",
    "max_tool_turns",
    "tool_timeout",
    "parallel_tools",
    "on_tool_call",
    "max_cost_usd",
    "rate_limits",
    "effort",
    "thinking",
)


def invoke_with_retry(
    prompt: Optional[str] = None,
    *,
    max_retries: Optional[int] = None,
    base_delay_ms: Optional[float] = None,
    max_delay_ms: Optional[float] = None,
    jitter: Optional[str] = None,
    is_continuation: bool = False,
    policy: Optional[RetryPolicy] = None,
    **invoke_claude_kwargs: Any,
) -> ClaudeResponse:
    """:func:`claude_client.invoke_claude` with retries of transient failures.

    Takes the same keyword arguments as ``invoke_claude`` (``model``, ``system``, ``max_tokens``,
    ``effort``, ``thinking``, ``cache_system``, ``cache_prompt``, ``messages``, ``api_key``,
    ``base_url``, ``interrupt_token``, ``stall_timeout``, SDK extras such as ``stop_sequences``);
    bad arguments raise before any request (``temperature`` other than 1.0 too: the API removed
    it, use ``effort=``). The SDK's own retries are switched off, so ``max_retries=3``
    (the default) means at most 4 HTTP requests: a persistent 529 reaches the server
    exactly 4 times, a 401 once. Between attempts it waits ``policy.delay_for(...)``: capped
    exponential backoff with jitter, never less than the server's ``retry-after`` /
    ``retry-after-ms``. A stall (``stall_timeout``) is transient and retried; an interrupt is not,
    and also cuts a backoff wait short.

    The final ``ClaudeInvocationError`` has ``.attempts`` (and says it in its message), keeps the
    last failure's ``kind``/``status_code``/``retry_after``, and chains the last failure as
    ``__cause__``. ``policy=`` replaces ``max_retries``/``base_delay_ms``/``max_delay_ms``/``jitter``
    (giving both is a ``ValueError``); the defaults are 3 retries, 1000 ms doubling to 10000 ms,
    full jitter.
    ``is_continuation=True`` (seed parameter) waits a fixed ``base_delay_ms`` between attempts
    (still never less than ``retry-after``).

    >>> reply = invoke_with_retry("Summarise ...", max_retries=3, base_delay_ms=500, max_tokens=300, effort="low")
    """
    check_bool(is_continuation, "is_continuation")
    if is_continuation and policy is None:  # a fixed short delay: the cap equals the base, no jitter
        base = 1000.0 if base_delay_ms is None else base_delay_ms
        policy = resolve_policy(None, max_retries=max_retries, base_delay_ms=base, max_delay_ms=base, jitter="none")
    else:
        policy = resolve_policy(
            policy, max_retries=max_retries, base_delay_ms=base_delay_ms, max_delay_ms=max_delay_ms, jitter=jitter
        )
    kw = dict(invoke_claude_kwargs)
    streaming = check_bool(kw.pop("streaming", False), "streaming")
    named = {name: kw.pop(name) for name in _NAMED if name in kw}  # the rest are SDK extras
    try:
        return run_single(prompt, **named, extra=kw, stream=streaming, policy=policy)
    except ClaudeInvocationError as error:
        raise final_error(error, error.attempts or 1) from error


def invoke_parallel_with_reconciliation(
    prompts: List[Dict[str, Any]],
    *,
    reconcile: Optional[Callable[[List[Dict[str, Any]], TaskTracker], Sequence[Mapping[str, Any]]]] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    max_retries: int = 3,
    stall_timeout: Optional[float] = None,
    on_stall: Optional[Callable[[str, float], Any]] = None,
    effort: Optional[str] = None,
    thinking: Any = None,
    **managed_kwargs: Any,
) -> ParallelResults:
    """The seed's name for :func:`invoke_parallel_managed` (same behaviour and extra keywords;
    ``effort`` / ``thinking`` apply to every prompt that does not set its own).

    >>> results = invoke_parallel_with_reconciliation(prompts, reconcile=lambda ps, tracker: ps[:10], effort="low")
    """
    return invoke_parallel_managed(
        prompts,
        reconcile=reconcile,
        model=model,
        max_tokens=max_tokens,
        max_workers=max_workers,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        max_retries=max_retries,
        stall_timeout=stall_timeout,
        on_stall=on_stall,
        effort=effort,
        thinking=thinking,
        **managed_kwargs,
    )
