"""Per-model RPM / ITPM / OTPM buckets of the emulator and their headers, through the real SDK over HTTP."""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import anthropic
import pytest

from anthropic_emulator import Emulator, count_text_tokens

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"
OTHER = "claude-haiku-4-5"
BIG = "word " * 3200  # 16000 chars -> 4000 tokens
BIG_TOKENS = count_text_tokens(BIG)


def _client(emulator: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0)


def _params(text: str, *, model: str = MODEL, max_tokens: int = 50, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra}


def _seconds_until(rfc3339: str) -> float:
    when = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


def test_itpm_binds_with_retry_after_and_refills(emulator: Emulator) -> None:
    emulator.configure(rate_limit_itpm=10_000)
    client = _client(emulator)
    for i in range(2):
        client.messages.create(**_params(f"{i} {BIG}"))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**_params(f"2 {BIG}"))
    retry_after = int(info.value.response.headers["retry-after"])
    # ~2000 left, 4000 needed, refilling 10000/60 per second -> about 12 s
    assert 11 <= retry_after <= 13
    assert "input tokens per minute" in info.value.message and MODEL in info.value.message
    assert info.value.type == "rate_limit_error"  # type: ignore[attr-defined]
    assert emulator.stats()["rate_limited"] == 1
    emulator.advance_clock(retry_after)
    client.messages.create(**_params(f"3 {BIG}"))


def test_cache_reads_do_not_count_toward_itpm(emulator: Emulator) -> None:
    emulator.configure(rate_limit_itpm=12_000)
    client = _client(emulator)
    system = [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(**_params("q0", system=system))
    assert first.usage.cache_creation_input_tokens == BIG_TOKENS  # charged: a cache write counts
    for i in range(1, 8):  # 7 more requests of 4000+ tokens each, all read from the cache
        msg = client.messages.create(**_params(f"q{i}", system=system))
        assert msg.usage.cache_read_input_tokens == BIG_TOKENS
    plain = [{"type": "text", "text": BIG}]
    client.messages.create(**_params("u1", system=plain))
    with pytest.raises(anthropic.RateLimitError):  # without the cache the same prompts bind at once
        for i in range(2, 5):
            client.messages.create(**_params(f"u{i}", system=plain))


def test_otpm_charges_max_tokens_then_refunds(emulator: Emulator) -> None:
    emulator.configure(rate_limit_otpm=10_000)
    client = _client(emulator)
    done = threading.Event()

    def _slow() -> None:
        client.messages.create(**_params("slow [[ttft_ms=1500]]", max_tokens=6000))
        done.set()

    t = threading.Thread(target=_slow)
    t.start()
    assert emulator.wait_for(lambda e: e.active_requests == 1, timeout=5)
    with pytest.raises(anthropic.RateLimitError) as info:  # 6000 charged in flight: 6000 more does not fit
        client.messages.create(**_params("second", max_tokens=6000))
    assert "output tokens per minute" in info.value.message
    small = client.messages.with_raw_response.create(**_params("tight", max_tokens=3000))
    # 10000 - 6000 (in flight) - 3000 + its refund down to 3 real tokens = 3997, plus what the bucket
    # refilled meanwhile (10000/60 per second): 3000 after rounding down, or 4000 a few ms later
    assert small.headers["anthropic-ratelimit-output-tokens-remaining"] in ("3000", "4000")
    t.join()
    assert done.is_set()
    again = client.messages.with_raw_response.create(**_params("third", max_tokens=6000))
    # both earlier requests were refunded to their real output (a few tokens each)
    assert again.headers["anthropic-ratelimit-output-tokens-remaining"] == "9000"


def test_streaming_refund_happens_at_the_end(emulator: Emulator) -> None:
    emulator.configure(rate_limit_otpm=20_000)
    client = _client(emulator)
    with client.messages.with_streaming_response.create(**_params("s [[words=5]]", max_tokens=8000),
                                                        stream=True) as resp:
        assert resp.headers["anthropic-ratelimit-output-tokens-remaining"] == "12000"
        for _line in resp.iter_lines():
            pass
    after = client.messages.with_raw_response.create(**_params("x", max_tokens=1))
    assert after.headers["anthropic-ratelimit-output-tokens-remaining"] == "19000"  # 20000 - 5 - 1


def test_headers_are_honest(emulator: Emulator) -> None:
    # a ten-minute "minute" refills slowly enough (~167 input tokens/s) for exact figures
    emulator.configure(rate_limit_itpm=100_000, rate_limit_otpm=50_000, rate_limit_rpm=100, rate_limit_minute_s=600,
                       directives="words=4")
    client = _client(emulator)
    text = "word " * 3599 + "wor"  # 18000 chars -> 4500 tokens
    remaining = []
    for i in range(3):
        raw = client.messages.with_raw_response.create(**_params(f"{text}{i}", max_tokens=1000))
        h = raw.headers
        assert h["anthropic-ratelimit-input-tokens-limit"] == "100000"
        assert h["anthropic-ratelimit-output-tokens-limit"] == "50000"
        assert h["anthropic-ratelimit-requests-limit"] == "100"
        assert int(h["anthropic-ratelimit-requests-remaining"]) == 99 - i
        remaining.append(int(h["anthropic-ratelimit-input-tokens-remaining"]))
        assert h["anthropic-ratelimit-output-tokens-remaining"] == "49000"  # refunded to 4 real tokens
        # the combined tokens-* headers repeat the token bucket with the least remaining (output here)
        for part in ("limit", "remaining", "reset"):
            assert h[f"anthropic-ratelimit-tokens-{part}"] == h[f"anthropic-ratelimit-output-tokens-{part}"]
    assert remaining == [95_000, 91_000, 86_000]  # 4501 tokens each, rounded down to the thousand
    reset_in = _seconds_until(raw.headers["anthropic-ratelimit-input-tokens-reset"])
    assert 70 <= reset_in <= 90  # 13503 used, refilling ~167 per second -> about 81 s
    with pytest.raises(anthropic.RateLimitError) as info:
        client.with_options(timeout=30).messages.create(**_params("huge", max_tokens=60_000))  # needs a full bucket
    h = info.value.response.headers
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "86000"  # nothing was taken by the 429
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "49000"
    assert int(h["retry-after"]) >= 1


def test_limits_are_per_model(emulator: Emulator) -> None:
    emulator.configure(rate_limit_itpm=10_000, rate_limit_rpm=2)
    client = _client(emulator)
    client.messages.create(**_params(f"a {BIG}"))
    client.messages.create(**_params(f"b {BIG}"))
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**_params("c"))
    raw = client.messages.with_raw_response.create(**_params(f"d {BIG}", model=OTHER))
    assert raw.headers["anthropic-ratelimit-input-tokens-remaining"] == "5000"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "1"


def test_runtime_configure_and_scaled_minute(emulator: Emulator) -> None:
    client = _client(emulator)
    raw = client.messages.with_raw_response.create(**_params("nominal"))
    assert raw.headers["anthropic-ratelimit-input-tokens-limit"] == "10000000"
    emulator.configure(rate_limit_itpm=6_000, rate_limit_minute_s=1.0)
    client.messages.create(**_params(BIG))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**_params(f"again {BIG}"))
    assert info.value.response.headers["retry-after"] == "1"
    assert "per 1 seconds" in info.value.message
    emulator.advance_clock(0.5)  # a 6000-token bucket refills 6000 per emulated second
    client.messages.create(**_params(f"again {BIG}"))
    emulator.configure(rate_limit_itpm=None)
    for i in range(5):
        client.messages.create(**_params(f"{i} {BIG}"))
    with pytest.raises(ValueError):
        emulator.configure(rate_limit_otpm=0)
    with pytest.raises(ValueError):
        emulator.configure(rate_limit_minute_s=0)
