"""Run many prompts through the Message Batches API, with a durable journal and resume.

The Message Batches API processes requests asynchronously at half the standard price and in
its own rate-limit pool. :func:`invoke_batch` takes the same prompt dicts as
``invoke_parallel``, submits them as one or more batches, polls until they end, and returns the
replies in input order::

    from claude_client import invoke_batch

    prompts = [{"prompt": f"Summarise chapter {i}"} for i in range(5000)]
    replies = invoke_batch(prompts, journal="chapters.journal.json", poll_interval=60, effort="low")
    print(replies[0], replies.cost_usd)

With ``journal=`` the batch ids are written to a JSON file *before* any waiting, so a crashed
script or a re-run notebook cell resumes polling the same batches instead of paying twice, and
a re-run after completion returns the stored results without sending a single request. A crash
inside the create call itself is recovered too: the batch it may have made is recognised by the
nonce its custom_ids carry, never guessed (see ``_batch_run``).
``retry_failed=True`` re-submits only the requests that failed (errored, expired or canceled,
e.g. after an interrupt canceled the batches) as a new batch and merges their new results into
the same slots; the requests that succeeded are never sent again.

The machinery lives in private modules: ``_batch_journal`` (plan and journal), ``_batch_run``
(create, poll, recovery; :class:`BatchProgress` and :class:`BatchStatus`) and ``_batch_results``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, List, Optional, Union

import _tracing
from _batch_journal import BODY_OVERHEAD as _BODY_OVERHEAD
from _batch_journal import Journal as _Journal
from _batch_journal import chunks as _chunks
from _batch_journal import failed as _failed
from _batch_journal import fingerprint as _fingerprint
from _batch_journal import label as _label
from _batch_journal import plan as _plan
from _batch_journal import prepare as _prepare
from _batch_results import collect as _collect
from _batch_run import BatchProgress, BatchStatus, ProgressCallback
from _batch_run import BatchRun as _BatchRun
from _batch_run import Interrupted as _Interrupted
from _batch_run import TimedOut as _TimedOut
from _batch_run import resume_hint as _resume_hint
from _errors import ClaudeInvocationError
from _estimate import estimate_request, worst_case_cost
from _interrupt import InterruptToken
from _interrupt import check_token as _check_token
from _journal import check_path as _check_path
from _models import BATCH_FACTOR, DEFAULT_MODEL
from _progress import Progress
from _requests import check_request_rules as _check_request_rules
from _requests import prompt_specs as _prompt_specs
from _results import ClaudeResponse, ParallelResults, Usage
from _runs import check_progress
from _structured import OutputSpec
from _transport import get_client as _get_client
from _transport import no_retry_client as _no_retry_client
from _validation import check_bool as _check_bool
from _validation import check_number, check_optional_seconds, check_seconds

__all__ = [
    "invoke_batch",
    "BatchProgress",
    "BatchStatus",
    "MAX_BATCH_REQUESTS",
    "MAX_BATCH_BYTES",
]

logger = logging.getLogger(__name__)

#: API limits for one message batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_ON_INTERRUPT = ("cancel", "leave")


# --------------------------------------------------------------------------- public API


def _check_limit(value: Any, name: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high} ({what}), got {value!r}")
    return value


def invoke_batch(
    prompts: Sequence[Mapping[str, Any]],
    model: str = DEFAULT_MODEL,
    max_tokens: int = 4096,
    shared_system: Union[str, Sequence[Mapping[str, Any]], None] = None,
    cache_shared_system: bool = False,
    journal: Union[str, os.PathLike[str], None] = None,
    poll_interval: float = 30.0,
    on_progress: Optional[ProgressCallback] = None,
    timeout: Optional[float] = None,
    return_exceptions: bool = False,
    *,
    interrupt_token: Optional[InterruptToken] = None,
    on_interrupt: str = "cancel",
    retry_failed: bool = False,
    output_schema: Any = None,
    progress: Any = False,
    max_cost_usd: Optional[float] = None,
    max_batch_requests: int = MAX_BATCH_REQUESTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    effort: Optional[str] = None,
    thinking: Any = None,
) -> ParallelResults:
    """Run ``prompts`` through the Message Batches API (half price); replies in input order.

    ``prompts`` are the dicts of ``invoke_parallel`` (``prompt`` plus optional ``system``,
    ``cache_system``, ``cache_prompt``, ``model``, ``max_tokens``, ``effort``, ``thinking``),
    validated the same way before anything is sent, and each request is checked against the
    request rules of its model with the batch maximum of ``max_tokens`` (sampling parameters
    such as ``temperature`` are refused: the API removed them; use ``effort``). ``effort``
    (``"low"`` .. ``"max"``: ``output_config.effort``) and ``thinking`` (a dict such as
    ``{"type": "adaptive"}`` or ``"adaptive"`` / ``"disabled"`` / ``"between_tools"``) apply to
    every prompt; a prompt's own key overrides them. A reply's text is that of its text blocks;
    thinking blocks stay in ``.content``. A request above the model's real-time maximum output
    (up to its batch maximum) is sent with the ``output-300k-2026-03-24`` beta.

    Each prompt becomes one batch request with the custom_id ``req-<index>-<hash of its
    parameters>_<nonce of its batch>``; the job is split into several batches past
    ``max_batch_requests`` requests or ``max_batch_bytes`` bytes of JSON. Prompt caching uses
    the 1-hour TTL (a batch can take longer than 5 minutes).

    ``journal`` (a file path) makes the job durable: the batch ids are written to it before any
    waiting, so calling again with the same prompts and journal after a crash, a timeout or an
    interrupt resumes polling the same batches, and after completion returns the stored results
    without any request. A journal written for other prompts, a run journal of
    ``invoke_parallel`` or any other file is refused (ValueError, the file left unchanged), as
    is a journal another process is using (one process at a time holds it, from before the
    first request until the call returns), one in a missing directory or one that cannot be read.

    A crash or kill inside a create call is recovered without paying twice: each batch's
    custom_ids carry a nonce journaled before the call, so the re-run recognises its own batch
    among the batches created meanwhile (others' batches of the same size included). Until the
    batches that may be it have ended and their results tell, the re-run watches them and
    submits nothing; it submits again only when none is its own.

    ``on_progress(BatchProgress)`` is called after every poll (in the calling thread). ``timeout``
    (seconds) raises ``ClaudeInvocationError`` (kind ``timeout``) and leaves the batches running.

    ``interrupt_token.interrupt()`` (from any thread) or Ctrl-C stops the call. What happens to
    the unfinished batches is ``on_interrupt``'s choice:

    * ``"cancel"`` (default): they are canceled. The requests they had already finished are
      billed and kept; the others end with the result ``canceled``. A re-run with the same
      journal collects what they produced, but the canceled requests stay failed (kind
      ``batch_canceled``) unless the re-run passes ``retry_failed=True``, which finishes them.
    * ``"leave"``: they keep running (and are billed); a re-run with the same journal resumes
      polling them and collects every reply, without ``retry_failed``.

    A batch that an interrupted create call may have made is neither canceled nor left
    untracked: it cannot be told from another job's batch of the same size until it ends, so the
    journal records it and a re-run collects it once it is proven to be this job's.

    With the token the call then returns the results fetched so far with None elsewhere (like
    ``invoke_parallel``); Ctrl-C re-raises KeyboardInterrupt; both log how to resume.

    ``max_cost_usd`` caps the job's spend: the requests are taken in input order while their
    worst case (the local input estimate at the list or cache-write price plus ``max_tokens`` of
    output, at the batch price) fits; the rest are not submitted and fail with kind ``budget``.
    ``output_schema`` validates each reply (``.parsed``); a batch makes no repair round, so an
    invalid reply fails with kind ``invalid_output``. ``progress`` shows counts as batches end.

    ``retry_failed=True`` finishes a job whose requests failed: once every batch of the journal
    has ended (those of an earlier call included, e.g. canceled ones), the requests whose result
    is errored, expired, canceled or missing are submitted again as a new batch with the same
    custom_ids and parameters, and their new results replace the failures in the same slots.
    Requests that succeeded are never sent again, so nothing is paid twice. A call makes at most
    one such retry round (a request failing again stays failed until the next call with
    ``retry_failed=True``); the retry batch is journaled like any other, so a crash or interrupt
    during the retry resumes it. Without ``retry_failed`` a re-run of an ended journal returns
    the journaled results, failures included, and sends nothing. An ``errored`` request failed
    for a reason of its own (e.g. an invalid request) and may well fail again.

    Failures are per request, as in ``invoke_parallel``: a failed request never discards the
    others; by default one ``ClaudeInvocationError`` carries ``.results`` (None where failed)
    and ``.errors`` (index -> error of kind ``batch_errored``, ``batch_expired`` or
    ``batch_canceled``; ``refusal`` for a reply the model declined, ``max_tokens`` for one with
    no text because its output, thinking included, used all of ``max_tokens``: both carry the
    ``usage`` and ``cost_usd`` they paid); with ``return_exceptions=True`` the errors are returned
    in their slots. The list has ``.usage``, ``.cost_usd`` (batch-priced: the catalogue's prices,
    halved; what failed replies paid included) and ``.errors``.

    >>> replies = invoke_batch([{"prompt": "2+2?"}, {"prompt": "3+3?"}], journal="math.json", poll_interval=10)
    >>> replies[0], replies.cost_usd
    >>> invoke_batch([{"prompt": "Prove it."}], effort="max", max_tokens=200_000)  # the batch maximum
    """
    specs = _prompt_specs(
        prompts,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        model=model,
        max_tokens=max_tokens,
        effort=effort,
        thinking=thinking,
        batch=True,
    )
    output = OutputSpec.from_user(output_schema)
    if output is not None:  # the body changes after the builder: its rules are checked again
        for spec in specs:
            spec.params = output.apply(spec.params)
            _check_request_rules(spec.params, f"prompts[{spec.index}]", batch=True)
    check_progress(progress)
    _check_bool(return_exceptions, "return_exceptions")
    if not isinstance(retry_failed, bool):
        raise TypeError(f"retry_failed must be a bool, got {type(retry_failed).__name__}")
    _check_token(interrupt_token)
    check_seconds(poll_interval, "poll_interval")
    limit = check_optional_seconds(timeout, "timeout")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be a callable taking a BatchProgress, got {type(on_progress).__name__}")
    if on_interrupt not in _ON_INTERRUPT:
        raise ValueError(f"on_interrupt must be 'cancel' or 'leave', got {on_interrupt!r}")
    _check_limit(max_batch_requests, "max_batch_requests", 1, MAX_BATCH_REQUESTS, "the API allows 100,000")
    _check_limit(max_batch_bytes, "max_batch_bytes", 4 * _BODY_OVERHEAD, MAX_BATCH_BYTES, "the API allows 256 MB")
    path = _check_path(journal)
    requests = _prepare(specs)
    if not requests:
        return ParallelResults([], usage=Usage(), cost_usd=0.0)
    refused = 0
    if max_cost_usd is not None:
        affordable = _affordable(requests, check_number(max_cost_usd, "max_cost_usd"))
        refused, requests = len(requests) - affordable, requests[:affordable]
        if not requests:
            return _with_refused(
                ParallelResults([], usage=Usage(), cost_usd=0.0), refused, max_cost_usd, return_exceptions
            )
    display = Progress(len(requests), progress, "invoke_batch") if progress is not False else None
    with _tracing.run_span("invoke_batch", prompts=len(requests), model=model) as span:  # the poller runs here
        try:
            results = span.run(
                lambda: _invoke(
                    requests,
                    path,
                    model,
                    state_args=(max_batch_requests, max_batch_bytes),
                    on_progress=on_progress if display is None else _feeding(display, on_progress),
                    output=output,
                    retry_failed=retry_failed,
                    interrupt_token=interrupt_token,
                    return_exceptions=return_exceptions,
                    timeout=timeout,
                    limit=limit,
                    poll_interval=poll_interval,
                    on_interrupt=on_interrupt,
                    api_key=api_key,
                    base_url=base_url,
                ),
                interrupt=interrupt_token,
            )
        except ClaudeInvocationError as error:
            if refused and isinstance(error.results, ParallelResults):
                error.results = _with_refused(error.results, refused, max_cost_usd, True)
            raise
        finally:
            if display is not None:
                display.close()
        return _with_refused(results, refused, max_cost_usd, return_exceptions) if refused else results


def _affordable(requests: Sequence[Any], cap: float) -> int:
    """How many requests, in input order, fit ``cap`` at their worst case (batch price)."""
    spent = 0.0
    for count, request in enumerate(requests):
        worst = worst_case_cost(estimate_request(request.params), warm_margin_s=math.inf)
        if worst is None:
            raise ValueError(
                f"max_cost_usd: the model {request.params.get('model')!r} has no price (the model catalogue and "
                "PRICES do not know it)"
            )
        spent += worst * BATCH_FACTOR
        if spent > cap:
            return count
    return len(requests)


def _with_refused(results: ParallelResults, refused: int, cap: Any, return_exceptions: bool) -> ParallelResults:
    """``results`` followed by the slots of the requests the spend cap left out (kind ``budget``)."""
    start = len(results)
    errors = dict(results.errors)
    values = list(results)
    for index in range(start, start + refused):
        errors[index] = ClaudeInvocationError(
            f"invoke_batch: not submitted: its worst case would take the job past max_cost_usd={cap}", kind="budget"
        )
        values.append(errors[index] if return_exceptions else None)
    return ParallelResults(values, usage=results.usage, cost_usd=results.cost_usd, errors=errors)


def _feeding(display: Progress, on_progress: Optional[ProgressCallback]) -> ProgressCallback:
    """An ``on_progress`` that moves ``display`` on by the requests that ended since the last poll
    (counts only: tokens and cost are known when the results are fetched)."""
    seen = {"ok": 0, "failed": 0}

    def feed(snapshot: BatchProgress) -> None:
        failed = snapshot.errored + snapshot.canceled + snapshot.expired
        for _ in range(max(0, snapshot.succeeded - seen["ok"])):
            display.settled(ClaudeResponse("", cost_usd=0.0))
        for _ in range(max(0, failed - seen["failed"])):
            display.settled(ClaudeInvocationError("a batch request failed", kind="batch_errored"))
        seen["ok"], seen["failed"] = max(seen["ok"], snapshot.succeeded), max(seen["failed"], failed)
        if on_progress is not None:
            on_progress(snapshot)

    return feed


def _invoke(
    requests: List[Any],
    path: Optional[Path],
    model: str,
    *,
    state_args: tuple,
    on_progress: Optional[ProgressCallback],
    output: Optional[OutputSpec],
    retry_failed: bool,
    interrupt_token: Optional[InterruptToken],
    return_exceptions: bool,
    timeout: Optional[float],
    limit: Optional[float],
    poll_interval: float,
    on_interrupt: str,
    api_key: Optional[str],
    base_url: Optional[str],
) -> ParallelResults:
    max_batch_requests, max_batch_bytes = state_args
    ranges = _plan(requests, max_batch_requests, max_batch_bytes)
    state = _Journal.open(path, _fingerprint(requests), requests, ranges, model)  # holds the journal's lock
    try:
        return _run_job(
            requests,
            state,
            max_batch_requests=max_batch_requests,
            max_batch_bytes=max_batch_bytes,
            on_progress=on_progress,
            output=output,
            retry_failed=retry_failed,
            interrupt_token=interrupt_token,
            return_exceptions=return_exceptions,
            timeout=timeout,
            limit=limit,
            poll_interval=poll_interval,
            on_interrupt=on_interrupt,
            api_key=api_key,
            base_url=base_url,
        )
    finally:
        state.close()


def _run_job(
    requests: List[Any],
    state: _Journal,
    *,
    max_batch_requests: int,
    max_batch_bytes: int,
    on_progress: Optional[ProgressCallback],
    output: Optional[OutputSpec],
    retry_failed: bool,
    interrupt_token: Optional[InterruptToken],
    return_exceptions: bool,
    timeout: Optional[float],
    limit: Optional[float],
    poll_interval: float,
    on_interrupt: str,
    api_key: Optional[str],
    base_url: Optional[str],
) -> ParallelResults:
    # A call makes at most one new retry round, so a request that keeps failing is not re-sent in a loop.
    retry_pending = retry_failed
    interrupted = interrupt_token is not None and interrupt_token.is_interrupted()
    if state.all_fetched() and (interrupted or not retry_pending or not _failed(requests, state.results)):
        logger.info("invoke_batch: every result is in the journal %s; no request sent", state.path)
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True, output=output)
    if interrupted:
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=False, output=output)

    run = _BatchRun(
        client=_no_retry_client(_get_client(api_key=api_key, base_url=base_url)),
        requests=requests,
        journal=state,
        poll_interval=float(poll_interval),
        on_progress=on_progress,
        timeout=limit,
        interrupt_token=interrupt_token,
        on_interrupt=on_interrupt,
    )
    try:
        while True:
            if state.all_fetched():
                failed = _failed(requests, state.results) if retry_pending else []
                if not failed:
                    break
                retry_pending = False
                added = state.add_retry(_chunks(failed, max_batch_requests, max_batch_bytes))
                logger.info(
                    "invoke_batch: submitting the %d failed requests again (retry round %d, %d batches)",
                    len(failed),
                    added[0]["round"],
                    len(added),
                )
            run.run()
    except _TimedOut:
        snap = run.snapshot()
        raise ClaudeInvocationError(
            f"invoke_batch: timed out after {timeout}s with {snap.done} of {snap.total} requests done; the "
            f"batches keep running (and are billed){run.running_hint()}",
            kind="timeout",
            results=_collect(requests, state, return_exceptions=return_exceptions, raise_errors=False, output=output),
            errors={},
        ) from None
    except _Interrupted:
        logger.warning("invoke_batch: interrupted; %s", _after_interrupt(run))
        return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True, output=output)
    except KeyboardInterrupt:
        logger.warning("invoke_batch: KeyboardInterrupt; %s", _after_interrupt(run))
        raise
    return _collect(requests, state, return_exceptions=return_exceptions, raise_errors=True, output=output)


def _after_interrupt(run: _BatchRun) -> str:
    """Cancel (or leave) the unfinished batches; returns what happened and how to resume.

    A create call cut short by the interrupt may have made a batch whose id never came back:
    the batches that may be it are journaled for the next run to watch (not canceled: until it
    ends such a batch cannot be told from another job's).
    """
    state = run.journal
    maybe = run.note_interrupted_creates()
    open_batches = [b for b in state.entries if b["id"] and not b["results_fetched"]]
    parts: List[str] = []
    if run.on_interrupt == "cancel":
        outcome = run.cancel_all()
        if outcome["canceled"]:
            parts.append(
                f"canceled batches {', '.join(outcome['canceled'])} (the requests they had already "
                f"finished are billed; the canceled ones are finished only by a re-run with "
                f"retry_failed=True)"
            )
        if outcome["failed"]:
            parts.append(f"batches {', '.join(outcome['failed'])} are still running (cancel failed) and billed")
        if outcome["ended"]:
            parts.append(f"batches {', '.join(outcome['ended'])} had already ended (results not fetched yet)")
    else:
        state.save()
        running = [b["id"] for b in open_batches if b["status"] != "ended"]
        ended = [b["id"] for b in open_batches if b["status"] == "ended"]
        if running:
            parts.append(f"batches {', '.join(running)} are left running (and billed)")
        if ended:
            parts.append(f"batches {', '.join(ended)} have ended (results not fetched yet)")
    for b in maybe:
        candidates = b.get("candidates") or []
        if candidates:
            parts.append(
                f"the create call for {_label(b)} was interrupted; {', '.join(candidates)} may be the batch it made "
                f"(running and billed, not canceled: it cannot be told from another job's batch of the same size "
                f"until it ends)"
            )
        else:
            parts.append(f"the create call for {_label(b)} was interrupted; no batch it made was found yet")
    if not parts:
        return "no batch was running"
    return "; ".join(parts) + f"; to collect the results, {_resume_hint(state)}"
