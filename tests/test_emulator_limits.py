"""Rate limiting (token bucket, concurrency cap, headers) and the 500-stream load test."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anthropic
import httpx2
import pytest

from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"


def _client(emulator: Emulator, max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=max_retries)


def _msg(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}


def test_token_bucket_limits_and_refills_with_the_clock(emulator: Emulator) -> None:
    emulator.configure(rate_limit_requests=3, rate_limit_window_s=60)
    client = _client(emulator)
    remaining = []
    for i in range(3):
        raw = client.messages.with_raw_response.create(**_msg(f"r{i}"))
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "3"
        remaining.append(int(raw.headers["anthropic-ratelimit-requests-remaining"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**_msg("r3"))
    retry_after = info.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 20  # one token per 20 s
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert emulator.stats()["rate_limited"] == 1
    emulator.advance_clock(20)
    assert client.messages.create(**_msg("r4")).content[0].text == "Echo: r4"


def test_sdk_retries_a_limited_request_after_retry_after(emulator: Emulator) -> None:
    emulator.configure(rate_limit_requests=1, rate_limit_window_s=1)
    client = _client(emulator, max_retries=3)
    client.messages.create(**_msg("first"))
    t0 = time.monotonic()
    client.messages.create(**_msg("second"))  # limited once, then retried after retry-after: 1
    assert time.monotonic() - t0 >= 0.9
    assert [r.status for r in emulator.message_requests()][:2] == [200, 429]


def test_max_concurrent_rejects_the_excess(emulator: Emulator) -> None:
    emulator.configure(max_concurrent=2)
    client = _client(emulator)
    errors: list[BaseException] = []

    def _run(i: int) -> None:
        try:
            client.messages.create(**_msg(f"c{i} [[ttft_ms=1500]]"))
        except anthropic.RateLimitError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=_run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert emulator.wait_for(lambda e: e.active_requests == 2, timeout=5)
    _run(99)
    for t in threads:
        t.join()
    assert len(errors) == 1
    assert errors[0].response.headers["retry-after"] == "1"  # type: ignore[attr-defined]
    assert emulator.peak_concurrency == 2
    assert emulator.stats()["rate_limited"] == 1


def test_429s_under_load(emulator: Emulator) -> None:
    emulator.configure(rate_limit_requests=10, rate_limit_window_s=3600)
    client = _client(emulator)
    outcomes: list[str] = []
    lock = threading.Lock()

    def _run(i: int) -> None:
        try:
            client.messages.create(**_msg(f"load {i}"))
            result = "ok"
        except anthropic.RateLimitError:
            result = "429"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=_run, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 10
    assert outcomes.count("429") == 30
    stats = emulator.stats()
    assert stats["rate_limited"] == 30 and stats["status_counts"] == {200: 10, 429: 30}


def test_ratelimit_headers_on_every_response(emulator: Emulator) -> None:
    for body in ({"model": MODEL}, _msg("ok")):
        resp = httpx2.post(emulator.base_url + "/v1/messages", json=body, headers={"x-api-key": KEY})
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            for part in ("limit", "remaining", "reset"):
                assert f"anthropic-ratelimit-{kind}-{part}" in resp.headers
        assert resp.headers["anthropic-ratelimit-requests-reset"].endswith("Z")


@pytest.mark.timeout(240)
def test_500_concurrent_streams_complete(emulator: Emulator) -> None:
    emulator.configure(ttft_ms=500, chunk_delay_ms=10)
    n = 500

    async def _main() -> list[str]:
        http = anthropic.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=n, max_keepalive_connections=n))
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0, timeout=180,
                                          http_client=http)

        async def _one(i: int) -> str:
            async with client.messages.stream(**_msg(f"stream {i} [[words=10]]")) as stream:
                final = await stream.get_final_message()
            return final.content[0].text  # type: ignore[union-attr]

        try:
            return await asyncio.gather(*(_one(i) for i in range(n)))
        finally:
            await client.close()

    texts = asyncio.run(_main())
    assert len(texts) == n
    assert texts[7] == "Echo: stream 7 Echo: stream 7 Echo: stream 7 Echo:"
    stats = emulator.stats()
    assert stats["status_counts"] == {200: n}
    assert stats["aborted"] == 0
    assert stats["peak_concurrency"] >= 50  # they overlapped (the exact peak depends on the machine)
