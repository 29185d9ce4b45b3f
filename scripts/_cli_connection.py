"""Where an ``orchestrate`` run sends its requests: the configured API (key from the environment or
the project folder, ``ANTHROPIC_BASE_URL``), or the bundled emulator started in-process when there
is no key (or with ``--offline``). The connection is passed to the library per call; ``os.environ``
and the library's shared client are never changed."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Callable, Iterator

from _cli_common import UsageError, one_line

__all__ = ["OFFLINE_KEY", "connection", "has_credentials", "start_offline"]

#: Placeholder key sent to the in-process emulator in offline mode (not a secret).
OFFLINE_KEY = "sk-ant-offline-placeholder"


def has_credentials() -> bool:
    """True when the library finds an API key (argument, environment or project folder).

    A key file that exists but cannot be used (empty, malformed) is an error, not "no key":
    the CLI must not silently run offline when the user meant to configure a key.
    """
    if os.environ.get("ANTHROPIC_API_KEY", "").strip():
        return True
    import claude_client

    try:
        claude_client.get_client()
    except claude_client.ClaudeInvocationError as exc:
        if getattr(exc, "kind", None) != "auth":
            raise
        if str(exc).startswith("No Anthropic API key found"):
            return False
        raise UsageError(one_line(str(exc))) from None
    return True


def start_offline() -> Any:
    """Start the bundled emulator in-process (the run passes its URL to the library explicitly).

    ``os.environ`` and the library's shared client are left alone, so ``main()`` called inside a
    program does not redirect that program's later calls to a server that is gone.
    """
    try:
        from anthropic_emulator import Emulator
    except ImportError as exc:
        raise UsageError(
            f"no API key found and the offline emulator cannot start ({exc}); set ANTHROPIC_API_KEY, "
            f"or install the emulator's server library: pip install aiohttp"
        ) from None
    # A little latency so the offline demo streams visibly; replies are the emulator's echo rule.
    emu = Emulator(ttft_ms=150, chunk_delay_ms=40)
    emu.start()
    return emu


@contextlib.contextmanager
def connection(args: argparse.Namespace, notice: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """The ``api_key`` / ``base_url`` keyword arguments of this run's library calls (possibly none).

    Starts the bundled emulator (stopped on exit) with ``--offline``, or when there is neither an
    API key nor ``ANTHROPIC_BASE_URL``; ``notice`` tells the user so. A base URL without a key gets
    a placeholder key (a local server needs none).
    """
    emulator = None
    found: dict[str, str] = {}
    if args.offline or (not os.environ.get("ANTHROPIC_BASE_URL") and not has_credentials()):
        emulator = start_offline()
        found = {"base_url": emulator.base_url, "api_key": OFFLINE_KEY}
        if args.offline:
            notice(
                f"--offline: running against the bundled Messages API emulator at {emulator.base_url} "
                f"(replies are canned echoes)"
            )
        else:
            notice(
                f"no API key found: running offline against the bundled Messages API emulator at "
                f"{emulator.base_url} (replies are canned echoes; set ANTHROPIC_API_KEY for real answers)"
            )
    elif os.environ.get("ANTHROPIC_BASE_URL") and not has_credentials():
        found = {"api_key": OFFLINE_KEY}
    try:
        yield found
    finally:
        if emulator is not None:
            emulator.stop()
