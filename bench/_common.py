"""Helpers shared by the bench_*.py modules (see bench/run.py).

Every benchmark module exposes ``run(quick: bool = False) -> list[dict]`` and builds its rows
with :func:`row`. A row compares a figure with a baseline measured in the same run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

BENCH_KEY = "sk-ant-bench-key"


def row(
    benchmark: str,
    figure: str,
    value: float,
    unit: str,
    *,
    baseline: Optional[float] = None,
    baseline_name: str = "",
    target: str = "",
    lower_is_better: bool = True,
) -> dict:
    """One result row: ``ratio`` is value / baseline when a baseline is given."""
    ratio = (value / baseline) if baseline not in (None, 0) else None
    return {
        "benchmark": benchmark,
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "lower_is_better": lower_is_better,
    }


def point_library_at(base_url: str) -> None:
    """Make claude_client talk to ``base_url`` with the bench key (fresh shared client)."""
    import claude_client

    os.environ["ANTHROPIC_BASE_URL"] = base_url
    os.environ["ANTHROPIC_API_KEY"] = BENCH_KEY
    claude_client.reset_client()
