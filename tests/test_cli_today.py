"""``orchestrate`` under today's API: ``--effort`` / ``--thinking``, the default model, the removed
sampling parameters, an empty ``--model``, and signals during start-up (issue 19, item 11).

Every test runs ``python -m orchestrate`` in a subprocess against the session's emulator (real
SDK, real HTTP); nothing is patched.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import _env, records, run_cli

pytestmark = pytest.mark.timeout(120)


# ----------------------------------------------------------------------------- effort, thinking, model


def test_help_shows_effort_thinking_and_the_default_model(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--effort {low,medium,high,xhigh,max}" in text
    assert "--thinking {adaptive,disabled,between_tools}" in text
    assert "claude-sonnet-5-5" in text and "use --effort" in text
    assert emulator.requests == []


def test_effort_and_thinking_apply_to_every_prompt_without_its_own(tmp_path, emulator):
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "plain"},
        {"prompt": "own effort", "effort": "high"},
        {"prompt": "own thinking", "model": "claude-haiku-5-5", "thinking": "disabled"},
    ]) + "\n")
    proc = run_cli(tmp_path, emulator, "--file", str(f), "--effort", "low", "--thinking", "adaptive")
    assert proc.returncode == 0, proc.stderr
    bodies = {r.prompt: r.body for r in emulator.message_requests()}
    assert bodies["plain"]["model"] == "claude-sonnet-5-5"  # the library's default model
    assert bodies["plain"]["output_config"] == {"effort": "low"} and bodies["plain"]["thinking"] == {"type": "adaptive"}
    assert bodies["own effort"]["output_config"] == {"effort": "high"}
    assert bodies["own thinking"]["thinking"] == {"type": "disabled"}
    recs = records(proc.stdout)
    assert [r["usage"]["thinking_tokens"] for r in recs] == [2, 8, 0]
    assert all(r["status"] == "ok" for r in recs)


@pytest.mark.parametrize(
    "args, says",
    [
        (["-m", "", "x"], "--model"),
        (["--model", "   ", "x"], "--model"),
        (["--temperature", "0.5", "x"], "effort"),  # the API removed sampling parameters
        (["--model", "claude-haiku-4-5", "--effort", "low", "x"], "effort"),  # no effort parameter
        (["--effort", "max", "--thinking", "between_tools", "x"], "between_tools"),  # Sonnet 5.5: up to high
        (["--thinking", "disabled", "x"], "disabled"),  # Sonnet 5.5 refuses it
        (["--model", "claude-opus-4-6", "--effort", "xhigh", "x"], "xhigh"),
        (["--max-tokens", "200000", "x"], "max_tokens"),  # above the model's 128K
    ],
    ids=["empty-model", "blank-model", "temperature", "no-effort", "between-tools-max", "disabled", "xhigh",
         "max-tokens"],
)
def test_what_the_api_would_refuse_is_a_usage_error_before_any_request(tmp_path, emulator, args, says):
    proc = run_cli(tmp_path, emulator, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("orchestrate: error:") and says in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert emulator.requests == []


def test_a_bad_effort_level_or_jsonl_key_is_a_usage_error(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--effort", "extreme", "x")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: orchestrate") and "--effort" in proc.stderr
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "x", "thinking": 5}) + "\n")
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "thinking" in proc.stderr
    assert emulator.requests == []


def test_temperature_one_is_still_accepted_and_not_sent(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--temperature", "1", "--format", "jsonl", "x")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["text"] == "Echo: x"
    assert "temperature" not in emulator.message_requests()[0].body


# ----------------------------------------------------------------------------- signals during start-up


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see the handler installed")
@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_exits_with_its_status_and_no_traceback(tmp_path, emulator, signum, status, word):
    """The signal comes as soon as ``main()`` has put its start-up handlers in place (seen in /proc,
    no hook in the code), then a little later each round: it lands in the imports, the argument
    checks or the first moments of the run. Every time: the status, a one-line message, no traceback."""
    emulator.configure(ttft_ms=10_000)  # should the run start, nothing finishes before the signal
    outcomes = []
    for delay in (0, 0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrate", "--format", "jsonl", "one", "two"],
            env=_env(tmp_path, emulator.base_url), cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert proc.poll() is None, "the command ended before the signal"
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        outcomes.append((delay, proc.returncode, err.strip().splitlines()[-1:] if err.strip() else []))
        assert proc.returncode == status, (delay, err)
        assert "Traceback" not in err, err
        assert word in err, err
        for rec in records(out):  # a run that had started writes its prompts as interrupted
            assert rec["status"] == "interrupted"
    assert len(outcomes) == 10


# ----------------------------------------------------------------------------- shared limits, budgets


def test_budget_needs_max_cost_and_a_bad_shared_limits_url_is_a_usage_error(tmp_path, emulator):
    for args in (["--budget", "team", "x"], ["--shared-limits", "ftp://nowhere", "x"]):
        proc = run_cli(tmp_path, emulator, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert args[0] in proc.stderr and "Traceback" not in proc.stderr
    assert emulator.requests == []


def test_two_cli_runs_share_one_named_budget_through_the_store(tmp_path, emulator):
    import os

    import claude_client
    from _shared_limits import ENV_VAR, reset_stores

    url = os.environ[ENV_VAR]  # this test's own store (tests/conftest.py)
    for prompt in ("first run", "second run"):
        proc = run_cli(tmp_path, emulator, "--max-cost", "1", "--budget", "team", "--shared-limits", url, prompt)
        assert proc.returncode == 0, proc.stderr
    reset_stores()
    report = claude_client.budget_report("team")
    paid = sum(r["cost_usd"] for r in records(proc.stdout))
    assert report is not None and report.cap_usd == 1.0 and report.reserved_usd == 0
    assert report.spent_usd > paid  # both runs' spend, not the last one's alone
    assert len(emulator.message_requests()) == 2
