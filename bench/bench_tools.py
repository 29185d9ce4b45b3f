"""Tool-loop benchmark: the library's tool loop vs a hand-written SDK tool loop.

One 3-request tool loop (two turns asking for a client tool, then the answer) run against an
emulator in a separate process (so its CPU does not compete with this process's), on one shared
SDK client (the library's shared client, used by both variants):

- the library: ``ToolSet.from_user([clock])`` + ``run_tool_loop`` sending each turn through
  ``_transport.send`` (the pipeline a public call uses);
- the same with an ``InterruptToken`` (tools run on threads, the interrupt is subscribed);
- a hand-written loop on ``client.messages.create`` with the SDK's own ``beta_tool`` (the least
  an SDK user can write: no breakpoints, no records, no checks);
- the same hand-written loop sending through ``_transport.send``: the library minus the tool loop,
  so its ratio isolates the loop's own cost from the send path's.

Client CPU per loop (``time.process_time()``), in interleaved samples (the variants alternate
order), median over samples; the figure is the library / hand-written ratio (target <= 1.10).

Run: ``python bench/bench_tools.py [--quick]``.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from typing import Any, Callable

import _common
from _common import row

MODEL = "claude-sonnet-4-6"
PROMPT = "what time is it? [[tool=clock tool_turns=2]]"


def clock() -> str:
    """The time of day."""
    return "noon"


def _variants(client: Any) -> dict[str, Callable[[], str]]:
    import _transport
    from anthropic.lib.tools import beta_tool
    from _interrupt import InterruptToken
    from _tools import ToolSet, run_tool_loop

    params = {"model": MODEL, "max_tokens": 500, "messages": [{"role": "user", "content": PROMPT}]}

    def library() -> str:
        toolset = ToolSet.from_user([clock])
        assert toolset is not None
        reply = run_tool_loop(params, toolset=toolset, send_turn=lambda p: _transport.send(p, client=client))
        return str(reply)

    def library_interruptible() -> str:
        token = InterruptToken()
        toolset = ToolSet.from_user([clock])
        assert toolset is not None
        reply = run_tool_loop(params, toolset=toolset, interrupt=token,
                              send_turn=lambda p: _transport.send(p, client=client, interrupt=token))
        return str(reply)

    sdk_tool = beta_tool(clock)
    sdk_client = client.with_options(max_retries=0)

    def hand_written() -> str:
        messages: list[dict] = [{"role": "user", "content": PROMPT}]
        for _ in range(10):
            msg = sdk_client.messages.create(model=MODEL, max_tokens=500, tools=[sdk_tool.to_dict()],
                                             messages=messages)
            if msg.stop_reason != "tool_use":
                return "".join(b.text for b in msg.content if b.type == "text")
            messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": b.id, "content": sdk_tool.call(b.input)}
                for b in msg.content if b.type == "tool_use"]})
        raise RuntimeError("the loop did not end")

    def hand_written_over_send() -> str:
        messages: list[dict] = [{"role": "user", "content": PROMPT}]
        for _ in range(10):
            reply = _transport.send({"model": MODEL, "max_tokens": 500, "tools": [sdk_tool.to_dict()],
                                     "messages": messages}, client=client)
            if reply.stop_reason != "tool_use":
                return str(reply)
            messages.append({"role": "assistant", "content": reply.content})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": b["id"], "content": sdk_tool.call(b["input"])}
                for b in reply.content if b["type"] == "tool_use"]})
        raise RuntimeError("the loop did not end")

    return {"library": library, "library_interruptible": library_interruptible, "sdk": hand_written,
            "sdk_over_send": hand_written_over_send}


def _measure(variants: dict[str, Callable[[], str]], samples: int, per_sample: int) -> dict[str, float]:
    """Median CPU seconds per loop of each variant, over interleaved samples."""
    names = list(variants)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for s in range(samples):
        order = names if s % 2 == 0 else names[::-1]
        for name in order:
            fn = variants[name]
            gc.collect()
            started = time.process_time()
            for _ in range(per_sample):
                fn()
            cpu[name].append((time.process_time() - started) / per_sample)
    return {n: statistics.median(v) for n, v in cpu.items()}


def run(quick: bool = False) -> list[dict]:
    from bench_client import EmulatorProcess

    import _transport

    samples, per_sample = (7, 10) if quick else (21, 20)
    with EmulatorProcess() as emu:
        _common.point_library_at(emu.base_url)
        client = _transport.get_client()
        variants = _variants(client)
        answers = {name: fn() for name, fn in variants.items()}  # warm-up (connections, schemas)
        assert len(set(answers.values())) == 1, answers
        for fn in variants.values():
            for _ in range(3):
                fn()
        medians = _measure(variants, samples, per_sample)
    sdk = medians["sdk"]
    n = samples * per_sample
    return [
        row("tools", f"client CPU per 3-request tool loop, library (median of {samples} samples x {per_sample})",
            medians["library"] * 1e3, "ms", baseline=sdk * 1e3, baseline_name="hand-written SDK loop",
            target="ratio <= 1.10"),
        row("tools", "client CPU per 3-request tool loop, library with an InterruptToken (tools on threads)",
            medians["library_interruptible"] * 1e3, "ms", baseline=sdk * 1e3, baseline_name="hand-written SDK loop",
            target="ratio <= 1.10"),
        row("tools", "client CPU per 3-request tool loop, library: the loop alone (baseline: the same "
            "hand-written loop sending through the library's _transport.send)",
            medians["library"] * 1e3, "ms", baseline=medians["sdk_over_send"] * 1e3,
            baseline_name="hand-written loop over _transport.send", target="ratio <= 1.10"),
        row("tools", "tool loops measured per variant", float(n), "loops"),
    ]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
