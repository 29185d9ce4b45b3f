"""A kill -9 inside the batch create call never leads to a second submission.

Twenty runs, each a process killed with SIGKILL at a point of its create call: as the call starts
(journaled, maybe not sent), with the request sent but lost on its way (it never reaches the
API), and with the batch made on the server but its answer (the id) not yet back. While each
run creates its batch, another client creates an unrelated batch of the same size, and every run
has the same size as every other: a re-run sees several batches that could be its own. The
re-runs (all at once) must recognise their own batch or prove they have none: each run's requests
are submitted exactly once and every result is delivered.

The processes are forked from one process that imported the library once (a kill costs no
import), so the test stays well under a minute.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import pytest

from message_batches import invoke_batch

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the processes it kills"),
]

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
RUNS = 20
SIZE = 3  # requests per run: every run and every foreign batch has this size
CREATE_DELAY_MS = 400  # the server answers a create this late (the batch exists meanwhile)

# One process imports the library, then forks a run per command: {"run", "journal", "base_url"}
# -> {"pid"}; {"wait": pid} -> {"status"} once it is dead.
_FORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {scripts!r})
    from message_batches import invoke_batch
    print(json.dumps({{"ready": True}}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "wait" in command:
            _, status = os.waitpid(command["wait"], 0)
            print(json.dumps({{"status": status}}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                prompts = [{{"prompt": f"run {{command['run']}} item {{j}}"}} for j in range({size})]
                invoke_batch(prompts, journal=command["journal"], poll_interval=0.05,
                             base_url=command["base_url"], api_key="sk-ant-test")
            finally:
                os._exit(0)
        print(json.dumps({{"pid": pid}}), flush=True)
    """
)


def prompts_of(run: int) -> list:
    return [{"prompt": f"run {run} item {j}"} for j in range(SIZE)]


class Forker:
    def __init__(self) -> None:
        code = _FORKER.format(scripts=str(SCRIPTS), size=SIZE)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ))
        assert json.loads(self.proc.stdout.readline()).get("ready")

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class BlackHole:
    """A server that takes requests and never answers: a request sent there is lost on its way."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = 0
        self.conns: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received += len(data)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def journal_of(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_until(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def creates_of(emu, run: int) -> list:
    """The create requests that made a batch of ``run``'s requests (answered, or left by a killed client)."""
    marker = f"run {run} item "
    return [
        r for r in emu.requests
        if r.method == "POST" and r.path == "/v1/messages/batches" and r.body is not None
        and (r.status is None or r.status < 400)
        and marker in r.body["requests"][0]["params"]["messages"][0]["content"]
    ]


def test_twenty_kills_during_create_never_submit_twice(client_env, tmp_path):
    emu = client_env
    emu.configure(batch_seconds_per_request=0.002, batch_create_delay_ms=CREATE_DELAY_MS)
    other = anthropic.Anthropic(base_url=emu.base_url, api_key="sk-ant-other", max_retries=0)
    hole = BlackHole()
    forker = Forker()
    started = time.monotonic()
    kinds = ["lost", "journaled", "made", "made"]  # where each run is killed, in turn
    killed_with_batch = []
    foreign = []
    try:
        for run in range(RUNS):
            kind = kinds[run % len(kinds)]
            journal = tmp_path / f"run{run}.json"
            received = hole.received
            pid = forker.ask({"run": run, "journal": str(journal),
                              "base_url": hole.url if kind == "lost" else emu.base_url})["pid"]
            wait_until(lambda: (journal_of(journal).get("batches") or [{}])[0].get("create_started_at"),
                       what=f"run {run} to start its create")
            # Meanwhile another client creates an unrelated batch of the same size.
            body = [{"custom_id": f"other-{run}-{j}", "params": {
                "model": "claude-sonnet-5-5", "max_tokens": 16,
                "messages": [{"role": "user", "content": f"other {run} {j}"}]}} for j in range(SIZE)]
            thread = threading.Thread(target=lambda b=body: foreign.append(other.messages.batches.create(requests=b)))
            thread.start()
            if kind == "lost":
                wait_until(lambda: hole.received > received, what="the lost request")
            elif kind == "made":
                wait_until(lambda: creates_of(emu, run), what=f"run {run}'s batch on the server")
            os.kill(pid, signal.SIGKILL)
            assert os.WIFSIGNALED(forker.ask({"wait": pid})["status"])
            thread.join(timeout=20)
            entry = journal_of(journal)["batches"][0]
            assert entry["id"] is None and entry["nonce"]  # killed before the id came back
            if kind == "made":
                killed_with_batch.append(run)
            if kind == "lost":
                assert creates_of(emu, run) == []
    finally:
        forker.close()
        hole.close()
    kill_phase = time.monotonic() - started
    assert len(foreign) == RUNS and killed_with_batch
    emu.configure(batch_create_delay_ms=0)

    def rerun(run: int):
        return invoke_batch(prompts_of(run), journal=tmp_path / f"run{run}.json", poll_interval=0.05,
                            return_exceptions=True)

    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        results = list(pool.map(rerun, range(RUNS)))

    for run in range(RUNS):
        assert list(results[run]) == [f"Echo: run {run} item {j}" for j in range(SIZE)], run
        assert len(creates_of(emu, run)) == 1, f"run {run} was submitted {len(creates_of(emu, run))} times"
        data = journal_of(tmp_path / f"run{run}.json")
        assert data["state"] == "ended"
        assert not set(data.get("foreign_batches") or ()) & {data["batches"][0]["id"]}
        if run in killed_with_batch:  # the batch made before the kill was recognised and collected
            assert data["batches"][0]["adopted"] is True
    # Every batch on the server: one per run, and the other client's.
    assert len(emu.batches()) == RUNS + len(foreign)
    assert {b.id for b in foreign} <= {b["id"] for b in emu.batches()}
    assert time.monotonic() - started < 60, f"took {time.monotonic() - started:.1f}s (kills {kill_phase:.1f}s)"
