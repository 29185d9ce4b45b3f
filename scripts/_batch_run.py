"""The run of a batch job (for ``message_batches``): create the journaled batches, poll them,
fetch their results, and recover the batch of a create call that a crash or an interrupt cut
short, without ever submitting a second batch while one that may be the job's own exists.

How a cut-short create is recovered: the journal entry gets a random ``nonce`` (journaled with
``create_started_at`` before the call is sent) and every request of the batch carries it in its
custom_id. A later pass lists the batches created around that time with the entry's size that
are not known to the journal: these *candidates* are watched (never canceled, never adopted on
sight) until each has ended, when the first line of its results tells whose it is: the entry
whose nonce it carries takes it over; a batch carrying none is another job's (``foreign``). Only
when no candidate is left and the create is older than :data:`CREATE_SETTLE_S` (a request that
reached the server has taken effect by then) is the entry submitted again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import anthropic
import httpx2

from _batch_journal import Journal, Request, label, members, new_nonce, wire_id, wire_ids
from _batch_journal import size as entry_size
from _errors import ClaudeInvocationError
from _errors import translate as _translate
from _models import model_info
from _retry import Retry, RetryPolicy
from _retry import run as _retrying
from _retry import sleep as _interruptible_sleep

logger = logging.getLogger("message_batches._batch_run")

# Looking for a batch an interrupted create call made: batches listed per page, and a bound on
# the pages read when the server's batches are not (as documented) listed newest first.
LIST_PAGE_SIZE = 100
LIST_MAX_PAGES = 100
#: How far the server's ``created_at`` of a batch may be from the journaled start of the create
#: call that made it (the two clocks may differ).
CLOCK_SLACK_S = 120.0
#: How long after its start a create call that reached the server may still make its batch.
CREATE_SETTLE_S = 10.0
#: The beta that raises a batch request's ``max_tokens`` ceiling to the model's batch maximum.
OUTPUT_300K_BETA = "output-300k-2026-03-24"
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
_POLL_ERRORS = (anthropic.APIError, httpx2.TransportError)


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


BatchStatus.__module__ = "message_batches"
BatchProgress.__module__ = "message_batches"

ProgressCallback = Callable[[BatchProgress], None]


class Interrupted(Exception):
    """Internal: the interrupt token fired."""


class TimedOut(Exception):
    """Internal: ``timeout`` elapsed."""


def counts_of(batch: Dict[str, Any]) -> Dict[str, int]:
    size = entry_size(batch)
    counts = batch.get("request_counts") or {}
    return {
        "processing": int(counts.get("processing", size if batch["status"] != "ended" else 0)),
        "succeeded": int(counts.get("succeeded", 0)),
        "errored": int(counts.get("errored", 0)),
        "canceled": int(counts.get("canceled", 0)),
        "expired": int(counts.get("expired", 0)),
    }


def create_headers(chunk: List[Request]) -> Optional[Dict[str, str]]:
    """The beta header a batch needs when one of its requests asks for more output than the
    model's real-time maximum (the request rules have checked its batch maximum)."""
    for r in chunk:
        max_tokens = r.params.get("max_tokens")
        info = model_info(str(r.params.get("model")))
        if info.known and isinstance(max_tokens, int) and max_tokens > info.max_output:
            return {"anthropic-beta": OUTPUT_300K_BETA}
    return None


def resume_hint(journal: Journal) -> str:
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


class BatchRun:
    def __init__(
        self,
        *,
        client: anthropic.Anthropic,
        requests: List[Request],
        journal: Journal,
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

    # -- waiting and interrupts

    def _interrupted(self) -> bool:
        return self.token is not None and bool(self.token.is_interrupted())

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early (raising ``Interrupted``) when the token fires."""
        if self._interrupted() or (seconds > 0 and _interruptible_sleep(seconds, self.token)):
            raise Interrupted()

    # -- create

    def _create(self, batch: Dict[str, Any]) -> None:
        chunk = members(batch, self.requests)
        self.journal.arm(batch)  # the nonce goes into the journal with create_started_at, before the call
        body: List[Any] = [{"custom_id": wire_id(r, batch), "params": r.params} for r in chunk]
        headers = create_headers(chunk)

        def attempt(_number: int) -> Any:
            if self._interrupted():
                raise Interrupted()
            # Journaled before sending: a crash inside the call makes the next run look for the batch.
            batch["create_started_at"] = time.time()
            self.journal.save()
            try:
                return self.client.messages.batches.create(requests=body, extra_headers=headers)
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
                raise Interrupted() from error
            ambiguous = batch["create_started_at"] is not None
            self.journal.save()
            raise error.derive(
                f"invoke_batch: creating the batch for {label(batch)} failed: {error}"
                + (
                    " (the connection failed after the request was sent, so the batch may exist; a re-run "
                    "with the same journal looks for it before submitting again)"
                    if ambiguous
                    else ""
                )
                + self.running_hint()
            ) from error
        batch["id"] = created.id
        batch["status"] = created.processing_status
        batch["request_counts"] = created.request_counts.model_dump()
        self.journal.data["state"] = "running"
        self.journal.save()
        logger.info("invoke_batch: created %s for %s", created.id, label(batch))

    # -- recovering the batch of a create call cut short

    def _cut_short(self) -> List[Dict[str, Any]]:
        """Entries whose create call started but recorded no batch id (a crash or an interrupt)."""
        return [b for b in self.journal.entries if b["id"] is None and b.get("create_started_at")]

    def _list_since(self, since: float) -> Dict[str, Any]:
        """The server's batches created at ``since`` (epoch seconds) or later, by id."""
        found: Dict[str, Any] = {}
        page = self.client.messages.batches.list(limit=LIST_PAGE_SIZE)
        pages = 1
        while True:  # newest first: page on (after_id) until the batches are older than the window
            older = False
            for b in page.data:
                if b.created_at.timestamp() < since:
                    older = True
                    break
                found[b.id] = b
            if older or not page.has_next_page():
                return found
            if pages >= LIST_MAX_PAGES:
                logger.warning(
                    "invoke_batch: stopped listing batches after %d pages while looking for the batch of "
                    "an interrupted create",
                    pages,
                )
                return found
            page = page.get_next_page()
            pages += 1

    def _watch(self, pending: List[Dict[str, Any]], listed: Dict[str, Any]) -> bool:
        """Add to each pending entry's ``candidates`` the listed batches that may be its batch:
        its size, created in its window, not known to the journal. Returns whether any was added."""
        known = {b["id"] for b in self.journal.entries if b["id"]}
        known.update(self.journal.foreign)
        added = False
        for entry in pending:
            started = float(entry["create_started_at"])
            low, high = started - CLOCK_SLACK_S, started + CREATE_SETTLE_S + CLOCK_SLACK_S
            watched = entry.setdefault("candidates", [])
            for b in listed.values():
                if b.id in known or b.id in watched or not low <= b.created_at.timestamp() <= high:
                    continue
                if sum(b.request_counts.model_dump().values()) != entry_size(entry):
                    continue
                watched.append(b.id)
                added = True
                logger.warning(
                    "invoke_batch: the previous create call for %s was cut short; %s (created at %s) may be its "
                    "batch: watching it until it ends, when its results tell (nothing is submitted meanwhile)",
                    label(entry),
                    b.id,
                    b.created_at.isoformat(),
                )
        return added

    def _info(self, batch_id: str, listed: Dict[str, Any]) -> Any:
        """The batch ``batch_id`` as listed, or retrieved; None when the server no longer has it."""
        if batch_id in listed:
            return listed[batch_id]
        try:
            return self.client.messages.batches.retrieve(batch_id)
        except anthropic.NotFoundError:
            return None

    def _owner(self, batch_id: str, pending: List[Dict[str, Any]]) -> tuple:
        """Whose is the ended batch ``batch_id``, read from the first line of its results:
        ``("ours", entry)`` for a pending entry's, ``("foreign", None)`` for another job's,
        ``("gone", None)`` when its results cannot be read (deleted, or past their 29 days)."""
        owners: Dict[str, Dict[str, Any]] = {}
        for entry in pending:
            owners.update({wire: entry for wire in wire_ids(entry, self.requests)})
        try:
            with self.client.messages.batches.with_streaming_response.results(batch_id) as response:
                for raw in response.iter_lines():
                    if raw.strip():
                        line = json.loads(raw)
                        owner = owners.get(str(line.get("custom_id"))) if isinstance(line, dict) else None
                        return ("ours", owner) if owner is not None else ("foreign", None)
        except anthropic.NotFoundError:
            return "gone", None
        return "foreign", None  # no result line: it holds none of this job's requests

    def recover(self) -> List[Dict[str, Any]]:
        """One recovery pass over the entries whose create was cut short: watch the candidates,
        take over the batch that turns out to be an entry's own, drop the foreign ones. Returns
        the entries proven to have no batch (each gets a new nonce and is created again)."""
        pending = self._cut_short()
        if not pending:
            return []
        listed = self._list_since(min(float(b["create_started_at"]) for b in pending) - CLOCK_SLACK_S)
        changed = self._watch(pending, listed)
        for batch_id in sorted({c for entry in pending for c in entry.get("candidates") or ()}):
            info = self._info(batch_id, listed)
            if info is not None and info.processing_status != "ended":
                continue  # its results (and so whose it is) are readable once it has ended
            verdict, owner = ("gone", None) if info is None else self._owner(batch_id, pending)
            for entry in pending:
                if batch_id in (entry.get("candidates") or ()):
                    entry["candidates"].remove(batch_id)
            changed = True
            if owner is not None:
                self._take_over(owner, info)
                pending.remove(owner)
            elif verdict == "foreign":
                self.journal.foreign.append(batch_id)
                logger.info("invoke_batch: %s holds another job's requests; not this job's batch", batch_id)
            else:
                logger.warning("invoke_batch: %s is gone or its results are; it is not watched any more", batch_id)
        again = []
        for entry in pending:
            settled = time.time() >= float(entry["create_started_at"]) + CREATE_SETTLE_S
            if entry.get("candidates") or not settled:
                continue
            logger.warning(
                "invoke_batch: the previous create call for %s made no batch; submitting them again", label(entry)
            )
            entry.update(create_started_at=None, nonce=new_nonce(), candidates=[])
            again.append(entry)
            changed = True
        if changed:
            self.journal.save()
        return again

    def _take_over(self, batch: Dict[str, Any], info: Any) -> None:
        """Record ``info``, proven by its results to be ``batch``'s, as that entry's batch."""
        batch["id"] = info.id
        batch["status"] = info.processing_status
        batch["request_counts"] = info.request_counts.model_dump()
        batch["seen"] = True
        batch["adopted"] = True
        batch["candidates"] = []
        self.journal.data["state"] = "running"
        self.journal.save()
        logger.warning(
            "invoke_batch: %s (created at %s) holds the requests of %s: it is the batch of the create call that "
            "was cut short; collecting it instead of submitting again",
            info.id,
            info.created_at.isoformat(),
            label(batch),
        )

    def note_interrupted_creates(self) -> List[Dict[str, Any]]:
        """After an interrupt: journal the batches a create call cut short may have made (they are
        watched by the next run, never canceled: they cannot be told from another job's batch until
        they end). Returns the entries concerned; ``[]`` when there are none."""
        pending = self._cut_short()
        if pending:
            try:
                listed = self._list_since(min(float(b["create_started_at"]) for b in pending) - CLOCK_SLACK_S)
            except Exception as exc:  # never let the lookup hide the interrupt
                logger.warning("invoke_batch: could not list batches after the interrupt: %s", _translate(exc))
            else:
                self._watch(pending, listed)
            self.journal.save()
        return pending

    def _reset_foreign(self, batch: Dict[str, Any]) -> None:
        """A batch adopted without proof (by an earlier version of the library) held none of this
        entry's requests: forget it and submit again."""
        foreign = batch["id"]
        self.journal.foreign.append(foreign)
        batch.update(
            id=None,
            status="pending",
            request_counts=None,
            seen=False,
            cancel_requested=False,
            results_fetched=False,
            create_started_at=None,
            adopted=False,
            nonce=None,
            candidates=[],
        )
        self.journal.save()
        logger.warning(
            "invoke_batch: %s, taken over after an interrupted create, holds none of %s (it belongs to "
            "another job); submitting them again",
            foreign,
            label(batch),
        )

    # -- polling

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
                raise Interrupted() from error
            raise ClaudeInvocationError(
                f"invoke_batch: batch {batch['id']} was not found ({label(batch)}); it may have "
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
        wanted = wire_ids(batch, self.requests)  # custom_id as sent -> the request's own custom_id
        fetched: Dict[str, Any] = {}
        unknown = 0
        # The raw JSONL lines: the journal stores the API's result objects as they came, and
        # skipping the SDK's typed models halves the parsing time of large batches.
        with self.client.messages.batches.with_streaming_response.results(batch["id"]) as response:
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                custom_id = wanted.get(str(line.get("custom_id"))) if isinstance(line, dict) else None
                result = line.get("result") if isinstance(line, dict) else None
                if custom_id is None or not isinstance(result, dict):
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
        for r in members(batch, self.requests):
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

    def cancel_all(self) -> Dict[str, List[str]]:
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

    def running_hint(self) -> str:
        running = [b["id"] for b in self.journal.entries if b["id"] and not b["results_fetched"]]
        if not running:
            return ""
        return f"; batches {', '.join(running)} are running: {resume_hint(self.journal)}"

    # -- progress

    def snapshot(self) -> BatchProgress:
        entries = self.journal.entries
        # Each request counts once in the totals, under the latest batch that holds it.
        latest: Dict[int, int] = {}
        for n, b in enumerate(entries):
            for r in members(b, self.requests):
                latest[r.index] = n
        rows = []
        totals = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
        for n, b in enumerate(entries):
            if b["results_fetched"]:
                counts = dict(processing=0, succeeded=0, errored=0, canceled=0, expired=0)
                for kind, k in (b.get("result_counts") or {}).items():
                    counts[kind if kind in counts else "errored"] += int(k)
                for r in members(b, self.requests):
                    if latest[r.index] == n:
                        kind = self.journal.results.get(r.custom_id, {}).get("type")
                        totals[kind if kind in totals else "errored"] += 1
                        if not b.get("result_counts"):  # journals written before result_counts
                            counts[kind if kind in counts else "errored"] += 1
            else:
                # Unfetched: no later retry exists yet (a round starts once every batch is fetched).
                counts = counts_of(b)
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

    def _poll_failed(self, exc: BaseException, what: str) -> None:
        """A polling call failed: raise when the failure is permanent, else log (the next pass retries)."""
        error = _translate(exc)
        if not error.transient:
            raise ClaudeInvocationError(
                f"invoke_batch: {what} failed: {error}{self.running_hint()}",
                kind=error.kind,
                status_code=error.status_code,
                details=error.details,
                request_id=error.request_id,
            ) from exc
        logger.warning("invoke_batch: %s failed (%s); will retry", what, error)

    def run(self) -> None:
        """Create missing batches, poll until every batch's results are fetched."""
        journal = self.journal
        while True:
            try:
                self.recover()
            except _POLL_ERRORS as exc:
                self._poll_failed(exc, "looking for the batch of a create call cut short")
            # Every pass: an entry reset after a recovery (or a foreign adoption) is submitted again.
            for batch in journal.entries:
                if batch["id"] is None and not batch.get("create_started_at"):
                    self._create(batch)
            if self._interrupted():
                raise Interrupted()
            for batch in journal.entries:
                if batch["results_fetched"] or batch["id"] is None:
                    continue
                try:
                    if batch["status"] != "ended":
                        self._retrieve(batch)
                    if batch["status"] == "ended":
                        self._fetch_results(batch)
                except _POLL_ERRORS as exc:
                    self._poll_failed(exc, f"polling {batch['id']}")
            self._report()
            if journal.all_fetched():
                return
            wait = self.poll_interval
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut()
                wait = min(wait, left)
            self._sleep(wait)
