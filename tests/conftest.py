"""Shared fixtures: one local emulator for the session, reset before each test.

Every behaviour test talks to the emulator through the real ``anthropic`` SDK over HTTP on
127.0.0.1; nothing here patches the SDK or the library.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from anthropic_emulator import Emulator  # noqa: E402

TEST_KEY = "sk-ant-test-key"


@pytest.fixture(autouse=True)
def _own_shared_store(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test its own shared-limits store (a fresh SQLite file), so tests never share learned
    limits, pauses or budgets by accident across tests, xdist workers or runs. A test of sharing
    sets ``ORCHESTRATING_AGENTS_SHARED_LIMITS`` itself (and passes it to its processes)."""
    from _shared_limits import ENV_VAR, reset_stores

    path = tmp_path_factory.mktemp("shared") / "shared-limits.sqlite3"
    monkeypatch.setenv(ENV_VAR, f"sqlite:///{path}")
    yield
    reset_stores()


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emulator(_emulator_server: Emulator) -> Iterator[Emulator]:
    """The session's emulator, reset to its construction settings before the test."""
    _emulator_server.reset()
    yield _emulator_server
    _emulator_server.wait_idle(timeout=5.0)


@pytest.fixture
def client_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """Point the library at the emulator with a test key and an empty project folder."""
    import claude_client

    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("ORCHESTRATING_AGENTS_PROJECT_DIR", str(project))
    claude_client.reset_client()
    yield emulator
    claude_client.reset_client()
