"""The emulator's ``POST /v1/messages`` and ``/v1/messages/count_tokens``: usage, prompt cache, JSON and SSE.

:class:`_MessagesMixin` is mixed into :class:`anthropic_emulator.Emulator`. Private to
:mod:`anthropic_emulator`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from _emulator_directives import _build_plan, _fingerprint, _global_groups, _invalid_output, _Plan, _prompt_and_groups
from _emulator_limits import _Bucket, _Charge
from _emulator_tokens import _block_tokens, _breakpoints, _model_min_tokens
from _emulator_tools import _reply
from _emulator_validation import _validate_messages_body
from _emulator_wire import _REC_KEY, RequestRecord, _ApiError, _json_fragments, _new_id, _sse


@dataclass
class _CacheEntry:
    expires: float
    ttl: float
    tokens: int


@dataclass
class _Computed:
    """Reply, usage and pending cache writes of one admitted message request."""

    words: list[str]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]
    pending_writes: list[tuple[str, float, int]]
    read_tokens: int
    creation_tokens: int
    blocks: list[dict[str, Any]] = field(default_factory=list)  # non-text content blocks after the text
    hit_key: str | None = None
    otpm: _Bucket | None = None  # the OTPM bucket charged max_tokens at admission (refunded at the end)
    otpm_charged: int = 0


class _MessagesMixin:
    """The message handlers of :class:`anthropic_emulator.Emulator` (its lock, settings, cache and log)."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _settings: dict[str, Any]
        _scripts: dict[str, str | list[dict[str, Any]]]
        _cache: dict[str, _CacheEntry]
        _cache_counts: dict[str, int]
        _attempts: dict[str, int]
        _active: set[int]
        _peak: int
        _global_groups_cache: tuple[str, list[dict[str, str]]]

        def _now(self) -> float: ...
        def _base_headers(self, request: web.Request) -> dict[str, str]: ...
        async def _json_body(self, request: web.Request) -> Any: ...
        def _rate_limit_check(self, model: str, comp: _Charge, max_tokens: int) -> _ApiError | None: ...
        def _settle(self, comp: _Charge, output_tokens: int) -> None: ...

    def _compute(
        self,
        body: dict[str, Any],
        prompt: str,
        plan: _Plan,
        *,
        service_tier: str = "standard",
        default_ttl: float | None = None,
    ) -> _Computed:
        """Reply words, usage and the cache lookup (call with the lock held)."""
        reply, blocks, stop_reason = _reply(body, prompt, plan, self._scripts)
        words = reply.split()
        if plan.words is not None and not blocks:
            words = [words[i % len(words)] for i in range(plan.words)] if words else []
        stop_sequence = None
        stops = [seq for seq in body.get("stop_sequences") or [] if seq]
        if stops and words:
            text = " ".join(words)
            hits = [(text.find(seq), seq) for seq in stops if seq in text]
            if hits:
                idx, stop_sequence = min(hits)
                words = text[:idx].split()
                stop_reason = "stop_sequence"
        if len(words) > body["max_tokens"]:
            words, blocks = words[: body["max_tokens"]], []
            stop_reason, stop_sequence = "max_tokens", None
        out_tokens = len(words)
        for i, block in enumerate(blocks):
            out_tokens += _block_tokens(block)
            if out_tokens > body["max_tokens"]:  # a tool block that does not fit is cut with the rest
                out_tokens -= _block_tokens(block)
                blocks = blocks[:i]
                stop_reason, stop_sequence = "max_tokens", None
                break
        model = body["model"]
        total, bps = _breakpoints(body, model)
        now = self._now()
        read_tokens = 0
        read_idx = -1
        for i in range(len(bps) - 1, -1, -1):
            entry = self._cache.get(bps[i][0])
            if entry is not None and entry.expires > now:  # refreshed by _commit_cache once admitted
                read_tokens, read_idx = entry.tokens, i
                break
        minimum = self._settings["cache_min_tokens"]
        if minimum is None:
            minimum = _model_min_tokens(model)
        writes = [bp for bp in bps[read_idx + 1 :] if bp[1] >= minimum and bp[1] > read_tokens]
        split = {300.0: 0, 3600.0: 0}
        prev = read_tokens
        for _key, tokens, ttl in writes:
            split[ttl] = split.get(ttl, 0) + tokens - prev
            prev = tokens
        creation = prev - read_tokens
        usage = {
            "input_tokens": total - read_tokens - creation,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": split[300.0], "ephemeral_1h_input_tokens": split[3600.0]},
            "service_tier": service_tier,
        }
        return _Computed(
            words=words,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=usage,
            pending_writes=[(k, ttl, t) for k, t, ttl in writes],
            read_tokens=read_tokens,
            creation_tokens=creation,
            blocks=blocks,
            hit_key=bps[read_idx][0] if read_idx >= 0 else None,
        )

    def _commit_cache(self, comp: _Computed) -> None:
        """The response began: the request's cache writes become readable (call with the lock held)."""
        now = self._now()
        hit = self._cache.get(comp.hit_key) if comp.hit_key is not None else None
        if hit is not None and hit.expires > now:
            hit.expires = max(hit.expires, now + hit.ttl)
        for key, ttl, tokens in comp.pending_writes:
            entry = self._cache.get(key)
            if entry is not None and entry.expires > now:
                entry.expires = max(entry.expires, now + ttl)
                entry.ttl = max(entry.ttl, ttl)
            else:
                self._cache[key] = _CacheEntry(expires=now + ttl, ttl=ttl, tokens=tokens)
        if comp.creation_tokens:
            self._cache_counts["writes"] += 1
            self._cache_counts["write_tokens"] += comp.creation_tokens
        if comp.read_tokens:
            self._cache_counts["reads"] += 1
            self._cache_counts["read_tokens"] += comp.read_tokens

    async def _h_messages(self, request: web.Request) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        body = await self._json_body(request)
        _validate_messages_body(body)
        prompt, groups = _prompt_and_groups(body)
        fp = _fingerprint(body)
        with self._lock:
            attempt = self._attempts.get(fp, 0) + 1
            self._attempts[fp] = attempt
            rec.attempt = attempt
            rec.prompt = prompt
            spec = self._settings["directives"]
            if self._global_groups_cache[0] != spec:
                self._global_groups_cache = (spec, _global_groups(spec))
            plan = _build_plan(self._global_groups_cache[1] + groups, attempt, self._settings)
            plan.invalid_output = _invalid_output(body, self._global_groups_cache[1], attempt)
            ping_every = int(self._settings["ping_every"] or 0)
        if plan.fail is not None:
            headers: dict[str, str] = {}
            if plan.fail == 429:
                headers["retry-after"] = plan.retry_after or "1"
            elif plan.retry_after is not None:
                headers["retry-after"] = plan.retry_after
            if plan.retry_after_ms is not None:
                headers["retry-after-ms"] = plan.retry_after_ms
            if plan.should_retry is not None:
                headers["x-should-retry"] = plan.should_retry
            raise _ApiError(plan.fail, headers=headers)
        with self._lock:
            comp = self._compute(body, prompt, plan)
            limited = self._rate_limit_check(body["model"], comp, body["max_tokens"])
            if limited is None:
                self._active.add(rec.seq)
                self._peak = max(self._peak, len(self._active))
        if limited is not None:
            raise limited
        if plan.ttft_ms > 0:
            await asyncio.sleep(plan.ttft_ms / 1000)
        if body.get("stream") is True:
            return await self._stream(request, body, plan, comp, ping_every)
        return await self._non_stream(request, body, plan, comp)

    def _message_json(self, body: dict[str, Any], comp: _Computed, msg_id: str) -> dict[str, Any]:
        text = [{"type": "text", "text": " ".join(comp.words)}] if comp.words or not comp.blocks else []
        return {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": text + [dict(b) for b in comp.blocks],
            "stop_reason": comp.stop_reason,
            "stop_sequence": comp.stop_sequence,
            "usage": comp.usage,
        }

    async def _non_stream(
        self, request: web.Request, body: dict[str, Any], plan: _Plan, comp: _Computed
    ) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        try:
            if plan.stall_after is not None:
                await asyncio.Event().wait()  # until the client leaves (the task is cancelled)
            if plan.error_after is not None:
                raise _ApiError(529)
            if plan.delay_ms > 0 and comp.words:
                await asyncio.sleep(plan.delay_ms * len(comp.words) / 1000)
            msg = self._message_json(body, comp, _new_id("msg_emu_"))
            with self._lock:
                self._commit_cache(comp)
                self._settle(comp, comp.usage["output_tokens"])
                rec.usage = comp.usage
                rec.emitted_text = " ".join(comp.words)
                rec.status = 200
            return web.json_response(msg, headers=self._base_headers(request))
        finally:
            with self._lock:
                self._settle(comp, 0)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], plan: _Plan, comp: _Computed, ping_every: int
    ) -> web.StreamResponse:
        rec: RequestRecord = request[_REC_KEY]
        headers = self._base_headers(request)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        with self._lock:
            rec.status = 200
        await resp.prepare(request)
        start_usage = dict(comp.usage)
        start_usage["output_tokens"] = 1 if comp.words or comp.blocks else 0
        start_usage["cache_creation"] = dict(comp.usage["cache_creation"])
        msg_id = _new_id("msg_emu_")
        await resp.write(
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        )
        with self._lock:
            self._commit_cache(comp)
        has_text = bool(comp.words) or not comp.blocks
        if has_text:
            await resp.write(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                )
                + _sse("ping", {"type": "ping"})
            )
        else:
            await resp.write(_sse("ping", {"type": "ping"}))
        words = comp.words
        n = len(words)
        sent = 0
        delay = plan.delay_ms / 1000
        try:
            for i, word in enumerate(words):
                if plan.stall_after is not None and i >= plan.stall_after:
                    await self._stall(resp, plan)
                if plan.error_after is not None and i >= plan.error_after:
                    await self._stream_error(resp, rec)
                    return resp
                if delay > 0:
                    await asyncio.sleep(delay)
                text = word if i == n - 1 else word + " "
                chunk = _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                )
                if ping_every and (i + 1) % ping_every == 0:
                    chunk += _sse("ping", {"type": "ping"})
                await resp.write(chunk)
                sent += 1
                with self._lock:
                    rec.emitted_text += text
            if plan.stall_after is not None and plan.stall_after >= n:
                await self._stall(resp, plan)
            if plan.error_after is not None and plan.error_after >= n:
                await self._stream_error(resp, rec)
                return resp
            final = dict(comp.usage)
            tail = _sse("content_block_stop", {"type": "content_block_stop", "index": 0}) if has_text else b""
            for index, block in enumerate(comp.blocks, start=1 if has_text else 0):
                tail += self._block_events(index, block)
                sent += _block_tokens(block)
            with self._lock:  # recorded before the client can see message_stop and read the log
                rec.usage = final
                self._settle(comp, final["output_tokens"])
            await resp.write(
                tail
                + _sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": comp.stop_reason, "stop_sequence": comp.stop_sequence},
                        "usage": {
                            "input_tokens": final["input_tokens"],
                            "cache_creation_input_tokens": final["cache_creation_input_tokens"],
                            "cache_read_input_tokens": final["cache_read_input_tokens"],
                            "output_tokens": final["output_tokens"],
                        },
                    },
                )
                + _sse("message_stop", {"type": "message_stop"})
            )
            await resp.write_eof()
            return resp
        finally:
            with self._lock:
                self._settle(comp, sent)
                if rec.usage is None:
                    partial = dict(comp.usage)
                    partial["output_tokens"] = sent
                    rec.usage = partial

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> bytes:
        """SSE events of one non-text block: tool inputs arrive as input_json_delta fragments."""
        if block["type"] in ("tool_use", "server_tool_use"):
            out = _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
            )
            for piece in _json_fragments(block["input"]):
                out += _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        else:
            out = _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        return out + _sse("content_block_stop", {"type": "content_block_stop", "index": index})

    async def _stall(self, resp: web.StreamResponse, plan: _Plan) -> None:
        """Keep the connection open without progress until the client leaves (the task is cancelled)."""
        if plan.stall_pings:
            while True:
                await asyncio.sleep(plan.stall_pings / 1000)
                await resp.write(_sse("ping", {"type": "ping"}))
        await asyncio.Event().wait()

    async def _stream_error(self, resp: web.StreamResponse, rec: RequestRecord) -> None:
        with self._lock:
            rec.error_type = "overloaded_error"
        await resp.write(
            _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )
        await resp.write_eof()

    async def _h_count_tokens(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        _validate_messages_body(body, require_max_tokens=False)
        total, _bps = _breakpoints(body, body["model"])
        return web.json_response({"input_tokens": total}, headers=self._base_headers(request))
