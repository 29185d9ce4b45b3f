"""Journals (``journal=`` of invoke_parallel / invoke_parallel_managed, and of invoke_batch): only a
journal of the right kind is used (any other file is refused and left byte for byte as it was),
one process at a time holds a journal, and a path that cannot be used is a ValueError naming
``journal``, all before any request is sent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import claude_client as cc
from claude_client import ClaudeInvocationError
from message_batches import invoke_batch
from orchestration import invoke_parallel_managed

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
FAST = 0.002


def run_parallel(prompts, journal, **kw):
    return cc.invoke_parallel(prompts, journal=journal, **kw)


def run_managed(prompts, journal, **kw):
    return invoke_parallel_managed(prompts, journal=journal, **kw)


def run_batch(prompts, journal, **kw):
    return invoke_batch(prompts, journal=journal, poll_interval=0.05, **kw)


RUNNERS = [run_parallel, run_managed, run_batch]
RUN_JOURNAL_RUNNERS = [run_parallel, run_managed]


def refused_unchanged(emulator, runner, path: Path, match: str) -> None:
    """``runner`` on ``path`` raises a ValueError matching ``match``; the file and the server are untouched."""
    before = path.read_bytes() if path.exists() else None
    stat = path.stat() if path.exists() else None
    sent = len(emulator.requests)
    with pytest.raises(ValueError, match=match):
        runner([{"prompt": "a"}, {"prompt": "b"}], path)
    assert len(emulator.requests) == sent, "a request was sent"
    if before is not None:
        assert path.read_bytes() == before
        assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert not Path(str(path) + ".lock").exists()


# --------------------------------------------------------------------------- what is a journal


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.__name__)
def test_a_json_document_given_as_journal_is_refused_and_unchanged(client_env, tmp_path, runner):
    # json.dump output: one line, no newline (the old code took it for a torn line and overwrote it)
    path = tmp_path / "settings.json"
    with open(path, "w") as fh:
        json.dump({"theme": "dark", "size": 3}, fh)
    refused_unchanged(client_env, runner, path, "journal")


@pytest.mark.parametrize("runner", RUN_JOURNAL_RUNNERS, ids=lambda r: r.__name__)
def test_any_file_that_is_not_a_run_journal_is_refused_and_unchanged(client_env, tmp_path, runner):
    for name, data in [
        ("notes.txt", b"remember the milk"),  # one line, no newline
        ("list.json", b'[1, 2, 3]'),
        ("lines.jsonl", b'{"id": 1}\n{"id": 2}\n'),
        ("binary.bin", bytes(range(256))),
        ("header-like.jsonl", b'{"format": "something-else", "version": 1}\n{"i": 0}'),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        refused_unchanged(client_env, runner, path, r"journal: .* is not a run journal")


@pytest.mark.parametrize("runner", RUN_JOURNAL_RUNNERS, ids=lambda r: r.__name__)
def test_a_batch_journal_given_as_a_run_journal_is_refused(client_env, tmp_path, runner):
    client_env.configure(batch_seconds_per_request=FAST)
    path = tmp_path / "job.json"
    invoke_batch([{"prompt": "a"}, {"prompt": "b"}], journal=path, poll_interval=0.05)
    assert path.read_bytes().count(b"\n") == 0  # the batch journal is one JSON document
    refused_unchanged(client_env, runner, path, "invoke_batch journal")


@pytest.mark.parametrize("runner", RUN_JOURNAL_RUNNERS, ids=lambda r: r.__name__)
def test_a_run_journal_given_as_a_batch_journal_is_refused(client_env, tmp_path, runner):
    path = tmp_path / "run.jsonl"
    runner([{"prompt": "a"}, {"prompt": "b"}], path)
    refused_unchanged(client_env, run_batch, path, "run journal of invoke_parallel")
    # Its header alone is one JSON document too: still a run journal, still refused.
    path.write_bytes(path.read_bytes().split(b"\n")[0] + b"\n")
    refused_unchanged(client_env, run_batch, path, "run journal of invoke_parallel")


def test_a_damaged_line_inside_a_journal_refuses_it_unchanged(client_env, tmp_path):
    path = tmp_path / "run.jsonl"
    prompts = [{"prompt": "a"}, {"prompt": "b"}]
    cc.invoke_parallel(prompts, journal=path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(lines[0] + b"\nnot json\n" + b"\n".join(lines[1:]))
    refused_unchanged(client_env, run_parallel, path, "line 2 is not a record")


def test_the_torn_start_of_its_own_header_is_started_again(client_env, tmp_path):
    path = tmp_path / "run.jsonl"
    prompts = [{"prompt": "a"}, {"prompt": "b"}]
    cc.invoke_parallel(prompts, journal=path)
    header = path.read_bytes().split(b"\n")[0]
    path.write_bytes(header[: len(header) // 2])  # killed while writing the header
    sent = len(client_env.message_requests())
    results = cc.invoke_parallel(prompts, journal=path)
    assert list(results) == ["Echo: a", "Echo: b"] and len(client_env.message_requests()) == sent + 2
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == header and len([line for line in lines if line]) == 3


def test_a_journal_of_the_previous_version_is_read(client_env, tmp_path):
    """Records written before usage had thinking_tokens / inference_geo are restored as they were."""
    path = tmp_path / "run.jsonl"
    prompts = [{"prompt": "a"}, {"prompt": "b"}]
    first = cc.invoke_parallel(prompts, journal=path)
    lines = path.read_text().splitlines()
    old = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        for key in ("thinking_tokens", "inference_geo"):
            record["usage"].pop(key, None)
        old.append(json.dumps(record))
    path.write_text("\n".join(old) + "\n")
    sent = len(client_env.message_requests())
    again = cc.invoke_parallel(prompts, journal=path)
    assert len(client_env.message_requests()) == sent
    assert list(again) == list(first)
    assert [r.usage.output_tokens for r in again] == [r.usage.output_tokens for r in first]
    assert again.cost_usd == pytest.approx(first.cost_usd)


def test_a_journaled_refusal_keeps_what_it_paid(client_env, tmp_path):
    path = tmp_path / "run.jsonl"
    prompts = [{"prompt": "fine"}, {"prompt": "no [[refuse category=cyber]]"}]
    first = cc.invoke_parallel(prompts, journal=path, return_exceptions=True)
    assert first[1].kind == "refusal" and first[1].usage.input_tokens > 0
    sent = len(client_env.message_requests())
    again = cc.invoke_parallel(prompts, journal=path, return_exceptions=True)
    assert len(client_env.message_requests()) == sent  # a refusal is permanent: not sent again
    assert again[1].kind == "refusal" and not again[1].transient
    assert again[1].usage == first[1].usage and again[1].cost_usd == pytest.approx(first[1].cost_usd)
    assert again[1].stop_details == first[1].stop_details and again[1].stop_details["category"] == "cyber"
    assert again.cost_usd == pytest.approx(first.cost_usd)


# --------------------------------------------------------------------------- paths that cannot be used


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.__name__)
def test_a_journal_in_a_missing_directory_is_a_value_error(client_env, tmp_path, runner):
    refused_unchanged(client_env, runner, tmp_path / "no-such-dir" / "j.jsonl", "journal.*does not exist")
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused_unchanged(client_env, runner, afile / "j.jsonl", "journal.*does not exist")
    assert afile.read_text() == "x"


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.__name__)
def test_an_unreadable_journal_is_a_value_error(client_env, tmp_path, runner):
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)  # a symlink to itself: the OS refuses to open it (ELOOP), even for root
    sent = len(client_env.requests)
    with pytest.raises(ValueError, match="journal: cannot .*loop.jsonl"):
        runner([{"prompt": "a"}], loop)
    assert len(client_env.requests) == sent and os.path.islink(loop)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.__name__)
def test_a_journal_without_read_permission_is_a_value_error(client_env, tmp_path, runner):
    path = tmp_path / "locked.jsonl"
    path.write_bytes(b"")
    path.chmod(0)
    try:
        refused_unchanged(client_env, runner, path, "journal: cannot read")
    finally:
        path.chmod(0o600)


# --------------------------------------------------------------------------- one process at a time

_HOLD_PARALLEL = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from claude_client import invoke_parallel
    invoke_parallel({prompts!r}, journal={journal!r}, max_workers=4)
    """
)

_SECOND = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from claude_client import invoke_parallel
    try:
        invoke_parallel({prompts!r}, journal={journal!r}, max_workers=4)
    except ValueError as exc:
        print("ValueError:", exc)
    else:
        print("no error")
    """
)


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


def test_a_second_process_on_a_run_journal_is_refused_before_sending(client_env, tmp_path):
    journal = tmp_path / "run.jsonl"
    prompts = [{"prompt": f"slow {i} [[ttft_ms=60000]]"} for i in range(2)]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_PARALLEL.format(scripts=str(SCRIPTS), prompts=prompts, journal=str(journal))],
        env=dict(os.environ),
    )
    try:
        assert client_env.wait_for(lambda e: e.active_requests == 2, timeout=30), "the holder never sent"
        assert Path(str(journal) + ".lock").read_text().strip() == str(holder.pid)
        sent = len(client_env.requests)
        second = subprocess.run(
            [sys.executable, "-c", _SECOND.format(scripts=str(SCRIPTS), prompts=prompts, journal=str(journal))],
            env=dict(os.environ), capture_output=True, text=True, timeout=60,
        )
        assert second.stdout.startswith("ValueError: journal:"), second.stdout + second.stderr
        assert f"in use by another process (pid {holder.pid})" in second.stdout
        assert len(client_env.requests) == sent  # the second process sent nothing
        # In this process too (a thread of this process would be told it is this process).
        with pytest.raises(ValueError, match=r"journal: .* is in use by another process"):
            cc.invoke_parallel(prompts, journal=journal)
        assert len(client_env.requests) == sent
    finally:
        _kill(holder)


def test_a_killed_holder_releases_the_journal(client_env, tmp_path):
    journal = tmp_path / "run.jsonl"
    prompts = [{"prompt": "fast"}, {"prompt": "slow [[ttft_ms=60000 times=1]]"}]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_PARALLEL.format(scripts=str(SCRIPTS), prompts=prompts, journal=str(journal))],
        env=dict(os.environ),
    )
    try:
        assert client_env.wait_for(lambda e: e.active_requests == 1 and len(e.message_requests()) == 2, timeout=30)
        deadline = time.monotonic() + 10
        while journal.read_text().count("\n") < 2 and time.monotonic() < deadline:  # header + the fast one
            time.sleep(0.02)
    finally:
        _kill(holder)
    assert Path(str(journal) + ".lock").exists()  # left by the killed process; the OS freed its lock
    sent = len(client_env.message_requests())
    results = cc.invoke_parallel(prompts, journal=journal)
    assert list(results) == ["Echo: fast", "Echo: slow"]
    assert [r.prompt for r in client_env.message_requests()[sent:]] == ["slow"]  # only the unsettled slot
    assert not Path(str(journal) + ".lock").exists()  # removed when the run ended


_HOLD_BATCH = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from message_batches import invoke_batch
    invoke_batch([{{"prompt": "a"}}, {{"prompt": "b"}}], journal={journal!r}, poll_interval=30)
    """
)


def test_a_second_process_on_a_batch_journal_is_refused_before_sending(client_env, tmp_path):
    client_env.configure(batch_seconds_per_request=30.0)  # the holder's batch keeps running
    journal = tmp_path / "job.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_BATCH.format(scripts=str(SCRIPTS), journal=str(journal))], env=dict(os.environ)
    )
    try:
        # Created, then retrieved once: the holder now sleeps its 30 s poll interval.
        assert client_env.wait_for(
            lambda e: any(r.method == "GET" and r.path.startswith("/v1/messages/batches/") for r in e.requests),
            timeout=30,
        ), "the holder never polled"
        sent = len(client_env.requests)
        with pytest.raises(ValueError, match=rf"journal: .* is in use by another process \(pid {holder.pid}\)"):
            invoke_batch([{"prompt": "a"}, {"prompt": "b"}], journal=journal, poll_interval=0.05)
        assert len(client_env.requests) == sent
        data = json.loads(journal.read_text())
        assert data["batches"][0]["id"] and data["state"] == "running"
    finally:
        _kill(holder)
    client_env.advance_clock(120)
    results = invoke_batch([{"prompt": "a"}, {"prompt": "b"}], journal=journal, poll_interval=0.05)
    assert list(results) == ["Echo: a", "Echo: b"]
    assert len([r for r in client_env.requests if r.method == "POST" and r.path == "/v1/messages/batches"]) == 1
    assert not Path(str(journal) + ".lock").exists()


def test_two_runs_of_one_process_cannot_share_a_journal(client_env, tmp_path):
    journal = tmp_path / "run.jsonl"
    slow = [{"prompt": "slow [[ttft_ms=2000]]"}]
    outcome = {}

    def first():
        outcome["first"] = cc.invoke_parallel(slow, journal=journal)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert client_env.wait_for(lambda e: e.active_requests == 1, timeout=30)
        sent = len(client_env.requests)
        with pytest.raises(ValueError, match="in use by another run in this process"):
            cc.invoke_parallel(slow, journal=journal)
        assert len(client_env.requests) == sent
    finally:
        thread.join(timeout=30)
    assert list(outcome["first"]) == ["Echo: slow"]
    again = cc.invoke_parallel(slow, journal=journal)  # released when the first run ended
    assert list(again) == ["Echo: slow"]


def test_the_lock_is_released_when_a_run_fails(client_env, tmp_path):
    journal = tmp_path / "run.jsonl"
    with pytest.raises(ClaudeInvocationError):
        cc.invoke_parallel([{"prompt": "x [[fail=400]]"}], journal=journal)
    assert not Path(str(journal) + ".lock").exists()
    with pytest.raises(ClaudeInvocationError):  # restored from the journal: not sent again
        cc.invoke_parallel([{"prompt": "x [[fail=400]]"}], journal=journal)
    assert len(client_env.message_requests()) == 1
