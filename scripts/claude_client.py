"""Call Claude from Python: single calls, streaming, parallel fan-out, conversations.

Everything goes through one pooled :class:`anthropic.Anthropic` client per (key, base URL,
settings), created lazily and shared by every call and thread of the process.

Quick start::

    from claude_client import invoke_claude, invoke_parallel

    answer = invoke_claude("Name three prime numbers.")
    print(answer, answer.usage.output_tokens, answer.cost_usd)

    results = invoke_parallel(
        [{"prompt": "Review the security of ..."}, {"prompt": "Review the performance of ..."}],
        shared_system="You are a senior reviewer.",
    )
    print(results.usage, results.cost_usd)

Credentials, first match wins: ``api_key=`` > ``ANTHROPIC_API_KEY`` >
``<dir>/ANTHROPIC_API_KEY.txt`` > ``<dir>/API_CREDENTIALS.json`` (field ``anthropic_api_key``) >
``<dir>/claude.env`` (a line ``API_KEY=...``, the seed's file), where ``<dir>`` is
``$ORCHESTRATING_AGENTS_PROJECT_DIR`` or ``/mnt/project``. The base URL is ``base_url=`` >
``ANTHROPIC_BASE_URL`` > the SDK default. The key is never logged, printed or put into an
exception message or repr.

Errors are :class:`ClaudeInvocationError` with a ``kind`` (see :data:`TRANSIENT_KINDS`); bad input
raises ``TypeError`` (wrong type) / ``ValueError`` (bad value) before anything is sent.

Threading: every public function is thread-safe. Streaming callbacks run on the thread that reads
the stream (a worker thread in the parallel functions).

This module is the public face; the pipeline behind it lives in the private ``_*.py`` modules
(see references/design-notes.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Optional, Union

import _tracing
from _admission import RateLimits
from _budget import budget_report
from _conversation import DEFAULT_CONTINUATION_PROMPT, ConversationThread
from _credentials import (
    CREDENTIALS_FIELD,
    CREDENTIALS_FILE_NAME,
    DEFAULT_PROJECT_DIR,
    ENV_FILE_FIELDS,
    ENV_FILE_NAME,
    KEY_FILE_NAME,
    PROJECT_DIR_ENV,
    configure,
    get_anthropic_api_key,
    reset_client,
)
from _errors import ERROR_KINDS, TRANSIENT_KINDS, ClaudeInvocationError, MissingAPIKeyError, is_api_failure, translate
from _estimate import CostEstimate, estimate_run_cost
from _fanout import RunInterrupted, check_callbacks, run_parallel
from _interrupt import InterruptToken
from _json_reply import parse_json_response
from _models import CATALOGUE, DEFAULT_MODEL, EFFORT_LEVELS, MODEL_ADVICE, THINKING_TYPES, ModelInfo, unknown_model
from _requests import AVAILABLE_MODELS, MAX_CACHE_BREAKPOINTS, prompt_specs
from _results import PRICES, ClaudeResponse, ParallelResults, Usage, estimate_cost
from _retry import run as run_with_retries
from _runs import (
    AGENT_KEYS,
    AgentOptions,
    as_sent,
    attach_prompt_tools,
    common_checks,
    run_hooks,
    run_single,
    wants_pilot,
)
from _stall import StallDetector
from _tools import make_delegate_tool
from _transport import default_policy, get_client, no_retry_client
from _validation import check_bool, check_callable, check_positive_int
from message_batches import invoke_batch

__all__ = [
    "DEFAULT_MODEL",
    "EFFORT_LEVELS",
    "ERROR_KINDS",
    "MODEL_ADVICE",
    "PRICES",
    "THINKING_TYPES",
    "TRANSIENT_KINDS",
    "ClaudeInvocationError",
    "ClaudeResponse",
    "ConversationThread",
    "CostEstimate",
    "InterruptToken",
    "MissingAPIKeyError",
    "ModelInfo",
    "ParallelResults",
    "RateLimits",
    "RunInterrupted",
    "StallDetector",
    "Usage",
    "configure",
    "delegate_tool",
    "budget_report",
    "estimate_cost",
    "estimate_run_cost",
    "get_anthropic_api_key",
    "get_available_models",
    "get_client",
    "get_model_info",
    "invoke_batch",
    "invoke_claude",
    "invoke_claude_json",
    "invoke_claude_streaming",
    "invoke_parallel",
    "invoke_parallel_interruptible",
    "invoke_parallel_streaming",
    "parse_json_response",
    "reset_client",
]

logger = logging.getLogger("claude_client")

# Constants re-exported for callers that read them from this module.
_CONSTANTS = (
    AVAILABLE_MODELS,
    DEFAULT_CONTINUATION_PROMPT,
    MAX_CACHE_BREAKPOINTS,
    PROJECT_DIR_ENV,
    DEFAULT_PROJECT_DIR,
    KEY_FILE_NAME,
    CREDENTIALS_FILE_NAME,
    CREDENTIALS_FIELD,
    ENV_FILE_NAME,
    ENV_FILE_FIELDS,
)


def invoke_claude(
    prompt: Optional[str] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    streaming: bool = False,
    cache_system: bool = False,
    cache_prompt: bool = False,
    messages: Optional[list] = None,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    budget: Optional[str] = None,
    rate_limits: Optional[RateLimits] = None,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
    **kwargs: Any,
) -> ClaudeResponse:
    """Send one request and return the reply text as a :class:`ClaudeResponse` (a ``str``).

    Give ``prompt`` or a full ``messages`` list (not both). ``cache_system`` / ``cache_prompt``
    put a cache breakpoint on the last system block / the last user block. ``streaming=True``
    (or an ``interrupt_token`` / ``stall_timeout``) streams internally; nothing is printed.
    A ``max_tokens`` so large that the SDK requires streaming (e.g. 64000) is streamed too.
    Other keyword arguments (``stop_sequences``, ``metadata``...) go to the SDK call.

    ``effort`` (``"low"`` ... ``"max"``, the levels the model accepts: :data:`EFFORT_LEVELS`)
    sets ``output_config.effort``; ``thinking`` (``"adaptive"``, ``"disabled"``,
    ``"between_tools"`` or a dict such as ``{"type": "adaptive"}``) sets the ``thinking`` field
    (5.x models think by default; the reply's text leaves thinking out, ``reply.content`` keeps
    its blocks). ``temperature`` stays for compatibility: the API removed sampling parameters, so
    any value but 1.0 (and ``top_p`` / ``top_k``) is refused before sending; use ``effort``.
    ``max_cost_usd`` caps what the call may spend; with ``budget="name"`` the cap is shared by
    every run, in any process on the shared store, that names it (see :func:`budget_report`).

    >>> reply = invoke_claude("Summarise: ...", system="Be brief.", max_tokens=200, effort="low")
    >>> reply.stop_reason, reply.usage.output_tokens, reply.usage.thinking_tokens, reply.cost_usd
    """
    check_bool(streaming, "streaming")
    return run_single(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        api_key=api_key,
        base_url=base_url,
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        extra=kwargs,
        stream=streaming,
        tools=tools,
        output_schema=output_schema,
        max_tool_turns=max_tool_turns,
        tool_timeout=tool_timeout,
        parallel_tools=parallel_tools,
        on_tool_call=on_tool_call,
        max_cost_usd=max_cost_usd,
        budget=budget,
        rate_limits=rate_limits,
        effort=effort,
        thinking=thinking,
    )


def invoke_claude_streaming(
    prompt: Optional[str] = None,
    callback: Optional[Callable[[str], Any]] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    cache_system: bool = False,
    cache_prompt: bool = False,
    *,
    messages: Optional[list] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    budget: Optional[str] = None,
    rate_limits: Optional[RateLimits] = None,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
    **kwargs: Any,
) -> ClaudeResponse:
    """Stream a reply; ``callback(chunk)`` gets each text chunk in order, on this thread.

    The return value equals the joined chunks. If the callback raises, the stream is aborted and
    ``ClaudeInvocationError(kind="callback")`` is raised, chained from the callback's exception.
    ``stall_timeout`` (seconds) aborts a stream with no content event for that long
    (kind ``stalled``; pings do not count); ``interrupt_token`` aborts it from another thread.
    Thinking is not streamed to the callback (only text); ``effort`` / ``thinking`` as in
    :func:`invoke_claude`.

    >>> chunks = []
    >>> text = invoke_claude_streaming("Write a haiku", callback=chunks.append, stall_timeout=60)
    >>> text == "".join(chunks)
    True
    """
    check_callable(callback, "callback")
    return run_single(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        api_key=api_key,
        base_url=base_url,
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        extra=kwargs,
        stream=True,
        on_text=callback,
        tools=tools,
        output_schema=output_schema,
        max_tool_turns=max_tool_turns,
        tool_timeout=tool_timeout,
        parallel_tools=parallel_tools,
        on_tool_call=on_tool_call,
        max_cost_usd=max_cost_usd,
        budget=budget,
        rate_limits=rate_limits,
        effort=effort,
        thinking=thinking,
    )


def get_available_models(*, api_key: Optional[str] = None, base_url: Optional[str] = None) -> list[str]:
    """The model ids you can use now, newest first (a new list; :data:`DEFAULT_MODEL` is among them).

    Read from the Models API (``GET /v1/models``, every page) with the shared client of
    ``api_key`` / ``base_url``; when the API cannot be asked (no key configured, a server without
    ``/v1/models``, no connection) it is the bundled model catalogue's list
    (:data:`AVAILABLE_MODELS`). Other API failures raise :class:`ClaudeInvocationError`. Any id
    the API accepts can be passed as ``model=``, listed here or not.

    >>> "claude-sonnet-5-5" in get_available_models()
    True
    >>> invoke_claude("hi", model=get_available_models()[0])
    """
    listed = _listed_models(api_key, base_url)
    models = list(AVAILABLE_MODELS) if listed is None else list(dict.fromkeys(str(m.id) for m in listed))
    if DEFAULT_MODEL not in models:
        models.append(DEFAULT_MODEL)
    return models


def get_model_info(
    model: str = DEFAULT_MODEL,
    *,
    from_api: bool = False,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
) -> ModelInfo:
    """What the library knows of ``model``: limits, prices, tokenizer, cache minimum, thinking and
    effort rules, rate-limit pool (a :class:`ModelInfo` of the bundled catalogue; no request).

    An id the catalogue lacks gets a cautious stand-in (``known`` False, ``pricing`` None). With
    ``from_api=True`` the Models API (``GET /v1/models/{model}``) is asked too, and what it says
    (name, lifecycle, retirement, context window, max output, thinking types, effort levels)
    replaces the catalogue's; the catalogue fills in the rest (prices, tokenizer, pool ...).

    >>> info = get_model_info("claude-haiku-5-5")
    >>> info.max_output, info.default_effort, info.pricing.input, info.min_cache_tokens
    (128000, 'medium', 0.1, 512)
    """
    if not isinstance(model, str) or not model.strip():
        raise (TypeError if not isinstance(model, str) else ValueError)(
            f"model must be a non-empty model id such as {DEFAULT_MODEL!r}, got {model!r}"
        )
    check_bool(from_api, "from_api")
    info = CATALOGUE.get(model) or unknown_model(model)
    if not from_api:
        return info
    client = get_client(api_key=api_key, base_url=base_url)
    view = no_retry_client(client)

    def attempt(_number: int) -> Any:
        try:
            return view.models.retrieve(model)
        except Exception as exc:
            if is_api_failure(exc):
                raise translate(exc) from exc
            raise

    return _merged(info, run_with_retries(attempt, default_policy(client), what="Models API retrieve"))


#: Most pages :func:`get_available_models` reads (1,000 models each): a guard against a server
#: that always says ``has_more``.
_MAX_MODEL_PAGES = 50


def _listed_models(api_key: Optional[str], base_url: Optional[str]) -> Optional[list[Any]]:
    """Every model the Models API lists (each page through the one retry loop), or None when it
    cannot be asked: no key, no ``/v1/models`` (404), no connection."""
    try:
        client = get_client(api_key=api_key, base_url=base_url)
    except MissingAPIKeyError:
        logger.info("No API key configured: the available models are the catalogue's")
        return None
    view = no_retry_client(client)

    def page(after: Optional[str]) -> Any:
        def attempt(_number: int) -> Any:
            try:
                return view.models.list(limit=1000, after_id=after) if after else view.models.list(limit=1000)
            except Exception as exc:
                if is_api_failure(exc):
                    raise translate(exc) from exc
                raise

        return run_with_retries(attempt, default_policy(client), what="Models API list")

    models: list[Any] = []
    after: Optional[str] = None
    try:
        for _ in range(_MAX_MODEL_PAGES):
            listing = page(after)
            models.extend(listing.data or [])
            if not listing.has_more or not listing.last_id or listing.last_id == after:
                break
            after = listing.last_id
    except ClaudeInvocationError as error:
        if error.status_code == 404 or error.kind in ("connection", "timeout"):
            logger.info("The Models API could not be read (%s): the available models are the catalogue's", error)
            return None
        raise
    return models


def _merged(info: ModelInfo, api: Any) -> ModelInfo:
    """``info`` with what the Models API's ``api`` entry says put over the catalogue's values."""
    changes: dict[str, Any] = {"display_name": api.display_name or info.display_name}
    if api.lifecycle and api.lifecycle != info.api_lifecycle:
        changes["lifecycle"] = api.lifecycle
    if api.retires_at is not None:
        changes["retires"] = api.retires_at.date().isoformat()
    if api.created_at is not None and api.created_at.year > 1970:
        changes["released"] = api.created_at.date().isoformat()
    if api.line:
        changes["line"] = api.line
    if api.max_input_tokens:
        changes["context_window"] = api.max_input_tokens
    if api.max_tokens:
        changes["max_output"] = api.max_tokens
    caps = api.capabilities
    if caps is not None:
        kinds = caps.thinking.types
        changes["thinking_types"] = frozenset(k for k in THINKING_TYPES if getattr(kinds, k).supported)
        effort = caps.effort
        supported = [level for level in EFFORT_LEVELS if getattr(getattr(effort, level, None), "supported", False)]
        changes["efforts"] = tuple(supported) if effort.supported else ()
    return replace(info, **changes)


def invoke_claude_json(
    prompt: Optional[str] = None,
    model: str = DEFAULT_MODEL,
    system: Union[str, list, None] = None,
    max_tokens: int = 4096,
    temperature: float = 1.0,
    streaming: bool = False,
    cache_system: bool = False,
    cache_prompt: bool = False,
    messages: Optional[list] = None,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    interrupt_token: Optional[InterruptToken] = None,
    stall_timeout: Optional[float] = None,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
    **kwargs: Any,
) -> Union[dict, list]:
    """:func:`invoke_claude` (same parameters), then :func:`parse_json_response` of the reply.

    Ask for JSON in the prompt or system; a reply that is not JSON raises ``json.JSONDecodeError``
    (a ``ValueError``); API failures raise :class:`ClaudeInvocationError` as usual.

    >>> data = invoke_claude_json('List 3 colours as {"colours": [...]}', system="Reply with JSON only.")
    >>> data["colours"]
    """
    reply = invoke_claude(
        prompt,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        streaming=streaming,
        cache_system=cache_system,
        cache_prompt=cache_prompt,
        messages=messages,
        api_key=api_key,
        base_url=base_url,
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        effort=effort,
        thinking=thinking,
        **kwargs,
    )
    return parse_json_response(str(reply))


def invoke_parallel(
    prompts: list[dict],
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    interrupt_token: Optional[InterruptToken] = None,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    budget: Optional[str] = None,
    rate_limits: Optional[RateLimits] = None,
    journal: Any = None,
    retry_failed: bool = False,
    progress: Any = False,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
) -> ParallelResults:
    """Run many prompts concurrently; results in input order as a :class:`ParallelResults`.

    Each prompt is a dict: ``prompt`` (required), ``system``, ``cache_system``, ``cache_prompt``,
    ``model``, ``max_tokens``, ``effort``, ``thinking``, ``tools`` (and ``temperature``, refused
    unless 1.0: the API removed it). ``effort`` / ``thinking`` (as in :func:`invoke_claude`) apply
    to every prompt that does not set its own. A request's system is ``shared_system`` first,
    then the prompt's own ``system``. ``max_workers`` is not capped (the old limit of 10 is
    lifted; mind your rate limits). With ``cache_shared_system=True`` one pilot request goes
    first and the rest start when its response begins, so they read the cache instead of
    writing it (``cache_pilot=False`` turns this off).

    Failures: by default, once every request has settled, one ``ClaudeInvocationError`` is raised
    carrying ``.results`` (None where failed) and ``.errors`` (index -> exception); with
    ``return_exceptions=True`` the exceptions are returned in their slots. With an
    ``interrupt_token`` that gets interrupted, the call returns at once with the finished results
    and None elsewhere.

    >>> results = invoke_parallel([{"prompt": "2+2?"}, {"prompt": "3+3?", "effort": "medium"}], effort="low")
    >>> list(results), results.usage.output_tokens, results.cost_usd
    """
    return _parallel(callbacks=None, **locals())  # every parameter, as given


def invoke_parallel_streaming(
    prompts: list[dict],
    callbacks: Optional[list[Optional[Callable[[str], Any]]]] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    interrupt_token: Optional[InterruptToken] = None,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    budget: Optional[str] = None,
    rate_limits: Optional[RateLimits] = None,
    journal: Any = None,
    retry_failed: bool = False,
    progress: Any = False,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
) -> ParallelResults:
    """:func:`invoke_parallel` with one streaming callback per prompt (``callbacks[i](chunk)``).

    Each callback gets only its own prompt's chunks, in order, on a worker thread (make it
    thread-safe if callbacks share state). A callback that raises fails only its own prompt
    (kind ``callback``). ``stall_timeout`` aborts a stream with no content event for that long.

    >>> outs = [[], []]
    >>> invoke_parallel_streaming([{"prompt": "a"}, {"prompt": "b"}], callbacks=[outs[0].append, outs[1].append])
    """
    return _parallel(**locals())  # every parameter, as given


def invoke_parallel_interruptible(
    prompts: list[dict],
    interrupt_token: Optional[InterruptToken] = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    max_workers: int = 5,
    shared_system: Union[str, list, None] = None,
    cache_shared_system: bool = False,
    *,
    return_exceptions: bool = False,
    cache_pilot: bool = True,
    stall_timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    tools: Optional[list] = None,
    output_schema: Any = None,
    max_tool_turns: int = 10,
    tool_timeout: Optional[float] = None,
    parallel_tools: bool = False,
    on_tool_call: Optional[Callable[[Any], Any]] = None,
    max_cost_usd: Optional[float] = None,
    budget: Optional[str] = None,
    rate_limits: Optional[RateLimits] = None,
    journal: Any = None,
    retry_failed: bool = False,
    progress: Any = False,
    effort: Optional[str] = None,
    thinking: Union[str, dict, None] = None,
) -> ParallelResults:
    """:func:`invoke_parallel` that can be stopped: ``interrupt_token.interrupt()`` from any thread.

    Prompts not yet started never start, requests in flight are aborted (their connections shut
    down), finished results are kept and interrupted slots are None. The call returns right
    after the interrupt, without waiting for the aborted requests.

    >>> token = InterruptToken()
    >>> threading.Timer(2.0, token.interrupt).start()
    >>> results = invoke_parallel_interruptible(prompts, interrupt_token=token)
    """
    return _parallel(callbacks=None, **locals())  # every parameter, as given


def _parallel(
    prompts: Any,
    *,
    model: str,
    max_tokens: int,
    max_workers: int,
    shared_system: Any,
    cache_shared_system: bool,
    callbacks: Any,
    return_exceptions: bool,
    interrupt_token: Optional[InterruptToken],
    cache_pilot: bool,
    stall_timeout: Optional[float],
    api_key: Optional[str],
    base_url: Optional[str],
    journal: Any,
    retry_failed: bool,
    progress: Any,
    effort: Optional[str],
    thinking: Any,
    **agent_options: Any,
) -> ParallelResults:
    check_positive_int(max_workers, "max_workers")
    stall = common_checks(
        interrupt_token=interrupt_token,
        stall_timeout=stall_timeout,
        return_exceptions=return_exceptions,
        cache_pilot=cache_pilot,
    )
    options = AgentOptions.checked(**agent_options)
    specs = prompt_specs(
        prompts,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        model=model,
        max_tokens=max_tokens,
        extra_keys=AGENT_KEYS,
        effort=effort,
        thinking=thinking,
    )
    attach_prompt_tools(specs)
    check_callbacks(callbacks, len(specs))
    client = get_client(api_key=api_key, base_url=base_url)
    options.limit(client, [spec.params for spec in specs])
    agent = options.agent(client, policy=default_policy(client), stall_timeout=stall)
    pilot = wants_pilot(cache_pilot, cache_shared_system, shared_system, [spec.params for spec in specs])
    kind = "invoke_parallel" if callbacks is None else "invoke_parallel_streaming"
    with (
        _tracing.run_span(kind, prompts=len(specs), workers=max_workers, model=model) as span,
        run_hooks(
            as_sent(specs, options),
            journal=journal,
            retry_failed=retry_failed,
            progress=progress,
            label="invoke_parallel",
            output=options.output,
        ) as hooks,
    ):
        return span.run(
            lambda: run_parallel(
                specs,
                agent=agent,
                max_workers=max_workers,
                callbacks=callbacks,
                return_exceptions=return_exceptions,
                interrupt_token=interrupt_token,
                pilot=pilot,
                seed=hooks.restored,
                on_begin=hooks.begin,
                on_settle=hooks.settle if (hooks.journal or hooks.progress) else None,
            ),
            interrupt=interrupt_token,
        )


_DELEGATE_OPTIONS = frozenset(
    {"model", "max_tokens", "max_workers", "shared_system", "cache_shared_system", "effort", "thinking"}
)


def delegate_tool(max_depth: int = 1, **invoke_parallel_options: Any) -> Any:
    """A tool named ``delegate`` (input ``{"tasks": [str, ...]}``) that fans the tasks out to
    sub-agents with :func:`invoke_parallel` and returns their answers in order.

    Sub-agents share the parent's interrupt token, spend cap and tools; one at ``max_depth`` gets
    no ``delegate`` tool. The parent reply's ``usage`` / ``cost_usd`` include every sub-agent, and
    ``reply.children`` breaks them down. ``invoke_parallel_options``: ``model``, ``max_tokens``,
    ``max_workers``, ``shared_system``, ``cache_shared_system``, ``effort``, ``thinking``
    (checked now, before any request).

    >>> helper = delegate_tool(max_depth=1, model="claude-haiku-5-5", effort="low")
    >>> reply = invoke_claude("Research A and B in parallel.", tools=[helper, search])
    >>> reply.children[0].task, reply.cost_usd
    """
    check_positive_int(max_depth, "max_depth")
    unknown = sorted(set(invoke_parallel_options) - _DELEGATE_OPTIONS)
    if unknown:
        raise TypeError(f"delegate_tool() got unexpected option(s) {unknown}; allowed: {sorted(_DELEGATE_OPTIONS)}")
    options = dict(invoke_parallel_options)

    def specs_for(tasks: list) -> list:
        return prompt_specs(
            [{"prompt": task} for task in tasks],
            shared_system=options.get("shared_system"),
            cache_shared_system=options.get("cache_shared_system", False),
            model=options.get("model", DEFAULT_MODEL),
            max_tokens=options.get("max_tokens", 4096),
            effort=options.get("effort"),
            thinking=options.get("thinking"),
        )

    specs_for(["check"])
    check_positive_int(options.get("max_workers", 5), "max_workers")

    def run_tasks(tasks: list, context: Any) -> ParallelResults:
        parent = context.extra["agent"]
        child = replace(parent, depth=context.depth, tools=context.extra["toolset"], output=None)
        return run_parallel(
            specs_for(tasks),
            agent=child,
            max_workers=options.get("max_workers", 5),
            callbacks=None,
            return_exceptions=True,
            interrupt_token=context.interrupt,
            pilot=False,
        )

    return make_delegate_tool(run_tasks, max_depth)
