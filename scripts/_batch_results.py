"""The results of a batch job (for ``message_batches``): the journaled result objects of the API
turned into replies and errors in input order, batch-priced, as ``invoke_parallel`` returns them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Optional

from _batch_journal import Journal, Request, members
from _errors import ClaudeInvocationError
from _results import ClaudeResponse, ParallelResults, Usage, estimate_cost
from _results import block_dict as _block_dict
from _results import totals as _totals
from _structured import OutputSpec
from _transport import reply_error

logger = logging.getLogger("message_batches._batch_results")


def item_error(result: Mapping[str, Any], request: Request, batch_id: Optional[str]) -> ClaudeInvocationError:
    kind = result.get("type")
    where = f"prompts[{request.index}] ({request.custom_id} in {batch_id})"
    if kind == "errored":
        body = result.get("error")
        body = body if isinstance(body, Mapping) else {}
        inner = body.get("error")
        inner = inner if isinstance(inner, Mapping) else {}
        err_type = inner.get("type", "api_error")
        text = inner.get("message") or ""
        return ClaudeInvocationError(
            f"{where}: the batch request errored: {err_type}" + (f": {text}" if text else ""),
            kind="batch_errored",
            details=dict(body) or None,
            request_id=body.get("request_id"),
        )
    if kind == "expired":
        return ClaudeInvocationError(
            f"{where}: the batch request expired (the batch did not reach it within 24 hours)", kind="batch_expired"
        )
    if kind == "canceled":
        return ClaudeInvocationError(f"{where}: the batch request was canceled", kind="batch_canceled")
    return ClaudeInvocationError(f"{where}: the batch returned no result for this request", kind="batch_errored")


def response(message: Mapping[str, Any], model_hint: str) -> ClaudeResponse:
    """A ClaudeResponse from the message of a ``succeeded`` result (a dict), batch-priced; its
    text is that of the text blocks (thinking blocks stay in ``content``)."""
    blocks = [_block_dict(b) for b in message.get("content") or () if isinstance(b, Mapping)]
    usage = Usage.from_sdk(message.get("usage"))
    model = message.get("model") or model_hint
    reply = ClaudeResponse(
        "".join(b.get("text", "") for b in blocks if b.get("type") == "text"),
        usage=usage,
        stop_reason=message.get("stop_reason"),
        model=model,
        id=message.get("id"),
        cost_usd=estimate_cost(usage, model, batch=True),
        content=blocks,
    )
    details = message.get("stop_details")
    if isinstance(details, Mapping):  # a refusal's category and explanation
        reply.stop_details = dict(details)  # type: ignore[attr-defined]
    return reply


def _outcome(r: Request, result: Mapping[str, Any], batch_id: Optional[str], output: Optional[OutputSpec]) -> Any:
    """The reply of one journaled result, or the error in its slot."""
    if result.get("type") != "succeeded" or not isinstance(result.get("message"), Mapping):
        return item_error(result, r, batch_id)
    reply = response(result["message"], r.params.get("model", ""))
    error = reply_error(reply)  # a refusal, or no text because the output hit max_tokens
    if error is not None:
        return error.derive(f"prompts[{r.index}] ({r.custom_id} in {batch_id}): {error}")
    if output is not None:  # validated; a batch has no repair round
        try:
            reply.parsed = output.parse(reply)
        except ClaudeInvocationError as exc:  # the reply was paid: the error carries what it cost
            return (
                exc
                if getattr(exc, "usage", None) is not None
                else exc.derive(usage=reply.usage, cost_usd=reply.cost_usd)
            )
    return reply


def collect(
    requests: Sequence[Request],
    journal: Journal,
    *,
    return_exceptions: bool,
    raise_errors: bool,
    output: Optional[OutputSpec] = None,
) -> ParallelResults:
    """Results in input order from the journal; None where there is no result yet.

    With ``raise_errors`` and failed items (and not ``return_exceptions``), raise one
    ``ClaudeInvocationError`` carrying ``.results`` and ``.errors``, as ``invoke_parallel`` does.
    """
    batch_of: Dict[int, Optional[str]] = {}
    for b in journal.entries:  # a retry batch replaces the batch of the requests it re-sent
        for r in members(b, requests):
            batch_of[r.index] = b["id"]
    values: List[Any] = [None] * len(requests)
    errors: Dict[int, BaseException] = {}
    truncated: List[int] = []
    for r in requests:
        result = journal.results.get(r.custom_id)
        if result is None:
            continue
        outcome = _outcome(r, result, batch_of.get(r.index), output)
        if isinstance(outcome, ClaudeResponse):
            if outcome.stop_reason == "max_tokens":
                truncated.append(r.index)
            values[r.index] = outcome
        else:
            errors[r.index] = outcome
            values[r.index] = outcome if return_exceptions else None
    if truncated:
        logger.warning(
            "invoke_batch: %d replies were cut at max_tokens (prompts %s%s); raise max_tokens for the full text",
            len(truncated),
            ", ".join(map(str, truncated[:10])),
            ", ..." if len(truncated) > 10 else "",
        )
    usage, cost = _totals(values, errors=errors.values())
    results = ParallelResults(values, usage=usage, cost_usd=cost, errors=errors)
    if errors and raise_errors and not return_exceptions:
        first = min(errors)
        kinds: Dict[str, int] = {}
        for e in errors.values():
            k = getattr(e, "kind", None) or type(e).__name__
            kinds[k] = kinds.get(k, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        ok = sum(1 for v in values if isinstance(v, ClaudeResponse))
        raise ClaudeInvocationError(
            f"{len(errors)} of {len(requests)} batch requests failed ({summary}; {ok} succeeded); "
            f"first failure, {errors[first]}",
            kind=getattr(errors[first], "kind", None),
            results=results,
            errors=errors,
        ) from errors[first]
    return results
