"""A local, deterministic emulator of the Anthropic Messages API, for tests and benchmarks.

It speaks the same HTTP the official ``anthropic`` SDK speaks (JSON and server-sent-event
streaming on ``POST /v1/messages``, ``POST /v1/messages/count_tokens``, the Message Batches
endpoints and the Models API), so code under test runs unmodified with ``base_url`` pointed at it::

    import anthropic
    from anthropic_emulator import Emulator

    with Emulator(chunk_delay_ms=5) as emu:
        client = anthropic.Anthropic(api_key="sk-ant-test-key", base_url=emu.base_url)
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                     messages=[{"role": "user", "content": "hello"}])
        assert msg.content[0].text == "Echo: hello"
        assert emu.message_requests()[0].status == 200

Behaviour is driven globally through settings (constructor keywords, :meth:`Emulator.configure`,
command line flags) and per request through *directives* written in the text of the last user
message, e.g. ``"[[fail=529 times=2]] summarise this"`` (see :data:`DIRECTIVE_KEYS`).

Replies and token counts are a documented, deterministic function of the request:

* prompt = text of the last user message, directive groups removed, whitespace collapsed;
* reply = the scripted reply for the prompt (:meth:`Emulator.script`) or ``"Echo: " + prompt``;
  ``words=N`` (or the ``reply_words`` setting) cycles the reply's words to exactly N words;
  the reply is cut to ``max_tokens`` words (``stop_reason="max_tokens"``);
* one ``content_block_delta`` per word; output tokens = thinking tokens + words sent;
* tokens of a text = ``ceil(len(text) / 4)`` (times 1.3, rounded up, on new-tokenizer models:
  :func:`count_text_tokens` with a model); input tokens = tools + system + message blocks (other
  blocks, tool_use / tool_result included, count their compact JSON); output tokens = words sent + the
  compact JSON of tool blocks. ``"x"`` and ``[{"type": "text", "text": "x"}]`` are the same tokens and
  the same cache prefix (content or system).

Tool use: ``tool=NAME input=JSON`` directives (see :func:`tool_directive`) ask for client tools
(``stop_reason="tool_use"``, streamed as ``input_json_delta`` fragments) while the conversation holds
fewer than ``tool_turns`` tool_result turns; a last user turn of tool_result blocks is answered
``"Echo tool results: ID=TEXT; ID=TEXT (error)"``; ``pause_turns=N`` returns server-tool turns with
``stop_reason="pause_turn"``. Requests are validated like the API (tools, tool_choice, tool_use /
tool_result pairing, non-empty text). ``output_config.format`` (json_schema) replies with a minimal
instance of the schema (:func:`schema_instance`); ``invalid_output=N`` breaks the first N tries.

Today's API (version 2026-10-21), from the model catalogue (``_models``): a 404 ``model: <id>`` for
ids it lacks (the ``extra_models`` setting maps test ids to catalogued ones); 400s with the API's
texts for sampling parameters, prefill and forced ``tool_choice`` where the model refuses them,
thinking types and effort levels it lacks, ``max_tokens`` above its maximum; thinking on where the
model thinks by default (a signed ``thinking`` block first, thinking tokens by effort, counted in
``output_tokens`` and ``output_tokens_details``), and the round trip of those blocks checked on every
request; ``[[refuse]]`` and ``[[stop=model_context_window_exceeded]]`` directives.

Rate limits: ``rate_limit_requests`` / ``rate_limit_window_s`` (one global request bucket) and per
rate-limit pool (``ModelInfo.pool``) ``rate_limit_rpm`` / ``rate_limit_itpm`` / ``rate_limit_otpm``
buckets holding one "minute" (``rate_limit_minute_s`` seconds, default 60) of their limit, refilled
continuously on the emulator clock; ITPM charges input + cache-write tokens (not cache reads), OTPM
charges ``max_tokens`` at admission and refunds down to the real output at the end; a 429 carries ``retry-after``.

Run standalone with ``python -m anthropic_emulator --port 8080`` (``--help`` lists the flags).

The implementation is split into private modules (none imports this one back):
``_emulator_wire`` (errors, ids, the request record, SSE), ``_emulator_tokens`` (token counting,
cache prefixes), ``_emulator_validation`` (request shapes), ``_emulator_rules`` (the model's rules),
``_emulator_thinking`` (signatures, round-trip checks), ``_emulator_directives``, ``_emulator_tools``
(replies: tool use, structured output), ``_emulator_limits`` (rate limits), ``_emulator_messages``,
``_emulator_batches`` and ``_emulator_models`` (the endpoints, mixed into :class:`Emulator`). See
references/emulator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
import secrets
import signal
import sys
import threading
import time
import weakref
from typing import Any, Callable

from aiohttp import web

from _emulator_batches import _Batch, _BatchesMixin
from _emulator_directives import DIRECTIVE_KEYS, _global_groups, _split_directives
from _emulator_directives import tool_directive as tool_directive
from _emulator_limits import _Bucket, _RateLimitsMixin
from _emulator_messages import _CacheEntry, _MessagesMixin
from _emulator_models import _ModelsMixin
from _emulator_rules import check_extra_models
from _emulator_thinking import ThinkingSigner
from _emulator_tokens import count_text_tokens
from _emulator_tools import _check_script
from _emulator_tools import schema_instance as schema_instance
from _emulator_wire import _REC_KEY, _RID_KEY, RequestRecord, _ApiError, _new_id

__all__ = ["Emulator", "RequestRecord", "DEFAULT_SETTINGS", "DIRECTIVE_KEYS", "count_text_tokens", "main"]
# ``tool_directive`` and ``schema_instance`` (the ``as`` imports above) are importable from here too,
# though not in __all__: tests and references/emulator.md use them.


log = logging.getLogger(__name__)


DEFAULT_SETTINGS: dict[str, Any] = {
    "api_key": None,
    "ttft_ms": 0,
    "chunk_delay_ms": 0,
    "reply_words": None,
    "ping_every": 0,
    "rate_limit_requests": None,
    "rate_limit_window_s": 60.0,
    "max_concurrent": None,
    "directives": "",
    "cache_min_tokens": None,
    "batch_seconds_per_request": 0.01,
    "batch_retrieve_404_times": 0,
    "batch_create_delay_ms": 0,
    "rate_limit_rpm": None,
    "rate_limit_itpm": None,
    "rate_limit_otpm": None,
    "rate_limit_minute_s": 60.0,
    "extra_models": {},
}
"""Every setting with its default (constructor keywords, ``configure()``, CLI flags)."""


class Emulator(_MessagesMixin, _RateLimitsMixin, _BatchesMixin, _ModelsMixin):
    """The Anthropic Messages API on 127.0.0.1, on its own thread and event loop.

    Use as a context manager (or ``start()`` / ``stop()``)::

        with Emulator(ttft_ms=50) as emu:
            emu.configure(max_concurrent=10)
            emu.script("hello", "Hi there")
            ...  # point anthropic.Anthropic(base_url=emu.base_url) at it
            assert emu.wait_idle(timeout=5.0)
            print(emu.stats()["peak_concurrency"])

    Every public method is thread-safe and returns snapshots.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.host = host
        self.port = port
        self._initial = dict(DEFAULT_SETTINGS)
        self._initial.update(self._checked_settings(settings))
        _global_groups(self._initial["directives"])  # fail fast on a malformed spec
        self._settings = dict(self._initial)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clock_offset = 0.0
        self._thinking = ThinkingSigner(secrets.token_bytes(32))
        self._clear_state()

    # ------------------------------------------------------------------ settings and state

    @staticmethod
    def _checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise TypeError(f"unknown emulator setting(s) {unknown}; expected some of {sorted(DEFAULT_SETTINGS)}")
        for name in (
            "ttft_ms",
            "chunk_delay_ms",
            "ping_every",
            "batch_seconds_per_request",
            "batch_retrieve_404_times",
            "batch_create_delay_ms",
        ):
            if name in settings and (not isinstance(settings[name], (int, float)) or settings[name] < 0):
                raise ValueError(f"{name}: expected a number >= 0, got {settings[name]!r}")
        for name in ("reply_words", "rate_limit_requests", "max_concurrent", "cache_min_tokens"):
            v = settings.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name}: expected None or an integer >= 0, got {v!r}")
        for name in ("rate_limit_rpm", "rate_limit_itpm", "rate_limit_otpm"):
            v = settings.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}: expected None or an integer >= 1, got {v!r}")
        for name in ("rate_limit_window_s", "rate_limit_minute_s"):
            if name in settings:
                v = settings[name]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"{name}: expected a number > 0, got {v!r}")
        if "api_key" in settings and settings["api_key"] is not None and not isinstance(settings["api_key"], str):
            raise ValueError("api_key: expected None or a string")
        if "directives" in settings and not isinstance(settings["directives"], str):
            raise ValueError(f"directives: expected a string, got {type(settings['directives']).__name__}")
        if "extra_models" in settings:
            settings = {**settings, "extra_models": check_extra_models(settings["extra_models"])}
        return settings

    def _clear_state(self) -> None:
        self._records: list[RequestRecord] = []
        self._seq = 0
        self._attempts: dict[str, int] = {}
        self._scripts: dict[str, str | list[dict[str, Any]]] = {}
        self._cache: dict[str, _CacheEntry] = {}
        self._cache_counts = {"writes": 0, "reads": 0, "write_tokens": 0, "read_tokens": 0}
        self._active: set[int] = set()  # seq of admitted in-flight /v1/messages requests
        self._inflight: int = 0  # requests on any path being handled
        self._peak = 0
        self._rate_limited = 0
        self._connections = 0
        self._seen_transports: weakref.WeakSet[Any] = weakref.WeakSet()
        self._bucket: _Bucket | None = None
        self._bucket_key: tuple[Any, Any] | None = None
        # (model, "rpm" | "itpm" | "otpm") -> (limit, minute_s, bucket)
        self._model_buckets: dict[tuple[str, str], tuple[int, float, _Bucket]] = {}
        self._batches: dict[str, _Batch] = {}
        self._global_groups_cache: tuple[str, list[dict[str, str]]] = ("", [])
        self._thinking.clear()  # issued thinking turns are forgotten; signatures stay valid

    def configure(self, **settings: Any) -> None:
        """Change settings at run time, e.g. ``emu.configure(chunk_delay_ms=5, max_concurrent=10)``."""
        checked = self._checked_settings(settings)
        if "directives" in checked:
            _global_groups(checked["directives"])
        with self._lock:
            self._settings.update(checked)

    @property
    def settings(self) -> dict[str, Any]:
        """A copy of the current settings."""
        with self._lock:
            return dict(self._settings)

    def script(self, prompt: str, reply: str | list[dict[str, Any]] | None) -> None:
        """Answer ``reply`` to the exact (directive-stripped, whitespace-collapsed) ``prompt``; None removes it.

        ``reply`` is a text, or a list of content blocks: optional ``{"type": "text", "text": ...}`` blocks
        first (joined into one text block), then ``tool_use`` / ``server_tool_use`` blocks (``id``, ``name``,
        ``input`` dict) and server-tool result blocks (``type`` ending in ``_tool_result``). A reply holding
        tool_use blocks stops with ``tool_use`` while the conversation has fewer tool_result turns than
        ``tool_turns`` (default 1); after that the tool results are echoed. A malformed reply raises
        ValueError here. Tool names are checked against each request's ``tools`` (400 when absent).
        """
        checked = _check_script(reply)
        key = " ".join(_split_directives(prompt)[1].split())
        with self._lock:
            if checked is None:
                self._scripts.pop(key, None)
            else:
                self._scripts[key] = checked

    def script_tool_use(self, prompt: str, calls: list[tuple[str, dict[str, Any]]], *, text: str | None = None) -> None:
        """Script a tool-call turn for ``prompt``: one tool_use block per ``(name, input)``, after ``text``.

        Ids are deterministic (``toolu_emu_`` + a hash of the prompt, position and name).
        """
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for i, call in enumerate(calls):
            if not isinstance(call, tuple) or len(call) != 2:
                raise ValueError(f"calls[{i}]: expected a (name, input) tuple, got {call!r}")
            name, tool_input = call
            digest = hashlib.sha256(f"{prompt}|{i}|{name}".encode()).hexdigest()[:24]
            blocks.append({"type": "tool_use", "id": f"toolu_emu_{digest}", "name": name, "input": tool_input})
        self.script(prompt, blocks)

    def reset(self) -> None:
        """Clear logs, stats, cache, attempts, rate-limit state, scripts, batches and the clock offset;
        settings go back to their construction values."""
        with self._lock:
            active = set(self._active)
            inflight = self._inflight
            self._clear_state()
            self._active = active
            self._inflight = inflight
            self._peak = len(active)
            self._settings = dict(self._initial)
            self._clock_offset = 0.0

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward (cache TTLs, rate-limit windows, batch processing)."""
        if seconds < 0:
            raise ValueError(f"seconds: expected a number >= 0, got {seconds!r}")
        with self._lock:
            self._clock_offset += seconds

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _wall(self) -> float:
        return time.time() + self._clock_offset

    # ------------------------------------------------------------------ introspection

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` once started."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request on every path, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def message_requests(self) -> list[RequestRecord]:
        """Snapshot of the ``POST /v1/messages`` records only."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def peak_concurrency(self) -> int:
        """Most admitted /v1/messages requests in flight at once since reset."""
        with self._lock:
            return self._peak

    @property
    def active_requests(self) -> int:
        """Admitted /v1/messages requests in flight now."""
        with self._lock:
            return len(self._active)

    @property
    def connection_count(self) -> int:
        """Distinct TCP connections that carried a request since reset."""
        with self._lock:
            return self._connections

    def cache_stats(self) -> dict[str, int]:
        """``{"writes", "reads", "write_tokens", "read_tokens"}`` since reset (counted when responses begin)."""
        with self._lock:
            return dict(self._cache_counts)

    def stats(self) -> dict[str, Any]:
        """Counters since reset: requests, messages, active, peak_concurrency, aborted, connections,
        status_counts, rate_limited, cache_writes, cache_reads, cache_write_tokens, cache_read_tokens."""
        with self._lock:
            status_counts: dict[int, int] = {}
            messages = aborted = 0
            for r in self._records:
                if r.status is not None:
                    status_counts[r.status] = status_counts.get(r.status, 0) + 1
                if r.method == "POST" and r.path == "/v1/messages":
                    messages += 1
                if r.aborted:
                    aborted += 1
            return {
                "requests": len(self._records),
                "messages": messages,
                "active": len(self._active),
                "peak_concurrency": self._peak,
                "aborted": aborted,
                "connections": self._connections,
                "status_counts": status_counts,
                "rate_limited": self._rate_limited,
                "cache_writes": self._cache_counts["writes"],
                "cache_reads": self._cache_counts["reads"],
                "cache_write_tokens": self._cache_counts["write_tokens"],
                "cache_read_tokens": self._cache_counts["read_tokens"],
            }

    def batches(self) -> list[dict[str, Any]]:
        """Snapshot of every message batch created since reset (API objects, oldest first)."""
        with self._lock:
            now, wall = self._now(), self._wall()
            out = []
            for b in self._batches.values():
                self._advance_batch(b, now)
                out.append(self._batch_json(b, wall))
            return out

    def wait_for(self, predicate: Callable[[Emulator], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true; return False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Return True once no request is in flight (False after ``timeout`` seconds)."""

        def _idle(e: Emulator) -> bool:
            with e._lock:
                return e._inflight == 0 and not e._active

        return self.wait_for(_idle, timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Start listening (blocks until ready); returns self."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def _run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=_run, name="anthropic-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failure[0]
        log.debug("anthropic emulator listening on %s", self.base_url)
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._h_messages)
        app.router.add_post("/v1/messages/count_tokens", self._h_count_tokens)
        app.router.add_post("/v1/messages/batches", self._h_batch_create)
        app.router.add_get("/v1/messages/batches", self._h_batch_list)
        app.router.add_get("/v1/messages/batches/{id}", self._h_batch_retrieve)
        app.router.add_delete("/v1/messages/batches/{id}", self._h_batch_delete)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._h_batch_cancel)
        app.router.add_get("/v1/messages/batches/{id}/results", self._h_batch_results)
        app.router.add_get("/v1/models", self._h_models_list)
        app.router.add_get("/v1/models/{model_id}", self._h_models_retrieve)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=2048, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    def stop(self) -> None:
        """Close open streams and stop the server (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("emulator shutdown error", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._runner = None

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"http://{self.host}:{self.port}" if self._runner is not None else "stopped"
        return f"<Emulator {where}>"

    # ------------------------------------------------------------------ HTTP plumbing

    def _base_headers(self, request: web.Request) -> dict[str, str]:
        rec: RequestRecord = request[_REC_KEY]
        with self._lock:
            h = self._ratelimit_headers(rec.model)
        h["request-id"] = request[_RID_KEY]
        return h

    def _error_response(self, request: web.Request, err: _ApiError) -> web.Response:
        rec: RequestRecord = request[_REC_KEY]
        with self._lock:
            rec.status = err.status
            rec.error_type = err.error_type
        headers = self._base_headers(request)
        headers.update(err.headers)
        body = {
            "type": "error",
            "error": {"type": err.error_type, "message": err.message},
            "request_id": request[_RID_KEY],
        }
        return web.json_response(body, status=err.status, headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        with self._lock:
            self._seq += 1
            rec = RequestRecord(
                seq=self._seq,
                method=request.method,
                path=request.path,
                retry_count_header=request.headers.get("x-stainless-retry-count"),
                started_at=time.monotonic(),
            )
            self._records.append(rec)
            self._inflight += 1
            transport = request.transport
            if transport is not None and transport not in self._seen_transports:
                self._seen_transports.add(transport)
                self._connections += 1
        request[_REC_KEY] = rec
        request[_RID_KEY] = _new_id("req_emu_")
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                self._check_auth(request)
                resp = await handler(request)
            except _ApiError as err:
                return self._error_response(request, err)
            except web.HTTPException as exc:
                status = exc.status if exc.status >= 400 else 404
                return self._error_response(request, _ApiError(status, exc.reason or None))
            with self._lock:
                if rec.status is None:
                    rec.status = resp.status
            return resp
        except asyncio.CancelledError:
            with self._lock:
                rec.aborted = True
            raise
        except ConnectionResetError:
            # The client left while we wrote: same outcome as a cancelled handler, without aiohttp's
            # "Error handling request" log.
            with self._lock:
                rec.aborted = True
            raise asyncio.CancelledError() from None
        finally:
            with self._lock:
                rec.ended_at = time.monotonic()
                self._inflight -= 1
                self._active.discard(rec.seq)
            if task is not None:
                self._tasks.discard(task)

    def _check_auth(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if not key:
            raise _ApiError(401, "x-api-key header is required")
        required = self._settings["api_key"]
        if required is not None and key != required:
            raise _ApiError(401, "invalid x-api-key")

    async def _json_body(self, request: web.Request) -> Any:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(400, "body: There was an error parsing the body as JSON") from None
        rec: RequestRecord = request[_REC_KEY]
        if isinstance(body, dict):
            with self._lock:
                rec.body = body
                rec.model = body.get("model") if isinstance(body.get("model"), str) else None
                rec.stream = body.get("stream") is True
        return body


# ---------------------------------------------------------------------- command line


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anthropic_emulator", description="Run the local Anthropic Messages API emulator."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    p.add_argument("--log-level", default="WARNING")

    def _opt_int(v: str) -> int | None:
        return None if v.lower() in ("none", "") else int(v)

    def _opt_str(v: str) -> str | None:
        return None if v == "" else v

    def _model_map(v: str) -> dict[str, str]:
        pairs = [p.split("=", 1) for p in v.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise argparse.ArgumentTypeError(f"expected ID=CATALOGUED_ID[,ID=CATALOGUED_ID...], got {v!r}")
        return {k.strip(): t.strip() for k, t in pairs}

    types: dict[str, Callable[[str], Any]] = {
        "api_key": _opt_str,
        "ttft_ms": float,
        "chunk_delay_ms": float,
        "reply_words": _opt_int,
        "ping_every": int,
        "rate_limit_requests": _opt_int,
        "rate_limit_window_s": float,
        "max_concurrent": _opt_int,
        "directives": str,
        "cache_min_tokens": _opt_int,
        "batch_seconds_per_request": float,
        "batch_retrieve_404_times": int,
        "batch_create_delay_ms": float,
        "rate_limit_rpm": _opt_int,
        "rate_limit_itpm": _opt_int,
        "rate_limit_otpm": _opt_int,
        "rate_limit_minute_s": float,
        "extra_models": _model_map,
    }
    for name, default in DEFAULT_SETTINGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=types[name], default=default, help=f"(default: {default!r})"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``python -m anthropic_emulator --port 8080 --ttft-ms 50``."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    settings = {name: getattr(args, name) for name in DEFAULT_SETTINGS}
    emu = Emulator(host=args.host, port=args.port, **settings)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    emu.start()
    sys.stdout.write(f"anthropic_emulator listening on {emu.base_url}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
