"""Durable, visible runs: journals, Ctrl-C that keeps results, progress, saved conversations."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import claude_client as cc
from claude_client import ClaudeInvocationError, ConversationThread, RunInterrupted
from orchestration import invoke_parallel_managed
from task_state import TaskTracker

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TEST_KEY = "sk-ant-test-key"


def _child_env(emulator) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_BASE_URL=emulator.base_url, ANTHROPIC_API_KEY=TEST_KEY,
               PYTHONPATH=os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")]))
    return env


# --------------------------------------------------------------------------- journal
def test_a_rerun_takes_journaled_results_and_sends_only_the_rest(client_env, tmp_path) -> None:
    journal = tmp_path / "run.jsonl"
    prompts = [{"prompt": f"p{i}"} for i in range(6)]
    first = cc.invoke_parallel(prompts, journal=journal, max_workers=3)
    assert len(client_env.message_requests()) == 6
    again = cc.invoke_parallel(prompts, journal=journal, max_workers=3)
    assert len(client_env.message_requests()) == 6  # nothing sent
    assert list(again) == list(first) and again.usage == first.usage
    assert again[0].usage.output_tokens > 0 and again.cost_usd == pytest.approx(first.cost_usd)


def test_kill_minus_nine_mid_run_then_rerun_resumes_in_order(client_env, tmp_path) -> None:
    journal = tmp_path / "killed.jsonl"
    script = tmp_path / "run.py"
    # the slow ones are slow on their first attempt only (times= counts for the server's lifetime)
    prompts = [{"prompt": f"fast {i}"} for i in range(4)] + [{"prompt": f"slow {i} [[ttft_ms=60000 times=1]]"}
                                                               for i in range(2)]
    script.write_text(
        "import json\n"
        "from claude_client import invoke_parallel\n"
        f"invoke_parallel(json.loads({json.dumps(json.dumps(prompts))}), journal={str(journal)!r}, max_workers=6)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], env=_child_env(client_env))
    try:
        assert client_env.wait_for(lambda e: sum(1 for r in e.message_requests() if r.status == 200) == 4
                                   and e.active_requests == 2, timeout=30)
        deadline = time.monotonic() + 10
        while journal.read_text().count("\n") < 5 and time.monotonic() < deadline:  # header + 4 results
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert client_env.wait_idle(timeout=10)
    sent_before = len(client_env.message_requests())
    resumed = cc.invoke_parallel(prompts, journal=journal, max_workers=6)
    new = client_env.message_requests()[sent_before:]
    assert sorted(r.prompt for r in new) == ["slow 0", "slow 1"]  # the finished ones were not sent again
    assert list(resumed) == [f"Echo: fast {i}" for i in range(4)] + ["Echo: slow 0", "Echo: slow 1"]


def test_a_torn_last_line_is_tolerated(client_env, tmp_path) -> None:
    journal = tmp_path / "torn.jsonl"
    prompts = [{"prompt": "a"}, {"prompt": "b"}]
    cc.invoke_parallel(prompts, journal=journal)
    text = journal.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    journal.write_text(text.rstrip("\n")[: -len(last) // 2])  # a kill in the middle of a write
    before = len(client_env.message_requests())
    results = cc.invoke_parallel(prompts, journal=journal)
    assert list(results) == ["Echo: a", "Echo: b"]
    assert len(client_env.message_requests()) == before + 1  # only the torn slot ran again
    lines = journal.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 3  # header + 2, torn bytes gone


def test_a_journal_of_other_prompts_or_model_is_refused(client_env, tmp_path) -> None:
    journal = tmp_path / "j.jsonl"
    cc.invoke_parallel([{"prompt": "a"}], journal=journal)
    with pytest.raises(ValueError, match="different prompts, options or model"):
        cc.invoke_parallel([{"prompt": "b"}], journal=journal)
    with pytest.raises(ValueError, match="different prompts, options or model"):
        cc.invoke_parallel([{"prompt": "a"}], journal=journal, model="claude-haiku-4-5")
    (tmp_path / "not.jsonl").write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="not a run journal"):
        cc.invoke_parallel([{"prompt": "a"}], journal=tmp_path / "not.jsonl")
    with pytest.raises(TypeError, match="journal"):
        cc.invoke_parallel([{"prompt": "a"}], journal=3)


def test_permanent_failures_stay_failed_unless_retry_failed(client_env, tmp_path) -> None:
    journal = tmp_path / "f.jsonl"
    prompts = [{"prompt": "ok"}, {"prompt": "[[fail=400 times=1]] bad once"}]
    first = cc.invoke_parallel(prompts, journal=journal, return_exceptions=True)
    assert isinstance(first[1], ClaudeInvocationError) and first[1].kind == "bad_request"
    again = cc.invoke_parallel(prompts, journal=journal, return_exceptions=True)
    assert isinstance(again[1], ClaudeInvocationError) and again[1].kind == "bad_request"
    assert len(client_env.message_requests()) == 2
    fixed = cc.invoke_parallel(prompts, journal=journal, retry_failed=True)
    assert list(fixed) == ["Echo: ok", "Echo: bad once"]
    assert len(client_env.message_requests()) == 3


def test_managed_runs_journal_too(client_env, tmp_path) -> None:
    journal = tmp_path / "m.jsonl"
    prompts = [{"prompt": f"m{i}", "task_id": f"t{i}"} for i in range(4)]
    first = invoke_parallel_managed(prompts, journal=journal)
    tracker = TaskTracker()
    again = invoke_parallel_managed(prompts, journal=journal, tracker=tracker)
    assert list(again) == list(first) and len(client_env.message_requests()) == 4
    assert tracker.reason_counts()["succeeded"] == 4


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("managed", [False, True])
def test_ctrl_c_keeps_finished_results(client_env, tmp_path, managed: bool) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(
        "import json, sys, time\n"
        "from claude_client import RunInterrupted, invoke_parallel\n"
        "from orchestration import invoke_parallel_managed\n"
        "prompts = [{'prompt': f'fast {i}'} for i in range(5)] + "
        "[{'prompt': f'slow {i} [[ttft_ms=60000]]'} for i in range(5)]\n"
        f"run = invoke_parallel_managed if {managed} else invoke_parallel\n"
        "print('started', flush=True)\n"
        "started = None\n"
        "try:\n"
        "    run(prompts, max_workers=10)\n"
        "except RunInterrupted as stop:\n"
        "    print(json.dumps({'results': [r if r is None else str(r) for r in stop.results],\n"
        "                      'interrupt': isinstance(stop, KeyboardInterrupt)}), flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], env=_child_env(client_env), stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        assert client_env.wait_for(lambda e: sum(1 for r in e.message_requests() if r.status == 200) == 5
                                   and e.active_requests == 5, timeout=30)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        child.kill()
    data = json.loads(out.strip().splitlines()[-1])
    assert data["interrupt"] is True
    assert data["results"] == [f"Echo: fast {i}" for i in range(5)] + [None] * 5
    assert elapsed < 10  # aborts in flight; target 0.5 s (a child process start-up is in the bound)
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 5, timeout=5)


# --------------------------------------------------------------------------- progress
def test_progress_callable_gets_snapshots(client_env) -> None:
    snaps = []
    results = cc.invoke_parallel([{"prompt": f"p{i}"} for i in range(5)] + [{"prompt": "[[fail=400]] x"}],
                                 progress=snaps.append, return_exceptions=True)
    last = snaps[-1]
    assert last.total == 6 and last.done == 6 and last.succeeded == 5 and last.failed == 1
    assert last.output_tokens == results.usage.output_tokens
    assert last.cost_usd == pytest.approx(results.cost_usd)
    with pytest.raises(TypeError, match="progress"):
        cc.invoke_parallel([{"prompt": "p"}], progress="yes")


def test_progress_in_managed_runs_and_plain_lines_without_a_terminal(client_env, capfd) -> None:
    snaps = []
    invoke_parallel_managed([{"prompt": f"p{i}"} for i in range(3)], progress=snaps.append)
    assert snaps[-1].done == 3 and snaps[-1].succeeded == 3
    cc.invoke_parallel([{"prompt": "q"}], progress=True)
    err = capfd.readouterr().err
    assert "1/1" in err and "\x1b[" not in err


# --------------------------------------------------------------------------- conversations
def test_conversation_save_and_load_keep_transcript_settings_and_usage(client_env, tmp_path) -> None:
    chat = ConversationThread(system="Be brief.", max_tokens=300, effort="medium", thinking="adaptive", max_turns=5)
    chat.send("first")
    chat.send("second")
    assert chat.cost_usd and chat.cost_usd > 0 and chat.usage.thinking_tokens == 8  # medium: 4 per reply
    path = tmp_path / "chat.json"
    chat.save(path)
    again = ConversationThread.load(path)
    assert again.messages == chat.messages and again.usage == chat.usage
    settings = (again.system, again.max_tokens, again.effort, again.thinking, again.max_turns)
    assert settings == ("Be brief.", 300, "medium", "adaptive", 5)
    assert again.cost_usd == pytest.approx(chat.cost_usd)
    assert again.send("third") == "Echo: third" and again.turn_count == 3
    assert client_env.message_requests()[-1].body["output_config"] == {"effort": "medium"}
    assert "sk-ant" not in path.read_text()
    with pytest.raises(ValueError, match="ConversationThread"):
        ConversationThread.load(tmp_path / "missing.json")


def test_run_interrupted_is_a_keyboard_interrupt_with_results() -> None:
    results = cc.ParallelResults(["a", None], errors={})
    stop = RunInterrupted(results)
    assert isinstance(stop, KeyboardInterrupt) and stop.results is results and stop.errors == {}


def test_a_journal_keeps_parsed_output_and_fingerprints_the_schema(client_env, tmp_path) -> None:
    import pydantic

    class Answer(pydantic.BaseModel):
        answer: str

    journal = tmp_path / "schema.jsonl"
    prompts = [{"prompt": "a"}, {"prompt": "b"}]
    first = cc.invoke_parallel(prompts, journal=journal, output_schema=Answer)
    again = cc.invoke_parallel(prompts, journal=journal, output_schema=Answer)
    assert len(client_env.message_requests()) == 2
    assert [type(r.parsed) for r in again] == [Answer, Answer] and again[0].parsed == first[0].parsed
    with pytest.raises(ValueError, match="different prompts, options or model"):
        cc.invoke_parallel(prompts, journal=journal)  # no schema now: another run


def test_an_interrupt_keeps_replies_that_finished_during_the_abort(client_env, tmp_path) -> None:
    journal = tmp_path / "late.jsonl"
    token = cc.InterruptToken()
    prompts = [{"prompt": f"p{i} [[ttft_ms={100 * i}]]"} for i in range(12)]
    import threading

    threading.Timer(0.35, token.interrupt).start()
    results = cc.invoke_parallel_interruptible(prompts, interrupt_token=token, journal=journal, max_workers=12)
    finished = [r for r in client_env.message_requests() if r.status == 200 and not r.aborted]
    kept = [r for r in results if r is not None]
    assert len(kept) == len(finished)  # every reply the server completed is in the results
    assert journal.read_text().count("\n") == 1 + len(kept)  # and in the journal
