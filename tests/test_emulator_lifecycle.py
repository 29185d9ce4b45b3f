"""Starting and stopping the emulator: own instances, the context manager, and the command line."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import httpx2
import pytest

from anthropic_emulator import Emulator

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-6"
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_stop_without_with_and_construction_settings() -> None:
    emu = Emulator(reply_words=2, api_key="sk-ant-only")
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    emu.start()
    try:
        assert emu.base_url.startswith("http://127.0.0.1:")
        client = anthropic.Anthropic(api_key="sk-ant-only", base_url=emu.base_url, max_retries=0)
        msg = client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "a b c"}])
        assert msg.content[0].text == "Echo: a"
        emu.configure(reply_words=None)
        emu.reset()
        assert emu.settings["reply_words"] == 2  # back to the construction value
    finally:
        emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(TypeError):
        Emulator(unknown_setting=1)


def test_stop_closes_open_streams() -> None:
    emu = Emulator().start()
    client = anthropic.Anthropic(api_key=KEY, base_url=emu.base_url, max_retries=0, timeout=30)
    outcome: list[BaseException | None] = []

    def _consume() -> None:
        try:
            with client.messages.stream(model=MODEL, max_tokens=10,
                                        messages=[{"role": "user", "content": "x y [[stall_after=1]]"}]) as s:
                s.get_final_message()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    t = threading.Thread(target=_consume)
    t.start()
    assert emu.wait_for(lambda e: e.active_requests == 1, timeout=5)
    t0 = time.monotonic()
    emu.stop()
    t.join(timeout=15)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 10
    # mid-stream, the SDK lets the transport error through unwrapped (httpx2.RemoteProtocolError)
    assert outcome and isinstance(outcome[0], (anthropic.APIError, httpx2.HTTPError))


@pytest.mark.timeout(60)
def test_cli_serves_requests() -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(SCRIPTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "anthropic_emulator", "--port", str(port), "--reply-words", "3",
         "--directives", "fail=529 times=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        client = anthropic.Anthropic(api_key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0)
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "cli"}])
        msg = client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "cli"}])
        assert msg.content[0].text == "Echo: cli Echo:"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_cli_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "anthropic_emulator", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(SCRIPTS)), timeout=30, check=True).stdout
    for flag in ("--api-key", "--ttft-ms", "--chunk-delay-ms", "--reply-words", "--ping-every",
                 "--rate-limit-requests", "--rate-limit-window-s", "--max-concurrent", "--directives",
                 "--cache-min-tokens", "--batch-seconds-per-request", "--batch-retrieve-404-times"):
        assert flag in out
