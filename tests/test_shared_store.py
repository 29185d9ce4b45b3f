"""The shared-limits store (issue 20, phase 1): SQLite on this machine, Redis across machines.

Against real parts only: real processes (subprocess) hammering one SQLite file or one real
``redis-server`` started here on a free 127.0.0.1 port; a process killed with SIGKILL while it
holds reservations; a Redis server stopped mid-run. Nothing is patched.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from _shared_limits import (
    ENV_VAR,
    BudgetGrant,
    Grant,
    RedisStore,
    SqliteStore,
    get_store,
    open_store,
    owner_id,
    reset_stores,
    resolve_setting,
    scope_key,
)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
SECRET = "sk-ant-api03-SHARED-STORE-SECRET-KEY-0123456789"
SCOPE = scope_key(SECRET, "http://127.0.0.1:9/", "sonnet-5-5")
REDIS_BIN = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


# --------------------------------------------------------------------------- helpers
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("claude_client._shared_limits")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on 127.0.0.1, no persistence."""

    def __init__(self, directory: Path, port: Optional[int] = None) -> None:
        self.port = port or _free_port()
        self.directory = directory
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_BIN
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def dump(self) -> str:
        """Every key and value in the server, as text."""
        import redis

        client = redis.Redis(port=self.port)
        parts = []
        for key in client.scan_iter("*"):
            parts.append(key.decode())
            kind = client.type(key).decode()
            if kind == "hash":
                parts += [f"{k.decode()}={v.decode()}" for k, v in client.hgetall(key).items()]
            elif kind == "zset":
                parts += [m.decode() for m in client.zrange(key, 0, -1)]
        client.close()
        return "\n".join(parts)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server): the Redis store tests need one")
    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'orchestrating-agents[redis]')")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store setting: an SQLite file in tmp, or a real Redis server."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'shared.sqlite3'}"
    return request.getfixturevalue("redis_server").url


def _open(setting: str):  # type: ignore[no-untyped-def]
    store = open_store(setting)
    assert store is not None and store.available, setting
    return store


# A worker process: hammers one store and prints JSON lines of what it was granted.
WORKER = r"""
import json, os, random, sys, time
sys.path.insert(0, os.environ["SHARED_SCRIPTS"])
from _shared_limits import open_store
spec = json.loads(sys.argv[1])
store = open_store(spec["setting"])
rng = random.Random(spec["seed"])
while time.time() < spec["start_at"]:
    time.sleep(0.001)
end = time.time() + spec["duration"]
out = []
if spec["mode"] == "bucket":
    while time.time() < end:
        amount = rng.uniform(50, 150)
        grant = store.acquire(spec["scope"], {"itpm": amount, "otpm": 10}, provisional={"otpm": 10})
        if grant.granted:
            out.append([grant.at, grant.taken["itpm"], grant.taken["otpm"]])
            store.settle(grant, used={"otpm": 10})
        else:
            time.sleep(min(grant.wait_s, 0.002))
elif spec["mode"] == "budget":
    refusals = 0
    while time.time() < end and refusals < 40:
        cost = rng.uniform(0.01, 0.05)
        grant = store.budget_reserve(spec["name"], cost, spec["cap"])
        if not grant.granted:
            refusals += 1
            time.sleep(0.001)
            continue
        refusals = 0
        time.sleep(rng.uniform(0, 0.002))  # the request
        actual = cost * rng.uniform(0.2, 1.0)
        store.budget_settle(grant, actual)
        out.append([grant.spent_usd + grant.reserved_usd, actual])
elif spec["mode"] == "hold":
    grant = store.acquire(spec["scope"], {"itpm": spec["amount"]}, provisional={"itpm": spec["amount"]},
                          ttl_s=spec["ttl"])
    budget = store.budget_reserve(spec["name"], 0.9, 1.0, ttl_s=spec["ttl"])
    print(json.dumps({"granted": grant.granted, "at": grant.at, "budget": budget.granted}), flush=True)
    time.sleep(120)
print(json.dumps(out), flush=True)
"""


def _worker(spec: dict) -> subprocess.Popen:
    env = dict(os.environ, SHARED_SCRIPTS=str(SCRIPTS))
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _hammer(setting: str, mode: str, processes: int, duration: float, **spec) -> list[list]:
    start_at = time.time() + 1.5  # every worker started and imported before the first call
    procs = [_worker({"setting": setting, "mode": mode, "seed": i, "start_at": start_at, "duration": duration, **spec})
             for i in range(processes)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _max_window_excess(events: list[tuple[float, float]], capacity: float, rate: float) -> float:
    """max over windows [t_i, t_j] of sum(grants) - (capacity + rate * (t_j - t_i)) (<= 0: never over-granted)."""
    events = sorted(events)
    worst = -capacity
    best_start = float("inf")  # min over i <= j of (prefix before i) - rate * t_i
    prefix = 0.0
    for at, amount in events:
        best_start = min(best_start, prefix - rate * at)
        prefix += amount
        worst = max(worst, (prefix - rate * at) - best_start - capacity)
    return worst


# --------------------------------------------------------------------------- identity and settings
def test_scope_key_is_a_keyed_hash_that_separates_pools_and_urls() -> None:
    a = scope_key(SECRET, "https://api.anthropic.com", "sonnet-5-5")
    assert len(a) == 40 and SECRET not in a and SECRET[-12:] not in a
    assert a == scope_key(SECRET, "https://api.anthropic.com", "sonnet-5-5")
    assert a != scope_key(SECRET, "https://api.anthropic.com", "opus-4")
    assert a != scope_key(SECRET, "http://127.0.0.1:1", "sonnet-5-5")
    assert a != scope_key(SECRET + "x", "https://api.anthropic.com", "sonnet-5-5")
    import hashlib

    assert a != hashlib.sha256(SECRET.encode()).hexdigest()[:40]  # not a bare hash of the key
    with pytest.raises(TypeError, match="api_key must be a str"):
        scope_key(None, "u", "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pool must be a non-empty"):
        scope_key(SECRET, "u", "")


def test_settings_resolve_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_setting(None) is True and resolve_setting(True) is True and resolve_setting(False) is False
    assert resolve_setting("redis://h:6379/2") == "redis://h:6379/2"
    for text, expected in (("off", False), ("0", False), ("TRUE", True), ("redis://h/0", "redis://h/0")):
        monkeypatch.setenv(ENV_VAR, text)
        assert resolve_setting(None) == expected
    assert resolve_setting(True) is True  # an explicit setting wins over the environment
    monkeypatch.setenv(ENV_VAR, "memcached://h")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_setting(None)
    with pytest.raises(TypeError, match="shared_limits must be True, False, None, a redis://"):
        resolve_setting(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared_limits must be") as info:
        resolve_setting("http://:hunter2-password@h:1/0")
    assert "hunter2" not in str(info.value)  # a password in a bad URL is not echoed
    monkeypatch.setenv(ENV_VAR, "off")
    assert open_store(None) is None and get_store(None) is None


def test_default_store_is_one_sqlite_file_in_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reset_stores()
    try:
        store = get_store()
        assert isinstance(store, SqliteStore) and get_store(True) is store
        path = tmp_path / "cache" / "orchestrating-agents" / "shared-limits.sqlite3"
        assert store.path == path and path.exists()
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.budget_report("nothing-yet").spent_usd == 0.0
    finally:
        reset_stores()


def test_bad_arguments_fail_before_the_store_is_touched(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    store.learn(SCOPE, {"itpm": (1000, 60.0)})
    cases: list[tuple[Callable[[], object], type, str]] = [
        (lambda: store.acquire(SCOPE, {"tokens": 5}), ValueError, "charges has an unknown bucket 'tokens'"),
        (lambda: store.acquire(SCOPE, {"itpm": -1}), ValueError, r"charges\['itpm'\]"),
        (lambda: store.acquire(SCOPE, [("itpm", 1)]), TypeError, "charges must be a mapping"),  # type: ignore[arg-type]
        (lambda: store.acquire(SCOPE, {"itpm": 5}, provisional={"itpm": 9}), ValueError, "must not exceed"),
        (lambda: store.acquire(SCOPE, {"itpm": 5}, ttl_s=0), ValueError, "ttl_s must be a positive"),
        (lambda: store.acquire(7, {"itpm": 5}), TypeError, "scope must be a str"),  # type: ignore[arg-type]
        (lambda: store.learn(SCOPE, {"itpm": (0, 60.0)}), ValueError, "capacity must be > 0"),
        (lambda: store.learn(SCOPE, {"itpm": 1000}), TypeError, r"\(capacity, minute_s\) pair"),
        (lambda: store.budget_reserve("", 0.1, 1.0), ValueError, "budget name must be a non-empty"),
        (lambda: store.budget_reserve("b", float("nan"), 1.0), ValueError, "cost_usd must be a finite"),
        (lambda: store.budget_reserve("b", 0.1, "1"), TypeError, "cap_usd must be a number"),  # type: ignore[arg-type]
        (lambda: store.settle("grant"), TypeError, "grant must be a Grant"),  # type: ignore[arg-type]
        (lambda: SqliteStore(3), TypeError, "path must be a str"),  # type: ignore[arg-type]
    ]
    before = store.state(SCOPE)
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    after = store.state(SCOPE)
    assert before is not None and after is not None
    assert after.buckets["itpm"].level == pytest.approx(before.buckets["itpm"].level, abs=1.0)  # nothing taken
    assert store.budget_report("b").refused == 0 and after.holds == 0


# --------------------------------------------------------------------------- semantics, both backends
def test_buckets_learn_take_all_or_nothing_and_settle(backend: str) -> None:
    store = _open(backend)
    fresh = scope_key(SECRET, backend, "haiku-4-5")
    assert store.acquire(fresh, {"itpm": 10**9}).granted  # nothing known: nothing charged ...
    assert store.state(fresh).buckets == {}  # ... and nothing written
    assert store.learn(fresh, {"rpm": (10, 600.0), "itpm": (1000, 600.0), "otpm": (400, 600.0)})
    grant = store.acquire(fresh, {"rpm": 1, "itpm": 300, "otpm": 300}, provisional={"otpm": 300})
    assert grant.granted and grant.taken == {"rpm": 1.0, "itpm": 300.0, "otpm": 300.0}
    assert grant.reservation and grant.reservation.startswith(owner_id())
    refused = store.acquire(fresh, {"rpm": 1, "itpm": 300, "otpm": 200})  # otpm has 100 left: nothing is taken
    assert not refused.granted and refused.wait_s > 60 and not refused.paused
    state = store.state(fresh)
    assert state.holds == 1 and state.buckets["itpm"].level == pytest.approx(700, abs=1)
    assert state.buckets["itpm"].minute_s == 600.0
    assert store.settle(grant, used={"otpm": 50}, adjust={"itpm": -100})  # 250 otpm back; the estimate was short
    state = store.state(fresh)
    assert state.holds == 0
    assert state.buckets["otpm"].level == pytest.approx(350, abs=1)
    assert state.buckets["itpm"].level == pytest.approx(600, abs=1)
    # a lease: extra only from what is above half of the bucket
    lease = store.acquire(fresh, {"itpm": 50}, extra={"itpm": 1000})
    assert lease.taken["itpm"] == pytest.approx(100, abs=1)  # 600 - 50 - 500 = 50 extra
    # the reply's remaining, seen from a request admitted before `lease`: lower the level to
    # remaining - what was taken since its mark
    assert store.learn(fresh, {"itpm": (1000, 600.0)}, remaining={"itpm": 300}, marks=grant.marks)
    assert store.state(fresh).buckets["itpm"].level == pytest.approx(300 - 100, abs=1)
    assert store.give(fresh, {"itpm": 50})
    assert store.state(fresh).buckets["itpm"].level == pytest.approx(250, abs=1)
    assert store.learn(fresh, {"itpm": (2000, 600.0)})  # a bigger bucket adds the difference
    assert store.state(fresh).buckets["itpm"].level == pytest.approx(1250, abs=1)


def test_pause_is_shared_and_callers_resume_spread(backend: str) -> None:
    store = _open(backend)
    scope = scope_key(SECRET, backend, "pause")
    store.learn(scope, {"rpm": (1000, 60.0)})
    first = store.pause(scope, 1.0)
    assert first == pytest.approx(1.0, abs=0.05)
    grants = [store.acquire(scope, {"rpm": 1}) for _ in range(8)]
    assert all(not g.granted and g.paused for g in grants)
    assert store.acquire(scope, {}).paused  # the pause alone (a server without rate-limit headers)
    resume = [g.at + g.wait_s for g in grants]  # when each caller is told to come back
    assert len({round(r, 4) for r in resume}) == 8  # no two callers come back at one instant
    assert 0.1 < max(resume) - min(resume) <= 0.2 + 1e-6  # spread over up to a fifth of the pause
    assert all(g.wait_s <= 1.0 + 0.2 + 1e-6 for g in grants)
    left = store.state(scope).paused_s
    assert left > 0.05 and store.pause(scope, 0.01) >= left - 0.01  # a shorter pause does not cut it short
    time.sleep(max(0.0, max(resume) - time.time()) + 0.05)
    assert store.acquire(scope, {"rpm": 1}).granted


def test_unsettled_holds_expire_and_a_late_settle_still_counts(backend: str) -> None:
    store = _open(backend)
    scope = scope_key(SECRET, backend, "expiry")
    store.learn(scope, {"otpm": (1000, 6000.0)})  # refill is negligible here
    held = store.acquire(scope, {"otpm": 800}, provisional={"otpm": 800}, ttl_s=1.0)
    assert held.granted and not store.acquire(scope, {"otpm": 800}).granted
    time.sleep(max(0.0, held.at + 1.0 - time.time()) + 0.1)
    again = store.acquire(scope, {"otpm": 800})  # the expired hold gave its 800 back
    assert again.granted
    assert store.state(scope).holds == 0
    assert store.settle(held, used={"otpm": 100})  # the owner was alive after all: its use is taken now
    assert store.state(scope).buckets["otpm"].level == pytest.approx(1000 - 800 - 100, abs=1)


def test_budget_reserve_refuse_settle_and_expiry(backend: str) -> None:
    store = _open(backend)
    first = store.budget_reserve("team", 0.6, 1.0)
    assert isinstance(first, BudgetGrant) and first.granted and first.reserved_usd == pytest.approx(0.6)
    refused = store.budget_reserve("team", 0.5, 1.0)
    assert not refused.granted and refused.spent_usd == 0 and refused.reserved_usd == pytest.approx(0.6)
    assert store.budget_settle(first, 0.25)
    report = store.budget_report("team")
    assert (report.spent_usd, report.reserved_usd, report.open, report.refused, report.cap_usd) == (
        pytest.approx(0.25), 0.0, 0, 1, 1.0)
    assert store.budget_report("other").spent_usd == 0.0  # budgets are separate by name
    lost = store.budget_reserve("team", 0.5, 1.0, ttl_s=0.2)
    assert lost.granted
    time.sleep(0.3)
    report = store.budget_report("team")  # its owner never settled: counted at its worst case
    assert report.reserved_usd == 0 and report.spent_usd == pytest.approx(0.75) and report.expired_usd == 0.5
    assert not store.budget_reserve("team", 0.3, 1.0).granted  # the cap still holds
    assert store.budget_settle(lost, 0.1)  # a late settle replaces the worst case with the real cost
    report = store.budget_report("team")
    assert report.spent_usd == pytest.approx(0.35) and report.expired_usd == 0.0
    unknown = store.budget_settle(store.budget_reserve("team", 0.1, 1.0), None)  # unknown cost: the worst case
    assert unknown and store.budget_report("team").spent_usd == pytest.approx(0.45)


# --------------------------------------------------------------------------- processes
@pytest.mark.timeout(60)
def test_processes_hammering_one_bucket_never_over_grant(backend: str) -> None:
    capacity, minute = 20_000.0, 4.0
    rate = capacity / minute
    scope = scope_key(SECRET, backend, "hammer")
    store = _open(backend)
    assert store.learn(scope, {"itpm": (capacity, minute), "otpm": (4_000, minute)})
    results = _hammer(backend, "bucket", 4, 2.0, scope=scope)
    events = [(at, itpm) for out in results for at, itpm, _otpm in out]
    assert all(out for out in results)  # every process got a share
    assert _max_window_excess(events, capacity, rate) <= 1e-6 * capacity
    outs = [(at, otpm) for out in results for at, _itpm, otpm in out]
    assert _max_window_excess(outs, 4_000, 4_000 / minute) <= 1e-6 * 4_000
    span = max(e[0] for e in events) - min(e[0] for e in events)
    granted = sum(e[1] for e in events)
    assert granted >= 0.6 * (capacity + rate * span)  # it was the bucket that limited them, not the store
    assert store.state(scope).holds == 0  # every hold settled


@pytest.mark.timeout(60)
def test_processes_hammering_one_budget_never_pass_its_cap(backend: str) -> None:
    cap = 2.0
    store = _open(backend)
    results = _hammer(backend, "budget", 4, 4.0, name="hammer", cap=cap)
    report = store.budget_report("hammer")
    actuals = [actual for out in results for _seen, actual in out]
    assert all(seen <= cap + 1e-9 for out in results for seen, _a in out)  # at every reservation
    assert report.spent_usd <= cap + 1e-9
    assert report.spent_usd == pytest.approx(sum(actuals), abs=1e-6)
    assert report.reserved_usd == 0 and report.open == 0 and report.refused > 0
    assert report.spent_usd >= 0.75 * cap  # the processes did run into the cap


@pytest.mark.timeout(60)
def test_a_killed_process_blocks_the_others_at_most_its_expiry(backend: str) -> None:
    ttl = 1.5
    scope = scope_key(SECRET, backend, "killed")
    store = _open(backend)
    store.learn(scope, {"itpm": (1_000, 600.0)})  # the refill alone would take minutes
    child = _worker({"setting": backend, "mode": "hold", "seed": 0, "start_at": 0, "duration": 0, "scope": scope,
                     "amount": 1_000, "ttl": ttl, "name": "killed"})
    try:
        line = json.loads(child.stdout.readline())
        assert line["granted"] and line["budget"]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert not store.acquire(scope, {"itpm": 500}).granted  # blocked by the dead process's hold
        deadline = time.monotonic() + 10
        while True:
            grant = store.acquire(scope, {"itpm": 500})
            if grant.granted or time.monotonic() > deadline:
                break
            time.sleep(min(grant.wait_s, 0.02))
        assert grant.granted
        blocked = grant.at - line["at"]
        assert ttl - 0.05 <= blocked <= ttl + 1.5  # unblocked by the expiry (the refill needs minutes)
        report = store.budget_report("killed")  # its budget reservation: spent at its worst case
        assert report.open == 0 and report.reserved_usd == 0 and report.expired_usd == pytest.approx(0.9)
        assert not store.budget_reserve("killed", 0.2, 1.0).granted and store.budget_reserve("killed", 0.05, 1.0).granted
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


# --------------------------------------------------------------------------- threads and fork
@pytest.mark.timeout(60)
def test_threads_share_one_store_object(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "threads.sqlite3")
    capacity, minute = 5_000.0, 2.0
    store.learn(SCOPE, {"itpm": (capacity, minute)})
    events: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    end = time.monotonic() + 1.0

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < end:
                grant = store.acquire(SCOPE, {"itpm": rng.uniform(20, 80)})
                if grant.granted:
                    events.append((grant.at, grant.taken["itpm"]))
                else:
                    time.sleep(min(grant.wait_s, 0.002))
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(events) > 50
    assert _max_window_excess(events, capacity, capacity / minute) <= 1e-6 * capacity


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_its_own_connection_and_owner(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fork.sqlite3")
    store.learn(SCOPE, {"itpm": (1_000, 60.0)})
    assert store.acquire(SCOPE, {"itpm": 10}).granted  # the parent's connection is open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            grant = store.acquire(SCOPE, {"itpm": 10}, provisional={"itpm": 10})
            os.write(write, json.dumps([grant.granted, grant.reservation, owner_id()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    granted, reservation, child_owner = json.loads(os.read(read, 4096))
    os.waitpid(pid, 0)
    assert granted and child_owner != owner_id() and reservation.startswith(child_owner)
    assert store.acquire(SCOPE, {"itpm": 10}).granted and store.state(SCOPE).holds == 1


# --------------------------------------------------------------------------- secrets
def test_the_api_key_is_never_written(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "secret.sqlite3"
    settings = [f"sqlite://{path}"]
    server = request.getfixturevalue("redis_server") if REDIS_BIN else None
    if server is not None:
        settings.append(server.url)
    for setting in settings:
        store = _open(setting)
        scope = scope_key(SECRET, "https://api.anthropic.com", "sonnet-5-5")
        store.learn(scope, {"rpm": (50, 60.0), "itpm": (30_000, 60.0)})
        grant = store.acquire(scope, {"rpm": 1, "itpm": 100}, provisional={"itpm": 100})
        store.pause(scope, 0.01)
        store.budget_settle(store.budget_reserve("secret-budget", 0.1, 1.0), 0.05)
        assert grant.granted and SECRET not in repr(grant) and SECRET not in repr(store)
        store.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("secret.sqlite3*"))
    assert scope.encode() in blob  # (the search would find it)
    for spelling in (SECRET, SECRET[7:], SECRET[-16:]):
        assert spelling.encode() not in blob
    if server is not None:
        text = server.dump()
        assert scope in text and SECRET[-16:] not in text and SECRET not in text


# --------------------------------------------------------------------------- outages
def test_an_unusable_sqlite_file_falls_back_with_one_warning(tmp_path: Path, log: _Records) -> None:
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"this is not a database, " * 200)
    store = SqliteStore(path, retry_s=0.05)
    assert not store.available
    for _ in range(5):
        assert store.acquire(SCOPE, {"itpm": 1}) is None and store.budget_report("x") is None
        time.sleep(0.02)
    warnings = log.warnings()
    assert len(warnings) == 1 and "per process" in warnings[0] and "broken.sqlite3" in warnings[0]


def test_redis_unreachable_at_open_falls_back_quickly_with_one_warning(log: _Records) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'orchestrating-agents[redis]')")
    started = time.monotonic()
    store = RedisStore(f"redis://:pw-not-shown@127.0.0.1:{_free_port()}/0", retry_s=0.05)
    assert not store.available
    for _ in range(5):
        assert store.acquire(SCOPE, {"itpm": 1}) is None and store.budget_reserve("x", 0.1, 1.0) is None
        time.sleep(0.02)
    assert time.monotonic() - started < 5.0
    warnings = log.warnings()
    assert len(warnings) == 1 and "unavailable" in warnings[0] and "pw-not-shown" not in warnings[0]
    assert "pw-not-shown" not in repr(store)


def test_a_missing_redis_client_falls_back_with_one_warning() -> None:
    code = (
        "import logging, sys; sys.path.insert(0, sys.argv[1]); sys.modules['redis'] = None\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s %(message)s')\n"
        "import _shared_limits\n"
        "print(_shared_limits.open_store('redis://127.0.0.1:6379/0'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    assert proc.stderr.count("WARNING claude_client._shared_limits") == 1 and "[redis]" in proc.stderr


@pytest.mark.timeout(60)
def test_redis_stopped_mid_run_falls_back_with_one_warning(redis_server: RedisServer, log: _Records) -> None:
    store = RedisStore(redis_server.url, retry_s=0.1, socket_timeout_s=0.5)
    store.learn(SCOPE, {"rpm": (100_000, 60.0)})
    answers: list[str] = []
    errors: list[BaseException] = []
    stop_at = time.monotonic() + 0.5
    end = time.monotonic() + 1.5

    def run() -> None:
        try:
            while time.monotonic() < end:
                grant = store.acquire(SCOPE, {"rpm": 1}, provisional={"rpm": 1})
                if grant is not None:
                    store.settle(grant, used={"rpm": 1})
                budget = store.budget_reserve("mid-run", 0.001, 100.0)
                answers.append("shared" if grant is not None and budget is not None else "local")
                time.sleep(0.002)
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    redis_server.stop()
    for t in threads:
        t.join()
    assert not errors
    assert "shared" in answers and answers[-1] == "local" and not store.available
    warnings = log.warnings()
    assert len(warnings) == 1 and "unavailable" in warnings[0], warnings
    # back: the store is used again after its next retry
    redis_server.start()
    deadline = time.monotonic() + 5
    while store.acquire(SCOPE, {"rpm": 1}) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.available and len(log.warnings()) == 1
    assert any("available again" in r.getMessage() for r in log.records)


# --------------------------------------------------------------------------- cost
def test_op_cost_is_small(backend: str, capsys: pytest.CaptureFixture) -> None:
    store = _open(backend)
    scope = scope_key(SECRET, backend, "cost")
    store.learn(scope, {"rpm": (10**9, 60.0), "itpm": (10**12, 60.0), "otpm": (10**12, 60.0)})
    n = 300
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        grant = store.acquire(scope, {"rpm": 1, "itpm": 2_000, "otpm": 1_000}, provisional={"otpm": 1_000})
        store.settle(grant, used={"otpm": 200})
    cpu, wall = (time.process_time() - cpu) / (2 * n), (time.perf_counter() - wall) / (2 * n)
    with capsys.disabled():
        print(f"\n[shared store] {backend.split(':')[0]}: {1 / wall:,.0f} ops/s, {cpu * 1e6:.0f} us client CPU per op")
    assert isinstance(grant, Grant) and wall < 0.005  # generous: ~0.03-0.1 ms measured
