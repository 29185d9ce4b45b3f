"""End-to-end tests of the agent options of ``orchestrate``: ``--tool`` / ``--max-tool-turns``,
``--max-cost``, ``--dry-run`` and ``--journal`` / ``--retry-failed``.

Every run is ``python -m orchestrate`` in a subprocess against the session's emulator (real SDK,
real HTTP); nothing is patched. Emulator directives in the prompts make the model call a tool
(``tool_directive``), write long replies (``[[words=N]]``), fail (``[[fail=400]]``) or wait
(``[[ttft_ms=N]]``), so every outcome is deterministic.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Optional

import pytest

from anthropic_emulator import tool_directive

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TEST_KEY = "sk-ant-test-key"

TOOL_MODULE = textwrap.dedent(
    '''
    """Tools for the CLI tests."""

    CONSTANT = 42


    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first addend.
            b: The second addend.
        """
        return a + b


    def shout(text: str) -> str:
        """Upper-case a text.

        Args:
            text: What to shout.
        """
        return text.upper() + "!"
    '''
)


def _env(tmp_path: Path, base_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env["ORCHESTRATING_AGENTS_PROJECT_DIR"] = str(project)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TERM", None)
    env["ANTHROPIC_BASE_URL"] = base_url
    env["ANTHROPIC_API_KEY"] = TEST_KEY
    return env


def run_cli(tmp_path: Path, emulator, *args: str, cwd: Optional[Path] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m orchestrate ARGS`` against the emulator; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrate", *args],
        env=_env(tmp_path, emulator.base_url), cwd=cwd or tmp_path, input="", capture_output=True,
        text=True, timeout=timeout,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _tool_results(body: dict) -> list[dict]:
    """The tool_result blocks of a request's last user turn."""
    last = body["messages"][-1]
    content = last["content"] if isinstance(last["content"], list) else []
    return [b for b in content if b.get("type") == "tool_result"]


# ----------------------------------------------------------------------------- --tool


@pytest.mark.timeout(60)
def test_tool_from_a_module_in_the_current_directory(tmp_path, emulator):
    (tmp_path / "my_tools.py").write_text(TOOL_MODULE)
    prompts = [tool_directive("add", {"a": 2, "b": 3}) + " add them",
               tool_directive("shout", {"text": "hey you"}) + " shout it",
               "no tools needed"]
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--tool", "my_tools:add", "--tool", "my_tools:shout",
                   *prompts)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["status"] for r in recs] == ["ok", "ok", "ok"]
    # The final answer echoes the tool result the CLI's function computed.
    assert re.fullmatch(r"Echo tool results: toolu_emu_\w+=5", recs[0]["text"]), recs[0]["text"]
    assert re.fullmatch(r"Echo tool results: toolu_emu_\w+=HEY YOU!", recs[1]["text"]), recs[1]["text"]
    assert recs[2]["text"] == "Echo: no tools needed"
    assert all(r["stop_reason"] == "end_turn" for r in recs)
    # Usage and cost cover both turns of a tool prompt.
    assert recs[0]["usage"]["input_tokens"] > recs[2]["usage"]["input_tokens"]

    bodies = [r.body for r in emulator.message_requests()]
    assert len(bodies) == 5  # two turns per tool prompt, one for the plain prompt
    for body in bodies:  # every request offers both tools, schema from signature and docstring
        tools = {t["name"]: t for t in body["tools"]}
        assert set(tools) == {"add", "shout"}
        assert set(tools["add"]["input_schema"]["properties"]) == {"a", "b"}
        assert "Add two integers" in tools["add"]["description"]
    # The functions ran in the CLI's process and their results went back as tool_result blocks.
    results = sorted(json.dumps(b["content"]) for body in bodies for b in _tool_results(body))
    assert len(results) == 2
    assert results == ['"5"', '"HEY YOU!"'], results


@pytest.mark.timeout(60)
def test_tool_from_a_file_path_and_max_tool_turns(tmp_path, emulator):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "calc.py").write_text(TOOL_MODULE)
    three_rounds = tool_directive("add", {"a": 20, "b": 22}, tool_turns=3) + " keep adding"
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--tool", f"{lib / 'calc.py'}:add",
                   "--max-tool-turns", "3", three_rounds)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records(proc.stdout)
    assert rec["status"] == "ok" and rec["text"].startswith("Echo tool results: ") and rec["text"].endswith("=42")
    assert len(emulator.message_requests()) == 4  # three tool rounds, then the answer

    # A relative path works too; one round fewer than the model wants fails that prompt only.
    emulator.reset()
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--tool", "lib/calc.py:add",
                   "--max-tool-turns", "2", three_rounds, "plain")
    assert proc.returncode == 1, proc.stderr
    recs = records(proc.stdout)
    assert recs[0]["status"] == "failed" and recs[0]["error_kind"] == "tool_turns_exceeded"
    assert recs[1]["status"] == "ok" and recs[1]["text"] == "Echo: plain"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spec, message", [
    ("my_tools", "expected MODULE:FUNCTION"),
    ("my_tools:", "expected MODULE:FUNCTION"),
    (":add", "expected MODULE:FUNCTION"),
    ("my_tools:not a name", "is not a Python name"),
    ("no_such_module_xyz:add", "no module named 'no_such_module_xyz'"),
    ("my_tools:missing", "my_tools has no attribute 'missing'"),
    ("my_tools:CONSTANT", "my_tools.CONSTANT is not callable"),
    ("broken_tools:f", "importing broken_tools failed: ZeroDivisionError"),
    ("needs_dep:f", "importing needs_dep failed: ModuleNotFoundError"),
    ("missing_file.py:add", "no such file: missing_file.py"),
    ("lib/:add", "is a directory"),
])
def test_bad_tool_spec_is_a_usage_error_before_any_request(tmp_path, emulator, spec, message):
    (tmp_path / "my_tools.py").write_text(TOOL_MODULE)
    (tmp_path / "broken_tools.py").write_text("def f() -> None:\n    '''x'''\n\n\n1 / 0\n")
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "lib").mkdir()
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--tool", spec, "--tool", "my_tools:add", "hello")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrate: error: --tool "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert emulator.requests == []


@pytest.mark.timeout(60)
def test_a_function_the_library_cannot_offer_is_a_usage_error(tmp_path, emulator):
    (tmp_path / "my_tools.py").write_text(TOOL_MODULE)
    proc = run_cli(tmp_path, emulator, "--tool", "my_tools:add", "--tool", "my_tools:add", "hello")
    assert proc.returncode == 2, proc.stderr
    assert "duplicate tool name 'add'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert emulator.requests == []

    proc = run_cli(tmp_path, emulator, "--max-tool-turns", "2", "hello")
    assert proc.returncode == 2 and "--max-tool-turns needs --tool" in proc.stderr
    proc = run_cli(tmp_path, emulator, "--tool", "my_tools:add", "--max-tool-turns", "0", "hello")
    assert proc.returncode == 2 and "--max-tool-turns" in proc.stderr
    assert emulator.requests == []


# ----------------------------------------------------------------------------- --max-cost


@pytest.mark.timeout(90)
def test_max_cost_stops_prompts_that_do_not_fit_and_spend_stays_under_the_cap(tmp_path, emulator):
    from claude_client import DEFAULT_MODEL, Usage, estimate_cost

    # Each reply is ~90 of at most 100 output tokens, so after two replies the worst case of a
    # third does not fit under 2.5 worst cases; one at a time (--workers 1) keeps it deterministic.
    worst = estimate_cost(Usage(input_tokens=20, output_tokens=100), DEFAULT_MODEL)
    assert worst
    cap = 2.5 * worst
    prompts = [f"[[words=90]] p{i}" for i in range(5)]
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--workers", "1", "--max-tokens", "100",
                   "--max-cost", repr(cap), *prompts)
    assert proc.returncode == 1, proc.stderr
    recs = records(proc.stdout)
    statuses = [r["status"] for r in recs]
    ok = statuses.count("ok")
    assert 1 <= ok < len(prompts) and statuses == ["ok"] * ok + ["failed"] * (len(prompts) - ok), statuses
    for r in recs[ok:]:
        assert r["error_kind"] == "budget" and "max_cost_usd" in r["error"] and r["text"] is None
    spent = sum(r["cost_usd"] for r in recs[:ok])
    assert 0 < spent <= cap
    assert len(emulator.message_requests()) == ok  # prompts over the cap were never sent
    assert f"{len(prompts) - ok} not started: over --max-cost" in proc.stderr


@pytest.mark.timeout(60)
def test_max_cost_zero_starts_nothing_and_a_generous_cap_changes_nothing(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--max-cost", "0", "one", "two")
    assert proc.returncode == 1
    assert [r["error_kind"] for r in records(proc.stdout)] == ["budget", "budget"]
    assert emulator.message_requests() == []

    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--max-cost", "100", "one", "two")
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: one", "Echo: two"]

    for bad in ("-1", "nan", "free"):
        proc = run_cli(tmp_path, emulator, "--max-cost", bad, "one")
        assert proc.returncode == 2 and "--max-cost" in proc.stderr


# ----------------------------------------------------------------------------- --dry-run


@pytest.mark.timeout(60)
def test_dry_run_prints_the_estimate_and_generates_nothing(tmp_path, emulator):
    out_file = tmp_path / "results.jsonl"
    proc = run_cli(tmp_path, emulator, "--dry-run", "--format", "jsonl", "--max-tokens", "50",
                   "--system", "You are terse.", "-o", str(out_file), "first prompt", "second, longer prompt")
    assert proc.returncode == 0, proc.stderr
    (est,) = records(proc.stdout)
    assert est["dry_run"] is True and est["prompts"] == 2
    assert est["input_tokens"] > 0 and est["output_tokens_max"] == 100
    assert 0 < est["low_usd"] <= est["high_usd"]
    assert est["method"] == "count_tokens"
    assert not out_file.exists()  # --output is not touched by a dry run
    assert emulator.message_requests() == []
    assert {(r.method, r.path) for r in emulator.requests} <= {("POST", "/v1/messages/count_tokens")}

    proc = run_cli(tmp_path, emulator, "--dry-run", "--format", "text", "--cache", "--system", "Shared. " * 300,
                   "a", "b", "c")
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert {"input_tokens", "output_tokens_max", "low_usd", "high_usd", "method"} <= set(fields)
    low, high = (float(fields[k].split()[0]) for k in ("low_usd", "high_usd"))
    assert 0 < low <= high
    assert int(fields["output_tokens_max"]) == 3 * 4096
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
def test_dry_run_with_tools_notes_the_extra_turns(tmp_path, emulator):
    (tmp_path / "my_tools.py").write_text(TOOL_MODULE)
    proc = run_cli(tmp_path, emulator, "--dry-run", "--format", "jsonl", "--tool", "my_tools:add", "add 2 and 3")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["low_usd"] <= records(proc.stdout)[0]["high_usd"]
    assert "tool turn" in proc.stderr
    assert emulator.message_requests() == []


# ----------------------------------------------------------------------------- --journal


@pytest.mark.timeout(90)
def test_journal_rerun_sends_nothing_and_prints_the_same_results(tmp_path, emulator):
    journal = tmp_path / "run.journal"
    prompts = ["alpha", "[[words=12]] beta", "[[fail=400]] gamma"]
    first = run_cli(tmp_path, emulator, "--format", "jsonl", "--journal", str(journal), *prompts)
    assert first.returncode == 1, first.stderr
    assert len(emulator.message_requests()) == 3
    assert journal.exists()

    emulator.reset()
    again = run_cli(tmp_path, emulator, "--format", "jsonl", "--journal", str(journal), *prompts)
    assert again.returncode == 1, again.stderr
    assert emulator.message_requests() == []
    before, after = records(first.stdout), records(again.stdout)
    for a, b in zip(before, after):
        if a["status"] == "ok":
            assert a == b
        else:  # a failure for good is restored as it was (its message says where it came from)
            assert (a["status"], a["error_kind"]) == (b["status"], b["error_kind"]) == ("failed", "bad_request")
            assert a["error"] in b["error"]

    # --retry-failed runs the prompt that failed for good again (and only it).
    emulator.reset()
    retried = run_cli(tmp_path, emulator, "--format", "jsonl", "--journal", str(journal), "--retry-failed", *prompts)
    assert retried.returncode == 1
    assert [r.prompt for r in emulator.message_requests()] == ["gamma"]
    assert records(retried.stdout)[:2] == before[:2]


@pytest.mark.timeout(60)
def test_journal_of_other_prompts_or_a_bad_path_is_a_usage_error(tmp_path, emulator):
    journal = tmp_path / "run.journal"
    assert run_cli(tmp_path, emulator, "--journal", str(journal), "one", "two").returncode == 0
    emulator.reset()
    proc = run_cli(tmp_path, emulator, "--journal", str(journal), "one", "other")
    assert proc.returncode == 2 and "different prompts" in proc.stderr
    proc = run_cli(tmp_path, emulator, "--journal", str(tmp_path), "one")
    assert proc.returncode == 2 and "--journal: is a directory" in proc.stderr
    proc = run_cli(tmp_path, emulator, "--journal", str(tmp_path / "no" / "such" / "j"), "one")
    assert proc.returncode == 2 and "--journal: no such directory" in proc.stderr
    proc = run_cli(tmp_path, emulator, "--retry-failed", "one")
    assert proc.returncode == 2 and "--retry-failed needs --journal" in proc.stderr
    assert emulator.message_requests() == []


@pytest.mark.timeout(120)
def test_a_killed_run_resumes_from_its_journal(tmp_path, emulator):
    """SIGTERM mid-run: finished prompts are journaled; the re-run sends only the rest."""
    journal = tmp_path / "run.journal"
    prompts = ["[[delay_ms=1]] quick one", "[[delay_ms=1]] quick two", "[[ttft_ms=2500]] slow three"]
    args = [sys.executable, "-m", "orchestrate", "--format", "jsonl", "--workers", "3", "--journal", str(journal),
            *prompts]
    proc = subprocess.Popen(args, env=_env(tmp_path, emulator.base_url), cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    both_done = threading.Event()
    err_lines: list[str] = []

    def read_stderr() -> None:
        finished = set()
        for line in proc.stderr:
            err_lines.append(line)
            m = re.search(r"\] ([01]) ok", line)
            if m:
                finished.add(m.group(1))
                if finished == {"0", "1"}:
                    both_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert both_done.wait(30), "".join(err_lines)
    assert emulator.wait_for(lambda e: e.active_requests >= 1, timeout=10)
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    proc.wait(timeout=30)
    reader.join(timeout=5)
    assert proc.returncode == 143, "".join(err_lines)
    killed = records(out)
    assert [r["status"] for r in killed] == ["ok", "ok", "interrupted"]

    emulator.wait_idle(timeout=5)
    emulator.reset()
    resumed = run_cli(tmp_path, emulator, "--format", "jsonl", "--journal", str(journal), *prompts)
    assert resumed.returncode == 0, resumed.stderr
    assert [r.prompt for r in emulator.message_requests()] == ["slow three"]
    recs = records(resumed.stdout)
    assert recs[:2] == killed[:2]
    assert recs[2]["status"] == "ok" and recs[2]["text"] == "Echo: slow three"


# ----------------------------------------------------------------------------- help


def test_help_lists_the_agent_options(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["PYTHONPATH"] = str(SCRIPTS)
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for option in ("--tool", "--max-tool-turns", "--max-cost", "--dry-run", "--journal", "--retry-failed"):
        assert option in proc.stdout, option
    import orchestrate

    for option in ("--tool", "--max-cost", "--dry-run", "--journal"):
        assert option in (orchestrate.__doc__ or ""), option
