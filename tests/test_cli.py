"""End-to-end tests of the ``orchestrate`` command line.

Every test runs ``python -m orchestrate`` in a subprocess against the session's emulator (real
SDK, real HTTP); nothing is patched. Directives in the prompts (``[[delay_ms=..]]``,
``[[fail=..]]``) make timing and faults deterministic.
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
import time
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TEST_KEY = "sk-ant-test-key"
ANSI = re.compile(r"\x1b\[")


def _env(tmp_path: Path, base_url: Optional[str], key: Optional[str] = TEST_KEY) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env["ORCHESTRATING_AGENTS_PROJECT_DIR"] = str(project)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TERM", None)
    if base_url is not None:
        env["ANTHROPIC_BASE_URL"] = base_url
    if key is not None:
        env["ANTHROPIC_API_KEY"] = key
    return env


def run_cli(tmp_path: Path, emulator, *args: str, stdin: Optional[str] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m orchestrate ARGS`` against the emulator; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrate", *args],
        env=_env(tmp_path, emulator.base_url if emulator is not None else None),
        cwd=tmp_path,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- results


@pytest.mark.timeout(60)
def test_jsonl_records_in_input_order_whatever_the_completion_order(tmp_path, emulator):
    prompts = ["[[delay_ms=150]] alpha one", "[[delay_ms=1]] beta two", "[[delay_ms=60]] gamma three"]
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--workers", "3", *prompts)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert [r["task_id"] for r in recs] == ["0", "1", "2"]
    assert [r["text"] for r in recs] == ["Echo: alpha one", "Echo: beta two", "Echo: gamma three"]
    for r in recs:
        assert r["status"] == "ok"
        assert r["error_kind"] is None and r["error"] is None
        assert r["usage"]["output_tokens"] == 3 + 8  # the text and the default model's thinking (high)
        assert r["usage"]["thinking_tokens"] == 8
        assert r["usage"]["input_tokens"] >= 1
        assert isinstance(r["cost_usd"], float) and r["cost_usd"] > 0
        assert r["stop_reason"] == "end_turn"
    # The run really finished out of input order (so the order above is the CLI's doing).
    assert emulator.wait_idle(timeout=5)  # a handler may still be closing its stream
    done = sorted(emulator.message_requests(), key=lambda rec: rec.ended_at)
    assert [rec.prompt for rec in done] != ["alpha one", "beta two", "gamma three"]
    assert len(done) == 3


@pytest.mark.timeout(60)
def test_jsonl_file_with_per_prompt_keys(tmp_path, emulator):
    lines = [
        {"prompt": "first", "task_id": "t-a", "category": "docs", "system": "Be brief."},
        {"prompt": "second one here", "task_id": "t-b", "max_tokens": 1, "model": "claude-haiku-4-5"},
        {"prompt": "third", "model": "claude-haiku-5-5", "effort": "low", "thinking": "adaptive"},
    ]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    proc = run_cli(tmp_path, emulator, "--file", str(f), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["task_id"] for r in recs] == ["t-a", "t-b", "2"]
    assert recs[0]["category"] == "docs"
    assert recs[0]["text"] == "Echo: first"
    assert recs[1]["text"] == "Echo:" and recs[1]["stop_reason"] == "max_tokens"
    bodies = {r.prompt: r.body for r in emulator.message_requests()}
    assert "Be brief." in json.dumps(bodies["first"].get("system"))
    assert bodies["second one here"]["max_tokens"] == 1
    assert bodies["third"]["model"] == "claude-haiku-5-5"
    assert bodies["third"]["output_config"] == {"effort": "low"} and bodies["third"]["thinking"] == {"type": "adaptive"}
    assert "temperature" not in bodies["third"] and "output_config" not in bodies["first"]
    assert recs[2]["usage"]["thinking_tokens"] == 2


@pytest.mark.timeout(60)
def test_plain_lines_from_file_and_stdin(tmp_path, emulator):
    f = tmp_path / "prompts.txt"
    f.write_text("one\n\n  two  \n")
    proc = run_cli(tmp_path, emulator, "--file", str(f), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: one", "Echo: two"]

    proc = run_cli(tmp_path, emulator, "--format", "jsonl", stdin="from stdin\nagain\n")
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: from stdin", "Echo: again"]


@pytest.mark.timeout(60)
def test_model_max_tokens_and_shared_system_options(tmp_path, emulator):
    sysfile = tmp_path / "system.txt"
    sysfile.write_text("You are terse.")
    proc = run_cli(tmp_path, emulator, "--model", "claude-haiku-4-5", "--max-tokens", "2",
                   "--system-file", str(sysfile), "--format", "jsonl", "a b c d", "e")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert recs[0]["text"] == "Echo: a" and recs[0]["stop_reason"] == "max_tokens"
    assert recs[1]["text"] == "Echo: e"
    for rec in emulator.message_requests():
        assert rec.body["model"] == "claude-haiku-4-5"
        assert rec.body["max_tokens"] == 2
        assert "You are terse." in json.dumps(rec.body["system"])


@pytest.mark.timeout(60)
def test_text_format_and_output_file(tmp_path, emulator):
    out = tmp_path / "out.txt"
    proc = run_cli(tmp_path, emulator, "--format", "text", "--output", str(out), "hello", "world")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    text = out.read_text()
    assert "=== [0] 0: ok" in text and "Echo: hello" in text
    assert text.index("Echo: hello") < text.index("=== [1] 1: ok") < text.index("Echo: world")

    out2 = tmp_path / "out.jsonl"
    proc = run_cli(tmp_path, emulator, "--output", str(out2), "solo")  # file output defaults to jsonl
    assert proc.returncode == 0, proc.stderr
    assert records(out2.read_text())[0]["text"] == "Echo: solo"


@pytest.mark.timeout(60)
def test_cache_flag_caches_the_shared_system_once_for_all(tmp_path, emulator):
    sysfile = tmp_path / "context.txt"
    sysfile.write_text("Reference material. " * 1200)  # ~6,000 tokens: above every cache minimum
    proc = run_cli(tmp_path, emulator, "--system-file", str(sysfile), "--cache", "--workers", "4",
                   "--format", "jsonl", "q1", "q2", "q3", "q4")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["text"] for r in recs] == ["Echo: q1", "Echo: q2", "Echo: q3", "Echo: q4"]
    stats = emulator.cache_stats()
    assert stats["writes"] == 1 and stats["reads"] == 3, stats
    assert sum(r["usage"]["cache_read_input_tokens"] > 0 for r in recs) == 3
    assert sum(r["usage"]["cache_creation_input_tokens"] > 0 for r in recs) == 1


# ----------------------------------------------------------------------------- failures and exit codes


@pytest.mark.timeout(60)
def test_failed_prompt_exit_1_others_kept(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--retries", "0",
                   "good one", "[[fail=400]] bad one", "[[fail=529]] overloaded one", "good two")
    assert proc.returncode == 1, proc.stderr
    recs = records(proc.stdout)
    assert [r["status"] for r in recs] == ["ok", "failed", "failed", "ok"]
    assert recs[0]["text"] == "Echo: good one" and recs[3]["text"] == "Echo: good two"
    assert recs[1]["error_kind"] == "bad_request" and recs[1]["text"] is None and recs[1]["error"]
    assert recs[2]["error_kind"] == "overloaded"
    # --retries 0: the 529 reached the server exactly once (no hidden SDK retries either).
    assert sum(r.prompt == "overloaded one" for r in emulator.message_requests()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_transient_failure_is_retried(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--retries", "2",
                   "[[fail=529 times=1]] flaky", "steady")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["text"] for r in recs] == ["Echo: flaky", "Echo: steady"]
    attempts = [r.attempt for r in emulator.message_requests() if r.prompt == "flaky"]
    assert attempts == [1, 2]


@pytest.mark.timeout(60)
def test_stall_timeout_aborts_and_retries(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--retries", "1", "--stall-timeout", "0.5",
                   "[[stall_after=1 times=1]] slow start here")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["text"] == "Echo: slow start here"
    assert emulator.wait_idle(timeout=5)
    reqs = [r for r in emulator.message_requests() if r.prompt == "slow start here"]
    assert len(reqs) == 2 and reqs[0].aborted


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        ["--workers", "0", "x"],
        ["--workers", "many", "x"],
        ["--format", "xml", "x"],
        ["--max-tokens", "-3", "x"],
        ["--temperature", "2", "x"],
        ["--no-such-option", "x"],
        ["--system", "a", "--system-file", "b", "x"],
    ],
    ids=["workers0", "workers-text", "format", "max-tokens", "temperature", "unknown", "two-systems"],
)
def test_bad_arguments_usage_and_exit_2(tmp_path, emulator, args):
    proc = run_cli(tmp_path, emulator, *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: orchestrate")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--file", "missing.txt"], "orchestrate: error: --file: no such file: missing.txt"),
        (["--system-file", "nope.txt", "x"], "orchestrate: error: --system-file: no such file: nope.txt"),
        (["--perspectives", "security"], "--perspectives needs --input"),
        (["--cache", "x"], "--cache caches the shared system prompt"),
        (["x", "--file", "f.txt"], "give prompts in one way only"),
        ([], "no prompts"),
    ],
    ids=["file", "system-file", "perspectives-no-input", "cache-no-system", "two-sources", "nothing"],
)
def test_usage_errors_one_line_exit_2(tmp_path, emulator, args, message):
    proc = run_cli(tmp_path, emulator, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
def test_bad_jsonl_names_the_line_and_sends_nothing(tmp_path, emulator):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": "x", "colour": "red"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2
    assert f"{f}:2: unknown key 'colour'" in proc.stderr
    f.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and f"{f}:2: 'prompt' must be a non-empty string" in proc.stderr
    f.write_text('{"prompt": "a", "task_id": "x"}\n{"prompt": "b", "task_id": "x"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and "task_id 'x' is already used" in proc.stderr
    f.write_text('{"prompt": "a"}\n{not json\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and ":2: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert emulator.message_requests() == []


# ----------------------------------------------------------------------------- progress


@pytest.mark.timeout(60)
def test_non_tty_progress_is_plain_lines_on_stderr(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--retries", "0", "alpha", "[[fail=400]] beta")
    assert proc.returncode == 1
    # stdout is not a terminal: JSONL by default, and nothing else on it.
    recs = records(proc.stdout)
    assert [r["status"] for r in recs] == ["ok", "failed"]
    assert not ANSI.search(proc.stderr)
    lines = proc.stderr.splitlines()
    assert all(line.startswith("orchestrate: ") for line in lines), lines
    assert any(re.search(r"\] 0 ok \(\d+ tokens", line) for line in lines), lines
    assert any(re.search(r"\] 1 failed \(.*\): ", line) for line in lines), lines
    assert re.search(r"orchestrate: 1 ok, 1 failed, \$\d", lines[-1])

    quiet = run_cli(tmp_path, emulator, "--quiet", "alpha")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert records(quiet.stdout)[0]["text"] == "Echo: alpha"


@pytest.mark.timeout(60)
def test_tty_live_display_through_a_pseudo_terminal(tmp_path, emulator):
    pytest.importorskip("pty")
    pytest.importorskip("rich")
    env = _env(tmp_path, emulator.base_url)
    env.update(TERM="xterm", COLUMNS="100", LINES="30")
    code, out, screen = _run_in_pty(tmp_path, env, "--format", "jsonl",
                                    "[[delay_ms=20]] one two three four", "[[delay_ms=10]] five six")
    assert code == 0, screen
    assert ANSI.search(screen), "expected terminal control sequences from the live display"
    assert "task" in screen and "state" in screen and "tokens" in screen and "elapsed" in screen
    assert "done 2/2" in screen and "failed 0" in screen
    assert "five six" in screen  # the prompt column, shown verbatim (no markup interpretation)
    assert [r["text"] for r in records(out)] == ["Echo: one two three four", "Echo: five six"]


# ----------------------------------------------------------------------------- perspectives


@pytest.mark.timeout(60)
def test_perspectives_review_of_a_file(tmp_path, emulator):
    code = tmp_path / "app.py"
    code.write_text("def handler(q):\n    return db.execute('SELECT * FROM t WHERE a=' + q)\n")
    proc = run_cli(tmp_path, emulator, "--perspectives", "security,performance,style",
                   "--input", str(code), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["task_id"] for r in recs] == ["security", "performance", "style"]
    assert [r["category"] for r in recs] == ["security", "performance", "style"]
    reqs = emulator.message_requests()
    assert len(reqs) == 3
    by_focus = {}
    for rec in reqs:
        system = json.dumps(rec.body.get("system"))
        assert "SELECT * FROM t" in json.dumps(rec.body["messages"]) + system
        for name in ("security", "performance", "style"):
            if f"focused only on {name}" in system:
                by_focus[name] = rec
    assert set(by_focus) == {"security", "performance", "style"}
    for r in recs:
        assert r["status"] == "ok" and r["text"].startswith("Echo: Review")


# ----------------------------------------------------------------------------- interrupt


@pytest.mark.timeout(90)
def test_sigint_aborts_in_flight_writes_completed_and_exits_130(tmp_path, emulator):
    prompts = ["[[delay_ms=1]] quick"] + [f"[[delay_ms=3000 words=40 id={i}]] slow" for i in range(4)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrate", "--format", "jsonl", "--workers", "5", *prompts],
        env=_env(tmp_path, emulator.base_url), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first_done = threading.Event()
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if re.search(r"\] 0 ok", line):
                first_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert first_done.wait(30), "".join(err_lines)
    assert emulator.wait_for(lambda e: e.active_requests >= 4, timeout=10)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    reader.join(timeout=5)
    assert proc.returncode == 130, "".join(err_lines)
    assert elapsed < 4.0, f"took {elapsed:.2f}s after SIGINT"  # the CLI's own bound is 2 s
    recs = records(out)
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[0]["status"] == "ok" and recs[0]["text"] == "Echo: quick"
    assert [r["status"] for r in recs[1:]] == ["interrupted"] * 4
    assert all(r["text"] is None for r in recs[1:])
    assert emulator.wait_for(lambda e: e.stats()["aborted"] >= 4, timeout=10)
    assert "Traceback" not in "".join(err_lines)


# ----------------------------------------------------------------------------- offline


@pytest.mark.timeout(60)
def test_offline_without_key_runs_against_the_bundled_emulator(tmp_path):
    env = _env(tmp_path, base_url=None, key=None)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrate", "--format", "jsonl", "hello offline", "second"],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    offline = [line for line in proc.stderr.splitlines() if "offline" in line]
    assert len(offline) == 1 and "no API key found" in offline[0]
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: hello offline", "Echo: second"]


@pytest.mark.timeout(60)
def test_base_url_without_key_talks_to_that_server(tmp_path, emulator):
    env = _env(tmp_path, base_url=emulator.base_url, key=None)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrate", "--format", "jsonl", "via base url"],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "offline" not in proc.stderr
    assert records(proc.stdout)[0]["text"] == "Echo: via base url"
    assert [r.prompt for r in emulator.message_requests()] == ["via base url"]


@pytest.mark.timeout(60)
def test_console_script_entry_point_is_main(tmp_path, emulator):
    """``orchestrate = "orchestrate:main"`` in pyproject: main(argv) returns the exit status."""
    code = ("import sys, orchestrate; "
            "sys.exit(orchestrate.main(['--format', 'jsonl', '--quiet', 'via main']))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, emulator.base_url),
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["text"] == "Echo: via main"


@pytest.mark.timeout(60)
def test_unusable_key_file_is_an_error_not_offline(tmp_path):
    env = _env(tmp_path, base_url=None, key=None)
    secret = "sk-ant-SENTINEL-do-not-print"
    (Path(env["ORCHESTRATING_AGENTS_PROJECT_DIR"]) / "API_CREDENTIALS.json").write_text('{"anthropic_api_key": "'
                                                                                       + secret + '",')
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "hello"], env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "API_CREDENTIALS.json" in proc.stderr and "offline" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "SENTINEL" not in proc.stderr + proc.stdout


def _run_in_pty(tmp_path: Path, env: dict, *args: str) -> tuple[int, str, str]:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrate", *args], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out.decode(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.timeout(60)
def test_terminal_without_rich_falls_back_to_plain_lines(tmp_path, emulator):
    pytest.importorskip("pty")
    # A 'rich' that cannot be imported, first on the path: the runtime needs only anthropic.
    shadow = tmp_path / "shadow" / "rich"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('rich is not installed here')\n")
    tqdm_shadow = tmp_path / "shadow" / "tqdm"  # nor tqdm, the other optional bar library
    tqdm_shadow.mkdir()
    (tqdm_shadow / "__init__.py").write_text("raise ImportError('tqdm is not installed here')\n")
    env = _env(tmp_path, emulator.base_url)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    env["TERM"] = "xterm"
    code, out, screen = _run_in_pty(tmp_path, env, "--format", "jsonl", "one", "two")
    assert code == 0, screen
    assert [r["text"] for r in records(out)] == ["Echo: one", "Echo: two"]
    assert not ANSI.search(screen)
    assert re.search(r"orchestrate: \[\d/2\] 0 ok", screen) and "orchestrate: 2 ok, 0 failed" in screen


# ----------------------------------------------------------------------------- unreadable input


def _run_raw(tmp_path: Path, emulator, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrate", *args],
                          env=_env(tmp_path, emulator.base_url), cwd=tmp_path, capture_output=True,
                          timeout=60, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["closed", "write-only", "not-utf8"])
@pytest.mark.parametrize("args", [[], ["--file", "-"], ["--perspectives", "security", "--input", "-"]],
                         ids=["implicit", "file-dash", "input-dash"])
def test_unreadable_stdin_is_a_one_line_usage_error(tmp_path, emulator, how, args):
    if how == "closed":  # like `orchestrate <&-`: the child starts with fd 0 closed
        proc = _run_raw(tmp_path, emulator, *args, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
        expected = "stdin: not available"
    elif how == "write-only":  # like `orchestrate 0>>file`
        with open(tmp_path / "wo.txt", "w") as wo:
            proc = _run_raw(tmp_path, emulator, *args, stdin=wo)
        expected = "stdin: cannot read"
    else:
        proc = _run_raw(tmp_path, emulator, *args, input=b"caf\xe9 au lait\n")
        expected = "stdin: not UTF-8 text"
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchestrate: error: {expected}"), stderr
    assert proc.stdout == b""
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
def test_utf8_stdin_with_crlf_is_read(tmp_path, emulator):
    proc = _run_raw(tmp_path, emulator, "--format", "jsonl", input="café\r\nthé\r\n".encode())
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout.decode())] == ["Echo: café", "Echo: thé"]


@pytest.mark.timeout(60)
def test_text_that_is_not_valid_unicode_is_refused_with_its_line(tmp_path, emulator):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 half"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{f}:2: 'prompt': not valid Unicode text" in lines[0], proc.stderr
    f.write_text('{"prompt": "fine", "system": "\\udfff"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and f"{f}:1: 'system': not valid Unicode text" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "value, message",
    [
        ("nosuch.py", "--input: no such file: nosuch.py"),
        ("src/missing", "--input: no such file: src/missing"),
        ("some_dir", "--input: is a directory: some_dir"),
        ("some_dir/", "--input: is a directory: some_dir/"),
    ],
    ids=["missing-ext", "missing-slash", "dir", "dir-slash"],
)
def test_input_that_looks_like_a_path_must_exist(tmp_path, emulator, value, message):
    (tmp_path / "some_dir").mkdir()
    proc = run_cli(tmp_path, emulator, "--perspectives", "security", "--input", value)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchestrate: error: {message}"), proc.stderr
    assert emulator.message_requests() == []


@pytest.mark.timeout(60)
def test_input_literal_text_is_still_reviewed(tmp_path, emulator):
    proc = run_cli(tmp_path, emulator, "--format", "jsonl", "--perspectives", "security",
                   "--input", "def f(x): return eval(x)")
    assert proc.returncode == 0, proc.stderr
    body = emulator.message_requests()[0].body
    assert "return eval(x)" in json.dumps(body["system"])


@pytest.mark.timeout(60)
def test_default_task_ids_skip_explicit_ones(tmp_path, emulator):
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompt": "a", "task_id": "1"}\n{"prompt": "b"}\n{"prompt": "c"}\n'
                 '{"prompt": "d", "task_id": "0"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["task_id"] for r in recs] == ["1", "1-1", "2", "0"]
    assert [r["text"] for r in recs] == ["Echo: a", "Echo: b", "Echo: c", "Echo: d"]
    # Explicit duplicates are still refused.
    f.write_text('{"prompt": "a", "task_id": "1"}\n{"prompt": "b"}\n{"prompt": "c", "task_id": "1"}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2 and f"{f}:3: task_id '1' is already used by {f}:1" in proc.stderr


@pytest.mark.timeout(90)
def test_main_in_process_leaves_the_environment_alone(tmp_path):
    """Offline runs pass the emulator's URL and key to the library; os.environ is not touched."""
    code = textwrap.dedent("""
        import json, os, sys
        import orchestrate
        before = dict(os.environ)
        codes = [orchestrate.main(["--format", "jsonl", "--quiet", "--retries", "0", f"run {i}"])
                 for i in range(2)]
        after = dict(os.environ)
        print(json.dumps({"codes": codes, "same": before == after,
                          "leaked": sorted(k for k in after if k.startswith("ANTHROPIC_"))}),
              file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, base_url=None, key=None),
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=80)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"codes": [0, 0], "same": True, "leaked": []}
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: run 0", "Echo: run 1"]


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.timeout(90)
def test_sigterm_is_like_ctrl_c_results_written_exit_143(tmp_path, emulator):
    """``timeout``, a CI cancel or ``docker stop`` send SIGTERM: finished results are kept."""
    prompts = ["[[delay_ms=1]] quick one", "[[delay_ms=1]] quick two"] + \
        [f"[[ttft_ms=5000 id={i}]] slow" for i in range(3)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrate", "--format", "jsonl", "--workers", "5", *prompts],
        env=_env(tmp_path, emulator.base_url), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
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
    assert emulator.wait_for(lambda e: e.active_requests >= 3, timeout=10)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    reader.join(timeout=5)
    assert proc.returncode == 143, "".join(err_lines)
    assert elapsed < 4.0, f"took {elapsed:.2f}s after SIGTERM"
    recs = records(out)
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
    assert [r["text"] for r in recs[:2]] == ["Echo: quick one", "Echo: quick two"]
    assert [r["status"] for r in recs] == ["ok", "ok", "interrupted", "interrupted", "interrupted"]
    assert emulator.wait_for(lambda e: e.stats()["aborted"] >= 3, timeout=10)
    assert "Traceback" not in "".join(err_lines)
    assert re.search(r"orchestrate: 2 ok, 0 failed, 3 interrupted", "".join(err_lines))


# ----------------------------------------------------------------------------- output encoding


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["text", "jsonl", "output-file"])
def test_non_ascii_reply_on_an_ascii_stdout_is_escaped_not_lost(tmp_path, emulator, how):
    prompt = "café 中文 😀 naïve"
    env = _env(tmp_path, emulator.base_url)
    env["PYTHONIOENCODING"] = "ascii"
    args = ["--retries", "0", prompt, "plain ascii"]
    out_file = tmp_path / "out.jsonl"
    if how == "output-file":
        args = ["--output", str(out_file), *args]
    else:
        args = ["--format", how, *args]
    proc = subprocess.run([sys.executable, "-m", "orchestrate", *args], env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    stderr = proc.stderr.decode("ascii")  # stderr stays ASCII too (backslash escapes)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert len(emulator.message_requests()) == 2  # each prompt paid for exactly once
    if how == "output-file":
        assert proc.stdout == b""
        recs = records(out_file.read_text(encoding="utf-8"))  # a file is UTF-8 whatever stdout is
        assert [r["text"] for r in recs] == [f"Echo: {prompt}", "Echo: plain ascii"]
        return
    stdout = proc.stdout.decode("ascii")  # nothing but ASCII was written
    if how == "jsonl":
        recs = records(stdout)  # \uXXXX escapes: the same JSON values
        assert [r["text"] for r in recs] == [f"Echo: {prompt}", "Echo: plain ascii"]
        assert "\\u00e9" in stdout
    else:
        assert "Echo: caf\\xe9 \\u4e2d\\u6587 \\U0001f600 na\\xefve" in stdout, stdout
        assert "Echo: plain ascii" in stdout
        assert stdout.index("=== [0] 0: ok") < stdout.index("caf\\xe9") < stdout.index("=== [1] 1: ok")


# ----------------------------------------------------------------------------- text or JSONL input


@pytest.mark.timeout(60)
def test_file_mixing_text_and_json_lines_is_refused(tmp_path, emulator):
    f = tmp_path / "prompts.txt"
    f.write_text('first a plain prompt\n\n{"prompt": "then json", "task_id": "x"}\nplain again\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchestrate: error: {f}:3: a JSON object line"), proc.stderr
    assert proc.stdout == ""

    # JSON first: every line must be a JSON object; the plain line is named.
    f.write_text('{"prompt": "json first"}\nthen plain text\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f))
    assert proc.returncode == 2
    assert f"{f}:2: not valid JSON" in proc.stderr and "read as JSONL" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    # The same rule for stdin.
    proc = run_cli(tmp_path, emulator, stdin='plain\n{"prompt": "json"}\n')
    assert proc.returncode == 2 and "<stdin>:2: a JSON object line" in proc.stderr
    assert emulator.message_requests() == []

    # Text lines that merely contain braces, or are JSON but not objects, stay prompts.
    f.write_text('explain {x | x > 0}\n[1, 2]\n{not json either}\n')
    proc = run_cli(tmp_path, emulator, "--file", str(f), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout)] == [
        "Echo: explain {x | x > 0}", "Echo: [1, 2]", "Echo: {not json either}"]

    help_text = run_cli(tmp_path, emulator, "--help").stdout
    assert "first non-blank line starts with '{'" in " ".join(help_text.split())
    assert "143" in help_text


# ----------------------------------------------------------------------------- running the file directly


@pytest.mark.timeout(60)
def test_running_the_script_file_directly(tmp_path, emulator):
    """``python scripts/orchestrate.py`` works without an install: the scripts directory is
    sys.path[0]. ``-S`` skips site (so the editable install's .pth cannot help); the
    third-party libraries come from PYTHONPATH."""
    import sysconfig

    env = _env(tmp_path, emulator.base_url)
    env["PYTHONPATH"] = os.pathsep.join({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    proc = subprocess.run([sys.executable, "-S", str(SCRIPTS / "orchestrate.py"), "--format", "jsonl",
                           "direct one", "direct two"],
                          env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r["text"] for r in records(proc.stdout)] == ["Echo: direct one", "Echo: direct two"]
    assert "Traceback" not in proc.stderr

    # And plainly, as a user would type it.
    env = _env(tmp_path, emulator.base_url)
    env.pop("PYTHONPATH")
    proc = subprocess.run([sys.executable, "scripts/orchestrate.py", "--quiet", "--format", "jsonl", "plain run"],
                          env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["text"] == "Echo: plain run"
