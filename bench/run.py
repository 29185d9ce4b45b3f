"""Run every benchmark in bench/ against the local emulator and write a markdown table.

Usage::

    python bench/run.py                       # full run, writes bench/RESULTS.md
    python bench/run.py --quick               # smaller N, for a smoke check
    python bench/run.py --only parallel       # one module (``bench_parallel``); repeatable / comma list
    python bench/run.py --output -            # print the table instead of writing a file

Every ``bench/bench_*.py`` module exposes ``run(quick: bool = False) -> list[dict]`` and builds its
rows with ``bench/_common.py``'s ``row()``. Each module runs in its own child process (so one
module's memory, threads or sockets cannot skew the next one's figures, e.g. peak RSS); use
``--in-process`` to run them all in this process instead. A module that fails is reported in the
table's notes and makes the exit code 1; the other modules still run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

#: Benchmarks the project's issues name; used to say which ones are missing from a run.
EXPECTED = {
    "client": "500 sequential calls: library vs new SDK client per call vs shared SDK client",
    "parallel": "overhead, fan-out efficiency, interrupt latency, cache pilot, RSS for 10k prompts",
    "ratelimit": "managed run against the emulator's rate limiter: failures, 429s, throughput",
    "batches": "message batches: submission and polling against the emulator's batch endpoints",
    "tools": "a 3-turn tool loop: the library vs a hand-written SDK loop, client CPU",
    "admission": "token-aware admission at a tier-1-like shape: 429s per request, throughput vs the limit",
    "journal": "run journal: overhead per result, and resuming from a complete journal",
    "tracing": "OpenTelemetry tracing: client CPU with tracing off, and library spans vs the SDK's spans alone",
}


def _ensure_paths(directory: Path = BENCH_DIR) -> None:
    for p in (str(BENCH_DIR), str(directory), str(ROOT / "scripts")):
        if p not in sys.path:
            sys.path.insert(0, p)


def discover(directory: Path = BENCH_DIR) -> list[str]:
    """Names (without the ``bench_`` prefix) of every ``bench_*.py`` module there, sorted."""
    return sorted(p.stem[len("bench_"):] for p in directory.glob("bench_*.py"))


def _select(names: list[str], only: Optional[list[str]]) -> list[str]:
    if not only:
        return names
    wanted: list[str] = []
    for item in only:
        for part in item.split(","):
            part = part.strip()
            if part.startswith("bench_"):
                part = part[len("bench_"):]
            if part.endswith(".py"):
                part = part[: -len(".py")]
            if part:
                wanted.append(part)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(
            f"--only: no module bench_{unknown[0]}.py (available: {', '.join(names) or 'none'})"
        )
    return [n for n in names if n in wanted]


def _check_rows(name: str, rows: Any) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"bench_{name}.run() must return a list of dicts, got {type(rows).__name__}")
    for r in rows:
        for key in ("benchmark", "figure", "value", "unit"):
            if key not in r:
                raise TypeError(f"bench_{name}.run(): a row has no {key!r} key: {r!r}")
    return rows


def run_module_in_process(name: str, quick: bool, directory: Path = BENCH_DIR) -> list[dict]:
    """Import ``bench_<name>`` and return its checked rows."""
    _ensure_paths(directory)
    module = importlib.import_module(f"bench_{name}")
    return _check_rows(name, module.run(quick=quick))


def run_module_in_child(name: str, quick: bool, timeout: float, directory: Path = BENCH_DIR) -> list[dict]:
    """Run ``bench_<name>`` in a child Python process; raise RuntimeError if it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-output", str(out),
               "--bench-dir", str(directory)]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, cwd=str(ROOT), timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench_{name} exited with status {proc.returncode}")
        return _check_rows(name, json.loads(out.read_text()))


def _child(name: str, output: str, quick: bool, directory: Path) -> int:
    try:
        rows = run_module_in_process(name, quick, directory)
    except BaseException:
        traceback.print_exc()
        return 1
    Path(output).write_text(json.dumps(rows, default=_json_default))
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


# ----------------------------------------------------------------------------- formatting


def fmt_num(value: Any) -> str:
    """Short human form of a number: 3 significant digits, thousands kept whole."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 1000:
            return f"{value:,.0f}".replace(",", "")
        if abs(value) >= 0.001:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def machine_info() -> dict:
    """Cores, Python, SDK version and date of this run."""
    try:
        import anthropic

        sdk = anthropic.__version__
    except Exception:  # pragma: no cover - the SDK is a runtime dependency
        sdk = "not installed"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        load = "load average unknown"
    return {
        "load": load,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "anthropic": sdk,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(rows: list[dict], machine: dict, *, quick: bool, ran: list[str], failed: dict[str, str],
           seconds: float) -> str:
    """The markdown report: machine, table, notes."""
    lines = ["# Benchmark results", ""]
    lines.append(
        f"Machine: {machine['cores']} cores ({machine['usable_cores']} usable), {machine['python']}, "
        f"anthropic SDK {machine['anthropic']}, {machine['platform']}; run {machine['date']}"
        f"{' (--quick)' if quick else ''}, {seconds:.0f} s in all; {machine.get('load', '')} at the start."
    )
    lines.append("")
    lines.append(
        "Every figure is measured against the local emulator (no network); the baseline is "
        "measured in the same run, and ratio = value / baseline. One run on a shared machine: "
        "expect a few percent of noise between runs."
    )
    lines.append("")
    lines.append("| benchmark | figure | value | unit | baseline | ratio | target |")
    lines.append("|---|---|---:|---|---|---:|---|")
    for r in rows:
        base = r.get("baseline")
        base_txt = fmt_num(base)
        if base is not None and r.get("baseline_name"):
            base_txt = f"{base_txt} ({r['baseline_name']})"
        ratio = r.get("ratio")
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    r.get("benchmark", ""),
                    r.get("figure", ""),
                    fmt_num(r.get("value")),
                    r.get("unit", ""),
                    base_txt,
                    "" if ratio is None else f"{ratio:.3g}",
                    r.get("target", ""),
                )
            )
            + " |"
        )
    lines.append("")
    notes = []
    if ran:
        notes.append(f"Modules run: {', '.join('bench_' + n for n in ran)}.")
    for name, err in failed.items():
        notes.append(f"bench_{name} failed: {err}")
    missing = [n for n in EXPECTED if n not in ran and n not in failed]
    for n in missing:
        notes.append(f"bench_{n} was not run (module missing or not selected): {EXPECTED[n]}.")
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
        lines.append("")
    lines.append(f"Reproduce: `python bench/run.py{' --quick' if quick else ''}`.")
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Run the bench/bench_*.py modules against the emulator and write a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke check)")
    parser.add_argument("--output", default=str(BENCH_DIR / "RESULTS.md"),
                        help="markdown file to write, '-' for stdout (default: bench/RESULTS.md)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this module (e.g. 'parallel' or 'bench_parallel'); repeatable")
    parser.add_argument("--in-process", action="store_true",
                        help="run every module in this process instead of one child process each")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds allowed per module in child mode (default 1800)")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    parser.add_argument("--bench-dir", default=str(BENCH_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    directory = Path(args.bench_dir).resolve()
    if args.child:
        return _child(args.child, args.child_output, args.quick, directory)

    names = discover(directory)
    if args.list:
        for n in names:
            print(f"bench_{n}")
        return 0
    try:
        selected = _select(names, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if not selected:
        print("run.py: no bench/bench_*.py modules found", file=sys.stderr)
        return 1

    machine = machine_info()  # before the run: the load average is the machine's, not ours
    rows: list[dict] = []
    ran: list[str] = []
    failed: dict[str, str] = {}
    start = time.monotonic()
    for name in selected:
        print(f"run.py: bench_{name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            if args.in_process:
                got = run_module_in_process(name, args.quick, directory)
            else:
                got = run_module_in_child(name, args.quick, args.timeout, directory)
        except Exception as exc:  # keep going: one broken module must not hide the others
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"run.py: bench_{name} FAILED: {failed[name]}", file=sys.stderr, flush=True)
            continue
        rows.extend(got)
        ran.append(name)
        print(f"run.py: bench_{name} done in {time.monotonic() - t0:.1f} s, {len(got)} rows",
              file=sys.stderr, flush=True)

    report = render(rows, machine, quick=args.quick, ran=ran, failed=failed,
                    seconds=time.monotonic() - start)
    if args.output == "-":
        sys.stdout.write(report)
    else:
        Path(args.output).write_text(report)
        print(f"run.py: wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
