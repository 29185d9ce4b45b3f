"""``--dry-run``: what an ``orchestrate`` run would cost, from
:func:`claude_client.estimate_run_cost`, without generating anything.

Input tokens come from the API's ``count_tokens`` endpoint (the run's connection: the configured
API or the offline emulator), else from the library's local rule; no message is created.
"""

from __future__ import annotations

import argparse
from typing import IO, Callable, Optional

from _cli_common import EXIT_OK, UsageError, fmt_cost, isatty, one_line
from _cli_output import write_estimate
from _cli_run import library_items, run_options

__all__ = ["dry_run"]


def dry_run(
    items: list[dict],
    args: argparse.Namespace,
    shared_system: Optional[str],
    connection: dict,
    stdout: IO[str],
    notice: Callable[[str], None],
) -> int:
    """Estimate the run of ``items`` and write it to ``stdout`` (never to ``--output``, which is left
    untouched): one JSON object with ``--format jsonl`` (the default off a terminal), else text."""
    import claude_client

    model = args.model or claude_client.DEFAULT_MODEL
    client = claude_client.get_client(**connection) if connection else None
    try:
        estimate = claude_client.estimate_run_cost(
            library_items(items),
            model=model,
            max_tokens=args.max_tokens,
            shared_system=shared_system,
            cache_shared_system=args.cache,
            client=client,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--dry-run: {one_line(str(exc))}") from None
    fmt = args.format or ("text" if isatty(stdout) else "jsonl")
    write_estimate(estimate, prompts=len(items), model=model, fmt=fmt, out=stdout)
    cap = getattr(args, "max_cost", None)
    if cap is not None and estimate.high_usd > cap:
        notice(
            f"--max-cost ${cap:g} is below the worst case {fmt_cost(estimate.high_usd)}: prompts whose "
            f"worst case no longer fits will not start"
        )
    if "tools" in run_options(args):
        notice(
            "--dry-run: the estimate is one request per prompt; each tool turn adds a request "
            "(and the tool definitions add input tokens)"
        )
    return EXIT_OK
