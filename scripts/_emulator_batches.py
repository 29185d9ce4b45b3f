"""The emulator's Message Batches endpoints: create, retrieve, list, cancel, delete and results.

Batches advance on the emulator clock (``batch_seconds_per_request`` per request; 24 h lifetime).
:class:`_BatchesMixin` is mixed into :class:`anthropic_emulator.Emulator`. Private to
:mod:`anthropic_emulator`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from _emulator_directives import _build_plan, _invalid_output, _prompt_and_groups
from _emulator_validation import _validate_messages_body
from _emulator_wire import _ApiError, _new_id, _rfc3339

if TYPE_CHECKING:
    from _emulator_messages import _Computed
    from _models import ModelInfo

_CUSTOM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BATCH_MAX_REQUESTS = 100_000
_BATCH_LIFETIME_S = 24 * 3600.0


@dataclass
class _BatchItem:
    custom_id: str
    params: Any
    result: dict[str, Any] | None = None


@dataclass
class _Batch:
    id: str
    created: float  # emulator clock (monotonic based)
    created_wall: float
    items: list[_BatchItem]
    spr: float
    cancel_at: float | None = None
    cancel_wall: float | None = None
    ended_at: float | None = None
    retrieves: int = 0
    done: int = 0
    results_base: str = ""
    counts: dict[str, int] = field(
        default_factory=lambda: {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    )


class _BatchesMixin:
    """The batch handlers of :class:`anthropic_emulator.Emulator` (its lock, settings and clock)."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _settings: dict[str, Any]
        _batches: dict[str, _Batch]

        def _now(self) -> float: ...
        def _wall(self) -> float: ...
        def _base_headers(self, request: web.Request) -> dict[str, str]: ...
        async def _json_body(self, request: web.Request) -> Any: ...
        def _admit_model(
            self, body: dict[str, Any], betas: str = "", *, batch: bool = False, count_tokens: bool = False
        ) -> ModelInfo: ...
        def _compute(
            self,
            body: dict[str, Any],
            prompt: str,
            plan: Any,
            info: ModelInfo,
            *,
            service_tier: str = "standard",
            default_ttl: float | None = None,
        ) -> _Computed: ...
        def _commit_cache(self, comp: _Computed) -> None: ...
        def _message_json(self, body: dict[str, Any], comp: _Computed, msg_id: str) -> dict[str, Any]: ...

    def _batch_json(self, b: _Batch, wall: float) -> dict[str, Any]:
        if b.ended_at is not None:
            status = "ended"
        elif b.cancel_at is not None:
            status = "canceling"
        else:
            status = "in_progress"
        ended_wall = None if b.ended_at is None else b.created_wall + (b.ended_at - b.created)
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": dict(b.counts),
            "created_at": _rfc3339(b.created_wall),
            "expires_at": _rfc3339(b.created_wall + _BATCH_LIFETIME_S),
            "ended_at": None if ended_wall is None else _rfc3339(ended_wall),
            "cancel_initiated_at": None if b.cancel_wall is None else _rfc3339(b.cancel_wall),
            "archived_at": None,
            "results_url": f"{b.results_base}/v1/messages/batches/{b.id}/results" if status == "ended" else None,
        }

    def _batch_item_result(self, item: _BatchItem) -> dict[str, Any]:
        """Process one batch request (call with the lock held)."""
        params = item.params
        try:
            _validate_messages_body(params)
            if params.get("stream") is True:
                raise _ApiError(400, "stream: streaming is not supported in message batches")
            info = self._admit_model(params, batch=True)  # each request is validated when it is processed
            prompt, groups = _prompt_and_groups(params)
            plan = _build_plan(groups, 1, {**self._settings, "ttft_ms": 0, "chunk_delay_ms": 0})
            plan.invalid_output = _invalid_output(params, [], 1)
            comp = self._compute(params, prompt, plan, info, service_tier="batch")
        except _ApiError as err:
            return {
                "type": "errored",
                "error": {"type": "error", "error": {"type": err.error_type, "message": err.message}},
            }
        if plan.batch == "expired":
            return {"type": "expired"}
        if plan.batch == "errored" or plan.fail is not None:
            failure = _ApiError(plan.fail if plan.fail is not None else 500)
            return {
                "type": "errored",
                "error": {"type": "error", "error": {"type": failure.error_type, "message": failure.message}},
            }
        self._commit_cache(comp)
        return {"type": "succeeded", "message": self._message_json(params, comp, _new_id("msg_emu_"))}

    def _advance_batch(self, b: _Batch, now: float) -> None:
        """Bring a batch up to the emulator clock ``now`` (call with the lock held)."""
        if b.ended_at is not None:
            return
        n = len(b.items)
        cancel_done = None if b.cancel_at is None else b.cancel_at + b.spr
        expiry = b.created + _BATCH_LIFETIME_S
        while b.done < n:
            due = b.created + (b.done + 1) * b.spr
            if due > now or due > expiry or (cancel_done is not None and due > cancel_done):
                break
            item = b.items[b.done]
            item.result = self._batch_item_result(item)
            b.counts["processing"] -= 1
            b.counts[item.result["type"]] += 1
            b.done += 1
        if b.done == n:
            b.ended_at = min(now, b.created + n * b.spr)
            return
        for limit, kind in ((cancel_done, "canceled"), (expiry, "expired")):
            if limit is not None and now >= limit:
                for item in b.items[b.done :]:
                    item.result = {"type": kind}
                    b.counts["processing"] -= 1
                    b.counts[kind] += 1
                b.done = n
                b.ended_at = limit
                return

    def _get_batch(self, request: web.Request) -> _Batch:
        b = self._batches.get(request.match_info["id"])
        if b is None:
            raise _ApiError(404, f"Message batch {request.match_info['id']!r} not found")
        return b

    async def _h_batch_create(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise _ApiError(400, "body: Input should be a valid dictionary")
        reqs = body.get("requests")
        if "requests" not in body:
            raise _ApiError(400, "requests: Field required")
        if not isinstance(reqs, list) or not reqs:
            raise _ApiError(400, "requests: at least one request is required")
        if len(reqs) > _BATCH_MAX_REQUESTS:
            raise _ApiError(400, f"requests: at most {_BATCH_MAX_REQUESTS} requests are allowed, got {len(reqs)}")
        seen: set[str] = set()
        items: list[_BatchItem] = []
        for i, r in enumerate(reqs):
            if not isinstance(r, dict):
                raise _ApiError(400, f"requests.{i}: Input should be a valid dictionary")
            cid = r.get("custom_id")
            if not isinstance(cid, str) or not _CUSTOM_ID_RE.match(cid):
                raise _ApiError(400, f"requests.{i}.custom_id: expected 1-64 characters of [A-Za-z0-9_-], got {cid!r}")
            if cid in seen:
                raise _ApiError(
                    400,
                    f"requests.{i}.custom_id: duplicate custom_id {cid!r}; custom_id must be unique within the batch",
                )
            seen.add(cid)
            if not isinstance(r.get("params"), dict):
                raise _ApiError(400, f"requests.{i}.params: Field required")
            items.append(_BatchItem(custom_id=cid, params=r["params"]))
        with self._lock:
            b = _Batch(
                id=_new_id("msgbatch_emu_"),
                created=self._now(),
                created_wall=self._wall(),
                items=items,
                spr=float(self._settings["batch_seconds_per_request"]),
                results_base=f"{request.scheme}://{request.host}",
            )
            b.counts["processing"] = len(items)
            self._batches[b.id] = b
            out = self._batch_json(b, self._wall())
            delay_ms = float(self._settings["batch_create_delay_ms"])
        if delay_ms > 0:  # the batch exists; the answer is late (a client cut off here never learns its id)
            await asyncio.sleep(delay_ms / 1000)
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_retrieve(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            b.retrieves += 1
            if b.retrieves <= int(self._settings["batch_retrieve_404_times"]):
                raise _ApiError(404, f"Message batch {b.id!r} not found")
            self._advance_batch(b, self._now())
            out = self._batch_json(b, self._wall())
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_list(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise _ApiError(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _ApiError(400, "limit: Input should be between 1 and 1000")
        with self._lock:
            now, wall = self._now(), self._wall()
            ordered = list(reversed(list(self._batches.values())))  # newest first
            ids = [b.id for b in ordered]
            if q.get("after_id"):
                if q["after_id"] not in ids:
                    raise _ApiError(400, "after_id: unknown batch id")
                ordered = ordered[ids.index(q["after_id"]) + 1 :]
                page = ordered[:limit]
                has_more = len(ordered) > limit
            elif q.get("before_id"):
                if q["before_id"] not in ids:
                    raise _ApiError(400, "before_id: unknown batch id")
                ordered = ordered[: ids.index(q["before_id"])]
                page = ordered[-limit:]
                has_more = len(ordered) > limit
            else:
                page = ordered[:limit]
                has_more = len(ordered) > limit
            data = []
            for b in page:
                self._advance_batch(b, now)
                data.append(self._batch_json(b, wall))
        out = {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_cancel(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            now = self._now()
            self._advance_batch(b, now)
            if b.ended_at is None and b.cancel_at is None:
                b.cancel_at = now
                b.cancel_wall = self._wall()
            out = self._batch_json(b, self._wall())
        return web.json_response(out, headers=self._base_headers(request))

    async def _h_batch_delete(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            self._advance_batch(b, self._now())
            if b.ended_at is None:
                raise _ApiError(400, "Message batch must have ended before it can be deleted; cancel it first.")
            del self._batches[b.id]
        return web.json_response({"id": b.id, "type": "message_batch_deleted"}, headers=self._base_headers(request))

    async def _h_batch_results(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get_batch(request)
            self._advance_batch(b, self._now())
            if b.ended_at is None:
                raise _ApiError(404, f"Results of message batch {b.id!r} are not available until it has ended")
            # A deterministic order that differs from the submission order.
            items = sorted(b.items, key=lambda it: hashlib.sha256(it.custom_id.encode()).hexdigest())
            lines = [
                json.dumps({"custom_id": it.custom_id, "result": it.result}, separators=(",", ":")) for it in items
            ]
        headers = self._base_headers(request)
        return web.Response(body=("\n".join(lines) + "\n").encode(), headers=headers, content_type="application/binary")


# ---------------------------------------------------------------------- command line
