"""Message Batches endpoints of the emulator, driven through ``client.messages.batches``."""
from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx2
import pytest

from anthropic_emulator import Emulator, count_text_tokens

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"


def _client(emulator: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=emulator.base_url, max_retries=0)


def _req(cid: str, text: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    params.update(extra)
    return {"custom_id": cid, "params": params}


def _wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.02)


def test_create_process_and_results(emulator: Emulator) -> None:
    client = _client(emulator)
    reqs = [_req(f"item-{i}", f"prompt {i}") for i in range(6)]
    batch = client.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
    assert batch.id.startswith("msgbatch_")
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 6 and batch.results_url is None
    assert batch.expires_at > batch.created_at

    ended = _wait_ended(client, batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.succeeded == 6 and ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.results_url is not None
    assert ended.results_url.startswith(emulator.base_url)

    results = list(client.messages.batches.results(batch.id))
    order = [r.custom_id for r in results]
    assert sorted(order) == sorted(r["custom_id"] for r in reqs)
    assert order != [r["custom_id"] for r in reqs]  # no particular order ...
    assert order == [r.custom_id for r in client.messages.batches.results(batch.id)]  # ... but a stable one
    by_id = {r.custom_id: r.result for r in results}
    first = by_id["item-3"]
    assert first.type == "succeeded"
    assert first.message.content[0].text == "Echo: prompt 3"  # type: ignore[union-attr]
    assert first.message.usage.service_tier == "batch"
    assert first.message.usage.input_tokens == count_text_tokens("prompt 3")


def test_processing_speed_and_advance_clock(emulator: Emulator) -> None:
    emulator.configure(batch_seconds_per_request=100)
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req(f"r{i}", "x") for i in range(3)])  # type: ignore[arg-type]
    assert client.messages.batches.retrieve(batch.id).request_counts.processing == 3
    emulator.advance_clock(150)
    mid = client.messages.batches.retrieve(batch.id)
    assert (mid.request_counts.succeeded, mid.request_counts.processing) == (1, 2)
    assert mid.processing_status == "in_progress"
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)  # no results_url before the end
    early = httpx2.get(f"{emulator.base_url}/v1/messages/batches/{batch.id}/results", headers={"x-api-key": KEY})
    assert early.status_code == 404
    emulator.advance_clock(200)
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"


def test_per_request_outcomes(emulator: Emulator) -> None:
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[  # type: ignore[arg-type]
        _req("ok", "fine"),
        _req("bad", "broken [[batch=errored]]"),
        _req("late", "slow [[batch=expired]]"),
        _req("invalid", "x", max_tokens=0),
    ])
    ended = _wait_ended(client, batch.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.expired) == (1, 2, 1)
    by_id = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert by_id["ok"].type == "succeeded"
    assert by_id["bad"].type == "errored"
    assert by_id["bad"].error.error.type == "api_error"  # type: ignore[union-attr]
    assert by_id["late"].type == "expired"
    assert by_id["invalid"].type == "errored"
    assert by_id["invalid"].error.error.type == "invalid_request_error"  # type: ignore[union-attr]
    assert "max_tokens" in by_id["invalid"].error.error.message  # type: ignore[union-attr]


def test_cancel(emulator: Emulator) -> None:
    emulator.configure(batch_seconds_per_request=100)
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req(f"c{i}", "x") for i in range(4)])  # type: ignore[arg-type]
    emulator.advance_clock(150)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    emulator.advance_clock(100)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 2)
    kinds = sorted(r.result.type for r in client.messages.batches.results(batch.id))
    assert kinds == ["canceled", "canceled", "succeeded", "succeeded"]


def test_expiry_after_24_hours(emulator: Emulator) -> None:
    emulator.configure(batch_seconds_per_request=50_000)
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req(f"e{i}", "x") for i in range(3)])  # type: ignore[arg-type]
    emulator.advance_clock(24 * 3600 + 1)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (1, 2)


def test_transient_404_after_create(emulator: Emulator) -> None:
    emulator.configure(batch_retrieve_404_times=2)
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req("a", "x")])  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
    assert client.messages.batches.retrieve(batch.id).id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_unknown")


def test_list_paginates_newest_first(emulator: Emulator) -> None:
    client = _client(emulator)
    ids = [client.messages.batches.create(requests=[_req("a", f"b{i}")]).id for i in range(5)]  # type: ignore[arg-type]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # auto-pagination
    assert len(emulator.batches()) == 5


def test_delete_only_after_end(emulator: Emulator) -> None:
    emulator.configure(batch_seconds_per_request=100)
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req("a", "x")])  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    emulator.advance_clock(101)
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


@pytest.mark.parametrize(("requests", "message"), [
    ([], "requests"),
    ([_req("bad id!", "x")], "requests.0.custom_id"),
    ([_req("x" * 65, "x")], "requests.0.custom_id"),
    ([_req("dup", "x"), _req("dup", "y")], "requests.1.custom_id: duplicate"),
    ([{"custom_id": "a"}], "requests.0.params"),
])
def test_create_validation(emulator: Emulator, requests: list[Any], message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(emulator).messages.batches.create(requests=requests)
    assert message in info.value.body["error"]["message"]  # type: ignore[index]


def test_batch_cache_uses_requested_ttl(emulator: Emulator) -> None:
    client = _client(emulator)
    system = [{"type": "text", "text": "Shared context. " * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    batch = client.messages.batches.create(requests=[  # type: ignore[arg-type]
        _req(f"s{i}", f"q{i}", system=system) for i in range(3)])
    _wait_ended(client, batch.id)
    usages = {r.custom_id: r.result.message.usage for r in client.messages.batches.results(batch.id)}  # type: ignore[union-attr]
    assert usages["s0"].cache_creation.ephemeral_1h_input_tokens > 0  # type: ignore[union-attr]
    assert usages["s1"].cache_read_input_tokens == usages["s0"].cache_creation_input_tokens
    assert all(u.service_tier == "batch" for u in usages.values())


def test_results_endpoint_is_jsonl(emulator: Emulator) -> None:
    client = _client(emulator)
    batch = client.messages.batches.create(requests=[_req("a", "x"), _req("b", "y")])  # type: ignore[arg-type]
    ended = _wait_ended(client, batch.id)
    resp = httpx2.get(ended.results_url, headers={"x-api-key": KEY})
    lines = resp.text.strip().split("\n")
    assert len(lines) == 2 and all(line.startswith('{"custom_id":') for line in lines)
