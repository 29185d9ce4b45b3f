"""The emulator's ``POST /v1/messages`` and ``/v1/messages/count_tokens``: usage, prompt cache, JSON and SSE.

:class:`_MessagesMixin` is mixed into :class:`anthropic_emulator.Emulator`. Private to
:mod:`anthropic_emulator`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from aiohttp import web

from _emulator_directives import _build_plan, _fingerprint, _global_groups, _invalid_output, _Plan, _prompt_and_groups
from _emulator_limits import _Bucket, _Charge
from _emulator_rules import (
    BINDING_BETA,
    binding_behaviour,
    check_model_rules,
    model_tag,
    resolve_model,
    thinking_mode,
)
from _emulator_thinking import ThinkingSigner, prefix_digests, summary_text, thinking_block
from _emulator_tokens import _block_tokens, _breakpoints, tokenizer_ratio
from _emulator_tools import _reply
from _emulator_validation import _validate_messages_body
from _emulator_wire import _REC_KEY, RequestRecord, _ApiError, _json_fragments, _new_id, _sse
from _models import ModelInfo

#: ``stop_details.explanation`` of a ``[[refuse category=...]]`` reply (null category: no explanation).
REFUSAL_EXPLANATIONS: dict[str, str] = {
    "cyber": "This request was declined because it could enable cyber harm.",
    "bio": "This request was declined because it could enable biological harm.",
    "frontier_llm": "This request was declined because it could assist the development of competing AI models.",
    "reasoning_extraction": "This request was declined because it asks for the model's internal reasoning.",
    "general_harms": "This request was declined because it relates to an area determined as harmful.",
}


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
    has_text: bool = True  # the reply has a text block (possibly empty) between thinking and the blocks
    thinking: dict[str, Any] | None = None  # the signed thinking block the reply starts with
    thinking_tokens: int = 0
    stop_details: dict[str, Any] | None = None
    bound_to: tuple[str, bytes] | None = None  # (model tag, transcript prefix) the thinking block is signed for
    ratio: Fraction = Fraction(1)  # the model's tokenizer factor
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
        _thinking: ThinkingSigner

        def _now(self) -> float: ...
        def _base_headers(self, request: web.Request) -> dict[str, str]: ...
        async def _json_body(self, request: web.Request) -> Any: ...
        def _rate_limit_check(self, model: str, comp: _Charge, max_tokens: int) -> _ApiError | None: ...
        def _settle(self, comp: _Charge, output_tokens: int) -> None: ...

    def _admit_model(
        self, body: dict[str, Any], betas: str = "", *, batch: bool = False, count_tokens: bool = False
    ) -> ModelInfo:
        """The model of a valid body, after its rules and the thinking round trip (404 / 400 otherwise)."""
        with self._lock:
            extra = self._settings["extra_models"]
        info = resolve_model(body["model"], extra)
        check_model_rules(body, info, betas=betas, batch=batch, count_tokens=count_tokens)
        beta = BINDING_BETA in betas
        drop = beta and binding_behaviour(body) == "drop_block"
        with self._lock:
            self._thinking.check(body, model_tag(info), drop_mismatch=drop, binding_beta=beta)
        return info

    def _compute(
        self,
        body: dict[str, Any],
        prompt: str,
        plan: _Plan,
        info: ModelInfo,
        *,
        service_tier: str = "standard",
        default_ttl: float | None = None,
    ) -> _Computed:
        """Reply, thinking, usage and the cache lookup (call with the lock held)."""
        ratio = tokenizer_ratio(info)
        max_tokens = body["max_tokens"]
        mode = None if plan.refuse else thinking_mode(body, info, plan.think)
        think = min(mode.tokens, max_tokens) if mode is not None else 0
        stop_details: dict[str, Any] | None = None
        blocks: list[dict[str, Any]] = []
        if plan.refuse:
            reply, stop_reason = "", "refusal"
            stop_details = {
                "type": "refusal",
                "category": plan.category,
                "explanation": REFUSAL_EXPLANATIONS.get(plan.category or ""),
            }
        else:
            reply, blocks, stop_reason = _reply(body, prompt, plan, self._scripts)
        words = reply.split()
        if plan.words is not None and not blocks and not plan.refuse:
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
        if plan.stop is not None and not plan.refuse:
            words, blocks = words[: (len(words) + 1) // 2], []
            stop_reason, stop_sequence = plan.stop, None
        thinking_only = mode is not None and think >= max_tokens
        if thinking_only:
            words, blocks = [], []
            stop_reason, stop_sequence = "max_tokens", None
        elif len(words) > max_tokens - think:
            words, blocks = words[: max_tokens - think], []
            stop_reason, stop_sequence = "max_tokens", None
        out_tokens = think + len(words)
        for i, block in enumerate(blocks):
            out_tokens += _block_tokens(block, ratio)
            if out_tokens > max_tokens:  # a tool block that does not fit is cut with the rest
                out_tokens -= _block_tokens(block, ratio)
                blocks = blocks[:i]
                stop_reason, stop_sequence = "max_tokens", None
                break
        comp = self._usage(body, info, ratio, out_tokens, service_tier)
        comp.words, comp.blocks, comp.stop_reason = words, blocks, stop_reason
        comp.stop_sequence = stop_sequence
        comp.has_text = not plan.refuse and not thinking_only and (bool(words) or not blocks)
        comp.thinking_tokens, comp.stop_details, comp.ratio = think, stop_details, ratio
        comp.usage["output_tokens_details"] = {"thinking_tokens": think}
        if mode is not None:
            tag, prefix = model_tag(info), prefix_digests(body)[-1]
            summary = summary_text(prompt) if mode.display == "summarized" else None
            comp.thinking = thinking_block(self._thinking, tag, prefix, summary)
            comp.bound_to = (tag, prefix)
        return comp

    def _usage(
        self, body: dict[str, Any], info: ModelInfo, ratio: Fraction, out_tokens: int, service_tier: str
    ) -> _Computed:
        """Input usage and the cache lookup of a request (call with the lock held)."""
        model = body["model"]
        total, bps = _breakpoints(body, model, ratio)
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
            minimum = info.min_cache_tokens
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
            words=[],
            stop_reason="end_turn",
            stop_sequence=None,
            usage=usage,
            pending_writes=[(k, ttl, t) for k, t, ttl in writes],
            read_tokens=read_tokens,
            creation_tokens=creation,
            hit_key=bps[read_idx][0] if read_idx >= 0 else None,
        )

    def _commit_cache(self, comp: _Computed) -> None:
        """The response began: the request's cache writes become readable and its thinking block is
        remembered for the round-trip check (call with the lock held)."""
        if comp.bound_to is not None:
            self._thinking.remember(comp.bound_to[0], comp.bound_to[1], self._content(comp))
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
        info = self._admit_model(body, request.headers.get("anthropic-beta", ""))
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
            comp = self._compute(body, prompt, plan, info)
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

    @staticmethod
    def _content(comp: _Computed) -> list[dict[str, Any]]:
        """The reply's content blocks: thinking, text, then tool / server-tool blocks."""
        out = [dict(comp.thinking)] if comp.thinking is not None else []
        if comp.has_text:
            out.append({"type": "text", "text": " ".join(comp.words)})
        return out + [dict(b) for b in comp.blocks]

    def _message_json(self, body: dict[str, Any], comp: _Computed, msg_id: str) -> dict[str, Any]:
        return {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": self._content(comp),
            "stop_reason": comp.stop_reason,
            "stop_sequence": comp.stop_sequence,
            "stop_details": comp.stop_details,
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
        start_usage["output_tokens"] = 1 if comp.words or comp.blocks or comp.thinking else 0
        start_usage["cache_creation"] = dict(comp.usage["cache_creation"])
        start_usage["output_tokens_details"] = {"thinking_tokens": 0}
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
                        "stop_details": None,
                        "usage": start_usage,
                    },
                },
            )
        )
        with self._lock:
            self._commit_cache(comp)
        has_text = comp.has_text
        text_index = 0 if comp.thinking is None else 1
        head = b""
        sent = 0
        if comp.thinking is not None:
            head = self._thinking_events(comp.thinking)
            sent = comp.thinking_tokens
        if has_text:
            head += _sse(
                "content_block_start",
                {"type": "content_block_start", "index": text_index, "content_block": {"type": "text", "text": ""}},
            )
        await resp.write(head + _sse("ping", {"type": "ping"}))
        words = comp.words
        n = len(words)
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
                    {"type": "content_block_delta", "index": text_index, "delta": {"type": "text_delta", "text": text}},
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
            tail = _sse("content_block_stop", {"type": "content_block_stop", "index": text_index}) if has_text else b""
            for index, block in enumerate(comp.blocks, start=text_index + 1 if has_text else text_index):
                tail += self._block_events(index, block)
                sent += _block_tokens(block, comp.ratio)
            with self._lock:  # recorded before the client can see message_stop and read the log
                rec.usage = final
                self._settle(comp, final["output_tokens"])
            await resp.write(
                tail
                + _sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": comp.stop_reason,
                            "stop_sequence": comp.stop_sequence,
                            "stop_details": comp.stop_details,
                        },
                        "usage": {
                            "input_tokens": final["input_tokens"],
                            "cache_creation_input_tokens": final["cache_creation_input_tokens"],
                            "cache_read_input_tokens": final["cache_read_input_tokens"],
                            "output_tokens": final["output_tokens"],
                            "output_tokens_details": final["output_tokens_details"],
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
    def _thinking_events(block: dict[str, Any]) -> bytes:
        """SSE events of the thinking block (index 0): empty start, its text, then the signature."""
        start = {"type": "thinking", "thinking": "", "signature": ""}
        out = _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start})
        for delta in (
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ):
            out += _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        return out + _sse("content_block_stop", {"type": "content_block_stop", "index": 0})

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
        info = self._admit_model(body, request.headers.get("anthropic-beta", ""), count_tokens=True)
        total, _bps = _breakpoints(body, body["model"], tokenizer_ratio(info))
        return web.json_response({"input_tokens": total}, headers=self._base_headers(request))
