"""Helpers shared by the benchmark scripts: machine load and XLA's FLOP count."""

from __future__ import annotations

from typing import Any


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (a busy machine slows every figure)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def xla_flops(compiled: Any) -> float:
    """FLOPs XLA's cost analysis counts for a compiled (or lowered) function (nan if none).

    A loop body (`lax.scan`) is counted once, whatever its trip count.
    """
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")
