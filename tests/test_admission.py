"""Admission control under the emulator's per-model RPM / ITPM / OTPM buckets, through the real SDK
over HTTP: requests wait for room instead of meeting 429s (scripts/_admission.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import claude_client
from _admission import (
    AdmissionController,
    RateLimits,
    controller_for,
    rate_limit_fields,
    reset_controllers,
)
from _errors import ClaudeInvocationError
from _interrupt import InterruptToken
from _results import Usage
from _transport import send
from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(120)

MODEL = claude_client.DEFAULT_MODEL
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
MINUTE_S = 6.0  # the emulator's scaled minute in these tests
#: ~2,000 tokens on the default model's (new) tokenizer: ceil(6,160 / 4 * 1.3) = 2,002
BLOCK = "abcd" * 1540


@pytest.fixture(autouse=True)
def _fresh_controllers() -> Iterator[None]:
    reset_controllers()
    yield
    reset_controllers()


def _params(text: str, max_tokens: int = 64, **extra: Any) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra}


def _fraction_of_limit(units: float, limit: float, wall: float) -> float:
    """``units`` against what a full bucket of ``limit`` per MINUTE_S admits in ``wall`` seconds."""
    return units / (limit + limit / MINUTE_S * wall)


# ------------------------------------------------------------------------------ limits and registry
def test_rate_limits_validation() -> None:
    assert RateLimits(rpm=50, itpm=30_000, otpm=8_000).any
    assert not RateLimits().any
    with pytest.raises(TypeError, match="rpm"):
        RateLimits(rpm="50")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="itpm"):
        RateLimits(itpm=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="otpm"):
        RateLimits(otpm=0)
    with pytest.raises(ValueError, match="minute_s"):
        RateLimits(minute_s=0)
    with pytest.raises(TypeError, match="minute_s"):
        RateLimits(minute_s="60")  # type: ignore[arg-type]


def test_one_controller_per_key_url_model_and_no_key_shown(client_env: Emulator) -> None:
    client = claude_client.get_client()
    first = controller_for(client, MODEL)
    assert controller_for(client, MODEL) is first
    assert controller_for(client, "claude-haiku-4-5") is not first
    other = claude_client.get_client(api_key="sk-ant-other-key-123")
    assert controller_for(other, MODEL) is not first
    shown = repr(first) + json.dumps(first.snapshot(), default=str)
    assert "sk-ant" not in shown
    with pytest.raises(TypeError, match="limits"):
        controller_for(client, MODEL, {"rpm": 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        controller_for(client, 5)  # type: ignore[arg-type]


def test_rate_limit_fields_reads_httpx_and_plain_headers() -> None:
    import httpx2

    headers = httpx2.Headers({"Anthropic-RateLimit-Requests-Limit": "50", "request-id": "r"})
    assert rate_limit_fields(headers) == {"requests-limit": b"50"}
    assert rate_limit_fields({"anthropic-ratelimit-input-tokens-remaining": "7"}) == {"input-tokens-remaining": "7"}
    assert rate_limit_fields({"request-id": "r"}) is None


# ------------------------------------------------------------------------------ controller unit behaviour
def test_one_request_in_flight_until_the_first_headers() -> None:
    controller = AdmissionController(MODEL)
    controller.probe_wait_s = 30.0
    first = controller.admit(_params("a"))
    admitted = threading.Event()

    def second() -> None:
        controller.admit(_params("b")).finish({"anthropic-ratelimit-requests-limit": "100"}, Usage(1, 1), None)
        admitted.set()

    t = threading.Thread(target=second)
    t.start()
    assert not admitted.wait(0.3)  # held while the probe is in flight
    first.finish({"anthropic-ratelimit-requests-limit": "100", "anthropic-ratelimit-requests-remaining": "99"},
                 Usage(1, 1), None)
    assert admitted.wait(5)
    t.join()
    assert controller.snapshot()["mode"] == "limited"


def test_the_others_go_when_the_first_headers_are_late() -> None:
    controller = AdmissionController(MODEL)
    controller.probe_wait_s = 0.2
    first = controller.admit(_params("slow first reply"))
    started = time.monotonic()
    others = [controller.admit(_params(f"next {i}")) for i in range(5)]  # not held for the whole reply
    assert time.monotonic() - started < 5
    headers = {"anthropic-ratelimit-requests-limit": "100", "anthropic-ratelimit-requests-remaining": "94"}
    for ticket in [first, *others]:
        ticket.finish(headers, Usage(1, 1), None)
    snapshot = controller.snapshot()
    assert snapshot["mode"] == "limited" and snapshot["limits"]["rpm"] == 100


def test_no_rate_limit_headers_is_the_fast_path() -> None:
    controller = AdmissionController(MODEL)
    controller.admit(_params("probe")).finish({"request-id": "req_1"}, Usage(1, 1), None)
    assert controller.snapshot()["mode"] == "free"
    tickets = [controller.admit(_params(f"p{i}")) for i in range(500)]  # none waits, none holds a slot
    for ticket in tickets:
        ticket.finish({"request-id": "r"}, Usage(1, 1), None)
    assert controller.snapshot()["waiting"] == 0


def test_explicit_limits_cap_and_wait_is_interruptible(client_env: Emulator) -> None:
    client = claude_client.get_client()
    controller_for(client, MODEL, RateLimits(rpm=2, minute_s=600.0))  # 2 now, then one per 300 s
    send(_params("one"), client=client)
    send(_params("two"), client=client)
    token = InterruptToken()
    outcome: list[BaseException] = []

    def third() -> None:
        try:
            send(_params("three"), client=client, interrupt=token)
        except ClaudeInvocationError as exc:
            outcome.append(exc)

    t = threading.Thread(target=third)
    t.start()
    time.sleep(0.3)
    assert controller_for(client, MODEL).snapshot()["waiting"] == 1
    started = time.monotonic()
    token.interrupt()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 5
    assert outcome and getattr(outcome[0], "kind", None) == "interrupted"
    assert client_env.stats()["messages"] == 2  # the third never reached the server
    assert controller_for(client, MODEL).snapshot()["waiting"] == 0


# ------------------------------------------------------------------------------ against the emulator's buckets
def test_itpm_bound_run_meets_no_429_and_keeps_throughput(client_env: Emulator) -> None:
    limit = 120_000
    client_env.configure(rate_limit_itpm=limit, rate_limit_minute_s=MINUTE_S)
    client = claude_client.get_client()
    controller_for(client, MODEL, RateLimits(minute_s=MINUTE_S))
    prompts = [{"prompt": f"{i} " + BLOCK} for i in range(90)]  # ~2,000 tokens each
    started = time.perf_counter()
    results = claude_client.invoke_parallel(prompts, max_workers=16, max_tokens=64, return_exceptions=True)
    wall = time.perf_counter() - started
    assert not results.errors
    stats = client_env.stats()
    assert stats["rate_limited"] <= 0.02 * len(prompts)
    charged = results.usage.input_tokens + results.usage.cache_creation_input_tokens
    assert charged >= 90 * 2000
    assert _fraction_of_limit(charged, limit, wall) >= 0.85, wall


def test_models_of_one_pool_share_one_controller(client_env: Emulator) -> None:
    client = claude_client.get_client()
    opus_47 = controller_for(client, "claude-opus-4-7")
    assert controller_for(client, "claude-opus-4-8") is opus_47 and opus_47.pool == "opus-4"
    assert controller_for(client, "claude-opus-4-5-20251101") is opus_47  # a dated snapshot too
    assert controller_for(client, "claude-opus-4-7-20260416") is opus_47  # one the catalogue does not list
    assert controller_for(client, "claude-opus-5-5") is not opus_47  # Opus 5.5 has limits of its own
    assert controller_for(client, "claude-fable-5") is controller_for(client, "claude-fable-5-1")
    assert controller_for(client, "claude-future-test-model") is not controller_for(client, MODEL)
    assert opus_47.snapshot()["pool"] == "opus-4"


def test_two_models_of_one_pool_meet_no_429_at_the_pools_limit(client_env: Emulator) -> None:
    limit = 120_000
    client_env.configure(rate_limit_itpm=limit, rate_limit_minute_s=MINUTE_S)
    client = claude_client.get_client()
    controller_for(client, "claude-opus-4-7", RateLimits(minute_s=MINUTE_S))
    models = ("claude-opus-4-7", "claude-opus-4-8")
    # ~2,000 tokens each on their (new) tokenizer; one ITPM bucket for both models
    prompts = [{"prompt": f"{i} " + BLOCK, "model": models[i % 2]} for i in range(90)]
    started = time.perf_counter()
    results = claude_client.invoke_parallel(prompts, max_workers=16, max_tokens=64, return_exceptions=True)
    wall = time.perf_counter() - started
    assert not results.errors, {i: str(e) for i, e in results.errors.items()}
    assert {r.model for r in client_env.message_requests()} == set(models)
    stats = client_env.stats()
    assert stats["rate_limited"] <= 0.02 * len(prompts), stats["rate_limited"]
    charged = results.usage.input_tokens + results.usage.cache_creation_input_tokens
    assert charged >= 90 * 2000
    assert _fraction_of_limit(charged, limit, wall) >= 0.8, wall  # it used the pool, not half of it


def test_minute_is_inferred_from_reset_headers(client_env: Emulator) -> None:
    limit = 60_000
    client_env.configure(rate_limit_itpm=limit, rate_limit_minute_s=MINUTE_S)
    prompts = [{"prompt": f"{i} " + BLOCK} for i in range(45)]  # 90k tokens: 1.5 buckets
    started = time.perf_counter()
    results = claude_client.invoke_parallel(prompts, max_workers=16, max_tokens=64, return_exceptions=True)
    wall = time.perf_counter() - started
    assert not results.errors
    assert client_env.stats()["rate_limited"] <= 1
    assert wall < 20  # with a 60 s minute it would take ~30 s; the resets show ~6 s
    minute = controller_for(claude_client.get_client(), MODEL)._minute_of("itpm")
    assert minute < 15


def test_cache_reads_do_not_throttle(client_env: Emulator) -> None:
    client_env.configure(rate_limit_itpm=60_000, rate_limit_minute_s=MINUTE_S)
    client = claude_client.get_client()
    controller_for(client, MODEL, RateLimits(minute_s=MINUTE_S))
    shared = "rule " * 16_000  # 80,000 chars: 20,000 tokens
    prompts = [{"prompt": f"question {i}"} for i in range(40)]
    started = time.perf_counter()
    results = claude_client.invoke_parallel(prompts, shared_system=shared, cache_shared_system=True,
                                            max_workers=10, max_tokens=64, return_exceptions=True)
    wall = time.perf_counter() - started
    assert not results.errors
    assert results.usage.cache_read_input_tokens >= 35 * 20_000
    assert client_env.stats()["rate_limited"] == 0
    # Counting 20k per request would need 40 * 20k / (10k per second) = 80 s; reads are free.
    assert wall < 15, wall


def test_otpm_binds_through_max_tokens(client_env: Emulator) -> None:
    client_env.configure(rate_limit_otpm=20_000, rate_limit_minute_s=600.0, ttft_ms=300)
    client = claude_client.get_client()
    controller_for(client, MODEL, RateLimits(minute_s=600.0))
    send(_params("first: learn the limits"), client=client)
    # 4,000 charged per request at admission: 5 fit; the replies use a few tokens and give the
    # rest back, so the next ones are admitted when those end (not when the minute refills).
    results = claude_client.invoke_parallel([{"prompt": f"o{i}"} for i in range(15)], max_workers=15,
                                            max_tokens=4000, return_exceptions=True)
    assert not results.errors
    stats = client_env.stats()
    assert stats["rate_limited"] == 0
    assert stats["peak_concurrency"] <= 5


_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import claude_client
from _admission import RateLimits, controller_for
claude_client.reset_client()
claude_client.configure(max_retries=6)  # a shared key: a retried 429 is the normal cost of a race
client = claude_client.get_client()
controller_for(client, claude_client.DEFAULT_MODEL, RateLimits(minute_s=float(sys.argv[2])))
prompts = [{"prompt": f"{os.getpid()} {i} " + "abcd" * 1540} for i in range(int(sys.argv[3]))]  # ~2,000 tokens
started = time.perf_counter()
results = claude_client.invoke_parallel(prompts, max_workers=8, max_tokens=32, return_exceptions=True)
errors = sorted({str(e)[:120] for e in results.errors.values()})
print(json.dumps({"failed": len(results.errors), "errors": errors, "wall": time.perf_counter() - started,
                  "tokens": results.usage.input_tokens}))
"""


def test_two_processes_on_one_key_slow_down_together(client_env: Emulator) -> None:
    limit = 60_000
    client_env.configure(rate_limit_itpm=limit, rate_limit_minute_s=MINUTE_S)
    env = dict(os.environ)
    per_process = 30  # 60k tokens each: alone, one bucket; together, 120k = one bucket + 6 s of refill
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(SCRIPTS), str(MINUTE_S), str(per_process)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    assert all(o["failed"] == 0 for o in outs), outs
    stats = client_env.stats()
    assert stats["messages"] - stats["rate_limited"] == 2 * per_process
    # Each saw the other's use in the headers and waited. Two processes that start at the same
    # instant both see a full bucket, so their first bursts can overlap (a few 429s, retried);
    # after that they share the refill.
    assert stats["rate_limited"] <= 0.3 * 2 * per_process, stats["rate_limited"]
    total = sum(o["tokens"] for o in outs)
    assert total <= limit + limit / MINUTE_S * wall  # never more than the limit allows
    assert max(o["wall"] for o in outs) >= 0.6 * (total - limit) / (limit / MINUTE_S)  # they slowed down


def test_a_429_without_rate_limit_headers_pauses_everyone() -> None:
    """Behind a proxy that sends no rate-limit headers (the fast path), a 429 still makes every
    request wait what the server asked."""
    import time as _time

    from _admission import AdmissionController
    from _errors import ClaudeInvocationError

    controller = AdmissionController("claude-sonnet-4-6")
    params = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    controller.admit(params).finish({"request-id": "x"}, None, None)  # no rate-limit headers: the fast path
    assert controller.snapshot()["mode"] == "free"
    error = ClaudeInvocationError("429", kind="rate_limit", status_code=429, retry_after=0.5)
    controller.admit(params).finish({"retry-after": "0.5"}, None, error)
    started = _time.monotonic()
    controller.admit(params)
    assert _time.monotonic() - started >= 0.4
