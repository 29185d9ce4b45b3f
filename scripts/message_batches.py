"""Run many prompts through the Message Batches API, with a durable journal and resume.

The Message Batches API processes requests asynchronously at half the standard price and in
its own rate-limit pool. :func:`invoke_batch` takes the same prompt dicts as
``invoke_parallel``, submits them as one or more batches, polls until they end, and returns the
replies in input order::

    from claude_client import invoke_batch

    prompts = [{"prompt": f"Summarise chapter {i}"} for i in range(5000)]
    replies = invoke_batch(prompts, journal="chapters.journal.json", poll_interval=60)
    print(replies[0], replies.cost_usd)

With ``journal=`` the batch ids are written to a JSON file *before* any waiting, so a crashed
script or a re-run notebook cell resumes polling the same batches instead of paying twice, and
a re-run after completion returns the stored results without sending a single request.
``retry_failed=True`` re-submits only the requests that failed (errored, expired or canceled,
e.g. after an interrupt canceled the batches) as a new batch and merges their new results into
the same slots; the requests that succeeded are never sent again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import anthropic
import httpx2

from _batch_journal import (
    BODY_OVERHEAD as _BODY_OVERHEAD,
)
from _batch_journal import (
    Journal as _Journal,
)
from _batch_journal import (
    Request as _Request,
)
from _batch_journal import (
    chunks as _chunks,
)
from _batch_journal import (
    failed as _failed,
)
from _batch_journal import (
    fingerprint as _fingerprint,
)
from _batch_journal import (
    label as _label,
)
from _batch_journal import (
    members as _members,
)
from _batch_journal import (
    plan as _plan,
)
from _batch_journal import (
    prepare as _prepare,
)
from _batch_journal import (
    size as _size,
)
from _errors import ClaudeInvocationError
from _errors import translate as _translate
from _estimate import estimate_request, worst_case_cost
from _interrupt import InterruptToken
from _interrupt import check_token as _check_token
from _progress import Progress
from _requests import DEFAULT_MODEL
from _requests import prompt_specs as _prompt_specs
from _results import ClaudeResponse, ParallelResults, Usage, estimate_cost
from _results import block_dict as _block_dict
from _results import totals as _totals
from _retry import Retry, RetryPolicy
from _retry import run as _retrying
from _retry import sleep as _interruptible_sleep
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

# Looking for a batch an interrupted create call made: batches listed per page, and a bound on
# the pages read when the server's batches are not (as documented) listed newest first.
_LIST_PAGE_SIZE = 100
_LIST_MAX_PAGES = 100
_ON_INTERRUPT = ("cancel", "leave")
# A batch may be invisible for a moment right after create: 404s are retried, 0.1 s doubling to 5 s.
_NOT_FOUND_POLICY = RetryPolicy(max_retries=9, base_delay_ms=100, max_delay_ms=5000, jitter="none")
_NO_RETRY_NOT_FOUND = RetryPolicy(max_retries=0, base_delay_ms=0, max_delay_ms=0)
_RETRY_NOT_FOUND = Retry(lambda e: e.status_code == 404, "retry_if_not_found")
# Creating a batch is not idempotent: it is retried (1 s doubling to 8 s, or the server's
# retry-after) only when nothing can have been created: a status the API answers before doing
# anything, or a connection that was never made.
_CREATE_POLICY = RetryPolicy(max_retries=4, base_delay_ms=1000, max_delay_ms=8000, jitter="none")
_CREATE_RETRY_STATUS = frozenset({408, 429, 503, 529})  # 500/502/504 may come after the batch was made
_RETRY_CREATE = Retry(
    lambda e: e.status_code in _CREATE_RETRY_STATUS or getattr(e, "never_sent", False), "retry_if_nothing_created"
)

ProgressCallback = Callable[["BatchProgress"], None]


# --------------------------------------------------------------------------- progress snapshots


@dataclass(frozen=True)
class BatchStatus:
    """One batch of a job, as last seen: ``id`` is None until the batch is created.

    ``processing_status`` is ``"pending"`` (not created yet), ``"in_progress"``,
    ``"canceling"`` or ``"ended"``; the request indexes it covers are ``range(start, end)``.
    A batch made by ``retry_failed`` has ``indexes`` (the requests it re-sent, in order) and
    ``retry_round`` (1 for the first retry of the job); ``start``/``end`` then only bound them.
    The counts of an ended batch are its own outcome, even where a later retry replaced it.
    """

    id: Optional[str]
    start: int
    end: int
    processing_status: str
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    results_fetched: bool
    indexes: Optional[tuple[int, ...]] = None
    retry_round: int = 0


@dataclass(frozen=True)
class BatchProgress:
    """What ``on_progress`` receives after every poll: counts per batch and in total.

    The totals count each request once, by its latest outcome: a request being retried counts
    as ``processing`` until its retry batch ends.

    >>> def show(p: BatchProgress) -> None:
    ...     print(f"{p.done}/{p.total} done, {p.succeeded} ok, {p.errored} errored")
    """

    batches: tuple[BatchStatus, ...]
    total: int
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    elapsed_s: float

    @property
    def done(self) -> int:
        """Requests no longer processing (succeeded, errored, canceled or expired)."""
        return self.total - self.processing

    @property
    def batch_ids(self) -> List[str]:
        return [b.id for b in self.batches if b.id]


# --------------------------------------------------------------------------- request preparation


class _Interrupted(Exception):
    """Internal: the interrupt token fired."""


def _counts_of(batch: Dict[str, Any]) -> Dict[str, int]:
    size = _size(batch)
    counts = batch.get("request_counts") or {}
    return {
        "processing": int(counts.get("processing", size if batch["status"] != "ended" else 0)),
        "succeeded": int(counts.get("succeeded", 0)),
        "errored": int(counts.get("errored", 0)),
        "canceled": int(counts.get("canceled", 0)),
        "expired": int(counts.get("expired", 0)),
    }


class _BatchRun:
    def __init__(
        self,
        *,
        client: anthropic.Anthropic,
        requests: List[_Request],
        journal: _Journal,
        poll_interval: float,
        on_progress: Optional[ProgressCallback],
        timeout: Optional[float],
        interrupt_token: Any,
        on_interrupt: str,
    ) -> None:
        self.client = client
        self.requests = requests
        self.journal = journal
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self.timeout = timeout
        self.token = interrupt_token
        self.on_interrupt = on_interrupt
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.index_of = {r.custom_id: r.index for r in requests}

    # -- waiting and interrupts

    def _interrupted(self) -> bool:
        return self.token is not None and bool(self.token.is_interrupted())

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early (raising ``_Interrupted``) when the token fires."""
        if self._interrupted() or (seconds > 0 and _interruptible_sleep(seconds, self.token)):
            raise _Interrupted()

    # -- API calls

    def _create(self, batch: Dict[str, Any]) -> None:
        chunk = _members(batch, self.requests)
        body: List[Any] = [{"custom_id": r.custom_id, "params": r.params} for r in chunk]

        def attempt(_number: int) -> Any:
            if self._interrupted():
                raise _Interrupted()
            # Journaled before sending: a crash inside the call makes the next run look for the batch.
            batch["create_started_at"] = time.time()
            self.journal.save()
            try:
                return self.client.messages.batches.create(requests=body)
            except (anthropic.APIError, httpx2.HTTPError, OSError) as exc:
                error = _translate(exc)
                # Only an answer from the server or a refused connection proves there is no batch.
                error.never_sent = (
                    isinstance(exc, anthropic.APIConnectionError)
                    and isinstance(exc.__cause__, httpx2.ConnectError)
                    and not isinstance(exc, anthropic.APITimeoutError)
                )
                if error.status_code in _CREATE_RETRY_STATUS or error.never_sent:
                    batch["create_started_at"] = None
                logger.warning("invoke_batch: batch create failed (%s)", error.kind)
                raise error from exc

        try:
            created = _retrying(
                attempt, _CREATE_POLICY, interrupt=self.token, retry=_RETRY_CREATE, what="invoke_batch: batch create"
            )
        except ClaudeInvocationError as error:
            if error.kind == "interrupted":
                raise _Interrupted() from error
            ambiguous = batch["create_started_at"] is not None
            self.journal.save()
            raise error.derive(
                f"invoke_batch: creating the batch for {_label(batch)} failed: {error}"
                + (
                    " (the connection failed after the request was sent, so the batch may exist; a re-run "
                    "with the same journal looks for it before submitting again)"
                    if ambiguous
                    else ""
                )
                + self._running_hint()
            ) from error
        batch["id"] = created.id
        batch["status"] = created.processing_status
        batch["request_counts"] = created.request_counts.model_dump()
        self.journal.data["state"] = "running"
        self.journal.save()
        logger.info("invoke_batch: created %s for %s", created.id, _label(batch))

    def _find_created(self, batch: Dict[str, Any], slack: float) -> tuple:
        """Batches the interrupted create call for ``batch`` may have made: ``(candidates, listed)``.

        Candidates have the batch's size, were created at most ``slack`` seconds before the
        create started (clock skew), and are neither in the journal nor known to be foreign.
        ``listed`` is False when the batches could not be listed.
        """
        size = _size(batch)
        since = float(batch["create_started_at"]) - slack
        known = {b["id"] for b in self.journal.entries if b["id"]}
        known.update(self.journal.data.get("foreign_batches") or ())
        found = []
        try:
            # Newest first: page on (after_id) until the batches are older than the window.
            page = self.client.messages.batches.list(limit=_LIST_PAGE_SIZE)
            pages = 1
            while True:
                older = False
                for b in page.data:
                    if b.created_at.timestamp() < since:
                        older = True
                        break
                    if b.id not in known and sum(b.request_counts.model_dump().values()) == size:
                        found.append(b)
                if older or not page.has_next_page():
                    break
                if pages >= _LIST_MAX_PAGES:
                    logger.warning(
                        "invoke_batch: stopped listing batches after %d pages while looking for the batch of "
                        "an interrupted create",
                        pages,
                    )
                    break
                page = page.get_next_page()
                pages += 1
        except Exception as exc:
            logger.warning("invoke_batch: could not list batches to recover an interrupted create: %s", _translate(exc))
            return [], False
        return found, True

    def _take_over(self, batch: Dict[str, Any], info: Any) -> None:
        """Record ``info`` (found by :meth:`_find_created`) as the batch of this journal entry.

        It is marked ``adopted``: when its results hold none of the entry's custom_ids it was
        another job's batch, and :meth:`_fetch_results` resets the entry to submit it again.
        """
        batch["id"] = info.id
        batch["status"] = info.processing_status
        batch["request_counts"] = info.request_counts.model_dump()
        batch["seen"] = True
        batch["adopted"] = True
        self.journal.data["state"] = "running"
        self.journal.save()

    def _adopt(self, batch: Dict[str, Any]) -> bool:
        """After a crash during create: find the batch that call may have created.

        The journal says a create started but recorded no id. A batch of the same size created
        since then (and not already in the journal) is taken over instead of paying twice. Its
        results are matched by custom_id; if they hold none of this entry's requests it was
        another job's batch and the entry is submitted again (see :meth:`_fetch_results`).
        Returns False when there is no single candidate (the create is sent again).
        """
        found, _ = self._find_created(batch, slack=120.0)
        if len(found) != 1:
            logger.warning(
                "invoke_batch: the previous run stopped while creating the batch for %s and %s; submitting them again",
                _label(batch),
                "no such batch exists" if not found else f"{len(found)} batches could be it",
            )
            return False
        info = found[0]
        self._take_over(batch, info)
        logger.warning(
            "invoke_batch: the previous run stopped while creating the batch for %s; resuming %s (created "
            "at %s) instead of submitting again",
            _label(batch),
            info.id,
            info.created_at.isoformat(),
        )
        return True

    def _reset_foreign(self, batch: Dict[str, Any]) -> None:
        """An adopted batch held none of this entry's requests: forget it and submit again."""
        foreign = batch["id"]
        self.journal.data.setdefault("foreign_batches", []).append(foreign)
        batch.update(
            id=None,
            status="pending",
            request_counts=None,
            seen=False,
            cancel_requested=False,
            results_fetched=False,
            create_started_at=None,
            adopted=False,
        )
        self.journal.save()
        logger.warning(
            "invoke_batch: %s, taken over after an interrupted create, holds none of %s (it belongs to "
            "another job); submitting them again",
            foreign,
            _label(batch),
        )

    def _retrieve(self, batch: Dict[str, Any]) -> None:
        def attempt(_number: int) -> Any:
            try:
                return self.client.messages.batches.retrieve(batch["id"])
            except anthropic.NotFoundError as exc:
                raise _translate(exc) from exc

        try:
            info = _retrying(
                attempt,
                _NOT_FOUND_POLICY if not batch.get("seen") else _NO_RETRY_NOT_FOUND,
                interrupt=self.token,
                retry=_RETRY_NOT_FOUND,
                what=f"invoke_batch: {batch['id']} (404)",
            )
        except ClaudeInvocationError as error:
            if error.kind == "interrupted":
                raise _Interrupted() from error
            raise ClaudeInvocationError(
                f"invoke_batch: batch {batch['id']} was not found ({_label(batch)}); it may have "
                f"been deleted or belong to another workspace or API key",
                kind="bad_request",
                status_code=404,
            ) from error
        changed = (not batch.get("seen")) or info.processing_status != batch["status"]
        batch["seen"] = True
        batch["status"] = info.processing_status
        batch["request_counts"] = info.request_counts.model_dump()
        if changed:
            self.journal.save()

    def _fetch_results(self, batch: Dict[str, Any]) -> None:
        """Store the ended batch's results (they replace earlier ones of the same requests)."""
        members = _members(batch, self.requests)
        wanted = {r.custom_id for r in members}
        fetched: Dict[str, Any] = {}
        unknown = 0
        # The raw JSONL lines: the journal stores the API's result objects as they came, and
        # skipping the SDK's typed models halves the parsing time of large batches.
        with self.client.messages.batches.with_streaming_response.results(batch["id"]) as response:
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                custom_id = line.get("custom_id") if isinstance(line, dict) else None
                result = line.get("result") if isinstance(line, dict) else None
                if custom_id not in wanted or not isinstance(result, dict):
                    unknown += 1
                    continue
                fetched[custom_id] = result
        if batch.get("adopted") and not fetched:
            self._reset_foreign(batch)
            return
        if unknown:
            logger.warning(
                "invoke_batch: ignored %d result lines of %s with an unknown custom_id", unknown, batch["id"]
            )
        missing = 0
        for r in members:
            if r.custom_id not in fetched:
                missing += 1
                fetched[r.custom_id] = {"type": "missing"}
        if missing:
            logger.warning("invoke_batch: %s returned no result for %d requests", batch["id"], missing)
        outcome: Dict[str, int] = {}
        for result in fetched.values():
            kind = str(result.get("type"))
            outcome[kind] = outcome.get(kind, 0) + 1
        self.journal.results.update(fetched)
        batch["result_counts"] = outcome
        batch["results_fetched"] = True
        if self.journal.all_fetched():
            self.journal.data["state"] = "ended"
        self.journal.save()
        logger.info("invoke_batch: fetched %d results of %s", len(fetched), batch["id"])

    def _cancel_all(self) -> Dict[str, List[str]]:
        """Cancel every unfinished batch; returns the ids by outcome.

        ``canceled``: cancel accepted (now or by an earlier run); ``failed``: the cancel call
        failed, so the batch is still running; ``ended``: it had already ended (nothing to cancel).
        """
        outcome: Dict[str, List[str]] = {"canceled": [], "failed": [], "ended": []}
        for batch in self.journal.entries:
            if not batch["id"] or batch["results_fetched"]:
                continue
            if batch["status"] == "ended":
                outcome["ended"].append(batch["id"])
                continue
            if batch["cancel_requested"]:
                outcome["canceled"].append(batch["id"])
                continue
            try:
                info = self.client.messages.batches.cancel(batch["id"])
            except Exception as exc:  # best effort: report, keep canceling the others
                logger.warning("invoke_batch: could not cancel %s: %s", batch["id"], _translate(exc))
                outcome["failed"].append(batch["id"])
                continue
            batch["status"] = info.processing_status
            batch["request_counts"] = info.request_counts.model_dump()
            if info.processing_status == "ended":
                outcome["ended"].append(batch["id"])
                continue
            batch["cancel_requested"] = True
            outcome["canceled"].append(batch["id"])
            logger.info("invoke_batch: canceled %s", batch["id"])
        self.journal.save()
        return outcome

    def _find_interrupted_creates(self) -> List[Dict[str, Any]]:
        """After Ctrl-C: look up batches a create call cut short may have made (journaled if found).

        Returns the entries whose batch may exist but could not be identified.
        """
        unknown = []
        for batch in self.journal.entries:
            if batch["id"] or not batch.get("create_started_at"):
                continue
            # The create started moments ago in this process: a short window for clock skew.
            found, listed = self._find_created(batch, slack=30.0)
            if len(found) == 1:
                self._take_over(batch, found[0])
                logger.warning(
                    "invoke_batch: the create call for %s was interrupted after the server created %s",
                    _label(batch),
                    found[0].id,
                )
            elif found or not listed:
                unknown.append(batch)
        return unknown

    def _running_hint(self) -> str:
        running = [b["id"] for b in self.journal.entries if b["id"] and not b["results_fetched"]]
        if not running:
            return ""
        return f"; batches {', '.join(running)} are running: {_resume_hint(self.journal)}"

    # -- progress

    def snapshot(self) -> BatchProgress:
        entries = self.journal.entries
        # Each request counts once in the totals, under the latest batch that holds it.
        latest: Dict[int, int] = {}
        for n, b in enumerate(entries):
            for r in _members(b, self.requests):
                latest[r.index] = n
        rows = []
        totals = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
        for n, b in enumerate(entries):
            members = _members(b, self.requests)
            if b["results_fetched"]:
                counts = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
                for kind, k in (b.get("result_counts") or {}).items():
                    counts[kind if kind in counts else "errored"] += int(k)
                for r in members:
                    if latest[r.index] == n:
                        kind = self.journal.results.get(r.custom_id, {}).get("type")
                        totals[kind if kind in totals else "errored"] += 1
                        if not b.get("result_counts"):  # journals written before result_counts
                            counts[kind if kind in counts else "errored"] += 1
            else:
                # Unfetched: no later retry exists yet (a round starts once every batch is fetched).
                counts = _counts_of(b)
                for key in totals:
                    totals[key] += counts[key]
            indexes = b.get("indexes")
            start, end = (indexes[0], indexes[-1] + 1) if indexes else (b["start"], b["end"])
            rows.append(
                BatchStatus(
                    b["id"],
                    start,
                    end,
                    b["status"],
                    results_fetched=b["results_fetched"],
                    indexes=tuple(indexes) if indexes else None,
                    retry_round=int(b.get("round", 1)) if indexes else 0,
                    **counts,
                )
            )
        return BatchProgress(tuple(rows), len(self.requests), elapsed_s=time.monotonic() - self.started, **totals)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(self.snapshot())
        except Exception:
            logger.exception("invoke_batch: on_progress raised; polling continues")

    # -- main loop

    def run(self) -> None:
        """Create missing batches, poll until every batch's results are fetched."""
        journal = self.journal
        while True:
            # Every pass: an entry reset after adopting another job's batch is submitted again.
            for batch in journal.entries:
                if batch["id"] is None:
                    if batch.get("create_started_at") and self._adopt(batch):
                        continue
                    self._create(batch)
            if self._interrupted():
                raise _Interrupted()
            for batch in journal.entries:
                if batch["results_fetched"]:
                    continue
                try:
                    if batch["status"] != "ended":
                        self._retrieve(batch)
                    if batch["status"] == "ended":
                        self._fetch_results(batch)
                except (anthropic.APIError, httpx2.TransportError) as exc:
                    error = _translate(exc)
                    if not error.transient:
                        raise ClaudeInvocationError(
                            f"invoke_batch: polling {batch['id']} failed: {error}{self._running_hint()}",
                            kind=error.kind,
                            status_code=error.status_code,
                            details=error.details,
                            request_id=error.request_id,
                        ) from exc
                    logger.warning("invoke_batch: polling %s failed (%s); will retry", batch["id"], error)
            self._report()
            if journal.all_fetched():
                return
            wait = self.poll_interval
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise _TimedOut()
                wait = min(wait, left)
            self._sleep(wait)


class _TimedOut(Exception):
    """Internal: ``timeout`` elapsed."""


# --------------------------------------------------------------------------- results


def _item_error(result: Mapping[str, Any], request: _Request, batch_id: Optional[str]) -> ClaudeInvocationError:
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


def _response(message: Mapping[str, Any], model_hint: str) -> Any:
    """A ClaudeResponse from the message of a ``succeeded`` result (a dict), batch-priced."""
    blocks = [_block_dict(b) for b in message.get("content") or () if isinstance(b, Mapping)]
    usage = Usage.from_sdk(message.get("usage"))
    model = message.get("model") or model_hint
    return ClaudeResponse(
        "".join(b.get("text", "") for b in blocks if b.get("type") == "text"),
        usage=usage,
        stop_reason=message.get("stop_reason"),
        model=model,
        id=message.get("id"),
        cost_usd=estimate_cost(usage, model, batch=True),
        content=blocks,
    )


def _collect(
    requests: Sequence[_Request],
    journal: _Journal,
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
        for r in _members(b, requests):
            batch_of[r.index] = b["id"]
    values: List[Any] = [None] * len(requests)
    errors: Dict[int, BaseException] = {}
    truncated: List[int] = []
    for r in requests:
        result = journal.results.get(r.custom_id)
        if result is None:
            continue
        if result.get("type") == "succeeded" and isinstance(result.get("message"), Mapping):
            response = _response(result["message"], r.params.get("model", ""))
            if response.stop_reason == "max_tokens":
                truncated.append(r.index)
            values[r.index] = response
            if output is not None:  # validated; a batch has no repair round
                try:
                    response.parsed = output.parse(response)
                except ClaudeInvocationError as error:
                    errors[r.index] = error
                    values[r.index] = error if return_exceptions else None
        else:
            errors[r.index] = _item_error(result, r, batch_of.get(r.index))
            if return_exceptions:
                values[r.index] = errors[r.index]
    if truncated:
        logger.warning(
            "invoke_batch: %d replies were cut at max_tokens (prompts %s%s); raise max_tokens for the full text",
            len(truncated),
            ", ".join(map(str, truncated[:10])),
            ", ..." if len(truncated) > 10 else "",
        )
    usage, cost = _totals(values)
    results = ParallelResults(values, usage=usage, cost_usd=cost, errors=errors)
    if errors and raise_errors and not return_exceptions:
        first = min(errors)
        kinds: Dict[str, int] = {}
        for e in errors.values():
            k = getattr(e, "kind", None) or type(e).__name__
            kinds[k] = kinds.get(k, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        ok = sum(1 for v in values if v is not None)
        raise ClaudeInvocationError(
            f"{len(errors)} of {len(requests)} batch requests failed ({summary}; {ok} succeeded); "
            f"first failure, {errors[first]}",
            kind=getattr(errors[first], "kind", None),
            results=results,
            errors=errors,
        ) from errors[first]
    return results


# --------------------------------------------------------------------------- public API


def _check_limit(value: Any, name: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high} ({what}), got {value!r}")
    return value


def _journal_path(journal: Any) -> Optional[Path]:
    if journal is None:
        return None
    if not isinstance(journal, (str, os.PathLike)) or not str(journal):
        raise TypeError(f"journal must be None or a file path (str or os.PathLike), got {journal!r}")
    path = Path(journal).expanduser()
    if path.is_dir():
        raise ValueError(f"journal must be a file path; {str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"journal: the directory {str(path.parent)!r} does not exist")
    return path


def _resume_hint(journal: _Journal) -> str:
    ids = [b["id"] for b in journal.entries if b["id"] and not b["results_fetched"]]
    if journal.path is not None:
        return (
            f"call invoke_batch again with the same prompts and journal={str(journal.path)!r} to resume "
            f"(nothing is submitted twice)"
        )
    return (
        f"no journal was given, so invoke_batch cannot resume them ({', '.join(ids) or 'none'}); their "
        f"results can be read with get_client().messages.batches.results(id); pass journal=PATH next time"
    )


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
) -> ParallelResults:
    """Run ``prompts`` through the Message Batches API (half price); replies in input order.

    ``prompts`` are the dicts of ``invoke_parallel`` (``prompt`` plus optional ``system``,
    ``temperature``, ``cache_system``, ``cache_prompt``, ``model``, ``max_tokens``), validated
    the same way before anything is sent. Each becomes one batch request with the custom_id
    ``req-<index>-<hash of its parameters>``; the job is split into several batches past
    ``max_batch_requests`` requests or ``max_batch_bytes`` bytes of JSON. Prompt caching uses
    the 1-hour TTL (a batch can take longer than 5 minutes).

    ``journal`` (a file path) makes the job durable: the batch ids are written to it before any
    waiting, so calling again with the same prompts and journal after a crash, a timeout or an
    interrupt resumes polling the same batches, and after completion returns the stored results
    without any request. A journal written for other prompts is refused (ValueError).

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
    ``batch_canceled``); with ``return_exceptions=True`` the errors are returned in their slots.
    The list has ``.usage``, ``.cost_usd`` (batch-priced: half the standard price) and ``.errors``.

    >>> replies = invoke_batch([{"prompt": "2+2?"}, {"prompt": "3+3?"}], journal="math.json", poll_interval=10)
    >>> replies[0], replies.cost_usd
    """
    specs = _prompt_specs(
        prompts,
        shared_system=shared_system,
        cache_shared_system=cache_shared_system,
        model=model,
        max_tokens=max_tokens,
    )
    output = OutputSpec.from_user(output_schema)
    if output is not None:
        for spec in specs:
            spec.params = output.apply(spec.params)
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
    path = _journal_path(journal)
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
    try:
        results = _invoke(
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
            raise ValueError(f"max_cost_usd: the model {request.params.get('model')!r} has no price in PRICES")
        spent += worst * 0.5
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
    state = _Journal.open(path, _fingerprint(requests), requests, ranges, model)

    # A call makes at most one new retry round, so a request that keeps failing is not re-sent in a loop.
    retry_pending = retry_failed
    interrupted = interrupt_token is not None and interrupt_token.is_interrupted()
    if state.all_fetched() and (interrupted or not retry_pending or not _failed(requests, state.results)):
        logger.info("invoke_batch: every result is in the journal %s; no request sent", path)
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
            f"batches keep running (and are billed){run._running_hint()}",
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

    A create call cut short by Ctrl-C may have created a batch whose id was never returned: it
    is looked up (and then canceled or left like the others) before anything is reported.
    """
    state = run.journal
    try:
        maybe = run._find_interrupted_creates()
    except Exception as exc:  # never let the lookup hide the interrupt
        logger.warning("invoke_batch: could not look for a batch created by the interrupted call: %s", exc)
        maybe = [b for b in state.entries if not b["id"] and b.get("create_started_at")]
    open_batches = [b for b in state.entries if b["id"] and not b["results_fetched"]]
    parts: List[str] = []
    if run.on_interrupt == "cancel":
        outcome = run._cancel_all()
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
        parts.append(
            f"the create call for {_label(b)} was interrupted, so a batch may be running that could not be "
            f"identified (check get_client().messages.batches.list())"
        )
    if not parts:
        return "no batch was running"
    return "; ".join(parts) + f"; to collect the results, {_resume_hint(state)}"
