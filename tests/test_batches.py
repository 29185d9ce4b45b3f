"""invoke_batch against the emulator's Message Batches endpoints, through the real SDK over HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import claude_client
from claude_client import ClaudeInvocationError, InterruptToken
import _batch_journal
from message_batches import BatchProgress, invoke_batch

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
FAST = 0.002  # emulator seconds per batch request


def creates(emu):
    return [r for r in emu.requests if r.method == "POST" and r.path == "/v1/messages/batches"]


def base_id(custom_id):
    """A request's own custom_id: the custom_id sent, without the nonce of its batch."""
    return custom_id.rsplit("_", 1)[0]


def on_path(emu, suffix, method=None):
    return [r for r in emu.requests if r.path.endswith(suffix) and (method is None or r.method == method)]


def prompts_of(n, prefix="item"):
    return [{"prompt": f"{prefix} {i}"} for i in range(n)]


# --------------------------------------------------------------------------- results and order


def test_results_in_input_order_with_usage_and_batch_price(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    n = 30
    results = invoke_batch(prompts_of(n), poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(n)]
    assert results.errors == {}
    assert len(creates(client_env)) == 1
    body = creates(client_env)[0].body
    ids = [r["custom_id"] for r in body["requests"]]
    assert len(set(ids)) == n and all(cid.startswith(f"req-{i}-") for i, cid in enumerate(ids))
    assert len({cid.rsplit("_", 1)[1] for cid in ids}) == 1  # one nonce for the batch
    assert {r["params"]["model"] for r in body["requests"]} == {"claude-sonnet-5-5"}  # the default model
    # The default model thinks (adaptive, effort high): a thinking block first, which the text leaves out.
    assert [b["type"] for b in results[3].content] == ["thinking", "text"]
    assert results[3].content[0]["signature"] and results[3] == "Echo: item 3"
    # usage summed over the items: output includes the thinking tokens (8 each at effort high)
    assert results.usage.thinking_tokens == 8 * n
    assert results.usage.output_tokens == sum(len(r.split()) for r in results) + 8 * n
    assert results.usage.input_tokens == sum(r.usage.input_tokens for r in results)
    u = results.usage
    standard = (u.input_tokens * 2.0 + u.output_tokens * 10.0) / 1e6  # claude-sonnet-5-5 list price
    assert results.cost_usd == pytest.approx(standard * 0.5)
    assert results[3].usage.output_tokens == 3 + 8 and results[3].stop_reason == "end_turn"


def test_results_jsonl_out_of_order_still_land_in_their_slots(client_env):
    # Distinct reply lengths make a misplaced result visible.
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = [{"prompt": f"q{i} [[words={i + 1}]]"} for i in range(12)]
    results = invoke_batch(prompts, poll_interval=0.05)
    assert [len(r.split()) for r in results] == list(range(1, 13))
    assert all(r.split()[0] == "Echo:" for r in results)


def test_custom_ids_are_deterministic_with_a_nonce_per_batch(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    invoke_batch(prompts_of(5), poll_interval=0.05)
    invoke_batch(prompts_of(5), poll_interval=0.05)
    first, second = creates(client_env)
    assert [base_id(r["custom_id"]) for r in first.body["requests"]] == [
        base_id(r["custom_id"]) for r in second.body["requests"]
    ]
    # Each batch carries a nonce of its own, so its results name the create call that made it.
    nonces = [{r["custom_id"].rsplit("_", 1)[1] for r in c.body["requests"]} for c in (first, second)]
    assert all(len(n) == 1 for n in nonces) and nonces[0] != nonces[1]
    assert all(len(r["custom_id"]) <= 64 for r in first.body["requests"])
    invoke_batch(prompts_of(5), max_tokens=50, poll_interval=0.05)
    third = creates(client_env)[2]
    assert [base_id(r["custom_id"]) for r in third.body["requests"]] != [
        base_id(r["custom_id"]) for r in first.body["requests"]
    ]


def test_same_prompt_dicts_as_invoke_parallel(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = [
        {"prompt": "a", "system": "be brief", "temperature": 1.0, "max_tokens": 50, "effort": "low"},
        {"prompt": "b c d e", "model": "claude-haiku-4-5"},
    ]
    results = invoke_batch(prompts, shared_system="shared", poll_interval=0.05)
    assert results[0] == "Echo: a" and results[1] == "Echo: b c d e"
    sent = {r["custom_id"].split("-")[1]: r["params"] for r in creates(client_env)[0].body["requests"]}
    assert sent["0"]["max_tokens"] == 50 and "temperature" not in sent["0"]  # the default is not sent
    assert sent["0"]["output_config"] == {"effort": "low"}
    assert sent["1"]["model"] == "claude-haiku-4-5" and "output_config" not in sent["1"]
    assert "stream" not in sent["0"]
    assert results[1].model == "claude-haiku-4-5"
    assert [b["type"] for b in results[1].content] == ["text"]  # Haiku 4.5 does not think by default
    assert results[0].usage.thinking_tokens == 2  # effort low


def test_empty_prompt_list_sends_nothing(client_env, tmp_path):
    assert list(invoke_batch([], journal=tmp_path / "j.json")) == []
    assert client_env.requests == []


# --------------------------------------------------------------------------- splitting


def test_split_by_count(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    seen = []
    results = invoke_batch(prompts_of(25), poll_interval=0.05, max_batch_requests=10, on_progress=seen.append)
    assert list(results) == [f"Echo: item {i}" for i in range(25)]
    sizes = [len(r.body["requests"]) for r in creates(client_env)]
    assert sizes == [10, 10, 5]
    last = seen[-1]
    assert [(b.start, b.end) for b in last.batches] == [(0, 10), (10, 20), (20, 25)]
    assert last.done == last.total == last.succeeded == 25
    assert len(set(last.batch_ids)) == 3


def test_split_by_bytes(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = [{"prompt": f"{i} " + "x" * 900} for i in range(10)]
    limit = 3000
    results = invoke_batch(prompts, poll_interval=0.05, max_batch_bytes=limit)
    assert [r.split()[1] for r in results] == [str(i) for i in range(10)]
    made = creates(client_env)
    assert len(made) >= 4
    assert sum(len(r.body["requests"]) for r in made) == 10
    for r in made:
        assert len(json.dumps(r.body, separators=(",", ":")).encode()) <= limit


# --------------------------------------------------------------------------- per-item failures


def test_errored_and_expired_items_keep_the_others(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = prompts_of(6)
    prompts[1] = {"prompt": "bad [[batch=errored]]"}
    prompts[4] = {"prompt": "late [[batch=expired]]"}
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_batch(prompts, poll_interval=0.05)
    err = info.value
    assert err.results[0] == "Echo: item 0" and err.results[5] == "Echo: item 5"
    assert err.results[1] is None and err.results[4] is None
    assert set(err.errors) == {1, 4}
    assert err.errors[1].kind == "batch_errored"
    assert err.errors[4].kind == "batch_expired"
    assert "prompts[1]" in str(err.errors[1])


def test_return_exceptions_puts_errors_in_slots(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = prompts_of(3) + [{"prompt": "x [[batch=errored]]"}]
    results = invoke_batch(prompts, poll_interval=0.05, return_exceptions=True)
    assert results[:3] == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert isinstance(results[3], ClaudeInvocationError) and results[3].kind == "batch_errored"
    assert set(results.errors) == {3}
    assert results[3].transient is False


# --------------------------------------------------------------------------- journal


def test_rerun_after_completion_sends_no_request(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    prompts = prompts_of(8) + [{"prompt": "y [[batch=errored]]"}]
    first = invoke_batch(prompts, journal=journal, poll_interval=0.05, return_exceptions=True)
    data = json.loads(journal.read_text())
    assert data["state"] == "ended" and len(data["results"]) == 9
    before = len(client_env.requests)
    second = invoke_batch(prompts, journal=journal, poll_interval=0.05, return_exceptions=True)
    assert len(client_env.requests) == before
    assert list(second[:8]) == list(first[:8])
    assert [r.usage for r in second[:8]] == [r.usage for r in first[:8]]
    assert second.cost_usd == pytest.approx(first.cost_usd)
    assert second[8].kind == "batch_errored"


def test_journal_of_another_job_is_refused(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    before = len(client_env.requests)
    with pytest.raises(ValueError, match="journal.*different job"):
        invoke_batch(prompts_of(3, prefix="other"), journal=journal, poll_interval=0.05)
    with pytest.raises(ValueError, match="journal.*different job"):
        invoke_batch(prompts_of(3), journal=journal, model="claude-haiku-4-5", poll_interval=0.05)
    assert len(client_env.requests) == before


def test_unreadable_journal_is_refused(client_env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="journal"):
        invoke_batch(prompts_of(2), journal=bad)
    assert bad.read_text() == "{not json"
    assert client_env.requests == []


def test_journal_written_before_waiting(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    snapshots = []

    def look(progress):
        snapshots.append(json.loads(journal.read_text()))

    invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05, max_batch_requests=2, on_progress=look)
    first = snapshots[0]
    assert len(creates(client_env)) == 2
    assert len({b["id"] for b in first["batches"]}) == 2
    assert all(b["id"].startswith("msgbatch_") for b in first["batches"])
    assert [(b["start"], b["end"]) for b in first["batches"]] == [(0, 2), (2, 4)]
    assert first["batches"][0]["first_custom_id"].startswith("req-0-")
    assert first["batches"][1]["last_custom_id"].startswith("req-3-")


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from message_batches import invoke_batch
    prompts = [{{"prompt": f"item {{i}}"}} for i in range({n})]
    invoke_batch(prompts, journal={journal!r}, poll_interval=0.05, max_batch_requests={split})
    """
)


def test_resume_after_process_killed_mid_poll(client_env, tmp_path):
    n, split = 12, 5
    client_env.configure(batch_seconds_per_request=0.3)
    journal = tmp_path / "job.json"
    code = _CHILD.format(scripts=str(SCRIPTS), n=n, journal=str(journal), split=split)
    child = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = json.loads(journal.read_text())
                if all(b["id"] for b in data["batches"]):
                    break
            except (OSError, ValueError):
                pass
            assert child.poll() is None, "the child ended before it was killed"
            time.sleep(0.01)
        else:
            pytest.fail("the child never journaled its batch ids")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert data["state"] != "ended"
    assert len(creates(client_env)) == 3
    results = invoke_batch(prompts_of(n), journal=journal, poll_interval=0.05, max_batch_requests=split)
    assert list(results) == [f"Echo: item {i}" for i in range(n)]
    assert len(creates(client_env)) == 3  # resumed: no new batch
    assert json.loads(journal.read_text())["state"] == "ended"


def test_timeout_leaves_batches_running_and_resume_finishes(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=0.2)
    journal = tmp_path / "job.json"
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, timeout=0.3)
    err = info.value
    assert err.kind == "timeout"
    assert str(journal) in str(err) and "resume" in str(err)
    assert on_path(client_env, "/cancel") == []
    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    assert len(creates(client_env)) == 1


def _crash_during_create(journal: Path, ago: float = 1.0) -> None:
    """Rewrite a journal as a run killed inside the create call ``ago`` seconds ago leaves it: the
    nonce and the start of the call recorded, no batch id."""
    data = json.loads(journal.read_text())
    for b in data["batches"]:
        assert b["nonce"]
        b.update(id=None, status="pending", seen=False, request_counts=None, create_started_at=time.time() - ago,
                 results_fetched=False, cancel_requested=False)
    data["state"] = "submitting"
    data["results"] = {}
    journal.write_text(json.dumps(data))


def test_crash_during_create_adopts_the_created_batch_by_its_nonce(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=0.05)
    journal = tmp_path / "job.json"
    token = InterruptToken()
    invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05, interrupt_token=token,
                 on_progress=lambda p: token.interrupt(), on_interrupt="leave")
    original = json.loads(journal.read_text())["batches"][0]["id"]
    _crash_during_create(journal)
    results = invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(4)]
    assert len(creates(client_env)) == 1  # found through the batches list, not submitted again
    entry = json.loads(journal.read_text())["batches"][0]
    assert entry["id"] == original and entry["adopted"] is True and entry["candidates"] == []


def test_crash_during_create_without_a_batch_submits_again(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    _crash_during_create(journal, ago=60)  # long enough ago that a create that reached the server took effect
    client_env.reset()  # the server has no such batch
    client_env.configure(batch_seconds_per_request=FAST)
    results = invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    assert list(results) == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert len(creates(client_env)) == 1


def test_resume_uses_the_journal_split(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=0.05)
    journal = tmp_path / "job.json"
    token = InterruptToken()
    invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, interrupt_token=token, max_batch_requests=2,
                 on_progress=lambda p: token.interrupt(), on_interrupt="leave")
    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05)  # default split now
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    assert len(creates(client_env)) == 3


def test_explicit_base_url_and_api_key(client_env, monkeypatch):
    client_env.configure(batch_seconds_per_request=FAST)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    claude_client.reset_client()
    results = invoke_batch(prompts_of(2), poll_interval=0.05, base_url=client_env.base_url, api_key="sk-ant-explicit")
    assert list(results) == ["Echo: item 0", "Echo: item 1"]


# --------------------------------------------------------------------------- interrupts


def test_interrupt_token_cancels_batches(client_env, tmp_path, caplog):
    client_env.configure(batch_seconds_per_request=0.5)
    journal = tmp_path / "job.json"
    token = InterruptToken()

    def stop(progress: BatchProgress):
        token.interrupt()

    with caplog.at_level("WARNING", logger="message_batches"):
        results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, on_progress=stop,
                               interrupt_token=token, max_batch_requests=3)
    # like invoke_parallel_interruptible: returns at once, None where nothing was fetched
    assert list(results) == [None] * 6 and results.errors == {}
    assert "canceled batches" in caplog.text and str(journal) in caplog.text
    ids = json.loads(journal.read_text())["batches"]
    cancels = on_path(client_env, "/cancel", "POST")
    assert sorted(r.path for r in cancels) == sorted(f"/v1/messages/batches/{b['id']}/cancel" for b in ids)
    # Collect what the canceled batches produced: canceled items are distinguished by kind.
    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, return_exceptions=True)
    assert len(creates(client_env)) == 2
    kinds = [getattr(r, "kind", "ok") for r in results]
    assert "batch_canceled" in kinds
    assert set(kinds) <= {"ok", "batch_canceled"}
    for i, r in enumerate(results):
        assert r == f"Echo: item {i}" or r.kind == "batch_canceled"


def test_interrupt_leave_keeps_batches_running(client_env, tmp_path, caplog):
    client_env.configure(batch_seconds_per_request=0.05)
    journal = tmp_path / "job.json"
    token = InterruptToken()
    with caplog.at_level("WARNING", logger="message_batches"):
        results = invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05, interrupt_token=token,
                               on_progress=lambda p: token.interrupt(), on_interrupt="leave")
    assert list(results) == [None] * 4
    assert "left running" in caplog.text and str(journal) in caplog.text
    assert on_path(client_env, "/cancel") == []
    results = invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(4)]
    assert len(creates(client_env)) == 1


def test_interrupt_from_another_thread_stops_polling_promptly(client_env):
    import threading

    client_env.configure(batch_seconds_per_request=5.0)
    token = InterruptToken()
    threading.Timer(0.3, token.interrupt).start()
    started = time.monotonic()
    results = invoke_batch(prompts_of(3), poll_interval=30.0, interrupt_token=token)
    assert time.monotonic() - started < 10  # not the 30 s poll interval
    assert list(results) == [None] * 3
    assert len(on_path(client_env, "/cancel", "POST")) == 1


def test_keyboard_interrupt_cancels_and_propagates(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=0.5)

    def ctrl_c(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invoke_batch(prompts_of(4), journal=tmp_path / "j.json", poll_interval=0.05, on_progress=ctrl_c)
    assert len(on_path(client_env, "/cancel", "POST")) == 1


def test_token_already_interrupted_creates_nothing(client_env):
    token = InterruptToken()
    token.interrupt()
    assert list(invoke_batch(prompts_of(3), poll_interval=0.05, interrupt_token=token)) == [None] * 3
    assert client_env.requests == []


# --------------------------------------------------------------------------- wire details


def test_transient_404_after_create_is_retried(client_env):
    client_env.configure(batch_seconds_per_request=FAST, batch_retrieve_404_times=2)
    results = invoke_batch(prompts_of(3), poll_interval=0.05)
    assert list(results) == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    statuses = [r.status for r in client_env.requests if r.method == "GET" and "/results" not in r.path]
    assert statuses[:2] == [404, 404]


def test_cache_uses_one_hour_ttl(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    shared = "context " * 2000
    results = invoke_batch(prompts_of(3), shared_system=shared, cache_shared_system=True, poll_interval=0.05)
    assert len(results) == 3
    for req in creates(client_env)[0].body["requests"]:
        marks = [b["cache_control"] for b in req["params"]["system"] if "cache_control" in b]
        assert marks == [{"type": "ephemeral", "ttl": "1h"}]
    assert results.usage.cache_creation_1h_input_tokens > 0
    assert results.usage.cache_creation_1h_input_tokens == results.usage.cache_creation_input_tokens


def test_progress_snapshots(client_env):
    client_env.configure(batch_seconds_per_request=0.02)
    seen = []
    invoke_batch(prompts_of(10), poll_interval=0.05, on_progress=seen.append, max_batch_requests=4)
    assert seen, "on_progress was never called"
    for p in seen:
        assert p.total == 10 and len(p.batches) == 3
        assert p.processing + p.succeeded + p.errored + p.canceled + p.expired == 10
        assert sum(b.end - b.start for b in p.batches) == 10
    assert seen[-1].done == 10 and all(b.processing_status == "ended" for b in seen[-1].batches)


def test_failing_progress_callback_does_not_stop_the_job(client_env):
    client_env.configure(batch_seconds_per_request=FAST)

    def broken(progress):
        raise RuntimeError("display bug")

    assert list(invoke_batch(prompts_of(2), poll_interval=0.05, on_progress=broken)) == ["Echo: item 0", "Echo: item 1"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        ([{"text": "x"}], {}, "prompt"),
        ([{"prompt": "x", "colour": 1}], {}, "colour"),
        ([{"prompt": "x"}], {"poll_interval": 0}, "poll_interval"),
        ([{"prompt": "x"}], {"timeout": -1}, "timeout"),
        ([{"prompt": "x"}], {"on_progress": 3}, "on_progress"),
        ([{"prompt": "x"}], {"on_interrupt": "stop"}, "on_interrupt"),
        ([{"prompt": "x"}], {"max_batch_requests": 0}, "max_batch_requests"),
        ([{"prompt": "x"}], {"max_batch_requests": 100_001}, "max_batch_requests"),
        ([{"prompt": "x"}], {"max_batch_bytes": 300 * 1024 * 1024}, "max_batch_bytes"),
        ([{"prompt": "x" * 5000}], {"max_batch_bytes": 2000}, r"prompts\[0\]"),
        ([{"prompt": "x"}], {"journal": "/nonexistent-dir/j.json"}, "journal"),
        ([{"prompt": "x"}], {"interrupt_token": object()}, "interrupt_token"),
        ([{"prompt": "x"}], {"retry_failed": 1}, "retry_failed"),
    ],
)
def test_validation_sends_nothing(client_env, prompts, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        invoke_batch(prompts, **kwargs)
    assert client_env.requests == []


# --------------------------------------------------------------------------- recovery edge cases


def test_empty_journal_file_is_a_new_journal(client_env, tmp_path):
    import tempfile

    client_env.configure(batch_seconds_per_request=FAST)
    fd, name = tempfile.mkstemp(dir=tmp_path, suffix=".json")
    os.close(fd)
    assert os.path.getsize(name) == 0
    results = invoke_batch(prompts_of(3), journal=name, poll_interval=0.05)
    assert list(results) == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert json.loads(Path(name).read_text())["state"] == "ended"
    again = invoke_batch(prompts_of(3), journal=name, poll_interval=0.05)
    assert list(again) == list(results) and len(creates(client_env)) == 1


def test_batch_of_another_job_is_watched_never_taken(client_env, tmp_path, caplog):
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "a.json"
    invoke_batch(prompts_of(4, prefix="job A"), journal=journal, poll_interval=0.05)
    _crash_during_create(journal, ago=60)  # job A died inside create, before reaching the server
    client_env.reset()
    client_env.configure(batch_seconds_per_request=FAST)
    # Meanwhile another job with the same key submits a batch of the same size.
    other = invoke_batch(prompts_of(4, prefix="job B"), poll_interval=0.05)
    assert list(other) == [f"Echo: job B {i}" for i in range(4)]
    foreign = creates(client_env)[0]
    with caplog.at_level("INFO", logger="message_batches"):
        results = invoke_batch(prompts_of(4, prefix="job A"), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: job A {i}" for i in range(4)]
    assert results.errors == {}
    assert "may be its batch" in caplog.text and "another job's requests" in caplog.text
    assert len(creates(client_env)) == 2  # job A's requests were submitted once more
    data = json.loads(journal.read_text())
    assert data["state"] == "ended"
    foreign_id = [b["id"] for b in client_env.batches()][0]
    assert data["foreign_batches"] == [foreign_id] and data["batches"][0]["id"] != foreign_id
    assert data["batches"][0].get("adopted") is not True
    assert base_id(creates(client_env)[1].body["requests"][0]["custom_id"]) != base_id(
        foreign.body["requests"][0]["custom_id"])
    # A re-run after completion sends nothing.
    before = len(client_env.requests)
    assert list(invoke_batch(prompts_of(4, prefix="job A"), journal=journal, poll_interval=0.05)) == list(results)
    assert len(client_env.requests) == before


def test_old_journal_that_adopted_another_jobs_batch_is_reset(client_env, tmp_path, caplog):
    """A version-1 journal (no nonces) whose entry took over a batch without proof: its results
    hold none of the job's requests, so the entry is submitted again."""
    client_env.configure(batch_seconds_per_request=FAST)
    invoke_batch(prompts_of(3, prefix="job B"), poll_interval=0.05)
    foreign_id = client_env.batches()[0]["id"]
    journal = tmp_path / "a.json"
    invoke_batch(prompts_of(3, prefix="job A"), journal=journal, poll_interval=0.05)
    data = json.loads(journal.read_text())
    data["version"], data["state"], data["results"] = 1, "running", {}
    entry = data["batches"][0]
    for key in ("nonce", "candidates", "result_counts"):
        entry.pop(key, None)
    entry.update(id=foreign_id, status="ended", seen=True, adopted=True, results_fetched=False)
    journal.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="message_batches"):
        results = invoke_batch(prompts_of(3, prefix="job A"), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: job A {i}" for i in range(3)]
    assert "belongs to another job" in caplog.text
    assert len(creates(client_env)) == 3
    data = json.loads(journal.read_text())
    assert data["foreign_batches"] == [foreign_id] and data["version"] == 3 and data["batches"][0]["nonce"]


def test_a_create_that_lands_late_is_taken_not_submitted_twice(client_env, tmp_path):
    """Right after a crash inside create no batch may be visible yet (the request may still be on
    its way): the re-run waits for the create to settle, and takes the batch when it shows up."""
    import anthropic

    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    body = creates(client_env)[0].body
    _crash_during_create(journal, ago=0.5)
    client_env.reset()  # the server has no batch of the job yet
    client_env.configure(batch_seconds_per_request=FAST)
    sdk = anthropic.Anthropic(base_url=client_env.base_url, api_key="sk-ant-test", max_retries=0)
    landed = []

    def late(progress):  # the cut-short create reaches the server while the re-run waits
        if not landed:
            landed.append(sdk.messages.batches.create(requests=body["requests"]).id)

    results = invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05, on_progress=late)
    assert list(results) == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert len(creates(client_env)) == 1  # the late one only
    assert json.loads(journal.read_text())["batches"][0]["id"] == landed[0]


def test_interrupt_reports_failed_cancels_as_still_running(client_env, tmp_path, caplog):
    from anthropic_emulator import Emulator

    own = Emulator(batch_seconds_per_request=1.0)  # a server of its own, to stop mid-job
    own.start()
    journal = tmp_path / "job.json"
    token = InterruptToken()

    def network_gone(progress):
        own.stop()  # the server goes away: the cancel call cannot succeed
        token.interrupt()

    try:
        with caplog.at_level("WARNING", logger="message_batches"):
            results = invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05, on_progress=network_gone,
                                   interrupt_token=token, api_key="sk-ant-test", base_url=own.base_url)
    finally:
        own.stop()
    assert list(results) == [None] * 3
    batch_id = json.loads(journal.read_text())["batches"][0]["id"]
    summary = [r.message for r in caplog.records if "interrupted;" in r.message]
    assert len(summary) == 1
    assert f"{batch_id} are still running (cancel failed)" in summary[0]
    assert "canceled batches" not in summary[0] and "no batch was running" not in summary[0]
    assert str(journal) in summary[0]
    assert json.loads(journal.read_text())["batches"][0]["cancel_requested"] is False


def test_interrupt_does_not_call_ended_batches_canceled(client_env, tmp_path, caplog):
    client_env.configure(batch_seconds_per_request=5.0)
    journal = tmp_path / "job.json"
    token = InterruptToken()

    def finish_then_stop(progress):
        client_env.advance_clock(60)  # both batches finish before the cancel calls reach the server
        token.interrupt()

    with caplog.at_level("WARNING", logger="message_batches"):
        invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05, max_batch_requests=2,
                     on_progress=finish_then_stop, interrupt_token=token)
    ids = [b["id"] for b in json.loads(journal.read_text())["batches"]]
    summary = [r.message for r in caplog.records if "interrupted;" in r.message]
    assert len(summary) == 1
    assert f"batches {', '.join(ids)} had already ended" in summary[0]
    assert "canceled batches" not in summary[0] and "no batch was running" not in summary[0]
    # Nothing was canceled: the re-run collects every reply.
    results = invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(4)]
    assert len(creates(client_env)) == 2


_CHILD_CTRL_C = textwrap.dedent(
    """
    import logging, sys
    sys.path.insert(0, {scripts!r})
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from message_batches import invoke_batch
    prompts = [{{"prompt": f"item {{i}}"}} for i in range(3)]
    try:
        invoke_batch(prompts, journal={journal!r}, poll_interval=0.05, on_interrupt={on_interrupt!r})
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


@pytest.mark.parametrize("on_interrupt", ["cancel", "leave"])
def test_ctrl_c_during_create_journals_the_batch_it_may_have_made(client_env, tmp_path, on_interrupt):
    """A real SIGINT while the create call waits for its answer (the server has made the batch):
    the batch cannot be told from another job's until it ends, so it is journaled as a candidate,
    not canceled; the re-run proves it is the job's by its nonce and collects it."""
    client_env.configure(batch_seconds_per_request=5.0, batch_create_delay_ms=10_000)  # ample under load
    journal = tmp_path / "job.json"
    code = _CHILD_CTRL_C.format(scripts=str(SCRIPTS), journal=str(journal), on_interrupt=on_interrupt)
    child = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client_env.batches():
            assert child.poll() is None, child.communicate()
            time.sleep(0.01)
        assert client_env.batches(), "the child never created its batch"
        data = json.loads(journal.read_text())
        assert data["batches"][0]["id"] is None and data["batches"][0]["create_started_at"]
        child.send_signal(signal.SIGINT)  # the create answer is still seconds away
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "KeyboardInterrupt" in out, err
    (batch,) = client_env.batches()
    assert "no batch was running" not in err
    entry = json.loads(journal.read_text())["batches"][0]
    assert entry["id"] is None and entry["candidates"] == [batch["id"]]
    assert all(r["custom_id"].endswith("_" + entry["nonce"]) for r in creates(client_env)[0].body["requests"])
    assert on_path(client_env, "/cancel", "POST") == []  # never cancels a batch it cannot prove its own
    assert f"{batch['id']} may be the batch it made" in err and str(journal) in err
    client_env.configure(batch_create_delay_ms=0)
    client_env.advance_clock(60)
    results = invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    assert list(results) == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert len(creates(client_env)) == 1  # resumed, not submitted again
    entry = json.loads(journal.read_text())["batches"][0]
    assert entry["id"] == batch["id"] and entry["adopted"] is True


# --------------------------------------------------------------------------- retry_failed


def custom_ids(record):
    """The requests' own custom_ids (each batch adds its nonce)."""
    return [base_id(r["custom_id"]) for r in record.body["requests"]]


def params_of(record):
    return [r["params"] for r in record.body["requests"]]


def _job_with_expired(client_env, journal, n=6):
    """Run a job where requests 0 and 1 succeed and the others expire (journaled, ended).

    At 30,000 emulator seconds per request the batch reaches two requests within its 24 hours;
    the clock is moved past the expiry at the first poll. The next batches are fast again.
    """
    client_env.configure(batch_seconds_per_request=30_000.0)
    moved = []

    def day_passes(progress):
        if not moved:
            moved.append(True)
            client_env.advance_clock(90_000)

    results = invoke_batch(prompts_of(n), journal=journal, poll_interval=0.05, on_progress=day_passes,
                           return_exceptions=True)
    client_env.configure(batch_seconds_per_request=FAST)
    return results


def test_retry_failed_finishes_canceled_requests_without_resending_the_others(client_env, tmp_path, caplog):
    client_env.configure(batch_seconds_per_request=5.0)
    journal = tmp_path / "job.json"
    token = InterruptToken()

    def stop(progress):
        client_env.advance_clock(12)  # requests 0 and 1 are done (due at 5 s and 10 s)
        token.interrupt()

    with caplog.at_level("WARNING", logger="message_batches"):
        first = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, on_progress=stop,
                             interrupt_token=token, on_interrupt="cancel")
    assert list(first) == [None] * 6
    assert "retry_failed=True" in caplog.text
    # The cancel lets the request in flight finish (due at 15 s); the rest end canceled.
    client_env.advance_clock(10)
    client_env.configure(batch_seconds_per_request=FAST)
    # A plain re-run collects the canceled batch: the canceled requests stay failed.
    collected = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, return_exceptions=True)
    kinds = [getattr(r, "kind", "ok") for r in collected]
    assert kinds == ["ok"] * 3 + ["batch_canceled"] * 3
    assert len(creates(client_env)) == 1
    before = len(client_env.requests)
    again = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, return_exceptions=True)
    assert [getattr(r, "kind", "ok") for r in again] == kinds and len(client_env.requests) == before

    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, retry_failed=True)
    assert list(results) == [f"Echo: item {i}" for i in range(6)] and results.errors == {}
    original, retry = creates(client_env)
    assert custom_ids(retry) == custom_ids(original)[3:]  # the succeeded requests were not re-sent
    assert params_of(retry) == params_of(original)[3:]  # same custom_ids and params
    assert len(client_env.batches()) == 2
    # Usage and cost: each request paid once, exactly like a run that was never interrupted.
    assert results.usage.output_tokens == sum(r.usage.output_tokens for r in results)
    assert results.cost_usd == pytest.approx(sum(r.cost_usd for r in results))
    clean = invoke_batch(prompts_of(6), poll_interval=0.05)
    assert results.usage == clean.usage and results.cost_usd == pytest.approx(clean.cost_usd)
    # Nothing left to retry: a further retry_failed re-run sends nothing.
    before = len(client_env.requests)
    assert list(invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, retry_failed=True)) == list(results)
    assert len(client_env.requests) == before


def test_retry_failed_resubmits_expired_requests_and_journals_the_retry(client_env, tmp_path):
    journal = tmp_path / "job.json"
    first = _job_with_expired(client_env, journal)
    assert [getattr(r, "kind", "ok") for r in first] == ["ok", "ok"] + ["batch_expired"] * 4
    ok_ids = [r.id for r in first[:2]]
    data = json.loads(journal.read_text())
    assert data["version"] == 3 and "retries" not in data

    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, retry_failed=True)
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    assert [r.id for r in results[:2]] == ok_ids  # the journaled replies, not new ones
    original, retry = creates(client_env)
    assert custom_ids(retry) == custom_ids(original)[2:]
    data = json.loads(journal.read_text())
    assert data["version"] == 3 and data["state"] == "ended"
    (entry,) = data["retries"]
    assert entry["nonce"] and entry["nonce"] != data["batches"][0]["nonce"]
    assert entry["indexes"] == [2, 3, 4, 5] and entry["round"] == 1
    assert entry["id"] == client_env.batches()[1]["id"] and entry["results_fetched"] is True
    assert entry["first_custom_id"] == custom_ids(original)[2] and entry["last_custom_id"] == custom_ids(original)[5]
    assert entry["result_counts"] == {"succeeded": 4}
    assert data["batches"][0]["result_counts"] == {"succeeded": 2, "expired": 4}
    assert all(data["results"][cid]["type"] == "succeeded" for cid in custom_ids(original))
    assert results.usage.output_tokens == 6 * (3 + 8) and results.cost_usd == pytest.approx(sum(r.cost_usd for r in results))
    # A re-run reads the journal and sends nothing.
    before = len(client_env.requests)
    assert list(invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05)) == list(results)
    assert len(client_env.requests) == before


def test_retry_failed_splits_the_retry_like_the_job(client_env, tmp_path):
    journal = tmp_path / "job.json"
    _job_with_expired(client_env, journal, n=7)
    results = invoke_batch(prompts_of(7), journal=journal, poll_interval=0.05, retry_failed=True,
                           max_batch_requests=2)
    assert list(results) == [f"Echo: item {i}" for i in range(7)]
    assert [custom_ids(r) for r in creates(client_env)[1:]] == [
        custom_ids(creates(client_env)[0])[a:b] for a, b in ((2, 4), (4, 6), (6, 7))
    ]
    retries = json.loads(journal.read_text())["retries"]
    assert [e["indexes"] for e in retries] == [[2, 3], [4, 5], [6]] and {e["round"] for e in retries} == {1}


def test_retry_failed_resends_errored_requests_once_per_call(client_env, tmp_path):
    # The emulator's [[batch=errored]] fails on every attempt (``times=`` does not apply to batch
    # requests), so the retried request fails again: this shows what is re-sent, and how often.
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    prompts = prompts_of(4)
    prompts[2] = {"prompt": "bad [[batch=errored]]"}
    results = invoke_batch(prompts, journal=journal, poll_interval=0.05, retry_failed=True, return_exceptions=True)
    assert [getattr(r, "kind", "ok") for r in results] == ["ok", "ok", "batch_errored", "ok"]
    original, retry = creates(client_env)  # one retry round in this call, not a loop
    assert custom_ids(retry) == [custom_ids(original)[2]] and params_of(retry) == [params_of(original)[2]]
    assert client_env.batches()[1]["id"] in str(results[2])  # the error names the retry batch
    invoke_batch(prompts, journal=journal, poll_interval=0.05, retry_failed=True, return_exceptions=True)
    assert len(creates(client_env)) == 3
    assert custom_ids(creates(client_env)[2]) == custom_ids(retry) and params_of(creates(client_env)[2]) == params_of(retry)
    assert [e["round"] for e in json.loads(journal.read_text())["retries"]] == [1, 2]
    before = len(client_env.requests)
    with pytest.raises(ClaudeInvocationError) as info:
        invoke_batch(prompts, journal=journal, poll_interval=0.05)
    assert set(info.value.errors) == {2} and len(client_env.requests) == before


def test_retry_failed_refuses_the_journal_of_another_job(client_env, tmp_path):
    journal = tmp_path / "job.json"
    _job_with_expired(client_env, journal)
    before = len(client_env.requests)
    with pytest.raises(ValueError, match="journal.*different job"):
        invoke_batch(prompts_of(6, prefix="other"), journal=journal, poll_interval=0.05, retry_failed=True)
    assert len(client_env.requests) == before


def test_retry_progress_counts_each_request_once(client_env, tmp_path):
    journal = tmp_path / "job.json"
    _job_with_expired(client_env, journal)
    client_env.configure(batch_seconds_per_request=5.0)
    seen = []

    def look(progress):
        seen.append(progress)
        client_env.advance_clock(60)  # the retry batch ends before the next poll

    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, retry_failed=True, on_progress=look)
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    first, last = seen[0], seen[-1]
    for p in seen:
        assert p.total == 6 and p.processing + p.succeeded + p.errored + p.canceled + p.expired == 6
    assert (first.processing, first.succeeded, first.expired) == (4, 2, 0)
    planned, retry = first.batches
    assert (planned.start, planned.end, planned.indexes, planned.retry_round) == (0, 6, None, 0)
    assert (planned.succeeded, planned.expired) == (2, 4)  # its own outcome
    assert retry.indexes == (2, 3, 4, 5) and retry.retry_round == 1 and retry.processing == 4
    assert (retry.start, retry.end) == (2, 6)
    assert (last.done, last.succeeded) == (6, 6)
    assert last.batches[1].succeeded == 4 and last.batches[0].expired == 4
    assert last.batch_ids == [b["id"] for b in client_env.batches()]


_CHILD_RETRY = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from message_batches import invoke_batch
    prompts = [{{"prompt": f"item {{i}}"}} for i in range({n})]
    invoke_batch(prompts, journal={journal!r}, poll_interval=0.05, retry_failed=True)
    """
)


def test_crash_during_the_retry_resumes_it(client_env, tmp_path):
    journal = tmp_path / "job.json"
    _job_with_expired(client_env, journal)
    client_env.configure(batch_seconds_per_request=0.3)
    code = _CHILD_RETRY.format(scripts=str(SCRIPTS), n=6, journal=str(journal))
    child = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = json.loads(journal.read_text())
                if data.get("retries") and all(e["id"] for e in data["retries"]):
                    break
            except (OSError, ValueError):
                pass
            assert child.poll() is None, "the child ended before it was killed"
            time.sleep(0.01)
        else:
            pytest.fail("the child never journaled its retry batch")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert data["state"] == "running" and not data["retries"][0]["results_fetched"]
    assert len(creates(client_env)) == 2
    # The journaled retry batch is finished even without retry_failed: it is part of the job now.
    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    assert len(creates(client_env)) == 2  # resumed, not submitted again


def test_crash_during_the_retry_create_adopts_the_retry_batch(client_env, tmp_path):
    journal = tmp_path / "job.json"
    _job_with_expired(client_env, journal)
    invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05, retry_failed=True)
    retry_id = client_env.batches()[1]["id"]
    # Rewrite the journal as a run killed inside the retry's create call leaves it.
    data = json.loads(journal.read_text())
    entry = data["retries"][0]
    entry.update(id=None, status="pending", seen=False, request_counts=None, results_fetched=False,
                 create_started_at=time.time() + 90_000 - 1)  # on the server's clock, moved on a day
    del entry["result_counts"]
    for cid in custom_ids(creates(client_env)[1]):
        data["results"][cid] = {"type": "expired"}
    data["state"] = "submitting"
    journal.write_text(json.dumps(data))
    results = invoke_batch(prompts_of(6), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(6)]
    assert len(creates(client_env)) == 2
    assert json.loads(journal.read_text())["retries"][0]["id"] == retry_id


# --------------------------------------------------------------------------- durability and recovery


def test_journal_directory_is_fsynced_after_each_replace(client_env, tmp_path, monkeypatch):
    import stat

    if os.name == "nt":
        pytest.skip("directories cannot be fsynced on Windows")
    client_env.configure(batch_seconds_per_request=FAST)
    journal = tmp_path / "job.json"
    real_fsync = os.fsync
    events = []

    def recording_fsync(fd):  # the real fsync, noting what was synced and when
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            events.append(("dir", st.st_ino, journal.exists()))
        else:
            events.append(("file", st.st_ino, journal.exists()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    invoke_batch(prompts_of(3), journal=journal, poll_interval=0.05)
    monkeypatch.undo()
    saves = len(events) // 2
    assert saves >= 3
    assert [e[0] for e in events] == ["file", "dir"] * saves
    assert {e[1] for e in events if e[0] == "dir"} == {tmp_path.stat().st_ino}
    # The first journal file does not exist until the replace: the directory is synced after it.
    assert events[0][2] is False and all(e[2] for e in events if e[0] == "dir")


def test_journal_directory_fsync_is_best_effort(tmp_path):
    import message_batches

    _batch_journal.fsync_dir(tmp_path / "no-such-dir")  # cannot be opened: no error
    _batch_journal.fsync_dir(tmp_path)


def _crash_during_create_at(journal: Path, started_at: float) -> None:
    _crash_during_create(journal)
    data = json.loads(journal.read_text())
    for b in data["batches"]:
        b["create_started_at"] = started_at
    journal.write_text(json.dumps(data))


def test_crash_during_create_finds_the_batch_past_the_first_page(client_env, tmp_path):
    import anthropic

    client_env.configure(batch_seconds_per_request=0.05)
    sdk = anthropic.Anthropic(base_url=client_env.base_url, max_retries=0)
    one = [{"custom_id": "filler", "params": {"model": "claude-sonnet-4-6", "max_tokens": 5,
                                               "messages": [{"role": "user", "content": "x"}]}}]
    for _ in range(150):  # batches of other jobs, older than the create that crashed
        sdk.messages.batches.create(requests=one)
    client_env.advance_clock(1000)
    journal = tmp_path / "job.json"
    token = InterruptToken()
    invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05, interrupt_token=token,
                 on_progress=lambda p: token.interrupt(), on_interrupt="leave")
    original = json.loads(journal.read_text())["batches"][0]["id"]
    for _ in range(110):  # newer batches push the job's batch to the second page (100 per page)
        sdk.messages.batches.create(requests=one)
    # The create started (on the server's clock) just before the batch it made.
    _crash_during_create_at(journal, time.time() + 1000 - 1)
    client_env.advance_clock(60)  # the job's batch has ended: its results tell at once whose it is
    made = len(creates(client_env))
    lists_before = len(on_path(client_env, "/v1/messages/batches", "GET"))
    results = invoke_batch(prompts_of(4), journal=journal, poll_interval=0.05)
    assert list(results) == [f"Echo: item {i}" for i in range(4)]
    assert len(creates(client_env)) == made  # found on page 2, not submitted again
    assert json.loads(journal.read_text())["batches"][0]["id"] == original
    # Page 1, then page 2 where the batches become older than the window: the 150 old ones
    # (a third page) are not read.
    lists = on_path(client_env, "/v1/messages/batches", "GET")[lists_before:]
    assert len(lists) == 2


def test_max_cost_usd_submits_only_what_fits_the_cap(client_env):
    import _estimate

    prompts = [{"prompt": f"ticket {i} " + "context " * 50} for i in range(6)]
    one = _estimate.worst_case_cost(_estimate.estimate_request(
        {"model": claude_client.DEFAULT_MODEL, "max_tokens": 100,
         "messages": [{"role": "user", "content": prompts[0]["prompt"]}]}), warm_margin_s=float("inf"))
    cap = one * 0.5 * 3.5  # room for 3 requests at the batch price
    results = invoke_batch(prompts, max_tokens=100, max_cost_usd=cap, poll_interval=0.05, return_exceptions=True)
    assert [isinstance(r, str) for r in results] == [True] * 3 + [False] * 3
    assert all(results[i].kind == "budget" for i in range(3, 6))
    create = next(r for r in client_env.requests if r.path.endswith("/messages/batches") and r.method == "POST")
    assert len(create.body["requests"]) == 3  # the others were never submitted
    assert results.cost_usd <= cap
    with pytest.raises(ValueError, match="max_cost_usd"):
        invoke_batch(prompts, max_cost_usd=-1)


# --------------------------------------------------------------------------- today's API (effort, thinking, rules)


def test_effort_and_thinking_reach_every_request_and_a_prompt_overrides_them(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = [{"prompt": "a"}, {"prompt": "b", "effort": "max"}, {"prompt": "c", "thinking": "between_tools"}]
    results = invoke_batch(prompts, effort="low", thinking="adaptive", poll_interval=0.05)
    assert list(results) == ["Echo: a", "Echo: b", "Echo: c"]
    sent = [r["params"] for r in creates(client_env)[0].body["requests"]]
    assert [p["output_config"] for p in sent] == [{"effort": "low"}, {"effort": "max"}, {"effort": "low"}]
    assert [p["thinking"] for p in sent] == [{"type": "adaptive"}, {"type": "adaptive"}, {"type": "between_tools"}]
    assert [r.usage.thinking_tokens for r in results[:2]] == [2, 16]  # the emulator thinks by effort
    assert all(r.usage.output_tokens == 2 + r.usage.thinking_tokens for r in results[:2])


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        ([{"prompt": "x", "temperature": 0.2}], {}, r"temperature.*removed"),
        ([{"prompt": "x"}], {"effort": "xhigh", "model": "claude-sonnet-4-6"}, "effort='xhigh'"),
        ([{"prompt": "x"}], {"effort": "extreme"}, "effort"),
        ([{"prompt": "x"}], {"thinking": "disabled"}, r"thinking=\{'type': 'disabled'\}"),
        ([{"prompt": "x"}], {"thinking": "between_tools", "effort": "max"}, "between_tools"),
        ([{"prompt": "x"}], {"max_tokens": 300_001}, r"max_tokens=300001.*300000 tokens in a batch"),
        ([{"prompt": "x", "max_tokens": 200_000}], {"model": "claude-fable-5-1"}, "128000 tokens in a batch"),
        ([{"prompt": "x"}], {"output_schema": {"type": "object"}, "max_tokens": 300_001}, "max_tokens"),
    ],
)
def test_request_rules_are_checked_with_the_batch_maximum_before_anything_is_sent(client_env, tmp_path, prompts,
                                                                                  kwargs, match):
    journal = tmp_path / "j.json"
    with pytest.raises(ValueError, match=match):
        invoke_batch(prompts, journal=journal, poll_interval=0.05, **kwargs)
    assert client_env.requests == [] and not journal.exists()


def test_the_batch_maximum_output_is_accepted_with_its_beta(client_env):
    import _batch_journal
    import _batch_run
    import _requests

    client_env.configure(batch_seconds_per_request=FAST)
    results = invoke_batch([{"prompt": "long"}], max_tokens=200_000, poll_interval=0.05)  # > 128K real-time
    assert list(results) == ["Echo: long"]
    assert creates(client_env)[0].body["requests"][0]["params"]["max_tokens"] == 200_000

    def chunk(max_tokens, model="claude-sonnet-5-5"):
        specs = _requests.prompt_specs([{"prompt": "x"}], shared_system=None, cache_shared_system=False,
                                       model=model, max_tokens=max_tokens, batch=True)
        return _batch_journal.prepare(specs)

    assert _batch_run.create_headers(chunk(200_000)) == {"anthropic-beta": "output-300k-2026-03-24"}
    assert _batch_run.create_headers(chunk(128_000)) is None  # the real-time maximum needs no beta


def test_refused_and_thinking_only_replies_fail_in_their_slots_and_count_what_they_paid(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    prompts = [{"prompt": "fine"}, {"prompt": "no [[refuse category=cyber]]"},
               {"prompt": "deep [[think=500]]", "max_tokens": 100}]
    results = invoke_batch(prompts, poll_interval=0.05, return_exceptions=True)
    assert results[0] == "Echo: fine"
    refused, truncated = results[1], results[2]
    assert refused.kind == "refusal" and not refused.transient and refused.stop_details["category"] == "cyber"
    assert "prompts[1]" in str(refused) and refused.usage.input_tokens > 0
    assert truncated.kind == "max_tokens" and "raise max_tokens" in str(truncated).lower()
    assert truncated.usage.output_tokens == 100 and truncated.usage.thinking_tokens == 100
    assert set(results.errors) == {1, 2}
    # The list's totals include what the failed replies paid (batch price).
    assert results.usage.output_tokens == results[0].usage.output_tokens + 100
    assert results.cost_usd == pytest.approx(results[0].cost_usd + refused.cost_usd + truncated.cost_usd)
    assert truncated.cost_usd == pytest.approx(
        (truncated.usage.input_tokens * 2.0 + 100 * 10.0) / 1e6 * 0.5)  # sonnet-5-5, halved


def test_an_unknown_model_id_errors_in_its_slot_with_the_apis_404(client_env):
    client_env.configure(batch_seconds_per_request=FAST)
    results = invoke_batch([{"prompt": "a"}, {"prompt": "b", "model": "claude-nope-1"}], poll_interval=0.05,
                           return_exceptions=True)
    assert results[0] == "Echo: a"
    assert results[1].kind == "batch_errored" and "not_found_error: model: claude-nope-1" in str(results[1])


def test_batch_cost_uses_the_catalogue_prices_halved(client_env):
    from _models import model_info

    client_env.configure(batch_seconds_per_request=FAST)
    for model in ("claude-haiku-5-5", "claude-opus-5-5"):
        results = invoke_batch([{"prompt": "price check"}], model=model, poll_interval=0.05)
        u, p = results[0].usage, model_info(model).pricing
        assert results.cost_usd == pytest.approx((u.input_tokens * p.input + u.output_tokens * p.output) / 1e6 / 2)
