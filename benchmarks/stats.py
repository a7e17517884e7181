"""Percentiles and summaries: the only statistics the suite reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), NaN when empty."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q * 100))


def summary(values: Iterable[float | None], digits: int = 1) -> dict[str, Any]:
    """n, p50, p95, p99, mean, max of the non-missing values (ms in, ms out)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return {"n": 0}
    return {
        "n": len(clean),
        "p50": round(percentile(clean, 0.50), digits),
        "p95": round(percentile(clean, 0.95), digits),
        "p99": round(percentile(clean, 0.99), digits),
        "mean": round(statistics.fmean(clean), digits),
        "max": round(max(clean), digits),
    }


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of y over x (None with fewer than two distinct x)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den if den else None


def fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"
