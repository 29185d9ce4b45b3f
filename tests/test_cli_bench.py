"""bench/run.py: discovery, one child process per module, the markdown table, failure notes.

These tests run bench/run.py on a temporary directory of small fake bench modules (the real
benchmarks are too slow for the test suite; they are run by hand and recorded in bench/RESULTS.md).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"


def _load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run_under_test", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKE_OK = textwrap.dedent(
    """
    import os
    from _common import row

    def run(quick=False):
        n = 10 if quick else 1000
        return [
            row("fake", "calls", float(n), "calls", baseline=n / 2, baseline_name="half", target="<= 3"),
            row("fake", "parent pid", float(os.getppid()), "pid"),
        ]
    """
)
FAKE_BROKEN = "def run(quick=False):\n    raise RuntimeError('broken on purpose')\n"


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    (d / "bench_fake.py").write_text(FAKE_OK)
    (d / "bench_broken.py").write_text(FAKE_BROKEN)
    (d / "helper.py").write_text("raise SystemExit('not a bench module, must not be imported')\n")
    return d


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(120)
def test_runs_each_module_in_a_child_and_writes_the_table(bench_dir: Path, tmp_path: Path):
    out = tmp_path / "RESULTS.md"
    proc = _run("--bench-dir", str(bench_dir), "--quick", "--output", str(out))
    assert proc.returncode == 1, proc.stderr  # bench_broken failed
    text = out.read_text()
    assert "| benchmark | figure | value | unit | baseline | ratio | target |" in text
    assert "| fake | calls | 10 | calls | 5 (half) | 2 | <= 3 |" in text
    assert "cores" in text and "anthropic SDK" in text and "Python" in text and "(--quick)" in text
    assert "bench_broken failed: RuntimeError" in text
    assert "broken on purpose" in proc.stderr  # the child's traceback is shown, not swallowed
    # The module ran in a child of run.py, not in run.py itself (whose parent is this test).
    ppid_line = next(line for line in text.splitlines() if line.startswith("| fake | parent pid |"))
    assert int(ppid_line.split("|")[3]) != os.getpid()


@pytest.mark.timeout(120)
def test_only_selects_modules_and_unknown_is_a_usage_error(bench_dir: Path):
    proc = _run("--bench-dir", str(bench_dir), "--quick", "--only", "bench_fake", "--output", "-")
    assert proc.returncode == 0, proc.stderr
    assert "| fake | calls | 10 |" in proc.stdout
    assert "bench_broken" not in proc.stdout.split("Notes:")[0]
    proc = _run("--bench-dir", str(bench_dir), "--only", "nope", "--output", "-")
    assert proc.returncode == 2
    assert "no module bench_nope.py" in proc.stderr and "broken, fake" in proc.stderr


@pytest.mark.timeout(60)
def test_in_process_mode_and_row_checks(bench_dir: Path, tmp_path: Path):
    (bench_dir / "bench_badrows.py").write_text("def run(quick=False):\n    return [{'figure': 1}]\n")
    proc = _run("--bench-dir", str(bench_dir), "--in-process", "--only", "fake,badrows", "--output", "-")
    assert proc.returncode == 1
    assert "| fake | calls | 1000 | calls | 500 (half) | 2 |" in proc.stdout
    assert f"| fake | parent pid | {os.getpid()} |" in proc.stdout  # ran inside run.py
    assert "bench_badrows failed: TypeError" in proc.stdout and "no 'benchmark' key" in proc.stdout


def test_number_formatting_and_missing_notes():
    run = _load_run_module()
    assert run.fmt_num(None) == ""
    assert run.fmt_num(3) == "3"
    assert run.fmt_num(2.0) == "2"
    assert run.fmt_num(0.012345) == "0.0123"
    assert run.fmt_num(1234.56) == "1235"
    assert run.fmt_num(123.456) == "123.5"
    machine = {"cores": 2, "usable_cores": 2, "python": "CPython 3.11", "anthropic": "2.12.0",
               "platform": "Linux", "date": "2025-01-01 00:00 UTC"}
    text = run.render([], machine, quick=False, ran=["client"], failed={}, seconds=1.0)
    assert "bench_parallel was not run" in text and "bench_client was not run" not in text
    assert "a|b" not in run.render([{"benchmark": "a|b", "figure": "f", "value": 1.0, "unit": "s"}],
                                    machine, quick=False, ran=[], failed={}, seconds=0.1)
