"""Shared vocabulary of the ``orchestrate`` command line: its name, exit statuses, the usage
error, and small text helpers used by every ``_cli_*`` module."""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "UsageError",
    "fmt_cost",
    "isatty",
    "one_line",
]

PROG = "orchestrate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr, exit status 2."""


def fmt_cost(usd: float) -> str:
    """``$0.0123`` for cents and more, ``$0.000021`` below a cent (small runs stay visible)."""
    return f"${usd:.4f}" if usd >= 0.01 or usd == 0 else f"${usd:.6f}"


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (runs of whitespace become one space), cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def isatty(stream: Any) -> bool:
    """True when ``stream`` is a terminal (False for anything that cannot tell)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
