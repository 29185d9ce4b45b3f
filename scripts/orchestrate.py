"""``orchestrate``: fan prompts out to many Claude calls from the command line.

Prompts come from the arguments, from ``--file`` (one per line, or JSONL with per-prompt keys)
or from stdin; ``--perspectives`` turns one document into a multi-perspective review. Results
go to stdout (or ``--output``) in input order, as JSONL records or text; live progress goes to
stderr (a table per agent on a terminal, plain lines otherwise). Without an API key and without
``ANTHROPIC_BASE_URL`` it runs offline against the bundled emulator.

Examples::

    orchestrate "Summarise the CAP theorem" "Explain Raft in two lines"
    orchestrate --file prompts.jsonl --workers 8 --format jsonl --output results.jsonl
    git diff | orchestrate --perspectives security,performance,correctness --input -
    orchestrate --tool my_tools:lookup --tool ./calc.py:add --max-tool-turns 5 "What is 2+3?"
    orchestrate --file prompts.jsonl --max-cost 2.50 --journal run.journal
    orchestrate --file prompts.jsonl --dry-run --format jsonl
    orchestrate --model claude-haiku-5-5 --effort low --file prompts.txt
    python -m orchestrate --help

Exit status: 0 every prompt succeeded, 1 some failed, 2 bad usage (arguments, unreadable
input), 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (``timeout``, a CI cancel,
``docker stop``): either way requests in flight are aborted and completed results are written.
A signal during start-up (before any prompt runs) ends the command at once with the same status
and a one-line message, never a traceback.

``--effort LEVEL`` (``low`` ... ``max``) and ``--thinking TYPE`` (``adaptive``, ``disabled``,
``between_tools``) set ``output_config.effort`` / ``thinking`` for every prompt that does not set
its own (JSONL keys ``effort`` / ``thinking``); a level or type the model does not accept is a
usage error (exit 2) before any request. ``--temperature`` stays for old scripts: the API removed
sampling parameters, so any value but 1 is refused (exit 2): use ``--effort``.

``--file`` (and prompts on stdin): the input is JSONL when the file name ends in ``.jsonl`` /
``.ndjson`` or its first non-blank line starts with ``{``, and then every non-blank line must be
a JSON object; otherwise every non-blank line is one prompt, and a later line that is a JSON
object is refused (exit 2, naming the line), because a mix of both is ambiguous.

``--tool MODULE:FUNCTION`` (repeatable) offers a Python function to the model as a client tool:
``MODULE`` is imported from ``sys.path`` or the current directory, or the spec names a file
(``path/to/tools.py:FUNCTION``); the library builds the schema from the signature and docstring and
runs the tool loop (at most ``--max-tool-turns`` rounds), and the result is the final answer. A
spec that cannot be loaded is a usage error (exit 2) before any request.

``--max-cost USD`` caps the run's spend: a request whose worst case (its input plus max tokens at
list price) does not fit under the cap is not started, and its prompt fails with ``error_kind``
``budget`` (exit 1). ``--dry-run`` prints the estimate of ``claude_client.estimate_run_cost``
(``input_tokens``, ``output_tokens_max``, ``low_usd``, ``high_usd``, ``method``; one JSON object
with ``--format jsonl``) to stdout (``--output`` is left untouched) and exits 0 having generated
nothing (only ``count_tokens`` requests). ``--journal PATH`` appends every finished result to
PATH: re-run the same command after a crash, a kill or Ctrl-C and the finished prompts are taken
from it, not sent again (prompts that failed for good run again with ``--retry-failed``; transient
failures always do).

Output that the output stream cannot encode (e.g. ``PYTHONIOENCODING=ascii``) is escaped, never
lost: JSONL uses ``\\uXXXX`` escapes (still valid JSON), text uses ``\\xNN``-style escapes.

Each JSONL record: ``index``, ``task_id``, ``category``, ``status`` (``ok`` / ``failed`` /
``interrupted``), ``text``, ``usage`` (input, output, cache write and cache read tokens),
``cost_usd``, ``stop_reason``, ``error_kind``, ``error``.

This module parses the arguments; the work is done by private modules, one concern each:
``_cli_input`` (prompts), ``_cli_perspectives``, ``_cli_tools`` (``--tool``), ``_cli_connection``
(API or offline emulator), ``_cli_run`` (the run and signals), ``_cli_board`` / ``_cli_display``
(progress), ``_cli_output`` (records), ``_cli_estimate`` (``--dry-run``), ``_cli_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from typing import IO, Any, Callable, Optional, Sequence

from _cli_common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, PROG, UsageError, isatty

__all__ = ["main"]

# Everything else (the library, the SDK, the other _cli_* modules) is imported inside main(), after
# the start-up signal handling is in place: a Ctrl-C or SIGTERM during those imports is an exit
# status and a one-line message, never a traceback.


# ----------------------------------------------------------------------------- arguments


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` the text, then ``accept`` the value, else say what was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
_temperature = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation tools)."""
    from _models import EFFORT_LEVELS  # the catalogue (no I/O, light)
    from _request_rules import THINKING_SHORTHANDS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fan prompts out to parallel Claude calls; results in input order on stdout, "
        "live progress on stderr. Without an API key it runs offline against the "
        "bundled emulator.",
        epilog="Exit status: 0 all ok, 1 some failed, 2 usage error, 130 interrupted (Ctrl-C), "
        "143 terminated (SIGTERM); when interrupted or terminated, finished results are "
        "still written.",
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "prompts", nargs="*", metavar="PROMPT", help="prompts to run (else --file, --perspectives, or lines on stdin)"
    )
    src.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="prompts, one per line, or JSONL objects with keys prompt, system, "
        "task_id, category, model, max_tokens, effort, thinking ('-' for stdin). "
        "The input is JSONL if FILE ends in .jsonl/.ndjson or its first non-blank "
        "line starts with '{' (then every non-blank line must be a JSON object); "
        "else each non-blank line is a prompt, and a line that is a JSON object "
        "is an error (a mix of text and JSON lines is refused). Same rule for stdin.",
    )
    src.add_argument(
        "--perspectives",
        metavar="LIST",
        help="comma-separated review perspectives (e.g. security,performance); each becomes one prompt over --input",
    )
    src.add_argument(
        "--input",
        metavar="FILE_OR_TEXT",
        help="with --perspectives: the file to review, '-' for stdin, or the text itself; "
        "a single word containing '/' or ending in .ext (e.g. app.py) is taken as a "
        "path and must exist, a directory is an error",
    )
    run = p.add_argument_group("model and run")
    run.add_argument(
        "-m", "--model", help="model for every prompt without its own (default: the library's, claude-sonnet-5-5)"
    )
    run.add_argument("-w", "--workers", type=_positive_int, default=5, help="prompts in flight at once (default 5)")
    run.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="maximum output tokens per prompt (default 4096)",
    )
    run.add_argument(
        "--effort",
        choices=EFFORT_LEVELS,
        help="output_config.effort for prompts that do not set one (the levels the model accepts; "
        "default: the model's own)",
    )
    run.add_argument(
        "--thinking",
        choices=THINKING_SHORTHANDS,
        help="thinking type for prompts that do not set one (default: the model's; 5.x models think adaptively)",
    )
    run.add_argument(
        "--temperature",
        type=_temperature,
        metavar="T",
        help="kept for old scripts: the API removed sampling parameters, so only 1 is accepted (use --effort)",
    )
    sysg = run.add_mutually_exclusive_group()
    sysg.add_argument("--system", metavar="TEXT", help="system prompt shared by every prompt")
    sysg.add_argument("--system-file", metavar="FILE", help="read the shared system prompt from FILE")
    run.add_argument(
        "--cache",
        action="store_true",
        help="prompt-cache the shared system prompt (one request warms the cache, the rest read it)",
    )
    run.add_argument(
        "--retries",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="retries per prompt after a transient failure (default 3)",
    )
    run.add_argument(
        "--stall-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="abort and retry a stream that sends nothing for this long",
    )
    run.add_argument(
        "--offline", action="store_true", help="run against the bundled emulator even when an API key is configured"
    )
    agents = p.add_argument_group("tools, spend and resuming")
    agents.add_argument(
        "--tool",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="offer a Python function to the model as a tool (repeatable): MODULE is "
        "imported from sys.path or the current directory, or give a file, "
        "path/to/tools.py:FUNCTION; the schema comes from its signature and "
        "docstring. The result text is the final answer after the tool calls",
    )
    agents.add_argument(
        "--max-tool-turns",
        type=_positive_int,
        metavar="N",
        help="with --tool: at most N tool-call rounds per prompt (library default 10)",
    )
    agents.add_argument(
        "--max-cost",
        type=_non_negative_float,
        metavar="USD",
        help="hard spend cap for the whole run: a request whose worst case (its input "
        "plus max tokens at list price) does not fit under the cap is not started, and "
        "its prompt fails with error_kind 'budget' (exit status 1)",
    )
    agents.add_argument(
        "--budget",
        metavar="NAME",
        help="with --max-cost: the cap is shared with every run, in any process on the shared "
        "store, that names the same budget",
    )
    agents.add_argument(
        "--shared-limits",
        metavar="URL",
        help="share rate limits, the 429 pause and named budgets with other processes on this key: "
        "'on' (a store on this machine, the default), 'off', or redis://host:6379/0",
    )
    agents.add_argument(
        "--dry-run",
        action="store_true",
        help="print the cost estimate (input_tokens, output_tokens_max, low_usd, "
        "high_usd, method; one JSON object with --format jsonl) to stdout and "
        "exit 0 without generating anything",
    )
    agents.add_argument(
        "--journal",
        metavar="PATH",
        help="append every finished result to PATH; re-running with the same prompts, "
        "options and PATH resumes: finished prompts are not sent again",
    )
    agents.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --journal: run prompts that failed for good last time again (transient failures always run again)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--format", choices=("text", "jsonl"), help="result format (default: text on a terminal, jsonl otherwise)"
    )
    out.add_argument("-o", "--output", metavar="FILE", help="write results to FILE instead of stdout")
    out.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    out.add_argument(
        "--trace-file",
        metavar="FILE",
        help="write the run's OpenTelemetry spans (the library's and the SDK's) to FILE as OTLP/JSON "
        "lines, one trace per run (needs the [tracing] extra: opentelemetry-sdk)",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress and no notices on stderr (errors only)")
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM during start-up, raised by :func:`_startup_signals`' handler (a KeyboardInterrupt,
    so every cleanup path treats it like Ctrl-C)."""


def _startup_signals() -> Callable[[], None]:
    """Make SIGINT raise KeyboardInterrupt and SIGTERM :class:`_Terminated` from now on (the run
    installs its own handlers later); returns what puts the previous handlers back. Only the main
    thread can set handlers: elsewhere (``main()`` called from a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
    }

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


def _forget_unhandled_interrupt() -> None:
    """Clear CPython's "a KeyboardInterrupt went unhandled" mark, which ``exec()`` of source text
    sets when the interrupt lands inside such code (``dataclasses`` and ``namedtuple`` build their
    methods that way during the imports) and which the interpreter, at exit, turns into a death by
    SIGINT (status -2) whatever status ``main()`` returned. A successful ``exec()`` clears it."""
    exec("None")  # noqa: S102 - a constant: only resets the interpreter's flag


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failures, 2 usage, 130 SIGINT, 143 SIGTERM).

    >>> import orchestrate
    >>> orchestrate.main(["--help"])  # doctest: +SKIP
    """
    restore = _startup_signals()  # first of all: before the heavy imports
    stderr = sys.stderr
    try:
        return _parse_and_run(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM before the run's own handlers were in place
        terminated = isinstance(exc, _Terminated)
        if stderr is not None:
            stderr.write(f"{PROG}: {'terminated' if terminated else 'interrupted'}\n")
            stderr.flush()
        _forget_unhandled_interrupt()
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        restore()


def _parse_and_run(argv: Optional[Sequence[str]]) -> int:
    stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)  # exits 2 on bad arguments
    try:
        return _main(args, stdin, stdout, stderr)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        except OSError:
            pass
        return EXIT_FAILED
    except UsageError as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
        stderr.flush()
        return EXIT_USAGE


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense together, a model id that is one, and a ``--journal`` path
    that can be written."""
    from _models import DEFAULT_MODEL

    if args.model is not None and not args.model.strip():
        raise UsageError(f"--model: expected a model id such as {DEFAULT_MODEL}, got {args.model!r}")
    if args.budget is not None and (not args.budget.strip() or args.max_cost is None):
        raise UsageError("--budget NAME needs --max-cost USD (the cap the named budget shares)")
    if args.shared_limits is not None:
        from _shared_limits import resolve_setting

        text = args.shared_limits.strip()
        lowered = text.lower()
        setting: Any = True if lowered == "on" else False if lowered == "off" else text
        try:
            args.shared_limits_setting = resolve_setting(setting, name="--shared-limits")
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if args.retry_failed and not args.journal:
        raise UsageError("--retry-failed needs --journal PATH (the journal of the run to resume)")
    if args.max_tool_turns is not None and not args.tool:
        raise UsageError("--max-tool-turns needs --tool (it limits the tool-call rounds)")
    if args.journal:
        if os.path.isdir(args.journal):
            raise UsageError(f"--journal: is a directory: {args.journal} (give a file path)")
        parent = os.path.dirname(os.path.abspath(args.journal))
        if not os.path.isdir(parent):
            raise UsageError(f"--journal: no such directory: {parent}")
    if args.trace_file:
        if os.path.isdir(args.trace_file):
            raise UsageError(f"--trace-file: is a directory: {args.trace_file} (give a file path)")
        parent = os.path.dirname(os.path.abspath(args.trace_file))
        if not os.path.isdir(parent):
            raise UsageError(f"--trace-file: no such directory: {parent}")


def _main(args: argparse.Namespace, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """Read and check every input (usage errors before any request), then run with notices shown."""
    import logging

    from _cli_display import Display, NoticeHandler
    from _cli_input import collect_prompts, read_shared_system
    from _cli_tools import load_tools

    _check_options(args)
    items = collect_prompts(args, stdin)
    shared_system = read_shared_system(args, stdin)
    args.tool_functions = load_tools(args.tool)
    fmt = args.format or ("text" if (not args.output and isatty(stdout)) else "jsonl")

    display = Display(args, stderr)
    root = logging.getLogger()
    handler: Optional[logging.Handler] = None
    if not root.handlers and not args.quiet:
        handler = NoticeHandler(display)
        root.addHandler(handler)
    try:
        return _run_main(args, items, shared_system, fmt, display, stdout, stderr)
    finally:
        if handler is not None:
            root.removeHandler(handler)


def _run_main(
    args: argparse.Namespace,
    items: list[dict],
    shared_system: Optional[str],
    fmt: str,
    display: Any,
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    """Connect (the API or the offline emulator), validate with the library, then estimate or run."""
    from _cli_connection import connection
    from _cli_estimate import dry_run
    from _cli_output import open_output
    from _cli_run import execute, validate_with_library
    from _cli_trace import open_trace_file

    notice = (lambda text: None) if args.quiet else display.notice
    # api_key / base_url passed to the library for this run only
    with connection(args, notice) as connect:
        validate_with_library(items, args, shared_system)
        if args.dry_run:
            return dry_run(items, args, shared_system, connect, stdout, notice)
        if args.shared_limits is not None:
            from claude_client import configure

            configure(shared_limits=args.shared_limits_setting)
        tracing = open_trace_file(args.trace_file) if args.trace_file else contextlib.nullcontext()
        out = open_output(args.output, stdout)
        try:
            with tracing:  # the run's spans go to the trace file while it runs
                return execute(items, args, shared_system, display, fmt, out, stderr, connect)
        finally:
            if out is not stdout:
                out.close()


if __name__ == "__main__":
    sys.exit(main())
