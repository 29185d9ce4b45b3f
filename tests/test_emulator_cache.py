"""Prompt caching semantics of the emulator: prefixes, minimums, TTLs and the concurrency rule."""
from __future__ import annotations

import threading
from typing import Any

import anthropic
import pytest

from anthropic_emulator import Emulator, count_text_tokens

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"
SYSTEM = "You are a careful analyst. " * 200  # 5400 chars -> 1350 tokens, above the 1024 minimum
SYS_TOKENS = count_text_tokens(SYSTEM)


def _client(emulator: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0)


def _params(prompt: str, *, system: str = SYSTEM, ttl: str | None = None, model: str = MODEL) -> dict[str, Any]:
    cc: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        cc["ttl"] = ttl
    return {"model": model, "max_tokens": 50,
            "system": [{"type": "text", "text": system, "cache_control": cc}],
            "messages": [{"role": "user", "content": prompt}]}


def test_sequential_write_then_read(emulator: Emulator) -> None:
    client = _client(emulator)
    first = client.messages.create(**_params("question one"))
    assert first.usage.cache_creation_input_tokens == SYS_TOKENS
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == SYS_TOKENS
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert first.usage.input_tokens == count_text_tokens("question one")

    second = client.messages.create(**_params("question two!"))
    assert second.usage.cache_read_input_tokens == SYS_TOKENS
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == count_text_tokens("question two!")
    assert emulator.cache_stats() == {"writes": 1, "reads": 1, "write_tokens": SYS_TOKENS,
                                      "read_tokens": SYS_TOKENS}
    stats = emulator.stats()
    assert (stats["cache_writes"], stats["cache_reads"]) == (1, 1)


def test_streaming_usage_reports_cache_fields(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_params("warm"))
    with client.messages.stream(**_params("hot")) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == SYS_TOKENS
    assert final.usage.input_tokens == count_text_tokens("hot")


def test_two_requests_started_together_both_write(emulator: Emulator) -> None:
    client = _client(emulator)
    results: list[Any] = []

    def _run(i: int) -> None:
        results.append(client.messages.create(**_params(f"parallel {i} [[ttft_ms=1000]]")))

    threads = [threading.Thread(target=_run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.usage.cache_creation_input_tokens for r in results] == [SYS_TOKENS, SYS_TOKENS]
    assert [r.usage.cache_read_input_tokens for r in results] == [0, 0]
    # once a response has begun, the entry is readable
    third = client.messages.create(**_params("after"))
    assert third.usage.cache_read_input_tokens == SYS_TOKENS
    assert emulator.cache_stats()["writes"] == 2


def test_entry_readable_once_streamed_response_began(emulator: Emulator) -> None:
    client = _client(emulator)
    with client.messages.stream(**_params("leader [[stall_after=1]]")) as stream:
        next(iter(stream.text_stream))  # message_start has been sent
        follower = client.messages.create(**_params("follower"))
    assert follower.usage.cache_read_input_tokens == SYS_TOKENS


def test_nothing_cached_below_minimum(emulator: Emulator) -> None:
    client = _client(emulator)
    short = "short system " * 10
    for _ in range(2):
        msg = client.messages.create(**_params("q", system=short))
        assert msg.usage.cache_creation_input_tokens == 0
        assert msg.usage.cache_read_input_tokens == 0
        assert msg.usage.input_tokens == count_text_tokens(short) + count_text_tokens("q")
    # 1350 tokens is enough for Sonnet but not for Haiku 4.5 (4096)
    haiku = client.messages.create(**_params("q", model="claude-haiku-4-5"))
    assert haiku.usage.cache_creation_input_tokens == 0
    emulator.configure(cache_min_tokens=10)
    assert client.messages.create(**_params("q", system=short)).usage.cache_creation_input_tokens > 0


def test_ttl_expiry_and_refresh_with_advance_clock(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_params("a"))
    emulator.advance_clock(200)
    assert client.messages.create(**_params("b")).usage.cache_read_input_tokens == SYS_TOKENS  # refreshes
    emulator.advance_clock(200)  # 400 s after the write, 200 s after the refresh
    assert client.messages.create(**_params("c")).usage.cache_read_input_tokens == SYS_TOKENS
    emulator.advance_clock(301)
    expired = client.messages.create(**_params("d"))
    assert expired.usage.cache_read_input_tokens == 0
    assert expired.usage.cache_creation_input_tokens == SYS_TOKENS


def test_one_hour_ttl_and_split(emulator: Emulator) -> None:
    client = _client(emulator)
    long_doc = "Document text. " * 100  # 1500 chars -> 375 tokens
    params = _params("", ttl="1h")
    params["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": long_doc, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "the question"}]}]
    first = client.messages.create(**params)
    doc_tokens = count_text_tokens(long_doc)
    assert first.usage.cache_creation_input_tokens == SYS_TOKENS + doc_tokens
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == SYS_TOKENS
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == doc_tokens
    assert first.usage.input_tokens == count_text_tokens("the question")

    emulator.advance_clock(600)  # the 5-minute entry is gone, the 1-hour one is not
    second = client.messages.create(**params)
    assert second.usage.cache_read_input_tokens == SYS_TOKENS
    assert second.usage.cache_creation_input_tokens == doc_tokens
    assert second.usage.cache_creation is not None
    assert second.usage.cache_creation.ephemeral_5m_input_tokens == doc_tokens
    emulator.advance_clock(3601)
    assert client.messages.create(**params).usage.cache_read_input_tokens == 0


def test_longer_prefix_extends_a_read(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_params("x"))
    doc = "More context. " * 50
    params = _params("")
    params["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "q"}]}]
    msg = client.messages.create(**params)
    assert msg.usage.cache_read_input_tokens == SYS_TOKENS
    assert msg.usage.cache_creation_input_tokens == count_text_tokens(doc)


def test_different_model_or_prefix_misses(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_params("x"))
    other = client.messages.create(**_params("x", model="claude-opus-4-8")).usage  # minimum 1024: it writes
    assert other.cache_read_input_tokens == 0 and other.cache_creation_input_tokens > 0
    assert client.messages.create(**_params("x", system=SYSTEM + "!")).usage.cache_read_input_tokens == 0


def test_tools_are_part_of_the_prefix(emulator: Emulator) -> None:
    client = _client(emulator)
    tool = {"name": "lookup", "description": "d" * 5000, "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"}}
    params = {"model": MODEL, "max_tokens": 10, "tools": [tool], "messages": [{"role": "user", "content": "q"}]}
    first = client.messages.create(**params)
    assert first.usage.cache_creation_input_tokens > 1024
    assert client.messages.create(**params).usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_failed_request_writes_nothing(emulator: Emulator) -> None:
    client = _client(emulator)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**_params("x [[fail=500]]"))
    assert client.messages.create(**_params("y")).usage.cache_read_input_tokens == 0


def test_reset_clears_cache(emulator: Emulator) -> None:
    client = _client(emulator)
    client.messages.create(**_params("x"))
    emulator.reset()
    assert client.messages.create(**_params("x")).usage.cache_read_input_tokens == 0
