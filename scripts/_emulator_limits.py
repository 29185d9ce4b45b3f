"""The emulator's rate limits: token buckets, admission control and the ``anthropic-ratelimit-*`` headers.

One global request bucket (``rate_limit_requests`` per ``rate_limit_window_s``) and per-pool
``rpm`` / ``itpm`` / ``otpm`` buckets holding one "minute" (``rate_limit_minute_s``) of their
limit; a pool is the catalogue's ``ModelInfo.pool`` (all Opus 4.x models share one), an id the
catalogue lacks is a pool of its own. :class:`_RateLimitsMixin` is mixed into :class:`anthropic_emulator.Emulator`.
Private to :mod:`anthropic_emulator`.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Protocol

from _emulator_wire import _ApiError, _rfc3339
from _models import CATALOGUE

_NOMINAL_TOKEN_LIMIT = 10_000_000


class _Bucket:
    """Token bucket: ``capacity`` units per ``window_s`` seconds, refilled continuously.

    A charge larger than the capacity is admitted once the bucket is full (the bucket then goes
    negative and refills from there), so a request bigger than a limit is slow, not impossible.
    """

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / window_s
        self.tokens = float(capacity)
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(float(self.capacity), self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` fits (0.0 when it fits now); takes nothing."""
        self._refill(now)
        need = min(float(amount), float(self.capacity))
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / self.rate

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount``; return 0.0 on success, else the seconds until it fits (taking nothing)."""
        wait = self.wait(now, amount)
        if wait == 0.0:
            self.tokens -= amount
        return wait

    def give(self, now: float, amount: float) -> None:
        """Return ``amount`` (a refund), never above the capacity."""
        self._refill(now)
        self.tokens = min(float(self.capacity), self.tokens + amount)

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, int(self.tokens))

    def seconds_to_full(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.tokens) / self.rate


class _Charge(Protocol):
    """What admission control reads and writes on a computed request (``_emulator_messages._Computed``)."""

    usage: dict[str, Any]
    otpm: _Bucket | None
    otpm_charged: int


class _RateLimitsMixin:
    """Rate-limit state and admission of :class:`anthropic_emulator.Emulator` (its lock and settings)."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _settings: dict[str, Any]
        _active: set[int]
        _rate_limited: int
        _bucket: _Bucket | None
        _bucket_key: tuple[Any, Any] | None
        _model_buckets: dict[tuple[str, str], tuple[int, float, _Bucket]]

        def _now(self) -> float: ...
        def _wall(self) -> float: ...

    def _ratelimit_headers(self, model: str | None = None) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers for ``model`` (call with the lock held).

        Honest for every configured bucket: ``limit`` is the per-minute limit, ``remaining`` what the
        bucket holds now (token figures rounded down to the nearest thousand, as the API rounds them),
        ``reset`` the RFC 3339 time at which the bucket would be full again. ``tokens-*`` repeats the
        token bucket with the least remaining. Unset limits keep nominal figures.
        """
        now, wall = self._now(), self._wall()
        bucket = self._current_bucket(now)
        if bucket is None and model is not None:
            bucket = self._model_bucket(model, "rpm", now)
        if bucket is not None:
            limit, remaining = bucket.capacity, bucket.remaining(now)
            reset = _rfc3339(wall + bucket.seconds_to_full(now))
        else:
            limit, remaining, reset = 1_000_000, 1_000_000, _rfc3339(wall)
        h = {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset,
        }
        tightest: tuple[int, int, str] | None = None
        for kind, key in (("input-tokens", "itpm"), ("output-tokens", "otpm")):
            tb = self._model_bucket(model, key, now) if model is not None else None
            if tb is None:
                figures = (_NOMINAL_TOKEN_LIMIT, _NOMINAL_TOKEN_LIMIT, _rfc3339(wall))
            else:
                figures = (
                    tb.capacity,
                    tb.remaining(now) // 1000 * 1000,
                    _rfc3339(wall + math.ceil(tb.seconds_to_full(now))),
                )
                if tightest is None or figures[1] < tightest[1]:
                    tightest = figures
            h[f"anthropic-ratelimit-{kind}-limit"] = str(figures[0])
            h[f"anthropic-ratelimit-{kind}-remaining"] = str(figures[1])
            h[f"anthropic-ratelimit-{kind}-reset"] = figures[2]
        if tightest is None:
            tightest = (_NOMINAL_TOKEN_LIMIT, _NOMINAL_TOKEN_LIMIT, _rfc3339(wall))
        h["anthropic-ratelimit-tokens-limit"] = str(tightest[0])
        h["anthropic-ratelimit-tokens-remaining"] = str(tightest[1])
        h["anthropic-ratelimit-tokens-reset"] = tightest[2]
        return h

    def _pool_for(self, model: str) -> str:
        """The rate-limit pool of ``model`` (``extra_models`` ids share their target's pool)."""
        info = CATALOGUE.get(model) or CATALOGUE.get(self._settings["extra_models"].get(model, ""))
        return info.pool if info is not None else model

    def _current_bucket(self, now: float) -> _Bucket | None:
        n, window = self._settings["rate_limit_requests"], self._settings["rate_limit_window_s"]
        if n is None:
            return None
        if self._bucket is None or self._bucket_key != (n, window):
            self._bucket = _Bucket(n, float(window), now)
            self._bucket_key = (n, window)
        return self._bucket

    def _model_bucket(self, model: str, kind: str, now: float) -> _Bucket | None:
        """The ``rpm`` / ``itpm`` / ``otpm`` bucket of ``model``'s pool, None when that limit is unset (lock held).

        A bucket holds one "minute" (``rate_limit_minute_s`` seconds) of its limit and refills at
        limit / minute continuously; changing the limit or the minute starts a full new bucket.
        """
        limit = self._settings[f"rate_limit_{kind}"]
        if limit is None:
            return None
        minute = float(self._settings["rate_limit_minute_s"])
        pool = self._pool_for(model)
        cur = self._model_buckets.get((pool, kind))
        if cur is None or cur[0] != limit or cur[1] != minute:
            cur = (limit, minute, _Bucket(limit, minute, now))
            self._model_buckets[(pool, kind)] = cur
        return cur[2]

    def _rate_limit_check(self, model: str, comp: _Charge, max_tokens: int) -> _ApiError | None:
        """Admission control (call with the lock held): concurrency, then every bucket at once.

        ITPM is charged ``input_tokens + cache_creation_input_tokens`` (cache reads are free), OTPM
        ``max_tokens`` (refunded to the real output by :meth:`_settle`); nothing is taken unless all fit.
        """
        max_conc = self._settings["max_concurrent"]
        if max_conc is not None and len(self._active) >= max_conc:
            self._rate_limited += 1
            return _ApiError(
                429,
                f"Number of concurrent requests has exceeded your limit of {max_conc}.",
                headers={"retry-after": "1"},
            )
        now = self._now()
        minute = float(self._settings["rate_limit_minute_s"])
        per = "minute" if minute == 60 else f"{minute:g} seconds"
        itpm = comp.usage["input_tokens"] + comp.usage["cache_creation_input_tokens"]
        checks: list[tuple[_Bucket, int, str]] = []
        bucket = self._current_bucket(now)
        if bucket is not None:
            checks.append(
                (bucket, 1, f"{bucket.capacity} requests per {self._settings['rate_limit_window_s']:g} seconds")
            )
        for kind, amount, what in (
            ("rpm", 1, "requests"),
            ("itpm", itpm, "input tokens"),
            ("otpm", max_tokens, "output tokens"),
        ):
            mb = self._model_bucket(model, kind, now)
            if mb is not None:
                pool = self._pool_for(model)
                where = f"model {model}" if pool == model else f"model {model}, pool {pool}"
                checks.append((mb, amount, f"{mb.capacity:,} {what} per {per} ({where})"))
        waits = [(b.wait(now, amount), what) for b, amount, what in checks]
        late = [(w, what) for w, what in waits if w > 0]
        if late:
            self._rate_limited += 1
            wait = max(w for w, _ in late)
            return _ApiError(
                429,
                f"This request would exceed your organization's rate limit of {late[0][1]}.",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        for b, amount, _what in checks:
            b.take(now, amount)
        comp.otpm = self._model_bucket(model, "otpm", now)
        comp.otpm_charged = max_tokens if comp.otpm is not None else 0
        return None

    def _settle(self, comp: _Charge, output_tokens: int) -> None:
        """Refund the OTPM charge down to the real output (idempotent; call with the lock held)."""
        if comp.otpm is not None and comp.otpm_charged > output_tokens:
            comp.otpm.give(self._now(), comp.otpm_charged - output_tokens)
        comp.otpm, comp.otpm_charged = None, 0
