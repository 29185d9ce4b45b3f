"""invoke_batch overhead against a hand-written Message Batches loop over the same SDK client.

Figures (N requests in one batch, emulator processing at 0 s per request, poll every 0.05 s):
(a) invoke_batch without a journal / hand-written create + poll + results loop (wall time);
(b) invoke_batch with a journal / without (the cost of durability);
(c) a re-run from a completed journal (no request) / the first run;
(d) journal size per request.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import point_library_at, row

POLL = 0.05


def _hand_written(client, prompts, model, max_tokens) -> list:
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": p["prompt"]}]},
        }
        for i, p in enumerate(prompts)
    ]
    batch = client.messages.batches.create(requests=requests)
    while True:
        batch = client.messages.batches.retrieve(batch.id)
        if batch.processing_status == "ended":
            break
        time.sleep(POLL)
    out = [None] * len(prompts)
    for line in client.messages.batches.results(batch.id):
        if line.result.type == "succeeded":
            out[int(line.custom_id[1:])] = "".join(b.text for b in line.result.message.content if b.type == "text")
    return out


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool = False) -> list[dict]:
    from anthropic_emulator import Emulator

    import claude_client
    from message_batches import invoke_batch

    n = 1000 if quick else 10_000
    repeats = 2 if quick else 3
    prompts = [{"prompt": f"question {i} about the data set"} for i in range(n)]
    model, max_tokens = claude_client.DEFAULT_MODEL, 64
    rows = []
    with Emulator(batch_seconds_per_request=0.0) as emu, tempfile.TemporaryDirectory() as tmp:
        point_library_at(emu.base_url)
        client = claude_client.get_client()
        hand = _best(lambda: _hand_written(client, prompts, model, max_tokens), repeats)
        lib = _best(lambda: invoke_batch(prompts, model=model, max_tokens=max_tokens, poll_interval=POLL), repeats)
        journals = iter(range(1_000_000))

        def with_journal() -> None:
            invoke_batch(prompts, model=model, max_tokens=max_tokens, poll_interval=POLL,
                         journal=Path(tmp) / f"j{next(journals)}.json")

        journaled = _best(with_journal, repeats)
        done = Path(tmp) / "done.json"
        invoke_batch(prompts, model=model, max_tokens=max_tokens, poll_interval=POLL, journal=done)
        before = len(emu.requests)
        rerun = _best(lambda: invoke_batch(prompts, model=model, max_tokens=max_tokens, journal=done), repeats)
        assert len(emu.requests) == before, "a re-run from a completed journal sent requests"
        size = done.stat().st_size
        emu.reset()
    rows.append(row("batches", f"(a) invoke_batch wall, N={n}", lib, "s", baseline=hand,
                    baseline_name="hand-written SDK create/poll/results loop", target="<= 1.5"))
    rows.append(row("batches", f"(b) invoke_batch with journal, N={n}", journaled, "s", baseline=lib,
                    baseline_name="invoke_batch without journal", target="<= 1.5"))
    rows.append(row("batches", f"(c) re-run from completed journal, N={n} (0 requests)", rerun, "s",
                    baseline=journaled, baseline_name="first run with journal", target="< 1"))
    rows.append(row("batches", "(d) journal size per request", size / n, "bytes"))
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
